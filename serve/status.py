"""The status page: static files (``serve/static``: HTML, CSS, plain JavaScript; no build step)
served at ``/``, over the same API and the same API keys, and ``GET /v1/overview``, the operators'
snapshot (queues, workers, pools, engines, gates, events), for the tenants that may see gates."""

# No ``from __future__ import annotations``: FastAPI reads the dependency types of routes declared
# inside ``install`` as objects.
import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
FILES = {"index.html": "text/html", "style.css": "text/css",
         **{f"{module}.js": "text/javascript" for module in ("app", "common", "task", "tasks", "timeline")}}
# The page holds an API key (localStorage) and has Cancel and Retry buttons: only its own scripts
# run on it, and no other site may frame it (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install(app: FastAPI, admin: Any) -> None:
    Admin = Annotated[str, Depends(admin)]  # noqa: N806 - a type, named as one

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers=SECURITY_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in FILES:
            raise HTTPException(404, f"no static file {name[:100]!r}")
        return FileResponse(STATIC / name, media_type=FILES[name], headers=SECURITY_HEADERS)

    @app.get("/v1/overview", operation_id="getOverview")
    async def get_overview(request: Request, _admin: Admin) -> dict[str, Any]:
        """Queues, workers, agent pools, engines, gates, events and dead letters, as
        ``raysquad top`` shows them (tenants that may see gates only)."""
        from runtime.client.overview import overview

        namespace = request.app.state.settings.namespace
        # Looking actors up by name blocks: in a thread, on a loop of its own.
        return await asyncio.to_thread(lambda: asyncio.run(overview(namespace)))
