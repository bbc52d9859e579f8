from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from harness.backends.qemu.command import resolve_machine_alias
from harness.backends.qemu.firmware import select_ovmf
from harness.boot.accel import Acceleration, cpu_flags, kvm_usable, running_vms, vcpus_for
from harness.errors import HarnessError
from harness.settings import Settings


def descriptor(
    features: Iterable[str],
    arch: str = "x86_64",
    machines: Iterable[str] = ("pc-q35-*",),
    interfaces: Iterable[str] = ("uefi",),
    code: str = "/c.fd",
) -> dict[str, Any]:
    return {
        "interface-types": list(interfaces),
        "features": list(features),
        "mapping": {
            "device": "flash",
            "executable": {"filename": code},
            "nvram-template": {"filename": "/v.fd"},
        },
        "targets": [{"architecture": arch, "machines": list(machines)}],
    }


def test_ovmf_selection_skips_secure_boot_and_foreign_targets():
    ds = [
        (Path("40-secure-enrolled.json"), descriptor(["secure-boot", "enrolled-keys"], code="/sb.fd")),
        (Path("45-arm.json"), descriptor([], arch="aarch64", code="/arm.fd")),
        (Path("50-bios.json"), descriptor([], interfaces=("bios",), code="/bios.fd")),
        (Path("60-plain.json"), descriptor(["acpi-s3"], code="/plain.fd")),
    ]
    plain = select_ovmf(ds, "x86_64", "pc-q35-7.2")
    assert plain is not None and plain.code == Path("/plain.fd")
    secure = select_ovmf(ds, "x86_64", "pc-q35-7.2", secure_boot=True)
    assert secure is not None and secure.code == Path("/sb.fd")
    assert select_ovmf(ds, "x86_64", "microvm") is None


def test_machine_alias():
    help_text = (
        "q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc-q35-7.2  Standard PC\n"
    )
    assert resolve_machine_alias(help_text, "q35") == "pc-q35-7.2"
    assert resolve_machine_alias(help_text, "virt") == "virt"


def test_kvm_needs_cpu_virtualisation_not_just_the_device():
    flags = cpu_flags("processor : 0\nflags : fpu sse2 hypervisor\n")
    assert kvm_usable(flags, True, "x86_64")[0] is False
    assert kvm_usable(flags | {"vmx"}, True, "x86_64")[0] is True
    assert kvm_usable(flags | {"svm"}, False, "x86_64")[0] is False


def test_vcpus_under_tcg_follow_the_qemu_version():
    tcg = Acceleration("tcg", "test")
    assert tcg.cpu_args(7) == ["-cpu", "max", "-smp", "1"]  # 7.2's MTTCG oopses the guest
    assert tcg.cpu_args(10) == ["-cpu", "max", "-smp", "2"]
    assert Acceleration("kvm", "test").cpu_args(7) == ["-cpu", "host", "-smp", "2"]


def test_a_vm_gets_two_vcpus_while_the_cores_go_round():
    unset = Settings.from_environment({})
    assert vcpus_for(cores=2, other_vms=0, settings=unset) == 2
    assert vcpus_for(cores=2, other_vms=1, settings=unset) == 1  # two VMs on two cores: one each
    assert vcpus_for(cores=8, other_vms=3, settings=unset) == 2
    assert vcpus_for(cores=2, other_vms=1, settings=Settings.from_environment({"HARNESS_VCPUS": "2"})) == 2
    with pytest.raises(HarnessError, match="HARNESS_VCPUS='zero' is not a number of vCPUs"):
        Settings.from_environment({"HARNESS_VCPUS": "zero"})  # an error, as for every switch


def test_running_vms_are_the_qemu_processes(tmp_path):
    for pid, comm in ((1, "systemd"), (20, "qemu-system-x86"), (31, "qemu-system-aarch")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
    assert running_vms(tmp_path) == 2
