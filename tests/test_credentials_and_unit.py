import base64
import stat
import subprocess

import pytest

from harness.backends.qemu.credentials import (
    cmdline_extra_strings,
    fw_cfg_args,
    smbios_args,
    smbios_credential,
)
from harness.boot.machine import Ending, EndingKind
from harness.declaration.credential import CREDENTIAL_LIMIT, Credential
from harness.declaration.extra_tree import ExtraTree
from harness.errors import DeclarationError
from harness.guest.units import guest_credentials, render_test_unit
from harness.verdict.notify import GuestReport
from harness.verdict.results import Status, classify
from tests.helpers import declaration


def test_smbios_credential_is_base64_of_exact_bytes():
    s = smbios_credential(Credential("blob", b"\0\n,=\xff"))
    prefix, _, b64 = s.partition("=")
    assert prefix == "io.systemd.credential.binary:blob"
    assert base64.b64decode(b64) == b"\0\n,=\xff"


def test_credentials_go_through_private_files_not_the_command_line(tmp_path):
    args = smbios_args([smbios_credential(Credential("secret", b"hunter2"))], tmp_path)
    assert args[0] == "-smbios" and args[1].startswith("type=11,path=")
    assert "hunter2" not in " ".join(args) and base64.b64encode(b"hunter2").decode() not in " ".join(args)
    path = tmp_path / "smbios-0"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fw_cfg_fallback(tmp_path):
    args = fw_cfg_args([Credential("x", b"1")], tmp_path)
    assert args == ["-fw_cfg", f"name=opt/io.systemd.credentials/x,file={tmp_path / 'fw_cfg-0'}"]


def test_cmdline_extras_for_stub_and_boot_loader():
    assert cmdline_extra_strings(["a=1", "b"]) == [
        "io.systemd.stub.kernel-cmdline-extra=a=1 b",
        "io.systemd.boot.kernel-cmdline-extra=a=1 b",
    ]
    assert cmdline_extra_strings([]) == []


def test_unit_ends_the_vm_with_the_declared_status():
    d = declaration(
        "--exit-code=42", "--wants=foo.service", "--env=A=b c", "--credentials=k=v", "--service=MemoryMax=1G"
    )
    text = render_test_unit(d, interactive=False)
    assert "SuccessActionExitStatus=42" in text and "FailureAction=exit" in text
    assert "Wants=foo.service" in text and 'Environment="A=b c"' in text
    assert "ImportCredential=k" in text and "MemoryMax=1G" in text
    assert "StandardOutput=journal+console" in text


def test_memory_accounting_is_turned_on_only_when_declared():
    assert "MemoryAccounting=yes" in render_test_unit(declaration("--memory-accounting=true"), False)
    assert "MemoryAccounting" not in render_test_unit(declaration(), False)


def test_a_unit_started_from_the_shell_leaves_the_console_and_the_vm_to_the_person():
    text = render_test_unit(declaration(), interactive=True, shell=True)
    assert "FailureAction" not in text and "OnFailure" not in text and "StandardInput=tty" not in text
    assert "SuccessAction=exit" in text and "StandardOutput=journal+console" in text


def test_interactive_unit_keeps_the_vm_up_on_failure():
    text = render_test_unit(declaration(), interactive=True)
    assert "FailureAction" not in text and "StandardInput=tty" in text
    assert "OnFailure=harness-debug-shell.service" in text


def test_guest_credentials_include_emergency_guard_only_when_unattended():
    d = declaration()
    names = [c.name for c in guest_credentials(d, render_test_unit(d, False), interactive=False)]
    assert names[0] == "systemd.extra-unit.TEST-99-UNIT.service"
    assert "systemd.unit-dropin.emergency.target~harness" in names
    assert [c.name for c in guest_credentials(d, render_test_unit(d, True), interactive=True)] == [
        names[0],
        "harness.testcases",
        "systemd.extra-unit.harness-debug-shell.service",
    ]


def test_the_control_agent_loads_its_script_as_the_guests_systemd_can():
    from harness.guest.units import control_credentials

    def unit(systemd: int | None) -> str:
        return control_credentials(systemd)[0].value.decode()

    assert "ImportCredential=harness.control" in unit(None) and "ImportCredential=" in unit(257)
    assert (
        "LoadCredential=harness.control:/run/systemd/generator/harness-credentials/harness.control"
        in unit(252)
    )
    assert "ConditionPathExists=!/etc/initrd-release" in unit(257)  # not in the initrd too


