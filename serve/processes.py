"""``GET /v1/actors``: every process of the runtime, with its role, replica, pid, node, state and
restarts (``raysquad ps`` over HTTP, and the status page's Processes), for the tenants that may see
gates (the operators)."""

# No ``from __future__ import annotations``: FastAPI reads the dependency types as objects.
import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from serve.deps import Admin, responses, settings_of

router = APIRouter()


@router.get("/v1/actors", operation_id="listActors", responses=responses(403))
async def list_actors(request: Request, _admin: Admin,
                      dead: Annotated[bool, Query(description="also the processes that ended "
                                                              "(a replaced replica's)")] = False
                      ) -> dict[str, Any]:
    """Every actor of the runtime (each a process): the Store, the control host, the workflow
    workers, the agent replicas by role, the engines by model, the tool executors and the HTTP
    app's Serve actors; with pid, node, state (ALIVE, RESTARTING, DEAD, ...) and restarts."""
    from runtime.actors.processes import processes

    namespace = settings_of(request).namespace
    found = await asyncio.to_thread(processes, namespace, dead)
    return {"actors": [p.as_dict() for p in found]}
