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
    """Every core-dumping signal of a process below the container's first one (`watch_below`,
    once it is started), from the moment the watch starts; `unavailable` says why there is
    no watch (not root, a kernel without CONFIG_PROC_EVENTS, a PID namespace of its own)."""

    def __init__(self) -> None:
        self.crashes: list[Crash] = []
        self.lost = False  # events were dropped: a crash may have gone unseen
        self.unavailable = ""
        self._lock = threading.Lock()
        self._root: int | None = None
        # Processes alive now: who forked each (until the root is known), which are the
        # container's, what each runs (comm, exe, its PID in the container). A process's
        # exit forgets it, so a PID used again is a new process.
        self._parents: dict[int, int] = {}
        self._members: set[int] = set()
        self._facts: dict[int, tuple[str, str, int]] = {}
        self._dumping: dict[int, Crash] = {}  # dumped, its exit (and signal) not seen yet
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
            self.unavailable = subscribe(sock)
            if not self.unavailable:
                self._wake_r, self._wake_w = os.pipe()  # stop() wakes the reader through it
                self._thread = threading.Thread(
                    target=self._read, args=(sock,), name="crash-watch", daemon=True
                )
                self._thread.start()
        except OSError as e:
            self.unavailable = f"the kernel's process events cannot be read ({e.strerror})"
        if self.unavailable:
            sock.close()
            self._close_pipe()
            self._thread = None
        else:
            self._sock = sock

    def watch_below(self, root: int) -> None:
        """The container's first process: it and every process it forked are watched,
        those forked before this call included."""
        with self._lock:
            self._root = root
            self._members.add(root)
            for child in list(self._parents):
                if self._below_root(child):
                    self._members.add(child)
            self._parents.clear()

    def stop(self) -> None:
        """Stop watching, once the container ended. The kernel queued its events as they
        happened: those still unread are read here, without waiting for more."""
        thread, sock, self._thread, self._sock = self._thread, self._sock, None, None
        if thread is None or sock is None:
            return
        try:
            self._stop.set()
            os.write(self._wake_w, b"x")
            thread.join()
            sock.setblocking(False)
            while True:
                try:
                    self._event(sock.recv(65536))
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        break
                    self.lost = True
            with contextlib.suppress(OSError):
                sock.send(listen_message(PROC_CN_MCAST_IGNORE))
        finally:
            sock.close()
            self._close_pipe()
        self.crashes += self._dumping.values()
        self._dumping.clear()

    def seen_so_far(self) -> list[Crash]:
        """The crashes seen until now: while the container runs (a host-driven test's gate
        looks then), or all of them once the watch stopped."""
        with self._lock:
            return [*self.crashes, *self._dumping.values()]

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _read(self, sock: socket.socket) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            ready = [fd for fd, _ in poller.poll()]
            if sock.fileno() not in ready:
                continue
            try:
                data = sock.recv(65536)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost = True
                    continue
                self.lost = True  # no more events: what follows goes unseen
                return
            self._event(data)

    def _event(self, data: bytes) -> None:
        if len(data) < EVENT_DATA + 16:
            return
        what = EVENT.unpack_from(data, HEADER.size + CN_MSG.size)[0]
        with self._lock:
            if what == FORK:
                _, parent_tgid, child_pid, child_tgid = struct.unpack_from("=iiii", data, EVENT_DATA)
                if child_pid == child_tgid:  # a process, not a thread
                    self._forked(parent_tgid, child_tgid)
            elif what == EXEC:
                tgid = struct.unpack_from("=ii", data, EVENT_DATA)[1]
                if tgid in self._members:
                    self._facts[tgid] = process_facts(tgid)
            elif what == COREDUMP:
                tgid = struct.unpack_from("=ii", data, EVENT_DATA)[1]
                if tgid in self._members and tgid not in self._dumping:
                    self._dumping[tgid] = self._dumped(tgid)
            elif what == EXIT and len(data) >= EVENT_DATA + 24:
                pid, tgid, exit_code, _ = struct.unpack_from("=iiII", data, EVENT_DATA)
                if pid == tgid:
                    self._exited(tgid, exit_code)

    def _forked(self, parent: int, child: int) -> None:
        self._facts.pop(child, None)
        if parent in self._members:
            self._members.add(child)
            if parent in self._facts:  # a child runs its parent's program until it execs
                comm, exe, _ = self._facts[parent]
                self._facts[child] = (comm, exe, child)
        elif self._root is None:
            self._parents[child] = parent

    def _dumped(self, tgid: int) -> Crash:
        # It is still there, most often; its executable may be gone already (the exit
        # takes its memory first): what its exec showed fills in.
        comm, exe, pid = process_facts(tgid)
        seen = self._facts.get(tgid, ("", "", tgid))
        return Crash(pid if comm else seen[2], comm or seen[0] or "?", exe or seen[1], None)

    def _exited(self, tgid: int, exit_code: int) -> None:
        crash = self._dumping.pop(tgid, None)
        if crash is not None:
            self.crashes.append(attrs.evolve(crash, signal=exit_code & 0x7F or None))
        self._members.discard(tgid)
        self._facts.pop(tgid, None)
        self._parents.pop(tgid, None)

    def _below_root(self, tgid: int) -> bool:
        seen: set[int] = set()
        while tgid not in seen and len(seen) < MAX_DEPTH:
            if tgid == self._root:
                return True
            seen.add(tgid)
            parent = self._parents.get(tgid)
            if parent is None:
                return False
            tgid = parent
        return False


