"""The fast path's logic without a VM: who boots cold, how snapshots are shared and
replaced, and what the agent is sent."""

import multiprocessing
import subprocess
import time
from pathlib import Path

import pytest

from harness.backends.qemu.agent import agent_message, resume_script
from harness.backends.qemu.snapshot import StateFormat
from harness.backends.qemu.snapshot_store import SnapshotUnavailable, shared_snapshot, snapshot_key
from harness.boot.plan import BootPath, resume_blocker
from harness.boot.store import key_shape, remove_stale
from harness.declaration.credential import Credential
from harness.settings import Settings
from tests.helpers import declaration


def fake_make(dest: Path) -> None:
    (dest / "state").write_bytes(b"state")
    (dest / "disk.qcow2").write_bytes(b"disk")


@pytest.mark.parametrize(
    "args, env, why",
    [
        ((), {}, None),
        (("--boot=cold",), {}, "the test declares boot: 'cold'"),
        ((), {"HARNESS_COLD_BOOT": "1"}, "HARNESS_COLD_BOOT=1"),
        (("--storage=persistent",), {}, None),
        (("--firmware=uefi",), {}, None),
        (("--cmdline=quiet",), {}, "the test adds to the kernel command line"),
        (("--qemu-args=-no-reboot",), {}, "the test adds QEMU arguments"),
    ],
)
def test_who_may_resume(args, env, why):
    assert resume_blocker(declaration(*args), Settings.from_environment(env)) == why
    assert str(BootPath.SNAPSHOT) == "snapshot"


def test_made_once_then_reused(tmp_path):
    calls = []

    def make(dest):
        calls.append(dest)
        fake_make(dest)

    with shared_snapshot(tmp_path, "k1", "run-1", make) as snap:
        assert snap.complete and snap.dir == tmp_path / "k1"
    with shared_snapshot(tmp_path, "k1", "run-2", make) as snap:
        assert snap.state.read_bytes() == b"state"
    assert len(calls) == 1
    assert not list(tmp_path.glob(".partial-*"))


def test_a_failed_boot_is_not_retried_in_the_same_run(tmp_path):
    def fail(dest):
        (dest / "console.log").write_text("the boot's console")
        raise SnapshotUnavailable("the snapshot boot failed: timed out")

    for _ in range(2):
        with pytest.raises(SnapshotUnavailable, match="timed out"):
            with shared_snapshot(tmp_path, "k1", "run-1", fail):
                pass
    # Once per run: the second call did not try again, it repeated the first one's word.
    with pytest.raises(SnapshotUnavailable, match="timed out"):
        with shared_snapshot(tmp_path, "k1", "run-1", lambda dest: pytest.fail("tried again")):
            pass
    assert (tmp_path / "k1.console.log").read_text() == "the boot's console"
    assert f"its console log: {tmp_path / 'k1.console.log'}" in (tmp_path / "k1.failed").read_text()
    with shared_snapshot(tmp_path, "k1", "run-2", fake_make) as snap:  # a new run tries again
        assert snap.complete
    assert not (tmp_path / "k1.failed").exists()


def test_an_interrupted_maker_leaves_nothing(tmp_path):
    def interrupted(dest):
        (dest / "state").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), shared_snapshot(tmp_path, "k1", "run-1", interrupted):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1.lock"]


