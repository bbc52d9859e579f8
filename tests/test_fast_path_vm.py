"""End to end: the fast path. Tests resume a saved, booted VM instead of booting; these
check that the guest cannot tell where it matters, and that the snapshot is made, shared,
replaced and cleaned up as it should be."""

from __future__ import annotations

import base64
import signal
import subprocess
import time

import pytest

from tests.e2e import (
    SNAPSHOTS,
    boot_path,
    harness_leftovers,
    run_wrapper,
    start_wrapper,
    wait_until,
    wrapper_env,
)

pytestmark = pytest.mark.vm


def test_two_tests_from_one_snapshot_do_not_see_each_others_files(image, tmp_path):
    # Each writes its mark where the root overlay keeps it, and fails if the other's is there.
    for me, other in (("TEST-80-FIRST", "TEST-81-SECOND"), ("TEST-81-SECOND", "TEST-80-FIRST")):
        script = f"test ! -e /var/tmp/{other} && test ! -e /root/{other} && touch /var/tmp/{me} /root/{me}"
        r = run_wrapper(image, tmp_path / me, me, f"--command=/bin/sh -c '{script}'")
        assert r.returncode == 0, r.stdout
        assert boot_path(tmp_path / me) == "snapshot"
        assert "resuming the booted snapshot" in r.stdout


# A variable of our own vendor GUID; its bytes (base64): attributes 7 (non-volatile, boot
# and run time) and "abc".
MARK_VARIABLE = "/sys/firmware/efi/efivars/HarnessMark{n}-3c8e0d3a-2f45-4b9e-9f0e-5a1c2b3d4e5f"
MARK_BYTES = "BwAAAGFiYw=="


def snapshot_of(shape: str):
    [snapshot] = [p for p in SNAPSHOTS.glob(f"{shape}-*") if p.is_dir()]
    return snapshot


def test_uefi_tests_resume_a_uefi_snapshot_each_with_its_own_variables(image, tmp_path):
    # Each writes an EFI variable of its own and fails if the other's (or its own, from an
    # earlier run) is already in the firmware's store.
    for me, other in ((1, 2), (2, 1)):
        script = (
            f"test ! -e {MARK_VARIABLE.format(n=other)} && test ! -e {MARK_VARIABLE.format(n=me)} && "
            f"echo {MARK_BYTES} | base64 -d >{MARK_VARIABLE.format(n=me)} && "
            f"test -s {MARK_VARIABLE.format(n=me)}"
        )
        name = f"TEST-8{me}-UEFI-VARS"
        r = run_wrapper(image, tmp_path / name, name, "--firmware=uefi", f"--command=/bin/sh -c '{script}'")
        assert r.returncode == 0, r.stdout
        assert boot_path(tmp_path / name) == "snapshot"
        if me == 1:
            snapshot = snapshot_of("uefi-volatile")
            before = {f: (snapshot / f).read_bytes() for f in ("vars.fd", "disk.qcow2")}
    assert {f: (snapshot / f).read_bytes() for f in before} == before, "a test wrote to the snapshot"
    assert "HarnessMark".encode("utf-16-le") not in before["vars.fd"]


def test_persistent_tests_resume_a_persistent_snapshot_and_keep_their_writes_to_themselves(image, tmp_path):
    for me, other in (("TEST-87-KEEP", "TEST-88-KEEP"), ("TEST-88-KEEP", "TEST-87-KEEP")):
        script = f"test ! -e /var/lib/{other} && test ! -e /var/lib/{me} && touch /var/lib/{me} && sync"
        r = run_wrapper(image, tmp_path / me, me, "--storage=persistent", f"--command=/bin/sh -c '{script}'")
        assert r.returncode == 0, r.stdout
        assert boot_path(tmp_path / me) == "snapshot"
        if me == "TEST-87-KEEP":
            snapshot = snapshot_of("linux-persistent")
            disk = (snapshot / "disk.qcow2").read_bytes()
    assert (snapshot / "disk.qcow2").read_bytes() == disk, "a test wrote to the snapshot's disk"


# TPM2_PCR_Extend of PCR 16 (the debug PCR) with one SHA-256 digest, under the empty
# password session: the raw command, for an image without the TPM's user-space tools.
PCR_EXTEND = bytes.fromhex(
    " ".join(
        [
            "8002 00000041 00000182",  # with sessions, 65 bytes, TPM2_PCR_Extend
            "00000010",  # PCR 16
            "00000009 40000009 0000 00 0000",  # the empty password session
            "00000001 000b" + "01" * 32,  # one SHA-256 digest
        ]
    )
)
PCR_EXTEND_BASE64 = base64.b64encode(PCR_EXTEND).decode()  # systemd unescapes a unit's \NNN
PCR16 = "/sys/class/tpm/tpm0/pcr-sha256/16"
ZEROS = "0" * 64
DISK = "/dev/disk/by-id/virtio-harness-disk-1"
# Each run finds the machine as the snapshot's boot left it, then changes it: PCR 16
# extended, a mark on the first disk. The suite's TEST-10-TPM and TEST-11-DISKS made
# these shapes' snapshots.
FRESH_THEN_CHANGED = {
    "tpm": (
        ("--tpm=true",),
        f"test $(cat {PCR16}) = {ZEROS} && echo {PCR_EXTEND_BASE64} | base64 -d >/dev/tpmrm0"
        f" && test $(cat {PCR16}) != {ZEROS}",
    ),
    "disks": (
        ("--disks=256M", "--disks=1G"),
        f"cmp -n 65536 /dev/zero {DISK} && printf mark >{DISK} && sync && test $(head -c 4 {DISK}) = mark",
    ),
}


