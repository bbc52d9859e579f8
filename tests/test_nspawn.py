"""The nspawn backend without booting: its command line as a function of the plan, what
sends a test to a VM, where nspawn comes from, and its machine over a stand-in process
(the container's ending, report and kill)."""

import uuid
from pathlib import Path

import pytest

from harness import process
from harness.backends import BackendName, backend_for, make_backend
from harness.backends.nspawn.backend import NspawnBackend, NspawnMachine, children, credential_files
from harness.backends.nspawn.command import (
    bind_path,
    find_nspawn,
    init_arguments,
    machine_name,
    nspawn_command,
)
from harness.backends.nspawn.crashes import CrashWatch
from harness.backends.nspawn.placement import place, vm_reasons
from harness.backends.nspawn.root import check_image
from harness.boot.machine import EndingKind
from harness.boot.plan import BootPlan, plan_boot
from harness.deadline import Deadline
from harness.declaration.keys import Firmware
from harness.errors import HarnessError
from harness.guest.reporting import CONSOLE_CHANNEL
from harness.image.disk import DiskFormat, DiskPartition
from harness.image.parts import Image
from harness.settings import Settings
from tests.helpers import declaration

UNSET = Settings.from_environment({})
ROOT = DiskPartition(
    2, str(uuid.uuid4()), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "root-x86-64", 1 << 20, 1 << 30
)
NSPAWN = ["/usr/bin/systemd-nspawn"]


def image(fmt: DiskFormat = DiskFormat.RAW, root: DiskPartition | None = ROOT) -> Image:
    return Image(
        Path("/img/image.raw"),
        None,
        None,
        None,
        "x86_64",
        f"PARTUUID={ROOT.partuuid}",
        None,
        systemd_version=257,
        disk_format=fmt,
        root_partition=root,
    )


def plan(*args: str) -> BootPlan:
    return plan_boot(declaration(*args), image(), NspawnBackend(), False, 1, UNSET)


def command(p: BootPlan, tmp: Path) -> list[str]:
    return nspawn_command(
        NSPAWN,
        Path("/run/root"),
        p,
        credential_files(p.credentials, tmp / "c"),
        "t-1",
        tmp / "journal.export",
    )


def test_the_command_boots_the_root_read_only_with_the_plans_credentials(tmp_path):
    p = plan("--credentials=harness.secret=hush")
    cmd = command(p, tmp_path)
    # nspawn first in a PID and a mount namespace of its own, on a private
    # /run/systemd/nspawn: nothing of the container outlives it, no mount is left
    unshare = cmd[: cmd.index("sh")]
    assert unshare == ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation=private"]
    setup = cmd[cmd.index("sh") : cmd.index(NSPAWN[0])]
    assert "mount -t tmpfs" in setup[2] and setup[-1] == "/run/systemd/nspawn"
    for option in ("--directory=/run/root", "--volatile=overlay", "--register=no", "--keep-unit"):
        assert option in cmd
    assert "--console=read-only" in cmd and "--private-network" in cmd and "--settings=no" in cmd
    loaded = [
        a.removeprefix("--load-credential=").split(":", 1) for a in cmd if a.startswith("--load-credential=")
    ]
    assert [name for name, _ in loaded] == [c.name for c in p.credentials]
    assert "systemd.extra-unit.TEST-99-UNIT.service" in dict(loaded)
    # Values are read from private files: never on the command line.
    assert not any("hush" in a for a in cmd)
    files = {name: Path(path) for name, path in loaded}
    assert files["harness.secret"].read_bytes() == b"hush"
    assert files["harness.secret"].stat().st_mode & 0o777 == 0o600


def test_the_plans_options_for_systemd_are_the_inits_arguments(tmp_path):
    p = plan()
    cmd = command(p, tmp_path)
    after_boot = cmd[cmd.index("--boot") + 1 :]
    assert after_boot == init_arguments(p.cmdline)
    assert "systemd.unit=TEST-99-UNIT.service" in after_boot
    assert "rw" not in after_boot and not any(a.startswith("systemd.volatile=") for a in after_boot)


def test_a_command_is_a_function_of_the_plan(tmp_path):
    p = plan()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert command(p, tmp_path / "a") == [
        a.replace(str(tmp_path / "b"), str(tmp_path / "a")) for a in command(p, tmp_path / "b")
    ]


def test_the_units_report_on_the_console():
    p = plan()
    assert "HARNESS_NOTIFY_PREFIX" in p.unit and CONSOLE_CHANNEL.prefix in p.unit


