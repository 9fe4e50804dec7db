"""Scale-out benchmark: items/s with 1, 2 and 4 `edgewarm worker` processes on PostgreSQL, beside `edgewarm serve`
on SQLite in one process, in one run (docs/benchmarks.md, "Scale-out", has the figures).

    .venv/bin/python bench/scale_out.py                    # 10,000 URLs x 4 KiB x 2 edges; about 1-3 minutes
    .venv/bin/python bench/scale_out.py --urls 2000 --workers 1,2
    .venv/bin/python bench/scale_out.py --profile          # also py-spy `serve` and worker 1 during each run

Everything is on loopback and started here: a throwaway PostgreSQL (`edgewarm.testing.postgres`), a lab of
2 nginx edges without a shield (docroot and caches in /dev/shm, `edgewarm.testing.Lab`), and the edgewarm
processes. Each configuration gets a fresh store (a new PostgreSQL database, or a new SQLite file in
/dev/shm) and cold caches: its URLs use a host of their own (`run-N.example.test`; the caches key on the host,
the origin answers any host). The URLs go in through `/api/prefetch` of the API process (`edgewarm serve`
for SQLite, one `edgewarm api` for PostgreSQL) with the async client, in calls of 100 from 4 concurrent
submitters, while the workers already run. A run lasts from the first submit to the `finished_at` of the
last task; it then checks that every task ended with status 0 and that each edge logged each URL exactly once.

Where the time goes: the CPU time of every process involved (edgewarm processes, the PostgreSQL server with
its backends, each nginx) is read from /proc at the start and the end of each run, shown as % of one core,
next to the whole machine's busy % (which includes whatever else runs on it). For PostgreSQL runs, the
edgewarm backends in pg_stat_activity are sampled every 0.2 s: how many are busy, what they wait for, and which
statements wait on a lock. `--profile` adds `py-spy record` of `serve` and of worker 1, summed up by phase
(HTTP to the nodes, store, metrics, API, the rest).

Exit status 0 when every configuration ran and passed its checks, 1 otherwise.

Bounded: one `--timeout` for the whole run (default 900 s); every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from edgewarm.client import AsyncClient
from edgewarm.testing import Lab
from edgewarm.testing.postgres import PostgresCluster
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

PER_CALL = 100
SUBMITTERS = 4
SHM = Path("/dev/shm")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchTimeout(Exception):
    """The run went past `--timeout`."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise BenchTimeout(f"past the {self.seconds:.0f}s deadline")
        return left


# -- CPU accounting ----------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and its live descendants, plus the descendants they have reaped (cutime).

    Not the process group: PostgreSQL's backends each call setsid(); they are the postmaster's children.
    """
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            stats[int(entry.name)] = fields
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)  # ppid
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if (fields := stats.get(pid)) is None:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        todo.extend(children.get(pid, []))
    return total / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # user .. steal (guest time is already in user)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds of named processes (or process trees) between `start()` and `stop()`."""

    processes: dict[str, int]  # name -> pid
    trees: dict[str, int]  # name -> pid, counted with its descendants
    _start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0  # fraction of all cores, 0..1
    _machine: tuple[float, float] = (0.0, 0.0)

    def _read(self) -> dict[str, float]:
        out = {name: process_cpu_seconds(pid) for name, pid in self.processes.items()}
        out |= {name: tree_cpu_seconds(pid) for name, pid in self.trees.items()}
        out["bench client"] = process_cpu_seconds(os.getpid())
        return out

    def start(self) -> None:
        self._start = self._read()
        self._machine = machine_busy_seconds()

    def stop(self) -> None:
        end = self._read()
        self.used = {name: end[name] - self._start[name] for name in end}
        busy, total = machine_busy_seconds()
        self.machine_busy = (busy - self._machine[0]) / max(total - self._machine[1], 1e-9)


# -- PostgreSQL wait sampling ------------------------------------------------------------------------------

_ACTIVITY = """
SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction (waiting for edgewarm)'
    WHEN wait_event = 'ClientRead' THEN 'Client:ClientRead (waiting for edgewarm)'
    ELSE coalesce(wait_event_type || ':' || wait_event, 'on CPU') END,
    CASE WHEN wait_event_type = 'Lock' THEN regexp_replace(left(query, 400), '\\s+', ' ', 'g') END
FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'edgewarm'
    AND state IN ('active', 'idle in transaction') AND pid <> pg_backend_pid()
"""


@dataclass
class Waits:
    """What the busy edgewarm backends were doing, counted over the samples; the statements that waited on locks."""

    samples: int = 0
    doing: Counter[str] = field(default_factory=Counter)
    locked: Counter[str] = field(default_factory=Counter)