@pytest.mark.parametrize("shape", FRESH_THEN_CHANGED)
def test_tpm_and_disk_tests_resume_their_shapes_snapshot_each_with_its_own(image, tmp_path, shape):
    # Two at once, then a third: each must find PCR 16 unextended and the disk empty.
    declared, script = FRESH_THEN_CHANGED[shape]
    args = (*declared, f"--command=/bin/sh -c '{script}'")
    pair = [start_wrapper(image, tmp_path / f"r{n}", f"TEST-9{n}-FRESH", *args) for n in (1, 2)]
    outputs = [p.communicate(timeout=900)[0] for p in pair]
    assert [p.returncode for p in pair] == [0, 0], outputs
    r = run_wrapper(image, tmp_path / "r3", "TEST-93-FRESH", *args)
    assert r.returncode == 0, r.stdout
    assert {boot_path(tmp_path / f"r{n}") for n in (1, 2, 3)} == {"snapshot"}


def test_guest_clock_is_the_hosts_after_resume(image, tmp_path):
    # The snapshot's clock stopped when it was saved: make sure it is old enough to tell.
    r = run_wrapper(image, tmp_path / "warm", "TEST-82-WARM", "--command=true")
    assert r.returncode == 0
    age = time.time() - max(p.stat().st_mtime for p in SNAPSHOTS.glob("*/state"))
    time.sleep(max(0.0, 30 - age))
    host = int(time.time())
    # $$ and %%: systemd would expand a single $ (variables) and % (specifiers) itself.
    check = f"d=$$(( $$(date +%%s) - {host} )); echo clock offset $$d s; test $$d -ge -5 && test $$d -le 30"
    r = run_wrapper(image, tmp_path / "clock", "TEST-83-CLOCK", f"--command=/bin/sh -c '{check}'")
    assert r.returncode == 0, r.stdout
    assert boot_path(tmp_path / "clock") == "snapshot"


def test_snapshot_is_not_reused_after_the_image_changes(image, tmp_path):
    copy = tmp_path / "image" / "image.raw"
    copy.parent.mkdir()
    for suffix in (".raw", ".vmlinuz", ".initrd"):
        subprocess.run(
            ["cp", "--reflink=auto", str(image.with_suffix(suffix)), str(copy.with_suffix(suffix))],
            check=True,
        )
    snapshots = tmp_path / "snapshots"
    first = run_wrapper(copy, tmp_path / "one", "TEST-84-IMAGE", "--command=true", snapshots=snapshots)
    assert first.returncode == 0 and "once to save it as the booted snapshot" in first.stdout
    [old] = [p.name for p in snapshots.iterdir() if p.is_dir()]
    again = run_wrapper(copy, tmp_path / "two", "TEST-84-IMAGE", "--command=true", snapshots=snapshots)
    assert again.returncode == 0 and "once to save" not in again.stdout  # reused

    copy.write_bytes(copy.read_bytes())  # "rebuilt": the same bytes, a new file
    rebuilt = run_wrapper(copy, tmp_path / "three", "TEST-84-IMAGE", "--command=true", snapshots=snapshots)
    assert rebuilt.returncode == 0 and "once to save it as the booted snapshot" in rebuilt.stdout
    assert boot_path(tmp_path / "three") == "snapshot"
    assert [p.name for p in snapshots.iterdir() if p.is_dir()] != [old], "the old snapshot was reused"
    assert not (snapshots / old).exists(), "the stale snapshot was left behind"


def test_ctrl_c_during_the_snapshot_boot_leaves_nothing(image, tmp_path):
    snapshots = tmp_path / "snapshots"
    name = "TEST-85-INTERRUPTED"
    proc = start_wrapper(image, tmp_path, name, "--command=true", env=wrapper_env("auto", snapshots))
    try:
        wait_until(lambda: harness_leftovers("snapshot")[0], 60, "the snapshot boot never started")
        time.sleep(5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    print(out)
    assert proc.returncode == 130
    assert harness_leftovers("snapshot") == ([], [])
    assert harness_leftovers(name) == ([], [])
    assert sorted(p.name for p in snapshots.iterdir()) == [p.name for p in snapshots.glob("*.lock")], (
        "a partial snapshot was left behind"
    )


def test_declared_cold_boot_and_the_switch_are_honoured(image, tmp_path):
    r = run_wrapper(image, tmp_path, "TEST-86-COLD", "--command=true", "--boot=cold")
    assert r.returncode == 0
    assert "cold boot: the test declares boot: 'cold'" in r.stdout
    assert boot_path(tmp_path) == "cold"


def teardown_module() -> None:
    # Nothing of the fast path outlives the tests: no QEMU, no private directory.
    assert harness_leftovers("snapshot") == ([], [])