def test_a_new_snapshot_replaces_the_old_one_unless_in_use(tmp_path):
    with shared_snapshot(tmp_path, "linux-volatile-01", "r", fake_make):
        with shared_snapshot(tmp_path, "linux-volatile-02", "r", fake_make):
            assert (tmp_path / "linux-volatile-01").is_dir(), "removed while a test held it"
    assert remove_stale(tmp_path, keep="linux-volatile-02") == ["linux-volatile-01"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linux-volatile-02", "linux-volatile-02.lock"]


def test_snapshots_of_other_shapes_stay_beside_each_other(tmp_path):
    for key in (
        "uefi-volatile-01",
        "linux-persistent-01",
        "uefi-secure-boot-volatile-01",
        "linux-volatile-01",
    ):
        with shared_snapshot(tmp_path, key, "r", fake_make):
            pass
    assert remove_stale(tmp_path, keep="linux-volatile-02") == ["linux-volatile-01"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "linux-persistent-01",
        "uefi-secure-boot-volatile-01",
        "uefi-volatile-01",
    ]
    with shared_snapshot(tmp_path, "uefi-secure-boot-volatile-02", "r", fake_make):
        pass
    assert not (tmp_path / "uefi-secure-boot-volatile-01").exists()
    assert (tmp_path / "uefi-volatile-01").is_dir()


def _hold_while_making(root: str, key: str, started, results) -> None:
    def slow_make(dest):
        started.set()
        time.sleep(1.0)
        fake_make(dest)
        results.put("made")

    with shared_snapshot(Path(root), key, "r", slow_make):
        results.put("used")


def test_parallel_tests_share_one_snapshot(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_hold_while_making, args=(str(tmp_path), "k", started, results)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    said = [results.get(timeout=5) for _ in range(4)]
    assert sorted(said) == ["made", "used", "used", "used"]


def test_key_follows_the_image(tmp_path):
    image = tmp_path / "image.raw"
    image.write_bytes(b"one")
    first = snapshot_key("linux-volatile", ["tcg"], [image])
    assert first.startswith("linux-volatile-") and key_shape(first) == "linux-volatile"
    assert snapshot_key("linux-volatile", ["tcg"], [image]) == first
    assert snapshot_key("linux-volatile", ["kvm"], [image]) != first
    uefi = snapshot_key("uefi-secure-boot-persistent", ["tcg"], [image])
    assert key_shape(uefi) == "uefi-secure-boot-persistent" and uefi[-16:] == first[-16:]
    image.unlink()
    image.write_bytes(b"two")  # a rebuilt image: a new file
    assert snapshot_key("linux-volatile", ["tcg"], [image]) != first
    with pytest.raises(ValueError):
        snapshot_key("Linux/volatile", [], [])


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_resume_script_installs_unit_and_credentials(tmp_path, shell):
    every_byte = bytes(range(256)) * 2
    creds = (
        Credential("app.token", b"s3cret\x00\n'quote %s %% \\n"),
        Credential("harness.testcases", b"-lib"),
        Credential("all.bytes", every_byte),
        Credential("empty", b""),
    )
    script = resume_script("TEST-01-X.service", "[Unit]\nDescription=x\n", creds, 1795000000.5, b"\x01" * 64)
    line = agent_message(script)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    # Run it with the guest's paths moved under tmp_path, and commands that only record.
    body = line.decode()
    body = body.replace("/run/", f"{tmp_path}/run/").replace("/dev/urandom", f"{tmp_path}/urandom")
    (tmp_path / "run" / "systemd" / "system").mkdir(parents=True)
    (tmp_path / "run" / "credstore").mkdir()  # the agent's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("date", "systemctl"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >>{tmp_path}/calls\n')
        (bin_dir / tool).chmod(0o755)
    subprocess.run(
        [shell, "-e", "-c", "umask 077\n" + body], check=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}
    )
    store = tmp_path / "run" / "credstore"
    assert (store / "app.token").read_bytes() == b"s3cret\x00\n'quote %s %% \\n"
    assert (store / "harness.testcases").read_bytes() == b"-lib"
    assert (store / "all.bytes").read_bytes() == every_byte
    assert (store / "empty").read_bytes() == b""
    assert (store / "app.token").stat().st_mode & 0o777 == 0o600
    assert (
        tmp_path / "run" / "systemd" / "system" / "TEST-01-X.service"
    ).read_text() == "[Unit]\nDescription=x\n"
    assert (tmp_path / "run" / "systemd" / "system" / "TEST-01-X.service").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "urandom").read_bytes() == b"\x01" * 64
    calls = (tmp_path / "calls").read_text().splitlines()  # date ran beside, in either order
    assert sorted(calls) == ["date -s @1795000000.500", "systemctl start --no-block TEST-01-X.service"]
    assert (tmp_path / "run" / "harness-resumed").read_text() == "set\n"  # the clock is right


@pytest.mark.parametrize("mark", [None, "set\n", ""])
def test_the_test_waits_for_the_clock_only_while_a_resumed_guest_sets_it(tmp_path, mark):
    from harness.guest.reporting import RESUMED_MARK, WAIT_FOR_CLOCK

    path = tmp_path / "resumed"
    if mark is not None:
        path.write_text(mark)
    wait = WAIT_FOR_CLOCK.replace(RESUMED_MARK, str(path))
    try:
        subprocess.run(["dash", "-c", wait], timeout=1)
        waited = False
    except subprocess.TimeoutExpired:
        waited = True
    assert waited == (mark == "")  # cold boot: no mark; resumed: empty until `date` is done


