"""A refresh on PostgreSQL with several workers, in turns between source folders (two commits, say).

    .venv/bin/python bench/pg_refresh.py --rounds 5 --src before=/tmp/old/src --src after=src

Each round and source: a fresh database on one throwaway PostgreSQL (`edgewarm.testing.postgres`), a fresh
lab (1 nginx shield + 2 edges with the cache-purge module, RAM disk), one `edgewarm api` and `--workers`
`edgewarm worker` processes started from that source (PYTHONPATH); `--urls` URLs are prefetched, then
refreshed through `/api/refresh` in calls of 100, timed from the first refresh call to the last task's end.
Prints the seconds and purges/s of each run, then the medians. Every task must end with status 0.

Loopback only; every process is stopped by PID; bounded by `--timeout` per wait.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHM, fresh_lab, in_turns, sources_parser, url_of, use_source
from edgewarm.client import AsyncClient
from edgewarm.testing.postgres import PostgresCluster
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

PER_CALL = 100


async def wait_ended(client: AsyncClient, taskids: list[str], timeout: float) -> list[int]:
    """The statuses of `taskids` once every one has ended (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = (await client.lookup(taskids))["tasks"]
        if all(t["status"] != 1 for t in tasks):
            return [int(t["status"]) for t in tasks]
        assert time.monotonic() < deadline, f"tasks still running after {timeout} s"
        await asyncio.sleep(0.05)


async def one_run(db: str, folder: Path, urls: int, workers: int, timeout: float) -> float:
    """Seconds from the first refresh call to the last task's end."""
    with fresh_lab(edges=2, shield=True, purge_module=True) as lab, ExitStack() as stack:
        port = free_port()
        config = write_config(folder / "edgewarm.toml", store=db, nodes_toml=lab.nodes_toml(), port=port)
        api = stack.enter_context(ServiceProcess(config, command="api", port=port, log=folder / "api.log"))
        for i in range(workers):
            worker = stack.enter_context(ServiceProcess(config, command="worker", log=folder / f"worker{i}.log"))
            worker.wait_for_log("edgewarm running", timeout=60)
        paths = lab.make_files(urls, 256)
        async with AsyncClient(api.url, DEMO_USER, DEMO_SECRET, timeout=60) as client:
            calls = [[url_of(p) for p in paths[i : i + PER_CALL]] for i in range(0, urls, PER_CALL)]
            warmed = [await client.prefetch(call) for call in calls]
            assert set(await wait_ended(client, warmed, timeout)) == {0}, "a prefetch failed"
            started = time.monotonic()
            refreshed = [await client.refresh(call) for call in calls]
            statuses = await wait_ended(client, refreshed, timeout)
            took = time.monotonic() - started
        assert set(statuses) == {0}, f"refreshes ended with statuses {sorted(set(statuses))}"
    return took


async def main(args: argparse.Namespace) -> int:
    sources: dict[str, str] = dict(args.src)
    names = list(sources)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    nodes = 3  # the shield and 2 edges
    with PostgresCluster() as cluster:
        for round_no in range(args.rounds):
            for name in in_turns(names, round_no):
                use_source(sources[name])
                db = await cluster.create_database()
                with tempfile.TemporaryDirectory(prefix="edgewarm-bench-refresh-", dir=SHM) as folder:
                    took = await one_run(db, Path(folder), args.urls, args.workers, args.timeout)
                await cluster.drop_database(db.rsplit("/", 1)[1])
                seconds[name].append(took)
                rate = args.urls * nodes / took
                print(f"round {round_no + 1} {name}: {took:.2f} s, {rate:,.0f} purges/s", flush=True)
    use_source(None)
    for name in names:
        median = statistics.median(seconds[name])
        spread = f"{min(seconds[name]):.2f}-{max(seconds[name]):.2f}"
        print(f"{name}: median {median:.2f} s ({spread}), {args.urls * nodes / median:,.0f} purges/s")
    return 0


if __name__ == "__main__":
    parser = sources_parser(__doc__)
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    sys.exit(asyncio.run(main(parser.parse_args())))
