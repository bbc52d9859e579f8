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
import faulthandler
import os
import secrets
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs

from harness.backends.autokit.virtual_board import VirtualBoard
from harness.backends.autokit.worker_api import CHUNK_MIB, IDLE_SECONDS, WorkerServer, make_handler
from harness.errors import HarnessError
from harness.settings import Settings

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

    def __init__(
        self, state_dir: Path, token: str, settings: Settings, watchdog: float = WATCHDOG_SECONDS
    ) -> None:
        self.dir = state_dir
        self.token = token
        self.watchdog_seconds = watchdog
        self.board = VirtualBoard(state_dir, settings)
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


def serve(
    host: str,
    port: int,
    state_dir: Path,
    token: str,
    settings: Settings,
    ready: Callable[[ThreadingHTTPServer], None] | None = None,
    idle_timeout: float = IDLE_SECONDS,
) -> None:
    worker = VirtualWorker(state_dir, token, settings)
    server = WorkerServer((host, port), make_handler(worker, idle_timeout))
    if ready:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        worker.teardown()
        server.server_close()


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT, or PORT alone on 127.0.0.1 (never every interface unasked)."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without its brackets: its last group would be the port
        port = ""
    if not colon:
        host = "127.0.0.1"
    if not (host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise SystemExit(f"virtual-worker: --listen {text!r}: give HOST:PORT, [IPV6]:PORT or PORT")
    return host, int(port)


def new_token_file(path: Path) -> str:
    """A new token in `path`, made 0600 from the start and put in place by rename: a file
    or symlink already there is replaced, never written through."""
    token = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m harness.backends.autokit.virtual_worker", description=__doc__.splitlines()[0]
    )
    p.add_argument("--listen", default="127.0.0.1:8123", help="HOST:PORT, [IPV6]:PORT or PORT (on 127.0.0.1)")
    p.add_argument("--state-dir", default=None, help="where the board's disk and logs live")
    p.add_argument(
        "--token-file", help="file holding the bearer token (default: $HARNESS_AUTOKIT_TOKEN, else a new one)"
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_SECONDS,
        help=f"close a connection silent this many seconds (default {IDLE_SECONDS:g})",
    )
    args = p.parse_args(argv)
    host, port = listen_address(args.listen)
    try:  # the board's QEMU, acceleration and vCPUs, as for a test's VM
        settings = Settings.from_environment(os.environ)
    except HarnessError as e:
        p.error(str(e))
    state_dir = Path(
        args.state_dir or Path(os.environ.get("XDG_STATE_HOME", "/var/tmp")) / "harness-virtual-worker"
    )
    # The uploads, the board's disk and its logs hold the test's credentials: the user's only.
    os.umask(0o077)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    elif settings.autokit_token:
        token = settings.autokit_token.strip()
    else:
        token = new_token_file(state_dir / "token")
        print(f"virtual-worker: token written to {state_dir / 'token'}", flush=True)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack: why it hangs

    def ready(server: ThreadingHTTPServer) -> None:
        # SIGTERM asks the loop to stop: an exception raised wherever the main thread happens
        # to be (starting a thread, holding a lock) could leave the exit waiting. shutdown()
        # blocks until the loop ends, so it is called from a thread of its own.
        signal.signal(
            signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()
        )
        where = f"[{host}]" if ":" in host else host
        print(
            f"virtual-worker: listening on http://{where}:{server.server_address[1]}, state in {state_dir}",
            flush=True,
        )

    serve(host, port, state_dir, token, settings, ready, args.idle_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
