"""Two runs compared (harness/report/compare.py): new failures, fixes, flakes (a verdict
that changed while its inputs did not), slower tests, tests of one run only; read from
build directories, log directories or JSON summaries; and what a run records of its inputs."""

import json
from pathlib import Path

import pytest

from harness.__main__ import main
from harness.errors import HarnessError
from harness.report.compare import RunResults, compare, comparison_lines, load_results
from harness.report.html import update_run_report
from harness.verdict.record import run_inputs
from harness.verdict.results import Status
from harness.verdict.subtests import Subtest
from tests.test_results_formats import record


def write_run(tests: Path, *records) -> Path:
    for r in records:
        (tests / r.name).mkdir(parents=True)
        (tests / r.name / "result.json").write_text(r.to_json())
    return tests


def test_new_failures_fixes_and_flakes_are_told_apart():
    old = RunResults(
        "old",
        {"A": "passed", "B": "failed", "C": "passed", "D/x": "passed", "D/y": "skipped"},
        inputs={"A": "i1", "B": "i2", "C": "i3", "D": "i4"},
    )
    new = RunResults(
        "new",
        {"A": "failed", "B": "passed", "C": "error", "D/x": "passed", "D/y": "passed"},
        inputs={"A": "i1", "B": "i2-changed", "C": "i3", "D": "i4"},
    )
    c = compare(old, new)
    assert [(x.name, x.before, x.after, x.flaky) for x in c.new_failures] == [
        ("A", "passed", "failed", True),
        ("C", "passed", "error", True),
    ]
    assert [(x.name, x.flaky) for x in c.fixed] == [("B", False)]  # its test changed: not a flake
    assert [x.name for x in c.other_changes] == ["D/y"]
    lines = comparison_lines(c)
    assert "    A: passed -> failed (same image and test: flaky)" in lines
    assert "  3 verdict(s) changed while their image and test did not: flaky" in lines


def test_slower_tests_are_named_above_the_noise_with_how_they_booted():
    old = RunResults("o", {"A": "passed", "B": "passed", "C": "passed"}, {"A": 2.0, "B": 10.0, "C": 1.0})
    new = RunResults("n", {"A": "passed", "B": "passed", "C": "passed"}, {"A": 30.0, "B": 14.0, "C": 4.0})
    old = RunResults(old.where, old.verdicts, old.durations, {"A": "snapshot on qemu"})
    new = RunResults(new.where, new.verdicts, new.durations, {"A": "cold on qemu"})
    c = compare(old, new)
    assert [(s.name, s.note) for s in c.slower] == [("A", "cold on qemu now, snapshot on qemu before")]
    assert not c.new_failures and "    A: 2.0 s -> 30.0 s (cold on qemu now, snapshot on qemu before)" in (
        comparison_lines(c)
    )  # B: not 1.5 times; C: not 5 s more


def test_the_same_run_twice_says_so_and_tests_of_one_run_are_named_once():
    same = RunResults("r", {"A": "passed"})
    assert comparison_lines(compare(same, same)) == [
        "compared with r:",
        "  the same verdicts, and no test much slower",
    ]
    c = compare(
        RunResults("o", {"A": "passed", "GONE/x": "passed", "GONE/y": "failed"}),
        RunResults("n", {"A": "passed", "NEW": "failed"}),
    )
    assert c.only_before == ("GONE",) and c.only_after == ("NEW",) and not c.new_failures


def test_runs_are_read_from_build_and_log_directories_and_summaries(tmp_path):
    write_run(
        tmp_path / "old" / "integration-tests",
        record(name="TEST-01", status=Status.PASS, duration_s=2.0, inputs="x", boot="snapshot"),
        record(name="TEST-02", status=Status.SKIP, duration_s=0.1),
        record(
            name="TEST-07",
            status=Status.FAIL,
            cause="exit-status",  # its subtests say why: no case of its own
            subtests=(Subtest("t1", Status.PASS), Subtest("t2", Status.FAIL)),
        ),
    )
    run = load_results(tmp_path / "old")
    assert run.verdicts == {
        "TEST-01": "passed",
        "TEST-02": "skipped",
        "TEST-07/t1": "passed",
        "TEST-07/t2": "failed",
    }
    assert run.durations == {"TEST-01": 2.0, "TEST-07": 12.0}  # a skip's time is left out
    assert run.inputs == {"TEST-01": "x"} and run.boots == {"TEST-01": "snapshot on qemu"}
    assert load_results(tmp_path / "old" / "integration-tests").verdicts == run.verdicts
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"tests": {"TEST-01": "failed"}, "stats": {}}))
    assert load_results(summary).verdicts == {"TEST-01": "failed"}


@pytest.mark.parametrize("what", ["empty", "not-json", "not-a-summary"])
def test_what_is_not_a_run_is_an_error_saying_what_to_give(tmp_path, what):
    path = tmp_path / "x"
    if what == "empty":
        path.mkdir()
    else:
        path.write_text("{" if what == "not-json" else "[]")
    with pytest.raises(HarnessError) as e:
        load_results(path)
    assert "give" in e.value.fix


def test_the_command_prints_and_fails_on_new_failures(tmp_path, capsys):
    write_run(tmp_path / "old", record(name="TEST-01", status=Status.PASS))
    write_run(tmp_path / "new", record(name="TEST-01", status=Status.FAIL))
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    assert "TEST-01: passed -> failed" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "old")]) == 0


def test_a_runs_inputs_follow_the_image_the_declaration_and_the_tests_files(tmp_path):
    image, test = tmp_path / "image.raw", tmp_path / "TEST-01"
    image.write_bytes(b"disk")
    test.mkdir()
    (test / "test.sh").write_text("exit 123\n")
    first = run_inputs([image, None], "decl", test)
    assert run_inputs([image, None], "decl", test) == first
    assert run_inputs([image], "other decl", test) != first
    (test / "test.sh").write_text("exit 1\n")
    assert run_inputs([image], "decl", test) != first
    (test / "test.sh").write_text("exit 123\n")
    assert run_inputs([image], "decl", test) == first
    image.write_bytes(b"a rebuilt disk")
    assert run_inputs([image], "decl", test) != first


def test_the_report_shows_what_changed_since_an_earlier_run(tmp_path):
    write_run(tmp_path / "old", record(name="TEST-01", status=Status.PASS, run="r0"))
    tests = write_run(
        tmp_path / "build" / "integration-tests", record(name="TEST-01", status=Status.FAIL, run="r1")
    )
    _, report = update_run_report(tmp_path / "build", tests, "r1", "integration-tests", tmp_path / "old")
    page = report.read_text()
    assert f"compared with {tmp_path / 'old'}:" in page and "TEST-01: passed -&gt; failed" in page
    _, report = update_run_report(tmp_path / "build", tests, "r1", "integration-tests", tmp_path / "nowhere")
    assert f"not compared with {tmp_path / 'nowhere'}: {tmp_path / 'nowhere'} holds no test results" in (
        report.read_text()
    )
    _, report = update_run_report(tmp_path / "build", tests, "r1", "integration-tests")
    assert "compared with" not in report.read_text()
