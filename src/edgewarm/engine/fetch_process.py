"""Fetching on a second core: the engine's HTTP requests made by a child process.

The engine's event loop does two jobs per item: the bookkeeping (claims, lanes, outcomes, the API beside it)
and the HTTP exchange with the node, which cost most with aiohttp (measured in docs/benchmarks.md). One event
loop holds the GIL, so on a machine with a core to spare `ProcessFetcher` moves the HTTP exchange to a
child process running the same `Fetcher`; the engine keeps the scheduling, limits and records. Off by
default (`[engine] fetch_process`): on 2 cores shared with the caches it made many small objects 35-40 %
faster, and large ones as fast to 15 % slower (docs/benchmarks.md, "Session 31").

The child (`main()` below, in a new interpreter) speaks over its stdin/stdout: frames of a 4-byte length
and a `marshal`-ed list (requests one way, results the other; many per frame, one frame per loop turn); the
first frame gives it the settings and the parent's log setup (its lines, a certificate refused say, are
written as the parent's are: JSON or text, same level).
Nothing but plain values crosses. It exits when its stdin closes (the engine stopped or died). When the
child dies, every request it held answers a network error untold by its node (the engine retries those items;
the node is not blamed) and a new child is started, at most once a second: requests made meanwhile wait for
it (they failed at once, each spending an attempt: a tester's crash loop failed a task in 5 s). The child
writes an empty frame every HEARTBEAT seconds; one silent for SILENT_LIMIT (stopped, hung) while requests wait
on it is killed, and so started anew (a stopped child held every lane for ever, the service looking healthy,
nothing logged: a tester's SIGSTOP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from ..config import Engine as Settings
from ..config import Node, NodeKind
from ..errors import reason_of
from ..logs import RepeatedFailure, counted, logging_setup, setup_logging
from ..nodes import CacheState
from ..tuning import OPEN_FILES_REMEDY, out_of_open_files, tune_runtime
from ..urls import TargetUrl
from .fetcher import OUT_OF_FILES, Fetcher, FetchResult, GuardedClient
from .node_health import NodeHealth

log = logging.getLogger("edgewarm.engine")

_HEADER = struct.Struct(">I")
RESTART_INTERVAL = 1.0  # seconds between starts of a child that keeps dying
STOP_TIMEOUT = 5.0
HEARTBEAT = 1.0  # seconds between the child's empty frames
SILENT_LIMIT = 10.0  # a child silent this long while requests wait on it is killed (and started anew)

# A request: (id, method, node name, node url, tls_verify, node kind, path+query, authority, host, headers or None)
Request = tuple[int, str, str, str, bool, str, str, str, str, tuple[tuple[str, str], ...] | None]
# A result: (id, status or None, bytes, cache state or None, error or None, final, unreachable, not_stored or None,
# age or None, fresh_for or None, varies or None, resent, retry_after or None)
Result = tuple[
    int,
    int | None,
    int,
    str | None,
    str | None,
    bool,
    bool,
    str | None,
    int | None,
    float | None,
    str | None,
    bool,
    float | None,
]


def open_fetcher(settings: Settings, health: NodeHealth) -> Fetcher | ProcessFetcher:
    """The engine's fetcher as `[engine] fetch_process` asks, holding down the nodes `health` finds dead."""
    return ProcessFetcher(settings, health) if settings.fetch_process else Fetcher(settings, health)


class _Frames:
    """Cuts a byte stream into frames; each is handed on as soon as it is whole (no coroutine in between)."""

    def __init__(self, on_frame: Callable[[Any], None]) -> None:
        self._buffer = bytearray()
        self._on_frame = on_frame

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            size = _HEADER.unpack_from(buffer)[0]
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            frame = marshal.loads(bytes(memoryview(buffer)[_HEADER.size : end]))
            del buffer[:end]
            self._on_frame(frame)


def _frame(value: Any) -> bytes:
    data = marshal.dumps(value)
    return _HEADER.pack(len(data)) + data


