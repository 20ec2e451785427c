"""Starting and stopping the HTTP API on Ray Serve: the application (``build``), the refusal to
listen beyond loopback without API keys, direct ingress (the Ingress replica serving the port itself,
on a local cluster), and the deploy that tries again after a failed bind.

Ray Serve (with numpy, gRPC and FastAPI, about 55 MiB) is imported only by what deploys or stops the
app. ``raysquad up`` deploys from a Ray actor of its own (``ServeDeployer``), ended once the app
is deployed: its process stays a small driver for as long as the runtime runs.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any, cast

import ray

from runtime.actors.handles import ours
from runtime.core.config import Settings
from serve import auth

if TYPE_CHECKING:
    from ray.serve import Deployment


def build(settings: Settings) -> Any:
    """The Serve application, sized for a small machine: fractional CPUs, 1..N replicas."""
    from serve.http import Ingress

    scaling: dict[str, Any] = (
        {"num_replicas": 1} if settings.http_replicas_max == 1 else
        {"autoscaling_config": {"min_replicas": 1, "max_replicas": settings.http_replicas_max,
                                "target_ongoing_requests": 32}})
    # serve.deployment made Ingress a Deployment; mypy does not follow a class decorator's result.
    return cast("Deployment", Ingress).options(
        ray_actor_options={"num_cpus": 0.1},
        # Room for every stream and as many other requests again, at least.
        max_ongoing_requests=max(256, 2 * settings.max_streams),
        logging_config={"enable_access_log": settings.http_access_log}, **scaling,
    ).bind(settings)


def open_bind_refusal(settings: Settings, host: str | None = None) -> str | None:
    """Why the API may not listen on ``host`` (default ``settings.http_host``): without API keys,
    only loopback is allowed."""
    host = settings.http_host if host is None else host
    if settings.api_keys or auth.is_loopback(host):
        return None
    return (f"refusing to serve on {host} without API keys: set RAYSQUAD_API_KEYS "
            "(a JSON object of key -> tenant) or use --host 127.0.0.1")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def direct_ingress_env(settings: Settings) -> dict[str, str]:
    """The Ray Serve variables of the direct path, or ``{}`` where the proxy stays.

    With ``http_ingress="direct"`` and one Ingress replica, Serve runs throughput-optimized
    (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``): no proxy process; the replica serves HTTP itself, with
    Serve's router and the app's code on its own event loop, request logs buffered and the GC
    frozen after start-up. Its port range is pinned to ``http_port`` alone, and the replica stops at
    once and a restarted one takes the port back at once (no 30 s drain or quarantine for a load
    balancer to deregister it: there is none in front). Several
    replicas on one node would each need a port of their own, so ``http_replicas_max`` above 1
    keeps the proxy, as does an ephemeral port (0).

    Serve (2.60) still starts its proxy on the head node in this mode; ``start_http`` gives it a
    free port of its own, so that ``http_port`` is the replica's.

    Serve reads these in its controller and replicas, which inherit the environment of the Ray
    cluster: they must be set before this process starts a local cluster; a cluster started
    elsewhere runs with whatever it was started with.
    """
    if settings.http_ingress != "direct" or settings.http_replicas_max > 1 or not settings.http_port:
        return {}
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            # Serve's range is half-open: [MIN, MAX).
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.http_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.http_port + 1),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
            # A restarted replica takes its port back at once (no quarantine for a load balancer).
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def direct_ingress_on(settings: Settings) -> bool:
    """Whether this process's Ray cluster serves HTTP from the Ingress replica (``direct_ingress_env``
    was set before it started)."""
    direct = direct_ingress_env(settings)
    return bool(direct) and all(os.environ.get(k) == v for k, v in direct.items())


def serve_http_options(settings: Settings) -> dict[str, Any]:
    """``serve.start``'s ``http_options``: on the direct path ``http_port`` is the replica's, and
    Serve's proxy, which it starts anyway, gets a free port of its own."""
    port = free_port(settings.http_host) if direct_ingress_on(settings) else settings.http_port
    return {"host": settings.http_host, "port": port}


def start_http(settings: Settings) -> str:
    """Run the HTTP app on Serve at ``settings.http_host:http_port``; returns its base URL.

    Without API keys the API has no authentication, so it may only listen on loopback.
    """
    start_serve(settings)
    return run_app(settings)


