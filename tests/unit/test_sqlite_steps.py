"""The SQLite store's statements on the path of every batch: their work must not grow with a task's size.

Counted in SQLite's virtual machine steps (a progress handler), not timed: the count is the same on a busy
machine as on an idle one.
"""

from __future__ import annotations

import sqlite3
import uuid

from edgewarm.models import ItemAction, NewItem
from edgewarm.store.sqlite import _STAGED_TASKS, MIGRATIONS, _json


def steps_of(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> int:
    """Thousands of VM steps `sql` took."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    db.set_progress_handler(tick, 1000)
    db.execute(sql, params).fetchall()
    db.set_progress_handler(None, 0)
    return count


def task_of(db: sqlite3.Connection, urls: int, stages: int, done: int) -> str:
    """A task of `urls` URLs on one node per stage, the first `done` URLs' items succeeded."""
    task_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO tasks (id, username, kind, created_at, total) VALUES (?, 'u', 'prefetch', 0, ?)",
        (task_id, urls * stages),
    )
    rows = [
        (
            task_id,
            item.seq,
            item.stage,
            item.url,
            item.node,
            item.action.value,
            "succeeded" if item.seq < done else ("pending" if item.stage == 0 else "waiting"),
        )
        for item in (
            NewItem(seq, f"http://a.test/{seq}", f"n{stage}", ItemAction.WARM, stage)
            for seq in range(urls)
            for stage in range(stages)
        )
    ]
    db.executemany(
        "INSERT INTO items (task_id, seq, stage, url, node, action, state, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
        rows,
    )
    return task_id


def test_finding_a_tasks_stages_does_not_read_its_items() -> None:
    """Tasks of 1,000 and 100,000 URLs, with stages and without, nearly done (a shield and an edge: the first
    waiting item is near the end): the statement takes the same few steps for each (before, it read every
    item of a task without waiting items, and every done one before the first waiting: a batch of outcomes
    of a task of 150,000 items took 30-50 ms more, and a task's warming slowed as it grew)."""
    db = sqlite3.connect(":memory:")
    for migration in MIGRATIONS:
        db.executescript(migration)
    counts = {}
    for urls in (1_000, 100_000):
        for stages in (1, 2):
            task_id = task_of(db, urls, stages, done=urls - 10)
            (found,) = db.execute(_STAGED_TASKS, (_json([task_id]),)).fetchone()
            assert (found == f'["{task_id}"]') is (stages == 2)
            counts[urls, stages] = steps_of(db, _STAGED_TASKS, (_json([task_id]),))
    assert counts[100_000, 1] <= counts[1_000, 1] + 1, counts
    assert counts[100_000, 2] <= counts[1_000, 2] + 1, counts
