"""The engine's own CPU per item, without HTTP: Engine + SQLite store with a fetcher that answers at once.

    .venv/bin/python bench/engine_overhead.py                 # 20,000 URLs x 2 nodes, answers at once
    .venv/bin/python bench/engine_overhead.py --latency 0.01  # each answer after 10 ms: pipeline efficiency

Tasks of 100 URLs are written to a SQLite store in /dev/shm first; then the engine (uvloop, the service's GC
settings) claims, "fetches", judges and records every item. Prints items/s and CPU per item for the process
and for its event-loop thread (the rest is the store's thread). With --latency, compare items/s with the
ceiling: in-flight slots / latency.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fill_tasks
from edgewarm.config import Config, Node, parse_config
from edgewarm.engine import Engine, FetchResult
from edgewarm.nodes import CacheState
from edgewarm.store import open_store
from edgewarm.tuning import tune_runtime
from edgewarm.urls import TargetUrl


class InstantFetcher:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.health = None

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        await asyncio.sleep(self.latency)
        return FetchResult(200, 4096, CacheState.MISS)


async def measure(urls: int, latency: float) -> None:
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="edgewarm-overhead-")
    config = parse_config(
        {
            "store": f"sqlite:///{folder}/edgewarm.db",
            "nodes": [{"name": "e1", "url": "http://127.0.0.1:1"}, {"name": "e2", "url": "http://127.0.0.1:2"}],
            "users": [{"name": "u", "secret": "s" * 16, "domains": ["example.test"]}],
        }
    )
    try:
        await _run(config, urls, latency)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _run(config: Config, urls: int, latency: float) -> None:
    async with open_store(config.store) as store:
        await fill_tasks(store, urls)
        engine = Engine(config, store, InstantFetcher(latency))
        total = urls * 2
        wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
        runner = asyncio.create_task(engine.run())
        for _ in range(100_000):  # bounded: 1,000 s
            if engine.fetched >= total and not await store.queue_depth():
                break
            await asyncio.sleep(0.01)
        wall, cpu, main = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - main
        engine.stop()
        await runner
    print(
        f"{total:,} items: {total / wall:,.0f} items/s; CPU {cpu / total * 1e6:.1f} us/item "
        f"(event-loop thread {main / total * 1e6:.1f})"
        + (f"; ceiling {config.engine.per_node_concurrency * 2 / latency:,.0f} items/s" if latency else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each answer takes")
    args = parser.parse_args(argv)
    tune_runtime()
    asyncio.run(measure(args.urls, args.latency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
