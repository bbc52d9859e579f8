"""The fault matrix: each way a run can go wrong, what the user sees (ERROR for the
harness's or the machine's fault, FAIL for the guest's), and that nothing is left behind
(no QEMU, no private directory, no lock held, no half-written file) and the shared image
is unchanged (the `image` fixture checks its hash).

Cases that need no VM run in milliseconds with a stand-in (a process that floods a file
as QEMU would, a tmpfs that fills up, the fake backend); the others boot the real image
(marked `vm`). Faults tested where their subject lives:
  - the guest's report channel carrying garbage: test_notify_and_results.py
  - a truncated image, not a disk image, an image with no root or old systemd:
    test_image.py; no boot loader on the ESP: test_board_image.py
  - QEMU crashing once (retried) and twice: test_flow.py
  - the autokit worker answering 500, BUSY forever, chunks resent out of order or
    missing, the worker killed mid-test: test_autokit_client.py,
    test_virtual_worker.py, test_autokit_vm.py (vanishing mid-flash is here)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.__main__ import main, run_and_record
from harness.backends.autokit.client import WorkerClient, WorkerError
from harness.backends.fake import FakeBackend, Script, passing
from harness.backends.qemu import firmware
from harness.backends.qemu.backend import QemuBackend
from harness.backends.qemu.command import RunFiles
from harness.backends.qemu.machine import QemuMachine, sweep_orphans
from harness.boot.machine import Ending, EndingKind
from harness.boot.plan import console_limit
from harness.boot.watch import power_off_after, watch
from harness.declaration.keys import Firmware
from harness.errors import HarnessError, LogDirBusy
from harness.image.parts import Image, ImageParts
from harness.process import OwnedProcess
from harness.settings import Settings
from harness.verdict.log_dir import owning_log_dir
from harness.verdict.notify import GuestReport
from harness.verdict.results import Status, classify
from harness.wrapper import RunContext
from tests.e2e import (
    ROOT,
    SNAPSHOTS,
    boot_path,
    harness_leftovers,
    meson_project,
    meson_setup,
    run_wrapper,
    start_wrapper,
    wait_for_console,
    wait_until,
    wrapper_cmd,
    wrapper_env,
)
from tests.helpers import declaration
from tests.images import write_bootable_image, write_image, write_initrd_with_modules, write_split_artifacts
from tests.stub_worker import StubScript, StubWorker

ENV = {"HARNESS_ACCEL": "tcg"}
MB = 2**20


# --- two runs of one test at once ------------------------------------------------------


def test_a_second_run_of_a_test_in_its_log_dir_stops_at_once_and_touches_nothing(tmp_path):
    logs = tmp_path / "logs"
    with owning_log_dir(logs, "TEST-80-TWICE"):
        (logs / "result.json").write_text("the first run's")
        r = subprocess.run(
            wrapper_cmd(tmp_path / "image.raw", tmp_path, "TEST-80-TWICE", "--tap"),
            cwd=ROOT,
            env=wrapper_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        with pytest.raises(LogDirBusy, match=f"process {os.getpid()}"):
            with owning_log_dir(logs, "TEST-80-TWICE"):
                pass
    assert r.returncode == 99
    assert f"TEST-80-TWICE is already running with its logs in {logs} (process {os.getpid()})" in r.stderr
    assert "fix: wait for the other run, or run this one from a build directory of its own" in r.stderr
    assert "Bail out!" in r.stdout
    assert (logs / "result.json").read_text() == "the first run's"
    with owning_log_dir(logs, "TEST-80-TWICE"):  # free again once the first run is over
        pass


# --- a guest that floods its console ---------------------------------------------------


def test_a_flooding_console_stops_the_machine_and_the_log_is_cut(tmp_path):
    files = RunFiles(tmp_path / "tmp", tmp_path / "logs", tmp_path / "tmp" / "disk")
    files.tmp.mkdir()
    files.logs.mkdir()
    # What QEMU does with a guest printing in a loop: write the console file, endlessly.
    flood = subprocess.Popen(["sh", "-c", f"exec yes flood-line-of-a-stuck-guest > {files.console}"])
    machine = QemuMachine(OwnedProcess(flood), files, files.tmp / "stderr", GuestReport())
    try:
        ending = watch(machine, 60, 2 * MB)
    finally:
        flood.kill()
        flood.wait()
    assert ending.kind == EndingKind.CONSOLE_FLOOD
    assert flood.returncode == -signal.SIGKILL, "the machine was not stopped"
    text = files.console.read_bytes()
    assert 2 * MB < len(text) < 2 * MB + 200
    assert text.endswith(b"[harness: the log is cut here, at 2 MB; the guest wrote more]\n")


def test_a_flooding_console_is_the_tests_failure(tmp_path):
    ending = Ending(EndingKind.CONSOLE_FLOOD, detail="the guest wrote more than 64 MB to its console; ...,")
    outcome = classify("TEST-81-FLOOD", 123, 100, ending, GuestReport())
    assert outcome.status == Status.FAIL
    assert (
        outcome.reason == "the guest wrote more than 64 MB to its console; ..., before the test unit started"
    )


# --- a boot that falls into rescue or emergency mode -------------------------------------

RESCUE_CONSOLE = (
    "Failed to isolate default target: Unit TEST-98-NONE.service not found.\n"
    "You are in rescue mode. After logging in, type journalctl -xb to view\n"
    "Enter root password for system maintenance\n"
)


@pytest.mark.parametrize(
    "console, mode",
    [
        (RESCUE_CONSOLE, "rescue mode"),
        ("You are in emergency mode. After logging in\n", "emergency mode"),
        (
            "Cannot open access to console, the root account is locked.\n",
            "rescue or emergency mode ('Cannot open access to console, the root account is locked.')",
        ),
    ],
)
def test_a_boot_at_a_maintenance_prompt_fails_at_once_naming_it(tmp_path, monkeypatch, console, mode):
    monkeypatch.setattr("harness.boot.watch.MAINTENANCE_GRACE", 0.3)  # no guard unit here to wait for
    files = RunFiles(tmp_path / "tmp", tmp_path / "logs", tmp_path / "tmp" / "disk")
    files.tmp.mkdir()
    files.logs.mkdir()
    # The guest prints its prompt, in two pieces, then waits for a password that never comes.
    half = len(console) // 2
    script = (
        f"printf '%s' \"$1\" > {files.console}; sleep 0.2; printf '%s' \"$2\" >> {files.console}; sleep 60"
    )
    stuck = subprocess.Popen(["sh", "-c", script, "sh", console[:half], console[half:]])
    machine = QemuMachine(OwnedProcess(stuck), files, files.tmp / "stderr", GuestReport())
    try:
        ending = watch(machine, 60, 2 * MB)
        power_off_after(machine, ending)
    finally:
        stuck.kill()
        stuck.wait()
    assert ending == Ending(EndingKind.MAINTENANCE, detail=mode)
    outcome = classify("TEST-98-NONE", 123, 60, ending, GuestReport())
    assert outcome.status == Status.FAIL
    assert outcome.reason == f"boot failed: the guest fell into {mode} before the test unit started"


def test_a_maintenance_prompt_is_left_to_a_person_at_the_console(tmp_path):
    files = RunFiles(tmp_path / "tmp", tmp_path / "logs", tmp_path / "tmp" / "disk")
    files.tmp.mkdir()
    files.logs.mkdir()
    files.console.write_text(RESCUE_CONSOLE)
    done = subprocess.Popen(["sh", "-c", "sleep 0.5"])  # the person leaves the shell: the VM ends
    machine = QemuMachine(OwnedProcess(done), files, files.tmp / "stderr", GuestReport())
    assert watch(machine, None, 2 * MB).kind == EndingKind.EXITED  # interactive: no timeout


def test_the_console_limit_is_a_number_of_megabytes():
    assert console_limit(Settings.from_environment({})) == 64 * MB
    assert console_limit(Settings.from_environment({"HARNESS_CONSOLE_LIMIT_MB": "5"})) == 5 * MB
    with pytest.raises(HarnessError, match="HARNESS_CONSOLE_LIMIT_MB='lots' is not a number of megabytes"):
        console_limit(Settings.from_environment({"HARNESS_CONSOLE_LIMIT_MB": "lots"}))


# --- an image a VM cannot boot -----------------------------------------------------------


def test_an_initrd_without_the_virtio_drivers_is_an_error_before_booting(tmp_path):
    write_image(tmp_path)
    write_initrd_with_modules(tmp_path, ["block/virtio_blk"], ["char/virtio_console"])
    image = Image.open(tmp_path / "image.raw")
    with pytest.raises(HarnessError) as e:
        QemuBackend().firmware(Firmware.AUTO, image)
    assert f"the initrd of {image.path} has no virtio_pci driver, nor is it built into the kernel" in str(
        e.value
    )
    assert "KernelModulesInitrdInclude=" in e.value.fix


# --- no UEFI firmware ------------------------------------------------------------------


def test_missing_uefi_firmware_is_an_error_before_qemu_starts(tmp_path, monkeypatch, capsys):
    image = write_bootable_image(tmp_path / "image", 512)
    write_split_artifacts(tmp_path / "image")
    esp = 1 * MB
    loader = tmp_path / "BOOTX64.EFI"
    loader.write_bytes(b"MZ systemd-boot")
    subprocess.run(["mmd", "-i", f"{image}@@{esp}", "::/EFI/BOOT"], check=True)
    subprocess.run(["mcopy", "-i", f"{image}@@{esp}", str(loader), "::/EFI/BOOT/BOOTX64.EFI"], check=True)
    monkeypatch.setattr(firmware, "read_descriptors", lambda: [])
    private = tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    monkeypatch.setenv("HARNESS_INTERACTIVE", "0")
    monkeypatch.setenv("HARNESS_COLD_BOOT", "1")
    logger = logging.getLogger("harness")  # main() sets up the wrapper's logging: undone afterwards
    for attribute in ("handlers", "propagate", "level"):
        value = getattr(logger, attribute)
        monkeypatch.setattr(logger, attribute, list(value) if attribute == "handlers" else value)
    status = main(
        [
            "run",
            "--name=TEST-82-NO-OVMF",
            f"--test-dir={tmp_path}",
            f"--image={image}",
            f"--log-dir={tmp_path / 'logs'}",
            "--firmware=uefi",
        ]
    )
    err = capsys.readouterr().err
    assert status == 99
    assert "no UEFI firmware for x86_64" in err and "install OVMF (Debian: apt-get install ovmf)" in err
    assert list(private.iterdir()) == [], "the private directory was left behind"


# --- the wrapper killed outright -------------------------------------------------------


def test_the_private_directories_of_killed_wrappers_are_swept(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = tmp_path / f"harness-TEST-83-p1-KILLED-p{gone.pid}-abc_123"
    alive = tmp_path / f"harness-TEST-83-ALIVE-p{os.getpid()}-xyz"
    other = tmp_path / "harness-not-ours"
    for d in (orphan, alive, other):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "overlay.qcow2").write_bytes(b"x")
    sweep_orphans(tmp_path)
    assert not orphan.exists()
    assert alive.exists() and other.exists()


# --- the worker vanishing mid-flash ----------------------------------------------------


def test_a_worker_vanishing_mid_flash_is_an_infrastructure_error():
    script: StubScript = {
        ("POST", "/dut/flashImage"): [(200, {"timeoutTries": 5})],
        ("GET", "/dut/flashState"): [(200, b"PENDING")],
    }
    with StubWorker(script) as worker:
        gone = threading.Event()

        def vanish(seconds: float) -> None:  # between two polls, the worker goes away
            if not gone.is_set():
                worker.server.shutdown()
                worker.server.server_close()
                gone.set()

        client = WorkerClient(worker.url, sleep=vanish, timeout=5)
        with pytest.raises(WorkerError, match="unreachable") as e:
            client.flash(poll=0)
    assert worker.paths() == ["/dut/flashImage", "/dut/flashState"]
    assert "worker runs" in e.value.fix


# --- a full disk under the logs --------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB file system of its own (a tmpfs; needs root, as CI has)."""
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int) -> None:
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))


