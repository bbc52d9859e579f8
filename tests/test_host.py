from pathlib import Path

from harness.backends.qemu.command import resolve_machine_alias
from harness.backends.qemu.firmware import select_ovmf
from harness.boot.accel import Acceleration, cpu_flags, kvm_usable, running_vms, vcpus_for


def descriptor(features, arch="x86_64", machines=("pc-q35-*",), interfaces=("uefi",), code="/c.fd"):
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
    assert select_ovmf(ds, "x86_64", "pc-q35-7.2").code == Path("/plain.fd")
    assert select_ovmf(ds, "x86_64", "pc-q35-7.2", secure_boot=True).code == Path("/sb.fd")
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
    assert vcpus_for(cores=2, other_vms=0, env={}) == 2
    assert vcpus_for(cores=2, other_vms=1, env={}) == 1  # two VMs on two cores: one each
    assert vcpus_for(cores=8, other_vms=3, env={}) == 2
    assert vcpus_for(cores=2, other_vms=1, env={"HARNESS_VCPUS": "2"}) == 2
    assert vcpus_for(cores=2, other_vms=0, env={"HARNESS_VCPUS": "zero"}) == 2  # not a number: the rule


def test_running_vms_are_the_qemu_processes(tmp_path):
    for pid, comm in ((1, "systemd"), (20, "qemu-system-x86"), (31, "qemu-system-aarch")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
    assert running_vms(tmp_path) == 2
