"""What the guest tells the host, in the systemd notify protocol (KEY=VALUE lines).

Two channels carry it. With vsock, PID 1 reports READY=1 and EXIT_STATUS= itself
(credential `vmm.notify_socket=vsock-stream:2:PORT`, one connection per message). The
virtio-serial port works everywhere: the test unit writes READY=1 when it starts and the
unit's result when it ends, from which `GuestReport.exit_status` derives what PID 1's
SuccessAction=/FailureAction=exit would report.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import struct
import threading
from pathlib import Path

import attrs

VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60  # _IOW(VHOST_VIRTIO, 0x60, __u64)
VMADDR_CID_HOST = 2


def parse_notify(data: bytes) -> list[tuple[str, str]]:
    """The KEY=VALUE assignments in a notify message or stream, in order; junk skipped."""
    pairs = []
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "replace").strip("\r\0 ")
        key, sep, value = line.partition("=")
        if sep and key and key.replace("_", "").isalnum() and key.upper() == key:
            pairs.append((key, value))
    return pairs


def console_notify_lines(console: bytes, prefix: bytes) -> bytes:
    """The KEY=VALUE lines a board's units wrote to its serial console after `prefix`."""
    out = []
    for line in console.split(b"\n"):
        at = line.find(prefix)
        if at >= 0:
            out.append(line[at + len(prefix):].rstrip(b"\r"))
    return b"\n".join(out)


def derive_exit_status(service_result: str, exit_code: str, exit_status: str, success_status: int) -> int:
    """The status PID 1 exits with after the test unit ends, as systemd computes it:
    SuccessActionExitStatus= on success, else the main process's own exit status."""
    if service_result == "success":
        return success_status
    if exit_code == "exited" and exit_status.isdigit():
        return int(exit_status)
    return 1  # killed by a signal, dumped core, timed out in the guest


@attrs.define
class GuestReport:
    """Everything the guest said, from either channel."""

    pairs: list[tuple[str, str]] = attrs.Factory(list)

    def add(self, data: bytes) -> None:
        self.pairs.extend(parse_notify(data))

    def last(self, key: str) -> str | None:
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return None

    @property
    def test_started(self) -> bool:
        return self.last("READY") == "1"

    @property
    def entered_emergency(self) -> bool:
        return self.last("X_HARNESS_EMERGENCY") == "1"

    def exit_status(self, success_status: int) -> int | None:
        status = self.last("EXIT_STATUS")  # PID 1's own word wins where it arrived
        if status is not None and status.isdigit():
            return int(status)
        result = self.last("X_HARNESS_SERVICE_RESULT")
        if result is None:
            return None
        return derive_exit_status(result, self.last("X_HARNESS_EXIT_CODE") or "",
                                  self.last("X_HARNESS_EXIT_STATUS") or "", success_status)


def vsock_available() -> bool:
    return hasattr(socket, "AF_VSOCK") and os.access("/dev/vhost-vsock", os.R_OK | os.W_OK)


def reserve_cid(vhost_fd: int, attempts: int = 64) -> int:
    """Claim a guest CID no other VM on this host uses (the kernel says EADDRINUSE)."""
    for _ in range(attempts):
        cid = random.randint(3, 0xFFFFFFFE)
        try:
            fcntl.ioctl(vhost_fd, VHOST_VSOCK_SET_GUEST_CID, struct.pack("Q", cid))
            return cid
        except OSError:
            continue
    raise OSError("no free vsock CID found")


class VsockNotifyListener:
    """Receives PID 1's notify connections over vsock (`vmm.notify_socket`).

    The socket is bound on entry, so its port can go into the guest's credentials; the
    accepting thread starts only with `start()`, after QEMU is spawned, so no thread
    runs while the wrapper forks."""

    def __init__(self, report: GuestReport) -> None:
        self.report = report
        self._server = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "VsockNotifyListener":
        self._server.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
        self._server.listen(8)
        self._server.settimeout(0.2)
        return self

    @property
    def port(self) -> int:
        return self._server.getsockname()[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="vsock-notify", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # After stop, keep accepting until nothing is pending: PID 1's last message may
        # still be queued when QEMU exits.
        while True:
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, socket.timeout):
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                chunks = []
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(4096):
                        chunks.append(chunk)
                self.report.add(b"".join(chunks))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._server.close()


def read_port_file(path: Path, report: GuestReport) -> None:
    with contextlib.suppress(FileNotFoundError):
        report.add(path.read_bytes())