def test_a_nearly_full_log_disk_is_an_error_before_anything_boots(tmp_path, small_disk):
    fill(small_disk, leave=4 * MB)
    r = subprocess.run(
        [*wrapper_cmd(tmp_path / "image.raw", tmp_path, "TEST-84-FULL"), f"--log-dir={small_disk / 'logs'}"],
        cwd=ROOT,
        env=wrapper_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 99
    assert f"MB free for the logs in {small_disk / 'logs'}" in r.stderr
    assert "fix: free space on that file system" in r.stderr


def test_a_disk_filling_up_during_the_run_is_an_error_and_leaves_no_half_file(tmp_path, small_disk):
    logs = small_disk / "logs"
    image = ImageParts(write_image(tmp_path / "image"))
    fill(small_disk, leave=17 * MB)  # enough to start, not for what the guest prints
    ctx = RunContext(logs, None, "run-1", snapshot_dir=tmp_path / "snapshots")
    backend = FakeBackend(Script(passing().report, console=b"x" * (18 * MB)))
    record = run_and_record(declaration(), image, ctx, backend, Settings.from_environment(ENV), False, 1)
    assert record.status == Status.ERROR
    assert f"could not write the logs in {logs}: No space left on device" in record.reason
    assert backend.running == 0
    assert not list(logs.glob("*.partial"))
    (small_disk / "filler").unlink()  # space again: the next run is not hindered by this one
    settings = Settings.from_environment(ENV)
    record = run_and_record(declaration(), image, ctx, FakeBackend(passing()), settings, False, 1)
    assert record.status == Status.PASS
    assert (logs / "result.json").is_file()


# --- end to end: the real image -------------------------------------------------------


def qemu_of(name: str) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"qemu-system.*{os.environ['TMPDIR']}/harness-{name}-"],
        capture_output=True,
        text=True,
    ).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.vm
