"""Shared helpers of the edgewarm benchmark (`bench/run.py`): labs, the service, baselines, checks, figures.

Everything runs on loopback: a `Lab` (origin + nginx caches, files and caches in /dev/shm), `edgewarm serve`
(or `edgewarm api`) as a child process, and the baselines as child processes (`xargs -P curl`, wrk, a bare
pyreqwest loop in `bench/bare_loop.py`). Every process is started here or by the Lab/ServiceProcess helpers and
stopped by its PID; every wait is bounded by the scenario's `Deadline`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp

from edgewarm import auth
from edgewarm.client import AsyncClient
from edgewarm.config import Engine as EngineSettings
from edgewarm.models import NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.store import TaskStore
from edgewarm.testing import DEFAULT_HOST, Lab, LabNode
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess
from edgewarm.testing.service import start_service as _start_service

BENCH_DIR = Path(__file__).resolve().parent
SHM = Path("/dev/shm")


class BenchTimeout(Exception):
    """A scenario ran past its hard deadline."""


class CheckFailed(Exception):
    """A correctness check after a run failed (not every URL a HIT, origin asked more than once...)."""


# -- time ----------------------------------------------------------------------------------------------------


class Deadline:
    """A scenario's hard deadline: every wait asks `left()`; `check()` raises BenchTimeout once it passed."""

    def __init__(self, seconds: float, name: str) -> None:
        self.name = name
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self, floor: float = 1.0) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise BenchTimeout(f"{self.name}: past its {self.seconds:.0f}s deadline")
        return max(floor, left)

    def check(self) -> None:
        self.left()


# -- figures -------------------------------------------------------------------------------------------------


@dataclass
class Series:
    """The values of one measure over the rounds: median and spread (min-max)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def spread(self) -> str:
        if not self.values:
            return "-"
        return f"{min(self.values):,.4g}-{max(self.values):,.4g}"

    def text(self, unit: str = "", digits: int = 0) -> str:
        if not self.values:
            return "n/a"
        fmt = f"{{:,.{digits}f}}"
        return f"{fmt.format(self.median)}{unit} ({self.spread()}, n={len(self.values)})"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def in_turns(names: Sequence[str], round_no: int) -> list[str]:
    """The contenders' order in round `round_no`: rotated by one each round, so that none always goes first."""
    shift = round_no % len(names)
    return [*names[shift:], *names[:shift]]


# -- processes -----------------------------------------------------------------------------------------------


class RssSampler:
    """Samples VmRSS of one PID from /proc every `interval` seconds in a thread; `peak_mb` after `stop()`."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []  # kB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = rss_kb(self.pid)
            if kb is None:
                return
            self.samples.append(kb)
            self._stop.wait(self.interval)

    @property
    def peak_mb(self) -> float:
        return max(self.samples, default=0) / 1024

    def quarters_mb(self) -> list[float]:
        """Peak RSS in each quarter of the run: flat memory shows as four similar values."""
        n = len(self.samples)
        if n < 4:
            return [self.peak_mb] * 4
        return [max(self.samples[i * n // 4 : (i + 1) * n // 4]) / 1024 for i in range(4)]

    @property
    def first_mb(self) -> float:
        return (self.samples[0] if self.samples else 0) / 1024


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (edgewarm's fetch process is a child of the service), from /proc."""
    tree: list[int] = []
    queue = [pid]
    while queue and len(tree) < 1000:  # bounded
        current = queue.pop()
        tree.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    queue += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return tree


def rss_kb(pid: int) -> int | None:
    """Resident memory of `pid` and its descendants, in kB; None once `pid` is gone."""
    total = None
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total = (total or 0) + int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if member == pid and total is None:
            return None
    return total


