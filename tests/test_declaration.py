import re
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.declaration.credential import Credential
from harness.declaration.declaration import TestDeclaration, skip_reason
from harness.declaration.keys import KEYS, key_table
from harness.errors import DeclarationError
from harness.settings import Settings
from harness.verdict.results import EXIT_ERROR
from tests.helpers import declaration

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_template():
    d = declaration()
    assert d.firmware == "linux" and d.storage == "volatile" and d.exit_code == 123 and d.boot == "auto"
    assert d.configuration.command == "/usr/lib/harness/tests/TEST-99-UNIT/test.sh"
    assert d.unit_name == "TEST-99-UNIT.service"


@pytest.mark.parametrize(
    "args, key",
    [
        (["--firmware=bios"], "firmware"),
        (["--storage=tmpfs"], "storage"),
        (["--boot=warm"], "boot"),
        (["--exit-code=0"], "exit-code"),
        (["--exit-code=77"], "exit-code"),
        (["--timeout=0"], "timeout"),
        (["--credentials=novalue"], "credentials"),
        (["--credentials=bad/name=x"], "credentials"),
        (["--credentials=a=1", "--credentials=a=2"], "credentials"),
        (["--wants=not a unit"], "configuration"),
        (["--env=1BAD=x"], "configuration"),
        (["--disks=0M"], "disks"),
        (["--disks=2T"], "disks"),
        (["--disks=1.5G"], "disks"),
        (["--disks=512"], "disks"),
        (["--disks=1G"] * 9, "disks"),
    ],
)
def test_bad_declarations_name_file_and_key(args, key):
    with pytest.raises(DeclarationError) as e:
        declaration(*args)
    assert e.value.key == key
    assert e.value.source == "/nonexistent/TEST-99-UNIT/meson.build"
    assert "TEST-99-UNIT/meson.build: '" + key in str(e.value)


def test_name_must_follow_convention():
    with pytest.raises(DeclarationError, match="TEST-NN-NAME"):
        declaration(name="basic")


def test_credentials_text_and_file(tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    d = declaration("--credentials=greeting=a=b, c", "--credentials=blob=@blob.bin", test_dir=str(tmp_path))
    assert d.credentials == (
        Credential("greeting", b"a=b, c"),
        Credential("blob", bytes(range(256)), own_file=True),
    )


def test_missing_credential_file_is_a_declaration_error(tmp_path):
    with pytest.raises(DeclarationError, match="cannot read"):
        declaration("--credentials=blob=@missing.bin", test_dir=str(tmp_path))


def test_skip_switches():
    def why(decl: TestDeclaration, **env: str) -> str:
        reason = skip_reason(decl, Settings.from_environment(env))
        assert reason is not None, "not skipped"
        return reason

    d = declaration()
    assert skip_reason(d, Settings.from_environment({})) is None
    assert "HARNESS_INTEGRATION_TESTS=0" in why(d, HARNESS_INTEGRATION_TESTS="0")
    assert "HARNESS_SKIP" in why(d, HARNESS_SKIP="TEST-98 TEST-99")
    assert skip_reason(d, Settings.from_environment({"HARNESS_SKIP": "TEST-98"})) is None
    slow = declaration("--slow=true")
    assert "HARNESS_SLOW_TESTS=1" in why(slow)
    assert skip_reason(slow, Settings.from_environment({"HARNESS_SLOW_TESTS": "1"})) is None
    assert "disabled" in why(declaration("--enabled=false"))


def _meson_literal(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return str(value) if isinstance(value, int) else f"'{value}'"


def test_the_meson_template_spells_out_the_keys_and_their_defaults():
    text = (ROOT / "test" / "meson.build").read_text()
    block = text[
        text.index("integration_test_template = {") : text.index(
            "\n}", text.index("integration_test_template")
        )
    ]
    template = dict(re.findall(r"^\s+'([a-z-]+)'\s*:\s*([^,#]+?)\s*,", block, re.M))
    assert template == {k.name: _meson_literal(k.default) for k in KEYS if not k.configuration}


def test_the_reference_key_table_is_the_one_the_keys_print():
    assert key_table() in (ROOT / "docs" / "reference.md").read_text(), (
        "docs/reference.md's key table is stale: python3 -m harness keys"
    )


@pytest.mark.parametrize("key", ["colour", "confguration"])
def test_an_unknown_key_names_the_file_and_the_known_keys(key, capsys):
    status = main(["validate", "--name=TEST-99-UNIT", "--test-dir=/nonexistent/TEST-99-UNIT", f"--{key}=x"])
    err = capsys.readouterr().err
    assert status == EXIT_ERROR
    assert f"/nonexistent/TEST-99-UNIT/meson.build: '{key}': unknown key" in err and "firmware" in err


def test_an_abbreviated_key_is_not_taken_for_a_known_one(capsys):
    assert main(["validate", "--name=TEST-99-UNIT", "--test-dir=/t/TEST-99-UNIT", "--time=5"]) == EXIT_ERROR
    assert "'time': unknown key" in capsys.readouterr().err


def test_validate_prints_meson_priority(capsys, tmp_path):
    (tmp_path / "test_x.py").touch()
    for args, priority in (
        (["--priority=3"], 9),
        (["--priority=3", "--storage=persistent"], 10),
        (["--priority=3", "--host=test_x.py"], 11),
        (["--tpm=true"], 1),
        (["--disks=1G"], 1),
        ([], 0),
    ):
        assert main(["validate", "--name=TEST-99-UNIT", f"--test-dir={tmp_path}", *args]) == 0
        assert capsys.readouterr().out.strip() == str(priority)


def test_disks_are_sizes_in_bytes_and_a_required_feature():
    d = declaration("--disks=512M", "--disks=2G", "--disks=1T")
    assert d.disks == (512 << 20, 2 << 30, 1 << 40)
    assert d.requires == ("disks",)
    assert declaration("--disks=1G", "--requires=disks", "--tpm=true").requires == ("disks", "tpm")
    assert declaration().disks == () and declaration().requires == ()


def test_systemds_spellings_of_the_test_unit_are_accepted():
    d = declaration(
        "--wants=multi-user.target user@4711.service",
        "--after=user@4711.service",
        "--memory-accounting=yes",
        "--unit=DefaultDependencies=no",  # what test/meson.build makes of {'DefaultDependencies' : 'no'}
    )
    assert d.configuration.wants == ("multi-user.target", "user@4711.service")
    assert d.configuration.after == ("user@4711.service",)
    assert d.configuration.memory_accounting is True
    assert declaration("--memory-accounting=no").configuration.memory_accounting is False
    with pytest.raises(DeclarationError, match="is not true or false"):
        declaration("--slow=yes")  # systemd spells only memory-accounting yes/no