def test_qemu_killed_during_the_test_is_an_error(image, tmp_path):
    name = "TEST-85-QEMU-KILLED"
    proc = start_wrapper(image, tmp_path, name, "--command=/bin/sh -c 'echo test-is-running; sleep infinity'")
    try:
        wait_for_console(tmp_path / "logs" / "console.log", "test-is-running")
        for pid in qemu_of(name):
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    print(out)
    assert proc.returncode == 99
    assert f"{name}: ERROR: the VM was killed by signal 9 while the test was running" in out
    assert harness_leftovers(name) == ([], [])


@pytest.mark.vm
def test_the_wrappers_vm_dies_with_it_and_its_directory_is_swept(image, tmp_path):
    name = "TEST-86-WRAPPER-KILLED"
    proc = start_wrapper(image, tmp_path, name, "--command=/bin/sh -c 'echo test-is-running; sleep infinity'")
    try:
        wait_for_console(tmp_path / "logs" / "console.log", "test-is-running")
        proc.send_signal(signal.SIGKILL)  # no clean-up runs in the wrapper
        proc.wait(timeout=10)
        wait_until(lambda: not qemu_of(name), 30, "QEMU outlived its wrapper")
    finally:
        proc.kill()
    assert harness_leftovers(name)[1], "expected the killed wrapper's directory, for the next run to sweep"
    sweep_orphans(Path(os.environ["TMPDIR"]))  # what the next run does first
    assert harness_leftovers(name) == ([], [])