_TICK = os.sysconf("SC_CLK_TCK")
EDGEWARM_DEFAULTS = EngineSettings()  # what `edgewarm serve` runs with when its config has no [engine]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process and its descendants, of its main thread): utime + stime from /proc.

    Descendants count: edgewarm's fetches run in a child process (`[engine] fetch_process`). Read both ends of
    a run while the processes live (a child that ended in between is not counted)."""

    def read(path: str) -> float:
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)

    own = read(f"/proc/{pid}/stat")
    descendants = (read(f"/proc/{member}/stat") for member in process_tree(pid)[1:])
    return own + sum(s for s in descendants if s == s), read(f"/proc/{pid}/task/{pid}/stat")  # s != s: gone


@dataclass
class ThreadTimes:
    """Seconds a group of threads spent: CPU (user, system) from /proc/PID/task/TID/stat, and from schedstat
    the time on a CPU and the time runnable but waiting for one (a busy machine shows in `waiting`)."""

    user: float = 0.0
    system: float = 0.0
    running: float = 0.0
    waiting: float = 0.0

    def __sub__(self, other: ThreadTimes) -> ThreadTimes:
        return ThreadTimes(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


def thread_times(pid: int) -> dict[str, ThreadTimes]:
    """The threads of `pid` summed by name: "main" for the main thread, else the thread's `comm` without its
    number ("python" for Python's own threads, which keep the process's name: the store's, in edgewarm)."""
    totals: dict[str, ThreadTimes] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                running, waiting, _ = (int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = "main" if task == str(pid) else name.rstrip("0123456789_-")
        t = totals.setdefault(name, ThreadTimes())
        t.user += int(fields[11]) / _TICK
        t.system += int(fields[12]) / _TICK
        t.running += running / 1e9
        t.waiting += waiting / 1e9
    return totals


def stop_pid(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM this child by PID, then SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_healthy(url: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    """Until GET url/healthz answers 200; raises if the process exits or `timeout` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"pid {proc.pid} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


def run_bounded(argv: Sequence[str], deadline: Deadline, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run with the deadline as timeout; the child is killed by PID on timeout."""
    with subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=deadline.left())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchTimeout(f"{deadline.name}: {argv[0]} ran past the deadline") from None
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


# -- lab -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_lab(
    *, edges: int, shield: bool, workers: int = 1, shm: Path = SHM, tls: bool = False, purge_module: bool = False
) -> Iterator[Lab]:
    """A new lab with docroot and caches in RAM (cold caches); removed on exit. `tls`, `purge_module`: see `Lab`."""
    root = Path(tempfile.mkdtemp(prefix="edgewarm-bench-lab-", dir=shm))
    try:
        with Lab(
            root,
            edges=edges,
            shield=shield,
            cache_root=root / "cache",
            workers=workers,
            tls=tls,
            purge_module=purge_module,
        ) as lab:
            yield lab
    finally:
        shutil.rmtree(root, ignore_errors=True)


def url_of(path: str, *, https: bool = False) -> str:
    return f"{'https' if https else 'http'}://{DEFAULT_HOST}{path}"


async def _check_hits(
    nodes: Sequence[LabNode], paths: Sequence[str], concurrency: int, *, https: bool = False
) -> dict[str, int]:
    """HEAD every path on every node (over https at its `tls_url`, certificate unchecked): nginx answers HEAD
    from the cache (HIT) without a body."""
    bad: Counter[str] = Counter()
    jobs = iter([(n, p) for n in nodes for p in paths])
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for node, path in jobs:
                base = node.tls_url if https and node.tls_url else node.url
                async with session.head(base + path, headers={"Host": DEFAULT_HOST}) as r:
                    if r.status != 200 or r.headers.get("X-Cache-Status") != "HIT":
                        bad[node.name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {n.name: bad[n.name] for n in nodes}


def check_all_hit(
    nodes: Sequence[LabNode], paths: Sequence[str], deadline: Deadline, *, https: bool = False
) -> dict[str, int]:
    """Per node, how many of `paths` are NOT a HIT now (0 everywhere is a pass); `https`: asked over https."""

    async def bounded() -> dict[str, int]:
        async with asyncio.timeout(deadline.left()):
            return await _check_hits(nodes, paths, 32, https=https)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise BenchTimeout(f"{deadline.name}: HIT check ran past the deadline") from None


def origin_requests(lab: Lab, paths: Sequence[str]) -> Counter[str]:
    """How often the origin was asked for each of `paths` (from its access log)."""
    wanted = set(paths)
    return Counter(r.uri for r in lab.requests(lab.origin) if r.uri in wanted)


@dataclass
class Checked:
    """The outcome of a run's correctness checks."""

    not_hit: dict[str, int]
    origin_per_url: float  # origin requests / URLs
    origin_min: int
    origin_max: int

    @property
    def all_hit(self) -> bool:
        return not any(self.not_hit.values())

    def text(self) -> str:
        hit = "all HIT" if self.all_hit else f"NOT HIT: {self.not_hit}"
        return f"{hit}; origin {self.origin_per_url:.2f}/URL (min {self.origin_min}, max {self.origin_max})"


def check_run(
    lab: Lab, nodes: Sequence[LabNode], paths: Sequence[str], deadline: Deadline, *, https: bool = False
) -> Checked:
    # nginx writes a log line just after each response: read the origin's log until it stops growing.
    counts = origin_requests(lab, paths)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        time.sleep(0.2)
        again = origin_requests(lab, paths)
        if again == counts:
            break
        counts = again
    per_url = [counts.get(p, 0) for p in paths]
    not_hit = check_all_hit(nodes, paths, deadline, https=https)
    return Checked(not_hit, sum(per_url) / len(paths), min(per_url), max(per_url))


# -- the service ---------------------------------------------------------------------------------------------


def signature(day: date | None = None) -> str:
    return auth.sign(DEMO_USER, DEMO_SECRET, day or auth.today(datetime.now(UTC)))


def use_source(path: str | None) -> None:
    """Services started from now on import edgewarm from `path`, a src folder (None: no PYTHONPATH, so the
    installed one). They are child processes and take PYTHONPATH from the environment."""
    if path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = path


def sources_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a bench that runs source folders in turns: --src NAME=DIR (repeat), --rounds,
    --timeout; the bench adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--src", action="append", required=True, type=source_folder, help="NAME=DIR: a src folder to run (repeat)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="the longest wait for tasks, seconds")
    return parser


def source_folder(text: str) -> tuple[str, str]:
    """An argument NAME=DIR (a src folder to run), the folder made absolute (the services run elsewhere)."""
    name, _, folder = text.partition("=")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, str(Path(folder).resolve())


def start_service(folder: Path, nodes_toml: str, **options: Any) -> ServiceProcess:
    """The testing helper, with a longer start-up deadline: the bench machine may be busy."""
    options.setdefault("timeout", 60.0)
    return _start_service(folder, nodes_toml, **options)


def client(service: ServiceProcess, timeout: float = 120.0) -> AsyncClient:
    return AsyncClient(service.url, DEMO_USER, DEMO_SECRET, timeout=timeout)


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


async def submit_all(
    service: ServiceProcess, urls: Sequence[str], *, call_size: int = 100, submitters: int = 4
) -> tuple[list[str], float, float]:
    """Submit `urls` through /api/prefetch in calls of `call_size` from `submitters` concurrent clients.

    Returns (task ids in submission order, epoch time just before the first call, epoch time of the last answer).
    The clients are made before the clock starts, as the bare loop makes its own: making one (httpx loads the CA
    bundle for its TLS context) blocks this loop for 30-70 ms, which is the bench's time, not edgewarm's.
    """
    calls = chunks(urls, call_size)
    taskids: list[str] = [""] * len(calls)
    queue = iter(range(len(calls)))

    async def submitter(c: AsyncClient) -> None:
        for i in queue:
            taskids[i] = await c.prefetch(calls[i])

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(service)) for _ in range(submitters)]
        started = time.time()
        await asyncio.gather(*(submitter(c) for c in clients))
        return taskids, started, time.time()


