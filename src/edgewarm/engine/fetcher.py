"""HTTP to cache nodes. Every request goes to a configured node's address, never to the URL's own host.

Two clients, chosen by measurement (bench/http_clients.py, docs/benchmarks.md): pyreqwest (Rust's hyper,
working on its own thread; 2-3x aiohttp's requests per CPU second) sends what it can send unchanged: URLs
that its WHATWG URL parser leaves as they are, i.e. nearly all, to plain-HTTP nodes and to https nodes given
by IP address. An https node gets the URL's host as SNI (and its certificate is checked against it) while
the connection goes to the node's address: pyreqwest does that with a client per (node, site) that resolves
the site's name to the node's address (`resolve`), at most TLS_CLIENTS of them, the least recently used
dropped first; an https node it cannot connect to, other than for its certificate, is tried again through
aiohttp, whose OpenSSL speaks older TLS than rustls (CBC ciphers, say), and once aiohttp got an answer there,
that node is left to aiohttp. aiohttp sends the rest byte for byte: URLs with dot segments or characters
that parser would percent-encode, and https nodes given by name. hyper reads at most 100 header lines in an
answer: an answer with more is asked for again through aiohttp, which takes what curl takes (see
HEAD_LINES). Their exceptions stop here: callers get a `FetchResult` whatever happened.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import urlsplit

import aiohttp
import pyreqwest.client
import pyreqwest.exceptions
from yarl import URL

from ..config import Engine, Node
from ..nodes import CacheState, cache_state
from ..urls import TargetUrl

_CHUNK = 1 << 16
# What pyreqwest's URL parser (WHATWG) would rewrite: dot segments, and characters it percent-encodes in the
# path (or turns into "/") and in the query. Such URLs go through aiohttp, which sends them as they are.
_REWRITTEN_PATH = re.compile(r'["<>`{}\\]|(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)')
_REWRITTEN_QUERY = re.compile(r"[\"'<>]")
# The largest answer head aiohttp reads (its own defaults: 128 lines of 8,190 bytes): curl's limit for one
# header line, and many lines. hyper's are fixed in pyreqwest 0.15 (100 lines), hence the fallback below.
HEAD_LINE_BYTES = 102_400
HEAD_LINES = 1_000
# hyper's words for an answer head it will not read (more than 100 header lines, or over its buffer).
_HEAD_TOO_LARGE = "message head is too large"
# pyreqwest clients kept for https nodes, one per (node, site): each holds its own idle connections.
TLS_CLIENTS = 256


class _Unread(enum.Enum):
    """Why pyreqwest gave no answer that aiohttp may get: the answer's head is more than hyper reads, or the
    https node could not be reached other than for its certificate (TLS that rustls does not speak, say)."""

    HEAD_TOO_LARGE = "head too large"
    NOT_CONNECTED = "not connected"


def sent_unchanged(path_query: str) -> bool:
    """Whether pyreqwest sends `path_query` exactly as it is (the test suite checks this against a server)."""
    path, _, query = path_query.partition("?")
    return _REWRITTEN_PATH.search(path) is None and _REWRITTEN_QUERY.search(query) is None


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: int | None  # HTTP status, None when no answer came
    bytes: int = 0
    cache_state: CacheState | None = None
    error: str | None = None  # set on a network error, timeout or short body

    @property
    def network_error(self) -> bool:
        return self.status is None or self.error is not None


def pyreqwest_client(settings: Engine) -> pyreqwest.client.Client:
    """The pyreqwest client the Fetcher warms with (bench/bare_loop.py builds its own with this too)."""
    return _pyreqwest_builder(settings).build()


def _pyreqwest_builder(settings: Engine) -> pyreqwest.client.ClientBuilder:
    return (
        pyreqwest.client.ClientBuilder()
        .max_connections(settings.concurrency)
        .connect_timeout(timedelta(seconds=settings.connect_timeout))
        .read_timeout(timedelta(seconds=settings.read_timeout))
        .pool_idle_timeout(timedelta(seconds=15))  # aiohttp's keep-alive: nodes close idle connections too
        .follow_redirects(False)
        .no_proxy()  # never the environment's HTTP_PROXY: a warm goes to its node and nowhere else
        .gzip(False)
        .brotli(False)
        .deflate(False)
        .zstd(False)
        .http1_only()
        .http1_allow_obsolete_multiline_headers_in_responses(True)  # RFC 9112 5.2: a client accepts obs-fold
    )


def _ip_address(host: str) -> str | None:
    """`host` (as a URL writes it: an IPv6 address in brackets) as an IP address, or None for a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class NodeClient(Protocol):
    """What the engine fetches with: `Fetcher` in its own process, or `ProcessFetcher` from a child."""

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult: ...


