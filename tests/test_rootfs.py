"""The root filesystem's facts, read from the disk file without mounting it: small trees
made into ext4 filesystems (mke2fs -d) at an offset inside a bigger sparse disk file."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import harness.image.debugfs
import harness.image.rootfs
from harness.errors import HarnessError
from harness.image.rootfs import GUEST_TOOLS, RootFacts, known_root_facts, root_facts

MIB = 1 << 20
OFFSET = MIB  # where the filesystem starts in the disk, as after a GPT
FS_SIZE = 16 * MIB
FS_UUID = "6f0b1c2a-8d3e-4f47-9a15-2c6e0b7d4f82"
BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nID=debian\n'
ABSENT = ("stty", "timeout")  # tools the trees below leave out


def build(root: Path, files: dict[str, str] | None = None, links: dict[str, str] | None = None, exe=()):
    """A tree: `files` (path: content), `links` (path: target), `exe` empty executables."""
    root.mkdir(parents=True, exist_ok=True)
    for path, content in (files or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    for path in exe:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("")
        (root / path).chmod(0o755)
    for path, target in (links or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / path)
    return root


def usrmerge(root: Path, **extra: dict[str, str]) -> Path:
    """Debian bookworm's layout: /lib, /bin, /sbin are symlinks into /usr; systemd 252 in
    the multiarch directory; the harness's generator; the guest tools less ABSENT, sh a
    symlink to dash as Debian's."""
    tools = [f"usr/bin/{t}" for t in GUEST_TOOLS if t not in (*ABSENT, "sh")]
    build(
        root,
        files={"usr/lib/os-release": BOOKWORM, **extra.get("files", {})},
        links={
            "lib": "usr/lib",
            "bin": "usr/bin",
            "sbin": "usr/sbin",
            "usr/sbin/init": "/lib/systemd/systemd",
            "etc/os-release": "../usr/lib/os-release",
            "usr/bin/sh": "dash",
            **extra.get("links", {}),
        },
        exe=(
            "usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so",
            "usr/lib/systemd/systemd",
            "usr/lib/systemd/systemd-udevd",
            "usr/lib/systemd/system-generators/harness-credential-units",
            "usr/bin/dash",
            *tools,
        ),
    )
    return root


