"""The ``raysquad`` command: run the runtime, submit and follow tasks. Errors print one line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.table import Table

# Light imports only: a command over --url never imports Ray (Client, Runtime and Ops are imported
# where a command needs them), so it starts in a fraction of a second.
from runtime.actors import names
from runtime.core.config import GateLimits, Settings
from runtime.core.errors import RaysquadError
from runtime.core.models import SubmitRequest, TaskRecord, TaskStatus
from serve.console import (
    connect,
    err,
    fail,
    out,
    parse_input,
    parse_object,
    print_observability,
    print_result,
    problems,
    settings,
    show,
)
from serve.http_client import HttpClient
from serve.progress import follow

if TYPE_CHECKING:
    from runtime.client.ops import Ops
    from runtime.control.launch import Runtime

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="raysquad: durable multi-agent workflows on Ray.")
DEFAULT_APPS = ["agents"]

AppOpt = Annotated[list[str] | None, typer.Option("--app", help="module with workflows and agents "
                                                              "(repeatable; default: agents)")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray address to join "
                                                                  "(default: RAYSQUAD_RAY_ADDRESS)")]
DataOpt = Annotated[Path | None, typer.Option("--data-dir", help="where the SQLite Store lives")]
UrlOpt = Annotated[str | None, typer.Option("--url", envvar="RAYSQUAD_URL",
                                            help="use the HTTP API at this URL instead of Ray")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="RAYSQUAD_API_KEY",
                                            help="bearer key for --url")]


@app.command()
def up(apps: AppOpt = None, address: AddressOpt = None, data_dir: DataOpt = None,
       workers: Annotated[int | None, typer.Option(help="workflow worker actors")] = None,
       host: Annotated[str | None, typer.Option(help="HTTP host (default 127.0.0.1)")] = None,
       port: Annotated[int | None, typer.Option(help="HTTP port (default 8000)")] = None,
       http: Annotated[bool, typer.Option(help="serve the HTTP API")] = True,
       detach: Annotated[bool, typer.Option(
           "--detach", help="start the runtime on a running Ray cluster (`ray start --head`) and "
                            "return; it runs until `raysquad down`")] = False,
       dashboard: Annotated[bool | None, typer.Option(
           "--dashboard/--no-dashboard", help="start the Ray dashboard with a local cluster "
                                              "(default: on, or RAYSQUAD_RAY_INCLUDE_DASHBOARD)")] = None,
       metrics_port: Annotated[int | None, typer.Option(
           "--metrics-port", help="serve Ray's and raysquad's metrics for Prometheus on this port "
                                  "(a local cluster)")] = None) -> None:
    """Run the runtime and its HTTP API with the given modules' workflows and agents: in the
    foreground (Ctrl-C stops it), or detached on a Ray cluster with --detach."""
    from runtime.control.launch import Runtime
    from serve.launch import ServeDeployer, direct_ingress_env, open_bind_refusal

    extra: dict[str, Any] = {"detached": True} if detach else {}
    if dashboard is not None or "RAYSQUAD_RAY_INCLUDE_DASHBOARD" not in os.environ:
        extra["ray_include_dashboard"] = True if dashboard is None else dashboard
    if metrics_port is not None:
        extra["ray_metrics_export_port"] = metrics_port
    config = settings(address, data_dir, workers=workers, http_host=host, http_port=port, **extra)
    if detach and not config.ray_address:
        # A detached runtime needs a cluster that outlives this process: join the local one.
        config = config.model_copy(update={"ray_address": "auto"})
    refusal = open_bind_refusal(config) if http else None
    if refusal:
        fail(refusal)
    if http and not config.ray_address:
        # The cluster started here serves HTTP from the Ingress replica itself (no proxy hop).
        os.environ.update(direct_ingress_env(config))
    if http and not config.ray_address:
        # What a hard crash left listening may still be dying: wait for it, briefly. (On a running
        # cluster, the port is Serve's proxy's, shared by every namespace's app: no wait there.)
        _wait_for_port(config)
    # Serve's controller and proxy start while the runtime's actors do: neither needs the other.
    deployer = ServeDeployer(config)
    try:
        rt = Runtime.start(config, apps=apps or DEFAULT_APPS,
                           alongside=deployer.start_serve if http else None)
    except BaseException:
        deployer.close()
        raise
    try:
        url = deployer.run_app() if http else None
    except BaseException:
        rt.stop()  # nothing half-started stays behind, detached or not
        raise
    _print_up(rt, url, detach)
    if detach:
        import ray

        out.print(f"Ray namespace {config.namespace!r} on the cluster at "
                  f"{ray.get_runtime_context().gcs_address}; `raysquad down` stops it.")
        return
    _serve_until_stopped(rt, url)


def _wait_for_port(config: Settings) -> None:
    """Wait (up to ``PORT_WAIT_S``) for the API port to come free; one line if it does not."""
    from serve.ports import PORT_WAIT_S, bindable, holder, wait_until_bindable

    if not config.http_port or bindable(config.http_host, config.http_port):
        return
    err.print(f"port {config.http_port} is held by {holder(config.http_port)}; waiting for it "
              f"(up to {PORT_WAIT_S:.0f}s)", highlight=False)
    if blocked := wait_until_bindable(config.http_host, config.http_port):
        fail(blocked)


def _print_up(rt: Runtime, url: str | None, detach: bool) -> None:
    """What is up: the workflows and agents, the Store, the API and where to watch it."""
    config = rt.settings
    store = (config.database_path if config.store == "sqlite"
             else "on PostgreSQL (RAYSQUAD_POSTGRES_URL)")
    out.print(f"raysquad is up{' (detached)' if detach else ''}: workflows "
              f"{sorted(rt.catalog.workflows)}, agents {sorted(rt.catalog.agents)}; Store {store}.")
    if url:
        auth = (f"{len(config.api_keys)} API key(s)" if config.api_keys else
                "no API keys configured: loopback only, no authentication")
        out.print(f"HTTP API on {url} ({auth}); API document at {url}/openapi.json.")
        out.print(f"Status page at {url}/ (a task's page: {url}/#task/<id>).")
    print_observability(config)


def _serve_until_stopped(rt: Runtime, url: str | None) -> None:
    """Run in the foreground until Ctrl-C or SIGTERM, then stop the HTTP app and the runtime."""
    from serve.launch import stop_http

    try:
        out.print("Ctrl-C stops it.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        # Said before the stop's seconds go by; unfinished tasks resume at the next start.
        err.print("stopping: the HTTP app, then the runtime's actors (unfinished tasks resume at "
                  "the next `raysquad up`)", highlight=False)
        if url:
            stop_http(rt.settings.namespace)
    finally:
        rt.stop()
    err.print("stopped", highlight=False)


@app.command()
def down(address: AddressOpt = None) -> None:
    """Stop the runtime of this namespace (RAYSQUAD_NAMESPACE) on the Ray cluster: its HTTP app and
    every actor, detached or not. Tasks not finished resume at the next `raysquad up`."""
    from runtime.client.client import join
    from runtime.control.launch import stop_runtime
    from serve.launch import stop_http

    config = settings(address)
    join(config)
    had_http = stop_http(config.namespace)
    stopped = stop_runtime(config.namespace)
    if not stopped and not had_http:
        out.print(f"nothing to stop: no raysquad runtime in Ray namespace {config.namespace!r}")
        return
    out.print(f"stopped the raysquad runtime in Ray namespace {config.namespace!r}: "
              f"{len(stopped)} actor(s){', its HTTP app' if had_http else ''}")


@app.command()
def submit(workflow: str, input: Annotated[str, typer.Option("--input", help="JSON object")] = "{}",
           priority: int = 0, idempotency_key: str | None = None,
           wait: Annotated[bool, typer.Option("--wait", help="follow with a progress bar")] = False,
           address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Submit a task to a running runtime (see `raysquad up`), over Ray or over HTTP (--url)."""
    payload = parse_input(input)
    client = connect(address, url, api_key)
    record = client.submit(workflow, payload, priority=priority,
                           idempotency_key=idempotency_key)
    if not wait:
        out.print(record.id)
        return
    print_result(follow(client, record.id, err))