class _ChildLink(asyncio.SubprocessProtocol):
    """The engine's end of one child: results are matched to their requests as their bytes arrive."""

    def __init__(self, pending: dict[int, asyncio.Future[FetchResult]]) -> None:
        self.pending = pending
        self.frames = _Frames(self._results)
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.SubprocessTransport | None = None
        self.heard_at = time.monotonic()  # the child's last frame (its heartbeat, or results)
        self.killed = False  # by the parent, which said why

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.frames.feed(data)

    def process_exited(self) -> None:
        assert self.transport is not None
        if not self.exited.done():
            self.exited.set_result(self.transport.get_returncode() or 0)

    def _results(self, results: list[Result]) -> None:
        self.heard_at = time.monotonic()
        pending = self.pending
        for (
            request_id,
            status,
            size_read,
            state,
            error,
            final,
            unreachable,
            not_stored,
            age,
            fresh,
            varies,
            resent,
            retry_after,
        ) in results:
            future = pending.get(request_id)
            if future is not None and not future.done():
                cache = CacheState(state) if state is not None else None
                result = FetchResult(
                    status,
                    size_read,
                    cache,
                    error,
                    final,
                    unreachable,
                    not_stored=not_stored,
                    age=age,
                    fresh_for=fresh,
                    varies=varies,
                    resent=resent,
                    retry_after=retry_after,
                )
                future.set_result(result)


