"""Keeping the guest's journal: always sent out by the guest, kept when it is wanted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CONVERTERS = ("systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote",
              "/lib/systemd/systemd-journal-remote")


def wanted(policy: str, status: str) -> bool:
    """HARNESS_SAVE_JOURNAL: 'fail' (default) keeps it for failures and errors,
    '1'/'always' for every run, '0'/'never' for none."""
    if policy in ("1", "always", "yes"):
        return True
    if policy in ("0", "never", "no"):
        return False
    return status in ("fail", "error")


def keep_journal(export: Path, policy: str, status: str) -> Path | None:
    """The journal file to point people at, or None (the export is then removed)."""
    if not export.is_file() or export.stat().st_size == 0 or not wanted(policy, status):
        export.unlink(missing_ok=True)
        return None
    converter = next((c for c in CONVERTERS if shutil.which(c)), None)
    if converter is None:
        return export  # journal export format: plain text, readable as it is
    journal = export.with_suffix(".journal")
    journal.unlink(missing_ok=True)
    result = subprocess.run([converter, f"--output={journal}", str(export)], capture_output=True)
    if result.returncode != 0 or not journal.is_file():
        return export
    export.unlink()
    return journal