def test_a_containers_timeout_is_the_declared_one_even_without_kvm(monkeypatch):
    # The host's CPU runs the test: no TCG factor, whatever KVM does here.
    monkeypatch.setattr("harness.boot.plan.detect", lambda *a: pytest.fail("KVM asked for a container"))
    p = plan_boot(declaration("--timeout=30"), image(), NspawnBackend(), False, None, UNSET)
    assert (p.accel.kind, p.timeout_factor, p.timeout) == ("host", 1, 30)
    # meson passes the VMs' factor (x5 under TCG) to every test: a container's is still 1.
    p = plan_boot(declaration("--timeout=30"), image(), NspawnBackend(), False, 5, UNSET)
    assert (p.timeout_factor, p.timeout) == (1, 30)


def test_machine_names_are_hostnames():
    assert machine_name("TEST-01-BASIC", 1234) == "test-01-basic-1234"
    assert len(machine_name("TEST-01-" + "X" * 80, 1)) <= 64


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--vm=true"], "vm: true"),
        (["--firmware=uefi"], "firmware 'uefi'"),
        (["--firmware=uefi-secure-boot"], "firmware 'uefi-secure-boot'"),
        (["--firmware=linux-noinitrd"], "firmware 'linux-noinitrd'"),
        (["--tpm=true"], "tpm"),
        (["--disks=1G"], "disks"),
        (
            ["--cmdline=harness.marker=1", "--cmdline=systemd.hostname=x"],
            "cmdline for the kernel (harness.marker=1)",
        ),
        (["--qemu-args=-device", "--qemu-args=virtio-rng-pci"], "qemu-args"),
        (["--storage=persistent"], "storage: 'persistent'"),
        (["--requires=hdmi"], "requires: hdmi"),
        (["--requires=tpm"], "requires: tpm"),
    ],
)
def test_what_needs_a_vm_is_unmet_in_a_container(args, reason):
    decl = declaration(*args)
    reasons = NspawnBackend().unmet_requirements(decl)
    assert len(reasons) == 1 and reason in reasons[0], reasons
    assert place(decl).backend == BackendName.QEMU
    assert reason in place(decl).describe()


def test_a_plain_test_runs_in_a_container():
    for args in ([], ["--firmware=auto"], ["--cmdline=systemd.log_level=debug"], ["--rtc=true"]):
        decl = declaration(*args)
        assert vm_reasons(decl) == []
        assert place(decl).backend == BackendName.NSPAWN
        assert place(decl).describe() == "in a container"


def test_host_driven_tests_are_placed_in_a_container(tmp_path):
    (tmp_path / "test_host.py").write_text("")
    decl = declaration("--host=test_host.py", test_dir=str(tmp_path), name="TEST-99-UNIT")
    assert place(decl).backend == BackendName.NSPAWN
    assert NspawnBackend().drives_host_tests


def test_the_backend_is_chosen_by_name():
    backend = make_backend(Settings.from_environment({"HARNESS_BACKEND": "nspawn"}))
    assert backend.name == BackendName.NSPAWN
    assert backend.report_channel == CONSOLE_CHANNEL and not backend.can_resume
    assert backend.firmware(Firmware.AUTO, image()) == Firmware.LINUX


def test_raw_disks_only():
    with pytest.raises(HarnessError, match="raw disks only") as e:
        check_image(image(DiskFormat.QCOW2))
    assert "qemu backend" in e.value.fix
    with pytest.raises(HarnessError, match="root partition"):
        check_image(image(root=None))