class ProcessFetcher(GuardedClient):
    """The `Fetcher` interface, served by a child process; use as `async with ProcessFetcher(settings):`. Nodes
    are held down here, by `health` (the child sends every request it is given)."""

    sends = False  # the child does
    sender = "the fetch process"

    def __init__(self, settings: Settings, health: NodeHealth | None = None) -> None:
        super().__init__(health)
        self._settings = settings
        self._link: _ChildLink | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._respawn: asyncio.Task[bool] | None = None  # the start of another child, after one ended
        self._not_started = RepeatedFailure(log, "starting the fetch process")
        self._pending: dict[int, asyncio.Future[FetchResult]] = {}
        self._outbox: list[Request] = []
        self._next_id = 0
        self._started_at = -RESTART_INTERVAL
        self._starting: asyncio.Lock | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        self._starting = asyncio.Lock()
        await self._start()
        self._guard = asyncio.create_task(self._kill_silent(), name="edgewarm-fetch-process-guard")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        if self._guard is not None:
            self._guard.cancel()
            await asyncio.gather(self._guard, return_exceptions=True)
        if self._respawn is not None:  # not cancelled mid-start (a child half made): it sees the close, or _stop
            await asyncio.gather(self._respawn, return_exceptions=True)  # ends what it started
        self.flush_failures()
        await self._stop()

    def _files_said(self) -> str:
        return f"the fetch process has run out of open files: {OPEN_FILES_REMEDY}"

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs (for tests and diagnostics)."""
        transport = self._running_transport()
        return transport.get_pid() if transport is not None else None

    async def _request(self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None) -> FetchResult:
        if self._running_transport() is None and not await self._restart():
            if self._closed:
                return FetchResult(None, error="the fetch process is not running (the engine is stopping)", untold=True)
            why = f"{OUT_OF_FILES}: " if out_of_open_files() else ""  # this process's limit, not the node's fault
            return FetchResult(None, error=f"the fetch process could not be started ({why}see the log)", untold=True)
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[FetchResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        sent = tuple(headers.items()) if headers else None
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(
            (request_id, method, node.name, node.url, node.tls_verify, node.kind.value, target.path_query,
             target.authority, target.host, sent)
        )  # fmt: skip
        try:
            return await future
        finally:
            self._pending.pop(request_id, None)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        stdin = self._stdin()
        if stdin is None:
            self._fail([r[0] for r in batch], "the fetch process is gone")
            return
        stdin.write(_frame(batch))

    def _running_transport(self) -> asyncio.SubprocessTransport | None:
        """The transport to the child, while the child runs."""
        link = self._link
        if link is None or link.exited.done():
            return None
        return link.transport

    def _stdin(self) -> asyncio.WriteTransport | None:
        transport = self._running_transport()
        if transport is None:
            return None
        stdin = transport.get_pipe_transport(0)
        if stdin is None or stdin.is_closing():
            return None
        return stdin  # type: ignore[return-value]

    # -- the child's life -------------------------------------------------------------------------

    async def _start(self) -> None:
        self._started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        transport, link = await loop.subprocess_exec(
            lambda: _ChildLink(self._pending),
            sys.executable,
            "-c",
            "from edgewarm.engine.fetch_process import main; main()",
            f"--fetch-process-of={os.getpid()}",  # what `ps` shows of it: whose it is
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its own log lines (rare: it has nothing to say unless something breaks) go where ours go.
            stderr=None,
        )
        self._link = link
        stdin = self._stdin()
        assert stdin is not None
        stdin.write(_frame({"engine": self._settings.model_dump(mode="json"), "logging": logging_setup()}))
        self._watcher = asyncio.create_task(self._watch(link), name="edgewarm-fetch-process-watcher")
        log.info("fetching from a child process (pid %d)", transport.get_pid())

    async def _restart(self) -> bool:
        """Start a new child (one ended, or a request found none running), once RESTART_INTERVAL has passed since
        the last start; False once the engine is stopping, or when none could be started (said in the log)."""
        assert self._starting is not None
        async with self._starting:  # the requests meanwhile wait here, then find it running
            if self._running_transport() is not None:
                return True  # another request started it meanwhile
            if not self._closed and (wait := self._started_at + RESTART_INTERVAL - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self._closed:
                return False
            await self._stop()
            try:
                await self._start()
            except OSError as exc:  # no pipe nor process to be had (this process's open-files limit): said once a
                # minute, and the requests answer it (they were "unexpected error" tracebacks: a tester's)
                self._not_started.failed(out_of_open_files() or reason_of(exc))
                return False
            self._not_started.worked()
            return True

    async def _watch(self, link: _ChildLink) -> None:
        code = await link.exited
        if not self._closed and not link.killed:
            assert link.transport is not None
            pid = link.transport.get_pid()
            log.error("the fetch process (pid %d) exited with code %s; its requests are retried", pid, code)
        self._fail(list(self._pending), f"the fetch process exited (code {code})")
        if not self._closed:  # another at once (once a second at most), not at the next request: its metrics went
            # missing till then (a tester's), and that request waited for its start
            self._respawn = asyncio.create_task(self._restart(), name="edgewarm-fetch-process-restart")

    async def _kill_silent(self) -> None:
        """Kill a child that has written nothing for SILENT_LIMIT while requests wait on it: stopped (SIGSTOP) or
        hung, it would hold them, and every lane, for ever. Its requests are retried; another is started (_watch)."""
        while not self._closed:
            await asyncio.sleep(HEARTBEAT)
            link, transport = self._link, self._running_transport()
            if link is None or transport is None or not self._pending:
                continue
            silent = time.monotonic() - link.heard_at
            if silent > SILENT_LIMIT:
                log.error(
                    "the fetch process (pid %d) has written nothing in %.0f s, %s waiting on it (stopped, or "
                    "hung?): killed; its requests are retried",
                    transport.get_pid(),
                    silent,
                    counted(len(self._pending), "request"),
                )
                link.killed = True
                with contextlib.suppress(ProcessLookupError):
                    transport.kill()

    def _fail(self, request_ids: list[int], why: str) -> None:
        for request_id in request_ids:
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(FetchResult(None, error=why, untold=True))

    async def _stop(self) -> None:
        link, watcher = self._link, self._watcher
        if link is None or link.transport is None:
            return
        stdin = self._stdin()
        if stdin is not None:
            stdin.close()  # the child's signal to stop
        try:
            await asyncio.wait_for(asyncio.shield(link.exited), STOP_TIMEOUT)
        except TimeoutError:
            if not link.killed:
                log.warning(
                    "the fetch process (pid %d) did not end within %g s of its stop (stopped, or hung?): killed",
                    link.transport.get_pid(),
                    STOP_TIMEOUT,
                )
            link.killed = True
            with contextlib.suppress(ProcessLookupError):
                link.transport.kill()
            await link.exited
        link.transport.close()
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)


# -- the child --------------------------------------------------------------------------------------------


class _Child:
    def __init__(self, fetcher: Fetcher, out: asyncio.WriteTransport) -> None:
        self.fetcher = fetcher
        self.out = out
        self.outbox: list[Result] = []
        self.nodes: dict[tuple[str, str, bool, str], Node] = {}
        self.running: set[asyncio.Task[None]] = set()

    def take(self, batch: list[Request]) -> None:
        for request in batch:
            task = asyncio.ensure_future(self.one(request))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def one(self, request: Request) -> None:
        request_id, method, name, url, tls_verify, kind, path_query, authority, host, headers = request
        key = (name, url, tls_verify, kind)
        node = self.nodes.get(key)
        if node is None:
            # The fields the fetcher reads (the kind picks the cache header to trust: nodes/signals.py).
            node = self.nodes[key] = Node.model_construct(
                name=name, url=url, tls_verify=tls_verify, kind=NodeKind(kind)
            )
        target = TargetUrl(url="", scheme="", host=host, authority=authority, path_query=path_query)
        try:
            result = await self.fetcher.request(method, node, target, dict(headers) if headers else None)
            answer: Result = (
                request_id,
                result.status,
                result.bytes,
                result.cache_state.value if result.cache_state is not None else None,
                result.error,
                result.final,
                result.unreachable,
                result.not_stored,
                result.age,
                result.fresh_for,
                result.varies,
                result.resent,
                result.retry_after,
            )
        except Exception as exc:  # Fetcher.request answers every network failure itself: this is a bug
            answer = (
                request_id,
                None,
                0,
                None,
                f"internal error in the fetch process: {type(exc).__name__}",
                False,
                False,
                None,
                None,
                None,
                None,
                False,
                None,
            )
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(answer)

    def flush(self) -> None:
        batch, self.outbox = self.outbox, []
        if not self.out.is_closing():
            self.out.write(_frame(batch))


class _EngineLink(asyncio.Protocol):
    """The child's end: the first frame is the settings, then batches of requests, started as they arrive."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.frames = _Frames(self._frame)
        self.settings: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed = loop.create_future()
        self.child: _Child | None = None
        self.early: list[list[Request]] = []  # requests that came before the fetcher was open

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def _frame(self, frame: Any) -> None:
        if not self.settings.done():
            self.settings.set_result(frame)
        elif self.child is None:
            self.early.append(frame)
        else:
            self.child.take(frame)

    def attach(self, child: _Child) -> None:
        for batch in self.early:
            child.take(batch)
        self.early.clear()
        self.child = child


