"""Which asyncio HTTP client should warm caches: throughput of candidates on a hot nginx edge, one process.

The workload is edgewarm's: GET each URL from a cache node's address with the site's ``Host`` header, stream
the body to the end and discard it. A Lab (edgewarm.testing) runs an origin and one nginx edge, with cache
and files in /dev/shm. Each workload is fetched once to fill the cache (cold), then every client fetches it
in rounds on the hot cache, so the cache state is the same for all; the clients take turns, in a different
order each round, and the median pass is reported. Every measured response must be a 200 HIT with the whole
body, or the row is marked.

Clients: aiohttp (shared ClientSession, TCPConnector limit, yarl.URL(encoded=True)), the same on uvloop,
pyreqwest (Rust's reqwest/hyper on its own thread; streamed as edgewarm's Fetcher does), the same on uvloop,
httpx.AsyncClient, and where installed niquests.AsyncSession and pycurl (CurlMulti driven by the asyncio
loop through socket callbacks). wrk, where installed, is a C baseline run on the same URLs (1 thread).

    .venv/bin/python bench/http_clients.py                 # 5,000 x 4 KiB and 100 x 4 MiB, 64 in flight
    .venv/bin/python bench/http_clients.py --rounds 5 --concurrency 32 --max-seconds 300
    .venv/bin/python bench/http_clients.py --rounds 1 --small 200x4096 --large 10x262144 --wrk-seconds 1   # smoke

niquests and pycurl are optional (`pip install niquests pycurl`); they are not edgewarm dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewarm.testing import DEFAULT_HOST, Lab

# (status, body bytes read, the node's cache status)
Fetch = Callable[[str], Awaitable[tuple[int, int, str | None]]]
ClientFactory = Callable[[int], contextlib.AbstractAsyncContextManager[Fetch]]

CHUNK = 65536


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    size: int


@dataclass(frozen=True)
class Client:
    name: str
    factory: ClientFactory
    uvloop: bool = False


@dataclass(frozen=True)
class PassResult:
    requests: int
    body_bytes: int
    seconds: float
    failures: int  # not 200, or a short body
    not_hit: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mbps(self) -> float:
        return self.body_bytes / self.seconds / 1e6


# -- clients -----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_client(concurrency: int) -> AsyncIterator[Fetch]:
    import aiohttp
    import yarl

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        headers = {"Host": DEFAULT_HOST}

        async def fetch(url: str) -> tuple[int, int, str | None]:
            async with session.get(yarl.URL(url, encoded=True), headers=headers) as resp:
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                return resp.status, size, resp.headers.get("X-Cache-Status")

        yield fetch


@contextlib.asynccontextmanager
async def pyreqwest_client(concurrency: int) -> AsyncIterator[Fetch]:
    """Built and read as edgewarm's Fetcher does (its own client; no body read ahead, raw chunks)."""
    from edgewarm.config import Engine
    from edgewarm.engine import fetcher

    async with fetcher.pyreqwest_client(Engine(concurrency=concurrency)) as client:
        headers = {"Host": DEFAULT_HOST}

        async def fetch(url: str) -> tuple[int, int, str | None]:
            async with client.get(url).headers(headers).streamed_read_buffer_limit(0).build_streamed() as resp:
                size = 0
                reader = resp.body_reader
                while (chunk := await reader.read_chunk()) is not None:
                    size += len(chunk)
                return resp.status, size, resp.headers.get("X-Cache-Status")

        yield fetch


@contextlib.asynccontextmanager
async def httpx_client(concurrency: int) -> AsyncIterator[Fetch]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        headers = {"Host": DEFAULT_HOST}

        async def fetch(url: str) -> tuple[int, int, str | None]:
            async with client.stream("GET", url, headers=headers) as resp:
                size = 0
                async for chunk in resp.aiter_raw():
                    size += len(chunk)
                return resp.status_code, size, resp.headers.get("X-Cache-Status")

        yield fetch


@contextlib.asynccontextmanager
async def niquests_client(concurrency: int) -> AsyncIterator[Fetch]:
    import niquests

    session = niquests.AsyncSession(
        pool_connections=1, pool_maxsize=concurrency, disable_http2=True, disable_http3=True, timeout=120
    )
    async with session:
        headers = {"Host": DEFAULT_HOST}

        async def fetch(url: str) -> tuple[int, int, str | None]:
            resp = await session.get(url, headers=headers, stream=True)
            size = 0
            async for chunk in await resp.iter_raw(CHUNK):
                size += len(chunk)
            await resp.close()
            return int(resp.status_code or 0), size, resp.headers.get("X-Cache-Status")

        yield fetch


