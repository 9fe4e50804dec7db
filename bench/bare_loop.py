"""The Python ceiling for warming: a bare asyncio loop with pyreqwest, the same GETs as edgewarm, no bookkeeping.

Run by `bench/common.py:bare_loop` in its own process (as edgewarm runs in its own). Reads a JSON spec
(nodes, paths, host, per_node, total, uvloop), GETs every path through every node with at most `per_node`
requests in flight per node and `total` overall (edgewarm's defaults, passed by bench/common.py), streams
each body to the end and discards it, and prints one JSON line: seconds (first request to last body), cpu
(process CPU seconds meanwhile), requests, bytes, failures.
No store, no retries, no per-item records: what is left is the HTTP client and the event loop. The client is
the one edgewarm sends nearly all warms with (pyreqwest, built by `edgewarm.engine.fetcher.pyreqwest_client`
and read as the Fetcher reads: no body read ahead, raw chunks); edgewarm's other client (aiohttp) only sends
URLs pyreqwest would rewrite. edgewarm is imported before the clock starts (bench runs put a snapshot's
source first on PYTHONPATH, which this process inherits).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from edgewarm.config import Engine
from edgewarm.engine.fetcher import pyreqwest_client


async def warm(spec: dict[str, Any]) -> dict[str, Any]:
    nodes: list[str] = spec["nodes"]
    paths: list[str] = spec["paths"]
    headers = {"Host": spec["host"], "User-Agent": "bare/1", "Accept-Encoding": Engine().accept_encoding}
    per_node = min(spec["per_node"], max(1, spec["total"] // len(nodes)))
    totals = {"requests": 0, "bytes": 0, "failures": 0}
    client = pyreqwest_client(Engine(concurrency=spec["total"]))
    async with client:

        async def worker(node: str, jobs: Any) -> None:
            for path in jobs:
                request = client.get(node + path).headers(headers).streamed_read_buffer_limit(0)
                async with request.build_streamed() as r:
                    got = 0
                    reader = r.body_reader
                    while (chunk := await reader.read_chunk()) is not None:
                        got += len(chunk)
                    length = r.headers.get("Content-Length")
                    totals["requests"] += 1
                    totals["bytes"] += got
                    totals["failures"] += r.status != 200 or (length is not None and got != int(length))

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
