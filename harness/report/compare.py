"""Two runs side by side: what failed that passed before, what was fixed, which verdicts
changed although nothing they were made of did (a flake), and which tests got slower.

A run is read from what it left: a build directory (its tests' result.json files), a
directory of log directories (build/integration-tests), or a JSON summary (verdicts
only: no durations, no inputs). `os-harness compare OLD NEW` prints the comparison; the
HTML report shows it when HARNESS_COMPARE_WITH names the earlier run.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from harness.errors import HarnessError
from harness.verdict.record import RESULT_FILE, SUMMARY_STATUS, TestRecord
from harness.verdict.results import Status

BAD = ("failed", "error")
SLOWER_FACTOR = 1.5  # a test this many times as long as before is slower...
SLOWER_SECONDS = 5.0  # ...and by this much at least (this machine's noise is seconds)


@attrs.frozen
class RunResults:
    """One run's verdicts by case (a test, or TEST/subtest), and by test its duration,
    how it booted and what it was made of (where the run recorded them)."""

    where: str
    verdicts: dict[str, str]
    durations: dict[str, float] = attrs.Factory(dict)
    boots: dict[str, str] = attrs.Factory(dict)
    inputs: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class Change:
    name: str
    before: str  # a verdict, or "absent"
    after: str
    flaky: bool = False  # the same inputs on both sides


@attrs.frozen
class Slower:
    name: str
    before_s: float
    after_s: float
    note: str = ""  # how its boot differed, where it did


@attrs.frozen
class Comparison:
    old: str
    new: str
    new_failures: tuple[Change, ...]
    fixed: tuple[Change, ...]
    other_changes: tuple[Change, ...]
    slower: tuple[Slower, ...]
    only_before: tuple[str, ...] = ()  # tests with no case in the later run
    only_after: tuple[str, ...] = ()  # tests new in it

    @property
    def flaky(self) -> tuple[Change, ...]:
        return tuple(c for c in (*self.new_failures, *self.fixed, *self.other_changes) if c.flaky)


def load_results(path: Path) -> RunResults:
    """A run's results from a build directory, a directory of tests' log directories, or
    a JSON summary."""
    if path.is_file():
        return _from_summary(path)
    tests = path / "integration-tests" if (path / "integration-tests").is_dir() else path
    records = [_record(p) for p in sorted(tests.glob(f"*/{RESULT_FILE}"))]
    if not records:
        raise HarnessError(
            f"{path} holds no test results (no */{RESULT_FILE})",
            "give a build directory after `meson test`, its integration-tests/ directory, or a JSON summary",
        )
    return results_of(records, str(path))


def results_of(records: list[TestRecord], where: str) -> RunResults:
    """A run's results from its tests' records."""
    verdicts = {c.name: SUMMARY_STATUS[c.status] for r in records for c in r.cases()}
    ran = [r for r in records if r.status in (Status.PASS, Status.FAIL)]  # a skip's time says nothing
    return RunResults(
        where,
        verdicts,
        {r.name: r.duration_s for r in ran},
        {r.name: f"{r.boot} on {r.backend}" for r in ran if r.boot},
        {r.name: r.inputs for r in records if r.inputs},
    )


def _record(path: Path) -> TestRecord:
    try:
        return TestRecord.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise HarnessError(f"{path} cannot be read: {e}", "give the results of a finished run") from None


def _from_summary(path: Path) -> RunResults:
    try:
        data = json.loads(path.read_text())
        verdicts = {str(k): str(v) for k, v in data["tests"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HarnessError(
            f"{path} is not a run's JSON summary: {e}", "give integration-tests-summary.json from meson-logs/"
        ) from None
    return RunResults(str(path), verdicts)


def _test_of(case: str) -> str:
    return case.split("/", 1)[0]


def compare(old: RunResults, new: RunResults) -> Comparison:
    """What changed from `old` to `new`; a case in one run only counts as "absent" in the other."""
    failures, fixed, others = [], [], []
    tests_before = {_test_of(n) for n in old.verdicts}
    tests_after = {_test_of(n) for n in new.verdicts}
    for name in sorted(old.verdicts.keys() | new.verdicts.keys()):
        before, after = old.verdicts.get(name, "absent"), new.verdicts.get(name, "absent")
        if before == after or _test_of(name) not in tests_before & tests_after:
            continue  # unchanged, or a test of one run only (said once, below)
        test = _test_of(name)
        same = old.inputs.get(test) is not None and old.inputs.get(test) == new.inputs.get(test)
        change = Change(name, before, after, flaky=same and "absent" not in (before, after))
        if after in BAD:
            failures.append(change)
        elif before in BAD and after == "passed":
            fixed.append(change)
        else:
            others.append(change)
    slower = []
    for test in sorted(old.durations.keys() & new.durations.keys()):
        before_s, after_s = old.durations[test], new.durations[test]
        if after_s > before_s * SLOWER_FACTOR and after_s - before_s >= SLOWER_SECONDS:
            b, a = old.boots.get(test, ""), new.boots.get(test, "")
            slower.append(
                Slower(test, before_s, after_s, f"{a} now, {b} before" if a != b and a and b else "")
            )
    return Comparison(
        old.where,
        new.where,
        tuple(failures),
        tuple(fixed),
        tuple(others),
        tuple(slower),
        tuple(sorted(tests_before - tests_after)),
        tuple(sorted(tests_after - tests_before)),
    )


def describe_change(c: Change) -> str:
    return f"{c.name}: {c.before} -> {c.after}" + (" (same image and test: flaky)" if c.flaky else "")


def describe_slower(s: Slower) -> str:
    return f"{s.name}: {s.before_s:.1f} s -> {s.after_s:.1f} s" + (f" ({s.note})" if s.note else "")


def comparison_lines(c: Comparison) -> list[str]:
    """The comparison as a person reads it after a run."""
    lines = [f"compared with {c.old}:"]
    sections = (
        ("new failures", [describe_change(x) for x in c.new_failures]),
        ("fixed", [describe_change(x) for x in c.fixed]),
        ("changed otherwise", [describe_change(x) for x in c.other_changes]),
        (
            f"slower (over {SLOWER_FACTOR} times and {SLOWER_SECONDS:.0f} s)",
            [describe_slower(x) for x in c.slower],
        ),
    )
    for title, items in sections:
        if items:
            lines += [f"  {title}:", *(f"    {item}" for item in items)]
    if len(lines) == 1:
        lines.append("  the same verdicts, and no test much slower")
    elif c.flaky:
        lines.append(f"  {len(c.flaky)} verdict(s) changed while their image and test did not: flaky")
    return lines
