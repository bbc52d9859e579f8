"""The lines a person reads after a run of one test: verdict, subtests, and on failure
where to look and how to rerun. The wrapper prints them under meson's TAP points."""

from __future__ import annotations

from pathlib import Path

from harness.verdict.record import TestRecord


def describe(record: TestRecord) -> str:
    """The lines a person reads after a run: verdict, subtests, and on failure where to
    look and how to rerun."""
    how = {"snapshot": "resumed from the booted snapshot", "cold": "cold boot"}.get(record.boot, "")
    if how and record.retried:
        how += (
            f", booted again after {record.retried} crash{'es' if record.retried > 1 else ''} of the machine"
        )
    took = f" ({record.duration_s:.1f} s, {how})" if how else ""
    lines = [f"{record.name}: {record.status.upper()}: {record.reason}{took}"]
    if record.job_url:
        lines.append(f"  job:         {record.job_url}")
    for s in record.subtests:
        lines.append(f"  {s.status.upper():4} {s.name}" + (f": {s.detail}" if s.detail else ""))
    if record.status.is_failure():
        console = Path(record.log_dir) / "console.log"
        if console.exists():
            lines.append(f"  console log: {console}")
        labels = ("rerun:      ", "journal:    ")
        lines += [
            f"  {label} {command}" for label, command in zip(labels, record.rerun, strict=False)
        ]  # a rerun, and a journal when kept
    return "\n".join(lines)
