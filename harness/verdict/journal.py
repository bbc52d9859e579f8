"""Keeping the guest's journal: always sent out by the guest, kept when it is wanted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.settings import SaveJournal

# The message systemd-coredump logs for every core dump (its catalog entry).
COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"

CONVERTERS = (
    "systemd-journal-remote",
    "/usr/lib/systemd/systemd-journal-remote",
    "/lib/systemd/systemd-journal-remote",
)


def wanted(policy: SaveJournal, status: str) -> bool:
    """HARNESS_SAVE_JOURNAL: 'fail' (default) keeps it for failures and errors, '1' for
    every run, '0' for none."""
    if policy is SaveJournal.ALWAYS:
        return True
    if policy is SaveJournal.NEVER:
        return False
    return status in ("fail", "error")


def keep_journal(export: Path, policy: SaveJournal, status: str) -> Path | None:
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


def read_export(data: bytes) -> list[dict[str, str]]:
    """The entries of a journal export stream (systemd's Journal Export Format): text
    fields as KEY=VALUE lines, binary ones as KEY, a little-endian 64-bit size and the
    bytes; a blank line ends an entry."""
    entries: list[dict[str, str]] = []
    entry: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        if not line:
            if entry:
                entries.append(entry)
            entry, pos = {}, nl + 1
            continue
        key, sep, value = line.partition(b"=")
        if sep:
            entry[key.decode(errors="replace")] = value.decode(errors="replace")
            pos = nl + 1
        else:  # binary field
            size = int.from_bytes(data[nl + 1 : nl + 9], "little")
            entry[line.decode(errors="replace")] = data[nl + 9 : nl + 9 + size].decode(errors="replace")
            pos = nl + 9 + size + 1
    if entry:
        entries.append(entry)
    return entries


def unit_excerpt(export: Path, unit: str, limit: int = 400) -> str:
    """What the test unit logged and what PID 1 logged about it, as `journalctl -u` shows
    it, with the kernel's time since boot; the last `limit` lines."""
    try:
        entries = read_export(export.read_bytes())
    except OSError:
        return ""
    lines = []
    for e in entries:
        if unit not in (e.get("_SYSTEMD_UNIT"), e.get("UNIT"), e.get("OBJECT_SYSTEMD_UNIT")):
            continue
        stamp = int(e.get("__MONOTONIC_TIMESTAMP", "0") or 0) / 1e6
        who = e.get("SYSLOG_IDENTIFIER") or e.get("_COMM") or "?"
        lines.append(f"[{stamp:10.6f}] {who}: {e.get('MESSAGE', '')}")
    return "\n".join(lines[-limit:])