def test_nspawn_from_the_variable_the_tools_tree_or_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    disk = tmp_path / "mkosi.output" / "image.raw"
    with pytest.raises(HarnessError, match="no systemd-nspawn") as e:
        find_nspawn(UNSET, disk, "x86_64")
    assert "HARNESS_NSPAWN" in e.value.fix
    with pytest.raises(HarnessError, match="HARNESS_NSPAWN=/nonexistent"):
        find_nspawn(Settings.from_environment({"HARNESS_NSPAWN": "/nonexistent"}), disk, "x86_64")
    tree = tmp_path / "mkosi.output" / "tools"
    for part in ("usr/bin/systemd-nspawn", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"):
        (tree / part).parent.mkdir(parents=True, exist_ok=True)
        (tree / part).write_text("")
    loader, flag, libs, binary = find_nspawn(UNSET, disk, "x86_64")
    assert (loader, flag, binary) == (
        str(tree / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        "--library-path",
        str(tree / "usr/bin/systemd-nspawn"),
    )
    assert libs.split(":") == [f"{tree}/usr/lib/x86_64-linux-gnu", f"{tree}/usr/lib/x86_64-linux-gnu/systemd"]
    (tmp_path / "bin").mkdir()
    own = tmp_path / "bin" / "my-nspawn"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    assert find_nspawn(Settings.from_environment({"HARNESS_NSPAWN": "my-nspawn"}), disk, "x86_64") == [
        str(own)
    ]


def machine(tmp_path: Path, script: str) -> NspawnMachine:
    """A stand-in container: sh printing what the console would carry, then exiting."""
    logs = tmp_path / "logs"
    logs.mkdir()

    def launch(console: Path) -> process.OwnedProcess:
        return process.start(["sh", "-c", script], tmp_path / "stderr", output=console)

    return NspawnMachine(launch, tmp_path, tmp_path / "stderr", logs, 1 << 20, CrashWatch(), tmp_path)


def test_the_machine_reads_the_console_and_ends_with_the_containers_status(tmp_path):
    m = machine(
        tmp_path,
        "echo 'Welcome'; echo 'HARNESS_NOTIFY READY=1'; "
        "echo 'HARNESS_NOTIFY X_HARNESS_SERVICE_RESULT=success'; echo 'HARNESS_NOTIFY X_HARNESS_EXIT_CODE=exited'; "
        "echo 'HARNESS_NOTIFY X_HARNESS_EXIT_STATUS=0'; echo oops >&2; exit 123",
    )
    m.proc.wait(timeout=10)
    look = m.look()
    assert look.stopped is not None and look.stopped.kind == EndingKind.EXITED
    assert look.stopped.machine_status == 123
    assert b"Welcome" in look.console and m.console_log.read_bytes().startswith(b"Welcome")
    assert m.collect().exit_status(123) == 123
    assert m.failure_detail() == "oops"


def test_killing_the_machine_kills_the_container_too(tmp_path):
    # nspawn killed outright leaves its container running: the machine kills its child first.
    m = machine(tmp_path, "sleep 300 & wait")
    Deadline.after(10).wait_for(lambda: bool(children(m.proc.pid)), 0.01)
    (child,) = children(m.proc.pid)
    m.power_off(orderly=False)
    assert not m.proc.alive()
    assert Deadline.after(10).wait_for(lambda: gone(child), 0.01)


def test_an_orderly_power_off_asks_nspawn_first(tmp_path):
    # nspawn (the stand-in's child) shuts its container down on SIGTERM and exits.
    m = machine(tmp_path, "sh -c 'trap \"exit 0\" TERM; while :; do sleep 0.05; done'; exit 5")
    Deadline.after(10).wait_for(lambda: bool(children(m.proc.pid)), 0.01)
    m.power_off(orderly=True)
    assert m.proc.poll() == 5  # ended by itself, not killed


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its new parent has yet to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def test_where_containers_are_preferred_a_test_that_needs_no_vm_runs_in_one():
    prefer = Settings.from_environment({"HARNESS_PREFER_CONTAINERS": "1"})
    backend, placed = backend_for(declaration(), prefer)
    assert backend.name == BackendName.NSPAWN
    assert placed == "TEST-99-UNIT: in a container (containers preferred)"
    backend, placed = backend_for(declaration("--tpm=true"), prefer)
    assert backend.name == BackendName.QEMU
    assert placed == "TEST-99-UNIT: in a VM: tpm: a TPM needs a VM (containers preferred)"
    # Not preferred, another backend named, or a person at a shell: no choice made.
    for env in ({}, {"HARNESS_PREFER_CONTAINERS": "1", "HARNESS_SHELL": "1"}):
        backend, placed = backend_for(declaration(), Settings.from_environment(env))
        assert (backend.name, placed) == (BackendName.QEMU, "")
    lava = {"HARNESS_PREFER_CONTAINERS": "1", "HARNESS_BACKEND": "lava", "HARNESS_LAVA_URL": "http://lab"}
    backend, placed = backend_for(declaration(), Settings.from_environment(lava))
    assert (backend.name, placed) == (BackendName.LAVA, "")


def test_a_bound_path_may_hold_a_colon():
    assert bind_path(Path("/logs/a:b\\c")) == "/logs/a\\:b\\\\c"
