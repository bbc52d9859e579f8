import uuid
from pathlib import Path

import attrs
import pytest

from harness.backends.qemu.architectures import has_uefi, require_qemu, smbios_supported
from harness.backends.qemu.command import RunFiles, VmConfig, kernel_cmdline, machine_args, qemu_command
from harness.backends.qemu.firmware import SNAKEOIL_VARS, Ovmf, secure_boot_vars
from harness.backends.qemu.guest import guest_args
from harness.backends.qemu.snapshot import plan_snapshot_config, resumed_config, snapshot_config
from harness.backends.qemu.snapshot_store import Snapshot, snapshot_machine_id
from harness.boot.accel import Acceleration
from harness.boot.plan import BootPlan, harness_cmdline, machine_shape, resume_blocker
from harness.boot.store import SHAPE
from harness.declaration.credential import Credential
from harness.declaration.keys import Firmware, Storage
from harness.errors import HarnessError
from harness.image.disk import ESP_TYPE, DiskPartition
from harness.image.parts import Image
from harness.settings import Settings
from tests.helpers import declaration

ROOT = uuid.UUID("8ce23b7e-642d-4dbe-827e-8b2ffc70816e")
UNSET = Settings.from_environment({})  # no HARNESS_* switch set


def plan(firmware: str = "linux", accel: str = "tcg", *args: str) -> VmConfig:
    return VmConfig.for_plan(boot_plan(firmware, accel, *args))


def boot_plan(
    firmware: str = "linux", accel: str = "tcg", *args: str, test_dir: str = "/nonexistent/TEST-99-UNIT"
) -> BootPlan:
    d = declaration(*args, test_dir=test_dir)
    image = Image(
        Path("/img/image.raw"),
        Path("/img/image.vmlinuz"),
        Path("/img/image.initrd"),
        Path("/img/image.efi"),
        "x86_64",
        f"PARTUUID={ROOT}",
        DiskPartition(1, str(uuid.uuid4()), str(ESP_TYPE), "esp", 1 << 20, 1 << 20),
    )
    return BootPlan(
        decl=d,
        image=image,
        firmware=firmware,
        cmdline=tuple(harness_cmdline(d, False)),
        unit="",
        test_credentials=(),
        credentials=(Credential("harness.cold", b"what a cold boot gets"),),
        accel=Acceleration(accel, "test"),
        timeout=60,
        interactive=False,
        settings=UNSET,
    )


FILES = RunFiles(Path("/tmp/h"), Path("/logs"), Path("/tmp/h/overlay.qcow2"))


def test_direct_kernel_boot():
    p = plan("linux", "tcg", "--cmdline=quiet", "--qemu-args=-device", "--qemu-args=virtio-balloon")
    cmd = qemu_command(p, FILES, None, None, None, None, ["-smbios", "type=11,path=/tmp/h/smbios-0"])
    assert cmd[0] == "qemu-system-x86_64"
    assert cmd[cmd.index("-accel") + 1] == "tcg" and cmd[cmd.index("-cpu") + 1] == "max"
    assert cmd[cmd.index("-smp") + 1] in ("1", "2")  # by the QEMU version: see test_accel
    assert cmd[cmd.index("-kernel") + 1] == "/img/image.vmlinuz"
    assert cmd[cmd.index("-initrd") + 1] == "/img/image.initrd"
    append = cmd[cmd.index("-append") + 1].split()
    assert append[0] == f"root=PARTUUID={ROOT}" and "rw" in append and "console=hvc0" in append
    assert any(a.startswith("systemd.machine_id=") for a in append)
    assert "virtconsole,chardev=console" in cmd
    # The UART too, for the kernel's lines before hvc0 is backed; /dev/console stays hvc0.
    assert (
        cmd[cmd.index("-serial") + 1] == "chardev:early"
        and "file,id=early,path=/tmp/h/early-console.log" in cmd
    )
    assert append.index("console=ttyS0,115200") < append.index("console=hvc0")
    assert "systemd.unit=TEST-99-UNIT.service" in append and append[-1] == "quiet"
    assert "systemd.volatile=overlay" in append
    assert "file=/tmp/h/overlay.qcow2" in " ".join(cmd)  # never the shared image itself
    assert "/img/image.raw" not in cmd
    assert cmd[-4:] == ["-smbios", "type=11,path=/tmp/h/smbios-0", "-device", "virtio-balloon"]


