"""The SQLite store's engine statements alone: CPU per item of each step of a claim and of an outcome batch.

    .venv/bin/python bench/store_statements.py                  # 20,000 URLs x 2 nodes, batches of 200

Fills a SQLite store in /dev/shm through `create_task` (tasks of 100 URLs), then claims and records every
item in batches, running the store's own statements (`store/sqlite.py`: `_DUE_USERS`, `_DUE_ITEMS`, `_LEASE_ITEMS`,
`_OPEN_PURGE_KINDS`, `_APPLICABLE_OUTCOMES`, `_RECORD_OUTCOMES`, `_ANY_WAITING`, `_STAGED_TASKS`, `_ADD_COUNTS`,
`_finish_tasks`: what `claim_due_items` and `record_outcomes` run for single-stage tasks with no purge open) in
this thread, each timed
with `time.thread_time()`. What the database does per item, without the engine, the event loop or a second
thread: the floor under the store's share of a warm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fill_tasks
from edgewarm.models import CANCELLED, ItemOutcome
from edgewarm.store import open_store
from edgewarm.store import sqlite as s
from edgewarm.store.sqlite import SQLiteStore


async def measure(urls: int, batch: int) -> tuple[int, dict[str, float]]:
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="edgewarm-statements-")
    try:
        async with open_store(f"sqlite:///{folder}/edgewarm.db") as store:
            assert isinstance(store, SQLiteStore)
            await fill_tasks(store, urls)
            return _work_through(store, batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _work_through(store: SQLiteStore, batch: int) -> tuple[int, dict[str, float]]:
    db = store.db
    spent: dict[str, float] = {}

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.thread_time()
        yield
        spent[name] = spent.get(name, 0.0) + time.thread_time() - started

    # As claim_due_items runs them when it skips no node (none is held down or full here): the users with
    # items due, then _DUE_ITEMS bound (now, limit, user) for the one user of fill_tasks.
    done = 0
    for _ in range(1_000_000):  # bounded: every item is claimed once
        now = time.time()
        with step("claim: the users"):
            users = s._from_json(db.execute(s._DUE_USERS, (now,)).fetchone()[0])
        if not users:
            break
        db.execute("BEGIN IMMEDIATE")
        with step("claim: select due items"):
            rows = s._from_json(db.execute(s._DUE_ITEMS, (now, batch, users[0])).fetchone()[0])
        if not rows:
            db.execute("COMMIT")
            break
        with step("claim: lease them"):
            db.execute(s._LEASE_ITEMS, (s._json([r[0] for r in rows]), "w", now + 60))
        with step("claim: any purge open"):  # PURGE_FIRST: none here, so nothing more is asked
            db.execute(s._OPEN_PURGE_KINDS).fetchone()
        with step("claim: commit"):
            db.execute("COMMIT")
        outcomes = [ItemOutcome(r[0], True, 1, 200, "MISS", 4096) for r in rows]
        db.execute("BEGIN IMMEDIATE")
        with step("outcomes: to JSON"):
            params = (s._json([s._outcome_row(o, now) for o in outcomes]), now, "w", CANCELLED)
        with step("outcomes: select"):
            written = s._from_json(db.execute(s._APPLICABLE_OUTCOMES, params).fetchone()[0])
        with step("outcomes: update"):
            db.execute(s._RECORD_OUTCOMES, params)
        finals: dict[str, list[int]] = {}
        for task_id, _seq, _state, _item in written:
            finals.setdefault(task_id, [0, 0])[0] += 1
        with step("outcomes: any warm waiting"):  # PURGE_FIRST: none here, so none is released
            db.execute(s._ANY_WAITING).fetchone()
        with step("outcomes: staged tasks"):  # every batch that ends items asks (the tasks here have one stage)
            db.execute(s._STAGED_TASKS, (s._json(list(finals)),)).fetchone()
        with step("outcomes: task counters"):
            db.execute(s._ADD_COUNTS, (s._json([[task_id, ok, failed] for task_id, (ok, failed) in finals.items()]),))
        with step("outcomes: finish tasks"):
            s._finish_tasks(db, list(finals), now)
        with step("outcomes: commit"):
            db.execute("COMMIT")
        done += len(rows)
    # Every item claimed once and recorded, every task finished: else the figures are not per item of a whole run.
    items, succeeded = db.execute("SELECT count(*), coalesce(sum(state = 'succeeded'), 0) FROM items").fetchone()
    (open_tasks,) = db.execute("SELECT count(*) FROM tasks WHERE finished_at IS NULL").fetchone()
    if not items or done != items or succeeded != items or open_tasks:
        raise RuntimeError(f"{done} items claimed, {succeeded} of {items} succeeded, {open_tasks} tasks not finished")
    return done, {name: seconds / done * 1e6 for name, seconds in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000, help="URLs (an item on each of 2 nodes), in tasks of 100")
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args(argv)
    items, per_item = asyncio.run(measure(args.urls, args.batch))
    print(f"{items:,} items claimed and recorded in batches of {args.batch}")
    for step, us in per_item.items():
        print(f"{step:26} {us:5.2f} us/item")
    print(f"{'all':26} {sum(per_item.values()):5.2f} us/item")
    return 0


if __name__ == "__main__":
    sys.exit(main())
