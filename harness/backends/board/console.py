"""A board's serial console as the host receives it, in pieces: from a worker's serial
log (autokit) or a lab's job log (LAVA). console.log keeps it up to the console limit;
the guest's report lines (marked HARNESS_NOTIFY) are read from all that is kept.
"""

from __future__ import annotations

from pathlib import Path

from harness.guest.reporting import CONSOLE_CHANNEL
from harness.verdict.notify import GuestReport, console_notify_lines


class BoardConsole:
    def __init__(self, log: Path, limit: int) -> None:
        self.log = log
        self.limit = limit
        self.kept = b""  # what console.log holds
        self.written = 0  # bytes the board printed, those past the limit included
        self.report = GuestReport()
        log.write_bytes(b"")

    def add(self, new: bytes) -> None:
        self.written += len(new)
        kept = new[: max(0, self.limit - len(self.kept))]
        if not kept:
            return
        self.kept += kept
        with self.log.open("ab") as f:
            f.write(kept)
        # The whole console again: a line of ours the kernel cut may end in this piece.
        self.report = GuestReport()
        self.report.add(console_notify_lines(self.kept, CONSOLE_CHANNEL.prefix.encode()))
