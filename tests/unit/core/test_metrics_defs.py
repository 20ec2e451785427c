"""The metric definitions and the Grafana dashboard built from them stay in step."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runtime.core.metrics import DEFINITIONS, grafana_dashboard

ROOT = Path(__file__).resolve().parents[3]


def test_the_dashboard_in_the_repo_is_the_one_the_definitions_make() -> None:
    shipped = json.loads((ROOT / "deploy" / "grafana" / "raysquad.json").read_text())
    assert shipped == grafana_dashboard(), \
        "run: python -m runtime.core.metrics > deploy/grafana/raysquad.json"


def test_metric_names_and_labels_are_prometheus_names_without_task_ids() -> None:
    for name, (kind, description, tags) in DEFINITIONS.items():
        assert re.fullmatch(r"raysquad_[a-z_]+", name) and kind in ("counter", "gauge", "histogram")
        assert description and "task_id" not in tags and "id" not in tags
