"""Outbound webhooks against local HTTP servers on loopback: a flaky receiver gets the event after
retries and verifies its signature with the ``standardwebhooks`` package; a task's failure is
announced; a receiver that never answers well ends in a dead letter, which a replay sends again."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from runtime import ToolSettings
from runtime.events.webhooks import SEND_TIMEOUT_S
from tests.conftest import wait_for

APPS = ["tests.apps.events"]
SECRET = "whsec_" + base64.b64encode(b"outbound-webhook-test-secret!!").decode()


class Receiver:
    """A local webhook receiver: answers 500 to the first ``fail_first`` requests, then 200."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.verified: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append((headers, body))
                ok = len(receiver.requests) > receiver.fail_first
                if ok:
                    receiver.verified.append(Webhook(SECRET).verify(body, headers))
                self.send_response(200 if ok else 500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@contextmanager
def receiver(fail_first: int) -> Iterator[Receiver]:
    r = Receiver(fail_first)
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def settings_for(**targets: Receiver) -> dict[str, Any]:
    return {
        "event_poll_s": 0.1, "webhook_retry_s": 0.2, "event_max_attempts": 4,
        "tools": ToolSettings(executors=1, http_allow_networks=["127.0.0.1/32"],
                              http_allow_ports=["1024-65535"]),
        "webhooks_out": {name: {"url": r.url, "secret": SECRET, "tenant": "default",
                                "topics": ["orders.*", "task.failed"]}
                         for name, r in targets.items()},
    }


def test_a_flaky_receiver_gets_each_event_once_it_answers(make_runtime) -> None:
    with receiver(fail_first=2) as sink:
        rt = make_runtime(APPS, **settings_for(sink=sink))
        client = rt.client()
        client.publish("orders.new", {"order": 7}, id="order-7")

        wait_for(lambda: sink.verified, timeout_s=60, what="a delivery the receiver accepts")
        assert len(sink.requests) == 3  # two refused, then accepted
        ids = {headers["webhook-id"] for headers, _ in sink.requests}
        assert len(ids) == 1  # every retry is the same message
        (payload,) = sink.verified  # the signature holds (verify raises otherwise)
        assert (payload["id"], payload["topic"], payload["data"]) == ("order-7", "orders.new",
                                                                       {"order": 7})
        wait_for(lambda: client.event_report("order-7")[1][0]["outcome"] == "sent (HTTP 200)",
                 timeout_s=30, what="the delivery to be finished")
        (delivery,) = client.event_report("order-7")[1]
        assert delivery["attempts"] == 3

        # A task's failure is announced on task.failed, and goes out the same way.
        task = client.submit("always_fails", {})
        wait_for(lambda: any(p["topic"] == "task.failed" for p in sink.verified), timeout_s=60,
                 what="the failure to be announced")
        failed = next(p for p in sink.verified if p["topic"] == "task.failed")
        assert failed["data"]["task_id"] == task.id and "always fails" in failed["data"]["error"]


def test_a_receiver_that_keeps_failing_ends_in_a_dead_letter_that_replays(make_runtime) -> None:
    with receiver(fail_first=10**6) as dead:
        rt = make_runtime(APPS, **settings_for(dead=dead))
        client = rt.client()
        client.publish("orders.lost", {"order": 9}, id="order-9")

        wait_for(lambda: rt.ops().dead_letters(tool="webhook:dead"), timeout_s=60,
                 what="the dead letter")
        (letter,) = rt.ops().dead_letters(tool="webhook:dead")
        assert (letter.attempts, letter.args["event_id"]) == (4, "order-9")
        assert len(dead.requests) == 4
        assert client.event_report("order-9")[1][0]["outcome"].startswith("dead after 4")
        # What the tenant can read names the target, never the operator's URL.
        assert letter.args["webhook"] == "dead"
        readable = json.dumps([letter.model_dump(mode="json"), client.event_report("order-9")[1]])
        assert dead.url not in readable and "127.0.0.1" not in readable, readable

        dead.fail_first = 0  # the receiver is mended: a replay goes out and is accepted
        replayed = rt.ops().replay(letter.id)
        assert replayed.status == "replayed"
        wait_for(lambda: dead.verified, timeout_s=30, what="the replayed delivery")
        assert json.loads(dead.requests[-1][1])["id"] == "order-9"


class Trickler:
    """A receiver that answers its headers at once, then a byte every half second: no single read
    ever times out. It notes when the sender hangs up."""

    def __init__(self) -> None:
        self.requests = 0
        self.hung_up = threading.Event()
        trickler = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["content-length"]))
                trickler.requests += 1
                self.send_response(200)
                self.send_header("content-length", "1000")
                self.end_headers()
                try:
                    for _ in range(240):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.5)  # the trickle under test, not a wait of the test's
                except OSError:
                    trickler.hung_up.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def test_a_trickling_receiver_holds_no_other_delivery(make_runtime, tmp_path: Path) -> None:
    """While a receiver trickles its answer, events go on starting their workflows at once; the
    send itself ends at its deadline (webhooks.SEND_TIMEOUT_S), the sender hanging up."""
    slow = Trickler()
    thread = threading.Thread(target=slow.server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = settings_for()
        settings["webhooks_out"] = {"slow": {"url": slow.url, "secret": SECRET, "tenant": "*",
                                             "topics": ["digest.*"]}}
        rt = make_runtime(APPS, **settings)
        client = rt.client()
        client.publish("digest.first", {"dir": str(tmp_path), "url": "first"}, id="first")
        wait_for(lambda: slow.requests == 1, timeout_s=60, what="the receiver to start trickling")

        client.publish("digest.second", {"dir": str(tmp_path), "url": "second"}, id="second")
        published = time.monotonic()
        wait_for(lambda: (tmp_path / "digest.second").exists(), timeout_s=30,
                 what="the second event's workflow, while the first webhook trickles")
        assert time.monotonic() - published < SEND_TIMEOUT_S  # not after the trickle
        wait_for(slow.hung_up.is_set, timeout_s=SEND_TIMEOUT_S + 20,
                 what="the sender to hang up at its deadline")
    finally:
        slow.server.shutdown()
        slow.server.server_close()