def test_linux_noinitrd_and_persistent_storage():
    p = plan("linux-noinitrd", "kvm", "--storage=persistent")
    cmd = qemu_command(p, FILES, None, None, None, None, [])
    assert "-initrd" not in cmd and cmd[cmd.index("-cpu") + 1] == "host"
    assert "systemd.volatile=overlay" not in kernel_cmdline(p)


def test_uefi_boot_uses_firmware_and_no_kernel():
    ovmf = Ovmf(Path("/ovmf/CODE.fd"), Path("/ovmf/VARS.fd"), "test")
    cmd = qemu_command(plan("uefi"), FILES, ovmf, Path("/tmp/h/OVMF_VARS.fd"), None, None, [])
    assert "-kernel" not in cmd and "-append" not in cmd
    assert "if=pflash,format=raw,readonly=on,file=/ovmf/CODE.fd" in cmd
    assert "if=pflash,format=raw,file=/tmp/h/OVMF_VARS.fd" in cmd
    assert cmd[cmd.index("-serial") + 1] == "chardev:console"  # firmware and boot loader print there


def test_vsock_device_when_available():
    cmd = qemu_command(plan(), FILES, None, None, 1234, 7, [])
    assert "vhost-vsock-pci,guest-cid=1234,vhostfd=7" in cmd
    assert not any("vhost-vsock" in a for a in qemu_command(plan(), FILES, None, None, None, None, []))


def devices(cmd: list[str]) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device"]


@pytest.mark.parametrize("host", [None, "test_x.py"])
def test_a_resumed_vm_has_its_snapshots_devices_and_boots_again_as_its_test(host, tmp_path):
    """Migration needs the same devices on both sides. What the guest gets at boot is read
    again only at a reboot: the test's own, with the snapshot's machine ID."""
    (tmp_path / "test_x.py").touch()
    p = boot_plan("linux", "tcg", *([f"--host={host}"] if host else []), test_dir=str(tmp_path))
    snapshot = Snapshot(Path("/snap/linux-volatile-0123456789abcdef"))
    cfg = plan_snapshot_config(p, snapshot.machine_id)
    saving = qemu_command(
        cfg, RunFiles(Path("/tmp/a"), Path("/snap"), Path("/snap/disk.qcow2")), None, None, None, None, []
    )
    resumed_cfg = resumed_config(p, snapshot)
    resumed = qemu_command(resumed_cfg, FILES, None, None, None, None, [], resuming=True)
    assert resumed[-2:] == ["-incoming", "defer"]
    assert devices(saving) == devices(resumed)
    assert "virtserialport,chardev=agent,name=io.harness.agent" in devices(saving)
    assert "virtserialport,chardev=control,name=io.harness.control" in devices(saving)
    append = saving[saving.index("-append") + 1].split()
    assert "systemd.unit=harness-agent.service" in append and "systemd.volatile=overlay" in append
    again = resumed[resumed.index("-append") + 1].split()
    assert ("systemd.unit=TEST-99-UNIT.service" in again) == (host is None)
    assert "systemd.unit=harness-agent.service" not in again and "systemd.volatile=overlay" in again
    same_machine = f"systemd.machine_id={snapshot.machine_id}"
    assert same_machine in append and same_machine in again and len(snapshot.machine_id) == 32
    assert (
        snapshot_machine_id(snapshot.dir.name) == snapshot.machine_id
    )  # made in a directory of another name
    assert resumed_cfg.credentials == p.credentials and resumed_cfg.control == (host is not None)


def test_a_persistent_snapshot_boots_without_the_volatile_overlay():
    accel = Acceleration("tcg", "test")
    cfg = snapshot_config(plan().image, accel, Firmware.LINUX, Storage.PERSISTENT, settings=UNSET)
    append = qemu_command(cfg, FILES, None, None, None, None, [])
    append_words = append[append.index("-append") + 1].split()
    assert "systemd.unit=harness-agent.service" in append_words
    assert "systemd.volatile=overlay" not in append_words


