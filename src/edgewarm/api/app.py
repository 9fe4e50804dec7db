"""The HTTP application: legacy JD routes, native routes, health, and the body-size limit around them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .. import __version__
from ..errors import EdgewarmError, StoreError
from ..service import Service
from .docs import docs_page
from .legacy import legacy_router
from .middleware import BodyReads, BodySizeLimit, DirectRoutes
from .native import native_router
from .responses import JSONResponse

READY_SECONDS = 2.0  # /readyz and /metrics wait this long for the store's queue depth


def create_app(service: Service, body_reads: BodyReads | None = None) -> FastAPI:
    """The API of `service`; `body_reads`: what a stop of the process stops (the requests' bodies still arriving)."""
    body_reads = body_reads or BodyReads()
    app = FastAPI(
        title="edgewarm",
        version=__version__,
        description="CDN cache prewarm and refresh, wire-compatible with JD Cloud CDN's OpenAPI.",
        docs_url=None,  # ours below: Swagger UI's files checked against their hashes
        redoc_url=None,
    )

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")  # as FastAPI's own page has it
        return docs_page(f"{root}{app.openapi_url}", f"{app.title} - Swagger UI")

    for router in (legacy_router(service), native_router(service)):
        app.router.routes.extend(router.routes)  # flat: no per-request walk through included routers

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> Response:
        return JSONResponse({"ok": True})

    async def queue_depth() -> int:
        """The store's queue depth, or StoreError when it does not answer within READY_SECONDS (a store that
        hangs, say a stopped database server, must not hang the probes)."""
        try:
            return await asyncio.wait_for(service.store.queue_depth(), READY_SECONDS)
        except TimeoutError:
            raise StoreError(f"the store did not answer within {READY_SECONDS:g} s") from None

    @app.get("/readyz", tags=["operations"], summary="The store answers: this process can take work")
    async def readyz() -> Response:
        if service.starting is not None:
            return JSONResponse({"ok": False, "error": service.starting}, status_code=503)
        try:
            depth = await queue_depth()
        except EdgewarmError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ok": True, "queue_depth": depth})

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics of this process",
        response_class=PlainTextResponse,  # what OpenAPI says of it: Prometheus's text, not JSON
    )
    async def metrics() -> Response:
        # The other metrics are still worth scraping when the store is down; /readyz tells that.
        try:
            service.metrics.queue_counted(await queue_depth())
        except EdgewarmError:
            service.metrics.queue_counted(None)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # Load balancers and uptime checkers probe with HEAD: the GET's status and headers, without its body.
    for path, endpoint in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
        app.add_api_route(path, head_of(endpoint), methods=["HEAD"], include_in_schema=False)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """404, 405 and the like in the shape of every other error of this API: {"error": …}; a body that
        does not parse (400) with its JD code, as a parameter refused is."""
        detail = exc.detail
        if exc.status_code == 405 and (allowed := (exc.headers or {}).get("Allow")):  # what to use, as Allow says
            detail = f"method {request.method} not allowed here: use {' or '.join(allowed.split(', '))}"
        answer = {"code": 2, "error": detail} if exc.status_code == 400 else {"error": detail}
        return JSONResponse(answer, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"code": 2, "error": f"{where}: {first.get('msg')}"}, status_code=400)

    app.openapi = functools.partial(_openapi_without_422, app, app.openapi)  # type: ignore[method-assign]
    app.add_middleware(DirectRoutes, routes=app.router.routes)  # inside the body limit (added last: outermost)
    app.add_middleware(BodySizeLimit, max_bytes=lambda: service.config.api.max_body_bytes, reads=body_reads)
    return app


def _openapi_without_422(app: FastAPI, made: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's document less the 422 it lists on every route with parameters: a parameter refused is a 400
    with its JD code here (`invalid` above), never a 422 (a developer's check of the document against the
    answers)."""
    schema = app.openapi_schema
    if schema is None:  # made once: FastAPI keeps it as app.openapi_schema
        schema = made()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


def head_of(endpoint: Callable[[], Awaitable[Response]]) -> Callable[[], Awaitable[Response]]:
    """A HEAD route's endpoint: `endpoint`'s answer (a GET's) with its headers, Content-Length included, and no
    body, whatever server runs the app."""

    async def head() -> Response:
        answer = await endpoint()
        return Response(status_code=answer.status_code, headers=dict(answer.headers))

    head.__name__ = f"{endpoint.__name__}_head"
    return head
