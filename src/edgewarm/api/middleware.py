"""Pure ASGI middleware."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import JdCode

JD_PREFIX = "/api/"  # the JD calls' paths (api/legacy.py): their errors are answered HTTP 200 with a JD code
# A body refused as too large is read on and dropped before the 413, up to this many bytes more, while each part
# comes within DROP_IDLE_SECONDS (BodySizeLimit._reject).
DROP_BYTES = 64 * 1024 * 1024
DROP_IDLE_SECONDS = 1.0

T = TypeVar("T")


class BodyReads:
    """The requests whose bodies are still arriving: a stop (`stop`) answers them at once (503; a JD call with JD's
    code -1). They would hold the stop for its grace and end in a traceback (a body trickling in through a proxy
    that does not buffer it)."""

    def __init__(self) -> None:
        self._open: set[asyncio.Timeout] = set()
        self._stopped = False

    async def read(self, receive: Receive, limit: int) -> list[bytes] | None:
        """The body's chunks (_body); TimeoutError when the process stops meanwhile, or has stopped and the body is
        not all there (a call begun in the moment the server still serves after a stop: a re-tester's, on a
        connection kept open, held the stop for grace_seconds again)."""
        return await self._cut(_body(receive, limit))

    async def drop(self, receive: Receive, budget: int) -> None:
        """Read the rest of a body and drop it (_drop), but for a stop's cut, as `read`."""
        with contextlib.suppress(TimeoutError, _TooLarge):
            await self._cut(_drop(receive, budget))

    async def _cut(self, reading: Coroutine[Any, Any, T]) -> T:
        # (A delay of 0 cuts the read at its first wait only: a body there already is read whole.)
        async with asyncio.timeout(0 if self._stopped else None) as cut:
            self._open.add(cut)
            try:
                return await reading
            finally:
                self._open.discard(cut)

    def stop(self) -> None:
        self._stopped = True
        now = asyncio.get_running_loop().time()
        for cut in self._open:
            cut.reschedule(now)


class BodySizeLimit:
    """Answer 413 to a body larger than `max_bytes()` (read at each request: a reload may change it), whether
    Content-Length says so or the stream shows it; 503 to one still arriving when the process stops (`reads`).

    The body is read here, bounded, and handed on whole: API bodies are small, and the app never sees a
    half-read oversized one.
    """

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int], reads: BodyReads) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reads = reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        for name, value in scope["headers"]:
            if name != b"content-length":
                continue
            # (Over 18 digits but leading zeros: too large whatever it says; int() refuses over 4,300.)
            length = value.strip()
            digits = length.lstrip(b"0")
            declared = int(digits or b"0") if length.isdigit() and len(digits) <= 18 else None
            if declared is None or declared > limit:
                await self._reject(scope, receive, send, limit, drop=declared is not None and declared <= DROP_BYTES)
                return
        try:
            chunks = await self.reads.read(receive, limit)
        except TimeoutError:
            why = "edgewarm is stopping and the request's body had not all arrived: nothing was done"
            if scope["path"].startswith(JD_PREFIX):  # a JD call: answered as JD answers an error (HTTP 200)
                await _send(send, 200, {"status": int(JdCode.INTERNAL), "msg": f"internal error: {why}"})
            else:
                await _answer(send, 503, why)
            return
        except _TooLarge:
            await self._reject(scope, receive, send, limit, drop=True)
            return
        if chunks is None:
            return  # the client went away
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int, *, drop: bool) -> None:
        """413. With `drop`, the rest of the body is read and dropped first (up to DROP_BYTES), unless the client
        waits for `100 Continue` before sending it: a client that sends the whole body before it reads the answer
        (Python's urllib and http.client) got a connection reset, not the 413 (the socket closed with its bytes
        unread). A body that says it is larger is not read: it gets the reset."""
        if drop and (b"expect", b"100-continue") not in ((n, v.strip().lower()) for n, v in scope["headers"]):
            await self.reads.drop(receive, DROP_BYTES)
        await _answer(send, 413, f"request body too large: over [api] max_body_bytes ({limit} bytes)")


