"""Host-driven tests on real VMs: a file whose second step fails reports every step, as
meson and result.json show it; Ctrl-C during a host test and a command that outlives its
timeout leave no QEMU and no private directory behind."""

from __future__ import annotations

import json
import signal
import textwrap

import pytest

from tests.e2e import (
    SNAPSHOTS,
    harness_leftovers,
    meson_project,
    meson_setup,
    meson_test_suite,
    run_wrapper,
    start_wrapper,
    wait_for_console,
)

pytestmark = pytest.mark.vm

FAILS_IN_STEP_2 = """\
def test_step_1_the_machine_answers(machine):
    machine.check("true")


def test_step_2_fails_on_purpose(machine):
    assert machine.run("echo v1").text == "v2", "the update did not arrive"


def test_step_3_still_runs(machine):
    assert machine.check("echo still here").text == "still here"
"""


def test_a_failing_step_fails_the_test_naming_it_and_the_steps_after_it_report(image, tmp_path):
    project = meson_project(tmp_path / "project")
    test = project / "test" / "TEST-91-HOST-FAILS"
    test.mkdir()
    (test / "test_fails.py").write_text(FAILS_IN_STEP_2)
    (test / "meson.build").write_text(
        "integration_tests += [integration_test_template + {\n"
        "        'name' : fs.name(meson.current_source_dir()),\n"
        "        'host' : 'test_fails.py',\n"
        "        'timeout' : 120,\n"
        "}]\n"
    )
    build, env = meson_setup(project, HARNESS_SNAPSHOT_DIR=str(SNAPSHOTS))
    r = meson_test_suite(project, build, env, "TEST-91-HOST-FAILS")
    assert r.returncode != 0 and "TEST-91-HOST-FAILS" in r.stdout and "FAIL" in r.stdout
    log = (build / "meson-logs" / "testlog.txt").read_text()
    assert "ok 1 - TEST-91-HOST-FAILS/test_step_1_the_machine_answers" in log
    assert "not ok 2 - TEST-91-HOST-FAILS/test_step_2_fails_on_purpose" in log
    assert "ok 3 - TEST-91-HOST-FAILS/test_step_3_still_runs" in log
    record = json.loads((build / "integration-tests" / "TEST-91-HOST-FAILS" / "result.json").read_text())
    steps = {s["name"]: s for s in record["subtests"]}
    assert record["status"] == "fail" and record["boot"] == "snapshot"  # the suite's, resumed
    assert "the update did not arrive" in steps["test_step_2_fails_on_purpose"]["detail"]
    assert "assert 'v1' == 'v2'" in steps["test_step_2_fails_on_purpose"]["detail"]
    assert [s["status"] for s in record["subtests"]] == ["pass", "fail", "pass"]
    assert record["reason"].startswith(
        "1 of 3 steps of test_fails.py failed, first test_step_2_fails_on_purpose"
    )
    console = (build / "integration-tests" / "TEST-91-HOST-FAILS" / "console.log").read_text(errors="replace")
    assert console.count("harness: boot ") == 1


def host_file(tmp_path, code: str) -> str:
    (tmp_path / "test_host.py").write_text(textwrap.dedent(code))
    return "--host=test_host.py"


def test_ctrl_c_during_a_host_test_leaves_nothing_behind(image, tmp_path):
    name = "TEST-92-HOST-CTRL-C"
    code = """
        import time

        def test_waits(machine):
            machine.check("true")
            time.sleep(600)
    """
    wrapper = start_wrapper(image, tmp_path, name, host_file(tmp_path, code), "--timeout=600")
    try:
        wait_for_console(tmp_path / "logs" / "console.log", "harness: boot ")
        wrapper.send_signal(signal.SIGINT)
        assert wrapper.wait(timeout=60) == 130
    finally:
        wrapper.kill()
        print(wrapper.communicate()[0])
    procs, dirs = harness_leftovers(name)
    assert procs == [] and dirs == []


def test_a_command_past_its_timeout_fails_its_step_and_leaves_nothing_behind(image, tmp_path):
    name = "TEST-93-HOST-RUN-TIMEOUT"
    code = """
        def test_sleeps_too_long(machine):
            machine.run("sleep 600", timeout=4)

        def test_the_machine_still_answers(machine):
            machine.check("true")
    """
    r = run_wrapper(image, tmp_path, name, host_file(tmp_path, code), "--timeout=300")
    record = json.loads((tmp_path / "logs" / "result.json").read_text())
    assert r.returncode == 1 and record["status"] == "fail"
    first, second = record["subtests"]
    assert first["status"] == "fail" and "run('sleep 600'): still running after" in first["detail"]
    assert second["status"] == "pass"
    procs, dirs = harness_leftovers(name)
    assert procs == [] and dirs == []
