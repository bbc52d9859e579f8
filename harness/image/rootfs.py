"""What an image's root filesystem holds, read from the disk file without mounting it.

The harness tests images it did not build, and `check-image` says what one lacks before
anything boots: its systemd, its init, the harness's generator, the commands the guest
side runs. Mounting would need a loop device and root, and a crash would leave both
behind; so the disk file is only read. blkid probes the filesystem at the partition's
offset, and for ext2/3/4 one read-only debugfs process lists the few directories and reads
the few files the facts come from. Other filesystems (btrfs, xfs, squashfs, erofs) have no
such reader here: their facts say that their files were not read, and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import posixpath
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from harness.errors import HarnessError
from harness.guest.files import GENERATOR_NAME, GENERATOR_PATHS
from harness.image.debugfs import Debugfs, Reader, Unreadable, listing_command, run_tool
from harness.image.facts_cache import cache_file, identity, keep, recall
from harness.image.initrd import SYSTEMD_SHARED, pretty_name

EXT_FILESYSTEMS = ("ext2", "ext3", "ext4")

# Every command the harness's guest side runs that is not a builtin of dash and bash:
# guest/agent.sh, guest/control.sh, guest/credential-units.generator (systemd < 256 only),
# guest/test-control.sh, guest/testcases.sh, the Exec*= lines and scripts of guest/units.py
# and guest/reporting.py, the test unit's `tar -xzf` of extra_tree.py's trees (tar runs
# gzip), the fast path's `date -s` (backends/qemu/agent.py) and a host-driven machine's
# `cat` and `base64 -d` (host/driven_machine.py).
GUEST_TOOLS = (
    "sh",  # every unit's shell lines, the agents
    "bash",  # testcases.sh, test-control.sh, the debug and HARNESS_SHELL shells
    "systemctl",
    "journalctl",  # the journal sent to the host
    "udevadm",  # agent.sh: settle (it goes on without)
    "logger",  # testcases.sh: each testcase's result in the journal
    "awk",  # test-control.sh
    "base64",
    "cat",
    "cut",  # the fast path's timeline
    "date",
    "dd",  # control.sh
    "false",  # the emergency unit's ExecStart=
    "gzip",  # the timeline; tar -z
    "head",
    "install",  # the generator
    "ls",  # the generator
    "mkdir",
    "mktemp",  # testcases.sh
    "rm",
    "sed",  # the generator
    "sleep",
    "sort",  # testcases.sh
    "stty",  # control.sh on a console
    "sync",  # agent.sh
    "tar",  # extra trees
    "timeout",  # control.sh
    "tr",  # the generator
)
TOOL_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
GENERATOR = GENERATOR_NAME
GENERATOR_DIRS = tuple(f"/{posixpath.dirname(p)}" for p in GENERATOR_PATHS)
UDEVD = ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")
OS_RELEASE = ("/usr/lib/os-release", "/etc/os-release")
# Debian's multiarch directories: its libsystemd-shared is in /usr/lib/TRIPLET/systemd/.
TRIPLETS = (
    "x86_64-linux-gnu",
    "aarch64-linux-gnu",
    "i386-linux-gnu",
    "arm-linux-gnueabihf",
    "riscv64-linux-gnu",
    "powerpc64le-linux-gnu",
    "s390x-linux-gnu",
)
# Fedora's, openSUSE's and RHEL's libsystemd-shared is in %{_libdir}: /usr/lib64/systemd.
SYSTEMD_DIRS = (
    "/usr/lib/systemd",
    "/lib/systemd",
    "/usr/lib64/systemd",
    "/lib64/systemd",
    *(f"/usr/lib/{t}/systemd" for t in TRIPLETS),
)
# The top-level symlinks of a merged /usr (and /usr/sbin -> bin of Arch and Fedora 42):
# their targets place a relative symlink such as /sbin/init -> ../lib/systemd/systemd.
MERGED = ("/bin", "/sbin", "/lib", "/usr/sbin")


@attrs.frozen
class RootFacts:
    """What the root filesystem holds. Where it is not `readable`, every fact after
    `readable` is empty and says nothing about the image: `reason` tells why."""

    filesystem: str  # blkid's TYPE: ext4, btrfs, xfs, squashfs, erofs, vfat; "" if none found
    label: str  # the filesystem's LABEL ("" if none)
    fs_uuid: str  # the filesystem's UUID ("" if none)
    readable: bool  # its files could be read (ext2/3/4, through debugfs)
    systemd_version: int | None  # from libsystemd-shared-NNN.so; None: no systemd found
    os_name: str  # PRETTY_NAME of usr/lib/os-release (or etc/os-release)
    # The file sbin/init's symlinks end at, e.g. "/lib/systemd/systemd" (relative links
    # made absolute); "/sbin/init" where it is a file; "" where it is absent or dangles.
    init: str
    has_generator: bool  # the harness's harness-credential-units generator is installed
    has_udev: bool  # systemd-udevd exists
    missing_tools: tuple[str, ...]  # of GUEST_TOOLS, those in none of usr/bin, bin, usr/sbin, sbin
    reason: str = ""  # when not readable: why, in words a user understands


def root_facts(disk: Path, offset: int, size: int) -> RootFacts:
    """Facts of the filesystem at byte `offset` (length `size`) of a RAW disk file."""
    if not disk.exists():
        raise HarnessError(f"no disk image at {disk}", "check the path, or build the image first")
    try:
        probe = _probe(disk, offset, size)
    except Unreadable as e:
        return unreadable(str(e))
    fs = probe.get("TYPE", "")
    if fs not in EXT_FILESYSTEMS:
        return unreadable(_why_not(disk, offset, fs), probe)
    try:
        return _read_ext(probe, disk, offset)
    except Unreadable as e:
        return unreadable(f"could not read the {fs} filesystem at byte {offset} of {disk}: {e}", probe)


def unreadable(reason: str, probe: dict[str, str] | None = None) -> RootFacts:
    """Facts that say nothing but why, and what blkid found there."""
    probe = probe or {}
    fs, label, fs_uuid = (probe.get(k, "") for k in ("TYPE", "LABEL", "UUID"))
    return RootFacts(fs, label, fs_uuid, False, None, "", "", False, False, (), reason)


def _why_not(disk: Path, offset: int, fs: str) -> str:
    if not fs:
        return (
            f"found no filesystem at byte {offset} of {disk}: is that where the root partition"
            " starts, and is the disk raw (not qcow2)?"
        )
    if fs.startswith("crypto_"):
        return f"the root at byte {offset} of {disk} is encrypted ({fs}): its files cannot be read"
    return (
        f"the filesystem at byte {offset} of {disk} is {fs}, which the harness cannot read"
        " without mounting it (it reads ext2, ext3 and ext4 only): its files were not checked"
    )


def filesystem_ids(disk: Path, offset: int, size: int) -> tuple[str, str]:
    """The UUID and LABEL of the filesystem there, as root=UUID= and root=LABEL= name it;
    empty where there is none or blkid cannot tell."""
    try:
        probe = _probe(disk, offset, size)
    except Unreadable:
        return "", ""
    return probe.get("UUID", ""), probe.get("LABEL", "")


def _probe(disk: Path, offset: int, size: int) -> dict[str, str]:
    """blkid's low-level probe of the bytes [offset, offset + size): TYPE, LABEL, UUID, ...
    (nothing where it finds no filesystem). -p reads the superblocks themselves, with no
    cache; -O and -S confine it to the partition."""
    argv = ["blkid", "-p", "-O", str(offset), "-S", str(size), "-o", "export", str(disk)]
    done = run_tool(argv, "util-linux")
    if done.returncode == 2:  # nothing found
        return {}
    if done.returncode == 8:
        raise Unreadable(
            f"blkid found signatures of more than one filesystem at byte {offset} of {disk},"
            " and cannot tell which one is there"
        )
    if done.returncode != 0:
        raise Unreadable(f"blkid failed at byte {offset} of {disk}: {_last_line(done.stderr)}")
    pairs = (line.partition("=") for line in done.stdout.decode(errors="replace").splitlines())
    # export's values escape the shell's specials with a backslash
    return {k: re.sub(r"\\(.)", r"\1", v) for k, _, v in pairs if k}


def _last_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(it said nothing)"


FIRST_COMMANDS = [
    *(f"stat {p}" for p in (*MERGED, "/sbin/init", "/etc/os-release")),
    *(listing_command(d) for d in ("/usr/lib", *SYSTEMD_DIRS, *GENERATOR_DIRS)),
    # /bin, /usr/sbin and /sbin are listed where they are directories of their own only
    *(listing_command(d, follow=d == "/usr/bin") for d in TOOL_DIRS),
    *(f"cat {p}" for p in OS_RELEASE),
]


def _read_ext(probe: dict[str, str], disk: Path, offset: int) -> RootFacts:
    reader = Reader(Debugfs(disk, offset))
    reader.ask(FIRST_COMMANDS)
    return RootFacts(
        probe.get("TYPE", ""),
        probe.get("LABEL", ""),
        probe.get("UUID", ""),
        True,
        _systemd_version(reader),
        _os_name(reader),
        reader.follow("/sbin/init"),
        any(reader.look(f"{d}/{GENERATOR}") is not None for d in GENERATOR_DIRS),
        any(reader.look(p) is not None for p in UDEVD),
        _missing_tools(reader),
    )


def _systemd_version(reader: Reader) -> int | None:
    """The highest libsystemd-shared-NNN.so's NNN; the multiarch directories of /usr/lib
    the first run did not list (an architecture not in TRIPLETS) are listed where none was
    found."""
    version = _version(reader, SYSTEMD_DIRS)
    if version is None:
        triplets = sorted(p for p, n in reader.known(["/usr/lib"]) if "-linux-" in p and stat.S_ISDIR(n.mode))
        others = [f"{d}/systemd" for d in triplets if f"{d}/systemd" not in SYSTEMD_DIRS]
        reader.ask(listing_command(d) for d in others)
        version = _version(reader, others)
    return version


def _version(reader: Reader, directories: Iterable[str]) -> int | None:
    found = (SYSTEMD_SHARED.search(path) for path, _ in reader.known(directories))
    return max((int(m.group(1)) for m in found if m), default=None)


def _os_name(reader: Reader) -> str:
    for path in OS_RELEASE:
        final = reader.follow(path)
        node = reader.look(final) if final else None
        if node is not None and stat.S_ISREG(node.mode):
            return pretty_name(reader.read(final).encode())
    return ""


def _missing_tools(reader: Reader) -> tuple[str, ...]:
    """GUEST_TOOLS found in none of the tool directories, as an executable file or a
    symlink (not followed: busybox's applets, Debian's alternatives)."""
    found = {
        posixpath.basename(path)
        for path, node in reader.known(TOOL_DIRS)
        if stat.S_ISLNK(node.mode) or (stat.S_ISREG(node.mode) and node.mode & 0o111)
    }
    return tuple(t for t in GUEST_TOOLS if t not in found)


CACHE_FORMAT = 1  # raised when RootFacts or how a fact is read changes


def known_root_facts(
    disk: Path, offset: int, size: int, read: Callable[[], RootFacts] | None = None
) -> RootFacts:
    """`root_facts`, kept beside the disk (harness.image.facts_cache) for the same area of the
    same disk file. Facts of a failed read that may go another way next time (a tool
    missing or too slow, a filesystem debugfs could not open) are not kept. `read` reads
    them where `root_facts` cannot (a qcow2)."""
    if not disk.is_file():
        return root_facts(disk, offset, size)  # a block device's times do not follow its content
    cache, ident = (
        cache_file(disk, "root-facts"),
        identity(disk, CACHE_FORMAT, offset, size, list(GUEST_TOOLS)),
    )
    # One reader at a time (a qcow2's is a copy of its root): the others wait and recall.
    with disk.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = recall(cache, ident)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if known is not None:
                return RootFacts(**{**known, "missing_tools": tuple(known["missing_tools"])})
        facts = read() if read else root_facts(disk, offset, size)
        if facts.readable or (facts.filesystem and facts.filesystem not in EXT_FILESYSTEMS):
            keep(cache, ident, attrs.asdict(facts))
        return facts
