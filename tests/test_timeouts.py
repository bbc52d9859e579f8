"""The timeout factor: TCG's base, a busy host's slowdown, its bound, and who may force it."""

from __future__ import annotations

import pytest

from harness.boot import timeouts
from harness.boot.accel import HOST_CPU, Acceleration
from harness.boot.plan import timeout_factor_of
from harness.boot.timeouts import MAX_SLOWDOWN, accel_line, other_runnable, procs_running, slowdown
from harness.settings import Settings
from harness.verdict.record import TestRecord
from harness.verdict.results import Status

TCG = Acceleration("tcg", "no KVM here")
KVM = Acceleration("kvm", "/dev/kvm is usable")
UNSET = Settings.from_environment({})

STAT = "cpu  1 2 3 4\nctxt 99\nprocs_running {}\nprocs_blocked 0\n"


def test_the_runnable_count_is_read_from_proc_stat():
    assert procs_running(STAT.format(7)) == 7
    assert procs_running("cpu 1 2 3\n") == 1  # no such line: as if only the reader ran


def test_other_runnable_averages_the_readings_and_leaves_the_reader_out(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(3))
    assert other_runnable(samples=4, interval=0, stat=stat) == 2
    stat.write_text(STAT.format(1))
    assert other_runnable(samples=2, interval=0, stat=stat) == 0


@pytest.mark.parametrize(
    ("others", "threads", "cores", "expected"),
    [
        (0, 2, 2, 1),  # idle host: a core for each vCPU
        (0, 1, 2, 1),
        (1, 1, 2, 1),  # another test's VM of one vCPU beside ours of one
        (2, 2, 2, 2),  # two busy loops beside two vCPUs: half the cores
        (1, 2, 2, 1.5),
        (0.9, 2, 2, 1.5),  # in steps of a quarter
        (40, 2, 2, MAX_SLOWDOWN),  # bounded: a hang still ends
        (3, 2, 0, MAX_SLOWDOWN),  # no cores reported: counted as one
    ],
)
def test_the_slowdown_is_the_threads_per_core(others, threads, cores, expected):
    assert slowdown(others, threads, cores) == expected


def test_a_busy_host_stretches_tcgs_factor_and_says_why(monkeypatch):
    monkeypatch.setattr(timeouts, "other_runnable", lambda: 2.0)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    factor = timeouts.measured(5, 2, "tcg")
    assert factor.value == 10
    assert factor.why == "tcg x5, busy host x2: 2.0 other runnable threads on 2 cores"


def test_an_idle_host_keeps_the_base(monkeypatch):
    monkeypatch.setattr(timeouts, "other_runnable", lambda: 0.2)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert timeouts.measured(5, 2, "tcg") == timeouts.TimeoutFactor(5, "tcg x5")
    assert timeouts.measured(1, 2, "kvm") == timeouts.TimeoutFactor(1, "kvm")


def test_the_variable_forces_the_factor_over_the_option_and_over_a_container(monkeypatch):
    monkeypatch.setattr(timeouts, "other_runnable", lambda: pytest.fail("measured although forced"))
    forced = Settings.from_environment({"HARNESS_TIMEOUT_FACTOR": "2.5"})
    for accel in (TCG, KVM, HOST_CPU):
        factor = timeout_factor_of(accel, 5, forced)
        assert (factor.value, factor.why) == (2.5, "HARNESS_TIMEOUT_FACTOR=2.5")
    assert timeout_factor_of(TCG, 1, UNSET).why == "--timeout-factor=1"


def test_a_containers_factor_is_one_whatever_meson_passes():
    assert timeout_factor_of(HOST_CPU, 5, UNSET).value == 1


def test_unforced_it_is_measured(monkeypatch):
    monkeypatch.setattr(
        "harness.boot.plan.measured", lambda base, threads, kind: timeouts.TimeoutFactor(7, kind)
    )
    assert timeout_factor_of(TCG, None, UNSET).value == 7


def test_accel_tells_meson_the_bound(monkeypatch):
    kind, factor, bound, *reason = accel_line(Settings.from_environment({"HARNESS_ACCEL": "tcg"})).split()
    assert (kind, factor, bound, reason) == ("tcg", "5", str(5 * MAX_SLOWDOWN), ["HARNESS_ACCEL=tcg"])
    # With KVM too: an image of another architecture runs under TCG.
    assert accel_line(Settings.from_environment({"HARNESS_ACCEL": "kvm"})).split()[:3] == ["kvm", "1", "15"]
    # A factor forced above it at setup: meson waits for it.
    forced = Settings.from_environment({"HARNESS_ACCEL": "kvm", "HARNESS_TIMEOUT_FACTOR": "17.5"})
    assert accel_line(forced).split()[:3] == ["kvm", "1", "18"]


def test_the_factor_never_passes_mesons_bound():
    factor = timeouts.TimeoutFactor(20, "HARNESS_TIMEOUT_FACTOR=20").capped(15)
    assert factor == timeouts.TimeoutFactor(
        15, "HARNESS_TIMEOUT_FACTOR=20; capped at x15, the most meson's own timeout allows"
    )
    assert timeouts.TimeoutFactor(5, "tcg x5").capped(15).value == 5
    assert timeouts.TimeoutFactor(5, "tcg x5").capped(None).value == 5


def test_a_board_gets_this_hosts_base_unmeasured(monkeypatch):
    monkeypatch.setattr(timeouts, "other_runnable", lambda: pytest.fail("a board's timeout measured here"))
    tcg_host = Settings.from_environment({"HARNESS_ACCEL": "tcg"})
    factor = timeout_factor_of(TCG, None, tcg_host, boards=True)
    assert factor.value == 5 and "a board's load is not measured here" in factor.why


def test_a_record_without_the_timeout_fields_still_reads():
    record = TestRecord("T", "r", "qemu", "linux", Status.PASS, "", "", "", 1.0, "/x")
    text = record.to_json().replace('"timeout_s": null,', "").replace('"timeout_factor": null,', "")
    assert TestRecord.from_json(text).timeout_s is None
