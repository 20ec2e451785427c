"""Follow a task's events with a progress bar (rich) until it ends."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.core.models import TaskRecord


def follow(client: Any, task_id: str, console: Console) -> TaskRecord:
    """Show the task's progress events and steps as they arrive; return its final record.

    ``client`` is a ``runtime.Client`` (over Ray) or a ``serve.http_client.HttpClient`` (over SSE).
    """
    with Progress(TextColumn("[bold]{task.fields[status]:>9}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as bar:
        row = bar.add_task("queued", total=1.0, status="queued")
        for event in client.events(task_id, follow=True):
            if event.kind == "progress":
                if "progress" in event.data:
                    bar.update(row, completed=float(event.data["progress"]))
                if "message" in event.data:
                    bar.update(row, description=str(event.data["message"]))
            elif event.kind == "step":
                bar.update(row, description=f"step {event.data['key']} done")
            elif event.kind == "step_retry":
                bar.update(row, description=f"retrying {event.data['key']}: {event.data['error']}")
            elif event.kind in ("started", "requeued"):
                bar.update(row, status="running" if event.kind == "started" else "queued")
            elif event.kind in ("succeeded", "failed", "cancelled"):
                bar.update(row, status=event.kind,
                           completed=1.0 if event.kind == "succeeded" else bar.tasks[0].completed)
    return client.get(task_id)