@pytest.mark.vm
def test_a_guest_flooding_its_console_fails_with_the_log_cut(image, tmp_path):
    name = "TEST-87-FLOOD"
    r = run_wrapper(
        image,
        tmp_path,
        name,
        "--command=/bin/sh -c 'head -c 1G /dev/zero | tr \"\\\\0\" x > /dev/console'",
        env=dict(wrapper_env(), HARNESS_CONSOLE_LIMIT_MB="4"),
    )
    assert r.returncode == 1
    assert f"{name}: FAIL: the guest wrote more than 4 MB to its console" in r.stdout
    size = (tmp_path / "logs" / "console.log").stat().st_size
    assert 4 * MB < size < 4 * MB + 200
    assert harness_leftovers(name) == ([], [])


def project_with_test(
    tmp_path: Path, name: str, configuration: str, keys: str = ""
) -> tuple[Path, Path, dict[str, str]]:
    """A meson project of its own with one test `name` (its `configuration` entries and
    other `keys`), set up against the built image: project, build directory, environment."""
    project = meson_project(tmp_path / "project")
    (project / "test" / name).mkdir()
    (project / "test" / name / "meson.build").write_text(f"""\
integration_tests += [integration_test_template + {{
        'name' : fs.name(meson.current_source_dir()),
        {keys}
        'configuration' : {{{configuration}}},
}}]
""")
    build, env = meson_setup(project, HARNESS_SNAPSHOT_DIR=str(SNAPSHOTS))
    return project, build, env


