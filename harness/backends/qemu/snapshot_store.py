"""Where booted snapshots live and how parallel `meson test` processes share them: each
is named by its machine's shape (firmware and storage: one snapshot per shape lives side
by side) and a key of what it was made from, made once under an exclusive file lock, used
under a shared one, and removed, once nobody holds it, when a snapshot of the same shape
and a newer key is made. What a snapshot holds and how it is made and resumed is snapshot.py's.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from harness.boot.store import SHAPE, MakeFailed, shared_directory

HARNESS_DIR = Path(__file__).resolve().parents[2]  # the package: its code is part of the key


class SnapshotUnavailable(MakeFailed):
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
    yet; held until the context ends (harness.boot.store). A snapshot whose boot failed
    is not tried again in the same `meson test` run: its other tests boot cold at once."""
    with contextlib.ExitStack() as stack:
        try:
            made = stack.enter_context(shared_directory(root, key, run, make, lambda d: Snapshot(d).complete))
        except MakeFailed as e:
            raise SnapshotUnavailable(str(e)) from None
        yield Snapshot(made)
