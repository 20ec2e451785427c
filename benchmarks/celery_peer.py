"""The Celery peer of the rate-limit benchmark: M chains of k rate-limited calls, Celery with Redis.

Each call is a Celery task that records its start, sleeps ``call_s`` (the simulated engine's latency)
and records its end; each of the M workflows is a ``chain`` of k such tasks. The global limit is at
most ``limit`` call starts in any ``interval_s`` and at most ``concurrency`` calls at once. Celery
can only say ``rate_limit="R/s"`` on the task, and that limit belongs to each worker instance (a
token bucket of capacity 1 in each worker's consumer), not to the cluster. Two settings are run:

- ``naive``: ``rate_limit`` is the global rate R = limit / interval_s, as the docs' one-liner reads.
  W workers then start up to W x R calls per second between them: this is the violation measured.
- ``split``: ``rate_limit`` is R / W on each worker, the usual static workaround: it complies, at
  the price of a fixed share per worker whatever the load.

The workers are W ``celery worker`` processes on this machine (broker and result backend: the local
Redis, db 7), started for the run and stopped by pid at its end. Each gets ``concurrency // W`` pool
slots (the remainder spread one each), so that exactly ``concurrency`` calls can run at once over the
cluster. The pool does not change the rate semantics (the bucket lives in each worker's consumer,
before the pool, whatever the pool), only how fast Celery gets calls through it, so the peer gets the
fastest setting measured here (M=40, k=5, 20/s, 8 at once, on 2 CPUs): ``prefork`` (Celery's default
pool) with ``worker_prefetch_multiplier=1`` (Celery's advice for long tasks): makespan about 4 s.
At Celery's default prefetch of 4 the same run took 8-10 s, and 14 s at 16: once the burst is over,
each worker starts about one call a second, with gaps of 1 s and more between its calls (calls
held back by a bucket count against the prefetch window). ``threads`` would suit an I/O wait like
this one on paper, but on Redis it did worse (26 s at prefetch 4, 14 s at 1), with the same
one-a-second tail. ``solo`` would cap each worker at one call at once. ``--pool`` and
``--prefetch-multiplier`` keep the others one flag away.

Every call's ``(start, end, worker name)`` goes to a Redis list under a key prefix unique to the run;
Celery's own keys (queue, results) carry the same prefix (``global_keyprefix``), and only keys under
it are deleted at the end. The makespan runs from the first submit to the last call's end.

    .venv/bin/python benchmarks/celery_peer.py [--m 40] [--k 5] [--limit 20] [--interval-s 1]
        [--concurrency 8] [--call-s 0.02] [--workers 4] [--modes naive,split]
        [--pool prefork] [--prefetch-multiplier 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable here
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402
from celery import Celery, Task, chain  # noqa: E402
from celery.signals import worker_ready  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from benchmarks.window_stats import (  # noqa: E402
    Record,
    max_starts_in_window,
    peak_concurrency,
    theoretical_makespan,
    violations,
)

REDIS_URL = "redis://127.0.0.1:6379/7"
CONFIG_ENV = "RAYSQUAD_CELERY_PEER"  # the run's PeerConfig as JSON, for the worker processes
TASK_NAME = "peer.call"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
MODES = ("naive", "split")


@dataclass(frozen=True)
class PeerConfig:
    """What the driver and its workers must agree on for one run."""

    prefix: str  # of every Redis key of the run; hex and colons only, so also a safe SCAN pattern
    rate_per_worker_s: float  # Celery's rate_limit, in calls per second, on each worker
    call_s: float
    redis_url: str = REDIS_URL

    @property
    def queue(self) -> str:
        return f"{self.prefix}calls"

    @property
    def records_key(self) -> str:
        return f"{self.prefix}records"

    @property
    def ready_key(self) -> str:
        return f"{self.prefix}ready"


# -- the Celery side (also what each worker process imports) -------------------------------------------


def make_app(cfg: PeerConfig) -> Celery:
    """A Celery app on the local Redis with the one rate-limited task, everything under cfg.prefix."""
    app = Celery("raysquad_peer", broker=cfg.redis_url, backend=cfg.redis_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": cfg.prefix},
        result_backend_transport_options={"global_keyprefix": cfg.prefix},
        broker_connection_retry_on_startup=True,
        task_default_queue=cfg.queue,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=600,  # a safety net: the run deletes its keys itself
        worker_enable_remote_control=False,  # no pidbox: nothing here talks to the workers
        worker_hijack_root_logger=False,
    )
    records = functools.partial(_redis, cfg.redis_url)

    @app.task(name=TASK_NAME, bind=True, shared=False, rate_limit=f"{cfg.rate_per_worker_s!r}/s")
    def call(self: Task, workflow: int, step: int) -> int:
        start = time.time()
        time.sleep(cfg.call_s)
        end = time.time()
        worker = self.request.hostname  # the worker instance, whose bucket let this call through
        records().rpush(cfg.records_key, json.dumps([start, end, worker, workflow, step]))
        return step

    return app


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)  # one connection pool per process


@functools.cache
def _worker_app() -> Celery:
    cfg = PeerConfig(**json.loads(os.environ[CONFIG_ENV]))

    @worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        _redis(cfg.redis_url).rpush(cfg.ready_key, os.getpid())

    return make_app(cfg)


def __getattr__(name: str) -> Any:
    # `celery -A benchmarks.celery_peer:worker_app worker`: built from the environment only in a worker,
    # so that importing this module (the driver, the raysquad half) starts nothing.
    if name == "worker_app":
        return _worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the driver -------------------------------------------------------------------------------------


def run_celery(m: int, k: int, limit: int, interval_s: float, concurrency: int, call_s: float,
               workers: int = 4, *, split_rate: bool = False, pool: str = "prefork",
               prefetch_multiplier: int = 1, timeout_s: float = 300.0) -> dict[str, Any]:
    """Run M chains of k calls on ``workers`` fresh Celery workers and measure them against the limits.

    ``split_rate=False`` gives each worker ``rate_limit`` = limit / interval_s (the global rate);
    ``True`` gives each that divided by ``workers``. ``pool`` and ``prefetch_multiplier`` are the
    workers' (see the module's docstring for why prefork). Returns makespan_s (first submit to last end),
    calls, max_starts_in_window, violations, peak_concurrency, theoretical_makespan_s, ratio
    (makespan over the bound), and the settings and per-worker figures behind them.
    """
    if min(m, k, limit, workers) < 1 or concurrency < workers or interval_s <= 0 or call_s < 0:
        raise ValueError("m, k, limit, workers >= 1, concurrency >= workers, interval_s > 0, call_s >= 0")
    rate_s = limit / interval_s / (workers if split_rate else 1)
    cfg = PeerConfig(prefix=f"raysquad-bench:celery:{uuid.uuid4().hex}:", rate_per_worker_s=rate_s,
                     call_s=call_s)
    slots = [concurrency // workers + (i < concurrency % workers) for i in range(workers)]
    db = _redis(cfg.redis_url)
    db.ping()  # fail before starting anything if Redis is not there
    app = make_app(cfg)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="raysquad-celery-") as log_dir:
        try:
            procs = [start_worker(cfg, i, n, pool, prefetch_multiplier, Path(log_dir))
                     for i, n in enumerate(slots)]
            wait_ready(db, cfg, procs, Path(log_dir))
            t0 = time.time()
            results = [chain(app.signature(TASK_NAME, args=(w, s), immutable=True) for s in range(k))
                       .apply_async() for w in range(m)]
            deadline = time.monotonic() + timeout_s
            for r in results:
                r.get(timeout=max(0.1, deadline - time.monotonic()))
            raw = [json.loads(x) for x in db.lrange(cfg.records_key, 0, -1)]
        finally:
            _stop_workers(procs)
            app.close()
            _delete_keys(db, cfg.prefix)
    return _measure(raw, t0, m=m, k=k, limit=limit, interval_s=interval_s, concurrency=concurrency,
                    call_s=call_s, workers=workers, slots=slots, rate_s=rate_s, split_rate=split_rate,
                    pool=pool, prefetch_multiplier=prefetch_multiplier)


def start_worker(cfg: Any, index: int, slots: int, pool: str, prefetch_multiplier: int,
                 log_dir: Path, app: str = "benchmarks.celery_peer:worker_app", name: str = "peer",
                 config_env: str = CONFIG_ENV, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    """One ``celery worker`` process for ``app`` (its config, a dataclass, passed as JSON in
    ``config_env``) on the run's queue, logging to ``log_dir``."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), **(env or {}))
    full_env[config_env] = json.dumps(asdict(cfg))
    cmd = [sys.executable, "-m", "celery", "-A", app, "worker",
           "--pool", pool, "--concurrency", str(slots), "--queues", cfg.queue,
           "--prefetch-multiplier", str(prefetch_multiplier),
           "--hostname", f"{name}{index}-{cfg.prefix.split(':')[2][:8]}@%h", "--loglevel", "WARNING",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(log_dir / f"worker{index}.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_ready(db: redis.Redis, cfg: Any, procs: list[subprocess.Popen[bytes]],
               log_dir: Path) -> None:
    """Poll until every worker has said it consumes (its worker_ready signal); fail fast if one died."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while int(db.llen(cfg.ready_key)) < len(procs):
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = (log_dir / f"worker{dead[0] if dead else 0}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Celery workers not ready (exited: {dead}); log:\n{tail}")
        time.sleep(POLL_S)


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (Celery's warm shutdown) to each worker we started, by pid; SIGKILL if one lingers.

    A prefork worker stops its own pool processes; any of them still alive afterwards (their parent
    was killed) is killed by pid too.
    """
    children: list[psutil.Process] = []
    for p in procs:
        if p.poll() is None:
            try:
                children += psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_TIMEOUT_S)
    for child in children:
        try:
            child.kill()  # psutil checks the process is still the one it saw: safe against pid reuse
        except psutil.NoSuchProcess:
            pass


