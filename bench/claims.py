"""A claim's time with many users, on SQLite and on PostgreSQL, in turns between source folders (two commits, say).

    .venv/bin/python bench/claims.py --src before=/tmp/old/src --src after=src
    .venv/bin/python bench/claims.py --users 200 --store postgresql --src before=/tmp/old/src --src after=src

Each round, store and source: a fresh store (SQLite in /dev/shm; a database on one throwaway PostgreSQL,
`edgewarm.testing.postgres`) filled by a child process running that source (PYTHONPATH) with `--users` users'
tasks through `create_task`; then, in that child, the store's own `claim_due_items` timed (wall clock, median):
- an idle poll: every user's items due an hour later, a claim of `--limit` that finds nothing;
- a busy claim: every user has items due, a claim of `--limit` (shared among them), `--claims` times.

Loopback only; the PostgreSQL cluster is stopped by its PID; bounded (a fixed count of claims).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHM, in_turns, sources_parser, use_source
from edgewarm.models import NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.store import TaskStore, open_store
from edgewarm.testing.postgres import PostgresCluster

LEASE = 60.0


async def fill(store: TaskStore, users: int, items: int, created_at: float) -> None:
    """`items` URLs (one node each) for each of `users` users, a task each."""
    for u in range(users):
        new = tuple(NewItem(seq=i, url=f"http://example.test/{u}/{i}", node="e1") for i in range(items))
        quota = QuotaCharge("20261128", items, 0, 10**9, 10)
        await store.create_task(NewTask(str(uuid.uuid4()), f"user-{u:04d}", TaskKind.PREFETCH, created_at, new, quota))


async def child(url: str, users: int, limit: int, claims: int) -> dict[str, float]:
    """Milliseconds, median: an idle poll (nothing due), and a busy claim."""
    now = time.time()
    async with open_store(url) as store:
        await fill(store, users, 5, now + 3600)  # due an hour later: nothing to claim now
        idle = []
        for _ in range(30):
            started = time.perf_counter()
            assert await store.claim_due_items("w", limit, now, LEASE) == []
            idle.append(time.perf_counter() - started)
        await fill(store, users, -(-limit * claims // users) + limit, now)
    # The busy claims on new connections: PostgreSQL's plans of the statements prepared on the idle phase's
    # were made for a table of a few hundred items (a generic plan made then reads the whole table each time,
    # until autovacuum analyzes it: docs/benchmarks.md, session 21).
    async with open_store(url) as store:
        busy = []
        for _ in range(claims):
            started = time.perf_counter()
            found = await store.claim_due_items("w", limit, now, LEASE)
            busy.append(time.perf_counter() - started)
            assert len(found) == limit, len(found)
    return {"idle": statistics.median(idle) * 1e3, "busy": statistics.median(busy) * 1e3}


def one_run(url: str, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", url, str(args.users), str(args.limit), str(args.claims)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the child failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def main(args: argparse.Namespace) -> int:
    sources: dict[str, str] = dict(args.src)
    names = list(sources)
    ms: dict[str, dict[str, list[float]]] = {name: {"idle": [], "busy": []} for name in names}
    with tempfile.TemporaryDirectory(prefix="edgewarm-bench-claims-", dir=SHM) as folder:
        cluster = PostgresCluster().start() if args.store == "postgresql" else None
        try:
            for round_no in range(args.rounds):
                for name in in_turns(names, round_no):
                    use_source(sources[name])
                    if cluster is not None:
                        url = await cluster.create_database()
                    else:
                        url = f"sqlite:///{folder}/{name}-{round_no}.db"
                    result = one_run(url, args)
                    if cluster is not None:
                        await cluster.drop_database(url.rsplit("/", 1)[1])
                    for key, value in result.items():
                        ms[name][key].append(value)
                    print(
                        f"round {round_no + 1} {name}: idle poll {result['idle']:.2f} ms, "
                        f"claim of {args.limit} {result['busy']:.2f} ms",
                        flush=True,
                    )
        finally:
            use_source(None)
            if cluster is not None:
                cluster.stop()
    for name in names:
        idle, busy = ms[name]["idle"], ms[name]["busy"]
        print(
            f"{name} ({args.store}, {args.users} users): idle poll median {statistics.median(idle):.2f} ms "
            f"({min(idle):.2f}-{max(idle):.2f}); claim of {args.limit} {statistics.median(busy):.2f} ms "
            f"({min(busy):.2f}-{max(busy):.2f})"
        )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        url, users, limit, claims = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(asyncio.run(child(url, users, limit, claims))))
        sys.exit(0)
    parser = sources_parser(__doc__)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--limit", type=int, default=512, help="items a claim asks for")
    parser.add_argument("--claims", type=int, default=20, help="busy claims timed")
    sys.exit(asyncio.run(main(parser.parse_args())))
