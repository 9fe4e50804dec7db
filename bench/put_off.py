"""What putting off a node's waiting items costs the SQLite store: `put_off_node` on a backlog, in one step and in
the store's steps.

    .venv/bin/python bench/put_off.py                    # 100,000 URLs x 2 nodes (one of them "dead")
    .venv/bin/python bench/put_off.py --urls 20000 --step 1000

Fills a SQLite store in /dev/shm through `create_task`, then puts off every due item of the node "dead" to a
later time, as the engine does when a new cooldown holds a node down (engine/scheduler.py, `_put_off`):
once with the whole backlog in one step, once in steps of `--step` items (the store's `PUT_OFF_STEP`: other
store calls are answered between steps). Prints the seconds and the µs per item of each, and the longest
step (how long other store calls may wait behind one), timed in the store's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgewarm.store.sqlite
from bench.common import fill_tasks
from edgewarm.store import open_store
from edgewarm.store.sqlite import PUT_OFF_STEP, SQLiteStore

T = TypeVar("T")


async def measure(urls: int, step: int) -> None:
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="edgewarm-put-off-")
    try:
        async with open_store(f"sqlite:///{folder}/edgewarm.db") as store:
            assert isinstance(store, SQLiteStore)
            await fill_tasks(store, urls, ("dead", "live"))
            steps: list[float] = []
            run = store._run

            async def timed(fn: Callable[[], T], *, check: bool = True) -> T:  # each step, timed in its thread
                def step_timed() -> T:
                    started = time.thread_time()
                    try:
                        return fn()
                    finally:
                        steps.append(time.thread_time() - started)

                return await run(step_timed, check=check)

            store._run = timed  # type: ignore[method-assign]
            until = time.time() + 3600
            for label, size in (("one step", urls * 2), (f"steps of {step}", step)):
                edgewarm.store.sqlite.PUT_OFF_STEP = size
                until += 60  # later than the last put-off: every item of the node again
                steps.clear()
                started = time.perf_counter()
                total = await store.put_off_node("dead", until, "waits for dead")
                took, cpu = time.perf_counter() - started, sum(steps)
                print(
                    f"{label:>16}: {total:,} items in {len(steps)} steps, {took:.3f} s, "
                    f"{cpu / max(1, total) * 1e6:.1f} µs of the store's thread per item, "
                    f"longest step {max(steps) * 1000:.0f} ms"
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=PUT_OFF_STEP)
    args = parser.parse_args()
    asyncio.run(measure(args.urls, args.step))


if __name__ == "__main__":
    main()
