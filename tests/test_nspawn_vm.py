"""End to end on the nspawn backend: the wrapper (`--backend=nspawn`) runs generated
tests in systemd-nspawn containers booted from the built image's root partition, and
reports them as it does VMs: a failing subtest, a hang at its timeout, Ctrl-C; and
nothing is left (no container process, mount, loop device or private directory).

Marked `vm` because it needs the built image, though nothing boots a VM: each test takes
a few seconds. Skipped where containers cannot run: not root, or no systemd-nspawn.

Core dumps: the kernel hands every core dump to the host's core_pattern, in the host's
namespaces, so a container's systemd-coredump never hears of them (here core_pattern pipes
to /lib/systemd/systemd-coredump, which this host lacks: the dump is lost). The host sees
the crash through the kernel's process events (backends/nspawn/crashes.py) and the test
FAILs as in a VM, with no stack trace. Sanitizer reports reach the gate in the journal,
which a container sends as a VM does.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from harness.backends.nspawn.command import find_nspawn
from harness.errors import HarnessError
from harness.settings import Settings
from tests.e2e import (
    CASES_WITH_A_FAILURE,
    IMAGE,
    ROOT,
    harness_leftovers,
    run_wrapper,
    wait_until,
    wrapper_cmd,
    wrapper_env,
)

pytestmark = pytest.mark.vm


@pytest.fixture(autouse=True)
def containers_run_here() -> None:
    if os.geteuid() != 0:
        pytest.skip("the nspawn backend mounts the image's root: it runs as root")
    try:
        find_nspawn(Settings.from_environment(dict(os.environ)), IMAGE, "x86_64")
    except HarnessError as e:
        pytest.skip(str(e))


def nspawn_env() -> dict[str, str]:
    env = wrapper_env()
    env.pop("HARNESS_BACKEND", None)  # it would override --backend
    env.pop("HARNESS_PREFER_CONTAINERS", None)
    return env


def run_in_container(image: Path, tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_wrapper(image, tmp_path, name, "--backend=nspawn", *args, env=nspawn_env())


def private_dirs(name: str) -> list[Path]:
    return list(Path(os.environ["TMPDIR"]).glob(f"harness-nspawn-{name}-*"))


def our_mounts(name: str) -> list[tuple[str, str]]:
    """The mounts (point, source) under this test's private directories, and any under
    /run/systemd/nspawn (nspawn's per-container tmpfs, which it leaves on a host whose
    PID 1 is not systemd unless it runs in a mount namespace of its own)."""
    prefixes = (f"{os.environ['TMPDIR']}/harness-nspawn-{name}-", "/run/systemd/nspawn/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            point = fields.split()[4]
            if point.startswith(prefixes):
                found.append((point, rest.split()[1]))
    return found


def start_time(pid: int) -> str | None:
    """When `pid` started; None once it has ended (a zombie has: a process killed with its
    parent waits a moment for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (the container's included), with its start time: a PID
    reused afterwards is not taken for one of them."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rfind(")") + 2 :].split()[1]), []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if (started := start_time(child)) is not None:
                found[child] = started
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def attached(loop: str) -> bool:
    return (Path("/sys/block") / Path(loop).name / "loop").exists()


class Running:
    """A wrapper running a container, seen from outside while its test runs: its
    processes (the container's too), its mount and loop device."""

    def __init__(self, image: Path, tmp_path: Path, name: str, *args: str) -> None:
        self.name = name
        # Its own session, as at a terminal: Ctrl-C is SIGINT to the whole group.
        self.proc = subprocess.Popen(
            wrapper_cmd(image, tmp_path, name, "--backend=nspawn", *args),
            cwd=ROOT,
            env=nspawn_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        console = tmp_path / "logs" / "console.log"
        wait_until(
            lambda: console.is_file() and "payload-is-running" in console.read_text(errors="replace"),
            60,
            "the test never started in its container",
            0.05,
        )
        self.processes = descendants(self.proc.pid)
        self.mounts = our_mounts(name)
        # The root tree bound read-only, or (while the tree was made) the loop device.
        self.loops = [source for _, source in self.mounts if source.startswith("/dev/loop")]
        assert self.mounts and all(attached(loop) for loop in self.loops), self.mounts
        assert any(cmdline(p) == "sleep infinity" for p in self.processes), (
            "the payload is not below the wrapper"
        )

    def finish(self, timeout: float) -> str:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            self.proc.kill()
        print(out)
        return out

    def assert_nothing_left(self) -> None:
        alive = {p for p, started in self.processes.items() if start_time(p) == started}
        assert not alive, f"left running: {alive}"
        assert our_mounts(self.name) == []
        still = [loop for loop in self.loops if attached(loop)]
        losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        assert not still, f"loop devices left attached: {still}\n{losetup}"
        assert private_dirs(self.name) == []


PAYLOAD = "--command=/bin/sh -c 'echo payload-is-running >/dev/console; sleep infinity'"


# (a) ------------------------------------------------------------------------------------


def test_a_failing_subtest_is_a_fail_naming_it(image, tmp_path):
    name = "TEST-90-FAILING-SUBTEST"
    (tmp_path / "cases.sh").write_text(CASES_WITH_A_FAILURE)
    r = run_in_container(
        image, tmp_path, name, "--credentials=cases.sh=@cases.sh", "--command=/bin/bash %d/cases.sh"
    )
    assert r.returncode == 1, r.stdout
    assert f"{name}: FAIL: {name} failed with exit status 1 (expected 123)" in r.stdout
    assert "on nspawn" in r.stdout
    assert "  PASS testcase_1_passes" in r.stdout
    assert "  FAIL testcase_2_fails_on_purpose: exited with status 1" in r.stdout
    assert "  SKIP testcase_3_skips: nothing to do here" in r.stdout
    assert "this subtest fails on purpose" in (tmp_path / "logs" / "console.log").read_text(errors="replace")
    assert private_dirs(name) == [] and our_mounts(name) == []


# (b) ------------------------------------------------------------------------------------

# As in test_gates_vm.py: sleep, killed by SIGSEGV; the test itself exits as if all was well.
CRASH = "--command=/bin/sh -c 'sleep 60 & sleep 1; kill -SEGV $$!; wait; exit 123'"
EXIT_123 = "--command=/bin/sh -c 'exit 123'"


def test_a_core_dump_in_a_container_fails_it_as_in_a_vm(image, tmp_path):
    r = run_in_container(image, tmp_path, "TEST-94-CORE-DUMP", CRASH)
    assert r.returncode == 1, r.stdout
    assert "TEST-94-CORE-DUMP: FAIL: a process dumped core during the test: sleep (pid " in r.stdout
    assert "SIGSEGV, /usr/bin/sleep)" in r.stdout, r.stdout
    assert harness_leftovers("TEST-94-CORE-DUMP") == ([], [])


def test_a_core_dump_of_an_excluded_executable_passes_in_a_container(image, tmp_path):
    r = run_in_container(image, tmp_path, "TEST-94-CORE-DUMP", CRASH, "--coredump-exclude-regex=/sleep$")
    assert r.returncode == 0, r.stdout


# As in test_gates_vm.py: a daemon's sanitizer report, with HARNESS_SANITIZERS=1.
REPORT = (
    "--command=/bin/sh -c 'printf \"==42==ERROR: AddressSanitizer: heap-use-after-free\\n"
    "SUMMARY: AddressSanitizer: heap-use-after-free myd.c:12\\n\" | systemd-cat -t myd; exit 123'"
)


def test_a_sanitizer_report_fails_a_sanitizer_build_in_a_container(image, tmp_path):
    env = {**nspawn_env(), "HARNESS_SANITIZERS": "1"}
    r = run_wrapper(image, tmp_path, "TEST-95-SANITIZER", "--backend=nspawn", REPORT, env=env)
    assert r.returncode == 1, r.stdout
    assert "TEST-95-SANITIZER: FAIL: a sanitizer reported during the test: myd[" in r.stdout, r.stdout


def test_the_root_is_copied_once_per_image_then_bound(image, tmp_path):
    store = tmp_path / "store"
    env = {**nspawn_env(), "HARNESS_SNAPSHOT_DIR": str(store)}
    said = []
    for _ in range(2):
        r = run_wrapper(image, tmp_path, "TEST-96-ROOT-TREE", "--backend=nspawn", EXIT_123, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        said.append(r.stdout + r.stderr)
    assert "copying the root of" in said[0] and "copying the root of" not in said[1]
    trees = sorted(p.name for p in store.iterdir())
    assert len(trees) == 2 and trees[0].startswith("container-root-") and trees[1] == f"{trees[0]}.lock"
    assert harness_leftovers("TEST-96-ROOT-TREE") == ([], [])
    assert str(image) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


# (c) ------------------------------------------------------------------------------------


def test_a_hang_fails_at_its_timeout_and_leaves_nothing(image, tmp_path):
    name = "TEST-91-HANGS"
    # No --timeout-factor: a container's timeout is the declared one, KVM or not.
    running = Running(image, tmp_path, name, PAYLOAD, "--timeout=4")
    out = running.finish(timeout=60)
    assert running.proc.returncode == 1
    assert f"{name}: FAIL: timed out after 4 s while the test was running" in out
    running.assert_nothing_left()


# (d) ------------------------------------------------------------------------------------


# Ctrl-C at a terminal: SIGINT to the wrapper's whole group (nspawn's included); a
# service manager's stop: SIGTERM to the wrapper alone.
@pytest.mark.parametrize(
    "signum, group", [(signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGTERM, False)]
)
def test_an_interrupted_run_leaves_nothing(image, tmp_path, signum, group):
    name = f"TEST-93-INTERRUPTED{signum}{'-GROUP' if group else ''}"
    running = Running(image, tmp_path, name, PAYLOAD, "--timeout=120")
    if group:
        os.killpg(running.proc.pid, signum)
    else:
        running.proc.send_signal(signum)
    out = running.finish(timeout=30)
    assert running.proc.returncode == 130
    assert "interrupted" in out
    running.assert_nothing_left()


# (e) host-driven tests ------------------------------------------------------------------

HOST_TEST = """
def test_commands_files_a_reboot_and_a_power_cut(machine, tmp_path):
    assert machine.check("echo hello").stdout == b"hello\\n"
    (tmp_path / "sent").write_bytes(b"payload")
    machine.put(tmp_path / "sent", "/run/payload")
    machine.get("/run/payload", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"payload"
    first = machine.boot_id
    machine.reboot()
    second = machine.boot_id
    machine.power_cycle()
    assert len({first, second, machine.boot_id}) == 3
    machine.console.expect(r"harness: boot \\S+ is up")


def test_qmp_is_refused_naming_why(machine):
    try:
        machine.qmp("query-status")
    except Exception as e:
        assert "a container has no QMP" in str(e)
    else:
        raise AssertionError("qmp answered in a container")
"""


def test_a_host_driven_test_drives_a_container(image, tmp_path):
    (tmp_path / "test_host.py").write_text(HOST_TEST)
    r = run_in_container(image, tmp_path, "TEST-96-HOST", "--host=test_host.py")
    assert r.returncode == 0, r.stdout
    assert "TEST-96-HOST: PASS: 2 of 2 steps of test_host.py passed" in r.stdout


def test_a_core_dump_fails_a_host_driven_test_in_a_container(image, tmp_path):
    crash = "def test_crash(machine):\n    machine.run('sleep 60 & sleep 0.5; kill -SEGV $!; wait')\n"
    (tmp_path / "test_host.py").write_text(crash)
    r = run_in_container(image, tmp_path, "TEST-97-HOST-CRASH", "--host=test_host.py")
    assert r.returncode == 1, r.stdout
    assert "a process dumped core during the test: sleep (pid " in r.stdout
