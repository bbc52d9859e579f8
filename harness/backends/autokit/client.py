"""Client for an autokit worker: the HTTP API (balena's Leviathan worker) in front of
one device under test. It speaks the API as the anchors describe it, so it works with
rigs that exist; errors come back from workers as HTTP 500 with the message as body.

Every failure to talk to the worker is a WorkerError, an infrastructure error (99):
a board that cannot be reserved or flashed says nothing about the OS under test.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from harness.errors import HarnessError

HEARTBEAT_INTERVAL = 30.0  # the worker's watchdog tears down after about 5 minutes of silence


class WorkerError(HarnessError):
    def __init__(self, what: str, fix: str = "", status: int | None = None) -> None:
        super().__init__(what, fix)
        self.status = status  # the HTTP status the worker answered, if it answered


@attrs.frozen
class Contract:
    uuid: str
    worker_type: str
    features: frozenset[str]


@attrs.frozen
class Retry:
    """How long to keep trying one thing: `attempts` tries, `delay` seconds apart."""

    attempts: int
    delay: float


class WorkerClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.sleep = sleep

    # -- HTTP ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        payload: object = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """One HTTP exchange; `payload` is sent as JSON. Returns the body of a 2xx answer."""
        return self.exchange(method, path, payload, body, headers, timeout)[1]

    def exchange(
        self,
        method: str,
        path: str,
        payload: object = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """request(), and the answer's status as well."""
        headers = dict(headers or {})
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                answer: bytes = response.read()
                return response.status, answer
        except urllib.error.HTTPError as e:
            message = e.read().decode(errors="replace").strip() or e.reason
            raise WorkerError(
                f"worker {self.url}: {method} {path} answered {e.code}: {message}",
                _fix_for_status(e.code),
                status=e.code,
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise WorkerError(
                f"worker {self.url} unreachable ({method} {path}): {reason}",
                "check that the worker runs and the URL (-Dautokit-worker / HARNESS_AUTOKIT_WORKER) is right",
            ) from None

    def text(self, method: str, path: str, **kw: Any) -> str:
        return self.request(method, path, **kw).decode(errors="replace").strip()

    def json(self, method: str, path: str, **kw: Any) -> Any:
        data = self.request(method, path, **kw)
        try:
            return json.loads(data or b"null")
        except ValueError:
            raise WorkerError(
                f"worker {self.url}: {method} {path} did not answer JSON: {data[:200]!r}"
            ) from None

    # -- reservation ----------------------------------------------------------------------

    def reserve(self, retry: Retry = Retry(attempts=60, delay=10.0)) -> None:
        """GET /start until the worker answers OK; BUSY means someone else holds it."""
        for attempt in range(retry.attempts):
            answer = self.text("GET", "/start")
            if answer == "OK":
                return
            if answer != "BUSY":
                raise WorkerError(f"worker {self.url}: /start answered {answer!r}, expected OK or BUSY")
            if attempt + 1 < retry.attempts:
                self.sleep(retry.delay)
        raise WorkerError(
            f"worker {self.url} stayed BUSY for {retry.attempts} tries",
            "another run holds it: wait, or tear it down (POST /teardown) if that run is gone",
        )

    def heartbeat(self) -> None:
        self.text("GET", "/heartbeat")

    def state(self) -> str:
        return self.text("GET", "/state")

    def teardown(self) -> None:
        self.text("POST", "/teardown")

    @contextlib.contextmanager
    def reserved(
        self, retry: Retry = Retry(attempts=60, delay=10.0), interval: float = HEARTBEAT_INTERVAL
    ) -> Iterator[WorkerClient]:
        """Hold the worker for the block: heartbeats keep it, teardown releases it on
        every way out of the block (errors and Ctrl-C included)."""
        self.reserve(retry)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                with contextlib.suppress(WorkerError):
                    self.heartbeat()

        thread = threading.Thread(target=beat, name="autokit-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)
            with contextlib.suppress(WorkerError):
                self.teardown()

    # -- the device -----------------------------------------------------------------------

    def contract(self) -> Contract:
        c = self.json("GET", "/contract")
        if not isinstance(c, dict):
            raise WorkerError(f"worker {self.url}: /contract is not a JSON object")
        return Contract(
            str(c.get("uuid", "")),
            str(c.get("workerType", "")),
            frozenset(str(f) for f in c.get("supportedFeatures", [])),
        )

    def network(self, wired_nat: bool = True, wireless: dict[str, str] | None = None) -> None:
        payload = {"wireless": wireless} if wireless else {"wired": {"nat": wired_nat}}
        self.text("POST", "/dut/network", payload=payload)

    def ip(self, target: str) -> str:
        return self.text("GET", "/dut/ip", payload={"target": target})

    def power_on(self) -> None:
        # The worker streams progress and ends with OK; a slow board takes minutes.
        answer = self.text("POST", "/dut/on", timeout=600)
        if not answer.endswith("OK"):
            raise WorkerError(f"worker {self.url}: /dut/on ended with {answer[-200:]!r}")

    def power_off(self) -> None:
        self.text("POST", "/dut/off")

    def serial(self) -> bytes:
        return self.request("GET", "/dut/serial")

    def serial_since(self, offset: int) -> bytes:
        """What the serial log holds past its first `offset` bytes. Asked for with a Range,
        which a worker may ignore and send the whole log: then the start is cut off here."""
        if offset == 0:
            return self.serial()
        try:
            status, data = self.exchange("GET", "/dut/serial", headers={"Range": f"bytes={offset}-"})
        except WorkerError as e:
            if e.status == 416:  # nothing past `offset` yet
                return b""
            raise
        return data if status == 206 else data[offset:]

    def serial_exec(self, cmd: str) -> str:
        """Type `cmd` and a newline on the board's console. The worker answers once the
        board has read it all, at the console's pace: a second per kilobyte is allowed (a
        115200-baud UART takes 11 KB a second; a loaded virtual board fewer)."""
        timeout = self.timeout + len(cmd) / 1000
        return self.request("POST", "/dut/serial/exec", payload={"cmd": cmd}, timeout=timeout).decode(
            errors="replace"
        )

    def keyboard(self, key: str) -> None:
        self.text("POST", "/dut/keyboard", payload={"key": key})

    def diagnostics(self) -> dict[str, Any]:
        d = self.json("GET", "/dut/diagnostics")
        return d if isinstance(d, dict) else {}

    def start_capture(self) -> None:
        self.request("POST", "/dut/capture")

    def stop_capture(self) -> bytes:
        """A tar.gz of the JPEG frames captured since start_capture."""
        return self.request("GET", "/dut/capture", timeout=300)

    # -- flashing -------------------------------------------------------------------------

    def chunk_size(self) -> int:
        answer = self.json("GET", "/dut/sendImage/chunkSize")
        mib = answer.get("chunkMiB") if isinstance(answer, dict) else None
        if not isinstance(mib, (int, float)) or mib <= 0:
            raise WorkerError(f"worker {self.url}: bad chunk size answer {answer!r}")
        return int(mib * 1024 * 1024)

    def send_image(self, gzipped: BinaryIO, size: int, resend: Retry = Retry(attempts=3, delay=2.0)) -> None:
        """Upload a gzipped image in chunks; a chunk that fails is sent again (the worker
        writes each at index * chunk size, so a repeat is harmless)."""
        chunk = self.chunk_size()
        total = max(1, math.ceil(size / chunk))
        for index in range(total):
            gzipped.seek(index * chunk)
            data = gzipped.read(chunk)
            headers = {
                "x-chunk-index": str(index),
                "x-total-chunks": str(total),
                "Content-Length": str(len(data)),
                "Content-Type": "application/octet-stream",
            }
            for attempt in range(resend.attempts):
                try:
                    answer = self.text("POST", "/dut/sendImage", body=data, headers=headers, timeout=600)
                    if answer in ("CHUNK_OK", "OK"):
                        break
                    error = WorkerError(f"worker {self.url}: chunk {index + 1}/{total} answered {answer!r}")
                except WorkerError as e:
                    error = e
                if attempt + 1 == resend.attempts:
                    raise error
                self.sleep(resend.delay)

    def flash(self, poll: float = 5.0, flash_retry: int = 3) -> None:
        """POST /dut/flashImage, then poll /dut/flashState; ERROR means flash again."""
        for _ in range(flash_retry):
            answer = self.json("POST", "/dut/flashImage")
            tries = int(answer.get("timeoutTries", 60)) if isinstance(answer, dict) else 60
            for _ in range(tries):
                state = self.text("GET", "/dut/flashState")
                if state == "DONE":
                    return
                if state == "ERROR":
                    break
                if state not in ("PENDING", "IDLE"):
                    raise WorkerError(f"worker {self.url}: unknown flash state {state!r}")
                self.sleep(poll)
            else:
                raise WorkerError(
                    f"worker {self.url}: flashing did not finish in {tries} polls",
                    "check the worker's SD mux and storage",
                )
        raise WorkerError(
            f"worker {self.url}: flashing failed {flash_retry} times (flashState ERROR)",
            "check the worker's SD mux, the card, and the worker's log",
        )

    def upload_and_flash(self, image: Path, workdir: Path, poll: float = 5.0) -> None:
        gz = workdir / (image.name + ".gz")
        with image.open("rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        with gz.open("rb") as f:
            self.send_image(f, gz.stat().st_size)
        gz.unlink()
        self.flash(poll=poll)


def _fix_for_status(code: int) -> str:
    if code in (401, 403):
        return "the worker wants a token: set HARNESS_AUTOKIT_TOKEN_FILE to a file holding it (or HARNESS_AUTOKIT_TOKEN)"
    if code == 411:
        return "the worker needs a Content-Length on every chunk (a proxy may have removed it)"
    return "see the worker's log; the run released the worker"
