"""The runtime and its HTTP app as one Ray Serve application, for ``serve deploy`` and KubeRay.

``deploy/serve.yaml`` names ``serve.deploy:app`` as its import path. Serve calls ``app`` with the
config's ``args`` wherever it builds the application (a task on the cluster); ``app`` starts the
runtime's actors, detached, unless the namespace already has a runtime (a redeploy, a controller that
restarted), and returns the Ingress deployment. The runtime is configured the usual way, by
``RAYSQUAD_*`` variables (set them in the config's ``runtime_env.env_vars``); ``args`` may name the
app modules and override settings.

On a cluster the Store should be PostgreSQL (``RAYSQUAD_STORE=postgres``): a SQLite file lives on one
node, and the builder's working directory is a temporary copy. ``serve delete`` removes the HTTP app;
``raysquad down`` (with the same namespace) stops the runtime too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from runtime.actors import names
from runtime.core.config import Settings


class DeployArgs(BaseModel):
    """The ``args`` of the Serve config's application."""

    apps: list[str] = Field(default_factory=lambda: ["agents"],
                            description="modules with workflows and agents")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="Settings fields, over the RAYSQUAD_* variables")


def serve_http_host() -> str | None:
    """The host Serve's proxies (and direct-ingress replicas) listen on: the deployed config's
    ``http_options.host``, as Serve's controller holds it (Ray 2.60 has no public getter; the
    controller's client keeps it as ``http_config``). None where no controller runs."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.http_config.host


def deploy_refusal(settings: Settings, serve_host: str | None) -> str | None:
    """Why this deploy may not serve: without API keys, neither Serve's host nor ``http_host`` may
    be other than loopback (Serve binds its own ``http_options.host``, whatever ``http_host``
    says)."""
    from serve.launch import open_bind_refusal

    for host, where in ((serve_host, "Serve's http_options.host"),
                        (settings.http_host, "RAYSQUAD_HTTP_HOST")):
        if host and open_bind_refusal(settings, host):
            return (f"refusing to serve on {host} ({where}) without API keys: set "
                    "RAYSQUAD_API_KEYS (a JSON object of key -> tenant) in the nodes' environment "
                    "or the config's env_vars, or serve on 127.0.0.1")
    return None


def app(args: dict[str, Any]) -> Any:
    """Serve's application builder: the runtime (started if absent) and its Ingress. Without API
    keys on a host other than loopback it refuses, before anything starts, with a one-line reason
    (Serve shows a ``RayServeException``'s message as the application's status, no traceback)."""
    from ray.serve.exceptions import RayServeException

    from runtime.actors.handles import actor_names
    from runtime.control.launch import Runtime
    from serve.launch import build

    parsed = DeployArgs.model_validate(args)
    settings = Settings(**{**parsed.settings, "detached": True})
    refusal = deploy_refusal(settings, serve_http_host())
    if refusal:
        raise RayServeException(refusal)
    if not actor_names(settings.namespace, names.STORE):
        Runtime.start(settings, apps=parsed.apps)
    return build(settings)
