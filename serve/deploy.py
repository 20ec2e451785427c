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

from runtime.config import Settings


class DeployArgs(BaseModel):
    """The ``args`` of the Serve config's application."""

    apps: list[str] = Field(default_factory=lambda: ["agents"],
                            description="modules with workflows and agents")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="Settings fields, over the RAYSQUAD_* variables")


def app(args: dict[str, Any]) -> Any:
    """Serve's application builder: the runtime (started if absent) and its Ingress."""
    from runtime.app import Runtime
    from runtime.handles import actor_names
    from serve.http import build

    parsed = DeployArgs.model_validate(args)
    settings = Settings(**{**parsed.settings, "detached": True})
    if not actor_names(settings.namespace, "store"):
        Runtime.start(settings, apps=parsed.apps)
    return build(settings)