def test_a_tpm_and_disks_are_part_of_the_machine_shape_and_its_snapshot():
    accel = Acceleration("tcg", "test")
    image = plan().image
    plain = snapshot_config(image, accel, Firmware.LINUX, Storage.VOLATILE, settings=UNSET)
    both = snapshot_config(
        image, accel, Firmware.UEFI, Storage.PERSISTENT, True, (2**28, 2**30), settings=UNSET
    )
    assert machine_shape(plain.firmware, Storage.VOLATILE, plain.tpm, plain.disks) == "linux-volatile"
    shape = machine_shape(both.firmware, Storage.PERSISTENT, both.tpm, both.disks)
    assert shape == "uefi-persistent-tpm-disks-268435456-1073741824"
    assert SHAPE.fullmatch(shape)
    files = RunFiles(Path("/tmp/a"), Path("/snap"), Path("/snap/disk.qcow2"))
    tpm = snapshot_config(image, accel, Firmware.LINUX, Storage.VOLATILE, True, (2**20,), settings=UNSET)
    saving = qemu_command(tpm, files, None, None, None, None, [])
    resumed = qemu_command(tpm, FILES, None, None, None, None, [], resuming=True)
    assert "tpm-crb,tpmdev=tpm0" in saving and "tpm-crb,tpmdev=tpm0" in resumed
    assert "virtio-blk-pci,drive=disk1,serial=harness-disk-1" in resumed
    assert len(saving) == len(resumed) - 2


def test_a_uefi_snapshot_and_its_resumed_vms_boot_through_ovmf_alike():
    accel = Acceleration("tcg", "test")
    cfg = snapshot_config(plan("uefi").image, accel, Firmware.UEFI, Storage.VOLATILE, settings=UNSET)
    ovmf = Ovmf(Path("/fw/CODE.fd"), Path("/fw/VARS.fd"), "test")
    saving = qemu_command(
        cfg,
        RunFiles(Path("/tmp/a"), Path("/snap"), Path("/snap/disk.qcow2")),
        ovmf,
        Path("/tmp/a/V.fd"),
        None,
        None,
        [],
    )
    resumed = qemu_command(cfg, FILES, ovmf, Path("/tmp/h/V.fd"), None, None, [], resuming=True)
    assert "-kernel" not in saving and "if=pflash,format=raw,readonly=on,file=/fw/CODE.fd" in saving
    differ = [(a, b) for a, b in zip(saving, resumed, strict=False) if a != b]
    assert all("/tmp/a" in a or "/snap" in a for a, _ in differ), differ


def test_a_declared_tpm_is_a_crb_device_on_swtpms_socket():
    p = plan("linux", "tcg", "--tpm=true")
    cmd = qemu_command(p, FILES, None, None, None, None, [])
    assert "socket,id=tpm,path=/tmp/h/tpm.sock" in cmd
    assert cmd[cmd.index("-tpmdev") + 1] == "emulator,id=tpm0,chardev=tpm"
    assert "tpm-crb,tpmdev=tpm0" in cmd
    assert "-tpmdev" not in qemu_command(plan("linux"), FILES, None, None, None, None, [])
    d = declaration("--tpm=true")
    assert d.requires == ("tpm",) and declaration("--tpm=true", "--requires=tpm").requires == ("tpm",)
    assert resume_blocker(d, UNSET) is None  # its machine shape has a snapshot of its own


def test_rtc_sets_the_clock_to_the_hosts_utc_time_and_boots_cold():
    cmd = qemu_command(plan("linux", "tcg", "--rtc=true"), FILES, None, None, None, None, [])
    assert cmd[cmd.index("-rtc") + 1].startswith("base=20")
    assert "-rtc" not in qemu_command(plan("linux"), FILES, None, None, None, None, [])
    d = declaration("--rtc=true", "--vm=true")
    assert resume_blocker(d, UNSET) == "the test sets the real-time clock (rtc: true)"


