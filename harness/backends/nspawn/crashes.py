"""Core dumps in a container, seen from the host.

A crashing process's core goes where the kernel's core_pattern says, and that is the
host's: a pipe's helper runs in the host's namespaces, so the container's systemd-coredump
never hears of the crash (unless the host runs a systemd-coredump that forwards it, systemd
255 with CoredumpReceive=, which needs systemd as the host's PID 1). Where the host has no
such helper the core is simply lost (this machine: "|/lib/systemd/systemd-coredump", absent).

So the host watches. The kernel's process events connector (netlink, CN_PROC, root only)
reports every fork and every core-dumping signal, the latter before the dump is tried and
whatever core_pattern then does with it. `CrashWatch` follows the forks down from the
container's first process; each core-dumping signal of one of its processes becomes an
entry like systemd-coredump's in the test's journal export (its MESSAGE_ID, COREDUMP_PID,
_COMM, _EXE, _SIGNAL_NAME), so that the gate (verdict/gates.py) fails the test as it does
in a VM, `coredump-exclude-regex` included. What it cannot give is a stack trace: no core
is kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import attrs

from harness.verdict.journal import COREDUMP_MESSAGE_ID, read_export

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE = 1, 2
FORK, EXEC, EXIT, COREDUMP = 0x1, 0x2, 0x80000000, 0x40000000
HEADER = struct.Struct("=IHHII")  # nlmsghdr
CN_MSG = struct.Struct("=IIIIHH")  # cn_msg: idx, val, seq, ack, len, flags
EVENT = struct.Struct("=IIQ")  # proc_event: what, cpu, timestamp_ns; then its data
EVENT_DATA = HEADER.size + CN_MSG.size + EVENT.size
RECEIVE_BUFFER = 8 * 2**20  # bytes: a container's fork storm is not lost
MAX_DEPTH = 4096  # forks from the container's first process to a crash, at most


@attrs.frozen
class Crash:
    pid: int  # in the container (its PID namespace), else the host's
    comm: str
    exe: str
    signal: int | None  # from the process's exit; None if it was not seen


def process_facts(tgid: int) -> tuple[str, str, int]:
    """The process's name, executable and PID in the innermost PID namespace, while it is
    there; "" and the host's PID where it is gone."""
    try:
        comm = Path(f"/proc/{tgid}/comm").read_text().strip()
        status = Path(f"/proc/{tgid}/status").read_text()
        pid = int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])
    except (OSError, StopIteration, ValueError):
        comm, pid = "", tgid
    try:
        exe = os.readlink(f"/proc/{tgid}/exe").removesuffix(" (deleted)")
    except OSError:
        exe = ""
    return comm, exe, pid


