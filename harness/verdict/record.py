"""What one run of one test produced, and the cases it counts as.

A TestRecord is written as result.json into the test's log directory; the TAP output,
the suite's JSON summary and the HTML report are all drawn from records through
`cases()`, so the three always count the same things: one case per subtest, or one for
the test when it has none, plus one for a failure that belongs to no subtest. What a run
found besides its verdict reaches the record as one typed value, `Found`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import attrs

from harness.verdict.results import EXIT_CODES, Status
from harness.verdict.subtests import Subtest

RESULT_FILE = "result.json"
# A case's status as the suite's JSON summary (and a comparison of runs) spells it.
SUMMARY_STATUS = {"pass": "passed", "fail": "failed", "skip": "skipped", "error": "error"}
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
    # A digest of what the run was made of (the image's files, the declaration, the test's
    # directory): two runs of the same inputs with different verdicts show a flake.
    inputs: str = ""
    timeout_s: float | None = None  # the declared timeout times the factor; None: none, or no boot
    timeout_factor: float | None = None  # what it was multiplied by here (TCG, a busy host)
    timeout_why: str = ""  # how that factor came about

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


INPUTS_FILE_LIMIT = 16 * 2**20  # bytes of a test's file that count; past it, its size and time


def run_inputs(files: Iterable[Path | None], declared: str, test_dir: Path) -> str:
    """The `inputs` digest of a run: the identity of the image's `files` (a rebuild makes
    new ones), the declaration as read (`declared`), and the content of the test's
    directory (its payload, its data, its host test)."""
    h = hashlib.sha256(declared.encode())
    for path in files:
        if path is not None:
            with_stat = path.stat()
            h.update(f"{path}:{with_stat.st_size}:{with_stat.st_mtime_ns}:{with_stat.st_ino}\0".encode())
    for directory, dirs, names in os.walk(test_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            path = Path(directory) / name
            try:
                st = path.stat()
                if not stat.S_ISREG(st.st_mode):
                    continue  # a FIFO, a device: not part of what the test is
                content = (
                    path.read_bytes() if st.st_size <= INPUTS_FILE_LIMIT else f"{st.st_size}:{st.st_mtime_ns}"
                )
            except OSError:
                continue  # a dangling link, a file gone meanwhile
            h.update(str(path.relative_to(test_dir)).encode() + b"\0")
            h.update(content if isinstance(content, bytes) else content.encode())
    return h.hexdigest()[:16]