def test_extra_disks_are_sparse_files_with_serials():
    cmd = qemu_command(plan("linux", "tcg", "--disks=1G", "--disks=64M"), FILES, None, None, None, None, [])
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert drives[1:] == [
        "if=none,id=disk1,file=/tmp/h/disk-1.raw,format=raw,discard=unmap,cache=unsafe",
        "if=none,id=disk2,file=/tmp/h/disk-2.raw,format=raw,discard=unmap,cache=unsafe",
    ]
    assert "virtio-blk-pci,drive=disk2,serial=harness-disk-2" in cmd
    assert (
        len([a for a in qemu_command(plan("linux"), FILES, None, None, None, None, []) if a == "-drive"]) == 1
    )
    assert resume_blocker(declaration("--disks=1G"), UNSET) is None


# Other architectures ------------------------------------------------------------------


def on_aarch64(cfg: VmConfig) -> VmConfig:
    return attrs.evolve(cfg, image=attrs.evolve(cfg.image, architecture="aarch64"))


AAVMF = Ovmf(Path("/aavmf/CODE.fd"), Path("/aavmf/VARS.fd"), "test")


def test_an_aarch64_direct_kernel_boot_is_started_by_its_uefi_firmware():
    """The kernel of an arm64 machine finds SMBIOS only through UEFI: the firmware starts
    the kernel QEMU hands it, and the credentials go by SMBIOS as on x86."""
    cmd = qemu_command(on_aarch64(plan("linux")), FILES, AAVMF, Path("/tmp/h/vars.fd"), None, None, [])
    assert cmd[0] == "qemu-system-aarch64" and cmd[cmd.index("-machine") + 1] == "virt"
    assert "if=pflash,format=raw,readonly=on,file=/aavmf/CODE.fd" in cmd
    assert "if=pflash,format=raw,file=/tmp/h/vars.fd" in cmd
    assert cmd[cmd.index("-kernel") + 1] == "/img/image.vmlinuz" and "-initrd" in cmd
    assert "console=hvc0" in cmd[cmd.index("-append") + 1].split() and "VGA" not in devices(cmd)
    assert has_uefi("aarch64", Firmware.LINUX) and not has_uefi("x86_64", Firmware.LINUX)
    assert smbios_supported("aarch64", Firmware.LINUX) and smbios_supported("riscv64", Firmware.UEFI)


def test_an_aarch64_guest_gets_its_long_credential_names_by_smbios(tmp_path):
    files = RunFiles(tmp_path, tmp_path, tmp_path / "overlay.qcow2")
    unit = Credential("systemd.extra-unit.harness-agent.service", b"[Unit]\n")  # too long for fw_cfg
    args = guest_args(on_aarch64(plan("linux")), files, [unit])
    assert args[0] == "-smbios" and "-fw_cfg" not in args


def test_no_vmgenid_nor_smm_on_a_machine_without_them():
    agent = attrs.evolve(plan("linux"), agent=True)
    assert "vmgenid,guid=auto" in devices(qemu_command(agent, FILES, None, None, None, None, []))
    arm = qemu_command(on_aarch64(agent), FILES, AAVMF, Path("/tmp/h/vars.fd"), None, None, [])
    assert "vmgenid,guid=auto" not in devices(arm)  # an ACPI device of q35's
    secure = " ".join(machine_args("aarch64", Acceleration("tcg", "test"), UNSET, secure_boot=True))
    assert "smm" not in secure and "cfi.pflash01" not in secure
    assert "smm=on" in " ".join(machine_args("x86_64", Acceleration("tcg", "test"), UNSET, secure_boot=True))


def test_the_secure_boot_variable_store_is_the_architectures():
    assert secure_boot_vars.__defaults__ == ("x86_64",)
    assert SNAKEOIL_VARS["aarch64"].name == "AAVMF_VARS.snakeoil.fd"
    with pytest.raises(HarnessError, match="Debian ships none for riscv64"):
        secure_boot_vars(UNSET, "riscv64")


def test_an_architecture_qemu_cannot_run_here_is_refused_naming_what_to_install():
    missing = Settings.from_environment({"HARNESS_QEMU": "qemu-system-nowhere"})
    with pytest.raises(HarnessError) as e:
        require_qemu("aarch64", missing)
    assert "the image is aarch64 and qemu-system-nowhere is not installed" in e.value.what
    assert "qemu-system-arm and qemu-efi-aarch64" in e.value.fix
    with pytest.raises(HarnessError, match="no QEMU machine for"):
        require_qemu("s390x", UNSET)
