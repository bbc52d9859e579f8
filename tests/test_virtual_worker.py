"""The virtual worker's API, driven by the real client (no board is powered on here)."""

from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.backends.autokit.client import Retry, WorkerClient, WorkerError
from harness.backends.autokit.virtual_worker import VirtualWorker
from harness.backends.autokit.worker_api import make_handler
from harness.settings import Settings

TOKEN = "test-token"


class ServedWorker(VirtualWorker):
    """A virtual worker, and where its API listens."""

    url: str


@pytest.fixture
def worker(tmp_path):
    w = ServedWorker(tmp_path, TOKEN, Settings.from_environment({}), watchdog=60)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(w))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    w.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield w
    server.shutdown()
    server.server_close()
    w.teardown()


def client(w: ServedWorker, token: str | None = TOKEN) -> WorkerClient:
    return WorkerClient(w.url, token=token, sleep=lambda s: None)


def flashing_client(w: ServedWorker) -> WorkerClient:
    """A client whose wait between flashState polls lasts until the worker's flash has
    ended: no poll budget to race on a loaded machine."""
    return WorkerClient(w.url, token=TOKEN, sleep=lambda s: w.wait_for_flash(timeout=120))


@pytest.mark.parametrize("token", [None, "wrong"])
def test_requires_the_bearer_token(worker, token):
    with pytest.raises(WorkerError, match="401: missing or wrong bearer token"):
        client(worker, token).reserve(Retry(1, 0))
    assert not worker.busy


def test_second_reservation_is_refused_while_one_is_held(worker):
    first, second = client(worker), client(worker)
    first.reserve(Retry(1, 0))
    with pytest.raises(WorkerError, match="stayed BUSY"):
        second.reserve(Retry(2, 0))
    first.teardown()
    second.reserve(Retry(1, 0))
    assert second.state() == "BUSY"


def test_device_endpoints_need_a_reservation(worker):
    with pytest.raises(WorkerError, match="not reserved"):
        client(worker).power_on()


def test_upload_and_flash_write_the_disk_exactly(worker, tmp_path):
    image = tmp_path / "image.raw"
    image.write_bytes(bytes(range(256)) * 4096)
    c = flashing_client(worker)
    with c.reserved():
        c.upload_and_flash(image, tmp_path, poll=0.05)
        assert worker.board.disk.read_bytes() == image.read_bytes()
        assert worker.board.nvram.exists()
    assert client(worker).state() == "IDLE"


def test_broken_image_gives_flash_state_error(worker, tmp_path):
    c = flashing_client(worker)
    c.reserve(Retry(1, 0))
    with open(__file__, "rb") as f:
        c.send_image(f, 100)  # not gzip: the worker cannot write it
    with pytest.raises(WorkerError, match="flashState ERROR"):
        c.flash(poll=0.05)


def test_chunk_without_length_is_refused(worker):
    c = client(worker)
    c.reserve(Retry(1, 0))
    import http.client

    conn = http.client.HTTPConnection(worker.url.removeprefix("http://"))
    conn.putrequest("POST", "/dut/sendImage")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.endheaders()
    assert conn.getresponse().status == 411


def test_watchdog_releases_a_silent_reservation(worker):
    worker.watchdog_seconds = 0.2
    client(worker).reserve(Retry(1, 0))
    time.sleep(0.6)
    assert client(worker).state() == "IDLE"


def send_chunks(c, gz: bytes, order, chunk: int):
    total = -(-len(gz) // chunk)
    for index in order:
        data = gz[index * chunk : (index + 1) * chunk]
        headers = {
            "x-chunk-index": str(index),
            "x-total-chunks": str(total),
            "Content-Length": str(len(data)),
        }
        assert c.text("POST", "/dut/sendImage", body=data, headers=headers) == "CHUNK_OK"
    return total


@pytest.fixture
def small_chunks(monkeypatch):
    import harness.backends.autokit.virtual_worker as vw

    monkeypatch.setattr(vw, "CHUNK_MIB", 1)
    return 1 << 20


def gzipped_image(tmp_path: Path, size: int = 3 << 20) -> tuple[bytes, bytes]:
    import gzip
    import os

    raw = os.urandom(size)  # incompressible: the upload spans several chunks
    return raw, gzip.compress(raw, compresslevel=1)


def test_chunk_0_resent_after_the_last_still_flashes(worker, tmp_path, small_chunks):
    raw, gz = gzipped_image(tmp_path)
    c = flashing_client(worker)
    c.reserve(Retry(1, 0))
    total = send_chunks(c, gz, [0, 1, 2, 3], small_chunks)
    assert total == 4
    send_chunks(c, gz, [0], small_chunks)  # resent at the end, as a retry would
    c.flash(poll=0.01)
    assert worker.board.disk.read_bytes() == raw


def test_chunks_out_of_order_and_twice_are_harmless(worker, tmp_path, small_chunks):
    raw, gz = gzipped_image(tmp_path)
    c = flashing_client(worker)
    c.reserve(Retry(1, 0))
    send_chunks(c, gz, [3, 1, 1, 0, 2, 3], small_chunks)
    c.flash(poll=0.01)
    assert worker.board.disk.read_bytes() == raw


def test_a_missing_chunk_is_named(worker, tmp_path, small_chunks):
    _, gz = gzipped_image(tmp_path)
    c = flashing_client(worker)
    c.reserve(Retry(1, 0))
    send_chunks(c, gz, [0, 2, 3], small_chunks)
    with pytest.raises(WorkerError, match="flashState ERROR"):
        c.flash(poll=0.01, flash_retry=1)
    assert (tmp_path / "flash.error").read_text() == "chunks missing from the upload: 1 of 4\n"


def test_a_shorter_upload_after_a_longer_one_flashes_only_itself(worker, tmp_path, small_chunks):
    c = flashing_client(worker)
    c.reserve(Retry(1, 0))
    _, long_gz = gzipped_image(tmp_path, 5 << 20)
    send_chunks(c, long_gz, range(6), small_chunks)
    c.flash(poll=0.01)
    raw, gz = gzipped_image(tmp_path, 2 << 20)
    send_chunks(c, gz, range(3), small_chunks)
    c.flash(poll=0.01)
    assert worker.board.disk.read_bytes() == raw
