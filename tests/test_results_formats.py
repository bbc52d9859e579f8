"""Subtests, TAP, the JSON summary, the boot timeline and the HTML report: pure logic,
and the guest's testcase library run by bash on the host."""

import base64
import gzip
import json
import os
import subprocess
from pathlib import Path

from harness.guest.units import TESTCASES_LIBRARY
from harness.report.html import records_of_run, render_html, summary, update_run_report
from harness.report.tap import tap_lines
from harness.report.timeline_chart import timeline_svg
from harness.settings import Settings
from harness.verdict.journal import read_export, unit_excerpt
from harness.verdict.notify import GuestReport
from harness.verdict.record import TestRecord
from harness.verdict.results import Status
from harness.verdict.subtests import Subtest, subtests_from
from harness.verdict.timeline import decode_timeline, parse_systemctl_show
from tests.helpers import declaration


def record(**kw) -> TestRecord:
    base = dict(
        name="TEST-07-SUBTESTS",
        run="r1",
        backend="qemu",
        firmware="linux",
        status="pass",
        reason="ok",
        cause="",
        started="2026-11-22T00:00:00+00:00",
        duration_s=12.0,
        log_dir="/nonexistent",
    )
    return TestRecord(**{**base, **kw})


def test_subtests_in_order_with_an_unfinished_one():
    report = GuestReport()
    report.add(
        b"READY=1\nX_HARNESS_TESTCASE_START=testcase_a\nX_HARNESS_TESTCASE=pass 12 testcase_a \n"
        b"X_HARNESS_TESTCASE_START=testcase_b\nX_HARNESS_TESTCASE=skip 3 testcase_b no network here\n"
        b"X_HARNESS_TESTCASE_START=testcase_c\n"
    )
    assert subtests_from(report, "timed out after 600 s") == [
        Subtest("testcase_a", Status.PASS, 12, ""),
        Subtest("testcase_b", Status.SKIP, 3, "no network here"),
        Subtest("testcase_c", Status.FAIL, None, "did not finish: timed out after 600 s"),
    ]


def test_garbled_subtest_lines_are_ignored():
    report = GuestReport()
    report.add(b"X_HARNESS_TESTCASE=maybe 1 x\nX_HARNESS_TESTCASE=pass x y\nX_HARNESS_TESTCASE=pass\n")
    assert subtests_from(report, "") == []


def test_a_test_without_subtests_is_one_point():
    assert tap_lines(record()) == ["TAP version 14", "ok 1 - TEST-07-SUBTESTS", "1..1"]
    assert tap_lines(record(status="skip", reason="disabled")) == ["TAP version 14", "1..0 # SKIP disabled"]
    failed = tap_lines(record(status="fail", reason='timed out "now"'))
    assert failed[1] == "not ok 1 - TEST-07-SUBTESTS"
    assert '  message: "timed out \\"now\\""' in failed


def test_failing_subtest_is_its_own_point_and_explains_the_failure():
    r = record(
        status="fail",
        cause="exit-status",
        reason="exit status 1",
        subtests=(
            Subtest("testcase_a", Status.PASS, 5),
            Subtest("testcase_b", Status.FAIL, 7, "exited with status 1"),
            Subtest("testcase_c", Status.SKIP, 1, "why not"),
        ),
    )
    lines = tap_lines(r)
    assert lines[1] == "ok 1 - TEST-07-SUBTESTS/testcase_a"
    assert lines[2] == "not ok 2 - TEST-07-SUBTESTS/testcase_b"
    assert "ok 3 - TEST-07-SUBTESTS/testcase_c # SKIP why not" in lines
    assert lines[-1] == "1..3"  # no extra point: the failing subtest is the reason


def test_failure_outside_subtests_gets_a_point_of_its_own():
    r = record(
        status="fail",
        cause="",
        reason="kernel panic while the test was running",
        subtests=(Subtest("testcase_a", Status.PASS, 5),),
    )
    lines = tap_lines(r)
    assert "not ok 2 - TEST-07-SUBTESTS" in lines and lines[-1] == "1..2"


def test_infrastructure_error_bails_out_instead_of_failing():
    lines = tap_lines(record(status="error", reason="QEMU died"))
    assert lines == ["TAP version 14", "Bail out! TEST-07-SUBTESTS: QEMU died"]
    assert not any(line.startswith("not ok") for line in lines)


