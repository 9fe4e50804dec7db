"""Fetching on a second core: the engine's HTTP requests made by a child process.

The engine's event loop does two jobs per item: the bookkeeping (claims, lanes, outcomes, the API beside it)
and the HTTP exchange with the node, which costs most (aiohttp, measured in docs/benchmarks.md). One event
loop holds the GIL, so on a machine with a core to spare `ProcessFetcher` moves the HTTP exchange to a
child process running the same `Fetcher`; the engine keeps the scheduling, limits and records.

The child (`main()` below, in a new interpreter) speaks over its stdin/stdout: frames of a 4-byte length
and a `marshal`-ed list (requests one way, results the other; many per frame, one frame per loop turn).
Nothing but plain values crosses. It exits when its stdin closes (the engine stopped or died). When the
child dies, every request it held answers a network error (the engine retries those items as for any
node failure) and the next request starts a new child, at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import signal
import struct
import sys
import time
from types import TracebackType
from typing import Any, Self

from ..config import Engine as Settings
from ..config import Node
from ..nodes import CacheState
from ..tuning import tune_runtime
from ..urls import TargetUrl
from .fetcher import Fetcher, FetchResult

log = logging.getLogger("edgewarm.engine")

_HEADER = struct.Struct(">I")
RESTART_INTERVAL = 1.0  # seconds between starts of a child that keeps dying
STOP_TIMEOUT = 5.0

# A request: (id, method, node name, node url, tls_verify, path+query, authority, host, headers or None)
Request = tuple[int, str, str, str, bool, str, str, str, tuple[tuple[str, str], ...] | None]
# A result: (id, status or None, bytes, cache state or None, error or None)
Result = tuple[int, int | None, int, str | None, str | None]


def open_fetcher(settings: Settings) -> Fetcher | ProcessFetcher:
    """The engine's fetcher as `[engine] fetch_process` asks: "on", "off", or "auto" (on with 2+ CPUs)."""
    wanted = settings.fetch_process
    if wanted == "on" or (wanted == "auto" and len(os.sched_getaffinity(0)) >= 2):
        return ProcessFetcher(settings)
    return Fetcher(settings)


class ProcessFetcher:
    """The `Fetcher` interface, served by a child process; use as `async with ProcessFetcher(settings):`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[FetchResult]] = {}
        self._outbox: list[Request] = []
        self._next_id = 0
        self._started_at = -RESTART_INTERVAL
        self._starting: asyncio.Lock | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        self._starting = asyncio.Lock()
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        await self._stop()

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs (for tests and diagnostics)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        """As `Fetcher.request`: send `method` for `target` to `node` (from the child), body read and dropped."""
        running = self._proc is not None and self._proc.returncode is None
        if not running and not await self._restart():
            return FetchResult(None, error="the fetch process is not running (restarting)")
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[FetchResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        sent = tuple(headers.items()) if headers else None
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(
            (request_id, method, node.name, node.url, node.tls_verify, target.path_query, target.authority,
             target.host, sent)
        )  # fmt: skip
        try:
            return await future
        finally:
            self._pending.pop(request_id, None)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        proc = self._proc
        if not batch or proc is None or proc.stdin is None or proc.stdin.is_closing():
            self._fail([r[0] for r in batch], "the fetch process is gone")
            return
        frame = marshal.dumps(batch)
        proc.stdin.write(_HEADER.pack(len(frame)) + frame)

    # -- the child's life -------------------------------------------------------------------------

    async def _start(self) -> None:
        self._started_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from edgewarm.engine.fetch_process import main; main()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own log lines (rare: it has nothing to say unless something breaks) go where ours go.
            stderr=None,
        )
        assert self._proc.stdin is not None
        settings = marshal.dumps(self._settings.model_dump(mode="json"))
        self._proc.stdin.write(_HEADER.pack(len(settings)) + settings)
        self._reader = asyncio.create_task(self._read(self._proc), name="edgewarm-fetch-process-reader")
        log.info("fetching from a child process (pid %d)", self._proc.pid)

    async def _restart(self) -> bool:
        assert self._starting is not None
        async with self._starting:
            if self._proc is not None and self._proc.returncode is None:
                return True  # another request started it meanwhile
            if self._closed or time.monotonic() - self._started_at < RESTART_INTERVAL:
                return False
            await self._stop()
            await self._start()
            return True

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                size = _HEADER.unpack(await proc.stdout.readexactly(_HEADER.size))[0]
                results: list[Result] = marshal.loads(await proc.stdout.readexactly(size))
                pending = self._pending
                for request_id, status, size_read, state, error in results:
                    future = pending.get(request_id)
                    if future is not None and not future.done():
                        cache = CacheState(state) if state is not None else None
                        future.set_result(FetchResult(status, size_read, cache, error))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        code = await proc.wait()
        if not self._closed:
            log.error("the fetch process (pid %d) exited with code %s; its requests are retried", proc.pid, code)
        self._fail(list(self._pending), f"the fetch process exited (code {code})")

    def _fail(self, request_ids: list[int], why: str) -> None:
        for request_id in request_ids:
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(FetchResult(None, error=why))

    async def _stop(self) -> None:
        proc, reader = self._proc, self._reader
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # the child's signal to stop
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)


# -- the child --------------------------------------------------------------------------------------------


class _Child:
    def __init__(self, fetcher: Fetcher, out: asyncio.StreamWriter | Any) -> None:
        self.fetcher = fetcher
        self.out = out
        self.outbox: list[Result] = []
        self.nodes: dict[tuple[str, str, bool], Node] = {}
        self.running: set[asyncio.Task[None]] = set()

    def take(self, batch: list[Request]) -> None:
        for request in batch:
            task = asyncio.ensure_future(self.one(request))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def one(self, request: Request) -> None:
        request_id, method, name, url, tls_verify, path_query, authority, host, headers = request
        node = self.nodes.get((name, url, tls_verify))
        if node is None:
            node = self.nodes[(name, url, tls_verify)] = Node.model_construct(name=name, url=url, tls_verify=tls_verify)
        target = TargetUrl(url="", scheme="", host=host, authority=authority, path_query=path_query)
        try:
            result = await self.fetcher.request(method, node, target, dict(headers) if headers else None)
            answer: Result = (
                request_id,
                result.status,
                result.bytes,
                result.cache_state.value if result.cache_state is not None else None,
                result.error,
            )
        except Exception as exc:  # Fetcher.request answers every network failure itself: this is a bug
            answer = (request_id, None, 0, None, f"internal error in the fetch process: {type(exc).__name__}")
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(answer)

    def flush(self) -> None:
        batch, self.outbox = self.outbox, []
        frame = marshal.dumps(batch)
        self.out.write(_HEADER.pack(len(frame)) + frame)


async def _child_main(requests: int, results: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(requests, "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(results, "wb", buffering=0)
    )
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
        settings = Settings(**marshal.loads(await reader.readexactly(size)))
    except asyncio.IncompleteReadError:
        return
    async with Fetcher(settings) as fetcher:
        child = _Child(fetcher, out)
        try:
            while True:
                size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
                child.take(marshal.loads(await reader.readexactly(size)))
        except asyncio.IncompleteReadError:
            pass  # stdin closed: the engine is done with us
        for task in list(child.running):
            task.cancel()
        await asyncio.gather(*child.running, return_exceptions=True)


def main() -> None:
    # Ctrl-C reaches the whole process group: the engine decides when this child stops (it closes stdin).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pipes get descriptors of their own; stdout then points at stderr, so that nothing printed by any
    # library can fall into the results stream.
    requests, results = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    tune_runtime()
    asyncio.run(_child_main(requests, results))
