"""The HARNESS_* switches: one table (harness/settings.py), read once, every one validated
alike; docs/reference.md's table is the one `python3 -m harness environment` prints."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import attrs
import pytest

from harness.__main__ import main
from harness.errors import HarnessError
from harness.guest.reporting import CONSOLE_CHANNEL
from harness.settings import SWITCHES, Options, SaveJournal, Settings, environment_table
from harness.verdict.results import EXIT_ERROR

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"
NAME = re.compile(r"(?<![A-Za-z0-9_])HARNESS_[A-Z0-9_]*[A-Z0-9]")  # not X_HARNESS_ notify keys


def test_the_reference_environment_table_is_the_one_the_command_prints(capsys):
    assert main(["environment"]) == 0
    printed = capsys.readouterr().out
    assert printed == environment_table() + "\n"
    assert environment_table() in (ROOT / "docs" / "reference.md").read_text(), (
        "docs/reference.md's environment table is stale: python3 -m harness environment"
    )


def python_names() -> set[str]:
    """HARNESS_* names the code binds as its own identifiers (HARNESS_DIR, ...)."""
    names = set()
    for path in HARNESS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def guest_variables() -> set[str]:
    """What the guest's own scripts read (the harness sets them in the test unit): the
    guest's environment, not the person's switches."""
    scripts = [p for p in (HARNESS / "guest").iterdir() if p.is_file() and p.suffix != ".py"]
    return {name for p in scripts for name in NAME.findall(p.read_text())}


def test_every_harness_variable_the_code_names_is_in_the_table():
    named = {name for p in HARNESS.rglob("*.py") for name in NAME.findall(p.read_text())}
    marker = CONSOLE_CHANNEL.prefix.strip()  # what starts a report line on a console
    unknown = named - {s.name for s in SWITCHES} - python_names() - guest_variables() - {marker}
    assert not unknown, "add them to SWITCHES in harness/settings.py"


def test_no_module_reads_a_switch_behind_the_settings_back():
    reads = re.compile(r"""(\.get\(|environ\[)\s*f?["']HARNESS_""")
    readers = [
        str(p.relative_to(HARNESS))
        for p in HARNESS.rglob("*.py")
        if p.name != "settings.py" and reads.search(p.read_text())
    ]
    assert not readers


def test_the_table_fills_every_field_once():
    assert [s.field for s in SWITCHES] == [f.name for f in attrs.fields(Settings)]
    assert len({s.name for s in SWITCHES}) == len(SWITCHES)


def test_defaults():
    s = Settings.defaults()
    assert (s.integration_tests, s.slow_tests, s.shell, s.cold_boot, s.interactive) == (
        True,
        False,
        False,
        False,
        None,
    )
    assert (s.backend, s.lava_device_type, s.save_journal) == ("qemu", "qemu", SaveJournal.FAIL)
    assert (s.console_limit_mb, s.lava_queue_timeout, s.retry_qemu_crash, s.vcpus) == (64, 600, 1, None)
    assert (s.accel, s.qemu, s.snapshot_dir, s.secure_boot_vars, s.skip) == (None, "", None, None, ())


@pytest.mark.parametrize(
    "name, value, accepts",
    [
        ("HARNESS_VCPUS", "0", "a number of vCPUs"),
        ("HARNESS_CONSOLE_LIMIT_MB", "-1", "a number of megabytes"),
        ("HARNESS_RETRY_QEMU_CRASH", "once", "a number of retries"),
        ("HARNESS_LAVA_QUEUE_TIMEOUT", "1.5", "a number of seconds"),
        ("HARNESS_COLD_BOOT", "yes", "0 or 1"),
        ("HARNESS_INTERACTIVE", "true", "0 or 1"),
        ("TEST_SHELL", "2", "0 or 1"),
        ("HARNESS_ACCEL", "xen", "kvm or tcg"),
        ("HARNESS_BACKEND", "docker", "qemu, autokit, lava or nspawn"),
        ("HARNESS_SAVE_JOURNAL", "sometimes", "fail, 1 or 0"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable_and_what_it_accepts(name, value, accepts):
    with pytest.raises(HarnessError) as e:
        Settings.from_environment({name: value})
    assert e.value.what == f"{name}='{value}' is not {accepts}"
    assert e.value.fix.startswith("set it to ")


def test_an_empty_variable_is_an_unset_one():
    assert Settings.from_environment({s.name: "" for s in SWITCHES}) == Settings.defaults()


def test_systemds_names_are_read_where_ours_is_unset():
    assert Settings.from_environment({"TEST_SHELL": "1"}).shell
    assert Settings.from_environment({"TEST_SKIP_TESTCASES": "b$"}).skip_testcase == "b$"
    both = Settings.from_environment({"HARNESS_MATCH_TESTCASE": "ours", "TEST_MATCH_TESTCASE": "theirs"})
    assert both.match_testcase == "ours"


def test_the_journal_policy_keeps_its_old_spellings():
    assert Settings.from_environment({"HARNESS_SAVE_JOURNAL": "always"}).save_journal is SaveJournal.ALWAYS
    assert Settings.from_environment({"HARNESS_SAVE_JOURNAL": "no"}).save_journal is SaveJournal.NEVER


def test_the_option_unless_the_variable_says_otherwise():
    options = Options(backend="lava", lava_url="http://option", snapshot_dir="/option")
    s = Settings.from_environment({"HARNESS_LAVA_URL": "http://variable"}, options)
    assert (s.backend, s.lava_url, s.snapshot_dir) == ("lava", "http://variable", Path("/option"))
    with pytest.raises(HarnessError, match="--backend='docker' is not qemu, autokit, lava or nspawn"):
        Settings.from_environment({}, Options(backend="docker"))


def test_containers_are_preferred_by_option_or_by_variable_systemds_spelling_too():
    # meson passes -Dprefer-containers as --prefer-containers=0 or 1
    assert Settings.from_environment({}, Options(prefer_containers="1")).prefer_containers
    assert not Settings.from_environment(
        {"HARNESS_PREFER_CONTAINERS": "0"}, Options(prefer_containers="1")
    ).prefer_containers
    assert Settings.from_environment(
        {"TEST_PREFER_NSPAWN": "1"}, Options(prefer_containers="0")
    ).prefer_containers


def test_a_bad_switch_stops_the_run_before_anything_boots(monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_COLD_BOOT", "yes")
    test = ["--name=TEST-99-UNIT", "--test-dir=/nonexistent/TEST-99-UNIT"]
    status = main(["run", "--image=/nonexistent/image.raw", *test])
    assert status == EXIT_ERROR and "HARNESS_COLD_BOOT='yes' is not 0 or 1" in capsys.readouterr().err
