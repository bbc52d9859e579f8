"""A host test's file checked before its machine boots (host/precheck.py): a syntax error,
an undefined name, an unknown fixture and a verb the machine lacks are each an ERROR naming
the file and the line, in about a second and without a boot; a good file passes untouched."""

from __future__ import annotations

import textwrap
import time

import pytest

from harness.host.precheck import problems
from harness.verdict.results import Status
from tests.images import write_image
from tests.test_host_driven import host_test

GOOD = """
    import pytest

    @pytest.fixture
    def greeting():
        return "hello"

    @pytest.mark.parametrize("word", ["a", "b"])
    def test_words(machine, word, greeting, tmp_path):
        machine.wait_for_unit("multi-user.target")
        machine.console.expect("login")
        assert machine.boot >= 1 and machine.backend

    def test_plain(machine):
        machine.succeed("true")
"""


@pytest.fixture
def fake_image(tmp_path):
    return write_image(tmp_path / "image")


def write(tmp_path, code: str):
    test_dir = tmp_path / "TEST-99-CHECK"
    test_dir.mkdir(exist_ok=True)
    path = test_dir / "test_host.py"
    path.write_text(textwrap.dedent(code))
    return path


def test_a_good_file_has_no_problems(tmp_path):
    assert problems(write(tmp_path, GOOD)) == []


def test_what_is_not_the_fixture_is_not_checked(tmp_path):
    code = """
        import platform

        def helper():
            machine = platform.uname()
            return machine.system

        def test_state(machine, request):
            machine.step_done = True
            assert machine._controls is not None and machine.__class__
            upper = lambda machine: machine.upper()
            assert upper("a")

        def test_reads_state(machine):
            assert machine.step_done

        def test_hinted(machine: "DrivenMachine") -> "None":
            machine.succeed("true")

        def test_reassigned(machine):
            machine = "x"
            assert machine.upper()
    """
    assert problems(write(tmp_path, code)) == []


def test_a_conftest_redefining_the_machine_turns_the_verb_check_off(tmp_path):
    path = write(tmp_path, "def test_x(machine):\n    machine.frobnicate()\n")
    (path.parent / "conftest.py").write_text("import pytest\n@pytest.fixture\ndef machine():\n    return 1\n")
    assert problems(path) == []


def test_a_fixture_from_conftest_is_known(tmp_path):
    path = write(tmp_path, "def test_x(machine, server):\n    pass\n")
    (path.parent / "conftest.py").write_text("import pytest\n@pytest.fixture\ndef server():\n    return 1\n")
    assert problems(path) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def test_x(machine):\n    machine.run('a'\n", ["test_host.py:2: '(' was never closed"]),
        ("def test_x(machine):\n    machin.run('a')\n", ["test_host.py:2: undefined name 'machin'"]),
        (
            "def test_x(machine):\n    pass\n\ndef test_y(machine, sever):\n    pass\n",
            ["test_host.py:4: test_y asks for an unknown fixture sever"],
        ),
        (
            "def test_x(machine):\n    machine.wait_for_uint('a')\n    machine.console.expekt('b')\n",
            [
                "test_host.py:2: machine has no wait_for_uint (did you mean wait_for_unit?)",
                "test_host.py:3: machine.console has no expekt (did you mean expect?)",
            ],
        ),
    ],
    ids=["syntax", "undefined-name", "unknown-fixture", "unknown-verb"],
)
def test_each_problem_names_the_file_and_line(tmp_path, code, expected):
    assert problems(write(tmp_path, code)) == expected


def test_a_file_with_a_typo_is_an_error_before_any_boot(tmp_path, fake_image):
    code = "def test_step(machine):\n    machine.wait_for_uint('x.service')\n"
    start = time.monotonic()
    record, backend = host_test(tmp_path, fake_image, code)
    assert time.monotonic() - start < 5
    assert not backend.plans, "it booted"
    assert record.status == Status.ERROR
    assert record.reason == (
        "the host test test_host.py was checked before booting and has 1 problem(s): "
        "test_host.py:2: machine has no wait_for_uint (did you mean wait_for_unit?)"
    )
