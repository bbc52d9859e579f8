"""Where booted snapshots live and how parallel `meson test` processes share them: each
is named by its machine's shape (firmware and storage: one snapshot per shape lives side
by side) and a key of what it was made from, made once under an exclusive file lock, used
under a shared one, and removed, once nobody holds it, when a snapshot of the same shape
and a newer key is made. What a snapshot holds and how it is made and resumed is snapshot.py's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

HARNESS_DIR = Path(__file__).resolve().parents[2]  # the package: its code is part of the key
SHAPE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


class SnapshotUnavailable(Exception):
    """The snapshot could not be made (its boot failed): tests boot cold instead."""


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def snapshot_key(shape: str, inputs: list[str], files: list[Path]) -> str:
    """A name for the snapshot: its `shape` (firmware-storage), then a digest that changes
    whenever what it was made from changes: the image and its kernel and initrd (by
    identity: a rebuild makes new files), QEMU, the harness's own code, and the words in
    `inputs` (acceleration, CPU model, state format)."""
    if not SHAPE.fullmatch(shape):
        raise ValueError(f"a snapshot's shape is lowercase words joined by '-': {shape!r}")
    h = hashlib.sha256()
    for word in inputs:
        h.update(word.encode() + b"\0")
    for path in files:
        h.update(_file_identity(path).encode() + b"\0")
    for path in sorted(HARNESS_DIR.rglob("*")):
        if path.suffix in (".py", ".sh") and path.is_file():
            h.update(path.relative_to(HARNESS_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{shape}-{h.hexdigest()[:16]}"


def key_shape(key: str) -> str:
    """The shape a key names: what precedes its digest."""
    return key.rpartition("-")[0]


@attrs.frozen
class Snapshot:
    """A saved booted VM: its memory and device state, and the disk overlay it wrote."""

    dir: Path

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def nvram(self) -> Path:
        """A UEFI machine's variable store as the saved VM left it (none for `linux`)."""
        return self.dir / "vars.fd"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def timeline(self) -> Path:
        """The boot's timeline as the agent saw it (systemctl show text), if it sent one."""
        return self.dir / "timeline.txt"

    @property
    def complete(self) -> bool:
        return self.state.is_file() and self.disk.is_file()

    @property
    def machine_id(self) -> str:
        """The machine ID its boot was given: a test resumed from it keeps that ID when it
        reboots, as a cold boot keeps its own."""
        return snapshot_machine_id(self.dir.name)


def snapshot_machine_id(key: str) -> str:
    """The machine ID of the snapshot named `key` (made in a directory of another name)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@contextlib.contextmanager
def shared_snapshot(root: Path, key: str, run: str, make: Callable[[Path], None]) -> Iterator[Snapshot]:
    """The snapshot named `key` under `root`, made by `make(directory)` if nobody has made it
    yet; held (shared lock) until the context ends, so nobody removes it while in use.

    A snapshot whose boot failed is not tried again in the same `run` (a `meson test`
    run): the other tests of that run boot cold at once."""
    root.mkdir(parents=True, exist_ok=True)
    snapshot = Snapshot(root / key)
    with open(root / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not snapshot.complete:
            fcntl.flock(lock, fcntl.LOCK_EX)  # not atomic: someone else may make it meanwhile
            if not snapshot.complete:
                _make(root, key, run, make, snapshot)
            fcntl.flock(lock, fcntl.LOCK_SH)
        yield snapshot


def _make(root: Path, key: str, run: str, make: Callable[[Path], None], snapshot: Snapshot) -> None:
    failed = root / f"{key}.failed"
    if failed.is_file():
        last_run, _, reason = failed.read_text().partition("\n")
        if last_run == run:
            raise SnapshotUnavailable(reason)
    for leftover in root.glob(f".partial-{key}-*"):  # from a maker that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    partial = root / f".partial-{key}-{os.getpid()}"
    partial.mkdir()
    try:
        make(partial)
    except SnapshotUnavailable as e:
        console = root / f"{key}.console.log"
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(partial / "console.log", console)
        reason = f"{e}; its console log: {console}"
        failed.write_text(f"{run}\n{reason}")
        shutil.rmtree(partial, ignore_errors=True)
        raise SnapshotUnavailable(reason) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(snapshot.dir)
    failed.unlink(missing_ok=True)
    (root / f"{key}.console.log").unlink(missing_ok=True)  # of an earlier run's failed boot
    remove_stale(root, keep=key)


def remove_stale(root: Path, keep: str) -> list[str]:
    """Remove the snapshots of `keep`'s shape and other keys that nobody holds (those of
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
