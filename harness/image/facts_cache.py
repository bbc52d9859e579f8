"""Facts read from a big file (an initrd, a disk image), kept beside it in a hidden JSON
file for as long as the file stays the same: reading them costs a decompression or a
debugfs run, in every test, and the file changes only when it is rebuilt, which makes a
new file (another size, times or inode). Where the hidden file cannot be written, the
facts are simply read every time."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def cache_file(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.harness-{what}.json")


def identity(path: Path, *more: object) -> list[Any]:
    """What changes when the file is rebuilt or recopied, and `more` (what was asked)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, *more]


def recall(cache: Path, ident: list[Any]) -> dict[str, Any] | None:
    """The facts kept in `cache` for `ident`; None when there are none for it."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(cache.read_text())
        if known["identity"] == ident:
            facts: dict[str, Any] = known["facts"]
            return facts
    return None


def keep(cache: Path, ident: list[Any], facts: dict[str, Any]) -> None:
    """Write the facts whole or not at all; a failure is not an error."""
    partial = cache.with_name(f"{cache.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        partial.write_text(json.dumps({"identity": ident, "facts": facts}))
        os.replace(partial, cache)
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)
