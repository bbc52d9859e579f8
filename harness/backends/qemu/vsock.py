"""The vsock channel of the notify protocol: PID 1 connects to the host once per message
(credential `vmm.notify_socket=vsock-stream:2:PORT`). Needs /dev/vhost-vsock; without it
the virtio-serial port carries the same messages (see harness.verdict.notify)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import struct
import threading
from types import TracebackType

from harness.verdict.notify import GuestReport

VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60  # _IOW(VHOST_VIRTIO, 0x60, __u64)
VMADDR_CID_HOST = 2


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

    def __enter__(self) -> VsockNotifyListener:
        self._server.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
        self._server.listen(8)
        self._server.settimeout(0.2)
        return self

    @property
    def port(self) -> int:
        port: int = self._server.getsockname()[1]
        return port

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="vsock-notify", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # After stop, keep accepting until nothing is pending: PID 1's last message may
        # still be queued when QEMU exits.
        while True:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                chunks: list[bytes] = []
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(4096):
                        chunks.append(chunk)
                self.report.add(b"".join(chunks))

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._server.close()