async def wait_tasks(service: ServiceProcess, taskids: Sequence[str], deadline: Deadline) -> list[dict[str, Any]]:
    """Poll /v1/tasks/lookup (1,000 ids a call) until no task is in progress; return their summaries."""
    done: dict[str, dict[str, Any]] = {}
    async with client(service) as c:
        while True:
            open_ids = [t for t in taskids if t not in done]
            for part in chunks(open_ids, 1000):
                for view in (await c.lookup(part))["tasks"]:
                    if view["status"] != 1:
                        done[view["taskid"]] = view
            if len(done) == len(taskids):
                return [done[t] for t in taskids]
            if time.monotonic() > deadline.at:
                raise BenchTimeout(f"{deadline.name}: {len(taskids) - len(done)} tasks still open at the deadline")
            await asyncio.sleep(0.2)


def epoch_of(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# -- baselines -----------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    seconds: float
    requests: int
    body_bytes: int = 0
    failures: int = 0
    rss_peak_mb: float = 0.0
    cpu_seconds: float = float("nan")  # of the warming process over the timed part (nan: not measured)

    @property
    def rps(self) -> float:
        return ratio(self.requests, self.seconds)

    @property
    def mbps(self) -> float:
        return ratio(self.body_bytes, self.seconds) / 1e6


def bare_loop(
    nodes: Sequence[LabNode],
    paths: Sequence[str],
    folder: Path,
    deadline: Deadline,
    *,
    per_node: int = EDGEWARM_DEFAULTS.per_node_concurrency,
    total: int = EDGEWARM_DEFAULTS.concurrency,
    uvloop: bool = True,
) -> LoadResult:
    """`bench/bare_loop.py` in a child process: the same GETs with edgewarm's pyreqwest client, no
    bookkeeping; the concurrency of edgewarm's defaults unless told."""
    spec = folder / "bare.json"
    spec.write_text(
        json.dumps(
            {
                "nodes": [n.url for n in nodes],
                "paths": list(paths),
                "host": DEFAULT_HOST,
                "per_node": per_node,
                "total": total,
                "uvloop": uvloop,
            }
        )
    )
    argv = [sys.executable, str(BENCH_DIR / "bare_loop.py"), str(spec)]
    with subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        sampler = RssSampler(proc.pid).__enter__()
        try:
            out, err = proc.communicate(timeout=deadline.left())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchTimeout(f"{deadline.name}: bare loop ran past the deadline") from None
        finally:
            sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed: {err[-2000:]}")
    data = json.loads(out.strip().splitlines()[-1])
    return LoadResult(data["seconds"], data["requests"], data["bytes"], data["failures"], sampler.peak_mb, data["cpu"])


def xargs_curl(
    nodes: Sequence[LabNode],
    paths: Sequence[str],
    folder: Path,
    deadline: Deadline,
    *,
    parallel: int = 64,
    per_call: int = 100,
) -> LoadResult:
    """`xargs -P 64 -n N curl -s -H 'Host: …' < urls > /dev/null`, one per node, all nodes at once."""
    procs = []
    started = time.perf_counter()
    for node in nodes:
        listing = folder / f"curl-{node.name}.txt"
        listing.write_text("".join(f"{node.url}{p}\n" for p in paths))
        argv = ["xargs", "-P", str(parallel), "-n", str(per_call), "curl", "-s", "-S", "-H", f"Host: {DEFAULT_HOST}"]
        with listing.open() as stdin:
            procs.append(subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    failures = 0
    try:
        for proc in procs:
            try:
                proc.wait(deadline.left())
            except subprocess.TimeoutExpired:
                raise BenchTimeout(f"{deadline.name}: xargs curl ran past the deadline") from None
            failures += proc.returncode != 0
    finally:
        for proc in procs:
            stop_pid(proc)
            if proc.stderr is not None:
                proc.stderr.close()
    return LoadResult(time.perf_counter() - started, len(paths) * len(nodes), failures=failures)


_WRK_WALK = r"""
-- Walks the path list once over all connections, then the thread is stopped from outside (SIGINT).
local paths = {}
for line in io.lines("@PATHS@") do paths[#paths + 1] = line end
local n = #paths
local i = -1   -- wrk calls request() once before it starts sending: that first one is thrown away
local ok = 0
local finished = false
request = function()
  i = i + 1
  if i >= 1 and i <= n then return wrk.format("GET", paths[i]) end
  return wrk.format("GET", "/.lab/ready")   -- answered by the node itself with 204: not counted
end
response = function(status, headers, body)
  if status ~= 204 then ok = ok + 1 end
  if ok >= n and not finished then
    finished = true
    io.write("DONE\n"); io.flush()
  end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d\n", summary.requests, summary.bytes,
    summary.errors.status + summary.errors.read + summary.errors.connect + summary.errors.timeout))
end
"""


def wrk_walk(
    nodes: Sequence[LabNode], paths: Sequence[str], folder: Path, deadline: Deadline, *, connections: int = 64
) -> LoadResult:
    """wrk (1 thread, `connections` connections) walks the path list once through each node, all nodes at once.

    wrk runs for a duration, not a count: the Lua script prints DONE when every path has answered and we stop
    wrk with SIGINT then. Time is wall clock from starting wrk to the last DONE.
    """
    (folder / "wrk-paths.txt").write_text("".join(p + "\n" for p in paths))
    script = folder / "wrk-walk.lua"
    script.write_text(_WRK_WALK.replace("@PATHS@", str(folder / "wrk-paths.txt")))
    argv_of = [
        [
            *("wrk", "-t1", f"-c{connections}", f"-d{int(deadline.left()) + 5}s", "--timeout", "60s"),
            *("-H", f"Host: {DEFAULT_HOST}", "-s", str(script), node.url),
        ]
        for node in nodes
    ]
    started = time.perf_counter()
    procs = [subprocess.Popen(a, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for a in argv_of]
    finish: list[float] = []
    errors = 0
    try:
        for proc in procs:
            assert proc.stdout is not None
            reader = _LineReader(proc.stdout)
            if not reader.wait_for("DONE", deadline):
                raise BenchTimeout(f"{deadline.name}: wrk did not walk its list in time")
            finish.append(time.perf_counter())
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            out, _ = proc.communicate(timeout=30)
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    errors += int(line.split()[3])
    finally:
        for proc in procs:
            stop_pid(proc)
    return LoadResult(max(finish) - started, len(paths) * len(nodes), failures=errors)


class _LineReader:
    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()
        self._stream = stream

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line.strip())
            if line.strip() == "DONE":
                self._event.set()
                return
        self._event.set()

    def wait_for(self, text: str, deadline: Deadline) -> bool:
        self._event.wait(deadline.left())
        return text in self.lines


# -- wrk against the API -------------------------------------------------------------------------------------

_WRK_QUERY = r"""
-- prefetchQuery with a valid signed JSON body, rotating over task ids.
local ids = {}
for line in io.lines("@IDS@") do ids[#ids + 1] = line end
local n = #ids
local i = math.random(n)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % n + 1
  return wrk.format("POST", "@PATH@", nil,
    '{"username":"@USER@","signature":"@SIG@","taskid":"' .. ids[i] .. '"}')
end
local bad = 0
response = function(status, headers, body)
  if status ~= 200 or not string.find(body, '"status":0,"data"', 1, true) then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.read + summary.errors.connect + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""

_WRK_CONST = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"username":"@USER@","signature":"@SIG@","taskid":"00000000-0000-4000-8000-000000000000"}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.read + summary.errors.connect + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return ratio(self.requests, self.seconds)


def wrk_api(
    url: str,
    folder: Path,
    deadline: Deadline,
    *,
    taskids: Sequence[str] | None,
    connections: int,
    seconds: float,
    path: str = "/api/prefetchQuery",
) -> WrkResult:
    """wrk -t1 POSTing signed prefetchQuery bodies (rotating `taskids`), or one constant body when None."""
    script = folder / f"wrk-api-{connections}.lua"
    if taskids is not None:
        ids = folder / "wrk-taskids.txt"
        if not ids.exists():
            ids.write_text("".join(t + "\n" for t in taskids))
        text = _WRK_QUERY.replace("@IDS@", str(ids))
    else:
        text = _WRK_CONST
    script.write_text(text.replace("@PATH@", path).replace("@USER@", DEMO_USER).replace("@SIG@", signature()))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s", "-s", str(script), url + path]
    out = run_bounded(argv, deadline).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out[-1000:]}")
    req, micros, errors, p50, p99, worst = (int(x) for x in line.split()[1:])
    return WrkResult(req, micros / 1e6, errors, p50 / 1000, p99 / 1000, worst / 1000)


# -- profiling -----------------------------------------------------------------------------------------------


class Profiler:
    """`py-spy record` attached to a PID (when py-spy is installed and --profile is given)."""

    def __init__(self, pid: int, out: Path, *, rate: int = 100) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if Path(exe).exists():
            argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "-o", str(out)]
            argv += ["--nonblocking", "--threads"]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attach

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc)


def top_frames(raw: Path, *, limit: int = 25, own: bool = True) -> list[tuple[str, float]]:
    """From py-spy's raw (collapsed) output: the share of samples per function (`own`: leaf only, else inclusive)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        if own:
            counts[_short(frames[-1])] += int(n)
        else:
            for f in {_short(f) for f in frames}:
                counts[f] += int(n)
    return [(name, count / total) for name, count in counts.most_common(limit)] if total else []


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    marker = "site-packages/"
    if marker in path:
        path = path.split(marker, 1)[1]
    elif "/src/edgewarm/" in path:
        path = "edgewarm/" + path.split("/src/edgewarm/", 1)[1]
    return f"{name} ({path})"


def sleep_until(predicate: Callable[[], bool], deadline: Deadline, step: float = 0.05) -> None:
    while not predicate():
        deadline.check()
        time.sleep(step)


async def fill_tasks(store: TaskStore, urls: int, nodes: Sequence[str] = ("e1", "e2")) -> None:
    """`urls` URLs in tasks of 100, an item per node each, written through `create_task` (user "u")."""
    now = time.time()
    for t in range(urls // 100):
        items = tuple(NewItem(seq=i, url=f"http://example.test/f/{t}/{i}", node=n) for i in range(100) for n in nodes)
        quota = QuotaCharge("20261128", 100, 0, 10**9, 10)
        await store.create_task(NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, now, items, quota))
