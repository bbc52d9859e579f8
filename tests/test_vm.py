"""End to end: the wrapper boots the real image under QEMU and reports what users see.

Needs the image from `meson compile -C build mkosi` (or HARNESS_IMAGE=path/image.raw).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e import ROOT, board_env, harness_leftovers, run_wrapper, wrapper_cmd, wrapper_env

pytestmark = pytest.mark.vm


# The same test on both backends, read the same way: a VM here, a board behind the
# virtual worker there (UEFI, flashed, one serial console).
@pytest.mark.parametrize("backend", ["qemu", "autokit"])
def test_failing_guest_fails_with_its_status(image, tmp_path, backend, request):
    command = "--command=/bin/sh -c 'echo about to fail; exit 3'"
    if backend == "qemu":
        r = run_wrapper(image, tmp_path, "TEST-90-FAILS", command)
    else:
        worker = request.getfixturevalue("worker_process")
        r = run_wrapper(
            image,
            tmp_path,
            "TEST-90-FAILS",
            command,
            "--timeout=600",
            "--timeout-factor=1",
            env=board_env(worker.url),
        )
    assert r.returncode == 1
    assert "TEST-90-FAILS: FAIL: TEST-90-FAILS failed with exit status 3 (expected 123)" in r.stdout
    assert "about to fail" in (tmp_path / "logs" / "console.log").read_text(errors="replace")
    assert harness_leftovers("TEST-90-FAILS") == ([], [])
    # Run by hand, not by meson: the rerun is the same command (from a terminal, with the console)
    assert "rerun:       os-harness run --name=TEST-90-FAILS" in r.stdout and "meson test" not in r.stdout
    if backend == "autokit":
        return
    journal = tmp_path / "logs" / "journal.journal"
    assert f"journalctl --file {journal} -u TEST-90-FAILS.service" in r.stdout
    text = subprocess.run(
        ["journalctl", "--file", str(journal), "-u", "TEST-90-FAILS.service", "--no-pager"],
        capture_output=True,
        text=True,
    ).stdout
    assert "about to fail" in text


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


# The whole console of every boot: the kernel's first line is in console.log on a direct
# kernel boot too (its virtio console comes up seconds into the boot), cold or resumed
# (the snapshot's boot in front), and after a reboot a host test asks for.
@pytest.mark.parametrize("firmware, boot", [("linux", "cold"), ("linux", "auto"), ("uefi", "cold")])
def test_console_log_begins_with_the_kernels_first_line(image, tmp_path, firmware, boot):
    r = run_wrapper(
        image,
        tmp_path,
        "TEST-89-CONSOLE",
        f"--firmware={firmware}",
        "--command=/bin/sh -c 'exit 123'",
        boot=boot,
    )
    assert r.returncode == 0, r.stdout
    console = (tmp_path / "logs" / "console.log").read_text(errors="replace")
    assert console.count("Linux version ") == 1, console[:2000]
    assert console.index("Linux version ") < console.index("Welcome to")


REBOOTS = """
def test_every_boot_shows_its_first_line(machine):
    machine.console.expect("Linux version ")
    machine.reboot()
    machine.console.expect("Linux version ")
"""


def test_every_reboots_console_shows_the_kernels_first_line(image, tmp_path):
    (tmp_path / "test_host.py").write_text(REBOOTS)
    r = run_wrapper(image, tmp_path, "TEST-89-REBOOTS", "--host=test_host.py", "--timeout=300")
    assert r.returncode == 0, r.stdout
    assert (tmp_path / "logs" / "console.log").read_text(errors="replace").count("Linux version ") == 2
