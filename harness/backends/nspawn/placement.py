"""Where a test can run when containers are preferred: in a container (systemd-nspawn on
the image's root, sharing the host's kernel) unless something it declares needs a kernel
or a machine of its own, which only a VM gives.

`vm_reasons` says what in a declaration needs a VM, one reason a person can act on per
key; the nspawn backend returns them as its unmet requirements (such a test SKIPs there
when run there explicitly), and `place` is the choice between the two backends that a
run preferring containers makes for each test.
"""

from __future__ import annotations

import attrs

from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware, Storage

# What a container's init takes as its command line: systemd reads its own options from
# its arguments in a container; anything else on a kernel command line is the kernel's,
# and a test that declares it reads it from /proc/cmdline, which is the host's there.
INIT_OPTION_PREFIXES = ("systemd.",)
CONTAINER_FIRMWARE = (Firmware.AUTO, Firmware.LINUX)


def kernel_options(cmdline: tuple[str, ...]) -> list[str]:
    """The words of a command line that are not the container's init's."""
    return [word for word in cmdline if not word.startswith(INIT_OPTION_PREFIXES)]


def vm_reasons(decl: TestDeclaration) -> list[str]:
    """What in `decl` needs a VM (a kernel or a machine of its own); empty: a container will do."""
    reasons = []
    if decl.vm:
        reasons.append("the test declares vm: true")
    if decl.firmware not in CONTAINER_FIRMWARE:
        reasons.append(f"firmware '{decl.firmware}' boots a machine (a container has none)")
    if decl.tpm:
        reasons.append("tpm: a TPM needs a VM")
    if decl.disks:
        reasons.append("disks: extra disks need a VM")
    kernel = kernel_options(decl.cmdline)
    if kernel:
        reasons.append(f"cmdline for the kernel ({' '.join(kernel)}): a container shares the host's")
    if decl.qemu_args:
        reasons.append("qemu-args: QEMU runs VMs only")
    if decl.storage == Storage.PERSISTENT:
        reasons.append("storage: 'persistent' (writes surviving reboots) needs a VM's disk")
    # The features the keys above imply are said once, there.
    implied = {"tpm": decl.tpm, "disks": bool(decl.disks), "secure-boot": decl.firmware.is_secure_boot()}
    reasons += [f"requires: {feature}" for feature in decl.requires if not implied.get(feature)]
    return reasons


@attrs.frozen
class Placement:
    """Where one test runs when containers are preferred, and why there."""

    backend: str  # "nspawn" or "qemu" (harness.backends.BackendName's values)
    reasons: tuple[str, ...] = ()  # what keeps it off a container; empty in a container

    def describe(self) -> str:
        if not self.reasons:
            return "in a container"
        return f"in a VM: {'; '.join(self.reasons)}"


def place(decl: TestDeclaration) -> Placement:
    """The container when nothing the test declares needs a VM, else the VM and why."""
    reasons = vm_reasons(decl)
    return Placement("qemu" if reasons else "nspawn", tuple(reasons))
