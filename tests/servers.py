"""A local upstream for tool and gate tests: an HTTP server on 127.0.0.1 that logs every request.

Paths: ``/ok`` answers 200; ``/flaky`` answers 503 while ``down`` (or for its first ``fail_first``
requests); ``/throttle`` answers 429 with Retry-After: 1 for its first ``fail_first`` requests;
``/hold`` answers only once the test sets ``release`` (something to hold a gate with); a path in
``pages`` answers its HTML; POST ``/lookup`` answers ``["value-<key>", ...]`` for a JSON list of keys.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Hit:
    at: float
    method: str
    path: str
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


@dataclass
class Upstream:
    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    down: bool = False
    fail_first: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    pages: dict[str, str] = field(default_factory=dict)  # path -> HTML served at it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for h in self.hits if h.path == path)

    def of(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


def _handler(up: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, content_type: str = "text/html") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _log(self, body: bytes = b"") -> tuple[str, int]:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            with up.lock:
                up.hits.append(Hit(time.time(), self.command, parts.path, query, body,
                                   {k.lower(): v for k, v in self.headers.items()}))
                n = sum(1 for h in up.hits if h.path == parts.path)
            return parts.path, n

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path, n = self._log()
            if path == "/hold":
                up.release.wait(60)
            if path == "/redirect":  # to the URL in ?to=
                self.send_response(302)
                self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in up.pages:
                self._answer(200, up.pages[path].encode())
                return
            if path == "/flaky" and (up.down or n <= up.fail_first):
                self._answer(503, b"try later")
                return
            if path == "/throttle" and n <= up.fail_first:
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._answer(200, b"<html><title>ok</title><body><p>hello</p></body></html>")

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._log(body)
            keys = json.loads(body)
            self._answer(200, json.dumps([f"value-{k}" for k in keys]).encode(), "application/json")

    return Handler


@contextmanager
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(up))
    server.daemon_threads = True
    up.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield up
    finally:
        up.release.set()
        server.shutdown()
        server.server_close()

