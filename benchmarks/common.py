"""What the benchmark scripts share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console


def write_result(console: Console, json_path: str | Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write a benchmark's result as JSON (creating the folder) and say where."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {path}")
    return result
