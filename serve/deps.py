"""What every route of the HTTP API shares: the caller's tenant and the admin check (FastAPI
dependencies), the error body and the ``responses`` every route documents, and the runtime's client
and settings, which the Ingress keeps in the app's state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from pydantic import BaseModel

from runtime.client.client import AsyncClient
from runtime.core.config import Settings
from serve.auth import key_tenant


class ErrorDetail(BaseModel):
    type: str
    message: str
    problems: list[Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (401, 422, *codes)}


# Every POST may also meet the body guard: malformed or non-JSON, wrong content type, too large.
BODY_ERRORS = (400, 413, 415)


async def tenant_of(request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's tenant from ``Authorization: Bearer KEY``; open (tenant "default") with no keys.

    ``async`` although it awaits nothing: FastAPI runs a sync dependency in a worker thread, a thread
    hop on every request for a few comparisons.
    """
    keys = settings_of(request).api_keys
    if not keys:
        return "default"
    tenant = key_tenant(keys, authorization)
    if tenant is not None:
        return tenant
    raise HTTPException(401, "missing or unknown API key: send Authorization: Bearer <key>"
                        if authorization else "missing API key: send Authorization: Bearer <key>",
                        headers={"WWW-Authenticate": "Bearer"})


Tenant = Annotated[str, Depends(tenant_of)]


def admin_of(request: Request, tenant: Tenant) -> str:
    """What is the cluster's, not a tenant's (gates, the runtime's processes): with API keys, only
    ``admin_tenants`` see and change it."""
    settings = settings_of(request)
    if settings.api_keys and tenant not in settings.admin_tenants:
        raise HTTPException(403, f"tenant {tenant!r} may not {request.method} {request.url.path}: "
                                 "it is for operators (RAYSQUAD_ADMIN_TENANTS lists the tenants "
                                 "that may)")
    return tenant


Admin = Annotated[str, Depends(admin_of)]


def client_of(request: Request) -> AsyncClient:
    """The runtime's client, which the Ingress put in the app's state."""
    return request.app.state.client


def settings_of(request: Request) -> Settings:
    return request.app.state.settings