SUBMIT_FIELDS = {"workflow", "input", "priority", "idempotency_key"}


def read_submits(source: str, workflow: str | None) -> list[dict[str, Any]]:
    """The tasks in a JSON-lines file (``-``: standard input), each an object with ``submit``'s
    fields; ``workflow`` fills in lines that name none. A bad line stops everything before
    anything is submitted."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        fail(f"cannot read {source}: {e.strerror or e}", 2)
    tasks: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"line {number} is not valid JSON: {e}", 2)
        if not isinstance(task, dict):
            fail(f"line {number} must be a JSON object like {{\"workflow\": \"echo\", "
                 f"\"input\": {{...}}}}", 2)
        if unknown := sorted(set(task) - SUBMIT_FIELDS):
            fail(f"line {number} has unknown field(s) {', '.join(unknown)}; a task takes "
                 f"{', '.join(sorted(SUBMIT_FIELDS))}", 2)
        task.setdefault("workflow", workflow)
        if not isinstance(task["workflow"], str) or not task["workflow"]:
            fail(f"line {number} names no workflow (add \"workflow\", or pass --workflow)", 2)
        try:
            SubmitRequest(**task)
        except ValidationError as e:
            fail(f"line {number} is not a valid task: {problems(e)}", 2)
        tasks.append(task)
    if not tasks:
        fail(f"{source} holds no tasks", 2)
    return tasks


@app.command("submit-many")
def submit_many(source: Annotated[str, typer.Argument(help="JSON-lines file, or - for standard "
                                                           "input")],
                workflow: Annotated[str | None, typer.Option(
                    help="the workflow of lines that name none")] = None,
                address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Submit many tasks, one JSON object per line ({"workflow", "input", "priority",
    "idempotency_key"}), 1,000 to a Store transaction. Prints each task's id in line order (or
    "-" where it was refused, with the reason on standard error); exits 1 if any was refused."""
    tasks = read_submits(source, workflow)
    outcomes = connect(address, url, api_key).submit_many(tasks)
    refused = 0
    for number, outcome in enumerate(outcomes, 1):
        if isinstance(outcome, TaskRecord):
            out.print(outcome.id, highlight=False)
        else:
            refused += 1
            out.print("-", highlight=False)
            err.print(f"task {number}: {outcome}", highlight=False)
    err.print(f"submitted {len(outcomes) - refused} of {len(outcomes)} task(s)", highlight=False)
    if refused:
        raise typer.Exit(1)