class _CurlLoop:
    """libcurl's multi interface driven by the asyncio loop (socket and timer callbacks), as aiocurl does."""

    def __init__(self, concurrency: int) -> None:
        import pycurl

        self._pycurl = pycurl
        self._loop = asyncio.get_running_loop()
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, concurrency)
        self._timer: asyncio.TimerHandle | None = None
        self._free: list[Any] = [pycurl.Curl() for _ in range(concurrency)]
        self._waiting: dict[Any, asyncio.Future[None]] = {}
        self._fds: set[int] = set()

    def _on_socket(self, what: int, fd: int, multi: object, data: object) -> None:
        pycurl = self._pycurl
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self._fds.discard(fd)
        if what == pycurl.POLL_REMOVE:
            return
        self._fds.add(fd)
        if what & pycurl.POLL_IN:
            self._loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if what & pycurl.POLL_OUT:
            self._loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)

    def _on_timer(self, ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ms >= 0:  # libcurl may not be re-entered from its callback: act from the loop
            self._timer = self._loop.call_later(ms / 1000, self._act, self._pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        pycurl = self._pycurl
        while True:
            ret, _running = self._multi.socket_action(fd, events)
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        while True:
            queued, done, failed = self._multi.info_read()
            for handle in done:
                self._finish(handle, None)
            for handle, _errno, message in failed:
                self._finish(handle, OSError(message))
            if not queued:
                break

    def _finish(self, handle: Any, error: OSError | None) -> None:
        self._multi.remove_handle(handle)
        future = self._waiting.pop(handle)
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    async def fetch(self, url: str) -> tuple[int, int, str | None]:
        pycurl = self._pycurl
        handle = self._free.pop()  # never empty: at most `concurrency` callers at once
        size = 0
        cache: list[str] = []

        def body(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)

        def header(line: bytes) -> None:
            if line[:15].lower() == b"x-cache-status:":
                cache.append(line[15:].strip().decode())

        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.HTTPHEADER, [f"Host: {DEFAULT_HOST}"])
        handle.setopt(pycurl.WRITEFUNCTION, body)
        handle.setopt(pycurl.HEADERFUNCTION, header)
        handle.setopt(pycurl.BUFFERSIZE, CHUNK)
        handle.setopt(pycurl.TIMEOUT, 120)
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiting[handle] = future
        self._multi.add_handle(handle)
        try:
            await future
            return int(handle.getinfo(pycurl.RESPONSE_CODE)), size, cache[-1] if cache else None
        finally:
            self._free.append(handle)

    def close(self) -> None:
        for fd in self._fds:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if self._timer is not None:
            self._timer.cancel()
        for handle in self._free:
            handle.close()
        self._multi.close()


@contextlib.asynccontextmanager
async def pycurl_client(concurrency: int) -> AsyncIterator[Fetch]:
    curl = _CurlLoop(concurrency)
    try:
        yield curl.fetch
    finally:
        curl.close()


def available_clients() -> list[Client]:
    clients = [Client("aiohttp", aiohttp_client)]
    if _importable("uvloop"):
        clients.append(Client("aiohttp+uvloop", aiohttp_client, uvloop=True))
        clients.append(Client("pyreqwest+uvloop", pyreqwest_client, uvloop=True))
    clients.append(Client("pyreqwest", pyreqwest_client))
    clients.append(Client("httpx", httpx_client))
    if _importable("niquests"):
        clients.append(Client("niquests", niquests_client))
    if _importable("pycurl"):
        clients.append(Client("pycurl", pycurl_client))
    return clients


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- driving -----------------------------------------------------------------------------------------------


async def run_pass(fetch: Fetch, urls: list[str], size: int, concurrency: int, deadline: float) -> PassResult:
    """Fetch every URL once with `concurrency` workers; stops at `deadline` (time.monotonic)."""
    pending: Iterator[str] = iter(urls)
    totals = {"requests": 0, "bytes": 0, "failures": 0, "not_hit": 0}

    async def worker() -> None:
        for url in pending:
            status, got, cache = await fetch(url)
            totals["requests"] += 1
            totals["bytes"] += got
            totals["failures"] += status != 200 or got != size
            totals["not_hit"] += cache != "HIT"

    start = time.perf_counter()
    async with asyncio.timeout(max(1.0, deadline - time.monotonic())), asyncio.TaskGroup() as group:
        for i in range(concurrency):
            group.create_task(worker(), name=f"worker-{i}")
    seconds = time.perf_counter() - start
    return PassResult(totals["requests"], totals["bytes"], seconds, totals["failures"], totals["not_hit"])


def measure(client: Client, urls: list[str], size: int, concurrency: int, deadline: float, warmup: int) -> PassResult:
    """One timed pass in a fresh event loop, after an untimed warm-up that opens the connections."""

    async def main() -> PassResult:
        async with client.factory(concurrency) as fetch:
            await run_pass(fetch, urls[:warmup], size, concurrency, deadline)
            return await run_pass(fetch, urls, size, concurrency, deadline)

    loop_factory = None
    if client.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


_WRK_SCRIPT = """
local paths = {}
for line in io.lines("@PATHS@") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d\\n", summary.requests, summary.bytes, summary.duration,
    summary.errors.status + summary.errors.read + summary.errors.connect + summary.errors.timeout))
end
"""


def measure_wrk(url: str, paths: list[str], concurrency: int, seconds: float, folder: Path) -> PassResult | None:
    """wrk cycling through the same paths for `seconds` (its bytes include response headers)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    (folder / "paths.txt").write_text("\n".join(paths) + "\n")
    script = folder / "bench.lua"
    script.write_text(_WRK_SCRIPT.replace("@PATHS@", str(folder / "paths.txt")))
    argv = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "30s"]
    argv += ["-H", f"Host: {DEFAULT_HOST}", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, size, micros, errors = (int(x) for x in line.split()[1:])
    return PassResult(requests, size, micros / 1e6, errors, 0)


# -- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="measured passes per client and workload")
    parser.add_argument("--small", default="5000x4096", help="COUNTxSIZE of the small-object workload")
    parser.add_argument("--large", default="100x4194304", help="COUNTxSIZE of the large-object workload")
    parser.add_argument("--max-seconds", type=float, default=600, help="stop measuring after this long")
    parser.add_argument("--shm", type=Path, default=Path("/dev/shm"), help="where files and cache go")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="how long the wrk baseline runs per workload")
    args = parser.parse_args(argv)
    workloads = [_workload("small", args.small), _workload("large", args.large)]
    clients = available_clients()
    deadline = time.monotonic() + args.max_seconds

    root = Path(tempfile.mkdtemp(prefix="edgewarm-bench-", dir=args.shm))
    results: dict[tuple[str, str], list[PassResult]] = {}
    baseline: dict[str, PassResult | None] = {}
    try:
        with Lab(root, edges=1, shield=False, cache_root=root / "cache", workers=1) as lab:
            edge = lab.edges[0]
            urls: dict[str, list[str]] = {}
            for load in workloads:
                paths = lab.make_files(load.count, load.size, prefix=f"/{load.name}/")
                urls[load.name] = [edge.url + p for p in paths]
                cold = measure(clients[0], urls[load.name], load.size, args.concurrency, deadline, warmup=0)
                print(f"cold fill {load.name}: {cold.requests} URLs, {cold.seconds:.2f}s, {cold.failures} failed")
                if cold.failures:
                    raise SystemExit(f"cold fill of {load.name} failed {cold.failures} times")
                baseline[load.name] = measure_wrk(edge.url, paths, args.concurrency, args.wrk_seconds, root)

            for round_no in range(args.rounds):
                order = clients[round_no % len(clients) :] + clients[: round_no % len(clients)]
                for client, load in itertools.product(order, workloads):
                    if time.monotonic() > deadline:
                        break
                    result = measure(
                        client, urls[load.name], load.size, args.concurrency, deadline, warmup=args.concurrency
                    )
                    results.setdefault((client.name, load.name), []).append(result)
                    print(f"round {round_no + 1} {client.name:15} {load.name:6} {result.rps:9.0f} req/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"concurrency {args.concurrency}, {args.rounds} rounds, median pass; MB = 10^6 bytes of body")
    for load in workloads:
        report(load, clients, results, baseline[load.name], args.wrk_seconds)
    return 0


def report(
    load: Workload,
    clients: list[Client],
    results: dict[tuple[str, str], list[PassResult]],
    baseline: PassResult | None,
    wrk_seconds: int,
) -> None:
    rows: list[tuple[str, float, float, str]] = []
    for client in clients:
        passes = results.get((client.name, load.name), [])
        if not passes:
            continue
        rps = statistics.median(p.rps for p in passes)
        mbps = statistics.median(p.mbps for p in passes)
        bad = sum(p.failures for p in passes)
        misses = sum(p.not_hit for p in passes)
        note = (f"{bad} failed " if bad else "") + (f"{misses} not HIT" if misses else "")
        rows.append((client.name, rps, mbps, note or f"{len(passes)} passes"))
    if not rows:
        return
    fastest = max(r[1] for r in rows)
    print(f"\n{load.name}: {load.count} x {load.size} bytes")
    print(f"  {'client':16} {'req/s':>9} {'MB/s':>8} {'vs fastest':>10}  notes")
    for name, rps, mbps, note in sorted(rows, key=lambda r: -r[1]):
        print(f"  {name:16} {rps:9.0f} {mbps:8.1f} {rps / fastest:10.2f}  {note}")
    if baseline is not None:
        ratio = baseline.rps / fastest
        print(
            f"  {'wrk (C, 1 thread)':16} {baseline.rps:9.0f} {baseline.mbps:8.1f} {ratio:10.2f}"
            f"  C baseline, {wrk_seconds} s run; MB/s counts headers too; {baseline.failures} errors"
        )


def _workload(name: str, spec: str) -> Workload:
    count, _, size = spec.partition("x")
    return Workload(name, int(count), int(size))


if __name__ == "__main__":
    sys.exit(main())
