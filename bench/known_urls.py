"""What finding the URLs known under a directory costs the SQLite store (a directory refresh on a node without a
prefix purge: engine/actions.py, `_purge_dir`), by the index items_url against the full read it replaced.

    .venv/bin/python bench/known_urls.py                  # 100,000 URLs x 3 nodes in the store
    .venv/bin/python bench/known_urls.py --urls 500000

Fills a SQLite store in /dev/shm through `create_task`, then asks for the URLs under a directory in each of its
spellings (urls.spellings: 8 for a directory of an http URL), as a directory purge does on each node: once with
the store's `known_urls` (a range of the index), once with the query it replaced (`substr(lower(url), …) = …`,
every item read), for a directory holding 100 of the URLs and for one holding none. Prints the milliseconds
of each, per node (the median of --repeat), and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fill_tasks
from edgewarm.engine.actions import KNOWN_URLS_LIMIT as LIMIT
from edgewarm.store import open_store
from edgewarm.store.sqlite import SQLiteStore
from edgewarm.urls import parse_url, spellings

FULL_READ = "SELECT DISTINCT url FROM items WHERE substr(lower(url), 1, ?) = ? LIMIT ?"  # before schema version 4


async def measure(urls: int, repeat: int) -> None:
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="edgewarm-known-urls-")
    try:
        async with open_store(f"sqlite:///{folder}/edgewarm.db") as store:
            assert isinstance(store, SQLiteStore)
            await fill_tasks(store, urls, ("e1", "e2", "e3"))
            for directory in ("http://example.test/f/7/", "http://example.test/nothing/"):
                prefixes = spellings(parse_url(directory))

                async def indexed(prefixes: list[str] = prefixes) -> int:
                    return sum([len(await store.known_urls(p, LIMIT)) for p in prefixes])

                async def full_read(prefixes: list[str] = prefixes) -> int:
                    def read() -> int:
                        db = store.db
                        return sum(len(db.execute(FULL_READ, (len(p), p.lower(), LIMIT)).fetchall()) for p in prefixes)

                    return await store._run(read)

                times: dict[str, list[float]] = {"index": [], "full read": []}
                found: dict[str, int] = {}
                for _ in range(repeat):
                    for name, ask in (("index", indexed), ("full read", full_read)):
                        started = time.perf_counter()
                        found[name] = await ask()
                        times[name].append(time.perf_counter() - started)
                assert found["index"] == found["full read"], found
                index, full = (statistics.median(times[n]) * 1000 for n in ("index", "full read"))
                print(
                    f"{directory:32} {found['index']:>4} URLs in {len(prefixes)} spellings: index {index:8.2f} ms, "
                    f"full read {full:8.2f} ms per node; ratio {full / index:,.0f}"
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{args.urls:,} URLs x 3 nodes in the store")
    asyncio.run(measure(args.urls, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