@app.command()
def run(workflow: str, input: Annotated[str, typer.Option("--input", help="JSON object")] = "{}",
        apps: AppOpt = None, data_dir: DataOpt = None, priority: int = 0) -> None:
    """Start an embedded runtime, run one task to its end with a progress bar, print its result."""
    from runtime.control.launch import Runtime

    payload = parse_input(input)
    with Runtime.start(settings(None, data_dir), apps=apps or DEFAULT_APPS) as rt:
        client = rt.client()
        record = client.submit(workflow, payload, priority=priority)
        err.print(f"task {record.id} submitted")
        print_result(follow(client, record.id, err))


@app.command()
def status(task_id: str, address: AddressOpt = None, url: UrlOpt = None,
           api_key: KeyOpt = None) -> None:
    """Show one task."""
    show(connect(address, url, api_key).get(task_id))


@app.command()
def result(task_id: str, address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None,
           timeout_s: Annotated[float | None, typer.Option(
               help="give up after this long (default: wait until the task ends)")] = None) -> None:
    """Wait for a task to end and print its output (or its error)."""
    print_result(connect(address, url, api_key).wait(task_id, timeout_s))


@app.command()
def tasks(status: Annotated[str | None, typer.Option(help="queued, running, succeeded, ...")] = None,
          workflow: str | None = None, limit: int = 20, address: AddressOpt = None,
          url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List tasks, newest first."""
    try:
        wanted = TaskStatus(status) if status else None
    except ValueError:
        fail(f"--status must be one of {', '.join(s.value for s in TaskStatus)}", 2)
    table = Table("id", "workflow", "status", "priority", "runs")
    for r in connect(address, url, api_key).list(wanted, workflow, limit=limit):
        table.add_row(r.id, r.workflow, r.status.value, str(r.priority), str(r.runs))
    out.print(table)


@app.command()
def cancel(task_id: str, address: AddressOpt = None, url: UrlOpt = None,
           api_key: KeyOpt = None) -> None:
    """Cancel a task (a running one stops at its next step boundary)."""
    show(connect(address, url, api_key).cancel(task_id))


@app.command()
def retry(task_id: str, address: AddressOpt = None, url: UrlOpt = None,
          api_key: KeyOpt = None) -> None:
    """Run a failed or cancelled task again from its last checkpoint."""
    show(connect(address, url, api_key).retry(task_id))


@app.command()
def approve(task_id: str, call_id: str,
            arguments: Annotated[str | None, typer.Option(
                "--arguments", help="JSON object to run the call with instead")] = None,
            address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Approve a tool call a task waits on (it runs once)."""
    edited = parse_object(arguments, "--arguments") if arguments is not None else None
    show(connect(address, url, api_key).decide(task_id, call_id, "approve", None, edited))


@app.command()
def deny(task_id: str, call_id: str,
         reason: Annotated[str, typer.Option("--reason", help="told to the model")] = "denied",
         address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Deny a tool call a task waits on; the reason goes back to the model as the call's result."""
    show(connect(address, url, api_key).decide(task_id, call_id, "deny", reason))


@app.command("signal")
def signal_task(task_id: str, name: str,
                payload: Annotated[str, typer.Option("--payload", help="JSON value")] = "null",
                address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Send a signal (with a JSON payload) to a task; one waiting for it resumes."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as e:
        fail(f"--payload is not valid JSON: {e}", 2)
    show(connect(address, url, api_key).signal(task_id, name, value))


@app.command()
def watch(task_id: str, address: AddressOpt = None, url: UrlOpt = None,
          api_key: KeyOpt = None) -> None:
    """Follow one task's events until it ends (over Ray, or the SSE stream with --url)."""
    client = connect(address, url, api_key)
    for event in client.events(task_id, follow=True):
        out.print(f"{event.seq:>4} {event.kind:<16} {json.dumps(event.data)}", highlight=False)


def joined(address: str | None) -> Settings:
    """This process joined to the runtime's Ray cluster, its settings; RuntimeNotRunning (one
    line) when no runtime runs in the namespace."""
    from runtime.actors.handles import actor_names
    from runtime.client.client import join
    from runtime.core.errors import RuntimeNotRunning

    config = settings(address)
    join(config)
    if not actor_names(config.namespace, names.STORE):
        raise RuntimeNotRunning(f"Ray namespace {config.namespace!r}")
    return config


def ops(address: str | None) -> Ops:
    """Operator calls over Ray (after Client.connect has joined the cluster)."""
    from runtime.client.client import Client
    from runtime.client.ops import Ops

    s = settings(address)
    Client.connect(s)
    return Ops(s.namespace)


@app.command()
def gates(address: AddressOpt = None) -> None:
    """Show every gate: limits, holdings, the window's use, waiters, grants by tenant."""
    table = Table("gate", "limits", "held", "in window", "waiting", "factor", "granted")
    for key, g in ops(address).gates().items():
        limits = ", ".join(f"{k}={v}" for k, v in g["limits"].items() if v is not None)
        table.add_row(key, limits, str(g["held"]), str(g["in_window"]), str(g["waiting"]),
                      f"{g['factor']:.2f}", json.dumps(g["granted"]))
    out.print(table)


@app.command()
def gate(key: str,
         requests: Annotated[int | None, typer.Option(help="requests per interval")] = None,
         tokens: Annotated[int | None, typer.Option(help="tokens per interval")] = None,
         interval_s: Annotated[float, typer.Option(help="the window, in seconds")] = 1.0,
         concurrency: Annotated[int | None, typer.Option(help="requests at once")] = None,
         remove: Annotated[bool, typer.Option("--remove", help="remove the gate")] = False,
         address: AddressOpt = None) -> None:
    """Set a gate's limits now, e.g. `raysquad gate openai:gpt-4o --requests 500 --interval-s 60`."""
    if remove:
        ops(address).set_gate(key, None)
        out.print(f"gate {key} removed")
        return
    if requests is None and tokens is None and concurrency is None:
        fail("give at least one of --requests, --tokens, --concurrency (or --remove)", 2)
    limits = GateLimits(requests=requests, tokens=tokens, interval_s=interval_s,
                        concurrency=concurrency)
    client = ops(address)
    client.set_gate(key, limits)
    out.print(f"gate {key}: {json.dumps(client.gates()[key]['limits'])}", highlight=False)


@app.command("dead-letters")
def dead_letters(status: Annotated[str | None, typer.Option(help="dead or replayed")] = None,
                 tool: str | None = None, limit: int = 20, address: AddressOpt = None,
                 url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List calls that ran out of retries (tools, model calls as llm:<model>), newest first (over
    HTTP with --url: the key's tenant's)."""
    if status not in (None, "dead", "replayed"):
        fail("--status must be dead or replayed", 2)
    letters = HttpClient(url, api_key).dead_letters(status, tool, limit) if url \
        else ops(address).dead_letters(status, tool, None, limit)
    table = Table("id", "tool", "status", "attempts", "task", "error")
    for d in letters:
        table.add_row(d.id, d.tool, d.status, str(d.attempts), d.task_id or "-", d.error[:60])
    out.print(table)


@app.command()
def replay(letter_id: str,
           model: Annotated[str | None, typer.Option(
               "--model", help="run a model call's letter on this model (default: the models "
                               "it had)")] = None,
           address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Run a dead letter's call again (a tool's, a model's, a webhook's); on success it is marked
    replayed with its result, and a task that failed at that call resumes past it."""
    letter = HttpClient(url, api_key).replay(letter_id, model) if url \
        else ops(address).replay(letter_id, model)
    out.print(f"{letter.id} {letter.status} (attempts {letter.attempts})"
              + (f": {json.dumps(letter.result)[:200]}" if letter.status == "replayed"
                 else f": {letter.error}"), highlight=False)


@app.command()
def top(address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None,
        interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 1.0,
        once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False
        ) -> None:
    """A live view of the runtime: tasks by status and their throughput, queues, workers, agent
    pools, engines, gates, events (over Ray, or over HTTP with --url and an operator's key)."""
    import time as _time

    from rich.live import Live

    from serve.top import top_view

    frame = _frames(address, url, api_key)
    if once:
        out.print(top_view(*frame()))
        return
    with Live(console=out, auto_refresh=False, screen=False) as live:
        try:
            while True:
                live.update(top_view(*frame()), refresh=True)
                _time.sleep(interval)
        except KeyboardInterrupt:
            pass


def _frames(address: str | None, url: str | None,
            api_key: str | None) -> Callable[[], tuple[dict[str, Any], str, dict[str, Any] | None]]:
    """What makes one frame of `top`: the overview, which runtime it is, the tasks' stats (every
    tenant's over Ray; the key's tenant's over HTTP)."""
    import asyncio
    import time

    from serve.top import BUCKET_S, WINDOW_S

    if url:

        http = HttpClient(url, api_key)
        return lambda: (http.overview(), url, http.stats(WINDOW_S, BUCKET_S))

    from runtime.client.overview import overview
    from runtime.store.actor import StoreHandle

    config = joined(address)
    store = StoreHandle.find(config.namespace)

    async def stats() -> dict[str, Any] | None:
        try:
            s = await store.task_stats(None, time.time() - WINDOW_S, BUCKET_S)
        except Exception:  # noqa: BLE001 - the Store restarting: "down" in this frame
            return None
        return {"counts": {k.value: v for k, v in s.counts.items()},
                "throughput": {"bucket_s": s.bucket_s, "finished": s.finished}}

    async def both() -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        snap, counted = await asyncio.gather(overview(config.namespace), stats())
        return snap, f"namespace {config.namespace}", counted

    return lambda: asyncio.run(both())


@app.command()
def ps(address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None,
       ended: Annotated[bool, typer.Option("--all", help="also the processes that ended (a "
                                                         "replaced replica's)")] = False,
       as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Every process of the runtime: its kind, role, replica, pid, node, state and restarts (the
    pid to look for in `top`, or to kill to see a replica replaced)."""
    if url:

        actors = HttpClient(url, api_key).processes(ended)
    else:
        from runtime.actors.processes import processes

        actors = [p.as_dict() for p in processes(joined(address).namespace, ended)]
    if as_json:
        out.print_json(json.dumps(actors))
        return
    table = Table("kind", "role", "replica", "pid", "node", "state", "restarts", "actor",
                  show_edge=False)
    for a in actors:
        role = a["role"] or (_hosts(a["hosts"]) if a["hosts"] else "")
        table.add_row(a["kind"], role, a["replica"] or "", str(a["pid"] or "-"), a["node"] or "-",
                      a["state"], str(a["restarts"]), a["name"])
    out.print(table)


def _hosts(hosted: list[str]) -> str:
    """What a control host holds, briefly: "dispatcher, events, gates, 3 pools, 3 mailboxes"."""
    singles = [n for n in hosted if not n.startswith((names.POOL_PREFIX, names.MAILBOX_PREFIX))]
    pools = sum(n.startswith(names.POOL_PREFIX) for n in hosted)
    boxes = sum(n.startswith(names.MAILBOX_PREFIX) for n in hosted)
    return ", ".join([*sorted(singles), f"{pools} pools", f"{boxes} mailboxes"])


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{option} is not valid JSON: {e}", 2)


def _when(at: float | None) -> str:
    import datetime

    return "-" if at is None else datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def publish(topic: str,
            data: Annotated[str, typer.Option("--data", help="the event's data, JSON")] = "null",
            key: Annotated[str | None, typer.Option(help="groups events for flow control")] = None,
            event_id: Annotated[str | None, typer.Option("--id", help="makes a retry the same "
                                                                       "event")] = None,
            address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Publish an event on TOPIC; the workflows and agents that subscribe get it. Prints its id."""
    event = connect(address, url, api_key).publish(topic, _json_arg(data, "--data"), key=key,
                                                   id=event_id)
    out.print(event.id, highlight=False)


@app.command()
def events(topic: Annotated[str | None, typer.Option(help="only this topic")] = None,
           limit: int = 20, address: AddressOpt = None, url: UrlOpt = None,
           api_key: KeyOpt = None) -> None:
    """List published events, newest first."""
    table = Table("seq", "id", "topic", "key", "source", "published", "data")
    for e in connect(address, url, api_key).topic_events(topic, limit=limit):
        table.add_row(str(e.seq), e.id, e.topic, e.key or "", e.source, _when(e.created_at),
                      json.dumps(e.data)[:60])
    out.print(table)


@app.command()
def schedules(address: AddressOpt = None, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List the cron schedules."""
    table = Table("id", "workflow", "cron", "timezone", "next tick", "paused", "last task")
    for s in connect(address, url, api_key).schedules():
        paused = (f"yes: {s.paused_reason}" if s.paused_reason else "yes") if s.paused else ""
        table.add_row(s.id, s.workflow, s.cron, s.timezone, _when(s.next_at), paused,
                      s.last_task_id or "")
    out.print(table)


schedule_app = typer.Typer(no_args_is_help=True, help="Create, show, pause, resume or delete a "
                                                      "cron schedule.")
app.add_typer(schedule_app, name="schedule")


def _show_schedule(s: Any) -> None:
    out.print(f"{s.id}: {s.workflow} at '{s.cron}' ({s.timezone}), next {_when(s.next_at)}"
              + (", paused" if s.paused else "")
              + (f" ({s.paused_reason})" if s.paused_reason else "")
              + f", catch-up {s.catch_up}, overlap {s.overlap}",
              highlight=False)


@schedule_app.command("create")
def schedule_create(schedule_id: str, workflow: str, cron: str,
                    timezone: Annotated[str, typer.Option(help="IANA time zone")] = "UTC",
                    input: Annotated[str, typer.Option("--input", help="JSON object")] = "{}",
                    catch_up: Annotated[Literal["skip", "once"], typer.Option(help="skip or once")] = "skip",
                    overlap: Annotated[Literal["skip", "allow", "cancel"],
                                       typer.Option(help="skip, allow or cancel")] = "skip",
                    paused: bool = False, address: AddressOpt = None, url: UrlOpt = None,
                    api_key: KeyOpt = None) -> None:
    """Create (or redefine) SCHEDULE_ID: a task of WORKFLOW at each tick of CRON (five fields, or
    six with seconds last)."""
    _show_schedule(connect(address, url, api_key).create_schedule(
        schedule_id, workflow, cron, timezone=timezone, input=parse_input(input),
        catch_up=catch_up, overlap=overlap, paused=paused))


@schedule_app.command("show")
def schedule_show(schedule_id: str, address: AddressOpt = None, url: UrlOpt = None,
                  api_key: KeyOpt = None) -> None:
    _show_schedule(connect(address, url, api_key).schedule(schedule_id))


@schedule_app.command("pause")
def schedule_pause(schedule_id: str, address: AddressOpt = None, url: UrlOpt = None,
                   api_key: KeyOpt = None) -> None:
    _show_schedule(connect(address, url, api_key).pause_schedule(schedule_id))


@schedule_app.command("resume")
def schedule_resume(schedule_id: str, address: AddressOpt = None, url: UrlOpt = None,
                    api_key: KeyOpt = None) -> None:
    """Resume from the next tick to come."""
    _show_schedule(connect(address, url, api_key).resume_schedule(schedule_id))


@schedule_app.command("delete")
def schedule_delete(schedule_id: str, address: AddressOpt = None, url: UrlOpt = None,
                    api_key: KeyOpt = None) -> None:
    connect(address, url, api_key).delete_schedule(schedule_id)
    out.print(f"deleted {schedule_id}", highlight=False)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RaysquadError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(1)
    except ValidationError as e:
        err.print(f"[red]error:[/red] {problems(e)}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