def start_meson_test(
    project: Path, build: Path, env: dict[str, str], name: str, **popen: Any
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["meson", "test", "-C", str(build), name],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


@pytest.mark.vm
def test_two_meson_test_runs_on_one_build_directory(image, tmp_path):
    name = "TEST-88-SLOW"
    project, build, env = project_with_test(
        tmp_path, name, """'command' : '/bin/sh -c "echo first-run-is-here; sleep 15; exit 123"'"""
    )
    logs = build / "integration-tests" / name
    first = start_meson_test(project, build, env, name)
    try:
        wait_until((logs / "console.log").is_file, 300, "the first run's VM never started")
        second = subprocess.run(
            ["meson", "test", "-C", str(build), "--print-errorlogs", name],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        out, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    print(out, second.stdout)
    assert first.returncode == 0 and f"{name}" in out and "OK" in out
    assert second.returncode != 0 and "ERROR" in second.stdout
    # (each run writes meson-logs/testlog.txt; the first, ending last, has the last word)
    assert f"{name} is already running with its logs in {logs}" in second.stdout
    assert "first-run-is-here" in (logs / "console.log").read_text(errors="replace")
    assert '"status": "pass"' in (logs / "result.json").read_text()
    assert harness_leftovers(name) == ([], [])


# The same faults on both paths must read the same: a resumed VM is no excuse.
@pytest.mark.vm
# The cold boot's timeout covers its boot (~20 s here alone, up to ~60 s beside the
# boards in CI) and leaves the test time to start.
@pytest.mark.parametrize("boot, timeout", [("cold", 100), ("snapshot", 30)])
def test_hanging_guest_fails_at_its_timeout(image, tmp_path, boot, timeout):
    r = run_wrapper(
        image,
        tmp_path,
        "TEST-91-HANGS",
        "--command=sleep infinity",
        f"--timeout={timeout}",
        "--timeout-factor=1",
        boot="cold" if boot == "cold" else "auto",
    )
    assert r.returncode == 1
    assert f"TEST-91-HANGS: FAIL: timed out after {timeout} s while the test was running" in r.stdout
    assert boot_path(tmp_path) == boot
    assert harness_leftovers("TEST-91-HANGS") == ([], [])


@pytest.mark.vm
@pytest.mark.parametrize("boot", ["cold", "snapshot"])
def test_kernel_panic_fails_without_waiting_for_the_timeout(image, tmp_path, boot):
    r = run_wrapper(
        image,
        tmp_path,
        "TEST-92-PANICS",
        "--command=/bin/sh -c 'echo c >/proc/sysrq-trigger'",
        "--timeout=1000",
        "--timeout-factor=1",
        boot="cold" if boot == "cold" else "auto",
    )
    assert r.returncode == 1
    assert (
        "TEST-92-PANICS: FAIL: kernel panic while the test was running: Kernel panic - not syncing"
        in r.stdout
    )
    assert boot_path(tmp_path) == boot
    assert harness_leftovers("TEST-92-PANICS") == ([], [])


@pytest.mark.vm
def test_broken_boot_ends_at_once_instead_of_at_the_timeout(image, tmp_path):
    # The last systemd.unit= wins: the guest boots into emergency mode, as a broken boot does.
    r = run_wrapper(
        image,
        tmp_path,
        "TEST-97-EMERGENCY",
        "--cmdline=systemd.unit=emergency.target",
        "--timeout=1000",
        "--timeout-factor=1",
    )
    assert r.returncode == 1
    assert "TEST-97-EMERGENCY: FAIL: boot failed: the guest fell into emergency mode" in r.stdout
    assert harness_leftovers("TEST-97-EMERGENCY") == ([], [])


@pytest.mark.vm
@pytest.mark.parametrize(
    "cmdline, said",
    [
        ("systemd.unit=rescue.target", "rescue mode"),
        # A test unit that is nowhere: PID 1 falls back to rescue.target.
        ("systemd.unit=TEST-96-NO-SUCH-UNIT.service", "rescue mode"),
    ],
)
def test_a_boot_that_never_reaches_its_test_fails_at_once_naming_why(image, tmp_path, cmdline, said):
    r = run_wrapper(
        image, tmp_path, "TEST-96-RESCUE", f"--cmdline={cmdline}", "--timeout=1000", "--timeout-factor=1"
    )
    assert r.returncode == 1
    assert f"TEST-96-RESCUE: FAIL: boot failed: the guest fell into {said}" in r.stdout, r.stdout
    took = json.loads((tmp_path / "logs" / "result.json").read_text())["duration_s"]
    print(f"{cmdline}: FAIL after {took} s (the timeout was 1000 s)")
    assert harness_leftovers("TEST-96-RESCUE") == ([], [])


@pytest.mark.vm
@pytest.mark.parametrize("unit_path", ["/etc/harness-units:"])
def test_a_test_finds_its_unit_whatever_unit_path_it_declares(image, tmp_path, unit_path):
    """systemd's own wrapper sets SYSTEMD_UNIT_PATH for its tests' units; the harness's
    units (from credentials, by the generators) must still be found."""
    r = run_wrapper(
        image,
        tmp_path,
        "TEST-96-UNIT-PATH",
        f"--cmdline=SYSTEMD_UNIT_PATH={unit_path}",
        "--command=/bin/sh -c 'echo unit-path-is-$SYSTEMD_UNIT_PATH; exit 123'",
        "--boot=cold",
    )
    assert r.returncode == 0, r.stdout


@pytest.mark.vm
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_process_or_file(image, tmp_path, signum):
    name = f"TEST-93-INTERRUPTED{signum}"
    proc = start_wrapper(image, tmp_path, name, "--command=sleep infinity")
    try:
        wait_until(lambda: harness_leftovers(name)[0], 60, "QEMU never started")
        time.sleep(3)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    print(out)
    assert proc.returncode == 130
    assert "interrupted" in out
    assert harness_leftovers(name) == ([], [])


def test_missing_image_is_an_infrastructure_error(tmp_path):
    r = run_wrapper(tmp_path / "nope.raw", tmp_path, "TEST-94-NOIMAGE")
    assert r.returncode == 99
    assert "no image at" in r.stderr and "meson compile -C build mkosi" in r.stderr


@pytest.mark.vm
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("during", ["boot", "test"])
def test_meson_test_interrupted_leaves_no_vm(tmp_path, signum, during):
    name = f"TEST-89-{during.upper()}-{signum.name}"
    project, build, env = project_with_test(
        tmp_path,
        name,
        """'command' : '/bin/sh -c "echo test-is-running; sleep infinity"'""",
        "'boot' : 'cold'," if during == "boot" else "",
    )
    # meson leads its group, as at a terminal: SIGINT is Ctrl-C
    meson = start_meson_test(project, build, env, name, start_new_session=True)
    try:
        wait_until(lambda: qemu_of(name), 300, "QEMU never started")
        if during == "boot":
            time.sleep(3)
        else:
            wait_for_console(build / "integration-tests" / name / "console.log", "test-is-running")
        meson.send_signal(signum)
        out, _ = meson.communicate(timeout=60)
    finally:
        meson.kill()
    print(out)
    assert meson.returncode != 0
    wait_until(lambda: not qemu_of(name), 10, "QEMU outlived meson test")
    # meson gives a test half a second after SIGTERM before it kills the whole group; a
    # private directory the wrapper had no time to remove is the next run's to sweep.
    sweep_orphans(Path(os.environ["TMPDIR"]))
    assert harness_leftovers(name) == ([], [])


def test_a_shell_asked_for_without_a_console_is_an_error_saying_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_INTERACTIVE", "0")
    monkeypatch.setenv("HARNESS_SHELL", "1")
    status = main(["run", "--name=TEST-83-SHELL", f"--test-dir={tmp_path}", f"--image={tmp_path / 'x.raw'}"])
    err = capsys.readouterr().err
    assert status == 99
    assert "HARNESS_SHELL=1 (or TEST_SHELL=1) boots the test's VM to a shell at the console" in err
    assert "meson test -C build -i TEST-83-SHELL" in err