def test_summary_counts_cases_and_keeps_errors_apart():
    records = [
        record(
            status="fail",
            cause="exit-status",
            subtests=(
                Subtest("a", Status.PASS, 1),
                Subtest("b", Status.FAIL, 1),
                Subtest("c", Status.SKIP, 1),
            ),
        ),
        record(name="TEST-01-BASIC", os="Debian GNU/Linux 12 (bookworm)"),
        record(name="TEST-06-SKIP", status="skip", reason="skipped itself"),
        record(name="TEST-09-BROKEN", status="error", reason="no image"),
    ]
    data = summary(records, "integration-tests on qemu", "2026-11-22T01:00:00+00:00")
    assert data["stats"] == {"tests": 6, "ran": 4, "skipped": 2, "passed": 2, "failed": 1, "errors": 1}
    assert data["tests"]["TEST-07-SUBTESTS/b"] == "failed"
    assert data["tests"]["TEST-09-BROKEN"] == "error"
    assert data["tests"]["TEST-06-SKIP"] == "skipped"
    assert data["dateTime"] == "2026-11-22T01:00:00+00:00"
    assert data["os"] == "Debian GNU/Linux 12 (bookworm)"


def test_record_round_trips_through_json(tmp_path):
    (tmp_path / "TEST-07-SUBTESTS").mkdir()
    r = record(
        log_dir=str(tmp_path / "TEST-07-SUBTESTS"),
        subtests=(Subtest("a", Status.PASS, 1),),
        rerun=("meson test -C build X",),
    )
    r.write()
    assert records_of_run(tmp_path, "r1") == [r]
    assert records_of_run(tmp_path, "another run") == []


SHOW = """FirmwareTimestampMonotonic=0
LoaderTimestampMonotonic=0
InitRDTimestampMonotonic=1500000
UserspaceTimestampMonotonic=8000000
UptimeSeconds=20.50

Id=systemd-journald.service
InactiveExitTimestampMonotonic=8200000
ActiveEnterTimestampMonotonic=9000000

Id=never.mount
InactiveExitTimestampMonotonic=0
ActiveEnterTimestampMonotonic=0

Id=TEST-07-SUBTESTS.service
InactiveExitTimestampMonotonic=15000000
ActiveEnterTimestampMonotonic=0
"""


def test_timeline_from_systemctl_show():
    encoded = base64.b64encode(gzip.compress(SHOW.encode())).decode()
    show = decode_timeline(encoded)
    assert show is not None
    t = parse_systemctl_show(show)
    assert t is not None
    assert (t.initrd_us, t.userspace_us, t.taken_us) == (1_500_000, 8_000_000, 20_500_000)
    assert [u.name for u in t.units] == ["systemd-journald.service", "TEST-07-SUBTESTS.service"]
    assert t.units[1].active_us is None
    svg = timeline_svg(t, highlight="TEST-07-SUBTESTS.service")
    assert svg.startswith("<svg") and 'class="unit test-unit"' in svg and "initrd (6.5 s)" in svg
    assert decode_timeline("not base64 at all!") is None


def test_journal_export_with_a_binary_field(tmp_path):
    export = (
        b"__MONOTONIC_TIMESTAMP=1500000\n_SYSTEMD_UNIT=TEST-07-SUBTESTS.service\nSYSLOG_IDENTIFIER=test.sh\n"
        b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\n\n"
        b"__MONOTONIC_TIMESTAMP=1600000\n_SYSTEMD_UNIT=other.service\nMESSAGE=elsewhere\n\n"
    )
    assert read_export(export)[0]["MESSAGE"] == "two\nlines"
    (tmp_path / "j.export").write_bytes(export)
    assert (
        unit_excerpt(tmp_path / "j.export", "TEST-07-SUBTESTS.service") == "[  1.500000] test.sh: two\nlines"
    )


