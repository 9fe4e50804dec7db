"""Diagnostics behind docs/benchmarks.md's "where the time goes": S1's workload with the parts taken apart.

    .venv/bin/python bench/diagnose.py                   # 20,000 x 4 KiB on 2 edges, each part once
    .venv/bin/python bench/diagnose.py --urls 5000 --gc-threshold 100000,50,1000
    .venv/bin/python bench/diagnose.py --urls 200 --size 8388608   # S2's workload
    .venv/bin/python bench/diagnose.py --engine 'fetch_process = true'   # [engine] settings of `serve`

- fetcher: edgewarm's own `Fetcher.request` in a bare loop (64 per node), no store, no engine.
- submit: `edgewarm api` (no engine) accepts the URLs in calls of 100; CPU of the service process.
- engine: `edgewarm serve` started on the store the submit left, so it only warms; CPU of the process and
  of its main thread, and the cyclic GC's collections and time (a `gc.callbacks` hook in the child, which
  runs `edgewarm serve` through this file with `--child`). `--gc-threshold` sets gc.set_threshold there.
  Then each thread of it: its CPU per warm, and (schedstat) the share of the run it spent on a CPU and
  runnable but waiting for one; the threads of its fetch process (`[engine] fetch_process`) named "child ...".

Each part runs on a fresh lab (cold caches) and is checked (all HIT, origin counts; exit status 1 when a URL
is not a HIT). CPU comes from /proc, so the figures mean something on a loaded machine too. Everything is
stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.common import ThreadTimes

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def child(argv: list[str]) -> None:
    """`edgewarm serve` with GC accounting, written as JSON to $EDGEWARM_GC_STATS at exit."""
    stats = {g: {"collections": 0, "seconds": 0.0} for g in (0, 1, 2)}
    started = [0.0]

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            entry = stats[info["generation"]]
            entry["collections"] += 1
            entry["seconds"] += time.perf_counter() - started[0]

    gc.callbacks.append(hook)
    if os.environ.get("EDGEWARM_GC_THRESHOLD"):
        gc.set_threshold(*(int(x) for x in os.environ["EDGEWARM_GC_THRESHOLD"].split(",")))

    def dump() -> None:
        Path(os.environ["EDGEWARM_GC_STATS"]).write_text(json.dumps(stats))

    atexit.register(dump)
    sys.argv = ["edgewarm", *argv]
    from edgewarm.cli import main as edgewarm_main

    edgewarm_main()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per object (S2: 8388608)")
    parser.add_argument("--gc-threshold", default="", help="e.g. 100000,50,1000 (default: Python's)")
    parser.add_argument("--engine", default="", help="[engine] lines for `serve` (\\n for a new line)")
    args = parser.parse_args(argv)

    import uvloop

    from bench.common import (
        Deadline,
        ThreadTimes,
        check_run,
        cpu_seconds,
        fresh_lab,
        start_service,
        stop_pid,
        submit_all,
        url_of,
        wait_healthy,
        wait_tasks,
    )
    from edgewarm.config import Engine as Settings
    from edgewarm.config import Node
    from edgewarm.engine.fetcher import Fetcher
    from edgewarm.testing.service import ServiceProcess, free_port, write_config
    from edgewarm.urls import parse_url

    deadline = Deadline(900, "diagnose")
    warms = args.urls * 2

    # fetcher
    async def fetch_all(nodes: list[Node], paths: list[str]) -> tuple[float, float]:
        async with Fetcher(Settings()) as fetcher:
            targets = [parse_url(url_of(p)) for p in paths]

            async def worker(node: Node, jobs: Any) -> None:
                for target in jobs:
                    result = await fetcher.request("GET", node, target)
                    if result.status != 200:
                        raise RuntimeError(f"{node.name}: {result}")

            wall, cpu = time.perf_counter(), time.process_time()
            workers = []
            for node in nodes:
                jobs = iter(targets)
                workers += [worker(node, jobs) for _ in range(64)]
            await asyncio.gather(*workers)
            return time.perf_counter() - wall, time.process_time() - cpu

    with fresh_lab(edges=2, shield=False) as lab:
        paths = lab.make_files(args.urls, args.size)
        nodes = [Node(name=e.name, url=e.url) for e in lab.edges]
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            wall, cpu = runner.run(fetch_all(nodes, paths))
        print(f"fetcher: {wall:.2f}s, {warms / wall:,.0f} warms/s, CPU {cpu / warms * 1e6:.0f} us/warm")
        checks = [check_run(lab, lab.edges, paths, deadline)]
        print(f"  {checks[-1].text()}")

    # submit, then engine
    with fresh_lab(edges=2, shield=False) as lab:
        paths = lab.make_files(args.urls, args.size)
        folder = Path(tempfile.mkdtemp(prefix="edgewarm-diagnose-"))
        api = start_service(folder, lab.nodes_toml(), command="api")
        try:
            assert api.proc is not None
            before = cpu_seconds(api.proc.pid)
            taskids, t0, t1 = asyncio.run(submit_all(api, [url_of(p) for p in paths]))
            after = cpu_seconds(api.proc.pid)
        finally:
            api.stop()
        cpu = after[0] - before[0]
        print(f"submit: {t1 - t0:.2f}s, {args.urls / (t1 - t0):,.0f} URLs/s, CPU {cpu / args.urls * 1e6:.0f} us/URL")

        port = free_port()
        engine = "[engine]\n" + args.engine.replace("\\n", "\n") if args.engine else ""
        config = write_config(
            folder / "serve.toml",
            store=f"sqlite:///{folder}/edgewarm.db",
            nodes_toml=lab.nodes_toml(),
            port=port,
            extra=engine,
        )
        env = dict(os.environ, EDGEWARM_GC_STATS=str(folder / "gc.json"), EDGEWARM_GC_THRESHOLD=args.gc_threshold)
        argv_child = [sys.executable, str(Path(__file__).resolve()), "--child", "serve", "--config", str(config)]
        log = (folder / "serve.log").open("wb")
        proc = subprocess.Popen(argv_child, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, 30)
            before = cpu_seconds(proc.pid)
            threads_before = tree_thread_times(proc.pid)
            started = time.time()
            service = ServiceProcess(config, port=port)  # only its url is used
            views = asyncio.run(wait_tasks(service, taskids, deadline))
            after = cpu_seconds(proc.pid)
            threads = {n: t - threads_before.get(n, ThreadTimes()) for n, t in tree_thread_times(proc.pid).items()}
        finally:
            stop_pid(proc, 30)
            log.close()
        finished = max(_epoch(v["finished_at"]) for v in views)
        cpu, main_cpu = after[0] - before[0], after[1] - before[1]
        gc_stats = json.loads((folder / "gc.json").read_text())
        gc_seconds = sum(g["seconds"] for g in gc_stats.values())
        print(
            f"engine: {finished - started:.2f}s after healthy, {warms / (finished - started):,.0f} warms/s, "
            f"CPU {cpu / warms * 1e6:.0f} us/warm (main thread {main_cpu / warms * 1e6:.0f}); "
            f"GC {gc_seconds:.2f}s in {[g['collections'] for g in gc_stats.values()]} collections (gen 0/1/2), "
            f"threshold {args.gc_threshold or 'default'}"
        )
        took = finished - started
        for name, t in sorted(threads.items(), key=lambda item: -item[1].running):
            if t.running > 0.01:
                cpu_us, system_us = (t.user + t.system) / warms * 1e6, t.system / warms * 1e6
                print(
                    f"  thread {name}: CPU {cpu_us:.0f} us/warm ({system_us:.0f} system); on a CPU "
                    f"{t.running / took:.0%} of the time, runnable but waiting for one {t.waiting / took:.0%}"
                )
        checks.append(check_run(lab, lab.edges, paths, deadline))
        print(f"  {checks[-1].text()}")
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if all(c.all_hit for c in checks) else 1


def tree_thread_times(pid: int) -> dict[str, ThreadTimes]:
    """`thread_times` of `pid`, and of its descendants (the fetch process) named "child NAME"."""
    from bench.common import process_tree, thread_times

    times = thread_times(pid)
    for member in process_tree(pid)[1:]:
        times |= {f"child {name}": t for name, t in thread_times(member).items()}
    return times


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        sys.exit(main())
