"""The virtual worker's HTTP face: what any client on the network reaches first, so it
decides before reading a body. The token is checked from the headers alone; each endpoint
takes a body of bounded size, announced by a Content-Length; chunk numbers are checked
before they become file offsets; an idle connection is closed and the connections are
capped; what a client sent is escaped before it is logged. Every malformed request gets
an honest status (400, 401, 411, 413, 431, 503) and the worker goes on serving.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


class ServedBoard(Protocol):
    """The board behind the API: what its power and serial endpoints reach."""

    def power_on(self) -> None: ...
    def power_off(self) -> None: ...
    def type_line(self, line: str) -> bytes: ...
    def serial_since(self, offset: int) -> bytes: ...


class ServedWorker(Protocol):
    """What the API serves (virtual_worker.VirtualWorker is one): defined here, so that the
    HTTP face depends on no worker and the worker builds on it."""

    @property
    def token(self) -> str: ...
    @property
    def busy(self) -> bool: ...
    @property
    def flash_state(self) -> str: ...
    @property
    def board(self) -> ServedBoard: ...

    def reserve(self) -> str: ...
    def heartbeat(self) -> str: ...
    def teardown(self) -> str: ...
    def contract(self) -> dict[str, Any]: ...
    def write_chunk(self, body: bytes, index: int | None, total: int | None) -> str: ...
    def flash(self) -> dict[str, Any]: ...


CHUNK_MIB = 40
MIB = 1024 * 1024
# What a client may send: a chunk of the image, a typed line (a host test's `put` travels
# in one), or a little JSON. A longer body is refused before a byte of it is read.
BODY_LIMITS = {("POST", "/dut/sendImage"): CHUNK_MIB * MIB, ("POST", "/dut/serial/exec"): 4 * MIB}
SMALL_BODY = 64 * 1024
MAX_CHUNKS = 64 * 1024 // CHUNK_MIB  # images up to 64 GiB
IDLE_SECONDS = 30.0  # a connection that sends nothing for this long is closed
MAX_CONNECTIONS = 32


class RequestError(Exception):
    """A request the worker answers with `status` and closes the connection after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_handler(worker: ServedWorker, idle_timeout: float = IDLE_SECONDS) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout
        default_request_version = "HTTP/1.1"  # a broken request line is answered with a status line too

        def reply(self, status: int, body: bytes | str | dict[str, Any]) -> None:
            data = (
                body
                if isinstance(body, bytes)
                else (json.dumps(body) if isinstance(body, dict) else body).encode()
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(errors="replace"), f"Bearer {worker.token}".encode())

        def handle_expect_100(self) -> bool:
            # "100 Continue" only to who holds the token: the others get their 401 unread.
            return super().handle_expect_100() if self.authorized() else True

        def body(self) -> bytes | None:
            """The body, read only once its length is known and within this endpoint's limit."""
            if "Transfer-Encoding" in self.headers:
                raise RequestError(411, "send a Content-Length: the worker takes no Transfer-Encoding")
            length = self.headers.get("Content-Length")
            if length is None:
                return None
            if not (length.isascii() and length.isdigit()):
                raise RequestError(400, "Content-Length is not a number of bytes")
            limit = BODY_LIMITS.get((self.command, self.path), SMALL_BODY)
            if len(length) > 15 or int(length) > limit:  # int() of a 4300-digit text raises
                raise RequestError(413, f"{self.command} {self.path} takes at most {limit} bytes")
            data = self.rfile.read(int(length))
            if len(data) < int(length):
                raise RequestError(400, "the body ended before its Content-Length")
            return data

        def chunk_number(self, name: str, low: int, high: int) -> int | None:
            text = self.headers.get(name)
            if text is None:
                return None
            if not (text.isascii() and text.isdigit() and len(text) <= 9 and low <= int(text) <= high):
                raise RequestError(400, f"{name} must be a number from {low} to {high}")
            return int(text)

        def route(self) -> None:
            try:
                if not self.authorized():
                    raise RequestError(401, "missing or wrong bearer token")
                body = self.body()
            except RequestError as e:
                self.close_connection = True  # its body, if any, stays unread
                return self.reply(e.status, str(e))
            key = (self.command, self.path)
            try:
                if key == ("GET", "/start"):
                    return self.reply(200, worker.reserve())
                if key == ("GET", "/state"):
                    return self.reply(200, "BUSY" if worker.busy else "IDLE")
                if key == ("GET", "/contract"):
                    return self.reply(200, worker.contract())
                if not worker.busy:
                    return self.reply(500, "the worker is not reserved: GET /start first")
                if key == ("GET", "/heartbeat"):
                    return self.reply(200, worker.heartbeat())
                if key == ("POST", "/teardown"):
                    return self.reply(200, worker.teardown())
                if key == ("POST", "/dut/on"):
                    worker.board.power_on()
                    return self.reply(200, "OK")
                if key == ("POST", "/dut/off"):
                    worker.board.power_off()
                    return self.reply(200, "OK")
                if key == ("GET", "/dut/diagnostics"):
                    return self.reply(200, {})
                if key == ("POST", "/dut/network"):
                    return self.reply(200, "OK")  # user-mode networking with NAT is always on
                if key == ("GET", "/dut/ip"):
                    return self.reply(200, "10.0.2.15")
                if key == ("GET", "/dut/sendImage/chunkSize"):
                    return self.reply(200, {"chunkMiB": CHUNK_MIB})
                if key == ("POST", "/dut/sendImage"):
                    if body is None:
                        return self.reply(411, "Content-Length required")
                    index = self.chunk_number("x-chunk-index", 0, MAX_CHUNKS - 1)
                    total = self.chunk_number("x-total-chunks", 1, MAX_CHUNKS)
                    if (index is None) != (total is None) or (index or 0) >= (total or 1):
                        return self.reply(
                            400, "x-chunk-index and x-total-chunks come together, the index below the total"
                        )
                    return self.reply(200, worker.write_chunk(body, index, total))
                if key == ("POST", "/dut/flashImage"):
                    return self.reply(200, worker.flash())
                if key == ("GET", "/dut/flashState"):
                    return self.reply(200, worker.flash_state)
                if key == ("GET", "/dut/serial"):
                    return self.serial()
                if key == ("POST", "/dut/serial/exec"):
                    try:
                        cmd = json.loads(body or b"{}").get("cmd")
                    except (ValueError, AttributeError):
                        cmd = None
                    if not isinstance(cmd, str):
                        return self.reply(400, 'the body must be JSON {"cmd": "..."}')
                    return self.reply(200, worker.board.type_line(cmd))
                return self.reply(500, f"{self.command} {self.path} is not supported by the virtual worker")
            except RequestError as e:
                return self.reply(e.status, str(e))
            except Exception as e:
                return self.reply(500, str(e))

        def serial(self) -> None:
            """The serial log, or with `Range: bytes=N-` what it holds past byte N."""
            wanted = self.headers.get("Range", "")
            if not (wanted.startswith("bytes=") and wanted.endswith("-") and wanted[6:-1].isdigit()):
                return self.reply(200, worker.board.serial_since(0))
            offset = int(wanted[6:-1])
            data = worker.board.serial_since(offset)
            if not data:
                return self.reply(416, "nothing past that offset yet")
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {offset}-{offset + len(data) - 1}/*")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = route

        def log_message(self, format: str, *args: Any) -> None:
            # Escaped: what a client sends must not write raw control characters into the log.
            line = (format % args).encode("unicode_escape").decode("ascii")
            sys.stderr.write(f"virtual-worker: {line}\n")

    return Handler


class WorkerServer(ThreadingHTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS of them: one more is answered 503
    and closed, so idle or slow clients cannot take every thread. IPv6 where the host is."""

    daemon_threads = True
    request_queue_size = 2 * MAX_CONNECTIONS  # those beyond the cap are accepted to be told so

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            request.settimeout(1)
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()
