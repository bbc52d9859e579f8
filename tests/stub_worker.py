"""A scripted autokit worker for tests: answers each (method, path) from a list of
canned replies and records every request it got."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

# A canned reply: the status and the body, bytes as they are or anything else as JSON.
Reply = tuple[int, Any]
# The replies to each (method, path), for a script built before the StubWorker.
StubScript = dict[tuple[str, str], list[Reply]]


class StubWorker:
    """Answers from `script[(method, path)]`: a list of (status, body) used in turn
    (the last one repeats). Records every request."""

    def __init__(self, script: Mapping[tuple[str, str], Iterable[Reply]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.requests: list[tuple[str, str, Message, bytes]] = []  # (method, path, headers, body)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append((self.command, self.path, self.headers, body))
                answers = stub.script.get((self.command, self.path), [(404, b"no such endpoint")])
                status, reply = answers.pop(0) if len(answers) > 1 else answers[0]
                reply = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _, _ in self.requests if method in (None, m)]

    def __enter__(self) -> StubWorker:
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
