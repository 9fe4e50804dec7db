"""Warming scenarios S1-S4: edgewarm against a real nginx fleet, beside its baselines in the same run.

S1 small objects and S2 large objects (2 edges, no shield): edgewarm, the bare loop, `xargs -P 64 curl`
and wrk, each round on a fresh lab (cold caches), the contenders in a rotating order.
S3 shield (1 shield + 4 edges): edgewarm only; the origin must see each URL exactly once.
S4 latency (100 URLs on shield + 2 edges): submit → `client.wait` returns, several tasks per round.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewarm.testing import Lab, LabNode
from edgewarm.testing.service import ServiceProcess

from .common import (
    BenchTimeout,
    Checked,
    Deadline,
    LoadResult,
    Profiler,
    RssSampler,
    Series,
    bare_loop,
    check_run,
    client,
    cpu_seconds,
    epoch_of,
    fresh_lab,
    in_turns,
    ratio,
    start_service,
    submit_all,
    url_of,
    wait_tasks,
    wrk_walk,
    xargs_curl,
)


@dataclass
class Options:
    rounds: int
    quick: bool
    workdir: Path  # on disk: edgewarm's SQLite files
    profile_dir: Path | None = None
    curl_per_call: int = 100
    log: Any = print


@dataclass
class Contender:
    name: str
    warms: Series = field(default_factory=Series)  # items (URL x node) per second
    mbps: Series = field(default_factory=Series)
    seconds: Series = field(default_factory=Series)
    rss_peak: Series = field(default_factory=Series)
    rss_start: Series = field(default_factory=Series)
    cpu_us_per_warm: Series = field(default_factory=Series)
    checks: list[Checked] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def all_checks_pass(self) -> bool:
        return bool(self.checks) and all(c.all_hit for c in self.checks)


# S1's and S2's second edgewarm: the same, its HTTP requests made by a child process (a second core).
FETCH_PROCESS = "edgewarm, fetch process"
FETCH_PROCESS_ENGINE = "[engine]\nfetch_process = true"


@dataclass
class EdgewarmRun:
    seconds: float
    submit_seconds: float
    rss_start_mb: float
    rss_peak_mb: float
    failed_tasks: int
    durations: list[float]
    rss_quarters_mb: list[float]
    cpu_seconds: float  # the edgewarm process, first call to the end
    cpu_main_seconds: float  # its main thread (event loop: API + engine); the rest is the SQLite thread


def run_edgewarm(
    lab: Lab,
    nodes_toml: str,
    urls: Sequence[str],
    folder: Path,
    deadline: Deadline,
    *,
    profile: Path | None = None,
    engine: str = "",
) -> EdgewarmRun:
    """Start `edgewarm serve` (`engine`: its config's extra lines; none: the defaults, concurrency 256,
    per_node_concurrency 64, SQLite synchronous=FULL), submit every URL in calls of 100, wait for all tasks; stop
    it by PID."""
    service = start_service(folder, nodes_toml, extra=engine)
    profiler: Profiler | None = None
    try:
        assert service.proc is not None
        with RssSampler(service.proc.pid) as rss:
            if profile is not None:
                profiler = Profiler(service.proc.pid, profile)

            cpu_before = cpu_seconds(service.proc.pid)

            async def go() -> tuple[list[str], float, float, list[dict[str, Any]]]:
                async with asyncio.timeout(deadline.left()):
                    taskids, started, submitted = await submit_all(service, urls)
                    views = await wait_tasks(service, taskids, deadline)
                    return taskids, started, submitted, views

            try:
                _ids, started, submitted, views = asyncio.run(go())
            except TimeoutError:
                raise BenchTimeout(f"{deadline.name}: edgewarm did not finish in time") from None
            cpu_after = cpu_seconds(service.proc.pid)
            if profiler is not None:
                profiler.stop()
        finished = max(epoch_of(v["finished_at"]) for v in views)
        failed = sum(v["status"] != 0 for v in views)
        durations = [float(v["duration_seconds"]) for v in views]
        return EdgewarmRun(
            finished - started,
            submitted - started,
            rss.first_mb,
            rss.peak_mb,
            failed,
            durations,
            rss.quarters_mb(),
            cpu_after[0] - cpu_before[0],
            cpu_after[1] - cpu_before[1],
        )
    finally:
        if profiler is not None:
            profiler.stop()
        service.stop()


def compare(
    name: str, count: int, size: int, opts: Options, deadline: Deadline, *, edges: int = 2, wrk: bool = True
) -> dict[str, Contender]:
    """S1/S2: every contender warms `count` files of `size` bytes through `edges` edges, each round cold."""
    names = ["edgewarm", FETCH_PROCESS, "bare loop", "xargs -P 64 curl"] + (["wrk"] if wrk else [])
    contenders = {n: Contender(n) for n in names}
    order = list(contenders)
    for round_no in range(opts.rounds):
        for who in in_turns(order, round_no):
            deadline.check()
            c = contenders[who]
            with fresh_lab(edges=edges, shield=False) as lab:
                paths = lab.make_files(count, size, prefix="/f/")
                nodes: list[LabNode] = list(lab.edges)
                folder = Path(tempfile.mkdtemp(prefix=f"{name}-{round_no}-", dir=opts.workdir))
                items = count * len(nodes)
                body = items * size
                if who in ("edgewarm", FETCH_PROCESS):
                    profile = None
                    if opts.profile_dir is not None and round_no == 0 and who == "edgewarm":
                        profile = opts.profile_dir / f"{name}-edgewarm.raw"
                    engine = FETCH_PROCESS_ENGINE if who == FETCH_PROCESS else ""
                    urls = [url_of(p) for p in paths]
                    run = run_edgewarm(lab, lab.nodes_toml(), urls, folder, deadline, profile=profile, engine=engine)
                    result = LoadResult(run.seconds, items, body, run.failed_tasks, run.rss_peak_mb, run.cpu_seconds)
                    c.notes.append(f"main thread {run.cpu_main_seconds:.2f} of {run.cpu_seconds:.2f} CPU s")
                    c.rss_start.add(run.rss_start_mb)
                    quarters = "/".join(f"{q:.0f}" for q in run.rss_quarters_mb)
                    c.notes.append(f"submit {run.submit_seconds:.2f}s; RSS MB by quarter {quarters}")
                elif who == "bare loop":
                    result = bare_loop(nodes, paths, folder, deadline)
                elif who == "xargs -P 64 curl":
                    result = xargs_curl(nodes, paths, folder, deadline, per_call=opts.curl_per_call)
                    result.body_bytes = body
                else:
                    result = wrk_walk(nodes, paths, folder, deadline)
                    result.body_bytes = body
                checked = check_run(lab, nodes, paths, deadline)
                shutil.rmtree(folder, ignore_errors=True)
            c.checks.append(checked)
            c.warms.add(result.rps)
            c.mbps.add(result.mbps)
            c.seconds.add(result.seconds)
            if result.rss_peak_mb:
                c.rss_peak.add(result.rss_peak_mb)
            if result.cpu_seconds == result.cpu_seconds:  # not nan
                c.cpu_us_per_warm.add(result.cpu_seconds / items * 1e6)
            if result.failures:
                c.notes.append(f"round {round_no + 1}: {result.failures} failures")
            opts.log(
                f"  {name} round {round_no + 1} {who:18} {result.seconds:7.2f}s {result.rps:9.0f} warms/s "
                f"{result.mbps:8.1f} MB/s  rss {result.rss_peak_mb:6.0f} MB  cpu {result.cpu_seconds:6.2f}s  "
                f"{checked.text()}"
            )
    return contenders


def scenario_s1(opts: Options, deadline: Deadline) -> dict[str, Any]:
    count = 300 if opts.quick else 20_000
    contenders = compare("S1", count, 4096, opts, deadline)
    return _compare_report("S1", count, 4096, contenders, target=0.8)


def scenario_s2(opts: Options, deadline: Deadline) -> dict[str, Any]:
    count, size = (20, 1 << 20) if opts.quick else (200, 8 << 20)
    # No wrk here: its Lua response hook (needed to know when the list is done) copies every body into Lua.
    contenders = compare("S2", count, size, opts, deadline, wrk=False)
    return _compare_report("S2", count, size, contenders, target=0.9)


def _compare_report(
    name: str, count: int, size: int, contenders: dict[str, Contender], target: float
) -> dict[str, Any]:
    ew = contenders["edgewarm"]
    bare = contenders["bare loop"]
    rows = []
    for c in contenders.values():
        rows.append(
            {
                "contender": c.name,
                "seconds": c.seconds.values,
                "warms_per_s": c.warms.values,
                "mb_per_s": c.mbps.values,
                "rss_peak_mb": c.rss_peak.values,
                "rss_start_mb": c.rss_start.values,
                "cpu_us_per_warm": c.cpu_us_per_warm.values,
                "edgewarm_ratio": ratio(ew.warms.median, c.warms.median),
                "checks": [ch.text() for ch in c.checks],
                "all_hit": c.all_checks_pass,
                "notes": c.notes,
            }
        )
    vs_bare = ratio(ew.warms.median, bare.warms.median)
    child = contenders[FETCH_PROCESS]
    return {
        "scenario": name,
        "workload": f"{count} URLs x {size} bytes on 2 edges (no shield), cold",
        "rows": rows,
        "edgewarm_vs_bare": vs_bare,
        "fetch_process_vs_bare": ratio(child.warms.median, bare.warms.median),
        "target": target,
        "met": vs_bare >= target,
        "checks_pass": all(c.all_checks_pass for c in contenders.values()),
    }


def scenario_s3(opts: Options, deadline: Deadline) -> dict[str, Any]:
    """1 shield + 4 edges: every URL a HIT on all 5 nodes, the origin asked exactly once per URL."""
    count = 200 if opts.quick else 2_000
    seconds, warms = Series(), Series()
    checks: list[Checked] = []
    for round_no in range(opts.rounds):
        with fresh_lab(edges=4, shield=True) as lab:
            paths = lab.make_files(count, 4096, prefix="/s3/")
            folder = Path(tempfile.mkdtemp(prefix=f"S3-{round_no}-", dir=opts.workdir))
            run = run_edgewarm(lab, lab.nodes_toml(), [url_of(p) for p in paths], folder, deadline)
            checked = check_run(lab, lab.cache_nodes(), paths, deadline)
            shutil.rmtree(folder, ignore_errors=True)
        items = count * 5
        seconds.add(run.seconds)
        warms.add(items / run.seconds)
        checks.append(checked)
        opts.log(f"  S3 round {round_no + 1}: {run.seconds:.2f}s {items / run.seconds:.0f} warms/s {checked.text()}")
    exact = all(c.origin_min == 1 and c.origin_max == 1 for c in checks)
    return {
        "scenario": "S3",
        "workload": f"{count} URLs x 4096 bytes on 1 shield + 4 edges, cold",
        "seconds": seconds.values,
        "warms_per_s": warms.values,
        "checks": [c.text() for c in checks],
        "origin_per_url": [c.origin_per_url for c in checks],
        "met": exact and all(c.all_hit for c in checks),
        "checks_pass": exact and all(c.all_hit for c in checks),
    }


def scenario_s4(opts: Options, deadline: Deadline) -> dict[str, Any]:
    """100 URLs on shield + 2 edges: from the submit call to `client.wait` returning status 0."""
    per_round = 2 if opts.quick else 5
    client_side, server_side = Series(), Series()
    checks: list[Checked] = []
    statuses: list[int] = []
    for round_no in range(opts.rounds):
        with fresh_lab(edges=2, shield=True) as lab:
            folder = Path(tempfile.mkdtemp(prefix=f"S4-{round_no}-", dir=opts.workdir))
            service = start_service(folder, lab.nodes_toml())
            try:
                all_paths: list[str] = []
                for k in range(per_round):
                    paths = lab.make_files(100, 4096, prefix=f"/s4-{k}/")  # new URLs: cold on every node
                    all_paths += paths
                    view, took = asyncio.run(_submit_and_wait(service, [url_of(p) for p in paths], deadline))
                    statuses.append(int(view["status"]))
                    client_side.add(took)
                    server_side.add(float(view["duration_seconds"]))
            finally:
                service.stop()
            checked = check_run(lab, lab.cache_nodes(), all_paths, deadline)
            shutil.rmtree(folder, ignore_errors=True)
        checks.append(checked)
        opts.log(f"  S4 round {round_no + 1}: {client_side.values[-per_round:]} s; {checked.text()}")
    ok = all(c.all_hit and c.origin_max == 1 for c in checks) and all(s == 0 for s in statuses)
    return {
        "scenario": "S4",
        "workload": f"100 URLs x 4096 bytes on 1 shield + 2 edges, {per_round} tasks per round, cold",
        "client_seconds": client_side.values,
        "server_seconds": server_side.values,
        "median_client": client_side.median,
        "median_server": server_side.median,
        "checks": [c.text() for c in checks],
        "target": 2.0,
        "met": client_side.median <= 2.0,
        "checks_pass": ok,
    }


async def _submit_and_wait(
    service: ServiceProcess, urls: list[str], deadline: Deadline
) -> tuple[dict[str, Any], float]:
    async with asyncio.timeout(deadline.left()), client(service) as c:
        started = time.perf_counter()
        taskid = await c.prefetch(urls)
        view = await c.wait(taskid, timeout=deadline.left())
        return view, time.perf_counter() - started