ACK_WAIT = 0.5  # s for the kernel to answer the subscription; it answers at once


def subscribe(sock: socket.socket) -> str:
    """Ask for the process events; why they will not come, or "". The kernel answers with
    an event of its own (what 0, the error): not at all from a PID or user namespace other
    than its first, whose processes it does not report to."""
    sock.send(listen_message(PROC_CN_MCAST_LISTEN))
    sock.settimeout(ACK_WAIT)
    try:
        while True:
            data = sock.recv(65536)
            if len(data) >= EVENT_DATA + 4 and EVENT.unpack_from(data, HEADER.size + CN_MSG.size)[0] == 0:
                err = struct.unpack_from("=I", data, EVENT_DATA)[0]
                return f"the kernel refused its process events ({os.strerror(err)})" if err else ""
    except TimeoutError:
        return "the kernel did not answer for its process events (a PID namespace of its own?)"
    finally:
        sock.settimeout(None)


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


def export_field(name: str, value: str) -> bytes:
    """One field in Journal Export Format: text, or binary where the value has a newline."""
    data = value.encode(errors="surrogateescape")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return "0" * 32


def export_entries(crashes: list[Crash], root: Path) -> bytes:
    """The crashes as systemd-coredump's journal entries (export format), each saying it
    was seen by the host. `root` is the container's root as the host sees it: an
    executable's path is the container's. The boot is the host kernel's, which the
    container's is too."""
    entries = []
    for crash in crashes:
        exe = crash.exe.removeprefix(str(root)) if crash.exe.startswith(f"{root}/") else crash.exe
        name = signal_name(crash.signal)
        fields = {
            "__REALTIME_TIMESTAMP": str(time.time_ns() // 1000),
            "__MONOTONIC_TIMESTAMP": str(time.monotonic_ns() // 1000),
            "_BOOT_ID": boot_id(),
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
        entries.append(b"".join(export_field(k, v) for k, v in fields.items()) + b"\n")
    return b"".join(entries)


def add_to_export(export: Path, crashes: list[Crash], root: Path) -> None:
    """The crashes the host saw, added to the guest's journal export, but for those the
    guest's own systemd-coredump logged there already (a host forwarding core dumps to
    it): the same PID and name."""
    try:
        data = export.read_bytes()
    except FileNotFoundError:
        data = b""
    logged = {
        (e.get("COREDUMP_PID"), e.get("COREDUMP_COMM"))
        for e in read_export(data)
        if e.get("MESSAGE_ID") == COREDUMP_MESSAGE_ID
    }
    new = [c for c in crashes if (str(c.pid), c.comm) not in logged]
    if not new:
        return
    # An export the guest could not finish (killed at its timeout) ends in the middle of
    # an entry: ours start after an empty line all the same.
    separator = b"" if not data or data.endswith(b"\n\n") else b"\n\n" if not data.endswith(b"\n") else b"\n"
    with export.open("ab") as f:
        f.write(separator + export_entries(new, root))
