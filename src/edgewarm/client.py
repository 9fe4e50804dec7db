"""Python client for edgewarm (and for JD Cloud CDN's prefetch API): sync and async.

    with Client("http://127.0.0.1:8080", "jcloud_00", "e7a31b…") as client:
        taskid = client.prefetch(["http://www.example.test/a.js"])
        client.wait(taskid)            # returns the final TaskView dict

Signing is `edgewarm.auth.sign`, the very function the server verifies with. JD refusals raise
`ClientError` carrying the JD code; transport failures raise `ClientError` with code -1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx

from . import auth
from .errors import EdgewarmError, JdCode


class ClientError(EdgewarmError):
    """A call that did not succeed; `code` is the JD error code (-1 for transport errors)."""

    def __init__(self, code: int, message: str, http_status: int | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class _Base:
    def __init__(self, base_url: str, username: str, secret: str, *, timezone: str = auth.DEFAULT_TIMEZONE) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._secret = secret
        self._timezone = timezone

    def signature(self, now: datetime | None = None) -> str:
        day = auth.today(now or datetime.now(UTC), self._timezone)
        return auth.sign(self.username, self._secret, day)

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {"username": self.username, "signature": self.signature(), **fields}

    def _headers(self) -> dict[str, str]:
        return {"X-Edgewarm-Username": self.username, "X-Edgewarm-Signature": self.signature()}

    @staticmethod
    def _jd(response: httpx.Response) -> dict[str, Any]:
        data = _json(response)
        if response.status_code != 200:
            raise ClientError(JdCode.INTERNAL, str(data.get("error") or response.text), response.status_code)
        if data.get("status") != 0:
            raise ClientError(int(data.get("status", -1)), str(data.get("msg", "")), response.status_code)
        return data

    @staticmethod
    def _native(response: httpx.Response) -> dict[str, Any]:
        data = _json(response)
        if response.status_code != 200:
            raise ClientError(int(data.get("code", -1)), str(data.get("error") or response.text), response.status_code)
        return data


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise ClientError(JdCode.INTERNAL, f"HTTP {response.status_code}: not JSON", response.status_code) from None
    if not isinstance(data, dict):
        raise ClientError(JdCode.INTERNAL, "unexpected answer", response.status_code)
    return data


class Client(_Base):
    """Synchronous client."""

    def __init__(self, base_url: str, username: str, secret: str, *, timeout: float = 30.0, **kw: Any) -> None:
        super().__init__(base_url, username, secret, **kw)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ClientError(JdCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None

    def prefetch(self, urls: Sequence[str]) -> str:
        """Submit one call (at most the per-call limit of URLs); return the task id."""
        return str(self._jd(self._post("/api/prefetch", self._body(publish_urls=list(urls))))["taskid"])

    def query(self, taskid: str) -> dict[str, Any]:
        """JD's answer `data`: {"taskid", "status", "msg"}."""
        return dict(self._jd(self._post("/api/prefetchQuery", self._body(taskid=taskid)))["data"])

    def task(self, taskid: str, *, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """The native view: counts, progress and items."""
        try:
            response = self._http.get(
                f"/v1/tasks/{taskid}", params={"offset": offset, "limit": limit}, headers=self._headers()
            )
        except httpx.HTTPError as exc:
            raise ClientError(JdCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None
        return self._native(response)

    def wait(self, taskid: str, *, timeout: float = 600.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll until the task is no longer in progress; return its native view (without items)."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.task(taskid, limit=0)
            if view["status"] != 1:
                return view
            if time.monotonic() > deadline:
                raise ClientError(JdCode.FAILURE, f"task {taskid} still in progress after {timeout}s")
            time.sleep(interval)


class AsyncClient(_Base):
    """Asynchronous client, same methods as `Client`."""

    def __init__(self, base_url: str, username: str, secret: str, *, timeout: float = 30.0, **kw: Any) -> None:
        super().__init__(base_url, username, secret, **kw)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ClientError(JdCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None

    async def prefetch(self, urls: Sequence[str]) -> str:
        return str(self._jd(await self._post("/api/prefetch", self._body(publish_urls=list(urls))))["taskid"])

    async def query(self, taskid: str) -> dict[str, Any]:
        return dict(self._jd(await self._post("/api/prefetchQuery", self._body(taskid=taskid)))["data"])

    async def task(self, taskid: str, *, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        try:
            response = await self._http.get(
                f"/v1/tasks/{taskid}", params={"offset": offset, "limit": limit}, headers=self._headers()
            )
        except httpx.HTTPError as exc:
            raise ClientError(JdCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None
        return self._native(response)

    async def wait(self, taskid: str, *, timeout: float = 600.0, interval: float = 0.2) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.task(taskid, limit=0)
            if view["status"] != 1:
                return view
            if time.monotonic() > deadline:
                raise ClientError(JdCode.FAILURE, f"task {taskid} still in progress after {timeout}s")
            await asyncio.sleep(interval)