class CrashWatch:
    """Every core-dumping signal of a process below `root` (set once the container's first
    process is started), from the moment the watch starts; `unavailable` says why there is
    no watch (not root, a kernel without CONFIG_PROC_EVENTS)."""

    def __init__(self) -> None:
        self.root: int | None = None
        self.crashes: list[Crash] = []
        self.lost = False  # events were dropped: a crash may have gone unseen
        self.unavailable = ""
        self._parents: dict[int, int] = {}  # process -> the process that forked it
        self._facts: dict[int, tuple[str, str, int]] = {}  # comm, exe, PID, as seen at exec
        self._signals: dict[int, int] = {}
        self._dumped: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._wake_r = self._wake_w = -1

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:
            self.unavailable = f"no process events connector here ({e.strerror})"
            return
        try:
            with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: root may exceed rmem_max
                sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)
            sock.bind((0, CN_IDX_PROC))
            sock.send(listen_message(PROC_CN_MCAST_LISTEN))
        except OSError as e:
            sock.close()
            self.unavailable = f"the kernel's process events cannot be read ({e.strerror}: root is needed)"
            return
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()  # stop() wakes the reader through it
        self._thread = threading.Thread(target=self._read, name="crash-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, once the container ended. The kernel queued its events as they
        happened: those still unread are read here, without waiting for more."""
        if self._thread is None or self._sock is None:
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._sock.setblocking(False)
        with contextlib.suppress(OSError):  # BlockingIOError: none left
            while True:
                self._event(self._sock.recv(65536))
        with contextlib.suppress(OSError):
            self._sock.send(listen_message(PROC_CN_MCAST_IGNORE))
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.crashes = [self._crash(tgid) for tgid in self._dumped]

    def _crash(self, tgid: int) -> Crash:
        comm, exe, pid = self._facts.get(tgid, ("", "", tgid))
        return Crash(pid, comm or "?", exe, self._signals.get(tgid))

    def _read(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [])
            if self._sock.fileno() not in ready:
                continue
            try:
                data = self._sock.recv(65536)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost = True
                    continue
                return
            self._event(data)

    def _event(self, data: bytes) -> None:
        if len(data) < EVENT_DATA + 16:
            return
        what = EVENT.unpack_from(data, HEADER.size + CN_MSG.size)[0]
        if what == FORK:
            _, parent_tgid, child_pid, child_tgid = struct.unpack_from("=iiii", data, EVENT_DATA)
            if child_pid == child_tgid:  # a process, not a thread
                self._parents[child_tgid] = parent_tgid
                self._signals.pop(child_tgid, None)
                # A child runs its parent's program until it execs its own.
                self._facts.pop(child_tgid, None)
                if parent_tgid in self._facts:  # one of the container's (its exec was seen)
                    comm, exe, _ = self._facts[parent_tgid]
                    self._facts[child_tgid] = (comm, exe, child_tgid)
        elif what == EXEC:
            tgid = struct.unpack_from("=ii", data, EVENT_DATA)[1]
            if self._below_root(tgid):
                self._facts[tgid] = process_facts(tgid)
        elif what == COREDUMP:
            tgid = struct.unpack_from("=ii", data, EVENT_DATA)[1]
            if self._below_root(tgid):
                # It is still there, most often; its executable may be gone already
                # (the exit takes its memory first): what its exec showed fills in.
                comm, exe, pid = process_facts(tgid)
                seen = self._facts.get(tgid, ("", "", tgid))
                self._facts[tgid] = (comm or seen[0], exe or seen[1], pid if comm else seen[2])
                self._dumped.append(tgid)
        elif what == EXIT and len(data) >= EVENT_DATA + 16:
            pid, tgid, exit_code, _ = struct.unpack_from("=iiII", data, EVENT_DATA)
            if pid == tgid and tgid in self._dumped:
                self._signals[tgid] = exit_code & 0x7F

    def _below_root(self, tgid: int) -> bool:
        if self.root is None:
            return False
        seen: set[int] = set()
        while tgid not in seen and len(seen) < MAX_DEPTH:
            if tgid == self.root:
                return True
            seen.add(tgid)
            parent = self._parents.get(tgid)
            if parent is None:
                return False
            tgid = parent
        return False


def listen_message(op: int) -> bytes:
    body = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(body), 0) + body
    return HEADER.pack(HEADER.size + len(cn), 3, 0, 0, 0) + cn  # 3: NLMSG_DONE


def signal_name(number: int | None) -> str:
    if number is None:
        return "a core-dumping signal"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def export_entries(crashes: list[Crash], root: Path) -> bytes:
    """The crashes as systemd-coredump's journal entries (export format), each saying it
    was seen by the host. `root` is the container's root as the host sees it: an
    executable's path is the container's."""
    entries = []
    for crash in crashes:
        exe = crash.exe
        if exe.startswith(f"{root}/"):
            exe = exe.removeprefix(str(root))
        name = signal_name(crash.signal)
        fields = {
            "__REALTIME_TIMESTAMP": str(time.time_ns() // 1000),
            "MESSAGE_ID": COREDUMP_MESSAGE_ID,
            "MESSAGE": f"Process {crash.pid} ({crash.comm}) of the container dumped core ({name}): "
            "seen by the host, whose core_pattern the dump went to (no stack trace)",
            "PRIORITY": "2",
            "SYSLOG_IDENTIFIER": "os-harness",
            "COREDUMP_PID": str(crash.pid),
            "COREDUMP_COMM": crash.comm,
            "COREDUMP_EXE": exe,
            "COREDUMP_SIGNAL_NAME": name,
            **({"COREDUMP_SIGNAL": str(crash.signal)} if crash.signal is not None else {}),
        }
        entries.append("".join(f"{k}={v}\n" for k, v in fields.items() if "\n" not in v))
    return "\n".join(entries).encode() + (b"\n" if entries else b"")


def add_to_export(export: Path, crashes: list[Crash], root: Path) -> None:
    """The crashes the host saw, added to the guest's journal export unless the guest's own
    systemd-coredump logged core dumps there already (a host forwarding them to it)."""
    if not crashes:
        return
    try:
        data = export.read_bytes()
    except FileNotFoundError:
        data = b""
    if any(e.get("MESSAGE_ID") == COREDUMP_MESSAGE_ID for e in read_export(data)):
        return
    separator = b"\n" if data and not data.endswith(b"\n\n") else b""
    with export.open("ab") as f:
        f.write(separator + export_entries(crashes, root))
