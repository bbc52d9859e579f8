import pytest

from harness.declaration import Credential, skip_reason
from harness.errors import DeclarationError
from helpers import declaration


def test_defaults_follow_the_template():
    d = declaration()
    assert d.firmware == "linux" and d.storage == "volatile" and d.exit_code == 123 and d.boot == "auto"
    assert d.unit.command == "/usr/lib/harness/tests/TEST-99-UNIT/test.sh"
    assert d.unit_name == "TEST-99-UNIT.service"


@pytest.mark.parametrize("args, key", [
    (["--firmware=bios"], "firmware"),
    (["--storage=tmpfs"], "storage"),
    (["--boot=warm"], "boot"),
    (["--exit-code=0"], "exit-code"),
    (["--exit-code=77"], "exit-code"),
    (["--timeout=0"], "timeout"),
    (["--credential=novalue"], "credentials"),
    (["--credential=bad/name=x"], "credentials"),
    (["--credential=a=1", "--credential=a=2"], "credentials"),
    (["--unit-wants=not a unit"], "configuration"),
    (["--unit-env=1BAD=x"], "configuration"),
])
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
    d = declaration("--credential=greeting=a=b, c", "--credential=blob=@blob.bin", test_dir=str(tmp_path))
    assert d.credentials == (Credential("greeting", b"a=b, c"), Credential("blob", bytes(range(256))))


def test_missing_credential_file_is_a_declaration_error(tmp_path):
    with pytest.raises(DeclarationError, match="cannot read"):
        declaration("--credential=blob=@missing.bin", test_dir=str(tmp_path))


def test_skip_switches():
    d = declaration()
    assert skip_reason(d, {}) is None
    assert "HARNESS_INTEGRATION_TESTS=0" in skip_reason(d, {"HARNESS_INTEGRATION_TESTS": "0"})
    assert "HARNESS_SKIP" in skip_reason(d, {"HARNESS_SKIP": "TEST-98 TEST-99"})
    assert skip_reason(d, {"HARNESS_SKIP": "TEST-98"}) is None
    slow = declaration("--slow=true")
    assert "HARNESS_SLOW_TESTS=1" in skip_reason(slow, {})
    assert skip_reason(slow, {"HARNESS_SLOW_TESTS": "1"}) is None
    assert "disabled" in skip_reason(declaration("--enabled=false"), {})
