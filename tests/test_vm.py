"""End to end: the wrapper boots the real image under QEMU and reports what users see.

Needs the image from `meson compile -C build mkosi` (or HARNESS_IMAGE=path/image.raw).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = Path(os.environ.get("HARNESS_IMAGE", ROOT / "build" / "mkosi.output" / "image.raw"))
# The booted snapshot of the image, shared with `meson test` (same image, same harness).
SNAPSHOTS = Path(os.environ.get("HARNESS_SNAPSHOT_DIR", ROOT / "build" / "integration-tests" / "snapshots"))

pytestmark = pytest.mark.vm


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def image():
    if not IMAGE.is_file():
        pytest.fail(
            f"no image at {IMAGE}: build it with 'meson compile -C build mkosi' (or set HARNESS_IMAGE)"
        )
    before = sha256(IMAGE)
    yield IMAGE
    assert sha256(IMAGE) == before, "a test run wrote to the shared image"


def wrapper_cmd(image: Path, tmp_path: Path, name: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "run",
        f"--name={name}",
        f"--test-dir={tmp_path}",
        f"--image={image}",
        f"--log-dir={tmp_path / 'logs'}",
        *args,
    ]


def wrapper_env(boot: str = "auto", snapshots: Path = SNAPSHOTS) -> dict[str, str]:
    """`boot`: auto (the fast path where the test is eligible) or cold (HARNESS_COLD_BOOT=1)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HARNESS_INTERACTIVE="0",
        HARNESS_SNAPSHOT_DIR=str(snapshots),
        HARNESS_COLD_BOOT="1" if boot == "cold" else "0",
    )
    env.pop("HARNESS_SKIP", None)
    return env


def run_wrapper(
    image: Path, tmp_path: Path, name: str, *args: str, boot: str = "auto", snapshots: Path = SNAPSHOTS
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        wrapper_cmd(image, tmp_path, name, *args),
        cwd=ROOT,
        env=wrapper_env(boot, snapshots),
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout, result.stderr)
    return result


def boot_path(tmp_path: Path) -> str:
    """How the run's VM came up, from its result.json: cold or snapshot."""
    return json.loads((tmp_path / "logs" / "result.json").read_text())["boot"]


def harness_leftovers(name: str) -> tuple[list[str], list[Path]]:
    """The processes and private directories of this session's wrappers for test NAME
    (conftest's wrapper_tmpdir gives them a TMPDIR of their own)."""
    tmp = Path(os.environ["TMPDIR"])
    procs = subprocess.run(["pgrep", "-af", f"{tmp}/harness-{name}-"], capture_output=True, text=True).stdout
    procs = [p for p in procs.splitlines() if "pgrep" not in p]
    return procs, list(tmp.glob(f"harness-{name}-*"))


def test_failing_guest_fails_with_its_status_and_keeps_the_journal(image, tmp_path):
    r = run_wrapper(image, tmp_path, "TEST-90-FAILS", "--command=/bin/sh -c 'echo about to fail; exit 3'")
    assert r.returncode == 1
    assert "TEST-90-FAILS: FAIL: TEST-90-FAILS failed with exit status 3 (expected 123)" in r.stdout
    assert "meson test -C" in r.stdout and "--interactive TEST-90-FAILS" in r.stdout
    journal = tmp_path / "logs" / "journal.journal"
    assert f"journalctl --file {journal} -u TEST-90-FAILS.service" in r.stdout
    text = subprocess.run(
        ["journalctl", "--file", str(journal), "-u", "TEST-90-FAILS.service", "--no-pager"],
        capture_output=True,
        text=True,
    ).stdout
    assert "about to fail" in text
    assert "about to fail" in (tmp_path / "logs" / "console.log").read_text(errors="replace")
    assert harness_leftovers("TEST-90-FAILS") == ([], [])


# The same faults on both paths must read the same: a resumed VM is no excuse.
@pytest.mark.parametrize("boot, timeout", [("cold", 150), ("snapshot", 30)])
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_process_or_file(image, tmp_path, signum):
    name = f"TEST-93-INTERRUPTED{signum}"
    proc = subprocess.Popen(
        wrapper_cmd(image, tmp_path, name, "--command=sleep infinity"),
        cwd=ROOT,
        env=wrapper_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not harness_leftovers(name)[0] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert harness_leftovers(name)[0], "QEMU never started"
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


def test_bad_declaration_is_an_infrastructure_error(image, tmp_path):
    r = run_wrapper(image, tmp_path, "TEST-95-BAD", "--firmware=bios")
    assert r.returncode == 99
    assert f"{tmp_path}/meson.build: 'firmware': unknown firmware 'bios'" in r.stderr


def test_interactive_run_shows_the_console_and_a_shell_after_failure(image, tmp_path):
    import pexpect

    cmd = wrapper_cmd(
        image, tmp_path, "TEST-96-INTERACTIVE", "--command=/bin/sh -c 'echo interactive-marker; exit 4'"
    )
    env = wrapper_env()
    env.pop("HARNESS_INTERACTIVE")  # decided by the terminal, as under meson test -i
    child = pexpect.spawn(
        cmd[0], cmd[1:], cwd=str(ROOT), env=env, timeout=600, encoding="utf-8", codec_errors="replace"
    )
    try:
        child.expect("interactive-marker")
        child.expect("Root shell")
        child.expect("root@")  # the prompt: typing earlier would be lost when bash takes the tty
        child.sendline("echo shell-alive-$((6*7))")
        child.expect("shell-alive-42")
        child.sendline("exit")
        child.expect("TEST-96-INTERACTIVE: FAIL: TEST-96-INTERACTIVE failed with exit status 4")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1
    assert harness_leftovers("TEST-96-INTERACTIVE") == ([], [])