def start_serve(settings: Settings) -> None:
    """Start Serve (its controller, and its proxy where one is used) for the HTTP app, refusing an
    open bind without keys; it needs no runtime, so ``raysquad up`` starts it while the runtime's
    actors start."""
    from ray import serve

    from runtime.core.errors import ConfigError

    refusal = open_bind_refusal(settings)
    if refusal:
        raise ConfigError(refusal)
    # Serve's own notices (its proxy's address among them) are not this command's to print.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # Per-request access logs cost the proxy and the replica a file write each; errors still log.
    serve.start(http_options=serve_http_options(settings),
                logging_config={"enable_access_log": settings.http_access_log})


def run_app(settings: Settings) -> str:
    """Deploy the HTTP app on the started Serve (the runtime must be up); returns its base URL."""
    from ray import serve

    # One Serve application per runtime, named after its namespace (a cluster may run several).
    try:
        serve.run(build(settings), name=settings.namespace, route_prefix="/", blocking=False)
    except RuntimeError:
        if not direct_ingress_on(settings):
            raise
        _serve_again(settings)
    return f"http://{settings.http_host}:{settings.http_port}"


def _serve_again(settings: Settings) -> None:
    """Deploy once more after the direct-ingress replica failed to bind its port.

    Serve (2.60) blocks a port for good once a replica fails to bind it, and the direct path's range
    is that one port, so every later replica fails with NoAvailablePortError. Something held the port
    as the replica started (a process of a crashed runtime still dying): wait for the port, start
    Serve afresh (a new controller, nothing blocked) and deploy again; if the port stays taken, say
    so in one line.
    """
    from ray import serve

    from runtime.core.errors import ConfigError
    from serve.ports import wait_until_bindable

    logging.getLogger(__name__).warning(
        "the HTTP replica could not bind port %d; waiting for it and deploying again",
        settings.http_port)
    serve.shutdown()
    if blocked := wait_until_bindable(settings.http_host, settings.http_port):
        raise ConfigError(blocked) from None
    serve.start(http_options=serve_http_options(settings),
                logging_config={"enable_access_log": settings.http_access_log})
    try:
        serve.run(build(settings), name=settings.namespace, route_prefix="/", blocking=False)
    except RuntimeError as e:
        raise ConfigError(f"the HTTP API could not start on {settings.http_host}:"
                          f"{settings.http_port}: {e}") from None


def stop_http(namespace: str | None = None) -> bool:
    """Remove the runtime's Serve application (all of Serve when ``namespace`` is None); Serve
    itself (its controller and the proxy's port) stops once no application is left. True if there
    was an application to remove."""
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "Deleting app ...": ours to say
    if namespace is None:
        serve.shutdown()
        return True
    try:
        apps = serve.status().applications
    except Exception:  # noqa: BLE001 - Serve is not running on this cluster
        return False
    found = namespace in apps
    if found:
        serve.delete(namespace)
    if found and not set(apps) - {namespace}:
        serve.shutdown()
    return found


class _Deployer:
    """Where ``raysquad up`` runs Serve's calls: one process imports Serve once for both steps."""

    def start_serve(self, settings: Settings) -> None:
        start_serve(settings)

    def run_app(self, settings: Settings) -> str:
        return run_app(settings)


class ServeDeployer:
    """Deploys the HTTP app from a Ray actor of its own, so the caller never imports Serve: first
    ``start_serve`` (it needs no runtime: ``raysquad up`` runs it while the runtime's actors
    start), then ``run_app`` once the runtime is up, after which the actor, its process and Serve's
    imports end. One process for both steps, not one per step: Serve is imported once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._actor: Any = None

    def start_serve(self) -> None:
        self._actor = ray.remote(num_cpus=0)(_Deployer).remote()
        self._call(self._actor.start_serve.remote(self.settings))

    def run_app(self) -> str:
        """Deploy the app (after ``start_serve``); returns the API's base URL."""
        try:
            return cast("str", self._call(self._actor.run_app.remote(self.settings)))
        finally:
            self.close()

    def close(self) -> None:
        """End the deployer's process (Serve's controller and the app keep running)."""
        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None

    @staticmethod
    def _call(ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            raise ours(e) from None  # a refusal or a port that stays taken: one line