@pytest.mark.parametrize(
    "command, wrapped",
    [
        ("/usr/lib/harness/tests/TEST-99-UNIT/test.sh", True),
        ("sh -c 'exit 3'", True),
        ("-/bin/false", False),  # systemd's prefixes stay systemd's
        ("@/bin/sleep sleeper 1", False),
        ("$CMD", False),
    ],
)
def test_the_test_command_reports_its_start_itself_unless_systemd_must_read_it(command, wrapped):
    from harness.guest.reporting import VIRTIO_CHANNEL, start_lines

    lines = start_lines(VIRTIO_CHANNEL, command)
    if not wrapped:
        assert lines[0].startswith("ExecStartPre=") and lines[1] == f"ExecStart={command}"
        return
    start, name = lines
    program = command.split()[0].rsplit("/", 1)[-1]
    assert name == f"SyslogIdentifier={program}"
    assert start.startswith("ExecStart=/bin/sh -c '") and start.endswith(f"' {program} {command}")


def test_the_start_wrapper_becomes_the_command_with_its_arguments(tmp_path):
    """Run as systemd would hand it over ($$ unescaped), the report to a file."""
    import shlex

    from harness.guest.reporting import ReportChannel, start_lines

    port = tmp_path / "port"
    port.touch()
    channel = ReportChannel(str(port))
    (start, _) = start_lines(channel, "sh -c 'echo \"$0:$1\"; exit 7' a 'b c'")
    argv = shlex.split(start.removeprefix("ExecStart=").replace("$$", "$"))
    # test -c fails on a regular file: write the line as the guest would to its port.
    argv[2] = argv[2].replace(f"test -c {port} && ", "")
    done = subprocess.run(argv, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (7, "a:b c\n")
    assert port.read_text() == "READY=1\n"


# One bound for every source of a credential, and no traceback on a hostile name -------


def test_every_source_of_a_credential_has_the_same_bound(tmp_path):
    big = "x" * (CREDENTIAL_LIMIT + 1)
    with pytest.raises(
        DeclarationError, match=r"'c' comes from \$BIG, which holds 1048577 bytes, more than 1 MB"
    ):
        Credential.parse("c=env:BIG", tmp_path, "meson.build", {"BIG": big})
    with pytest.raises(DeclarationError, match="'c' is 1048577 bytes, more than 1 MB"):
        Credential.parse(f"c={big}", tmp_path, "meson.build")
    (tmp_path / "big").write_text(big)
    with pytest.raises(DeclarationError, match="larger than 1 MB"):
        Credential.parse("c=@big", tmp_path, "meson.build")
    fits = "x" * CREDENTIAL_LIMIT
    assert (
        len(Credential.parse("c=env:FITS", tmp_path, "meson.build", {"FITS": fits}).value) == CREDENTIAL_LIMIT
    )


def test_a_credential_file_in_a_symlink_loop_is_an_error_naming_it(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    for spec in ("c=@loop", "c=@loop/x"):
        with pytest.raises(DeclarationError) as e:
            Credential.parse(spec, tmp_path, "meson.build")
        assert e.value.key == "credentials" and "cannot be resolved" in str(e.value), e.value


def test_an_extra_tree_of_an_impossible_name_is_an_error_naming_the_key(tmp_path):
    def bad(key: str, what: str, fix: str) -> DeclarationError:
        return DeclarationError("meson.build", key, what, fix)

    with pytest.raises(DeclarationError, match="cannot be looked at: File name too long"):
        ExtraTree.parse("9" * 4300, tmp_path, bad)


def test_the_emergency_guard_says_which_mode_and_how_the_test_unit_stood():
    d = declaration()
    creds = {
        c.name: c.value.decode() for c in guest_credentials(d, render_test_unit(d, False), interactive=False)
    }
    guard = creds["systemd.extra-unit.harness-emergency-exit@.service"]
    assert "ExecStart=false" in guard and "FailureAction=exit" in guard
    # %% and $$ reach printf and the shell as % and $; %i is systemd's: the mode.
    assert "X_HARNESS_EMERGENCY=%%s" in guard and '"%i"' in guard
    assert "$$(systemctl show -p LoadState --value TEST-99-UNIT.service 2>/dev/null)" in guard
    assert (
        creds["systemd.unit-dropin.rescue.target~harness"]
        == "[Unit]\nWants=harness-emergency-exit@rescue.service\n"
    )
    assert "harness-emergency-exit@emergency.service" in creds["systemd.unit-dropin.emergency.target~harness"]


@pytest.mark.parametrize(
    "said, reason",
    [
        (
            "X_HARNESS_EMERGENCY=rescue\nX_HARNESS_TEST_UNIT_STATE=not-found\n",
            "rescue mode: its test unit was not-found",
        ),
        ("X_HARNESS_EMERGENCY=emergency\nX_HARNESS_TEST_UNIT_STATE=loaded\n", "emergency mode"),
        ("X_HARNESS_EMERGENCY=1\n", "emergency mode"),  # an image's older harness
    ],
)
def test_a_boot_in_maintenance_mode_is_a_fail_naming_it(said, reason):
    report = GuestReport()
    report.add(said.encode())
    outcome = classify("TEST-98-NONE", 123, 60, Ending(EndingKind.EXITED, 0), report)
    assert outcome.status == Status.FAIL and outcome.reason == f"boot failed: the guest fell into {reason}"
