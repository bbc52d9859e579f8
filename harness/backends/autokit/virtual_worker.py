"""A virtual autokit worker: the worker HTTP API in front of a QEMU "board".

    HARNESS_AUTOKIT_TOKEN=secret python3 -m harness.backends.autokit.virtual_worker --listen 127.0.0.1:8123

lets people without a rig, and our own tests, run the hardware path. The board boots
UEFI from a disk that flashing writes, logs its serial console to a file (one log from
flashing on, across power cycles, served from an offset with a Range), takes typed lines
on its console (POST /dut/serial/exec), and is powered by starting and stopping QEMU
(virtual_board.py). Unlike upstream workers it requires a bearer token, and it answers
BUSY to a second reservation while one is held.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs

from harness.backends.autokit.virtual_board import VirtualBoard

CHUNK_MIB = 40
WATCHDOG_SECONDS = 300.0


@attrs.define
class UploadParts:
    """Which chunks of the upload in progress have arrived."""

    total: int | None = None  # x-total-chunks of the upload; None before the first chunk
    received: set[int] = attrs.Factory(set)
    size: int | None = None  # known once the last chunk arrived
    flashed: bool = False

    def check(self) -> None:
        if self.total is None:
            raise RuntimeError("nothing uploaded: POST /dut/sendImage first")
        missing = sorted(set(range(self.total)) - self.received)
        if missing:
            raise RuntimeError(
                f"chunks missing from the upload: {', '.join(map(str, missing))} of {self.total}"
            )


class VirtualWorker:
    """The worker's state: reservation, watchdog, uploads and flashing."""

    def __init__(self, state_dir: Path, token: str, watchdog: float = WATCHDOG_SECONDS) -> None:
        self.dir = state_dir
        self.token = token
        self.watchdog_seconds = watchdog
        self.board = VirtualBoard(state_dir)
        self.upload = state_dir / "upload.gz"
        self.upload_parts = UploadParts()
        self.lock = threading.Lock()
        self._flashing: threading.Thread | None = None
        self.busy = False
        self.flash_state = "IDLE"
        self.watchdog: threading.Timer | None = None
        self.uuid = str(uuid.uuid4())

    def reserve(self) -> str:
        with self.lock:
            if self.busy:
                return "BUSY"
            self.busy = True
        self.heartbeat()
        return "OK"

    def heartbeat(self) -> str:
        if self.watchdog:
            self.watchdog.cancel()
        self.watchdog = threading.Timer(self.watchdog_seconds, self.teardown)
        self.watchdog.daemon = True
        self.watchdog.start()
        return "OK"

    def teardown(self) -> str:
        if self.watchdog:
            self.watchdog.cancel()
        self.board.power_off()
        self.upload.unlink(missing_ok=True)
        self.upload_parts = UploadParts()
        with self.lock:
            self.busy = False
            self.flash_state = "IDLE"
        return "OK"

    def write_chunk(self, body: bytes, index: int | None, total: int | None) -> str:
        """Each chunk lands at its own offset, in whatever order and as often as it comes,
        as upstream workers write them: a resent chunk is harmless."""
        if index is None:
            self.upload.write_bytes(body)
            self.upload_parts = UploadParts(total=1, received={0}, size=len(body))
            return "OK"
        if total != self.upload_parts.total or self.upload_parts.flashed:  # a new upload begins
            self.upload.unlink(missing_ok=True)
            self.upload_parts = UploadParts(total=total)
        offset = index * CHUNK_MIB * 1024 * 1024
        with self.upload.open("r+b" if self.upload.exists() else "w+b") as f:
            f.seek(offset)
            f.write(body)
        self.upload_parts.received.add(index)
        if total is not None and index == total - 1:
            self.upload_parts.size = offset + len(body)
        return "CHUNK_OK"

    def flash(self) -> dict[str, Any]:
        self.flash_state = "PENDING"
        parts = self.upload_parts
        parts.flashed = True  # a flash again (after ERROR) takes this upload; a chunk begins the next

        def run() -> None:
            try:
                parts.check()
                with self.upload.open("r+b") as f:
                    f.truncate(parts.size)  # an earlier, longer upload leaves nothing behind
                self.board.write_disk(self.upload)
                self.flash_state = "DONE"
            except Exception as e:  # reported through flashState, as upstream does
                (self.dir / "flash.error").write_text(f"{e}\n")
                self.flash_state = "ERROR"

        self._flashing = threading.Thread(target=run, daemon=True)
        self._flashing.start()
        return {"timeoutTries": 60}

    def wait_for_flash(self, timeout: float) -> None:
        """Until the flash in progress has ended (for tests: no poll budget to race)."""
        if self._flashing is not None:
            self._flashing.join(timeout)

    def contract(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "workerType": "qemu", "supportedFeatures": ["dut", "uefi", "serial"]}