def disk(tmp_path: Path, tree: Path, name: str = "disk.raw", label: str = "root") -> Path:
    """A sparse disk file with `tree` as an ext4 filesystem at OFFSET."""
    path = tmp_path / name
    with path.open("wb") as f:
        f.truncate(OFFSET + FS_SIZE + MIB)
    options = ["-q", "-t", "ext4", "-d", str(tree), "-L", label, "-U", FS_UUID, "-E", f"offset={OFFSET}"]
    subprocess.run(["mke2fs", *options, path, str(FS_SIZE // 1024)], check=True)
    return path


def facts_of(tmp_path: Path, tree: Path) -> RootFacts:
    return root_facts(disk(tmp_path, tree), OFFSET, FS_SIZE)


def test_a_debian_bookworm_root(tmp_path):
    facts = facts_of(tmp_path, usrmerge(tmp_path / "tree"))
    assert facts == RootFacts(
        filesystem="ext4",
        label="root",
        fs_uuid=FS_UUID,
        readable=True,
        systemd_version=252,
        os_name="Debian GNU/Linux 12 (bookworm)",
        init="/lib/systemd/systemd",
        has_generator=True,
        has_udev=True,
        missing_tools=ABSENT,
    )


def test_systemd_257_in_usr_lib_systemd_and_a_relative_init(tmp_path):
    # As trixie and Fedora: /usr/sbin/init -> ../lib/systemd/systemd, whose directory is
    # /usr/sbin (not /sbin, the symlink it was found through). os-release in /etc only;
    # the generator in /etc.
    tree = build(
        tmp_path / "tree",
        files={"etc/os-release": 'NAME="Fedora Linux"\n'},
        links={"lib": "usr/lib", "sbin": "usr/sbin", "usr/sbin/init": "../lib/systemd/systemd"},
        exe=(
            "usr/lib/systemd/libsystemd-shared-257.so",
            "usr/lib/systemd/systemd",
            "etc/systemd/system-generators/harness-credential-units",
            "usr/bin/bash",
        ),
    )
    facts = facts_of(tmp_path, tree)
    assert (facts.systemd_version, facts.init, facts.os_name) == (
        257,
        "/usr/lib/systemd/systemd",
        "Fedora Linux",
    )
    assert facts.has_generator and not facts.has_udev
    assert "bash" not in facts.missing_tools and "sh" in facts.missing_tools


def test_a_root_without_systemd(tmp_path):
    tree = build(tmp_path / "tree", files={"usr/lib/os-release": 'PRETTY_NAME="Tiny"\n'}, exe=("usr/bin/sh",))
    facts = facts_of(tmp_path, tree)
    assert facts.readable and facts.os_name == "Tiny"
    assert (facts.systemd_version, facts.init, facts.has_generator, facts.has_udev) == (
        None,
        "",
        False,
        False,
    )
    assert facts.missing_tools == GUEST_TOOLS[1:]  # all but sh


def test_an_init_that_points_nowhere_is_no_init(tmp_path):
    tree = usrmerge(tmp_path / "tree", links={"usr/sbin/init": "/lib/systemd/gone"})
    assert facts_of(tmp_path, tree).init == ""


def test_init_through_a_long_symlink_and_outside_the_listed_directories(tmp_path):
    # A target of 60 bytes or more is a slow symlink, whose target debugfs's stat does not
    # show; /opt was not listed by the first debugfs run.
    far = "opt/" + "a" * 70 + "/init"
    tree = usrmerge(tmp_path / "tree", files={far: ""}, links={"usr/sbin/init": f"/{far}"})
    assert facts_of(tmp_path, tree).init == f"/{far}"


def test_init_as_a_file_of_its_own(tmp_path):
    tree = build(tmp_path / "tree", exe=("sbin/init", "bin/sh"))
    facts = facts_of(tmp_path, tree)
    assert facts.init == "/sbin/init"
    assert "sh" not in facts.missing_tools  # /bin is a directory of its own here


def test_a_root_without_merged_usr(tmp_path):
    # /bin and /sbin directories of their own (Debian before usrmerge), systemd in /lib.
    tree = build(
        tmp_path / "tree",
        links={"sbin/init": "/lib/systemd/systemd", "bin/sh": "dash"},
        exe=("lib/systemd/systemd", "lib/systemd/systemd-udevd", "bin/dash", "sbin/install", "usr/bin/tar"),
    )
    facts = facts_of(tmp_path, tree)
    assert (facts.init, facts.has_udev) == ("/lib/systemd/systemd", True)
    assert not {"sh", "install", "tar"} & set(facts.missing_tools)


def test_a_tool_that_is_not_executable_is_missing(tmp_path):
    tree = usrmerge(tmp_path / "tree", files={"usr/bin/stty": "not a program\n"})
    assert "stty" in facts_of(tmp_path, tree).missing_tools


def test_systemd_in_a_multiarch_directory_the_first_run_does_not_list(tmp_path):
    tree = build(tmp_path / "tree", exe=("usr/lib/loongarch64-linux-gnu/systemd/libsystemd-shared-255.so",))
    assert facts_of(tmp_path, tree).systemd_version == 255


def test_a_label_with_blanks_and_quotes(tmp_path):
    path = disk(tmp_path, build(tmp_path / "tree"), label='my "root" $x')
    assert root_facts(path, OFFSET, FS_SIZE).label == 'my "root" $x'


def test_a_disk_whose_name_holds_a_question_mark(tmp_path):
    # e2fsprogs reads `FILE?offset=N`: the '?' of the name must not be taken for it.
    path = disk(tmp_path, usrmerge(tmp_path / "tree"), name="what?.raw")
    assert root_facts(path, OFFSET, FS_SIZE).systemd_version == 252


def test_no_filesystem_at_the_offset(tmp_path):
    path = disk(tmp_path, build(tmp_path / "tree"))
    facts = root_facts(path, OFFSET + MIB, FS_SIZE - MIB)  # past the superblock
    assert (facts.filesystem, facts.readable) == ("", False)
    assert "found no filesystem at byte 2097152" in facts.reason


def test_a_filesystem_the_harness_does_not_read(tmp_path):
    # A squashfs superblock, which is all blkid reads.
    superblock = b"hsqs" + struct.pack("<IIIIHHHHHHQQ", 1, 0, 131072, 0, 1, 17, 0, 1, 4, 0, 0, 4096)
    path = tmp_path / "squash.raw"
    path.write_bytes(bytes(OFFSET) + superblock + bytes(MIB))
    facts = root_facts(path, OFFSET, MIB)
    assert (facts.filesystem, facts.readable, facts.missing_tools) == ("squashfs", False, ())
    assert facts.reason == (
        f"the filesystem at byte {OFFSET} of {path} is squashfs, which the harness cannot read"
        " without mounting it (it reads ext2, ext3 and ext4 only): its files were not checked"
    )


def test_an_ext4_debugfs_cannot_open(tmp_path):
    path = tmp_path / "future.raw"
    tree = str(build(tmp_path / "tree"))
    path.write_bytes(bytes(8 * MIB))
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-O", "^metadata_csum", "-d", tree, path, "8M"], check=True)
    with path.open("r+b") as f:  # an incompatible feature from the future
        f.seek(1024 + 0x60)
        (incompat,) = struct.unpack("<I", f.read(4))
        f.seek(1024 + 0x60)
        f.write(struct.pack("<I", incompat | 0x80000000))
    facts = root_facts(path, 0, 8 * MIB)
    assert (facts.filesystem, facts.readable) == ("ext4", False)
    assert facts.reason == (
        f"could not read the ext4 filesystem at byte 0 of {path}: Filesystem has unsupported feature(s)"
    )


def fake_tools(tmp_path: Path, monkeypatch, **scripts: str) -> None:
    """PATH holds blkid and the `scripts` (name: shell) only."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    os.symlink(
        subprocess.run(["sh", "-c", "command -v blkid"], capture_output=True, text=True).stdout.strip(),
        bin_dir / "blkid",
    )
    for name, script in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_without_debugfs(tmp_path, monkeypatch):
    path = disk(tmp_path, usrmerge(tmp_path / "tree"))
    fake_tools(tmp_path, monkeypatch)
    facts = known_root_facts(path, OFFSET, FS_SIZE)
    assert (facts.filesystem, facts.readable) == ("ext4", False)
    assert facts.reason.endswith("debugfs is not installed (apt-get install e2fsprogs)")
    assert not cache_of(path).exists()  # installing it gives the facts next time


def test_a_debugfs_that_hangs_is_given_up(tmp_path, monkeypatch):
    path = disk(tmp_path, usrmerge(tmp_path / "tree"))
    fake_tools(tmp_path, monkeypatch, debugfs=f"exec {shutil.which('sleep')} 10")
    monkeypatch.setattr(harness.image.debugfs, "TIMEOUT", 0.3)
    facts = root_facts(path, OFFSET, FS_SIZE)
    assert not facts.readable and facts.reason.endswith("debugfs did not finish within 0.3 s")


def test_a_missing_disk_is_an_error(tmp_path):
    with pytest.raises(HarnessError, match="no disk image at"):
        root_facts(tmp_path / "nothing.raw", OFFSET, FS_SIZE)


def cache_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.harness-root-facts.json")


def test_the_facts_are_kept_beside_the_disk_until_it_changes(tmp_path, monkeypatch):
    path = disk(tmp_path, usrmerge(tmp_path / "tree"))
    first = known_root_facts(path, OFFSET, FS_SIZE)
    assert cache_of(path).is_file() and first.systemd_version == 252
    read: list[tuple[object, ...]] = []

    def root_facts(*a: object) -> object:
        read.append(a)
        return first

    monkeypatch.setattr(harness.image.rootfs, "root_facts", root_facts)
    assert known_root_facts(path, OFFSET, FS_SIZE) == first and read == []
    with path.open("ab") as f:  # another disk: a byte longer (its times may not change as fast)
        f.write(b"\0")
    assert known_root_facts(path, OFFSET, FS_SIZE) == first and len(read) == 1
    known_root_facts(path, OFFSET + 4096, FS_SIZE)  # another area of the same disk
    assert len(read) == 2


def test_facts_are_read_every_time_where_they_cannot_be_kept(tmp_path):
    path = disk(tmp_path, usrmerge(tmp_path / "tree"))
    cache_of(path).mkdir()  # neither readable nor replaceable as a file
    assert known_root_facts(path, OFFSET, FS_SIZE).systemd_version == 252
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache_of(path).name, "disk.raw", "tree"]


def test_every_guest_tool_is_one_the_guest_side_runs():
    # Each name is a word of the guest's scripts or of the modules writing its commands,
    # so that the list follows them: a tool none of them runs any longer is dropped.
    root = Path(harness.image.rootfs.__file__).parent.parent
    sources = [
        *(root / "guest").iterdir(),
        root / "declaration" / "extra_tree.py",
        root / "host" / "driven_machine.py",
    ]
    sources.append(root / "backends" / "qemu" / "agent.py")
    text = "\n".join(p.read_text() for p in sources if p.is_file())
    assert [t for t in GUEST_TOOLS if not re.search(rf"(^|[\s;|&({{'\"/=]){t}\b", text, re.MULTILINE)] == []


def test_fedora_and_opensuse_keep_systemd_in_lib64_and_a_generator_in_lib_counts(tmp_path):
    tree = build(
        tmp_path / "tree",
        files={"usr/lib/os-release": 'PRETTY_NAME="Fedora Linux 40"\n'},
        links={"sbin": "usr/sbin", "usr/sbin/init": "../lib/systemd/systemd"},
        exe=(
            "usr/lib64/systemd/libsystemd-shared-255.13-1.fc40.so",
            "usr/lib/systemd/systemd",
            "lib/systemd/system-generators/harness-credential-units",
        ),
    )
    facts = root_facts(disk(tmp_path, tree), OFFSET, FS_SIZE)
    assert facts.systemd_version == 255 and facts.has_generator
