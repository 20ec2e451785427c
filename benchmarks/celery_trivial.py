"""The Celery peer of benchmarks/throughput.py: N workflows of k trivial tasks, Celery with Redis.

A workflow of k=1 is one Celery task; of k>1, a ``chain`` of k tasks, each link its own Celery task
(as each of raysquad's steps is its own checkpoint). A task does nothing but, if it is the last of
its workflow, push its end time to a Redis list. The workers are W ``celery worker`` processes on
this machine (broker and result backend: the local Redis, db 7), started before the clock starts and
stopped by pid at the end; every key of the run (queue, results, the end times) carries a prefix
unique to the run (``global_keyprefix``) and only keys under it are deleted. Celery's settings are
its defaults otherwise: results kept in Redis, ``acks_late`` off (a task is acknowledged when a
worker takes it, so a worker that dies mid-task loses it), JSON serialization.

benchmarks/throughput.py drives it (``run_celery``); this module is also what each worker imports
(``celery -A benchmarks.celery_trivial:worker_app worker``), built from the environment.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.*` importable here
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from celery import Celery, chain  # noqa: E402
from celery.signals import worker_ready  # noqa: E402

from benchmarks.celery_peer import (  # noqa: E402
    REDIS_URL,
    _delete_keys,
    _redis,
    _stop_workers,
    start_worker,
    wait_ready,
)

CONFIG_ENV = "RAYSQUAD_CELERY_TRIVIAL"  # the run's TrivialConfig as JSON, for the worker processes
TASK_NAME = "trivial.step"
READY_TIMEOUT_S = 60.0
POLL_S = 0.05


@dataclass(frozen=True)
class TrivialConfig:
    """What the driver and its workers must agree on for one run."""

    prefix: str  # of every Redis key of the run; hex and colons only, so also a safe SCAN pattern
    redis_url: str = REDIS_URL

    @property
    def queue(self) -> str:
        return f"{self.prefix}steps"

    @property
    def done_key(self) -> str:
        return f"{self.prefix}done"

    @property
    def ready_key(self) -> str:
        return f"{self.prefix}ready"


def make_app(cfg: TrivialConfig, *, ignore_result: bool = False) -> Celery:
    """A Celery app on the local Redis with the one trivial task, everything under cfg.prefix."""
    app = Celery("raysquad_trivial", broker=cfg.redis_url, backend=cfg.redis_url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": cfg.prefix},
        result_backend_transport_options={"global_keyprefix": cfg.prefix},
        broker_connection_retry_on_startup=True,
        task_default_queue=cfg.queue,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_ignore_result=ignore_result,
        result_expires=600,  # a safety net: the run deletes its keys itself
        worker_enable_remote_control=False,  # no pidbox: nothing here talks to the workers
        worker_hijack_root_logger=False,
    )
    done = functools.partial(_redis, cfg.redis_url)

    @app.task(name=TASK_NAME, shared=False)
    def step(workflow: int, index: int, last: bool) -> int:
        if last:
            done().rpush(cfg.done_key, json.dumps([time.time(), workflow]))
        return index

    return app


@functools.cache
def _worker_app() -> Celery:
    cfg = TrivialConfig(**json.loads(os.environ[CONFIG_ENV]))

    @worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        _redis(cfg.redis_url).rpush(cfg.ready_key, os.getpid())

    return make_app(cfg, ignore_result=os.environ.get(f"{CONFIG_ENV}_IGNORE_RESULT") == "1")


def __getattr__(name: str) -> Any:
    # Built from the environment only in a worker, so that importing this module starts nothing.
    if name == "worker_app":
        return _worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the driver -------------------------------------------------------------------------------------


def run_celery(ks: list[int], n: dict[int, int], *, workers: int = 2, concurrency: int = 2,
               prefetch_multiplier: int = 4, pool: str = "prefork", submitters: int = 1,
               warmup: int = 50, ignore_result: bool = False, timeout_s: float = 600.0,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """For each k in ``ks``: n[k] workflows of k chained trivial tasks on the same W fresh workers.

    Each run: submit every workflow (``submitters`` threads, or a plain loop at 1), poll Redis until
    every workflow's last task has pushed its end time, and time from the first submit to the
    latest end. Returns the settings and, per k, tasks_per_s (workflows per second), elapsed_s,
    submit_s and lost (workflows whose end never came).
    """
    cfg = TrivialConfig(prefix=f"raysquad-bench:throughput:{uuid.uuid4().hex}:")
    db = _redis(cfg.redis_url)
    db.ping()  # fail before starting anything if Redis is not there
    app = make_app(cfg, ignore_result=ignore_result)
    procs: list[subprocess.Popen[bytes]] = []
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="raysquad-celery-") as log_dir:
        try:
            procs = [start_worker(cfg, i, concurrency, pool, prefetch_multiplier, Path(log_dir),
                                  app="benchmarks.celery_trivial:worker_app", name="trivial",
                                  config_env=CONFIG_ENV,
                                  env={f"{CONFIG_ENV}_IGNORE_RESULT": "1" if ignore_result else "0"})
                     for i in range(workers)]
            wait_ready(db, cfg, procs, Path(log_dir))
            for k in ks:
                if warmup:  # fork-time imports, connections: not what is measured
                    _one_run(app, db, cfg, k, warmup, submitters, timeout_s)
                runs[f"k{k}"] = run = _one_run(app, db, cfg, k, n[k], submitters, timeout_s)
                log(f"  celery k={k}: {run['workflows']} workflows in {run['elapsed_s']:.2f} s = "
                    f"{run['tasks_per_s']:.0f}/s (submitting took {run['submit_s']:.2f} s), "
                    f"lost {run['lost']}")
        finally:
            _stop_workers(procs)
            app.close()
            _delete_keys(db, cfg.prefix)
    return {"runs": runs, "settings": {
        "workers": workers, "pool": pool, "concurrency_per_worker": concurrency,
        "prefetch_multiplier": prefetch_multiplier, "submitters": submitters,
        "submit": "a plain loop" if submitters <= 1 else f"a pool of {submitters} threads",
        "warmup_workflows": warmup, "ignore_result": ignore_result, "acks_late": False,
        "broker": "redis (db 7)", "result_backend": None if ignore_result else "redis (db 7)"}}


def _one_run(app: Celery, db: redis.Redis, cfg: TrivialConfig, k: int, n: int, submitters: int,
             timeout_s: float) -> dict[str, Any]:
    db.delete(cfg.done_key)

    def submit(w: int) -> None:
        if k == 1:
            app.signature(TASK_NAME, args=(w, 0, True), immutable=True).apply_async()
        else:
            chain(app.signature(TASK_NAME, args=(w, i, i == k - 1), immutable=True)
                  for i in range(k)).apply_async()

    t0 = time.time()
    if submitters <= 1:
        for w in range(n):
            submit(w)
    else:
        with ThreadPoolExecutor(submitters) as pool:
            list(pool.map(submit, range(n)))
    submit_s = time.time() - t0
    deadline = time.monotonic() + timeout_s
    while (done := int(db.llen(cfg.done_key))) < n and time.monotonic() < deadline:
        time.sleep(POLL_S)
    ends = [json.loads(x) for x in db.lrange(cfg.done_key, 0, -1)]
    if not ends:
        raise RuntimeError(f"no Celery workflow of {n} (k={k}) ended within {timeout_s} s")
    elapsed = max(end for end, _ in ends) - t0
    return {"k": k, "workflows": n, "tasks": n * k, "ended": done, "lost": n - len({w for _, w in ends}),
            "elapsed_s": elapsed, "tasks_per_s": n / elapsed, "steps_per_s": n * k / elapsed,
            "submit_s": submit_s}