def make_handler(worker: VirtualWorker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status: int, body: bytes | str | dict[str, Any]) -> None:
            data = (
                body
                if isinstance(body, bytes)
                else (json.dumps(body) if isinstance(body, dict) else body).encode()
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(), f"Bearer {worker.token}".encode())

        def body(self) -> bytes | None:
            length = self.headers.get("Content-Length")
            return self.rfile.read(int(length)) if length is not None else None

        def route(self) -> None:
            if not self.authorized():
                self.body()
                return self.reply(401, "missing or wrong bearer token")
            body = self.body()
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
                    index = self.headers.get("x-chunk-index")
                    total = self.headers.get("x-total-chunks")
                    return self.reply(
                        200,
                        worker.write_chunk(
                            body, None if index is None else int(index), None if total is None else int(total)
                        ),
                    )
                if key == ("POST", "/dut/flashImage"):
                    return self.reply(200, worker.flash())
                if key == ("GET", "/dut/flashState"):
                    return self.reply(200, worker.flash_state)
                if key == ("GET", "/dut/serial"):
                    return self.serial()
                if key == ("POST", "/dut/serial/exec"):
                    cmd = json.loads(body or b"{}").get("cmd")
                    if not isinstance(cmd, str):
                        return self.reply(400, 'the body must be JSON {"cmd": "..."}')
                    return self.reply(200, worker.board.type_line(cmd))
                return self.reply(500, f"{self.command} {self.path} is not supported by the virtual worker")
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
            sys.stderr.write(
                f"virtual-worker: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n"
            )

    return Handler


def serve(
    host: str,
    port: int,
    state_dir: Path,
    token: str,
    ready: Callable[[ThreadingHTTPServer], None] | None = None,
) -> None:
    worker = VirtualWorker(state_dir, token)
    server = ThreadingHTTPServer((host, port), make_handler(worker))
    server.daemon_threads = True
    if ready:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        worker.teardown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m harness.backends.autokit.virtual_worker", description=__doc__.splitlines()[0]
    )
    p.add_argument("--listen", default="127.0.0.1:8123", help="HOST:PORT (default 127.0.0.1:8123)")
    p.add_argument("--state-dir", default=None, help="where the board's disk and logs live")
    p.add_argument(
        "--token-file", help="file holding the bearer token (default: $HARNESS_AUTOKIT_TOKEN, else a new one)"
    )
    o = p.parse_args(argv)
    host, _, port = o.listen.rpartition(":")
    state_dir = Path(
        o.state_dir or Path(os.environ.get("XDG_STATE_HOME", "/var/tmp")) / "harness-virtual-worker"
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    if o.token_file:
        token = Path(o.token_file).read_text().strip()
    elif os.environ.get("HARNESS_AUTOKIT_TOKEN"):
        token = os.environ["HARNESS_AUTOKIT_TOKEN"].strip()
    else:
        token = secrets.token_urlsafe(24)
        token_file = state_dir / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        print(f"virtual-worker: token written to {token_file}", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))

    def ready(server: ThreadingHTTPServer) -> None:
        print(
            f"virtual-worker: listening on http://{host}:{server.server_address[1]}, state in {state_dir}",
            flush=True,
        )

    serve(host, int(port), state_dir, token, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
