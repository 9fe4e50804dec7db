"""HTTP to cache nodes. Every request goes to a configured node's address, never to the URL's own host.

Two clients, chosen by measurement (bench/http_clients.py, docs/benchmarks.md): pyreqwest (Rust's hyper,
working on its own thread; 2-3x aiohttp's requests per CPU second) sends what it can send unchanged: URLs that
its WHATWG URL parser leaves as they are, i.e. nearly all, to plain-HTTP nodes and to https nodes. An https
node gets the URL's host as SNI (and its certificate is checked against it) while the connection goes to the
node's address: tls_routes.py keeps a pyreqwest client per (node, site, address) for that, and resolves nodes
given by name itself. When pyreqwest cannot set up TLS with an https node other than for its certificate,
aiohttp asks again: its OpenSSL speaks older TLS than rustls (CBC ciphers, say), and once aiohttp got an
answer there, that node is left to aiohttp; when a named node's address refuses the connection or does not
answer within connect_timeout, aiohttp asks again too (it tries every address) and pyreqwest goes on with the
next address. aiohttp sends the rest byte for byte: URLs with dot segments or characters that parser would
percent-encode. hyper reads at most 100 header lines in an answer: an answer with more is asked for again
through aiohttp, which takes what curl takes (see HEAD_LINES). Their exceptions stop here: callers get a
`FetchResult` whatever happened.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from types import TracebackType
from typing import NamedTuple, Protocol, Self

import aiohttp
import pyreqwest.client
import pyreqwest.exceptions
from yarl import URL

from ..config import Engine, Node
from ..errors import one_line, reason_of
from ..logs import RefusalDigest, RepeatedFailure, counted
from ..nodes import (
    NUMBER_MOST,
    CacheState,
    age_of,
    asks_not_to_store,
    cache_state,
    fresh_for,
    header_number,
    retry_after_of,
    vary_of,
)
from ..tuning import out_of_open_files, requests_room
from ..urls import DOT_SEGMENT, TargetUrl
from .node_health import Hold, NodeHealth
from .tls_routes import UNRESOLVED, Route, TlsRoutes

_CHUNK = 1 << 16
log = logging.getLogger("edgewarm.engine")
STATELESS_ANSWERS = 100  # a node's 200s in a row without a cache state, before it is said to tell none

# What pyreqwest's URL parser (WHATWG) would rewrite: dot segments, and characters it percent-encodes in the
# path (or turns into "/") and in the query. Such URLs go through aiohttp, which sends them as they are.
_REWRITTEN_PATH = re.compile(r'["<>`{}\\]|' + DOT_SEGMENT)
_REWRITTEN_QUERY = re.compile(r"[\"'<>]")
# The largest answer head aiohttp reads (its own defaults: 128 lines of 8,190 bytes): curl's limit for one
# header line, and many lines. hyper's are fixed in pyreqwest 0.15 (100 lines), hence the fallback below.
HEAD_LINE_BYTES = 102_400

HEAD_LINES = 1_000
# The words of EMFILE and ENFILE (errno 24, 23) as both clients pass them on: a connection that failed for this
# process's limit of open files, not for its node.
OUT_OF_FILES = "Too many open files"
# hyper's words for an answer head it will not read (more than 100 header lines, or over its buffer).
_HEAD_TOO_LARGE = "message head is too large"
# rustls' refusal of a certificate, in its words: "invalid peer certificate: UnknownIssuer", some reasons wrapped
# in Rust's debug form ("Other(OtherError(CaUsedAsEndEntity))") or followed by their context. The common ones
# are told in OpenSSL's words, as aiohttp tells them.
_RUSTLS_CERTIFICATE = re.compile(r"invalid peer certificate: (?:Other\(OtherError\()?(\w+)(.*)")
_CERTIFICATE_REASONS = {
    "UnknownIssuer": "unable to get local issuer certificate",
    "CaUsedAsEndEntity": "a CA certificate served as the node's own (self-signed certificate?)",
    "Expired": "certificate has expired",
    "ExpiredContext": "certificate has expired",
    "NotValidYet": "certificate is not yet valid",
    "NotValidYetContext": "certificate is not yet valid",
    "NotValidForName": "certificate is not valid for the site's name",
    "NotValidForNameContext": "certificate is not valid for the site's name",
    "Revoked": "certificate revoked",
    "BadSignature": "certificate signature failure",
}
# The same reasons as rustls displays those with context (its versions differ in which form they give).
_CERTIFICATE_SENTENCES = {
    "certificate expired": "Expired",
    "certificate not valid yet": "NotValidYet",
    "certificate not valid for name": "NotValidForName",
}


# Why a cut request is not sent again: the node's last one sent again after a cut was cut (or failed) too.
CUT_AGAIN = "not sent again: its last request sent again after a cut failed too"


class _Unread(enum.Enum):
    """Why pyreqwest gave no answer that aiohttp may get: the answer's head is more than hyper reads; TLS
    with the https node failed other than for its certificate (TLS that rustls does not speak, say); or the
    address of a node given by name refused the connection or did not answer in time (aiohttp tries every
    address); or the connection was closed or reset under the request before any answer (CUT)."""

    HEAD_TOO_LARGE = "head too large"
    NO_TLS = "no tls"
    UNREACHABLE = "unreachable"
    # Most likely a kept-alive connection the node closed (its idle timeout) as the request went out on it: sent
    # again at once, once, without an attempt spent, as RFC 9112 (9.3.1) allows for GET, HEAD and PURGE, through
    # aiohttp, on a connection of its own (pyreqwest's pool may hold other connections the node closed at once:
    # a re-tester's resend there failed 1 in 10 at 8 at a time). A tester's node closing 2 ms after each answer
    # failed 1 item in 20 after 3 attempts, every one unseen by it.
    CUT = "cut"


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
    final: bool = False  # asking again would fail the same way (the node's certificate does not verify)
    unreachable: bool = False  # no connection was made: refused, no answer within connect_timeout, no address
    hold: Hold | None = None  # the node is held down (node_health.py): not sent, or it failed to connect meanwhile
    # Why a MISS (a state other than cached) asks caches not to store it (signals.asks_not_to_store); None when
    # the node tells no cache state, or it does not ask.
    not_stored: str | None = None
    age: int | None = None  # a cached answer's `Age` (seconds in the cache), when the node tells it
    untold: bool = False  # no word from the node either way: the process that sent the request died
    # Seconds the node's copy stays fresh as the answer tells (signals.fresh_for); None: it does not tell.
    fresh_for: float | None = None
    varies: str | None = None  # the answer's Vary (the request headers the node keeps a copy for each value of)
    # Sent again at once after its connection was closed or reset before any answer (Fetcher._request): the
    # node may have restarted, its cache with it (NodeHealth.cut).
    resent: bool = False
    retry_after: float | None = None  # a 429's or 503's Retry-After, in seconds: the retry waits as long (capped)

    @property
    def network_error(self) -> bool:
        return self.status is None or self.error is not None


def _aiohttp_session(settings: Engine, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    """The aiohttp session the Fetcher asks what pyreqwest cannot, over `connector`."""
    s = settings
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=s.fetch_timeout, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        max_line_size=HEAD_LINE_BYTES,
        max_field_size=HEAD_LINE_BYTES,
        max_headers=HEAD_LINES,
    )


def pyreqwest_client(settings: Engine) -> pyreqwest.client.Client:
    """The pyreqwest client the Fetcher warms with (bench/bare_loop.py builds its own with this too)."""
    return _pyreqwest_builder(settings).build()


def _pyreqwest_builder(settings: Engine) -> pyreqwest.client.ClientBuilder:
    return (
        pyreqwest.client.ClientBuilder()
        .max_connections(requests_room(settings.concurrency))
        .connect_timeout(timedelta(seconds=settings.connect_timeout))
        .read_timeout(timedelta(seconds=settings.read_timeout))
        .timeout(timedelta(seconds=settings.fetch_timeout))
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


class NodeClient(Protocol):
    """What the engine fetches with: `Fetcher` in its own process, or `ProcessFetcher` from a child. `health`:
    the nodes it holds down (the engine claims no items for them meanwhile), or None."""

    health: NodeHealth | None

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult: ...

    def tells_misses(self, node: Node) -> bool:
        """Whether `node` has told a state other than cached (MISS, say) in an answer: then it tells a state
        in every answer it gives from its cache, and one that tells none did not come through it."""
        ...


# The requests sent for the item being worked in this context: a worker sets a fresh count before each item
# (a list, so that the tasks a directory purge spreads its requests over add to the same one).
SENT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("edgewarm_sent")


# A node's failed requests as its warning counts them (FailureDigests), by what their error says: (words of the
# error, the kind, its plural). Other network errors are "network errors"; an answer of 5xx "HTTP 503".
NO_HEAD = "no answer's head within read_timeout"  # (pyreqwest's read_timeout bounds the wait for the head)
_FAILURE_KINDS = (
    ("silent for read_timeout", "timeout (silent for read_timeout)", "timeouts (silent for read_timeout)"),
    (NO_HEAD, f"timeout ({NO_HEAD})", f"timeouts ({NO_HEAD})"),
    (
        "not done within fetch_timeout",
        "timeout (not done within fetch_timeout)",
        "timeouts (not done within fetch_timeout)",
    ),
    ("disconnected before answering", "disconnection before an answer", "disconnections before an answer"),
    ("short body", "short body", "short bodies"),
    ("broken body", "short body", "short bodies"),
    ("malformed HTTP head", "malformed answer", "malformed answers"),
)
_PLURALS = {kind: plural for _, kind, plural in _FAILURE_KINDS} | {"network error": "network errors"}


RETRYABLE_STATUS = frozenset({408, 429})  # retried as 5xx are (outcome.is_retryable), and counted in the log
ASKS_TO_WAIT = frozenset({429, 503})  # the statuses whose Retry-After the retry honours (RFC 9110, 10.2.3)


def failure_kind(result: FetchResult) -> str | None:
    """What a node's failed request counts as in its warning (FailureDigests), or None: it did not fail, or
    another line tells it (a connection that failed, toward the node's hold; a certificate refused; this
    process's own trouble)."""
    if result.unreachable or result.final or result.untold:
        return None
    if result.error is None:
        status = result.status
        return f"HTTP {status}" if status is not None and (status >= 500 or status in RETRYABLE_STATUS) else None
    if OUT_OF_FILES in result.error:
        return None
    return next((kind for words, kind, _ in _FAILURE_KINDS if words in result.error), "network error")


class FailureDigests:
    """Per node, a warning a minute at most while its requests fail other than by a connection refused or timed
    out (the node's holds tell those): timeouts of a silent node, its 5xx answers, resets, counted by kind,
    "node slow-1 in the last 60 s: 150 HTTP 503; 300 timeouts (silent for read_timeout)" (before, a node that
    timed out or answered 503 to every request left no trace in the log but the tasks' ends). Kinds only: no
    URL, no answer's words. Memory: a count per kind (a few, and the 100 statuses of 5xx) per node named."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nodes: dict[str, RefusalDigest] = {}

    def observe(self, node: Node, result: FetchResult) -> None:
        kind = failure_kind(result)
        if kind is None:
            return
        digest = self._nodes.get(node.name)
        if digest is None:
            digest = self._nodes[node.name] = RefusalDigest(
                log,
                f"node {node.name}",
                clock=self._clock,
                say=lambda n, kind: counted(n, kind, _PLURALS.get(kind, kind)),
                fields={"node": node.name},
            )
        digest.refused(kind)

    def flush(self) -> None:
        """Write the failures not told yet (at a stop, or when the client is replaced)."""
        for digest in self._nodes.values():
            digest.flush()


class GuardedClient:
    """What both node clients share: `health`, the process's record of unreachable nodes (node_health.py),
    holds those down; without it every request is sent (a fetch process's child: its parent tells). Subclasses
    send in `_request`. The engine's client (with `health`) warns of nodes whose requests keep failing
    (FailureDigests); `flush_failures` at its end."""

    def __init__(self, health: NodeHealth | None) -> None:
        self.health = health
        self._telling: set[tuple[str, str]] = set()  # (name, url) of the nodes that told a MISS (or the like)
        self._stateless: dict[tuple[str, str], int] = {}  # (name, url) -> answers in a row that told no state
        self._out_of_files = RepeatedFailure(log, "connecting to nodes")  # the process's own limit: said in its log
        self.failures = FailureDigests(time.monotonic if health is None else health.now)

    def flush_failures(self) -> None:
        self.failures.flush()

    def tells_misses(self, node: Node) -> bool:
        return (node.name, node.url) in self._telling

    def _heard(self, node: Node, method: str, result: FetchResult) -> FetchResult:
        state = result.cache_state
        if state is None:
            # A warm's answer, by the engine's client (a child's parent tells): a purge's tells no state on nginx
            # (its purge module's page), and 100 of them said the node was maybe no cache (a tester's).
            if result.status == 200 and method == "GET" and self.health is not None:
                self._no_state(node)
        elif not state.cached and state is not CacheState.BYPASS:
            self._telling.add((node.name, node.url))
        elif self._stateless:
            self._stateless.pop((node.name, node.url), None)
        return result

    def _no_state(self, node: Node) -> None:
        """Count an answer of `node` that told no cache state; at STATELESS_ANSWERS in a row, say once that its
        warms cannot be checked (a newcomer's node was the origin itself: every warm there "succeeded")."""
        key = (node.name, node.url)
        if key in self._telling:
            return
        seen = self._stateless[key] = self._stateless.get(key, 0) + 1
        if seen == STATELESS_ANSWERS:
            log.warning(
                "node %s told no cache state in %d answers in a row (no X-Cache-Status or X-Cache): its warms "
                "succeed unchecked; is it a cache, and does it say its state? (README: How each cache purges)",
                node.name,
                seen,
                extra={"node": node.name},
            )

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        """Send `method` for `target` to `node`, read the body to the end and discard it; not sent to a node
        held down: the answer is then at once a network error saying so."""
        health = self.health
        held = None if health is None else health.held_down(node)
        if held is not None:
            return FetchResult(None, error=held.reason, unreachable=True, hold=held)
        if (sent := SENT.get(None)) is not None:
            sent[0] += 1
        asked_at = None if health is None else health.now()
        result = self._heard(node, method, await self._request(method, node, target, headers))
        if result.resent and health is not None:
            health.cut(node)
        if result.unreachable and self.sends and OUT_OF_FILES not in (result.error or "") and out_of_open_files():
            # No connection, at this process's limit: a name's lookup failed for it ("Name or service not known")
            # and held a live node down (a tester's). Said as the limit, here where it is (a child's parent
            # cannot see it).
            result = replace(result, error=f"{result.error} ({OUT_OF_FILES}: at this process's limit)")
        if health is None:
            return result
        self.failures.observe(node, result)
        if result.untold:
            health.lost(node)  # if it was the request let through after a cooldown, the next one is
            return result
        if result.error is not None and OUT_OF_FILES in result.error:
            # The sending process's own limit (EMFILE, ENFILE), not the node's fault: it is not held down for it.
            self._out_of_files.failed(self._files_said())
            return replace(result, error=f"{result.error}: {self.sender} has run out of open files (see the log)")
        hold = health.observe(node, not result.unreachable, result.error, asked_at)
        return result if hold is None else replace(result, hold=hold)

    sends = True  # the requests are made in this process (not: a fetch process's parent)
    sender = "this process"

    def _files_said(self) -> str:
        """The log's words when the sending process ran out of open files."""
        return out_of_open_files() or "this process has run out of open files"

    async def _request(self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None) -> FetchResult:
        raise NotImplementedError


class Fetcher(GuardedClient):
    """Both clients, for all nodes, in this process; use as `async with Fetcher(settings) as fetcher:`."""

    def __init__(self, settings: Engine, health: NodeHealth | None = None) -> None:
        super().__init__(health)
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # a connection of its own for each request (_Unread.CUT)
        # Nodes whose last request sent again after a cut failed too, with no answer since: a node that resets
        # every request got each attempt twice (a session's note); their cuts are failures at once.
        self._cut_again: set[str] = set()
        self._client: pyreqwest.client.Client | None = None
        self._routes = TlsRoutes(lambda: _pyreqwest_builder(settings))
        # The CAs as SSL_CERT_FILE names them now: pyreqwest's client reads them when made, and so does this (aiohttp's
        # own context, made once at import, kept the start's after a reload's new fetcher: a TLS tester's).
        self._verified = ssl.create_default_context()
        self._insecure = ssl.create_default_context()
        self._insecure.check_hostname = False
        self._insecure.verify_mode = ssl.CERT_NONE
        self._certificate_logs: dict[str, RepeatedFailure] = {}  # node -> its certificate refusals' log lines

    def _certificate_refused(self, node: Node, why: str) -> FetchResult:
        """The node's certificate did not verify: final, as it will not verify on the next try either; logged
        (an expired certificate fails every item of the node at once: the items alone would not tell the
        operator), at once and then once a minute per node while it lasts."""
        error = f"cannot connect to {node.name} ({node.url}): certificate verify failed: {why}"
        logged = self._certificate_logs.get(node.name)
        if logged is None:
            logged = self._certificate_logs[node.name] = RepeatedFailure(log, f"verifying {node.name}'s certificate")
        logged.failed(why)
        return FetchResult(None, error=error, final=True)

    async def __aenter__(self) -> Self:
        s = self._settings
        limit = requests_room(s.concurrency)  # the process's open files may not hold `concurrency` sockets
        pooled = aiohttp.TCPConnector(limit=limit, limit_per_host=0, enable_cleanup_closed=True)
        self._session = _aiohttp_session(s, pooled)
        # (A request sent again takes the place of the one cut: no more sockets at once than requests.)
        self._fresh = _aiohttp_session(s, aiohttp.TCPConnector(limit=limit, limit_per_host=0, force_close=True))
        # aiohttp sends a GET or HEAD cut under it once more, on a new connection: what `_fresh` is for already
        # (a node that reset every request got each one three times, "sent twice" said). No public switch:
        # its test client's (aiohttp.test_utils) private one, where it is.
        if hasattr(self._fresh, "_retry_connection"):
            self._fresh._retry_connection = False
        self._client = pyreqwest_client(s)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.flush_failures()
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._routes.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._fresh is not None:
            await self._fresh.close()
            self._fresh = None

    async def _request(self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None) -> FetchResult:
        if self._session is None or self._client is None:
            raise RuntimeError("Fetcher is not open")
        sent = {"Host": target.authority, "User-Agent": self._settings.user_agent}
        if self._settings.accept_encoding:
            sent["Accept-Encoding"] = self._settings.accept_encoding
        if headers:
            sent.update(headers)
        unread = None
        if sent_unchanged(target.path_query):
            route = None
            if node.url.startswith("http://"):
                answer = await self._with_pyreqwest(self._client, method, node.url + target.path_query, node, sent)
            else:
                route = self._routes.route(node, target.host)
                if route is UNRESOLVED:  # the node's name, the first time: its first requests wait for it
                    await self._routes.resolve(node)
                    route = self._routes.route(node, target.host)
                answer = None  # None: a route only aiohttp has
                if isinstance(route, Route):
                    path = route.prefix + target.path_query
                    answer = await self._with_pyreqwest(route.client, method, path, node, sent, named=route.named)
            if isinstance(answer, FetchResult):
                if self._cut_again and answer.status is not None:
                    self._cut_again.discard(node.name)
                return answer
            unread = answer  # ask aiohttp
            if unread is _Unread.UNREACHABLE and isinstance(route, Route):
                self._routes.unreachable(node, route)
        session = self._fresh if unread is _Unread.CUT and self._fresh is not None else self._session
        result = await self._with_aiohttp(session, method, node, target, sent)
        if unread is _Unread.NO_TLS and result.status is not None:
            self._routes.use_openssl(node)  # its TLS needs OpenSSL: aiohttp alone from now on
        if result.status is None:
            if unread is _Unread.CUT:
                self._cut_again.add(node.name)
        elif self._cut_again:
            self._cut_again.discard(node.name)
        if unread is _Unread.CUT:
            cut = None if result.error is None else f"{result.error} (sent twice: again at once after a cut connection)"
            return replace(result, resent=True, error=cut)
        return result

    async def _with_pyreqwest(
        self,
        client: pyreqwest.client.Client,
        method: str,
        url: str,
        node: Node,
        sent: dict[str, str],
        *,
        named: bool = False,
    ) -> FetchResult | _Unread:
        """The node's answer, or why aiohttp should ask again. `named`: the node is given by name, and this
        request goes to one of its addresses."""
        errors = pyreqwest.exceptions
        # No body read ahead (pyreqwest's default reads some before answering): an error in the body must come
        # from the body loop below, where the node's status is known, not from opening the response.
        request = client.request(method, url).headers(sent).streamed_read_buffer_limit(0)
        started = time.monotonic()
        headed = False  # the answer's head came whole
        try:
            async with request.build_streamed() as response:
                headed = True
                headers = response.headers  # one object, each property read a call into pyreqwest
                told = _signals(headers, node)
                status = response.status
                wait = retry_after_of(headers) if status in ASKS_TO_WAIT else None
                # A chunked body's length is its chunks' (RFC 9112: Transfer-Encoding overrides Content-Length).
                length = None if "Transfer-Encoding" in headers else headers.get("Content-Length")
                expected = None if length is None else header_number(length, NUMBER_MOST)
                received = 0
                reader = response.body_reader
                try:
                    while (chunk := await reader.read_chunk()) is not None:
                        received += len(chunk)
                except errors.RequestTimeoutError:
                    raise  # silence mid-body: a timeout, like silence before the head
                except errors.RequestError:
                    return _read(method, status, told, received, expected, cut=True, wait=wait)
                return _read(method, status, told, received, expected, cut=False, wait=wait)
        except errors.RequestTimeoutError as exc:
            # pyreqwest calls silence before the answer's head a "connection timeout" too: only one that came
            # before read_timeout could have run out was the connection's (connect_timeout).
            connecting = (
                isinstance(exc, errors.ConnectTimeoutError) and time.monotonic() - started < self._settings.read_timeout
            )
            if named and connecting:
                return _Unread.UNREACHABLE  # this address of the node's name does not answer; another may
            return self._timed_out(node, started, connecting, headed=headed)
        except errors.PyreqwestError as exc:
            causes = _causes(exc)
            # The last cause is the OS's or hyper's own words; rustls appends a link to its manual to some.
            reason = causes[-1].split(": https://docs.rs/", 1)[0] if causes else reason_of(exc)
            if "client error (Connect)" in causes:
                if "tcp connect error" in causes:
                    if named:
                        return _Unread.UNREACHABLE  # another address of the node's name may answer
                elif "CaUsedAsEndEntity" in reason:
                    # A self-signed certificate marked a CA (openssl req -x509 makes one): rustls never takes it
                    # as a node's own, OpenSSL does when it is trusted (SSL_CERT_FILE): aiohttp's verdict decides.
                    return _Unread.NO_TLS
                elif (why := certificate_refusal(reason)) is not None:
                    return self._certificate_refused(node, why)
                elif url.startswith("https://"):
                    return _Unread.NO_TLS  # maybe TLS that rustls does not speak (CBC ciphers, say)
                # TCP's refusal, or (plain HTTP) a name without an address
                return FetchResult(
                    None, error=f"cannot connect to {node.name} ({node.url}): {reason}", unreachable=True
                )
            if isinstance(exc, errors.NetworkError):
                if node.name in self._cut_again:
                    return FetchResult(None, error=f"{node.name} disconnected before answering: {reason} ({CUT_AGAIN})")
                return _Unread.CUT
            if isinstance(exc, errors.DecodeError):  # the body's errors are read above: this is the head's
                if _HEAD_TOO_LARGE in causes:
                    return _Unread.HEAD_TOO_LARGE
                return FetchResult(None, error=f"{node.name} answered with a malformed HTTP head: {reason}")
            return FetchResult(None, error=f"{type(exc).__name__} from {node.name}: {reason}")

    def _timed_out(self, node: Node, started: float, connecting: bool, *, headed: bool = True) -> FetchResult:
        """A request that ran out of time, saying which limit it reached. `headed`: the answer's head had come
        (else, through pyreqwest, read_timeout bounds the wait for the whole head, not a silence: a tester's head
        sent a line every 2 s failed as "silent for read_timeout (3 s)"; aiohttp's is a silence there too)."""
        s = self._settings
        if connecting:
            why = f"no connection within connect_timeout ({s.connect_timeout:g} s)"
        elif time.monotonic() - started >= s.fetch_timeout * 0.99:
            why = f"not done within fetch_timeout ({s.fetch_timeout:g} s)"
        elif not headed:
            why = f"{NO_HEAD} ({s.read_timeout:g} s)"
        else:
            why = f"silent for read_timeout ({s.read_timeout:g} s)"
        return FetchResult(None, error=f"timeout talking to {node.name}: {why}", unreachable=connecting)

    async def _with_aiohttp(
        self, session: aiohttp.ClientSession, method: str, node: Node, target: TargetUrl, sent: dict[str, str]
    ) -> FetchResult:
        url = URL(node.url + target.path_query, encoded=True)
        tls = self._verified if node.tls_verify else self._insecure
        started = time.monotonic()
        try:
            async with session.request(
                method,
                url,
                headers=sent,
                allow_redirects=False,
                server_hostname=target.host if url.scheme == "https" else None,
                ssl=tls if url.scheme == "https" else True,  # (plain HTTP: no context at all)
            ) as response:
                received = 0
                told = _signals(response.headers, node)
                status = response.status
                wait = retry_after_of(response.headers) if status in ASKS_TO_WAIT else None
                try:
                    while chunk := await response.content.read(_CHUNK):
                        received += len(chunk)
                except aiohttp.ClientPayloadError:
                    return _read(method, status, told, received, response.content_length, cut=True, wait=wait)
                return _read(method, status, told, received, response.content_length, cut=False, wait=wait)
        except TimeoutError as exc:
            return self._timed_out(node, started, isinstance(exc, aiohttp.ConnectionTimeoutError))
        except aiohttp.ClientPayloadError as exc:
            return FetchResult(None, error=f"broken body from {node.name}: {reason_of(exc)}")
        except aiohttp.ClientResponseError as exc:  # raised before any answer: its head did not parse (the 400 is
            # aiohttp's own, not the node's)
            return FetchResult(None, error=f"{node.name} answered with a malformed HTTP head: {one_line(exc.message)}")
        except aiohttp.ClientConnectorCertificateError as exc:
            refusal = exc.certificate_error
            return self._certificate_refused(node, getattr(refusal, "verify_message", None) or reason_of(refusal))
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect to {node.name} ({node.url}): {reason_of(exc.os_error)}"
            return FetchResult(None, error=error, unreachable=not isinstance(exc, aiohttp.ClientSSLError))
        except aiohttp.ServerDisconnectedError as exc:  # in pyreqwest's words (below the head it is a cut body)
            return FetchResult(None, error=f"{node.name} disconnected before answering: {reason_of(exc)}")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return FetchResult(None, error=f"{type(exc).__name__} from {node.name}: {reason_of(exc)}")
        except UnicodeError as exc:  # a name that cannot be looked up (the config refuses such nodes)
            error = f"cannot connect to {node.name} ({node.url}): {reason_of(exc)}"
            return FetchResult(None, error=error, unreachable=True)


class _Told(NamedTuple):
    """What an answer's head tells of its cache (FetchResult's fields of the same names)."""

    state: CacheState | None
    not_stored: str | None  # for a state other than cached: why the answer asks caches not to store it
    age: int | None  # for a cached one: its age, if told
    fresh_for: float | None  # how long the copy stays fresh, if told
    varies: str | None  # the answer's Vary, for one the node may keep


def _signals(headers: Mapping[str, str], node: Node) -> _Told:
    state = cache_state(headers, node.kind)
    varies = vary_of(headers)
    if state is None:
        return _Told(None, None, None, fresh_for(headers, cached=True), varies)  # it may have come from the cache
    if state.cached:
        age = age_of(headers)
        return _Told(state, None, age, fresh_for(headers, cached=True), varies)
    not_stored = asks_not_to_store(headers)
    if not_stored:
        return _Told(state, not_stored, None, None, None)
    return _Told(state, None, None, fresh_for(headers), varies)


def _read(
    method: str, status: int, told: _Told, received: int, expected: int | None, *, cut: bool, wait: float | None
) -> FetchResult:
    """A node's answer whose body was read: short when it was `cut` (the node closed, or broke off, before the
    body was whole: its status stands) or when it does not match its Content-Length. `wait`: its Retry-After."""
    if cut and expected is None:
        return FetchResult(
            status, received, told.state, f"short body: broken off after {received} bytes", retry_after=wait
        )
    if cut or (expected is not None and method != "HEAD" and received != expected):
        short = f"short body: {received} of {expected} bytes"
        return FetchResult(status, received, told.state, short, retry_after=wait)
    return FetchResult(
        status,
        received,
        told.state,
        not_stored=told.not_stored,
        age=told.age,
        fresh_for=told.fresh_for,
        varies=told.varies,
        retry_after=wait,
    )


def certificate_refusal(reason: str) -> str | None:
    """Why rustls refused the node's certificate, from its words for a failed connection (None: it did not)."""
    refused = _RUSTLS_CERTIFICATE.match(reason)
    if refused is None:
        return None
    sentence = refused.group(1) + refused.group(2)
    named = (name for start, name in _CERTIFICATE_SENTENCES.items() if sentence.startswith(start))
    return _CERTIFICATE_REASONS.get(refused.group(1)) or _CERTIFICATE_REASONS.get(next(named, ""), reason)


def _causes(exc: pyreqwest.exceptions.PyreqwestError) -> list[str]:
    """pyreqwest's chain of causes, outermost first: the last one is the OS's or hyper's own words."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    return [c["message"] for c in causes or () if isinstance(c, dict) and isinstance(c.get("message"), str)]
