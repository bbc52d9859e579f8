"""End to end through the hardware path: the wrapper, the autokit backend, and the
virtual worker with its QEMU board (or a stub worker where the point is a broken one)."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time

import pytest

from tests.e2e import (
    ROOT,
    board_env,
    harness_leftovers,
    meson_project,
    meson_setup,
    meson_test_suite,
    run_on_board,
    start_wrapper,
    wait_until,
)
from tests.stub_worker import StubScript, StubWorker

pytestmark = pytest.mark.vm


def test_worker_that_disappears_mid_test_is_an_infrastructure_error(image, tmp_path, worker_process):
    worker = worker_process
    proc = start_wrapper(
        image,
        tmp_path,
        "TEST-81-GONE",
        "--command=sleep infinity",
        "--timeout=600",
        "--timeout-factor=1",
        env=board_env(worker.url),
    )
    try:
        wait_until(lambda: "POST /dut/on" in worker.log.read_text(), 300, "the board was never powered on", 1)
        # The worker dies without a word (SIGKILL: no teardown runs) and takes its board with
        # it: the board was started with a parent-death signal (the fixture checks).
        worker.send_signal(signal.SIGKILL)
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
    script: StubScript = {
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
        r = run_on_board(image, tmp_path, stub.url, "TEST-82-BROKEN-RIG")
        assert r.returncode == 99
        assert "answered 500: SD mux did not switch" in r.stderr
        assert stub.paths()[-1] == "/teardown"
    assert harness_leftovers("TEST-82-BROKEN-RIG") == ([], [])


PASSING_SERIAL = (
    b"BdsDxe: booting\r\nHARNESS_NOTIFY READY=1\r\ntest output\r\n"
    b"HARNESS_NOTIFY X_HARNESS_SERVICE_RESULT=success\r\nHARNESS_NOTIFY X_HARNESS_EXIT_CODE=exited\r\n"
    b"HARNESS_NOTIFY X_HARNESS_EXIT_STATUS=0\r\n"
)


def stub_rig(serial: bytes = PASSING_SERIAL) -> StubScript:
    """A rig that takes the image, boots, and shows `serial` on the console."""
    return {
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


def test_board_flow_against_a_stub_rig_keeps_serial_frames_and_diagnostics(image, tmp_path):
    script = stub_rig()
    with StubWorker(script) as stub:
        r = run_on_board(image, tmp_path, stub.url, "TEST-83-STUB-RIG")
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


def test_meson_test_with_the_token_from_a_file_leaves_it_in_no_file_and_no_output(image, tmp_path):
    token = "tok-" + secrets.token_hex(16)
    token_file = tmp_path / "worker-token"
    token_file.write_text(token + "\r\n")  # a file saved with CRLF: the line end is dropped
    with StubWorker(stub_rig()) as stub:
        project = meson_project(tmp_path / "project")
        shutil.copytree(ROOT / "test" / "TEST-01-BASIC", project / "test" / "TEST-01-BASIC")
        build, env = meson_setup(
            project,
            "-Dtest-backend=autokit",
            f"-Dautokit-worker={stub.url}",
            HARNESS_AUTOKIT_TOKEN_FILE=str(token_file),
        )
        env.pop("HARNESS_AUTOKIT_TOKEN", None)
        r = meson_test_suite(project, build, env)
        sent = {headers.get("Authorization") for _, _, headers, _ in stub.requests}
    assert r.returncode == 0, r.stdout + r.stderr
    assert sent == {f"Bearer {token}"}
    assert token not in r.stdout + r.stderr
    leaks = subprocess.run(["grep", "-rlF", "--", token, str(build)], capture_output=True, text=True).stdout
    assert not leaks, f"the token is in {leaks}"