async def _child_main(requests: int, results: int) -> None:
    loop = asyncio.get_running_loop()
    _, link = await loop.connect_read_pipe(_EngineLink, os.fdopen(requests, "rb", buffering=0))
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(results, "wb", buffering=0))
    done, _ = await asyncio.wait([link.settings, link.closed], return_when=asyncio.FIRST_COMPLETED)
    if link.settings not in done:
        return  # closed before it began
    first = link.settings.result()
    if first["logging"] is not None:
        setup_logging(*first["logging"])
    async with Fetcher(Settings(**first["engine"])) as fetcher:
        child = _Child(fetcher, out)
        link.attach(child)
        beating = asyncio.create_task(_heartbeat(out))
        await link.closed  # stdin closed: the engine is done with us
        beating.cancel()
        for task in list(child.running):
            task.cancel()
        await asyncio.gather(beating, *child.running, return_exceptions=True)


async def _heartbeat(out: asyncio.WriteTransport) -> None:
    """An empty frame every HEARTBEAT seconds: the parent takes a child silent for long for one stopped."""
    while not out.is_closing():
        await asyncio.sleep(HEARTBEAT)
        out.write(_frame([]))


def main() -> None:
    # Ctrl-C, a terminal's hang-up and a service manager's stop reach the whole process group: the engine
    # decides when this child stops (it closes stdin, and the child's stdin also ends when the engine dies).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # The pipes get descriptors of their own; stdout then points at stderr, so that nothing printed by any
    # library can fall into the results stream.
    requests, results = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    tune_runtime()
    asyncio.run(_child_main(requests, results))
