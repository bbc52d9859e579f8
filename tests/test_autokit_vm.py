"""End to end through the hardware path: the wrapper, the autokit backend, and the
virtual worker with its QEMU board (or a stub worker where the point is a broken one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from test_autokit_client import StubWorker
from test_vm import IMAGE, ROOT, harness_leftovers, wrapper_cmd, wrapper_env

pytestmark = pytest.mark.vm
TOKEN = "e2e-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def image():
    if not IMAGE.is_file():
        pytest.fail(f"no image at {IMAGE}: build it with 'meson compile -C build mkosi' (or set HARNESS_IMAGE)")
    return IMAGE


@pytest.fixture
def worker(tmp_path):
    port = free_port()
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "harness.virtual_worker", f"--listen=127.0.0.1:{port}",
                             f"--state-dir={tmp_path / 'worker'}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), HARNESS_AUTOKIT_TOKEN=TOKEN))
    deadline = time.monotonic() + 20
    while "listening" not in (tmp_path / "worker.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.url = f"http://127.0.0.1:{port}"
    proc.log = tmp_path / "worker.log"
    yield proc
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    board = subprocess.run(["pgrep", "-af", str(tmp_path / "worker")], capture_output=True, text=True).stdout
    assert "qemu-system" not in board, "the virtual worker left its board running"


def board_env(url: str) -> dict[str, str]:
    return dict(wrapper_env(), HARNESS_BACKEND="autokit", HARNESS_AUTOKIT_WORKER=url, HARNESS_AUTOKIT_TOKEN=TOKEN)


def run_on_board(image, tmp_path, url, name, *args, timeout=900):
    r = subprocess.run(wrapper_cmd(image, tmp_path, name, *args), cwd=ROOT, env=board_env(url),
                       capture_output=True, text=True, timeout=timeout)
    print(r.stdout, r.stderr)
    return r


def test_failing_guest_fails_on_a_board(image, tmp_path, worker):
    r = run_on_board(image, tmp_path, worker.url, "TEST-80-BOARD-FAILS",
                     "--unit-command=/bin/sh -c 'echo failing on the board; exit 3'", "--timeout=600", "--timeout-factor=1")
    assert r.returncode == 1
    assert "TEST-80-BOARD-FAILS: FAIL: TEST-80-BOARD-FAILS failed with exit status 3 (expected 123)" in r.stdout
    assert "failing on the board" in (tmp_path / "logs" / "console.log").read_text(errors="replace")
    assert harness_leftovers("TEST-80-BOARD-FAILS") == ([], [])


def test_worker_that_disappears_mid_test_is_an_infrastructure_error(image, tmp_path, worker):
    proc = subprocess.Popen(wrapper_cmd(image, tmp_path, "TEST-81-GONE", "--unit-command=sleep infinity",
                                        "--timeout=600", "--timeout-factor=1"),
                            cwd=ROOT, env=board_env(worker.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while "POST /dut/on" not in worker.log.read_text() and time.monotonic() < deadline:
            time.sleep(1)
        assert "POST /dut/on" in worker.log.read_text(), "the board was never powered on"
        worker.send_signal(signal.SIGTERM)  # the worker goes away, and takes its board with it
        started = time.monotonic()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    print(out)
    assert proc.returncode == 99
    assert "unreachable" in out
    assert time.monotonic() - started < 120
    assert harness_leftovers("TEST-81-GONE") == ([], [])


def test_worker_answering_500_is_an_infrastructure_error_and_is_released(image, tmp_path):
    script = {("GET", "/start"): [(200, b"OK")], ("GET", "/heartbeat"): [(200, b"OK")],
              ("POST", "/teardown"): [(200, b"OK")], ("POST", "/dut/network"): [(200, b"OK")],
              ("GET", "/dut/sendImage/chunkSize"): [(200, {"chunkMiB": 40})],
              ("POST", "/dut/sendImage"): [(200, b"CHUNK_OK")],
              ("POST", "/dut/flashImage"): [(500, b"SD mux did not switch")],
              ("POST", "/dut/off"): [(200, b"OK")]}
    with StubWorker(script) as stub:
        r = run_on_board(image, tmp_path, stub.url, "TEST-82-BROKEN-RIG", timeout=600)
        assert r.returncode == 99
        assert "answered 500: SD mux did not switch" in r.stderr
        assert stub.paths()[-1] == "/teardown"
    assert harness_leftovers("TEST-82-BROKEN-RIG") == ([], [])
