"""What edgewarm's Fetcher costs over the bare loop's own code, in one process, in turns: its CPU per request.

    .venv/bin/python bench/fetcher_overhead.py                              # 10,000 x 4 KiB on 2 edges, 8 rounds
    .venv/bin/python bench/fetcher_overhead.py --urls 100 --size 8388608    # S2's objects

The caches are filled first, so every request is a HIT and nginx's part is small and steady. Then each round
runs, in a rotating order, 64 requests in flight per node through:
- `bare`: the bare loop's code (bench/bare_loop.py's request and body loop) inline;
- `direct`: the Fetcher's pyreqwest path (`Fetcher._with_pyreqwest`): reading the head for the cache state,
  checking the body's length, the `FetchResult`;
- `request`: `Fetcher._request` (the headers sent, the choice of client and route);
- `fetcher`: `Fetcher.request`, what the engine calls (node health, the sent count, the node's cache states).
Prints requests/s and CPU µs per request (`time.process_time`: every thread of this process, pyreqwest's too)
of each, and each one's median. Everything is stopped by PID (the Lab).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from bench.common import fresh_lab, url_of
from edgewarm.config import Engine as Settings
from edgewarm.config import Node
from edgewarm.engine.fetcher import Fetcher, pyreqwest_client
from edgewarm.urls import TargetUrl, parse_url

PER_NODE = 64


async def _through(
    nodes: list[Node], targets: list[TargetUrl], one: Callable[[Node, TargetUrl], Awaitable[None]]
) -> None:
    """`one` for every target on every node, PER_NODE at a time per node."""

    async def worker(node: Node, jobs: Iterator[TargetUrl]) -> None:
        for target in jobs:
            await one(node, target)

    jobs = {node.name: iter(targets) for node in nodes}
    await asyncio.gather(*(worker(node, jobs[node.name]) for node in nodes for _ in range(PER_NODE)))


async def measure(nodes: list[Node], targets: list[TargetUrl], rounds: int) -> dict[str, list[tuple[float, float]]]:
    client = pyreqwest_client(Settings())
    headers = {"Host": targets[0].authority, "User-Agent": "bare/1", "Accept-Encoding": Settings().accept_encoding}
    async with client, Fetcher(Settings()) as fetcher:

        async def bare(node: Node, target: TargetUrl) -> None:  # bench/bare_loop.py's worker, one request
            request = client.get(node.url + target.path_query).headers(headers).streamed_read_buffer_limit(0)
            async with request.build_streamed() as r:
                got = 0
                reader = r.body_reader
                while (chunk := await reader.read_chunk()) is not None:
                    got += len(chunk)
                length = r.headers.get("Content-Length")
                if r.status != 200 or (length is not None and got != int(length)):
                    raise RuntimeError(f"{node.name}: {r.status}, {got} of {length} bytes")

        async def direct(node: Node, target: TargetUrl) -> None:
            assert fetcher._client is not None
            result = await fetcher._with_pyreqwest(fetcher._client, "GET", node.url + target.path_query, node, headers)
            _ok(node, result)

        async def request(node: Node, target: TargetUrl) -> None:
            _ok(node, await fetcher._request("GET", node, target, None))

        async def whole(node: Node, target: TargetUrl) -> None:
            _ok(node, await fetcher.request("GET", node, target))

        ways: dict[str, Callable[[Node, TargetUrl], Awaitable[None]]] = {
            "bare": bare,
            "direct": direct,
            "request": request,
            "fetcher": whole,
        }
        await _through(nodes, targets, bare)  # the caches filled: every request after this is a HIT
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        names = list(ways)
        for round_no in range(rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = time.perf_counter(), time.process_time()
                await _through(nodes, targets, ways[name])
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                count = len(nodes) * len(targets)
                figures[name].append((count / wall, cpu / count * 1e6))
        return figures


def _ok(node: Node, result: object) -> None:
    if getattr(result, "status", None) != 200 or getattr(result, "error", None) is not None:
        raise RuntimeError(f"{node.name}: {result}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per object")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    with fresh_lab(edges=2, shield=False) as lab:
        nodes = [Node(name=edge.name, url=edge.url) for edge in lab.edges]
        targets = [parse_url(url_of(path)) for path in lab.make_files(args.urls, args.size, prefix="/f/")]
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            figures = runner.run(measure(nodes, targets, args.rounds))
    print(f"{args.urls} x {args.size} bytes on {len(nodes)} edges, all HIT, {args.rounds} rounds in turns")
    for name, rows in figures.items():
        cells = "  ".join(f"{rate:7,.0f}/s {cpu:7.1f}us" for rate, cpu in rows)
        print(f"{name:8} {cells}  median {statistics.median(cpu for _, cpu in rows):.1f} us/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
