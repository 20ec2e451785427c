"""What the CLI's commands share: its two consoles, the one-line failure, the settings from the
command line, a client over Ray or HTTP, and how a task is shown."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from runtime.core.config import Settings
from runtime.core.models import TaskRecord, TaskStatus
from serve.http_client import HttpClient

if TYPE_CHECKING:
    from runtime.client.client import Client

# Piped or captured, rich would wrap tables at 80 columns and split ids; keep lines whole there.
out = Console() if sys.stdout.isatty() else Console(width=250)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=250)


def print_observability(config: Settings) -> None:
    """Where the Ray dashboard and the metrics are, and how to get in."""
    try:
        from ray._private.worker import get_dashboard_url

        dashboard = get_dashboard_url()
    except Exception:  # noqa: BLE001 - no dashboard, or a Ray that moved it
        dashboard = ""
    if dashboard:
        token = Path.home() / ".ray" / "auth_token"
        how = (f"; it asks for the token in {token}" if token.exists() else "")
        out.print(f"Ray dashboard on http://{dashboard}{how} (actors are named by role: store, "
                  "dispatcher, pool:workers, worker:*, queue:*, pool:*, agent:*, engine:*, "
                  "tools:*, gates, events).", highlight=False)
    if config.ray_metrics_export_port:
        out.print(f"Metrics for Prometheus on http://127.0.0.1:{config.ray_metrics_export_port}"
                  f"/metrics (raysquad's are ray_raysquad_*).", highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def settings(address: str | None = None, data_dir: Path | None = None, **more: Any) -> Settings:
    overrides = {k: v for k, v in {"ray_address": address, "data_dir": data_dir, **more}.items()
                 if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as e:
        fail(f"bad configuration: {problems(e)}")


def problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors())


def connect(address: str | None, url: str | None, api_key: str | None) -> Client | HttpClient:
    """A client over HTTP when --url is given, else over Ray."""
    if url:
        return HttpClient(url, api_key)
    from runtime.client.client import Client

    return Client.connect(settings(address))


def parse_input(text: str) -> dict[str, Any]:
    return parse_object(text, "--input", """'{"question": "..."}'""")


def parse_object(text: str, option: str, example: str = "") -> dict[str, Any]:
    """A command-line option's JSON object; a clear error (exit 2) for anything else."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{option} is not valid JSON: {e}", 2)
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object" + (f", like {example}" if example else ""), 2)
    return value


def show(record: TaskRecord) -> None:
    table = Table(show_header=False, box=None)
    for field in ("id", "workflow", "status", "priority", "runs", "error"):
        value = getattr(record, field)
        if value is not None:
            table.add_row(field, str(value.value if isinstance(value, TaskStatus) else value))
    out.print(table)


def print_result(record: TaskRecord) -> None:
    if record.status is not TaskStatus.SUCCEEDED:
        fail(f"task {record.id} {record.status.value}: {record.error or ''}")
    output = record.output
    if isinstance(output, dict) and isinstance(output.get("report"), str):
        out.print(Markdown(output["report"]))
    else:
        out.print_json(data=output)
