"""What one run of one test produced, and the cases it counts as.

A TestRecord is written as result.json into the test's log directory; the TAP output,
the suite's JSON summary and the HTML report are all drawn from records through
`cases()`, so the three always count the same things: one case per subtest, or one for
the test when it has none, plus one for a failure that belongs to no subtest. What a run
found besides its verdict reaches the record as one typed value, `Found`.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from harness.verdict.results import EXIT_CODES, Status
from harness.verdict.subtests import Subtest

RESULT_FILE = "result.json"
TIMELINE_FILE = "boot-timeline.txt"  # `systemctl show` of the boot's units, for the report's chart


@attrs.frozen
class Case:
    name: str  # TEST-NN-NAME, or TEST-NN-NAME/testcase_x for a subtest
    status: Status
    detail: str = ""
    duration_ms: int | None = None


@attrs.frozen
class Found:
    """What a run found besides its verdict, for its record (TestRecord's fields of the
    same names); none of its text holds a credential value (secrets.py)."""

    subtests: tuple[Subtest, ...] = ()
    boot: str = ""  # cold or snapshot; empty when it did not boot
    retried: int = 0  # boots that crashed before this one
    os: str = ""  # the image's operating system
    job_url: str = ""  # the lab's page of the run
    journal: Path | None = None  # the kept journal file, if any
    journal_excerpt: str = ""  # what the test unit logged


NOTHING_FOUND = Found()  # of a run that did not boot


@attrs.frozen
class TestRecord:
    __test__ = False  # not a pytest class

    name: str
    run: str  # which `meson test` invocation this belongs to
    backend: str
    firmware: str  # resolved; empty when the test did not boot
    status: Status
    reason: str
    cause: str
    started: str  # ISO 8601, UTC
    duration_s: float
    log_dir: str
    subtests: tuple[Subtest, ...] = ()
    journal: str = ""  # the kept journal file, if any
    journal_excerpt: str = ""  # what the test unit logged
    rerun: tuple[str, ...] = ()  # commands that rerun it / read its journal
    boot: str = ""  # cold, or snapshot (resumed from the booted snapshot); empty when it did not boot
    retried: int = 0  # boots that crashed (the machine, not the guest) before this verdict
    os: str = ""  # the image's operating system (os-release PRETTY_NAME); empty when it did not boot
    job_url: str = ""  # the lab's page of this run (a LAVA job); empty when it ran elsewhere

    @property
    def exit_code(self) -> int:
        """meson's meaning of a test's exit status (exitcode protocol)."""
        return EXIT_CODES[self.status]

    def cases(self) -> list[Case]:
        cases = [Case(f"{self.name}/{s.name}", s.status, s.detail, s.duration_ms) for s in self.subtests]
        if not cases:
            return [
                Case(
                    self.name,
                    self.status,
                    "" if self.status == Status.PASS else self.reason,
                    int(self.duration_s * 1000),
                )
            ]
        explained = self.cause == "exit-status" and any(s.status == Status.FAIL for s in self.subtests)
        if self.status == Status.ERROR or (self.status == Status.FAIL and not explained):
            cases.append(Case(self.name, self.status, self.reason))
        elif self.status == Status.SKIP:  # the payload skipped itself after its subtests
            cases.append(Case(self.name, Status.SKIP, self.reason))
        return cases

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TestRecord:
        data = json.loads(text)
        data["status"] = Status(data["status"])
        data["subtests"] = tuple(
            Subtest(**dict(s, status=Status(s["status"]))) for s in data.get("subtests", ())
        )
        data["rerun"] = tuple(data.get("rerun", ()))
        return cls(**data)

    def write(self) -> Path:
        path = Path(self.log_dir) / RESULT_FILE
        partial = path.with_suffix(".partial")
        try:
            partial.write_text(self.to_json())
            partial.replace(path)
        except OSError:
            partial.unlink(missing_ok=True)  # half a file would be read as a record
            raise
        return path
