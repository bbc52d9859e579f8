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