def test_html_report_is_self_contained_and_shows_everything(tmp_path):
    (tmp_path / "console.log").write_bytes(b"\x1b[0;32m  OK  \x1b[0m] Started <journald>\n")
    (tmp_path / "screen.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "boot-timeline.txt").write_text(SHOW)
    r = record(
        status="fail",
        cause="exit-status",
        log_dir=str(tmp_path),
        journal_excerpt="[ 1.0] test.sh: boom",
        subtests=(Subtest("testcase_b", Status.FAIL, 7, "exited with status 1"),),
        rerun=("meson test -C build --interactive TEST-07-SUBTESTS",),
    )
    page = render_html([r], summary([r], "integration-tests on qemu", "now"))
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in page
    assert "Started &lt;journald&gt;" in page and "\x1b" not in page
    assert 'src="data:image/png;base64,' in page and "<svg" in page
    assert "testcase_b" in page and "--interactive TEST-07-SUBTESTS" in page


def test_report_of_a_run_has_only_that_runs_tests(tmp_path):
    tests = tmp_path / "integration-tests"
    for name, run in (("TEST-01-BASIC", "now"), ("TEST-02-OLD", "before")):
        (tests / name).mkdir(parents=True)
        record(name=name, run=run, log_dir=str(tests / name)).write()
    summary_path, report_path = update_run_report(tmp_path, tests, "now", "integration-tests on qemu")
    assert json.loads(summary_path.read_text())["tests"] == {"TEST-01-BASIC": "passed"}
    assert "TEST-02-OLD" not in report_path.read_text()


def run_library(tmp_path: Path, body: str, **env) -> tuple[int, list[str]]:
    notify = tmp_path / "notify"
    notify.write_text("")
    script = f'set -eu\n. "{TESTCASES_LIBRARY}"\n{body}\nrun_testcases\n'
    r = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "HARNESS_NOTIFY_DEVICE": str(notify), **env},
    )
    return r.returncode, notify.read_text().splitlines()


def test_library_runs_every_case_and_reports_each(tmp_path):
    status, lines = run_library(
        tmp_path,
        """
testcase_b_fails() { false; echo not reached; }
testcase_a_passes() { true; }
testcase_c_skips() { harness_skip "not here"; }""",
    )
    assert status == 1
    ends = [line.split(" ", 3) for line in lines if line.startswith("X_HARNESS_TESTCASE=")]
    assert [(e[0].split("=")[1], e[2]) for e in ends] == [
        ("pass", "testcase_a_passes"),
        ("fail", "testcase_b_fails"),
        ("skip", "testcase_c_skips"),
    ]
    assert ends[1][3] == "exited with status 1" and ends[2][3] == "not here"


def test_library_filter_and_all_passing(tmp_path):
    status, lines = run_library(
        tmp_path, "testcase_a() { true; }\ntestcase_b() { false; }", HARNESS_TESTCASE_FILTER="testcase_a"
    )
    assert status == 0
    assert lines == ["X_HARNESS_TESTCASE_START=testcase_a", lines[1]] and "testcase_a" in lines[1]


def test_an_unreadable_record_is_left_out_of_the_report_with_a_warning(tmp_path, caplog):
    (tmp_path / "TEST-01-CUT").mkdir()
    (tmp_path / "TEST-01-CUT" / "result.json").write_text('{"name": "TEST-01-CUT", "stat')
    assert records_of_run(tmp_path, "run-1") == []
    assert "TEST-01-CUT/result.json left out of the report" in caplog.text


def test_library_runs_what_the_hosts_regular_expressions_select(tmp_path):
    cases = "testcase_a() { true; }\ntestcase_b() { false; }\ntestcase_c() { true; }"
    status, lines = run_library(
        tmp_path, cases, HARNESS_MATCH_TESTCASE="^testcase_(a|b)$", HARNESS_SKIP_TESTCASE="b$"
    )
    assert status == 0
    assert [line for line in lines if line.startswith("X_HARNESS_TESTCASE_START=")] == [
        "X_HARNESS_TESTCASE_START=testcase_a"
    ]
    status, _ = run_library(tmp_path, cases, HARNESS_MATCH_TESTCASE="nothing")
    assert status == 1


def test_the_hosts_selection_reaches_the_test_unit_in_both_spellings():
    from harness.guest.units import render_test_unit, testcase_selection

    env = {"TEST_MATCH_TESTCASE": "^testcase_x$", "HARNESS_SKIP_TESTCASE": "slow"}
    selection = testcase_selection(Settings.from_environment(env))
    assert selection == (
        ("HARNESS_MATCH_TESTCASE", "^testcase_x$"),
        ("TEST_MATCH_TESTCASE", "^testcase_x$"),
        ("HARNESS_SKIP_TESTCASE", "slow"),
        ("TEST_SKIP_TESTCASES", "slow"),
    )
    unit = render_test_unit(declaration(), False, selection=selection)
    assert 'Environment="HARNESS_MATCH_TESTCASE=^testcase_x$"' in unit and "TEST_SKIP_TESTCASES=slow" in unit
    assert testcase_selection(Settings.from_environment({})) == ()
    assert testcase_selection(Settings.from_environment({"TEST_SKIP_SUBTESTS": "[.]01"})) == (
        ("HARNESS_SKIP_SUBTEST", "[.]01"),
        ("TEST_SKIP_SUBTESTS", "[.]01"),
    )
