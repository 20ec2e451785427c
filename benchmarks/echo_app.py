"""The floor for benchmarks/submit_latency.py: a bare FastAPI echo, on Ray Serve or on plain uvicorn.

It answers POST /v1/tasks with 202 and the JSON body it was sent, and GET /healthz, and does nothing
else, so whatever it costs is the HTTP path's own cost. On Serve it runs with the Serve settings
of raysquad's Ingress, read from the same variables with the same defaults
(``RAYSQUAD_HTTP_REPLICAS_MAX``, 1: one replica, more autoscale at 32 ongoing;
``RAYSQUAD_HTTP_ACCESS_LOG``, off; ``RAYSQUAD_HTTP_INGRESS``, direct: the replica serves HTTP itself,
throughput-optimized; 0.1 CPU, at most 256 ongoing requests) on its own local Ray cluster; under
uvicorn it runs in this one process, no Ray.

    .venv/bin/python benchmarks/echo_app.py serve --port 8011
    .venv/bin/python benchmarks/echo_app.py uvicorn --port 8012

It runs until SIGTERM or Ctrl-C, then shuts Serve and Ray down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from fastapi import Body, FastAPI

app = FastAPI(title="echo")


@app.post("/v1/tasks", status_code=202)
async def submit(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI idiom
    return body


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def run_serve(port: int, num_cpus: int) -> None:
    import os

    import ray
    from ray import serve

    from runtime.core.config import Settings
    from serve.launch import direct_ingress_env, serve_http_options

    # The HTTP settings raysquad's Ingress would run with, the direct path (no proxy hop) included.
    settings = Settings(http_host="127.0.0.1", http_port=port)
    os.environ.update(direct_ingress_env(settings))
    scaling: dict[str, Any] = (
        {"num_replicas": 1} if settings.http_replicas_max == 1 else
        {"autoscaling_config": {"min_replicas": 1, "max_replicas": settings.http_replicas_max,
                                "target_ongoing_requests": 32}})
    logging_config = {"enable_access_log": settings.http_access_log}
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level=logging.ERROR, log_to_driver=False)
    try:
        class Echo:
            pass

        echo = serve.deployment(max_ongoing_requests=256)(serve.ingress(app)(Echo))
        serve.start(http_options=serve_http_options(settings), logging_config=logging_config)
        serve.run(echo.options(
            ray_actor_options={"num_cpus": 0.1}, logging_config=logging_config, **scaling,
        ).bind(), name="echo", route_prefix="/", blocking=False)
        print(f"echo on Ray Serve at http://127.0.0.1:{port}", flush=True)
        _wait_for_stop()
        serve.shutdown()
    finally:
        ray.shutdown()


def run_uvicorn(port: int) -> None:
    import uvicorn

    # uvicorn handles SIGTERM and Ctrl-C itself.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _wait_for_stop() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("mode", choices=["serve", "uvicorn"])
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (serve)")
    args = p.parse_args(argv)
    if args.mode == "serve":
        run_serve(args.port, args.num_cpus)
    else:
        run_uvicorn(args.port)


if __name__ == "__main__":
    main()
