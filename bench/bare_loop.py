"""The Python ceiling for warming: a bare asyncio loop with aiohttp, the same GETs as edgewarm, no bookkeeping.

Run by `bench/common.py:bare_loop` in its own process (as edgewarm runs in its own). Reads a JSON spec
(nodes, paths, host, per_node, total, uvloop), GETs every path through every node with at most `per_node`
requests in flight per node and `total` overall (edgewarm's defaults, passed by bench/common.py), streams
each body to the end and discards it, and prints one JSON line: seconds (first request to last body), cpu
(process CPU seconds meanwhile), requests, bytes, failures.
No store, no retries, no per-item records: what is left is aiohttp and the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
from yarl import URL

CHUNK = 1 << 16


async def warm(spec: dict[str, Any]) -> dict[str, Any]:
    nodes: list[str] = spec["nodes"]
    paths: list[str] = spec["paths"]
    headers = {"Host": spec["host"], "User-Agent": "bare/1", "Accept-Encoding": "gzip, deflate, br"}
    per_node = min(spec["per_node"], max(1, spec["total"] // len(nodes)))
    totals = {"requests": 0, "bytes": 0, "failures": 0}
    connector = aiohttp.TCPConnector(limit=spec["total"], limit_per_host=0)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
    )
    async with session:

        async def worker(node: str, jobs: Any) -> None:
            for path in jobs:
                async with session.get(URL(node + path, encoded=True), headers=headers, allow_redirects=False) as r:
                    got = 0
                    while chunk := await r.content.read(CHUNK):
                        got += len(chunk)
                    totals["requests"] += 1
                    totals["bytes"] += got
                    totals["failures"] += r.status != 200 or (r.content_length is not None and got != r.content_length)

        started = time.perf_counter()
        cpu = time.process_time()
        workers = []
        for node in nodes:
            jobs = iter(paths)  # shared by this node's workers
            workers += [worker(node, jobs) for _ in range(per_node)]
        await asyncio.gather(*workers)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, **totals}


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("uvloop"):
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(warm(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
