"""HTTP to cache nodes. Every request goes to a configured node's address, never to the URL's own host.

aiohttp was chosen by measurement (bench/http_clients.py, docs/benchmarks.md). Its exceptions stop here:
callers get a `FetchResult` whatever happened.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiohttp
from yarl import URL

from ..config import Engine, Node
from ..nodes import CacheState, cache_state
from ..urls import TargetUrl

_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: int | None  # HTTP status, None when no answer came
    bytes: int = 0
    cache_state: CacheState | None = None
    error: str | None = None  # set on a network error, timeout or short body

    @property
    def network_error(self) -> bool:
        return self.status is None or self.error is not None


class NodeClient(Protocol):
    """What the engine fetches with: `Fetcher` in its own process, or `ProcessFetcher` from a child."""

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult: ...


class Fetcher:
    """One aiohttp session for all nodes; use as `async with Fetcher(settings) as fetcher:`."""

    def __init__(self, settings: Engine) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._insecure = ssl.create_default_context()
        self._insecure.check_hostname = False
        self._insecure.verify_mode = ssl.CERT_NONE

    async def __aenter__(self) -> Self:
        s = self._settings
        connector = aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=0, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        """Send `method` for `target` to `node`, read the body to the end and discard it."""
        if self._session is None:
            raise RuntimeError("Fetcher is not open")
        url = URL(node.url + target.path_query, encoded=True)
        sent = {"Host": target.authority, "User-Agent": self._settings.user_agent}
        if self._settings.accept_encoding:
            sent["Accept-Encoding"] = self._settings.accept_encoding
        if headers:
            sent.update(headers)
        tls: ssl.SSLContext | bool = True if node.tls_verify else self._insecure
        try:
            async with self._session.request(
                method,
                url,
                headers=sent,
                allow_redirects=False,
                server_hostname=target.host if url.scheme == "https" else None,
                ssl=tls if url.scheme == "https" else True,
            ) as response:
                received = 0
                state = cache_state(response.headers, node.kind)
                try:
                    while chunk := await response.content.read(_CHUNK):
                        received += len(chunk)
                except aiohttp.ClientPayloadError:
                    # The node closed before the body was whole: its status stands, the body is short.
                    expected = response.content_length
                    of = f" of {expected}" if expected is not None else ""
                    return FetchResult(response.status, received, state, f"short body: {received}{of} bytes")
                expected = response.content_length
                if expected is not None and method != "HEAD" and received != expected:
                    return FetchResult(response.status, received, state, f"short body: {received} of {expected} bytes")
                return FetchResult(response.status, received, state)
        except TimeoutError:
            return FetchResult(None, error=f"timeout talking to {node.name}")
        except aiohttp.ClientPayloadError as exc:
            return FetchResult(None, error=f"broken body from {node.name}: {_reason(exc)}")
        except aiohttp.ClientConnectorError as exc:
            return FetchResult(None, error=f"cannot connect to {node.name} ({node.url}): {_reason(exc.os_error)}")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return FetchResult(None, error=f"{type(exc).__name__} from {node.name}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