class Fetcher:
    """Both clients, for all nodes; use as `async with Fetcher(settings) as fetcher:`."""

    def __init__(self, settings: Engine) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._client: pyreqwest.client.Client | None = None
        # (node url, tls_verify, site) -> pyreqwest client and the node's port, or None: aiohttp sends those
        self._tls_clients: OrderedDict[tuple[str, bool, str], tuple[pyreqwest.client.Client, int] | None] = (
            OrderedDict()
        )
        self._openssl_nodes: set[str] = set()  # https nodes that aiohttp reached when pyreqwest could not
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
            max_line_size=HEAD_LINE_BYTES,
            max_field_size=HEAD_LINE_BYTES,
            max_headers=HEAD_LINES,
        )
        self._client = pyreqwest_client(s)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        clients, self._tls_clients = list(self._tls_clients.values()), OrderedDict()
        for found in clients:
            if found is not None:
                await found[0].close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        """Send `method` for `target` to `node`, read the body to the end and discard it."""
        if self._session is None or self._client is None:
            raise RuntimeError("Fetcher is not open")
        sent = {"Host": target.authority, "User-Agent": self._settings.user_agent}
        if self._settings.accept_encoding:
            sent["Accept-Encoding"] = self._settings.accept_encoding
        if headers:
            sent.update(headers)
        unread = None
        sending = self._pyreqwest_for(node, target) if sent_unchanged(target.path_query) else None
        if sending is not None:
            client, url = sending
            answer = await self._with_pyreqwest(client, method, url, node, sent)
            if isinstance(answer, FetchResult):
                return answer
            unread = answer  # ask aiohttp
        result = await self._with_aiohttp(self._session, method, node, target, sent)
        if unread is _Unread.NOT_CONNECTED and result.status is not None:
            self._openssl_nodes.add(node.url)  # its TLS needs OpenSSL: aiohttp alone from now on
        return result

    def _pyreqwest_for(self, node: Node, target: TargetUrl) -> tuple[pyreqwest.client.Client, str] | None:
        """The pyreqwest client and URL that send `target` to `node`, or None when aiohttp must send it."""
        if node.url.startswith("http://"):
            assert self._client is not None
            return self._client, node.url + target.path_query
        if node.url in self._openssl_nodes:
            return None
        key = (node.url, node.tls_verify, target.host)
        if key in self._tls_clients:
            self._tls_clients.move_to_end(key)
            found = self._tls_clients[key]
        else:  # the node's URL and the site are looked at once, not on every request
            found = self._tls_clients[key] = self._tls_client(node, target.host)
            if len(self._tls_clients) > TLS_CLIENTS:
                self._tls_clients.popitem(last=False)  # requests still using it keep it until they end
        if found is None:
            return None
        client, port = found
        # The node's port in the URL (pyreqwest connects to the URL's port); Host is sent as the URL has it.
        return client, f"https://{target.host}:{port}{target.path_query}"

    def _tls_client(self, node: Node, host: str) -> tuple[pyreqwest.client.Client, int] | None:
        """A client that sends `host`'s https URLs to `node`, and the node's port; None when aiohttp must."""
        address = urlsplit(node.url)
        ip = _ip_address(address.hostname or "")
        if address.scheme != "https" or ip is None or _ip_address(host) is not None:
            return None  # a node given by name (pyreqwest would resolve it), or a URL without a name for SNI
        port = address.port or 443
        builder = _pyreqwest_builder(self._settings).resolve(host, ip, port)
        return builder.danger_accept_invalid_certs(not node.tls_verify).build(), port

    async def _with_pyreqwest(
        self, client: pyreqwest.client.Client, method: str, url: str, node: Node, sent: dict[str, str]
    ) -> FetchResult | _Unread:
        """The node's answer, or why aiohttp should ask again."""
        errors = pyreqwest.exceptions
        # No body read ahead (pyreqwest's default reads some before answering): an error in the body must come
        # from the body loop below, where the node's status is known, not from opening the response.
        request = client.request(method, url).headers(sent).streamed_read_buffer_limit(0)
        try:
            async with request.build_streamed() as response:
                state = cache_state(response.headers, node.kind)
                length = response.headers.get("Content-Length")
                expected = int(length) if length is not None and length.isdigit() else None
                received = 0
                reader = response.body_reader
                try:
                    while (chunk := await reader.read_chunk()) is not None:
                        received += len(chunk)
                except errors.RequestTimeoutError:
                    raise  # silence mid-body: a timeout, like silence before the head
                except errors.RequestError:
                    return _read(method, response.status, state, received, expected, cut=True)
                return _read(method, response.status, state, received, expected, cut=False)
        except errors.RequestTimeoutError:
            return FetchResult(None, error=f"timeout talking to {node.name}")
        except errors.PyreqwestError as exc:
            causes = _causes(exc)
            reason = causes[-1] if causes else _reason(exc)
            if "client error (Connect)" in causes:
                if url.startswith("https://") and "certificate" not in reason:
                    return _Unread.NOT_CONNECTED  # maybe TLS that rustls does not speak (CBC ciphers, say)
                return FetchResult(None, error=f"cannot connect to {node.name} ({node.url}): {reason}")
            if isinstance(exc, errors.NetworkError):
                return FetchResult(None, error=f"{node.name} disconnected before answering: {reason}")
            if isinstance(exc, errors.DecodeError):  # the body's errors are read above: this is the head's
                if _HEAD_TOO_LARGE in causes:
                    return _Unread.HEAD_TOO_LARGE
                return FetchResult(None, error=f"{node.name} answered with a malformed HTTP head: {reason}")
            return FetchResult(None, error=f"{type(exc).__name__} from {node.name}: {reason}")

    async def _with_aiohttp(
        self, session: aiohttp.ClientSession, method: str, node: Node, target: TargetUrl, sent: dict[str, str]
    ) -> FetchResult:
        url = URL(node.url + target.path_query, encoded=True)
        tls: ssl.SSLContext | bool = True if node.tls_verify else self._insecure
        try:
            async with session.request(
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
                    return _read(method, response.status, state, received, response.content_length, cut=True)
                return _read(method, response.status, state, received, response.content_length, cut=False)
        except TimeoutError:
            return FetchResult(None, error=f"timeout talking to {node.name}")
        except aiohttp.ClientPayloadError as exc:
            return FetchResult(None, error=f"broken body from {node.name}: {_reason(exc)}")
        except aiohttp.ClientResponseError as exc:  # raised before any answer: its head did not parse (the 400 is
            # aiohttp's own, not the node's)
            return FetchResult(None, error=f"{node.name} answered with a malformed HTTP head: {exc.message}")
        except aiohttp.ClientConnectorError as exc:
            return FetchResult(None, error=f"cannot connect to {node.name} ({node.url}): {_reason(exc.os_error)}")
        except aiohttp.ServerDisconnectedError as exc:  # in pyreqwest's words (below the head it is a cut body)
            return FetchResult(None, error=f"{node.name} disconnected before answering: {_reason(exc)}")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return FetchResult(None, error=f"{type(exc).__name__} from {node.name}: {_reason(exc)}")


def _read(
    method: str, status: int, state: CacheState | None, received: int, expected: int | None, *, cut: bool
) -> FetchResult:
    """A node's answer whose body was read: short when it was `cut` (the node closed, or broke off, before the
    body was whole: its status stands) or when it does not match its Content-Length."""
    if cut or (expected is not None and method != "HEAD" and received != expected):
        of = f" of {expected}" if expected is not None else ""
        return FetchResult(status, received, state, f"short body: {received}{of} bytes")
    return FetchResult(status, received, state)


def _causes(exc: pyreqwest.exceptions.PyreqwestError) -> list[str]:
    """pyreqwest's chain of causes, outermost first: the last one is the OS's or hyper's own words."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    return [c["message"] for c in causes or () if isinstance(c, dict) and isinstance(c.get("message"), str)]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