def _delete_keys(db: redis.Redis, prefix: str) -> None:
    keys = list(db.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        db.delete(*keys)


def _measure(raw: list[list[Any]], t0: float, *, m: int, k: int, limit: int, interval_s: float,
             concurrency: int, call_s: float, workers: int, slots: list[int], rate_s: float,
             split_rate: bool, pool: str, prefetch_multiplier: int) -> dict[str, Any]:
    if len(raw) != m * k:
        raise RuntimeError(f"{len(raw)} call records, expected {m * k}")
    records: list[Record] = [(r[0], r[1]) for r in raw]
    by_worker: dict[str, list[Record]] = defaultdict(list)
    for start, end, worker, *_ in raw:
        by_worker[worker].append((start, end))
    makespan_s = max(end for _, end in records) - t0
    bound = theoretical_makespan(m * k, limit, interval_s, concurrency, call_s)
    return {
        "system": "celery", "mode": "split" if split_rate else "naive",
        "makespan_s": makespan_s, "calls": len(records),
        "max_starts_in_window": max_starts_in_window(records, interval_s),
        "violations": violations(records, limit, interval_s),
        "peak_concurrency": peak_concurrency(records),
        "theoretical_makespan_s": bound, "ratio": makespan_s / bound if bound else float("nan"),
        "first_start_s": min(start for start, _ in records) - t0,
        "per_worker": [{"calls": len(rs), "max_starts_in_window": max_starts_in_window(rs, interval_s)}
                       for rs in sorted(by_worker.values(), key=len, reverse=True)],
        "settings": {"m": m, "k": k, "limit": limit, "interval_s": interval_s,
                     "concurrency": concurrency, "call_s": call_s, "workers": workers,
                     "concurrency_per_worker": slots, "rate_limit_per_worker_s": rate_s,
                     "pool": pool, "prefetch_multiplier": prefetch_multiplier},
    }


# -- the script -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    loadavg_before = list(os.getloadavg())
    console = Console(width=100)
    runs = {}
    for mode in args.modes:
        console.print(f"celery ({mode}): {args.m} chains x {args.k} calls, {args.workers} workers ...")
        runs[mode] = run_celery(args.m, args.k, args.limit, args.interval_s, args.concurrency,
                                args.call_s, args.workers, split_rate=mode == "split", pool=args.pool,
                                prefetch_multiplier=args.prefetch_multiplier, timeout_s=args.timeout_s)
    import celery  # the version, for the record

    result = {
        "benchmark": "celery_peer", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs,
        "args": vars(args),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "celery": celery.__version__, "redis_py": redis.__version__,
                    "platform": platform.platform(), "loadavg_before": loadavg_before,
                    "loadavg_after": list(os.getloadavg())},
    }
    _print(console, args, runs)
    return write_result(console, args.json, result)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--m", type=int, default=40, help="workflows (chains)")
    p.add_argument("--k", type=int, default=5, help="calls per workflow, one after another")
    p.add_argument("--limit", type=int, default=20, help="global limit: call starts per interval")
    p.add_argument("--interval-s", type=float, default=1.0, help="the limit's window")
    p.add_argument("--concurrency", type=int, default=8, help="global limit: calls at once")
    p.add_argument("--call-s", type=float, default=0.02, help="how long one call takes")
    p.add_argument("--workers", type=int, default=4, help="Celery worker processes")
    p.add_argument("--modes", type=lambda s: [x for x in s.split(",") if x], default=list(MODES),
                   help="naive (rate_limit = R on each worker) and/or split (R / workers on each)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"],
                   help="the workers' pool (the module's docstring says why prefork)")
    p.add_argument("--prefetch-multiplier", type=int, default=1,
                   help="the workers' (Celery's default is 4; the module's docstring says why 1)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up on a run after this")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "celery_peer.json"))
    args = p.parse_args(argv)
    if unknown := set(args.modes) - set(MODES):
        p.error(f"unknown modes: {sorted(unknown)}")
    return args


