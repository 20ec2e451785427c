"""What a default `raysquad up` costs at idle: its processes and their memory, the time to ready, and
the CPU it burns doing nothing.

One `raysquad up` (on a local cluster of its own, the dashboard on unless ``--no-dashboard``) in a
temporary folder. Measured:

- the seconds from the command to ``/readyz`` answering 200;
- after ``--settle`` seconds of quiet, every process of the runtime: the launcher and its
  descendants, and every process whose command line names the cluster's own temp dir (Ray's
  daemons); for each, its PSS (``/proc/<pid>/smaps_rollup``: shared pages split between their
  users, so the sum is the tree's real share of memory), grouped as Ray's own, Serve's, raysquad's
  (its actors, the launcher included);
- the CPU-seconds (user + system) the whole tree spends over ``--idle`` seconds with nothing to do.

    .venv/bin/python benchmarks/footprint.py [--app examples.hello] [--json benchmarks/results/footprint.json]

The runtime is stopped with SIGTERM to the launcher (what Ctrl-C does), then whatever is left of
its processes is killed by pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.common` importable here
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from tests.e2e.live import free_port  # noqa: E402

MIB = 1024 * 1024
SERVE_MARKS = ("ServeController", "ProxyActor", "ServeReplica", "SERVE_")
RAY_ACTORS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray's, not ours


@dataclass
class Proc:
    pid: int
    group: str  # "ray", "serve" or "raysquad"
    name: str
    pss_mib: float
    idle_cpu_s: float  # CPU-seconds over the idle period


def title(proc: psutil.Process) -> str:
    """The process's name as `ps` shows it: Ray renames workers ``ray::<Actor>`` in argv."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    exe = Path(cmd[0]).name if cmd else proc.name()
    for part in cmd[1:4]:  # the script a Python runs: dashboard.py, log_monitor.py, ...
        if part.endswith(".py") or part.startswith("-m"):
            return f"{exe} {Path(part).name}"
    return exe


def group_of(name: str, launcher: int, pid: int) -> str:
    if pid == launcher:
        return "raysquad"  # the `raysquad up` process (the driver)
    if any(mark in name for mark in SERVE_MARKS):
        return "serve"
    if name.startswith("ray::") and name not in RAY_ACTORS:
        return "raysquad"  # an actor of the runtime's
    return "ray"  # Ray's daemons, its idle workers, the dashboard and its agents


def tree(launcher: psutil.Process, temp_dir: Path) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {launcher.pid: launcher}
    found.update({c.pid: c for c in launcher.children(recursive=True)})
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def measure(app: str | None, dashboard: bool, settle_s: float, idle_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rs-footprint-"))
    temp_dir = Path(f"/tmp/rsfp-{os.getpid()}")  # Ray's session dir: short, for its socket paths
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "RAY_TMPDIR": str(temp_dir),
           "RAYSQUAD_DATA_DIR": str(work / "state"), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(Path(sys.executable).parent / "raysquad"), "up", "--port", str(port),
           "--dashboard" if dashboard else "--no-dashboard", *(["--app", app] if app else [])]
    url = f"http://127.0.0.1:{port}"
    log = open(work / "up.log", "wb")  # noqa: SIM115 - open for the process's life
    started = time.monotonic()
    launcher = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    procs: list[psutil.Process] = []
    try:
        while not ready(url):
            if launcher.poll() is not None:
                raise SystemExit(f"raysquad up exited:\n{(work / 'up.log').read_text()}")
            if time.monotonic() - started > 300:
                raise SystemExit("raysquad up was not ready within 300 s")
            time.sleep(0.1)
        ready_s = time.monotonic() - started
        time.sleep(settle_s)  # what starts lazily after ready, and the start's own work, settle
        root = psutil.Process(launcher.pid)
        procs = tree(root, temp_dir)
        before = cpu_seconds(procs)
        time.sleep(idle_s)
        procs = tree(root, temp_dir)
        after = cpu_seconds(procs)
        idle_cpu = sum(after[p] - before.get(p, 0.0) for p in after)
        rows = []
        for proc in procs:
            try:
                pss = proc.memory_full_info().pss / MIB
            except psutil.Error:
                continue
            name = "raysquad up (launcher)" if proc.pid == launcher.pid else title(proc)
            rows.append(Proc(proc.pid, group_of(name, launcher.pid, proc.pid), name, pss,
                             after.get(proc.pid, 0.0) - before.get(proc.pid, 0.0)))
    finally:
        stop(launcher, procs)
        log.close()
    rows.sort(key=lambda r: (r.group, -r.pss_mib))
    groups = {g: {"processes": sum(r.group == g for r in rows),
                  "pss_mib": round(sum(r.pss_mib for r in rows if r.group == g), 1)}
              for g in ("ray", "serve", "raysquad")}
    return {"app": app or "(default)", "dashboard": dashboard, "ready_s": round(ready_s, 2),
            "settle_s": settle_s, "idle_s": idle_s, "idle_cpu_s": round(idle_cpu, 2),
            "processes": len(rows), "pss_mib": round(sum(r.pss_mib for r in rows), 1),
            "groups": groups,
            "each": [asdict(r) | {"pss_mib": round(r.pss_mib, 1),
                                  "idle_cpu_s": round(r.idle_cpu_s, 2)} for r in rows]}


def stop(launcher: subprocess.Popen[bytes], procs: list[psutil.Process]) -> None:
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)  # up stops the runtime and its local cluster
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
    left = [p for p in procs if p.is_running()]
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=30)


def show(console: Console, result: dict[str, Any]) -> None:
    each = Table(title="processes at idle (PSS, and CPU over the idle period)")
    for col in ("group", "pid", "process", "PSS MiB", "idle CPU s"):
        each.add_column(col, justify="left" if col in ("group", "process") else "right")
    for r in result["each"]:
        each.add_row(r["group"], str(r["pid"]), r["name"], f"{r['pss_mib']:.1f}",
                     f"{r['idle_cpu_s']:.2f}")
    console.print(each)
    summary = Table(title=f"--app {result['app']}, dashboard "
                          f"{'on' if result['dashboard'] else 'off'}")
    for col in ("", "processes", "PSS MiB"):
        summary.add_column(col, justify="left" if not col else "right")
    for group, g in result["groups"].items():
        summary.add_row(group, str(g["processes"]), f"{g['pss_mib']:.0f}")
    summary.add_row("all", str(result["processes"]), f"{result['pss_mib']:.0f}")
    console.print(summary)
    console.print(f"ready (/readyz 200) {result['ready_s']:.1f} s after the command; idle CPU "
                  f"{result['idle_cpu_s']:.2f} CPU-seconds over {result['idle_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="examples.hello",
                        help="--app for raysquad up (default: one workflow and one agent role)")
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of quiet after ready")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the idle CPU is summed")
    parser.add_argument("--json", default="benchmarks/results/footprint.json")
    args = parser.parse_args()
    console = Console()
    result = measure(args.app, not args.no_dashboard, args.settle, args.idle)
    show(console, result)
    write_result(console, args.json, result)


if __name__ == "__main__":
    main()