class _TooLarge(Exception):
    """The body passed the limit."""


async def _body(receive: Receive, limit: int) -> list[bytes] | None:
    """The body's chunks (_TooLarge once they pass `limit` bytes), or None when the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks


async def _drop(receive: Receive, budget: int) -> None:
    """Read a body's rest and drop it: until its end, the client gone, `budget` bytes (_TooLarge), or a part not
    come within DROP_IDLE_SECONDS (TimeoutError: a Content-Length larger than what is sent)."""
    size = 0
    while True:
        async with asyncio.timeout(DROP_IDLE_SECONDS):
            message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        if size > budget:
            raise _TooLarge
        if not message.get("more_body", False):
            return


async def _answer(send: Send, status: int, error: str) -> None:
    """Answer before the body was read whole: `{"error": …}` (a 503 with a JD code, as the service's others)."""
    await _send(send, status, {"code": int(JdCode.INTERNAL), "error": error} if status == 503 else {"error": error})


async def _send(send: Send, status: int, content: dict[str, object]) -> None:
    """Answer `content` before the body was read whole, closing the connection."""
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                # The body is not read: a client that sent `Expect: 100-continue` may still send it, and must not
                # wait on this connection for the answer to a next request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """Serve the POST routes whose endpoint takes the Request alone (the JD calls) straight from the endpoint.

    FastAPI's per-request machinery (route walk, dependency solving, telemetry checks) cost about as much as the
    rest of a `prefetchQuery` (docs/benchmarks.md, session 4); these endpoints need none of it: they read the
    body themselves and answer every error as JD does. The routes stay registered with FastAPI, for the OpenAPI
    document and for any request this table does not take (another method, a `root_path`).
    """

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.endpoints = direct_endpoints(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # (GET and HEAD: the routes that read a query; a JD call's is told it is not read, each of its fields)
        reads_query = scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
        if reads_query and (query := scope["query_string"]) and _EMPTY_VALUE.search(query):
            scope = {**scope, "query_string": without_empty_values(query)}
        if scope["type"] == "http" and not scope.get("root_path"):
            # As written, or with a slash doubled or added (a base URL ending in "/"): answered, not redirected. A
            # JD client does not follow the redirect a POST would get, and behind a proxy under a path prefix the
            # redirect named the root (a tester's `/cdn/v1/tasks/` → `/v1/tasks`, 404 there).
            post = scope["method"] == "POST"
            endpoint = self.endpoints.get(scope["path"]) if post else None
            if endpoint is None and (tidy := _without_extra_slashes(scope["path"])) != scope["path"]:
                scope = {**scope, "path": tidy}  # (tidied only then: a JD call as written is the usual one)
                endpoint = self.endpoints.get(tidy) if post else None
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# A query's parameter given empty (`status=`, `?limit`) is one not given: a form's unset filter, README's templates
# (`?status=&kind=&…`) were refused "Input should be a valid integer" while an empty `since` was no filter (a tester's).
_EMPTY_VALUE = re.compile(rb"(?:^|&)[^=&]*(?:=)?(?:&|$)")


def without_empty_values(query: bytes) -> bytes:
    """`query` without its parameters of no value (each alike, whatever the route takes)."""
    return b"&".join(part for part in query.split(b"&") if part.partition(b"=")[2])


def _without_extra_slashes(path: str) -> str:
    return "/" + "/".join(part for part in path.split("/") if part)


def direct_endpoints(routes: Iterable[BaseRoute]) -> dict[str, Endpoint]:
    """Path → endpoint of the POST routes with a fixed path whose endpoint's one parameter is a `Request`."""
    found: dict[str, Endpoint] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or route.methods != {"POST"} or route.dependencies:
            continue
        if "{" in route.path or route.path in found:
            continue
        parameters = list(inspect.signature(route.endpoint, eval_str=True).parameters.values())
        if len(parameters) == 1 and parameters[0].annotation is Request:
            found[route.path] = route.endpoint
    return found
