"""The vsock notify channel, through the kernel's vsock loopback (CID 1) where it exists.

CI here has no vsock at all; on hosts with `vsock_loopback` loaded this runs the real
listener against a real AF_VSOCK connection, as PID 1 would make it.
"""

import socket

import pytest

from harness.backends.qemu.vsock import VsockNotifyListener
from harness.verdict.notify import GuestReport

VMADDR_CID_LOCAL = 1


def send(port: int, payload: bytes) -> None:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as c:
        c.settimeout(1)
        c.connect((VMADDR_CID_LOCAL, port))
        c.sendall(payload)


def test_listener_collects_pid1_messages():
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this Python")
    report = GuestReport()
    try:
        listener = VsockNotifyListener(report)
    except OSError as e:
        pytest.skip(f"vsock unavailable: {e}")
    with listener:
        listener.start()
        try:
            send(listener.port, b"READY=1\n")
        except OSError as e:
            pytest.skip(f"no vsock loopback transport (modprobe vsock_loopback): {e}")
        send(listener.port, b"EXIT_STATUS=123\n")
    # Leaving the context drained both connections.
    assert report.test_started and report.exit_status(123) == 123
