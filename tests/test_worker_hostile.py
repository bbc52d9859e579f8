"""A hostile or careless client against a real virtual worker process (no board is
started): every malformed request gets an honest answer, nothing is read before the token
is checked, and the worker goes on serving after each."""

from __future__ import annotations

import re
import socket
import stat

import pytest

from tests.e2e import TOKEN, running_worker, wait_until

AUTH = f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n"  # answered, then closed: no waiting


@pytest.fixture
def worker(tmp_path):
    with running_worker(tmp_path, "--idle-timeout=2") as proc:
        yield proc
        # After every hostile request: it still answers who holds the token.
        assert answer(proc, f"GET /state HTTP/1.1\r\n{AUTH}\r\n").startswith("HTTP/1.1 200")
        assert proc.poll() is None


def connect(worker) -> socket.socket:
    return socket.create_connection(("127.0.0.1", worker.port), timeout=10)


def answer(worker, head: str | bytes, body: bytes = b"") -> str:
    """What the worker answers to one request, sent whole, until it closes or 2 s pass."""
    with connect(worker) as s:
        s.sendall((head.encode() if isinstance(head, str) else head) + body)
        return receive(s)


def receive(s: socket.socket, quiet: float = 2.0) -> str:
    s.settimeout(quiet)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data.decode(errors="replace")


def status(text: str) -> int:
    return int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        found = re.search(r"VmHWM:\s+(\d+)", status.read())
    assert found, f"no VmHWM in /proc/{pid}/status"
    return int(found.group(1))


def test_a_300_mb_body_without_the_token_is_answered_401_unread(worker):
    before = peak_rss_kib(worker.pid)
    with connect(worker) as s:
        s.sendall(f"POST /state HTTP/1.1\r\nContent-Length: {300 * 2**20}\r\n\r\n".encode())
        sent, block = 0, b"x" * 2**20
        try:
            while sent < 300 * 2**20:
                s.sendall(block)
                sent += len(block)
        except OSError:
            pass  # the worker closed: the rest is never sent
        reply = receive(s)
    assert status(reply) == 401 and "Connection: close" in reply
    assert peak_rss_kib(worker.pid) - before < 20 * 1024, "the worker read the body"
    assert sent < 300 * 2**20


@pytest.mark.parametrize(
    "headers, expected",
    [
        ("Content-Length: 1000000000000\r\n", 401),  # no token: nothing else is looked at
        (AUTH + "Content-Length: 1000000000000\r\n", 413),
        (AUTH + "Content-Length: -1\r\n", 400),
        (AUTH + "Content-Length: abc\r\n", 400),
        (AUTH + "Content-Length: " + "9" * 5000 + "\r\n", 413),
        (AUTH + "Transfer-Encoding: chunked\r\n", 411),
        (AUTH + "X-Long: " + "a" * 70000 + "\r\n", 431),
        (AUTH + "".join(f"X-{i}: y\r\n" for i in range(120)), 431),
    ],
    ids=[
        "huge-unauthorized",
        "huge",
        "negative",
        "not-a-number",
        "5000-digits",
        "chunked",
        "long-header",
        "120-headers",
    ],
)
def test_a_malformed_request_gets_an_honest_status(worker, headers, expected):
    reply = answer(worker, f"POST /dut/serial/exec HTTP/1.1\r\n{headers}\r\n")
    assert status(reply) == expected, reply[:300]


def test_a_chunked_body_is_not_taken_for_a_second_request(worker):
    smuggled = "0\r\n\r\nGET /start HTTP/1.1\r\n" + AUTH + "\r\n"
    reply = answer(worker, f"POST /teardown HTTP/1.1\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n{smuggled}")
    assert status(reply) == 411 and reply.count("HTTP/1.1") == 1
    assert "BUSY" not in answer(worker, f"GET /state HTTP/1.1\r\n{AUTH}\r\n")