def test_a_resumed_tests_timeline_is_the_snapshots_boot_and_its_own_unit():
    from harness.verdict.timeline import merge_timelines, parse_systemctl_show

    boot = (
        "InitRDTimestampMonotonic=1000000\nUserspaceTimestampMonotonic=9000000\nUptimeSeconds=20.0\n\n"
        "Id=basic.target\nInactiveExitTimestampMonotonic=15000000\nActiveEnterTimestampMonotonic=15500000\n"
    )
    test = (
        "InitRDTimestampMonotonic=1000000\nUserspaceTimestampMonotonic=9000000\nUptimeSeconds=31.5\n\n"
        "Id=TEST-01-X.service\nInactiveExitTimestampMonotonic=30000000\nActiveEnterTimestampMonotonic=0\n"
    )
    timeline = parse_systemctl_show(merge_timelines(boot, test))
    assert timeline is not None
    assert [u.name for u in timeline.units] == ["basic.target", "TEST-01-X.service"]
    assert timeline.taken_us == 31_500_000
    assert merge_timelines("", test) == test
    # What a resumed guest sends: its uptime and its unit; the phases are the boot's.
    sent = "UptimeSeconds=31.5\n\nId=TEST-01-X.service\nInactiveExitTimestampMonotonic=30000000\n"
    timeline = parse_systemctl_show(merge_timelines(boot, sent))
    assert timeline is not None
    assert (timeline.initrd_us, timeline.userspace_us, timeline.taken_us) == (
        1_000_000,
        9_000_000,
        31_500_000,
    )
    assert [u.name for u in timeline.units] == ["basic.target", "TEST-01-X.service"]


def test_state_format_follows_qemu_and_names_the_file_alike_both_ways():
    state = Path("/snap/a b/state")
    assert StateFormat.for_qemu(7) == StateFormat.STREAM
    assert StateFormat.for_qemu(10) == StateFormat.MAPPED_RAM
    mapped = StateFormat.MAPPED_RAM
    assert mapped.capabilities() == [{"capability": "mapped-ram", "state": True}]
    assert mapped.uri(state, saving=True) == mapped.uri(state, saving=False) == "file:/snap/a b/state"
    stream = StateFormat.STREAM
    assert stream.capabilities() == []
    assert stream.uri(state, saving=True) == "exec:cat >'/snap/a b/state'"
    assert stream.uri(state, saving=False) == "exec:cat '/snap/a b/state'"


def test_the_agent_is_connected_to_once_qemu_listens_not_when_its_socket_appears(tmp_path):
    """QEMU binds its socket (the file appears) a moment before it listens: a connect then
    is refused, and is tried again."""
    import socket
    import threading
    import types

    from harness.backends.qemu.snapshot import connect_agent
    from harness.deadline import Deadline

    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))  # not listening yet
    threading.Timer(0.3, server.listen).start()
    machine = types.SimpleNamespace(
        proc=types.SimpleNamespace(poll=lambda: None), files=types.SimpleNamespace(agent=path)
    )
    with socket.socket(socket.AF_UNIX) as agent:
        connect_agent(machine, agent, Deadline.after(5))  # type: ignore[arg-type]
        assert agent.getpeername() == str(path)
    server.close()
    gone = types.SimpleNamespace(proc=types.SimpleNamespace(poll=lambda: 1), files=machine.files)
    with socket.socket(socket.AF_UNIX) as agent, pytest.raises(OSError, match="QEMU exited"):
        connect_agent(gone, agent, Deadline.after(5))  # type: ignore[arg-type]


def test_a_host_driven_test_is_handed_its_control_agent_after_the_clock_is_set(tmp_path):
    from harness.backends.qemu.agent import handed_unit
    from harness.guest.units import CONTROL_CREDENTIAL, CONTROL_UNIT
    from tests.test_qemu_command import boot_plan

    (tmp_path / "test_x.py").touch()
    plan = boot_plan("linux", "tcg", "--host=test_x.py", test_dir=str(tmp_path))
    name, unit, creds = handed_unit(plan)
    assert name == CONTROL_UNIT and "ExecStart=/bin/sh %d/harness.control" in unit
    assert [c.name for c in creds] == [*(c.name for c in plan.test_credentials), CONTROL_CREDENTIAL]
    script = resume_script(name, unit, creds, 1795000000.5, b"\x02" * 64, clock_first=True)
    lines = script.splitlines()
    # The control agent answers at once: the clock is set before it starts, not beside it.
    assert lines[0] == "date -s @1795000000.500 >/dev/null || :; echo set >/run/harness-resumed"
    assert not any(line.endswith("&") for line in lines)
    assert lines[-2] == f"systemctl start --no-block {CONTROL_UNIT}"
