"""The image's root, read-only on a private directory for one container, and gone again.

`systemd-nspawn --image=` needs udev to find a disk's partitions; this does without: the
partition the image's table names (harness.image) is attached as a read-only loop device
at its offset and mounted read-only. The first container of an image copies that root
into a tree kept beside the booted snapshots (one per image, replaced when the image
is rebuilt); every container then binds the tree read-only: a new loop device per test
started with nothing cached and read the whole boot's files through it again, a quarter
of a container test's CPU (docs/performance.md). The image is never written; on
leaving, the mount and the loop device are gone, whatever happened inside. A wrapper
killed outright (SIGKILL runs no clean-up) leaves them: the next run sweeps them
(`sweep_orphans`), as the qemu backend sweeps its private directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.boot.store import shared_directory
from harness.deadline import Deadline
from harness.errors import HarnessError
from harness.image.disk import DiskFormat
from harness.image.facts_cache import identity
from harness.image.parts import Image
from harness.process import process_alive

TOOL_TIMEOUT = 60  # s
COPY_TIMEOUT = 900  # s to copy a root of some GB
TREE = "root"
TREE_SHAPE = "container-root"  # its key in the store: harness.boot.store
DETACH_WAIT = 5.0  # s
log = logging.getLogger(__name__)


LOOP_FIX = "the nspawn backend runs as root, with loop devices (modprobe loop); or use the qemu backend"


def run(cmd: list[str], what: str, fix: str = LOOP_FIX, timeout: float = TOOL_TIMEOUT) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"could not {what}: {e}", "check that util-linux is installed") from None
    if done.returncode != 0:
        raise HarnessError(
            f"could not {what}: {done.stderr.strip() or f'{cmd[0]} exited with {done.returncode}'}", fix
        )
    return done.stdout.strip()


def check_image(image: Image) -> None:
    """A raw disk whose root partition is known: what a container can boot."""
    if image.disk_format != DiskFormat.RAW:
        raise HarnessError(
            f"{image.path} is a {image.disk_format} disk: the nspawn backend mounts raw disks only",
            "use the qemu backend (--backend=qemu), or give the raw disk (qemu-img convert -O raw)",
        )
    if image.root_partition is None:
        raise HarnessError(
            f"the root partition of {image.path} is not known: a container needs it",
            "give it with -Droot=PARTUUID=... (one of the disk's partitions), or use the qemu backend",
        )
    if os.geteuid() != 0:
        raise HarnessError("the nspawn backend mounts the image's root: it runs as root", "run it as root")


@contextlib.contextmanager
def mounted_root(image: Image, where: Path, store: Path | None = None, run_id: str = "") -> Iterator[Path]:
    """The image's root read-only on `where` (made here, empty): the root tree kept in
    `store` for this image bound there (made on first use), or, without a store, the
    root partition itself mounted there."""
    check_image(image)
    where.mkdir(mode=0o700)
    if store is None:
        with loop_mounted(image, where):
            yield where
        return

    def make(partial: Path) -> None:
        log.info(
            f"copying the root of {image.path.name} to {partial.parent / tree_key(image)}, once:"
            " the containers of this image boot from that copy"
        )
        with loop_mounted(image, where):  # on the private directory: swept if killed
            run(
                ["cp", "-a", str(where), str(partial / TREE)], f"copy the root of {image.path} into {partial}"
            )

    with shared_directory(store, tree_key(image), run_id, make, lambda made: (made / TREE).is_dir()) as made:
        run(["mount", "--bind", "-o", "ro", str(made / TREE), str(where)], f"bind {made / TREE} on {where}")
        try:
            yield where
        finally:
            unmount(where)


def tree_key(image: Image) -> str:
    """The root tree's name in the store: its shape, then a digest of the image file's
    identity and the partition's place (a rebuilt image is a new file)."""
    partition = image.root_partition
    assert partition is not None  # check_image
    ident = [*identity(image.path), partition.offset, partition.size]
    return f"{TREE_SHAPE}-{hashlib.sha256(repr(ident).encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def loop_mounted(image: Image, where: Path) -> Iterator[None]:
    """The image's root partition on a read-only loop device, mounted read-only on `where`."""
    partition = image.root_partition
    assert partition is not None  # check_image
    loop = run(
        [
            "losetup", "--find", "--show", "--read-only",
            f"--offset={partition.offset}", f"--sizelimit={partition.size}", str(image.path),
        ],
        f"attach the root partition of {image.path} to a loop device",
    )  # fmt: skip
    try:
        run(["mount", "-o", "ro", loop, str(where)], f"mount {loop} (the root partition of {image.path})")
        try:
            yield
        finally:
            unmount(where)
    finally:
        detach(loop)


def detach(loop: str) -> None:
    """Detach `loop`. A container that ended a moment ago may still hold it (its mount
    namespace goes after its processes): the kernel then detaches it once let go, which is
    waited for a little, so that no run leaves one behind."""
    subprocess.run(["losetup", "--detach", loop], capture_output=True, timeout=TOOL_TIMEOUT)
    bound = Path("/sys/block") / Path(loop).name / "loop"
    if not Deadline.after(DETACH_WAIT).wait_for(lambda: not bound.exists(), 0.02):
        log.warning(f"{loop} is still attached {DETACH_WAIT:.0f} s after the container ended")


def unmount(where: Path) -> None:
    """Unmount `where`; lazily when something still holds it (a container going down)."""
    done = subprocess.run(["umount", str(where)], capture_output=True, timeout=TOOL_TIMEOUT)
    if done.returncode != 0:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True, timeout=TOOL_TIMEOUT)


PREFIX = "harness-nspawn-"
# The private directory of one run: the wrapper's PID tells a later run whose it is.
ORPHAN = re.compile(rf"^{PREFIX}.*-p(\d+)-[a-z0-9_]+$")


@contextlib.contextmanager
def private_tmp(name: str) -> Iterator[Path]:
    """A directory only the user can read, for one container (its root's mount point,
    credentials, console), gone afterwards; litter of killed wrappers swept first."""
    tmp = Path(tempfile.gettempdir())
    sweep_orphans(tmp)
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{name}-p{os.getpid()}-", dir=tmp) as directory:
        os.chmod(directory, 0o700)
        yield Path(directory)


def mounts() -> list[tuple[Path, str]]:
    """This mount namespace's mount points and their sources (/proc/self/mountinfo)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            point = fields.split()[4].encode().decode("unicode_escape")  # \040 for a space
            found.append((Path(point), rest.split()[1] if len(rest.split()) > 1 else ""))
    return found


def sweep_orphans(tmp: Path) -> None:
    """Unmount, detach and remove what runs killed outright left in `tmp`."""
    dead = {
        d
        for d in tmp.glob(f"{PREFIX}*")
        if (m := ORPHAN.match(d.name)) and not process_alive(int(m.group(1)))
    }
    for point, source in mounts():
        if point.parent in dead:
            log.info(f"unmounting {point}, left by a run that was killed")
            unmount(point)
            if source.startswith("/dev/loop"):
                detach(source)
    for directory in dead:
        shutil.rmtree(directory, ignore_errors=True)
