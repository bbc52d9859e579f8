"""Directories made once and shared by the tests of parallel `meson test` processes: a
booted VM's snapshot, a container's root tree. Each is named by a key, `SHAPE-DIGEST`:
the shape says what kind of thing it is (one of each shape lives side by side), the
digest what it was made from. One is made under an exclusive file lock, in a partial
directory renamed into place when whole, used under a shared lock, and removed once
nobody holds it when a directory of the same shape and a newer key is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

SHAPE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class MakeFailed(Exception):
    """The directory could not be made (a boot failed): not tried again in the same run."""


def key_shape(key: str) -> str:
    """The shape a key names: what precedes its digest."""
    return key.rpartition("-")[0]


@contextlib.contextmanager
def shared_directory(
    root: Path, key: str, run: str, make: Callable[[Path], None], complete: Callable[[Path], bool]
) -> Iterator[Path]:
    """The directory named `key` under `root`, made by `make(directory)` unless
    `complete(it)` already; held (shared lock) until the context ends, so nobody removes
    it while in use.

    One whose making failed (MakeFailed) is not tried again in the same `run` (a `meson
    test` run): the other tests of that run go without at once."""
    root.mkdir(parents=True, exist_ok=True)
    made = root / key
    with open(root / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not complete(made):
            fcntl.flock(lock, fcntl.LOCK_EX)  # not atomic: someone else may make it meanwhile
            if not complete(made):
                _make(root, key, run, make)
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield made


def _make(root: Path, key: str, run: str, make: Callable[[Path], None]) -> None:
    failed = root / f"{key}.failed"
    if failed.is_file():
        last_run, _, reason = failed.read_text().partition("\n")
        if last_run == run:
            raise MakeFailed(reason)
    for leftover in root.glob(f".partial-{key}-*"):  # from a maker that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    partial = root / f".partial-{key}-{os.getpid()}"
    partial.mkdir()
    try:
        make(partial)
    except MakeFailed as e:
        console = root / f"{key}.console.log"
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(partial / "console.log", console)
        reason = f"{e}; its console log: {console}"
        failed.write_text(f"{run}\n{reason}")
        shutil.rmtree(partial, ignore_errors=True)
        raise MakeFailed(reason) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(root / key, ignore_errors=True)  # an incomplete one, from an older harness
    partial.rename(root / key)
    failed.unlink(missing_ok=True)
    (root / f"{key}.console.log").unlink(missing_ok=True)  # of an earlier run's failed boot
    remove_stale(root, keep=key)


def remove_stale(root: Path, keep: str) -> list[str]:
    """Remove the directories of `keep`'s shape and other keys that nobody holds (those of
    other shapes are other machines' and stay); returns the keys removed."""
    removed = []
    for lock_path in root.glob("*.lock"):
        key = lock_path.name[: -len(".lock")]
        if key == keep or key_shape(key) != key_shape(keep):
            continue
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by a test right now; the next maker removes it
            shutil.rmtree(root / key, ignore_errors=True)
            for leftover in root.glob(f".partial-{key}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for suffix in (".failed", ".console.log"):
                (root / f"{key}{suffix}").unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            removed.append(key)
    return removed
