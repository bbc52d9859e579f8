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
        pytest.fail(
            f"no image at {IMAGE}: build it with 'meson compile -C build mkosi' (or set HARNESS_IMAGE)"
        )
    return IMAGE


@pytest.fixture
def worker(tmp_path):
    port = free_port()
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.backends.autokit.virtual_worker",
            f"--listen=127.0.0.1:{port}",
            f"--state-dir={tmp_path / 'worker'}",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), HARNESS_AUTOKIT_TOKEN=TOKEN),
    )
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
    return dict(
        wrapper_env(), HARNESS_BACKEND="autokit", HARNESS_AUTOKIT_WORKER=url, HARNESS_AUTOKIT_TOKEN=TOKEN
    )


def run_on_board(image, tmp_path, url, name, *args, timeout=900):
    r = subprocess.run(
        wrapper_cmd(image, tmp_path, name, *args),
        cwd=ROOT,
        env=board_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(r.stdout, r.stderr)
    return r


def test_failing_guest_fails_on_a_board(image, tmp_path, worker):
    r = run_on_board(
        image,
        tmp_path,
        worker.url,
        "TEST-80-BOARD-FAILS",
        "--command=/bin/sh -c 'echo failing on the board; exit 3'",
        "--timeout=600",
        "--timeout-factor=1",
    )
    assert r.returncode == 1
    assert (
        "TEST-80-BOARD-FAILS: FAIL: TEST-80-BOARD-FAILS failed with exit status 3 (expected 123)" in r.stdout
    )
    assert "failing on the board" in (tmp_path / "logs" / "console.log").read_text(errors="replace")
    assert harness_leftovers("TEST-80-BOARD-FAILS") == ([], [])


def test_worker_that_disappears_mid_test_is_an_infrastructure_error(image, tmp_path, worker):
    proc = subprocess.Popen(
        wrapper_cmd(
            image, tmp_path, "TEST-81-GONE", "--command=sleep infinity", "--timeout=600", "--timeout-factor=1"
        ),
        cwd=ROOT,
        env=board_env(worker.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
    script = {
        ("GET", "/start"): [(200, b"OK")],
        ("GET", "/heartbeat"): [(200, b"OK")],
        ("GET", "/contract"): [
            (200, {"uuid": "rig-2", "workerType": "autokit", "supportedFeatures": ["dut"]})
        ],
        ("POST", "/teardown"): [(200, b"OK")],
        ("POST", "/dut/network"): [(200, b"OK")],
        ("GET", "/dut/sendImage/chunkSize"): [(200, {"chunkMiB": 40})],
        ("POST", "/dut/sendImage"): [(200, b"CHUNK_OK")],
        ("POST", "/dut/flashImage"): [(500, b"SD mux did not switch")],
        ("POST", "/dut/off"): [(200, b"OK")],
    }
    with StubWorker(script) as stub:
        r = run_on_board(image, tmp_path, stub.url, "TEST-82-BROKEN-RIG", timeout=600)
        assert r.returncode == 99
        assert "answered 500: SD mux did not switch" in r.stderr
        assert stub.paths()[-1] == "/teardown"
    assert harness_leftovers("TEST-82-BROKEN-RIG") == ([], [])


def test_board_flow_against_a_stub_rig_keeps_serial_frames_and_diagnostics(image, tmp_path):
    serial = (
        b"BdsDxe: booting\r\nHARNESS_NOTIFY READY=1\r\ntest output\r\n"
        b"HARNESS_NOTIFY X_HARNESS_SERVICE_RESULT=success\r\nHARNESS_NOTIFY X_HARNESS_EXIT_CODE=exited\r\n"
        b"HARNESS_NOTIFY X_HARNESS_EXIT_STATUS=0\r\n"
    )
    script = {
        ("GET", "/start"): [(200, b"OK")],
        ("GET", "/heartbeat"): [(200, b"OK")],
        ("GET", "/contract"): [
            (200, {"uuid": "rig-1", "workerType": "autokit", "supportedFeatures": ["dut", "screencapture"]})
        ],
        ("POST", "/dut/network"): [(200, b"OK")],
        ("GET", "/dut/sendImage/chunkSize"): [(200, {"chunkMiB": 40})],
        ("POST", "/dut/sendImage"): [(200, b"CHUNK_OK")],
        ("POST", "/dut/flashImage"): [(200, {"timeoutTries": 5})],
        ("GET", "/dut/flashState"): [(200, b"DONE")],
        ("POST", "/dut/capture"): [(200, b"OK")],
        ("GET", "/dut/capture"): [(200, b"\x1f\x8bframes")],
        ("POST", "/dut/on"): [(200, b"OK")],
        ("POST", "/dut/off"): [(200, b"OK")],
        ("GET", "/dut/serial"): [(200, serial)],
        ("GET", "/dut/diagnostics"): [(200, {"current": 0.8})],
        ("POST", "/teardown"): [(200, b"OK")],
    }
    with StubWorker(script) as stub:
        r = run_on_board(image, tmp_path, stub.url, "TEST-83-STUB-RIG", timeout=600)
        calls = [
            p
            for p in stub.paths()
            if p not in ("/heartbeat", "/dut/sendImage", "/dut/flashState", "/dut/serial")
        ]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TEST-83-STUB-RIG: PASS" in r.stdout
    assert calls == [
        "/start",
        "/contract",
        "/dut/network",
        "/dut/sendImage/chunkSize",
        "/dut/flashImage",
        "/dut/capture",
        "/dut/on",
        "/dut/off",
        "/dut/capture",
        "/dut/diagnostics",
        "/teardown",
    ]
    logs = tmp_path / "logs"
    assert b"test output" in (logs / "console.log").read_bytes()
    assert (logs / "frames.tar.gz").read_bytes() == b"\x1f\x8bframes"
    assert '"current": 0.8' in (logs / "diagnostics.json").read_text()
