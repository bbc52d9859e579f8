"""Extra trees: directories a test ships into its guest without an image rebuild (the
declaration's `extra-trees`, in mkosi's `ExtraTrees=` spelling: `SOURCE[:TARGET]`).

They travel as one credential, `harness.trees`: a gzip'd tar of every tree, made when the
declaration is read (at `meson setup`, and again when the test runs), which the test unit
unpacks over the guest's root before the test starts. A credential reaches the guest on
every path (SMBIOS or fw_cfg on a VM, the fast path's agent, a board's credstore), so the
trees do too. They are the test's own files, as public as its meson.build: never masked.
systemd imports at most 1 MiB of credentials in all, hence the bound on the packed trees.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from harness.declaration.credential import Credential
from harness.errors import DeclarationError

TREES_CREDENTIAL = "harness.trees"
TREES_LIMIT = 256 * 1024  # bytes, packed
TREE_FILE_LIMIT = 4 * 1024 * 1024  # bytes, one file unpacked

Bad = Callable[[str, str, str], DeclarationError]


@attrs.frozen
class ExtraTree:
    source: Path  # a directory on the host
    target: str  # where its content goes in the guest: an absolute, normal path

    @classmethod
    def parse(cls, spec: str, test_dir: Path, bad: Bad) -> ExtraTree:
        """`SOURCE` (copied over the guest's /) or `SOURCE:TARGET`; SOURCE relative to the
        test's directory or absolute."""
        source, _, target = spec.partition(":")
        target = target or "/"
        if not source:
            raise bad("extra-trees", f"'{spec[:80]}' names no directory", "write 'DIR' or 'DIR:/guest/path'")
        if target != "/" and (not target.startswith("/") or posixpath.normpath(target) != target.rstrip("/")):
            raise bad(
                "extra-trees",
                f"'{target[:80]}' is not an absolute, normal guest path",
                "write the target as '/usr/lib/something' (no '..', no '//')",
            )
        path = test_dir / source
        try:
            is_dir = path.is_dir()
        except (OSError, ValueError) as e:  # a name too long, a NUL byte
            raise bad(
                "extra-trees",
                f"'{str(path)[:120]}' cannot be looked at: {getattr(e, 'strerror', None) or e}",
                "name a directory of the test's (or an absolute one)",
            ) from None
        if not is_dir:
            raise bad("extra-trees", f"{path} is not a directory", "create it, or fix the name")
        return cls(path, target.rstrip("/") or "/")


def declared_trees(specs: Iterable[str], test_dir: Path, host_driven: bool, bad: Bad) -> Credential | None:
    """The credential of the trees a declaration names (None: it names none)."""
    specs = tuple(specs)
    if specs and host_driven:
        raise bad(
            "extra-trees",
            "a host-driven test has no test unit to unpack them",
            "copy files in from the test with machine.put()",
        )
    return pack((ExtraTree.parse(spec, test_dir, bad) for spec in specs), bad)


def pack(trees: Iterable[ExtraTree], bad: Bad) -> Credential | None:
    """The `harness.trees` credential of `trees`, or None when there are none."""
    trees = tuple(trees)
    if not trees:
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for tree in trees:
            for path, arcname in _walk(tree):
                tar.addfile(*_member(path, arcname, bad))
    data = buffer.getvalue()
    if len(data) > TREES_LIMIT:
        raise bad(
            "extra-trees",
            f"the trees pack to {len(data)} bytes, more than {TREES_LIMIT}",
            "ship less (systemd takes at most 1 MiB of credentials), or put the rest in the image",
        )
    return Credential(TREES_CREDENTIAL, data, own_file=True)


def _walk(tree: ExtraTree) -> Iterable[tuple[Path, str]]:
    """Every entry below the tree's source, sorted, with its name in the guest (relative
    to /, as tar stores it)."""
    base = tree.target.strip("/")
    for directory, dirs, files in os.walk(tree.source):
        dirs.sort()
        relative = Path(directory).relative_to(tree.source)
        for name in sorted(dirs) + sorted(files):
            yield Path(directory) / name, posixpath.join(base, str(relative / name))


def _member(path: Path, arcname: str, bad: Bad) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(arcname)
    st = path.lstat()
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        return info, None
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
        return info, None
    if not stat.S_ISREG(st.st_mode) or st.st_size > TREE_FILE_LIMIT:
        raise bad(
            "extra-trees",
            f"{path} is not a regular file of at most {TREE_FILE_LIMIT} bytes",
            "ship regular files, directories and symlinks only",
        )
    data = path.read_bytes()
    info.size = len(data)
    return info, io.BytesIO(data)
