"""Whether KVM really works, and how much longer everything takes when it does not.

/dev/kvm can exist and still hang a normal kernel (a host without vmx/svm exposed, as
in many nested CI machines), so the device alone proves nothing: the CPU must also
advertise virtualisation. Without it the guest runs under TCG, several times slower.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import attrs

TCG_TIMEOUT_FACTOR = 5
MTTCG_SAFE_QEMU = 9  # the first QEMU major version we run with several vCPUs under TCG


@attrs.frozen
class Acceleration:
    kind: str  # "kvm" or "tcg"
    reason: str

    @property
    def timeout_factor(self) -> int:
        return 1 if self.kind == "kvm" else TCG_TIMEOUT_FACTOR

    def cpu_args(self, qemu_major: int) -> list[str]:
        """-cpu and -smp: two vCPUs (tools/bench: a cold boot under TCG takes two thirds of
        the time with one). Under TCG only from QEMU 9 on: QEMU 7.2's multi-threaded TCG
        races with the kernel's live code patching (int3 oopses at boot). Not "max,svm=off"
        either: that CPU model corrupts the guest under TCG (QEMU 7.2)."""
        if self.kind == "kvm":
            return ["-cpu", "host", "-smp", "2"]
        return ["-cpu", "max", "-smp", "2" if qemu_major >= MTTCG_SAFE_QEMU else "1"]


def host_architecture() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def kvm_usable(cpu_flags: set[str], dev_kvm_accessible: bool, host_arch: str) -> tuple[bool, str]:
    if not dev_kvm_accessible:
        return False, "/dev/kvm is missing or not accessible"
    if host_arch in ("x86_64", "i386") and not cpu_flags & {"vmx", "svm"}:
        return False, "/dev/kvm exists but the CPU advertises neither vmx nor svm"
    return True, "/dev/kvm is usable"


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect(image_arch: str | None = None, env: Mapping[str, str] = os.environ) -> Acceleration:
    forced = env.get("HARNESS_ACCEL")
    if forced in ("kvm", "tcg"):
        return Acceleration(forced, "HARNESS_ACCEL=" + forced)
    arch = host_architecture()
    if image_arch and image_arch != arch:
        return Acceleration("tcg", f"the image is {image_arch}, the host {arch}")
    try:
        with open("/proc/cpuinfo") as f:
            flags = cpu_flags(f.read())
    except OSError:
        flags = set()
    ok, reason = kvm_usable(flags, os.access("/dev/kvm", os.R_OK | os.W_OK), arch)
    return Acceleration("kvm" if ok else "tcg", reason)
