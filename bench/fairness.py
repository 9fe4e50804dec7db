"""What a second user waits behind a first user's large task, in turns between source folders (two commits, say).

    .venv/bin/python bench/fairness.py --rounds 3 --src before=/tmp/old/src --src after=src
    .venv/bin/python bench/fairness.py --small 1000 --refresh --src before=/tmp/old/src --src after=src
    .venv/bin/python bench/fairness.py --urls 3000 --slow 0.2 --src before=/tmp/old/src --src after=src

Each round and source: a fresh lab (2 nginx edges, RAM disk) and `edgewarm serve` on SQLite started from that
source (PYTHONPATH); the first user submits `--urls` URLs (calls of 100 from 4 clients) and, once they are all
accepted, a second user submits one task of `--small` URLs (with `--refresh`: `"refresh": true`, each URL
purged then warmed, on a shield and 2 edges with the cache-purge module; with `--slow S`, one more node that
answers every request after S seconds, a `FaultServer`). Timed from the store's own clock (the tasks'
`created_at` and `finished_at`): the second user's task from its submission to its end, and the first user's
URLs from the first call to the last task's end. Every task must end with status 0.

Loopback only; every process is stopped by PID; bounded by `--timeout` per wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    SHM,
    Deadline,
    epoch_of,
    fresh_lab,
    in_turns,
    sources_parser,
    start_service,
    submit_all,
    url_of,
    use_source,
    wait_tasks,
)
from edgewarm.client import AsyncClient
from edgewarm.testing.faults import FaultServer, Respond

SECOND_USER = ("second", "s" * 32)


async def one_run(
    folder: Path, urls: int, small: int, refresh: bool, slow: float | None, timeout: float
) -> tuple[float, float]:
    """(seconds the second user's task took, seconds the first user's URLs took)."""
    name, secret = SECOND_USER
    extra = (
        f'[[users]]\nname = "{name}"\nsecret = "{secret}"\ndomains = ["www.example.test"]\n'
        f"urls_per_call = {max(small, 100)}\n\n"
    )
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(fresh_lab(edges=2, shield=refresh, purge_module=refresh))
        paths = lab.make_files(urls + small, 4096)
        nodes = lab.nodes_toml()
        if slow is not None:
            node = stack.enter_context(FaultServer(Respond(200, body=b"x" * 4096, delay=slow)))
            nodes += f'\n[[nodes]]\nname = "slow"\nurl = "{node.url}"\n'
        with start_service(folder, nodes, extra=extra) as service:
            deadline = Deadline(timeout, "fairness")
            first, started, _ = await submit_all(service, [url_of(p) for p in paths[:urls]])
            async with AsyncClient(service.url, *SECOND_USER, timeout=timeout) as second:
                taskid = await second.prefetch([url_of(p) for p in paths[urls:]], refresh=refresh)
                view = await second.wait(taskid, timeout=timeout)
            ended = await wait_tasks(service, first, deadline)
    assert view["status"] == 0, f"the second user's task ended with status {view['status']}"
    assert {t["status"] for t in ended} == {0}, "a task of the first user failed"
    last = max(epoch_of(t["finished_at"]) for t in ended)
    return epoch_of(view["finished_at"]) - epoch_of(view["created_at"]), last - started


async def main(args: argparse.Namespace) -> int:
    sources: dict[str, str] = dict(args.src)
    names = list(sources)
    waits: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name in in_turns(names, round_no):
            use_source(sources[name])
            with tempfile.TemporaryDirectory(prefix="edgewarm-bench-fair-", dir=SHM) as folder:
                waited, large = await one_run(
                    Path(folder), args.urls, args.small, args.refresh, args.slow, args.timeout
                )
            waits[name].append(waited)
            print(
                f"round {round_no + 1} {name}: the second user's {args.small} URLs {waited:.2f} s; "
                f"the first user's {args.urls:,} URLs {large:.2f} s",
                flush=True,
            )
    use_source(None)
    for name in names:
        spread = f"{min(waits[name]):.2f}-{max(waits[name]):.2f}"
        print(f"{name}: the second user's task, median {statistics.median(waits[name]):.2f} s ({spread})")
    return 0


if __name__ == "__main__":
    parser = sources_parser(__doc__)
    parser.add_argument("--urls", type=int, default=30_000, help="the first user's URLs")
    parser.add_argument("--small", type=int, default=1, help="the second user's URLs")
    parser.add_argument("--refresh", action="store_true", help="the second user's task purges, then warms")
    parser.add_argument("--slow", type=float, default=None, help="one more node, answering after this many seconds")
    sys.exit(asyncio.run(main(parser.parse_args())))