def test_expect_100_continue_is_not_answered_without_the_token(worker):
    with connect(worker) as s:
        s.sendall(b"POST /state HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        reply = receive(s)
    assert status(reply) == 401 and "100 Continue" not in reply
    with connect(worker) as s:
        s.sendall(
            f"POST /heartbeat HTTP/1.1\r\n{AUTH}Content-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert "100 Continue" in s.recv(1000).decode()
        s.sendall(b"{}")


@pytest.mark.parametrize("line, expected", [(b"GARBAGE", 400), (b"GET /" + b"a" * 70000 + b" HTTP/1.1", 414)])
def test_a_broken_request_line_is_answered(worker, line, expected):
    assert status(answer(worker, line + b"\r\n\r\n")) == expected


def test_control_characters_in_a_path_are_escaped_in_the_log(worker):
    answer(worker, "GET /\x1b[31mred\x07 HTTP/1.1\r\n\r\n")
    wait_until(lambda: "red" in worker.log.read_text(), 5, "the request was not logged", 0.1)
    log = worker.log.read_text()
    assert "\x1b" not in log and "\x07" not in log and "\\x1b[31mred" in log


def upload(worker, index: str, total: str, body: bytes = b"x") -> str:
    head = (
        f"POST /dut/sendImage HTTP/1.1\r\n{AUTH}x-chunk-index: {index}\r\nx-total-chunks: {total}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return answer(worker, head, body)


@pytest.mark.parametrize(
    "index, total", [("100000", "100001"), ("0", "-1"), ("0", "0"), ("0", "4000000"), ("3", "2")]
)
def test_chunk_numbers_out_of_bounds_are_refused(worker, tmp_path, index, total):
    assert status(answer(worker, f"GET /start HTTP/1.1\r\n{AUTH}\r\n")) == 200
    reply = upload(worker, index, total)
    assert status(reply) == 400 and "x-" in reply
    assert not (tmp_path / "worker" / "upload.gz").exists()


def test_a_flash_with_chunks_missing_says_which(worker, tmp_path):
    answer(worker, f"GET /start HTTP/1.1\r\n{AUTH}\r\n")
    assert "CHUNK_OK" in upload(worker, "1", "3")
    answer(worker, f"POST /dut/flashImage HTTP/1.1\r\n{AUTH}\r\n")
    wait_until(
        lambda: "ERROR" in answer(worker, f"GET /dut/flashState HTTP/1.1\r\n{AUTH}\r\n"),
        10,
        "no flash error",
        0.2,
    )
    error = (tmp_path / "worker" / "flash.error").read_text()
    assert "chunks missing from the upload: 0, 2 of 3" in error


def test_idle_connections_are_capped_and_closed(worker):
    idle = [connect(worker) for _ in range(50)]
    try:
        refused = [s for s in idle[32:] if status(receive(s, 1.5)) == 503]
        assert len(refused) == 18
        # The idle timeout (2 s here) frees the others' threads: a new client is served.
        wait_until(
            lambda: status(answer(worker, f"GET /state HTTP/1.1\r\n{AUTH}\r\n")) == 200,
            15,
            "still refused",
            0.5,
        )
    finally:
        for s in idle:
            s.close()


def test_uploads_state_and_a_generated_token_are_the_users_only(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (state / "token").symlink_to(victim)
    with running_worker(tmp_path, f"--state-dir={state}", listen="{port}", token=None) as worker:
        assert "listening on http://127.0.0.1:" in worker.log.read_text()
        assert victim.read_text() == "keep me\n", "the token was written through the symlink"
        token = (state / "token").read_text().strip()
        assert not (state / "token").is_symlink() and stat.S_IMODE((state / "token").stat().st_mode) == 0o600
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        auth = f"Authorization: Bearer {token}\r\nConnection: close\r\n"
        assert status(answer(worker, f"GET /start HTTP/1.1\r\n{auth}\r\n")) == 200
        assert "OK" in answer(worker, f"POST /dut/sendImage HTTP/1.1\r\n{auth}Content-Length: 3\r\n\r\nabc")
        assert stat.S_IMODE((state / "upload.gz").stat().st_mode) == 0o600


@pytest.mark.parametrize("listen", ["[::1]:{port}", "localhost:{port}"])
def test_listen_takes_ipv6_and_names(tmp_path, listen):
    with running_worker(tmp_path, listen=listen) as worker:
        host = "::1" if "[" in listen else "127.0.0.1"
        with socket.create_connection((host, worker.port), timeout=10) as s:
            s.sendall(f"GET /state HTTP/1.1\r\n{AUTH}\r\n".encode())
            assert status(receive(s)) == 200


@pytest.mark.parametrize("listen", ["::1:8123", "host:", "host:port", "1:99999"])
def test_a_listen_address_it_cannot_use_is_a_clear_error(listen):
    from harness.backends.autokit.virtual_worker import listen_address

    with pytest.raises(SystemExit, match="give HOST:PORT, \\[IPV6\\]:PORT or PORT"):
        listen_address(listen)
    assert listen_address("8123") == ("127.0.0.1", 8123)
