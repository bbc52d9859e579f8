"""The kernel gate against a real guest: a kernel BUG on the console fails a test whose
payload passed, and the reason names the line."""

from __future__ import annotations

import pytest
from e2e import harness_leftovers, run_wrapper

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
