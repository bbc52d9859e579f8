"""The gates against a real guest: a kernel BUG on the console, a core dump, a sanitizer's
report in the journal each fail a test whose payload passed, and the reason names it."""

from __future__ import annotations

import pytest

from tests.e2e import harness_leftovers, run_wrapper, wrapper_env

pytestmark = pytest.mark.vm

# What the kernel prints for a NULL dereference; written to /dev/kmsg it reaches the
# console as the kernel's own line does (the image has no module to provoke a real one).
BUG = "BUG: kernel NULL pointer dereference, address: 0000000000000000"


def test_a_kernel_bug_during_a_passing_test_fails_it(image, tmp_path):
    r = run_wrapper(
        image,
        tmp_path,
        "TEST-93-KERNEL-BUG",
        f"--command=/bin/sh -c 'echo \"<0>{BUG}\" >/dev/kmsg; sleep 1; exit 123'",
    )
    assert r.returncode == 1, r.stdout
    assert f"TEST-93-KERNEL-BUG: FAIL: the kernel reported trouble during the test: {BUG}" in r.stdout
    assert harness_leftovers("TEST-93-KERNEL-BUG") == ([], [])


# A process of the test crashes: sleep, killed by SIGSEGV; the test itself exits as if all was well.
CRASH = "--command=/bin/sh -c 'sleep 60 & sleep 1; kill -SEGV $$!; wait; exit 123'"


def test_a_core_dump_during_a_passing_test_fails_it_with_the_stack_trace(image, tmp_path):
    r = run_wrapper(image, tmp_path, "TEST-94-CORE-DUMP", CRASH)
    assert r.returncode == 1, r.stdout
    assert "TEST-94-CORE-DUMP: FAIL: a process dumped core during the test: sleep (pid " in r.stdout
    assert "SIGSEGV, /usr/bin/sleep)" in r.stdout and "#0 " in r.stdout, r.stdout
    assert harness_leftovers("TEST-94-CORE-DUMP") == ([], [])


def test_a_core_dump_of_an_excluded_executable_passes(image, tmp_path):
    r = run_wrapper(image, tmp_path, "TEST-94-CORE-DUMP", CRASH, "--coredump-exclude-regex=/sleep$")
    assert r.returncode == 0, r.stdout


# A daemon's sanitizer report, in the shape ASan prints it to stderr (the image has no
# sanitized build): another process than the test, so only HARNESS_SANITIZERS=1 sends it.
REPORT = (
    "--command=/bin/sh -c 'printf \"==42==ERROR: AddressSanitizer: heap-use-after-free\\n"
    "SUMMARY: AddressSanitizer: heap-use-after-free myd.c:12\\n\" | systemd-cat -t myd; exit 123'"
)


def test_a_daemons_sanitizer_report_fails_a_sanitizer_build_unless_excluded(image, tmp_path):
    env = {**wrapper_env(), "HARNESS_SANITIZERS": "1"}
    r = run_wrapper(image, tmp_path, "TEST-95-SANITIZER", REPORT, env=env)
    assert r.returncode == 1, r.stdout
    assert "TEST-95-SANITIZER: FAIL: a sanitizer reported during the test: myd[" in r.stdout
    assert "==42==ERROR: AddressSanitizer: heap-use-after-free" in r.stdout
    r = run_wrapper(image, tmp_path, "TEST-95-SANITIZER", REPORT, "--sanitizer-exclude-regex=^myd$", env=env)
    assert r.returncode == 0, r.stdout
