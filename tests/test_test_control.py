"""guest/test-control.sh, our stand-in for systemd's test/units/test-control.sh: upstream's
functions with upstream's meaning (the first failure ends the run, TEST_MATCH_* and
TEST_SKIP_*S select), each subtest and testcase told to the host. Run in bash here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.guest.units import TESTCASES_LIBRARY

TEST_CONTROL = Path(__file__).parent.parent / "harness" / "guest" / "test-control.sh"


def run(
    tmp_path: Path, body: str, script_name: str = "TEST-99-UNIT.sh", **env: str
) -> tuple[int, list[str], str]:
    """Run `body` as systemd's test scripts start: set -eux, source test-control.sh."""
    notify = tmp_path / "notify"
    notify.write_text("")
    script = tmp_path / script_name
    script.write_text(f'#!/bin/bash\nset -eux\n. "{TEST_CONTROL}"\n{body}\n')
    script.chmod(0o755)
    r = subprocess.run(
        [str(script)],
        capture_output=True,
        text=True,
        cwd="/",
        env={
            **os.environ,
            "HARNESS_TESTCASES_LIB": str(TESTCASES_LIBRARY),
            "HARNESS_NOTIFY_DEVICE": str(notify),
            **env,
        },
    )
    return r.returncode, notify.read_text().splitlines(), r.stdout + r.stderr


def ends(lines: list[str]) -> list[tuple[str, str]]:
    words = [line.removeprefix("X_HARNESS_TESTCASE=").split(" ") for line in lines if "TESTCASE=" in line]
    return [(w[2], w[0]) for w in words]


def test_testcases_run_in_order_and_the_first_failure_ends_the_script(tmp_path):
    status, lines, out = run(
        tmp_path,
        "testcase_b() { false; echo not reached; }\ntestcase_a() { true; }\ntestcase_c() { true; }\n"
        "run_testcases\ntouch /nonexistent-dir/testok",
    )
    assert status == 1 and "not reached" not in out
    assert ends(lines) == [("testcase_a", "pass"), ("testcase_b", "fail")]
    assert lines[0] == "X_HARNESS_TESTCASE_START=testcase_a"


def test_testcases_selected_by_upstreams_variables_and_ours(tmp_path):
    cases = "testcase_a() { true; }\ntestcase_b() { true; }\ntestcase_c() { true; }\nrun_testcases"
    status, lines, _ = run(
        tmp_path, cases, TEST_MATCH_TESTCASE="^testcase_(a|b)$", TEST_SKIP_TESTCASES="b$ zz"
    )
    assert status == 0 and ends(lines) == [("testcase_a", "pass")]
    status, lines, _ = run(tmp_path, cases, HARNESS_SKIP_TESTCASE="a$")
    assert status == 0 and ends(lines) == [("testcase_b", "pass"), ("testcase_c", "pass")]


def test_subtests_are_the_scripts_files_and_each_is_a_point(tmp_path):
    for name, code in (("01", "exit 0"), ("02", "exit 3"), ("03", "exit 0")):
        sub = tmp_path / f"TEST-99-UNIT.{name}.sh"
        sub.write_text(f"#!/bin/bash\n{code}\n")
        sub.chmod(0o755)
    status, lines, out = run(tmp_path, "run_subtests")
    assert status == 1 and "Subtest" in out
    assert ends(lines) == [("TEST-99-UNIT.01", "pass"), ("TEST-99-UNIT.02", "fail")]
    status, lines, out = run(tmp_path, "run_subtests", TEST_SKIP_SUBTESTS=r"\.02\.sh$")
    assert status == 0 and ends(lines) == [("TEST-99-UNIT.01", "pass"), ("TEST-99-UNIT.03", "pass")]
    assert "PASSED TESTS:   2" in out
    status, lines, _ = run(tmp_path, "run_subtests_with_signals SIGUSR1", TEST_MATCH_SUBTEST=r"\.03\.sh$")
    assert status == 0 and ends(lines) == [("TEST-99-UNIT.03", "pass")]


def test_both_libraries_can_be_sourced_and_upstreams_meaning_wins_once_sourced_last(tmp_path):
    status, lines, _ = run(
        tmp_path,
        f'. "{TESTCASES_LIBRARY}"\n. "{TEST_CONTROL}"\ntestcase_a() {{ false; }}\nrun_testcases\necho after',
    )
    assert status == 1 and ends(lines) == [("testcase_a", "fail")]