async def sample_waits(db_url: str, stop: asyncio.Event, into: Waits) -> None:
    """Sample pg_stat_activity every 0.2 s until `stop`."""
    conn = await asyncpg.connect(db_url)
    try:
        while not stop.is_set():
            for what, query in await conn.fetch(_ACTIVITY):
                into.doing[what] += 1
                if query:
                    into.locked[_statement(query)] += 1
            into.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await conn.close()


def _statement(query: str) -> str:
    """A short name for one of the store's statements: what it changes or locks, and how it starts."""
    words = query.strip().split()
    if words and words[0].upper() == "WITH":
        text = " ".join(words)
        for verb in (" UPDATE ", " DELETE ", " INSERT "):
            at = text.rfind(verb)
            if at >= 0:
                return f"WITH {words[1]} AS (...) {text[at + 1 :].split(' SET ')[0]} ..."
    return " ".join(words[:8]) + " ..."


# -- py-spy ------------------------------------------------------------------------------------------------


class Profile:
    """`py-spy record` of one process while a run lasts (raw collapsed stacks), summarized afterwards."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        exe = Path(sys.executable).with_name("py-spy")
        argv = [str(exe), "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking"]
        with open(out.with_suffix(".log"), "wb") as log:
            self.proc = subprocess.Popen([*argv, "-o", str(out)], stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def summary(self) -> str:
        """Where the busy samples were: each sample goes to the first of PHASES found anywhere in its stack."""
        phases: Counter[str] = Counter()
        total = 0
        with contextlib.suppress(OSError), open(self.out) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if not count.isdigit():
                    continue
                files = [_frame_file(frame) for frame in stack.split(";")]
                if files[-1].startswith("asyncio/runners"):  # no Python frame above the loop: uvloop's C code
                    phase = LOOP_IN_C
                else:
                    phase = next((name for name, match in PHASES if any(match(path) for path in files)), "other")
                phases[phase] += int(count)
                total += int(count)
        if not total:
            return "no samples: " + self.out.with_suffix(".log").read_text(errors="replace")[-300:]
        return f"{total} samples: " + ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in phases.most_common())


def _frame_file(frame: str) -> str:
    inner = frame[frame.rfind("(") + 1 : frame.rfind(")")]
    return inner.rsplit(":", 1)[0]


def _under(*prefixes: str) -> Callable[[str], bool]:
    return lambda path: path.startswith(prefixes)


_ENTRY_POINTS = ("edgewarm/cli/", "edgewarm/runtime", "edgewarm/__main__")  # in every sample of the main thread

# py-spy names files from their sys.path entry: `aiohttp/client.py`, `edgewarm/store/postgres.py`.
PHASES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("store (edgewarm.store, asyncpg, sqlite3)", _under("edgewarm/store/", "asyncpg/", "sqlite3/")),
    ("metrics (prometheus_client)", _under("prometheus_client/")),
    (
        "HTTP to the nodes (engine.fetcher, pyreqwest, aiohttp, yarl)",
        _under("edgewarm/engine/fetcher", "pyreqwest/", "aiohttp/", "yarl/"),
    ),
    ("API (fastapi, starlette, uvicorn)", _under("fastapi/", "starlette/", "uvicorn/", "edgewarm/api/")),
    ("the rest of edgewarm", lambda path: path.startswith("edgewarm/") and not path.startswith(_ENTRY_POINTS)),
)
LOOP_IN_C = "event loop in C (uvloop: sockets, callbacks, asyncpg's protocol)"


# -- one configuration -------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    workers: int
    items: int
    seconds: float
    submit_seconds: float
    cpu: dict[str, float]
    machine_busy: float
    waits: Waits
    profile: str = ""

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    @property
    def service_cpu(self) -> float:
        """CPU seconds of edgewarm and its store (nginx and the bench client left out)."""
        return sum(v for k, v in self.cpu.items() if k.startswith("edgewarm") or k == "postgres")


async def submit_all(client_url: str, urls: Sequence[str]) -> tuple[list[str], float]:
    """Prefetch `urls` in calls of 100 from SUBMITTERS concurrent clients; (task ids, seconds it took)."""
    calls = [list(urls[i : i + PER_CALL]) for i in range(0, len(urls), PER_CALL)]
    taskids = [""] * len(calls)
    queue = iter(range(len(calls)))

    async def submitter() -> None:
        async with AsyncClient(client_url, DEMO_USER, DEMO_SECRET, timeout=120) as client:
            for i in queue:
                taskids[i] = await client.prefetch(calls[i])

    started = time.monotonic()
    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
    return taskids, time.monotonic() - started


async def wait_done(client_url: str, taskids: Sequence[str], deadline: Deadline) -> list[dict[str, object]]:
    async with AsyncClient(client_url, DEMO_USER, DEMO_SECRET, timeout=120) as client:
        while True:
            tasks = (await client.lookup(taskids))["tasks"]
            if len(tasks) == len(taskids) and all(t["status"] != 1 for t in tasks):
                return list(tasks)
            if time.monotonic() > deadline.at:
                raise BenchTimeout(f"{sum(t['status'] == 1 for t in tasks)} tasks still open at the deadline")
            await asyncio.sleep(0.1)


async def measure(
    label: str,
    workers: int,
    api: ServiceProcess,
    urls: Sequence[str],
    meter: CpuMeter,
    db_url: str | None,
    deadline: Deadline,
    nodes: int,
    profile: Profile | None = None,
) -> Result:
    stop_sampling = asyncio.Event()
    waits = Waits()
    sampler = asyncio.create_task(sample_waits(db_url, stop_sampling, waits)) if db_url else None
    meter.start()
    started = time.time()
    try:
        async with asyncio.timeout(deadline.left()):
            taskids, submit_seconds = await submit_all(api.url, urls)
            tasks = await wait_done(api.url, taskids, deadline)
    except TimeoutError:
        raise BenchTimeout(f"{label}: past the deadline") from None
    finally:
        meter.stop()
        if profile is not None:
            profile.stop()
        stop_sampling.set()
        if sampler:
            await sampler
    failed = [t for t in tasks if t["status"] != 0 or t["succeeded"] != t["total"]]
    if failed:
        raise AssertionError(f"{label}: {len(failed)} tasks did not succeed, e.g. {failed[0]}")
    items = sum(int(t["total"]) for t in tasks)  # type: ignore[call-overload]
    if items != len(urls) * nodes:
        raise AssertionError(f"{label}: {items} items, expected {len(urls) * nodes}")
    finished = max(datetime.fromisoformat(str(t["finished_at"])).timestamp() for t in tasks)
    summary = profile.summary() if profile is not None else ""
    return Result(
        label, workers, items, finished - started, submit_seconds, meter.used, meter.machine_busy, waits, summary
    )


def check_edges(lab: Lab, host: str, paths: Sequence[str]) -> None:
    """Each edge logged each path of `host` exactly once (cold cache, no item fetched twice)."""
    time.sleep(0.3)  # nginx writes its log line just after the answer
    for edge in lab.edges:
        seen = Counter(r.uri for r in lab.requests(edge) if r.host == host)
        if seen != Counter(paths):
            extra = sum(seen.values()) - len(paths)
            raise AssertionError(f"{edge.name} for {host}: {len(seen)} distinct paths, {extra:+d} requests")


# -- the run ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(processes: Sequence[ServiceProcess]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


async def run_sqlite(lab: Lab, work: Path, paths: Sequence[str], deadline: Deadline, profile: bool) -> Result:
    host = "run-sqlite.example.test"
    folder = Path(tempfile.mkdtemp(prefix="edgewarm-bench-sqlite-", dir=SHM))
    try:
        port = free_port()
        config = write_config(
            work / "sqlite.toml", store=f"sqlite:///{folder}/edgewarm.db", nodes_toml=lab.nodes_toml(), port=port
        )
        service = ServiceProcess(config, command="serve", port=port, log=work / "sqlite-serve.log")
        with started([service]):
            service.start(timeout=min(60, deadline.left()))
            assert service.proc is not None
            meter = CpuMeter({"edgewarm serve": service.proc.pid}, dict(lab.pids))
            urls = [f"http://{host}{p}" for p in paths]
            spy = Profile(service.proc.pid, work / "sqlite-serve.pyspy") if profile else None
            label = "SQLite, `serve` x1"
            result = await measure(label, 1, service, urls, meter, None, deadline, len(lab.edges), spy)
        check_edges(lab, host, paths)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run_postgres(
    lab: Lab,
    cluster: PostgresCluster,
    work: Path,
    paths: Sequence[str],
    workers: int,
    deadline: Deadline,
    profile: bool,
) -> Result:
    host = f"run-pg{workers}.example.test"
    db_url = await cluster.create_database()
    try:
        port = free_port()
        config = write_config(work / f"pg{workers}.toml", store=db_url, nodes_toml=lab.nodes_toml(), port=port)
        api = ServiceProcess(config, command="api", port=port, log=work / f"pg{workers}-api.log")
        fleet = [
            ServiceProcess(config, command="worker", log=work / f"pg{workers}-worker{i}.log")
            for i in range(1, workers + 1)
        ]
        with started([api, *fleet]):
            api.start(timeout=min(60, deadline.left()))  # creates the schema before the workers open the store
            for worker in fleet:
                worker.start()
            for worker in fleet:
                worker.wait_for_log("edgewarm running", timeout=min(60, deadline.left()))
            processes = {"edgewarm api": api.proc.pid}  # type: ignore[union-attr]
            processes |= {f"edgewarm worker {i}": w.proc.pid for i, w in enumerate(fleet, 1)}  # type: ignore[union-attr]
            assert cluster.pid is not None
            meter = CpuMeter(processes, {"postgres": cluster.pid, **dict(lab.pids)})
            urls = [f"http://{host}{p}" for p in paths]
            label = f"PostgreSQL, `api` x1 + `worker` x{workers}"
            spy = Profile(processes["edgewarm worker 1"], work / f"pg{workers}-worker1.pyspy") if profile else None
            result = await measure(label, workers, api, urls, meter, db_url, deadline, len(lab.edges), spy)
        check_edges(lab, host, paths)
        return result
    finally:
        await cluster.drop_database(db_url.rsplit("/", 1)[1])


def report(results: Sequence[Result]) -> None:
    base = results[0].rate
    print()
    print("| configuration | items | seconds | items/s | vs SQLite x1 | submitting (s) | CPU ms/item |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.label} | {r.items:,} | {r.seconds:.2f} | {r.rate:,.0f} | {r.rate / base:.2f} | "
            f"{r.submit_seconds:.2f} | {r.service_cpu / r.items * 1000:.3f} |"
        )
    print()
    print("CPU ms/item: CPU time of the edgewarm processes and the PostgreSQL server per item (nginx and this")
    print("client left out); it depends much less than items/s on what else the machine runs.")
    print()
    print("CPU during each run, % of one core (the machine has", os.cpu_count(), "cores):")
    print()
    for r in results:
        ours = sum(r.cpu.values()) / r.seconds * 100
        parts = ", ".join(
            f"{name} {seconds / r.seconds * 100:.0f}" for name, seconds in sorted(r.cpu.items(), key=lambda kv: -kv[1])
        )
        print(
            f"- {r.label}: {parts}; these together {ours:.0f}; whole machine busy "
            f"{r.machine_busy * 100:.0f}% of {os.cpu_count()} cores"
        )
    print()
    print("PostgreSQL, sampled every 0.2 s: busy edgewarm backends (mean), what they were doing (share of samples),")
    print("and the statements found waiting on a lock (share of those):")
    print()
    for r in results:
        w = r.waits
        if not w.samples:
            continue
        total = sum(w.doing.values())
        doing = ", ".join(f"{what} {n / max(total, 1) * 100:.0f}%" for what, n in w.doing.most_common(5))
        locked = sum(w.locked.values())
        which = "; ".join(f"`{q}` {n / locked * 100:.0f}%" for q, n in w.locked.most_common(3))
        print(f"- {r.label}: {total / w.samples:.2f} busy; {doing or 'none busy'}")
        if which:
            print(f"  - waiting on locks: {which}")


def report_profiles(results: Sequence[Result]) -> None:
    if not any(r.profile for r in results):
        return
    print()
    print("py-spy (100 Hz, busy threads only) of `serve` and of worker 1; a sample counts for the first match of:")
    print("the loop in C, store, metrics, HTTP, API, the rest of edgewarm, other (asyncio, stdlib):")
    print()
    for r in results:
        print(f"- {r.label}: {r.profile}")


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.strip()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return (
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}; CPU {model}; "
        f"Python {platform.python_version()}; commit {commit or '?'}; load average at start {load}"
    )


async def main_async(args: argparse.Namespace) -> list[Result]:
    deadline = Deadline(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="edgewarm-bench-scale-", dir=SHM))
    results: list[Result] = []
    try:
        with (
            PostgresCluster() as cluster,
            Lab(root / "lab", edges=2, shield=False, cache_root=root / "cache") as lab,
        ):
            paths = lab.make_files(args.urls, args.size)
            work = root / "work"
            work.mkdir()
            print(f"{args.urls:,} URLs x {args.size:,} bytes x {len(lab.edges)} edges (no shield)", flush=True)
            results.append(await run_sqlite(lab, work, paths, deadline, args.profile))
            print(f"  {results[-1].label}: {results[-1].rate:,.0f} items/s", flush=True)
            for workers in args.workers:
                results.append(await run_postgres(lab, cluster, work, paths, workers, deadline, args.profile))
                print(f"  {results[-1].label}: {results[-1].rate:,.0f} items/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--urls", type=int, default=10_000, help="URLs per configuration (default 10,000)")
    parser.add_argument("--size", type=int, default=4096, help="bytes per file (default 4096)")
    parser.add_argument("--workers", default="1,2,4", help="PostgreSQL worker counts, comma-separated (default 1,2,4)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the `serve` process and worker 1 (costs some CPU)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="hard limit for the whole run, seconds")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    print(machine(), flush=True)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    try:
        results = asyncio.run(main_async(args))
    except (BenchTimeout, AssertionError, RuntimeError) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    report(results)
    report_profiles(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
