"""Read an ext2/3/4 filesystem inside a disk file without mounting it, through one debugfs
process per batch of commands.

Mounting would need a loop device and root, and a crash would leave both behind. debugfs
(e2fsprogs) opens the filesystem read-only at an offset of the file, takes its commands
on stdin and echoes each before its output; a batch asks for everything known to be
needed at once, and a `Reader` asks for more only where the answers lead elsewhere: a
symlink out of the directories listed, a target too long for `stat` to show.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

TIMEOUT = 30  # seconds, for each run of a tool
MAX_LINKS = 16  # symlinks followed in a row before a path counts as a loop
PLAIN_PATH = re.compile(r"/[\w./+@:~-]*")  # a path debugfs's command line takes as it is


class Unreadable(Exception):
    """A tool could not read the filesystem; the message says why, for the user."""


def run_tool(
    argv: list[str], package: str, stdin: str = "", fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """`argv` with a timeout and the C locale; a missing program (from `package`) or a
    timeout is Unreadable."""
    env = {**os.environ, "LC_ALL": "C", "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}
    try:
        return subprocess.run(
            argv, input=stdin.encode(), capture_output=True, timeout=TIMEOUT, env=env, pass_fds=fds
        )
    except FileNotFoundError:
        raise Unreadable(f"{argv[0]} is not installed (apt-get install {package})") from None
    except subprocess.TimeoutExpired:
        raise Unreadable(f"{argv[0]} did not finish within {TIMEOUT} s") from None
    except OSError as e:
        raise Unreadable(f"{argv[0]} could not run: {e}") from None


@attrs.frozen
class Debugfs:
    """Read-only debugfs runs on the ext2/3/4 filesystem at `offset` of `disk`."""

    disk: Path
    offset: int

    def run(self, commands: list[str]) -> dict[str, str]:
        """Each command's output, from one debugfs process. The disk is handed over open:
        its path might hold the '?' that starts the options of e2fsprogs' `FILE?offset=N`.
        -c (catastrophic mode) opens read-only and reads no bitmaps, which the listings
        need not; -f - takes the commands from stdin and echoes each before its output."""
        with self.disk.open("rb") as f:
            target = f"/proc/self/fd/{f.fileno()}?offset={self.offset}"
            argv = ["debugfs", "-c", "-f", "-", target]
            done = run_tool(argv, "e2fsprogs", "".join(f"{c}\n" for c in commands), (f.fileno(),))
        errors = done.stderr.decode(errors="replace")
        if done.returncode != 0 or "Filesystem not open" in errors:
            raise Unreadable(_open_error(errors))
        outputs = _sections(done.stdout.decode(errors="replace"), commands)
        if commands and not outputs:
            raise Unreadable("debugfs ran none of the commands it was given")
        return outputs


def _open_error(errors: str) -> str:
    """What debugfs said about opening the filesystem, without its command line."""
    for line in errors.splitlines():
        what, found, _ = line.partition(" while trying to open ")
        if found:
            return what.removeprefix("debugfs: ")
    return errors.strip().splitlines()[-1] if errors.strip() else "debugfs failed and said nothing"


def _sections(out: str, commands: list[str]) -> dict[str, str]:
    """The output of each command, from after its echo `debugfs: COMMAND` to the next one.
    A command whose echo is missing (debugfs stopped before it) has none."""
    starts: list[tuple[str, int, int]] = []
    pos = 0
    for command in commands:
        at = out.find(f"debugfs: {command}\n", pos)
        if at < 0:
            break
        pos = at + len(f"debugfs: {command}\n")
        starts.append((command, at, pos))
    ends = [at for _, at, _ in starts[1:]] + [len(out)]
    return {command: out[begin:end] for (command, _, begin), end in zip(starts, ends, strict=True)}


@attrs.frozen
class Node:
    mode: int  # st_mode: file type and permission bits
    target: str | None = None  # a symlink's, where known


LISTING_LINE = re.compile(r"^/\d+/(\d+)/\d+/\d+/(.*)/\d*/$", re.MULTILINE)  # ls -p
STAT_TYPES = {"regular": stat.S_IFREG, "directory": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def _listing(text: str) -> dict[str, Node] | None:
    """The entries of `ls -p`, but . and ..; None where it listed nothing, not even .
    (no such directory, or a symlink ls was not to follow)."""
    entries = {n: Node(int(m, 8)) for m, n in LISTING_LINE.findall(text)}
    return {n: e for n, e in entries.items() if n not in (".", "..")} if "." in entries else None


def _stat(text: str) -> Node | None:
    """The node `stat` shows; None where it showed nothing (no such file). A slow symlink
    (a target of 60 bytes or more) shows no target: `cat` prints it."""
    kind = re.search(r"Type: (\w[\w ]*?)\s+Mode:\s+(\d+)", text)
    if not kind:
        return None
    link = re.search(r'^Fast link dest: "(.*)"$', text, re.MULTILINE)
    mode = STAT_TYPES.get(kind.group(1), 0) | int(kind.group(2), 8)
    return Node(mode, link.group(1) if link else None)


UNKNOWN = Node(0)  # a path no run has told about yet


@attrs.define
class _Tree:
    """What the debugfs runs told of the filesystem, by path; a directory listed whole
    (`complete`) also tells which names are absent from it."""

    nodes: dict[str, Node | None] = attrs.Factory(dict)
    complete: set[str] = attrs.Factory(set)

    def add_listing(self, directory: str, entries: dict[str, Node]) -> None:
        self.complete.add(directory)
        for name, node in entries.items():
            self.nodes.setdefault(f"{directory}/{name}", node)

    def get(self, path: str) -> Node | None:
        if path in self.nodes:
            return self.nodes[path]
        return None if posixpath.dirname(path) in self.complete else UNKNOWN

    def canonical(self, path: str) -> str:
        """`path` through the symlinks of its directories that the tree knows of."""
        parts = path.strip("/").split("/")
        for _ in range(MAX_LINKS):
            for i in range(1, len(parts)):
                node = self.nodes.get("/" + "/".join(parts[:i]))
                if node is not None and stat.S_ISLNK(node.mode) and node.target is not None:
                    base = join("/" + "/".join(parts[: i - 1]), node.target)
                    parts = base.strip("/").split("/") + parts[i:]
                    break
            else:
                break
        return "/" + "/".join(p for p in parts if p)


def join(directory: str, target: str) -> str:
    """`target` of a symlink in `directory`, as an absolute, normal path."""
    return "/" + posixpath.normpath(posixpath.join(directory, target)).lstrip("/")


def listing_command(directory: str, follow: bool = True) -> str:
    """`ls -p` of `directory`. With `follow`, a trailing /. makes debugfs follow the
    directory's own symlink: /lib/systemd/. lists usr/lib/systemd on a merged /usr.
    Without it, a symlink is not listed (ls fails on it), only a directory of its own."""
    return f"ls -p {directory}/." if follow else f"ls -p {directory}"


@attrs.frozen
class Reader:
    """What debugfs tells of the filesystem: the answers of the batches `ask` ran, and
    more runs of one command each where they do not tell enough."""

    debugfs: Debugfs
    outputs: dict[str, str] = attrs.Factory(dict)  # by command, of every run so far
    tree: _Tree = attrs.Factory(_Tree)

    def ask(self, commands: Iterable[str]) -> None:
        """Run those of `commands` not run yet, in one debugfs process; what `stat` and
        `ls -p` tell goes into the tree, `cat`'s output is for `read`."""
        todo = [c for c in dict.fromkeys(commands) if c not in self.outputs]
        new = self.debugfs.run(todo) if todo else {}
        self.outputs.update(new)
        for command, text in new.items():
            if command.startswith("ls -p "):
                # A directory ls followed (DIR/.) and found nothing in has no entries;
                # one it did not follow may be a symlink, which tells nothing.
                directory, entries = command.removeprefix("ls -p "), _listing(text)
                if entries is not None or directory.endswith("/."):
                    self.tree.add_listing(directory.removesuffix("/."), entries or {})
        for command, text in new.items():  # after the listings: a stat tells more
            if command.startswith("stat "):
                self.tree.nodes[command.removeprefix("stat ")] = _stat(text)

    def known(self, directories: Iterable[str]) -> Iterator[tuple[str, Node]]:
        """The paths in `directories` the runs told of, and their nodes."""
        wanted = set(directories)
        for path, node in self.tree.nodes.items():
            if node is not None and posixpath.dirname(path) in wanted:
                yield path, node

    def look(self, path: str) -> Node | None:
        """The node at `path`, asking debugfs where the tree does not tell; None: absent."""
        node = self.tree.get(path)
        return self._stat(path) if node is UNKNOWN else node

    def _stat(self, path: str) -> Node | None:
        if not PLAIN_PATH.fullmatch(path):
            return None  # debugfs's command line would split it
        self.ask([f"stat {path}"])
        return self.tree.nodes.get(path)

    def read(self, path: str) -> str:
        """The content of the file at `path` (cat); "" where it cannot be read."""
        if PLAIN_PATH.fullmatch(path):
            self.ask([f"cat {path}"])
        return self.outputs.get(f"cat {path}", "")

    def target(self, path: str, node: Node) -> str:
        """The target of the symlink `node` at `path`: a listing does not tell it, `stat`
        does for a fast symlink, `cat` for a slow one; "" where none of them does."""
        if node.target is None:
            node = self._stat(path) or node
        if node.target is None:
            node = self.tree.nodes[path] = Node(node.mode, self.read(path).strip("\0"))
        return node.target or ""

    def follow(self, path: str) -> str:
        """The path the symlinks from `path` end at: "" where they end nowhere."""
        for _ in range(MAX_LINKS):
            node = self.look(path)
            if node is None or not stat.S_ISLNK(node.mode):
                return "" if node is None else path
            target = self.target(path, node)
            if not target:
                return ""
            path = join(posixpath.dirname(self.tree.canonical(path)), target)
        return ""
