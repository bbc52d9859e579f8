"""Reading a file a person named (a token, a credential, a declaration): a regular file of
bounded size, opened without blocking, so that a FIFO cannot hang a run and /dev/zero
cannot fill its memory. One reader; each caller words its own error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFile(Exception):
    """A FIFO, a device or a socket where a file was named."""


def read_small_file(path: str | Path, limit: int) -> bytes | None:
    """The bytes of `path`, or None when it holds more than `limit`. OSError when it
    cannot be opened or read (a directory: "Is a directory"), NotRegularFile when it is
    not a regular file."""
    # O_NONBLOCK: opening a FIFO would wait for a writer.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NotRegularFile(str(path))
        data = f.read(limit + 1)
    return data if len(data) <= limit else None
