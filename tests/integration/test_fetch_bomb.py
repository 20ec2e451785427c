"""A decompression bomb served on loopback: http_fetch fails at its cap and its memory stays small.

The server (a thread here) serves 100 MiB of zeros gzipped once (about 100 KB) and gzipped twice
(``Content-Encoding: gzip, gzip``, a few hundred bytes). The fetch runs in a fresh Python process of
its own, so that process's peak resident memory (VmHWM, reset after its imports) measures the fetch
and nothing else; before the fetch it records its resident size when idle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import ROOT

DECODED = 100 << 20  # what the bomb expands to
CAP = 2 << 20  # http_fetch's default cap
MIB = 1 << 20


def _gzip(chunks: Iterator[bytes]) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(z.compress(c) for c in chunks) + z.flush()


@pytest.fixture(scope="module")
def bomb_server() -> Iterator[int]:
    once = _gzip(bytes(MIB) for _ in range(DECODED // MIB))
    twice = _gzip(iter([once]))
    bodies = {"/gzip": (once, "gzip"), "/gzip-gzip": (twice, "gzip, gzip")}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body, coding = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Encoding", coding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: expected
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert len(once) < 200_000 and len(twice) < 1_000
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


# The peak is the kernel's high-water mark of this process's resident memory (VmHWM), reset after
# the imports (clear_refs 5), so it measures the fetch alone. Not ru_maxrss: Linux carries that
# over from the parent across fork and exec, so a large test runner would show as the child's peak.
CHILD = """
import asyncio, json, sys
import psutil
from runtime.core.config import ToolSettings
from runtime.tools.fetch import fetch

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

port = int(sys.argv[1])
settings = ToolSettings(http_allow_networks=("127.0.0.1/32",), http_allow_ports=(port,))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
idle = psutil.Process().memory_info().rss
try:
    asyncio.run(fetch(f"http://127.0.0.1:{port}{sys.argv[2]}", settings))
    error = None
except Exception as e:
    error = [type(e).__name__, str(e)]
print(json.dumps({"error": error, "idle": idle, "peak": hwm()}))
"""


def fetch_in_child(port: int, path: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(port), path], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("path", "error"), [
    ("/gzip", ["ResponseTooLarge", f"response from http://127.0.0.1:{{port}}/gzip exceeds {CAP} bytes"]),
    ("/gzip-gzip", ["DecodingError", "refused a body with more than one content-coding (gzip, gzip)"]),
])
def test_a_decompression_bomb_fails_at_the_cap_in_bounded_memory(bomb_server: int, path: str,
                                                                 error: list[str]) -> None:
    out = fetch_in_child(bomb_server, path)
    assert out["error"] == [error[0], error[1].format(port=bomb_server)]
    grew = int(out["peak"]) - int(out["idle"])
    assert grew < 100 * MIB, f"the fetch grew the process by {grew / MIB:.0f} MiB"
