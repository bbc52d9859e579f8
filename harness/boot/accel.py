"""Whether KVM really works, and how much longer everything takes when it does not.

/dev/kvm can exist and still hang a normal kernel (a host without vmx/svm exposed, as
in many nested CI machines), so the device alone proves nothing: the CPU must also
advertise virtualisation. Without it the guest runs under TCG, several times slower.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import attrs

from harness.settings import Settings

TCG_TIMEOUT_FACTOR = 5
MTTCG_SAFE_QEMU = 9  # the first QEMU major version we run with several vCPUs under TCG
FULL_VCPUS = 2  # a VM's vCPUs when the host has the cores; the booted snapshot's always


@attrs.frozen
class Acceleration:
    kind: str  # "kvm" or "tcg"; "host" for a container: no machine, the host's CPU
    reason: str

    @property
    def timeout_factor(self) -> int:
        return TCG_TIMEOUT_FACTOR if self.kind == "tcg" else 1

    def cpu_args(self, qemu_major: int, vcpus: int = FULL_VCPUS) -> list[str]:
        """-cpu and -smp. Two vCPUs where the host has the cores for them (tools/bench: a
        cold boot under TCG alone takes two thirds of the time with one); `vcpus_for` says
        how many. Under TCG only one before QEMU 9: QEMU 7.2's multi-threaded TCG races
        with the kernel's live code patching (int3 oopses at boot). Not "max,svm=off"
        either: that CPU model corrupts the guest under TCG (QEMU 7.2)."""
        if self.kind == "kvm":
            return ["-cpu", "host", "-smp", str(vcpus)]
        return ["-cpu", "max", "-smp", str(vcpus) if qemu_major >= MTTCG_SAFE_QEMU else "1"]


# A container's: it runs on the host's CPU as the host's processes do, nothing emulated.
HOST_CPU = Acceleration("host", "a container runs on the host's CPU")


def vcpus_for(cores: int, other_vms: int, settings: Settings) -> int:
    """How many vCPUs a VM booting now gets: two while every running VM can have two
    cores, else one. Under TCG a vCPU is a busy host thread: two VMs of two vCPUs on two
    cores take a fifth longer than two VMs of one (tools/bench-vcpus), as a suite run by
    meson or two CI stages side by side do. HARNESS_VCPUS=N decides instead."""
    if settings.vcpus is not None:
        return settings.vcpus
    return FULL_VCPUS if cores >= FULL_VCPUS * (other_vms + 1) else 1


def running_vms(proc: Path = Path("/proc")) -> int:
    """The QEMU processes running on this host now: other tests', a virtual worker's board,
    a LAVA lab's devices."""
    return running_processes(("qemu-system",), proc)


def running_processes(prefixes: tuple[str, ...], proc: Path = Path("/proc")) -> int:
    """The processes running on this host whose name begins with one of `prefixes`."""
    count = 0
    for comm in proc.glob("[0-9]*/comm"):
        try:
            count += comm.read_text().startswith(prefixes)
        except OSError:  # gone meanwhile
            continue
    return count


def vcpus_now(settings: Settings) -> int:
    return vcpus_for(os.cpu_count() or 1, running_vms(), settings)


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


def detect(image_arch: str | None, settings: Settings) -> Acceleration:
    if settings.accel:
        return Acceleration(settings.accel, "HARNESS_ACCEL=" + settings.accel)
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
