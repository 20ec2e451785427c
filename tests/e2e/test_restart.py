"""The whole runtime killed mid-run (driver, Ray and every actor gone) and started on the same SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import ROOT, count_lines, wait_for

TASKS = 12


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    return subprocess.Popen([sys.executable, "-m", "tests.e2e.runtime_process", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(data / "raysquad.db")


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    parent = psutil.Process(proc.pid)
    tree = [parent, *parent.children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"processes survived SIGKILL: {alive}"


def test_runtime_killed_and_restarted_loses_nothing(tmp_path: Path) -> None:
    data, side = tmp_path / "state", tmp_path / "effects"
    side.mkdir()
    first = _spawn("submit", str(data), str(side), str(TASKS))
    try:
        wait_for(lambda: (side / "ids").exists(), timeout_s=120, what="the tasks to be submitted")

        def mid_run() -> bool:
            with _db(data) as db:
                steps = db.execute("SELECT count(*) FROM steps").fetchone()[0]
                running = db.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]
            return steps >= 8 and running > 0

        wait_for(mid_run, timeout_s=120, what="tasks to be part way through")
    finally:
        _kill_tree(first)

    ids = json.loads((side / "ids").read_text())
    with _db(data) as db:
        statuses = dict(db.execute("SELECT id, status FROM tasks").fetchall())
        recorded = db.execute("SELECT task_id, key FROM steps").fetchall()
    assert sorted(statuses) == sorted(ids)
    assert "running" in statuses.values() and "queued" in statuses.values(), statuses

    second = _spawn("resume", str(data), str(side))
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    final = json.loads((side / "final.json").read_text())
    assert final == {task_id: "succeeded" for task_id in ids}

    for task_id, key in recorded:  # every step recorded before the kill ran exactly once
        assert count_lines(side / f"{task_id}.step{key[1:]}") == 1, (task_id, key)
    for task_id in ids:  # and every step ran: at most twice, for the one interrupted by the kill
        for step in range(1, 6):
            assert 1 <= count_lines(side / f"{task_id}.step{step}") <= 2
