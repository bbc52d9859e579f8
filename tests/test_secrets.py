"""Credentials stay out of command lines and out of what the host keeps of a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.__main__ import main
from harness.backends.fake import FakeBackend, Script, guest_said
from harness.declaration import file as declaration_file
from harness.declaration.credential import Credential
from harness.errors import DeclarationError
from harness.image.parts import ImageParts
from harness.settings import Settings
from harness.verdict.record import TestRecord
from harness.verdict.results import Status
from harness.verdict.secrets import mask_bytes, masked_values
from harness.wrapper import RunContext, run_test
from tests.helpers import declaration
from tests.images import write_image

TOKEN = "s3cr3t-t0ken-value"


def test_env_credentials_are_read_when_the_test_runs():
    d = declaration("--credentials=app.token=env:APP_TOKEN", env={"APP_TOKEN": TOKEN})
    assert d.credentials == (Credential("app.token", TOKEN.encode(), secret=True),)


def test_env_credentials_are_only_checked_at_setup():
    d = declaration("--credentials=app.token=env:APP_TOKEN")  # no environment: meson setup
    assert d.credentials[0].secret and d.credentials[0].value == b""


def test_an_unset_variable_names_the_credential_and_the_variable():
    with pytest.raises(DeclarationError, match=r"'app.token' comes from \$APP_TOKEN, which is not set"):
        declaration("--credentials=app.token=env:APP_TOKEN", env={})
    with pytest.raises(DeclarationError, match="is not an environment variable's name"):
        declaration("--credentials=app.token=env:1BAD")


def test_what_is_masked():
    d = declaration(
        "--credentials=a=env:A", "--credentials=short=yes", "--credentials=long=hello world\n", env={"A": "x"}
    )
    assert masked_values(d) == [b"hello world\n", b"hello world", b"x"]  # "yes" is too short to hide
    assert mask_bytes(b"say hello world!", masked_values(d)) == b"say ***!"
    assert mask_bytes(b"=hello world=", masked_values(d), same_length=True) == b"=***********="


def test_a_run_keeps_no_credential_value(tmp_path):
    image = ImageParts(write_image(tmp_path / "image"))
    said = guest_said("READY=1", f"X_HARNESS_TESTCASE=fail 3 testcase_leak token is {TOKEN}", "EXIT_STATUS=1")
    export = f"__CURSOR=1\nMESSAGE=the token is {TOKEN}\n_SYSTEMD_UNIT=TEST-99-UNIT.service\n\n".encode()
    script = Script(
        said, console=f"[  OK  ] printing {TOKEN} to the console\n".encode(), journal_export=export
    )
    decl = declaration("--credentials=app.token=env:APP_TOKEN", env={"APP_TOKEN": TOKEN})
    ctx = RunContext(tmp_path / "logs", None, "run-1", snapshot_dir=tmp_path / "snapshots")
    settings = Settings.from_environment({"HARNESS_ACCEL": "tcg"})
    record = run_test(decl, image, ctx, FakeBackend(script), settings, timeout_factor=1)
    assert record.status == Status.FAIL
    record.write()
    kept = {p.name: p.read_bytes() for p in (tmp_path / "logs").iterdir() if p.is_file()}
    assert {"console.log", "result.json"} <= set(kept)
    assert [name for name, data in kept.items() if TOKEN.encode() in data] == []
    assert "printing *** to the console" in kept["console.log"].decode()
    assert "token is ***" in record.subtests[0].detail


def host_driven(tmp_path: Path, code: str, script: Script) -> TestRecord:
    """A host-driven test with a secret credential, its pytest file `code`, written and read back."""
    test_dir = tmp_path / "TEST-99-UNIT"
    test_dir.mkdir()
    (test_dir / "test_host.py").write_text(code)
    decl = declaration(
        "--host=test_host.py",
        "--credentials=app.token=env:APP_TOKEN",
        env={"APP_TOKEN": TOKEN},
        test_dir=str(test_dir),
    )
    ctx = RunContext(tmp_path / "logs", None, "run-1", snapshot_dir=tmp_path / "snapshots")
    settings = Settings.from_environment({"HARNESS_ACCEL": "tcg"})
    image = ImageParts(write_image(tmp_path / "image"))
    record = run_test(decl, image, ctx, FakeBackend(script), settings, timeout_factor=1)
    record.write()
    kept = {p.name: p.read_bytes() for p in (tmp_path / "logs").iterdir() if p.is_file()}
    assert [name for name, data in kept.items() if TOKEN.encode() in data] == []
    return record


def test_a_host_driven_run_keeps_no_credential_value_the_same_way(tmp_path):
    code = f"def test_leak(machine):\n    assert machine.run('echo {TOKEN}').text == 'nothing'\n"
    record = host_driven(tmp_path, code, Script())
    assert record.status == Status.FAIL
    assert "***" in record.subtests[0].detail and "***" in record.reason
    assert "***" in (tmp_path / "logs" / "host-test.log").read_text()


def test_the_gates_quote_a_host_driven_tests_journal_as_it_is_kept(tmp_path):
    """The gates read the core dumps while the machine still runs, before the logs are
    rewritten: they read them masked, as an in-guest test's."""
    from tests.test_gates import export_entry

    dump = export_entry(
        MESSAGE_ID="fc2e22bc6ee647b6b90729ab34a250b1",
        COREDUMP_COMM="myd",
        COREDUMP_EXE="/usr/bin/myd",
        MESSAGE=f"Process 312 (myd) dumped core.\n\nStack trace of thread 312:\n#0  0x1 {TOKEN} (myd + 0x10)\n",
    )
    record = host_driven(tmp_path, "def test_x(machine):\n    pass\n", Script(journal_export=dump + b"\n"))
    assert record.status == Status.FAIL and record.cause == "coredump"
    assert f"#0  0x1 {'*' * len(TOKEN)} (myd + 0x10)" in record.reason


def test_the_declaration_file_holds_every_character(tmp_path):
    value = 'back\\slash, new\nline, "quotes" = @at'
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
    path = tmp_path / "TEST-99-UNIT.declaration"
    path.write_text(f"--name=TEST-99-UNIT\n--test-dir={tmp_path}\n--credentials=x={escaped}\n")
    assert declaration_file.read(path)[-1] == f"--credentials=x={value}"
    assert main(["validate", f"--declaration={path}"]) == 0


def test_a_missing_declaration_file_is_an_error(tmp_path, capsys):
    assert main(["validate", f"--declaration={tmp_path / 'gone'}"]) == 99
    assert "meson setup --reconfigure" in capsys.readouterr().err


def test_a_file_of_the_tests_own_tree_is_not_masked_but_inline_values_are(tmp_path):
    (tmp_path / "app.service").write_text("[Service]\nExecStart=/usr/bin/app\n")
    d = declaration(
        "--credentials=unit=@app.service", "--credentials=password=hunter22", test_dir=str(tmp_path)
    )
    assert masked_values(d) == [b"hunter22"]