def _print(console: Console, args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> None:
    table = Table(title=f"Celery, {args.workers} {args.pool} workers: {args.m} chains x {args.k} calls of "
                        f"{args.call_s * 1000:.0f} ms, limit {args.limit} per {args.interval_s:g} s "
                        f"and {args.concurrency} at once")
    table.add_column("figure")
    for mode, r in runs.items():
        table.add_column(f"{mode} ({r['settings']['rate_limit_per_worker_s']:g}/s per worker)",
                         justify="right")
    rows = [
        ("calls", lambda r: str(r["calls"])),
        (f"max starts in any {args.interval_s:g} s (limit {args.limit})",
         lambda r: str(r["max_starts_in_window"])),
        ("violations (calls over the limit)", lambda r: str(r["violations"])),
        ("max starts in a window, per worker",
         lambda r: " ".join(str(w["max_starts_in_window"]) for w in r["per_worker"])),
        ("calls per worker", lambda r: " ".join(str(w["calls"]) for w in r["per_worker"])),
        (f"peak concurrency (limit {args.concurrency})", lambda r: str(r["peak_concurrency"])),
        ("makespan (first submit -> last end)", lambda r: f"{r['makespan_s']:.2f} s"),
        ("theoretical makespan (lower bound)", lambda r: f"{r['theoretical_makespan_s']:.2f} s"),
        ("ratio", lambda r: f"{r['ratio']:.2f}x"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in runs.values()))
    console.print(table)


if __name__ == "__main__":
    main()
