"""The worker client against a scripted stub worker on loopback, endpoint by endpoint."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import threading

import pytest

from harness.backends import bearer_token
from harness.backends.autokit.client import Retry, WorkerClient, WorkerError
from harness.errors import HarnessError
from tests.stub_worker import StubScript, StubWorker


def client(stub: StubWorker, token: str | None = None) -> WorkerClient:
    return WorkerClient(stub.url, sleep=lambda s: None, token=token)


def test_reserve_waits_while_busy():
    with StubWorker({("GET", "/start"): [(200, b"BUSY"), (200, b"BUSY"), (200, b"OK")]}) as w:
        client(w).reserve(Retry(attempts=5, delay=0))
        assert w.paths() == ["/start"] * 3


def test_reserve_gives_up_with_a_clear_error():
    with StubWorker({("GET", "/start"): [(200, b"BUSY")]}) as w:
        with pytest.raises(WorkerError, match="stayed BUSY for 3 tries"):
            client(w).reserve(Retry(attempts=3, delay=0))


def test_reserved_block_heartbeats_and_always_tears_down():
    script = {
        ("GET", "/start"): [(200, b"OK")],
        ("GET", "/heartbeat"): [(200, b"OK")],
        ("POST", "/teardown"): [(200, b"OK")],
    }
    with StubWorker(script) as w:
        with pytest.raises(RuntimeError), client(w).reserved(interval=0.05):
            threading.Event().wait(0.3)
            raise RuntimeError("test body failed")
        assert "/heartbeat" in w.paths()
        assert w.paths()[-1] == "/teardown"


def test_token_is_sent_and_401_says_what_to_do():
    with StubWorker({("GET", "/state"): [(401, b"missing bearer token")]}) as w:
        with pytest.raises(WorkerError, match="answered 401: missing bearer token") as e:
            client(w, token="s3cret").state()
        assert "HARNESS_AUTOKIT_TOKEN" in e.value.fix
        assert w.requests[0][2]["Authorization"] == "Bearer s3cret"


def test_contract_and_device_endpoints():
    script: StubScript = {
        ("GET", "/contract"): [
            (200, {"uuid": "u1", "workerType": "qemu", "supportedFeatures": ["dut", "uefi"]})
        ],
        ("POST", "/dut/network"): [(200, b"OK")],
        ("GET", "/dut/ip"): [(200, b"10.0.0.2")],
        ("POST", "/dut/on"): [(200, b"progress 50%\nOK")],
        ("POST", "/dut/off"): [(200, b"OK")],
        ("GET", "/dut/serial"): [(200, b"login: ")],
        ("POST", "/dut/serial/exec"): [(200, b"uname\nLinux")],
        ("POST", "/dut/keyboard"): [(200, b"OK")],
        ("GET", "/dut/diagnostics"): [(200, {"voltage": 5.1})],
        ("POST", "/dut/capture"): [(200, b"OK")],
        ("GET", "/dut/capture"): [(200, b"\x1f\x8bframes")],
    }
    with StubWorker(script) as w:
        c = client(w)
        contract = c.contract()
        assert (contract.uuid, contract.worker_type) == ("u1", "qemu")
        assert contract.features == {"dut", "uefi"}
        c.network()
        assert c.ip("dut.local") == "10.0.0.2"
        c.power_on()
        assert c.serial() == b"login: "
        assert c.serial_exec("uname") == "uname\nLinux"
        c.keyboard("f7")
        assert c.diagnostics() == {"voltage": 5.1}
        c.start_capture()
        assert c.stop_capture() == b"\x1f\x8bframes"
        c.power_off()
        bodies = {p: json.loads(b) for m, p, _, b in w.requests if b}
        assert bodies["/dut/network"] == {"wired": {"nat": True}}
        assert bodies["/dut/ip"] == {"target": "dut.local"}
        assert bodies["/dut/keyboard"] == {"key": "f7"}


def test_power_on_that_does_not_end_in_ok_is_an_error():
    with StubWorker({("POST", "/dut/on"): [(200, b"relay stuck")]}) as w:
        with pytest.raises(WorkerError, match="relay stuck"):
            client(w).power_on()


def test_chunked_upload_resends_a_failed_chunk():
    image = gzip.compress(random.Random(1).randbytes(350_000))  # incompressible: 4 chunks of 0.1 MiB
    script: StubScript = {
        ("GET", "/dut/sendImage/chunkSize"): [(200, {"chunkMiB": 0.1})],
        ("POST", "/dut/sendImage"): [(200, b"CHUNK_OK"), (500, b"disk hiccup"), (200, b"CHUNK_OK")],
    }
    with StubWorker(script) as w:
        client(w).send_image(io.BytesIO(image), len(image), Retry(attempts=3, delay=0))
        chunks = [
            (int(h["x-chunk-index"]), int(h["x-total-chunks"]), int(h["Content-Length"]), b)
            for m, p, h, b in w.requests
            if p == "/dut/sendImage"
        ]
    size = int(0.1 * 1024 * 1024)
    total = -(-len(image) // size)
    assert all(t == total for _, t, _, _ in chunks)
    assert [i for i, *_ in chunks] == [0, 1, 1, *range(2, total)]  # chunk 1 sent again
    assert all(n == len(b) for _, _, n, b in chunks)
    reassembled = bytearray(len(image))
    for i, _, _, b in chunks:
        reassembled[i * size : i * size + len(b)] = b
    assert bytes(reassembled) == image


def test_chunk_that_keeps_failing_is_an_error():
    script: StubScript = {
        ("GET", "/dut/sendImage/chunkSize"): [(200, {"chunkMiB": 40})],
        ("POST", "/dut/sendImage"): [(500, b"no space left")],
    }
    with StubWorker(script) as w:
        with pytest.raises(WorkerError, match="no space left"):
            client(w).send_image(io.BytesIO(b"x" * 10), 10, Retry(attempts=2, delay=0))
        assert len(w.paths("POST")) == 2


def test_flash_retries_after_error_state():
    script: StubScript = {
        ("POST", "/dut/flashImage"): [(200, {"timeoutTries": 5})],
        ("GET", "/dut/flashState"): [(200, b"PENDING"), (200, b"ERROR"), (200, b"PENDING"), (200, b"DONE")],
    }
    with StubWorker(script) as w:
        client(w).flash(poll=0)
        assert w.paths("POST") == ["/dut/flashImage", "/dut/flashImage"]


def test_flash_that_always_fails_is_an_error():
    script: StubScript = {
        ("POST", "/dut/flashImage"): [(200, {"timeoutTries": 5})],
        ("GET", "/dut/flashState"): [(200, b"ERROR")],
    }
    with StubWorker(script) as w, pytest.raises(WorkerError, match="flashing failed 3 times"):
        client(w).flash(poll=0)


def test_unreachable_worker_is_an_infrastructure_error():
    c = WorkerClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(WorkerError, match="unreachable") as e:
        c.state()
    assert "worker runs" in e.value.fix


def test_requirements_are_checked_against_the_contract():
    from harness.backends.autokit.backend import AutokitBackend
    from harness.backends.qemu.backend import QemuBackend
    from tests.helpers import declaration

    d = declaration("--requires=uefi", "--requires=hdmi")
    assert QemuBackend().unmet_requirements(d) == ["hdmi"]
    script = {
        ("GET", "/contract"): [
            (200, {"uuid": "u", "workerType": "rig", "supportedFeatures": ["dut", "hdmi"]})
        ]
    }
    with StubWorker(script) as w:
        assert AutokitBackend(w.url).unmet_requirements(d) == ["uefi"]
        assert AutokitBackend(w.url).unmet_requirements(declaration()) == []
        assert w.paths() == ["/contract"]  # no contract call when nothing is required


def test_a_token_read_with_its_line_end_is_used_without_it_and_a_bad_one_is_never_shown():
    assert bearer_token("T", "s3cret\r\n", "") == "s3cret"
    assert bearer_token("T", "", "") is None
    with pytest.raises(HarnessError) as e:
        bearer_token("T", "s3c\rret", "")
    assert "s3c" not in str(e.value) and "position 4 of 7" in str(e.value)


def test_a_token_from_a_file_is_read_without_its_line_end_and_bad_files_are_clear_errors(tmp_path):
    token = tmp_path / "token"
    token.write_bytes(b"s3cret\r\n")
    assert bearer_token("T", "", str(token)) == "s3cret"
    with pytest.raises(HarnessError, match="both T and T_FILE"):
        bearer_token("T", "x", str(token))
    os.mkfifo(tmp_path / "fifo")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    inner = tmp_path / "inner"
    inner.write_bytes(b"s3c\x00ret\n")
    for path, what in [
        (tmp_path / "missing", "cannot read"),
        (tmp_path / "fifo", "not a regular file"),
        (tmp_path, "Is a directory"),
        (big, "larger than a token"),
        (inner, "position 4 of 7"),
    ]:
        with pytest.raises(HarnessError, match=what) as e:
            bearer_token("T", "", str(path))
        assert "s3c" not in str(e.value) + e.value.fix
