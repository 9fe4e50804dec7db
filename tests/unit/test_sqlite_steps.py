"""The SQLite store's work beside the warms: a batch's statements must not grow with a task's size, and long
reads must not hold up the writer.

Counted in SQLite's virtual machine steps (a progress handler), or seen as what can run while the writer is
held, not timed: the same on a busy machine as on an idle one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from edgewarm.errors import ListTooLong, StoreError
from edgewarm.models import ItemAction, NewItem, NewTask, QuotaCharge, TaskFilter, TaskKind
from edgewarm.store import open_store
from edgewarm.store import sqlite as sqlite_module
from edgewarm.store.sqlite import _STAGED_TASKS, _TASKS_BY_ID, MIGRATIONS, SQLiteStore, _json

QUOTA = QuotaCharge("20261129", 10, 0, 10**9, 10)

pytestmark = pytest.mark.anyio


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


def test_tasks_looked_up_by_id_are_read_by_their_ids_not_all_their_users(tmp_path: Path) -> None:
    """`/v1/tasks/lookup` read every task of its user (the index of a user's tasks, chosen over the ids): a
    tester's user of 617,000 tasks took 0.2-0.3 s a call, on the writer's thread. Its steps do not grow with
    the user's tasks."""
    db = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    for migration in MIGRATIONS:
        db.executescript(migration)
    db.execute(
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 50000) "
        "INSERT INTO tasks (id, username, kind, created_at, total) SELECT 't' || n, 'u', 'prefetch', n, 1 FROM s"
    )
    assert steps_of(db, _TASKS_BY_ID, (_json(["t7", "t49999", "none"]), "u")) < 5  # thousands: 50,000 rows read
    db.close()


async def test_a_list_that_waited_its_bound_for_the_reads_thread_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list's bound (LIST_SECONDS) counts from the call: lists waiting behind one another on the long reads'
    thread each read their 2 s after the one before (five at once: answered after 2, 4, 6, 8 and 10 s, a task
    view waiting behind them all). One whose bound passed while it waited is refused without reading."""
    monkeypatch.setattr("edgewarm.store.sqlite.LIST_SECONDS", 0.2)
    async with open_store(f"sqlite:///{tmp_path}/e.db") as store:
        assert isinstance(store, SQLiteStore)
        items = tuple(NewItem(i, f"http://a.test/d/{i}", "n1") for i in range(3))
        await store.create_task(NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, QUOTA))
        assert len(await store.list_tasks("u", TaskFilter())) == 1  # within its bound
        busy = [
            asyncio.ensure_future(store._off_the_loop(store._lists.executor, lambda: threading.Event().wait(0.5)))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)  # the lists' threads taken
        with pytest.raises(ListTooLong) as refused:
            await store.list_tasks("u", TaskFilter())
        # Not "narrow it": the list was not read (a re-tester's 30 lists at once were told to narrow theirs).
        assert refused.value.message.startswith("the list waited 0.2 s for its turn"), refused.value.message
        await asyncio.gather(*busy)


async def test_one_users_long_lists_hold_neither_the_task_views_nor_the_other_users_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's lists take one of the lists' two threads at a time, and the task views read on a thread of their
    own: before, one thread read all of them, and a user's six lists at once (a `url` keyword: 2 s each) held
    another user's view of a task for 1.5-1.9 s (a tester's). Here user a's lists are held inside their read."""
    armed, release, entered = threading.Event(), threading.Event(), []
    real = sqlite_module.task_from_row

    def held(row: Any) -> Any:
        if armed.is_set() and row[1] == "a" and threading.current_thread() is not threading.main_thread():
            entered.append(1)
            release.wait(10)
        return real(row)

    monkeypatch.setattr(sqlite_module, "task_from_row", held)
    async with open_store(f"sqlite:///{tmp_path}/e.db") as store:
        ids = {}
        for user in ("a", "b"):
            items = tuple(NewItem(i, f"http://a.test/{user}/{i}", "n1") for i in range(3))
            task = await store.create_task(NewTask(str(uuid.uuid4()), user, TaskKind.PREFETCH, 1.0, items, QUOTA))
            ids[user] = task.id
        armed.set()
        lists = [asyncio.ensure_future(store.list_tasks("a", TaskFilter())) for _ in range(3)]
        try:
            await asyncio.sleep(0.2)
            assert len(entered) == 1  # one of a's lists reads; the others wait for it, not on a thread
            async with asyncio.timeout(5):
                detail = await store.task_detail(ids["b"])
                listed = await store.list_tasks("b", TaskFilter())
            assert detail is not None and [t.id for t in listed] == [ids["b"]]
        finally:
            release.set()
        assert [[t.id for t in got] for got in await asyncio.gather(*lists)] == [[ids["a"]]] * 3


async def test_long_reads_do_not_wait_for_the_writers_thread(tmp_path: Path) -> None:
    """A task's view, a task list and a directory's known URLs are read while the writer's thread is busy
    (here: held until they are done). Before, they ran on that thread: the view of a task of 150,000 items
    took 150-300 ms there, every claim and outcome waiting meanwhile (a big task polled by `watch` warmed
    23 times slower)."""
    async with open_store(f"sqlite:///{tmp_path}/e.db") as store:
        assert isinstance(store, SQLiteStore)
        items = tuple(NewItem(i, f"http://a.test/d/{i}", "n1") for i in range(10))
        task = await store.create_task(NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, QUOTA))
        release = threading.Event()
        busy = asyncio.ensure_future(store._run(lambda: release.wait(10)))
        try:
            async with asyncio.timeout(5):
                detail = await store.task_detail(task.id, limit=5)
                listed = await store.list_tasks("u", TaskFilter(url_contains="/d/"))
                known = await store.known_urls("http://a.test/d/", 100)
        finally:
            release.set()
            await busy
    assert detail is not None and len(detail.items) == 5
    assert [t.id for t in listed] == [task.id] and len(known) == 10


async def test_the_wal_grown_behind_a_long_read_is_cut_back_when_it_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that holds a snapshot keeps the checkpoints from emptying the -wal, which grows with every write
    meanwhile; SQLite kept that size for good (a tester's small volume was full of an idle store's -wal). Cut
    back to WAL_KEPT_BYTES (here 64 KiB) once the -wal starts over."""
    monkeypatch.setattr("edgewarm.store.sqlite.WAL_KEPT_BYTES", 64 * 1024)
    wal = tmp_path / "e.db-wal"
    async with open_store(f"sqlite:///{tmp_path}/e.db") as store:

        async def submit(count: int) -> None:
            for _ in range(count):
                items = tuple(NewItem(i, f"http://a.test/wal/{uuid.uuid4()}/{i}", "n1") for i in range(100))
                await store.create_task(NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, QUOTA))

        reader = sqlite3.connect(tmp_path / "e.db")
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM items").fetchone()  # a snapshot: no checkpoint empties the -wal
            await submit(40)
            grown = wal.stat().st_size
        finally:
            reader.close()
        await submit(2)  # the first's commit checkpoints the whole -wal (over 1,000 pages); the second starts it over
        kept = wal.stat().st_size
    assert grown > 4 * 1024 * 1024, grown  # past SQLite's own checkpoints (every 1,000 pages)
    assert kept < 1024 * 1024, (grown, kept)  # 64 KiB, and the second submission's pages


async def test_a_submission_refused_before_its_group_ran_is_never_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database file was away (moved, then put back): the submission was refused ("the store is
    unavailable") but stayed queued for the group commit, and the next submission's group made it: a task the
    caller was told failed ran, and a retry made it twice."""
    async with open_store(f"sqlite:///{tmp_path}/e.db") as store:
        assert isinstance(store, SQLiteStore)

        def task(name: str) -> NewTask:
            items = (NewItem(0, f"http://a.test/{name}", "n1"),)
            return NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, QUOTA)

        def away() -> None:
            raise StoreError("the SQLite database was removed or replaced")

        monkeypatch.setattr(store, "_still_there", away)
        with pytest.raises(StoreError):
            await store.create_task(task("refused"))
        monkeypatch.undo()
        made = await store.create_task(task("later"))
        listed = await store.list_tasks("u", TaskFilter())
    assert [t.id for t in listed] == [made.id]


def test_store_errors_say_what_to_do_of_a_stale_wal_a_full_disk_and_a_file_made_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's: a damaged file beside a -wal written before it (a backup restored over a store killed, its
    old -wal replayed into it) was told to restore the backup, which did the same again; a full disk was told
    to free space, and freeing less than the -wal took let the start fill it again; a file made unreadable
    under the service was "unable to open database file", naming neither."""
    import os

    from edgewarm.store.sqlite import _store_error

    path = tmp_path / "e.db"
    path.write_bytes(b"x" * 4096)
    wal = tmp_path / "e.db-wal"
    wal.write_bytes(b"w" * 2_500_000)
    os.utime(wal, (1_000_000_000, 1_000_000_000))  # before the file's last write
    damaged = str(_store_error(sqlite3.DatabaseError("database disk image is malformed"), str(path)))
    assert "its -wal (2,500,000 bytes) was last written before the file was" in damaged, damaged
    assert "move them away, then restore the file again" in damaged
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    said = "space is freed there (19 MB or more: the -wal's pages go into the file, and the -wal grows again)"
    assert str(_store_error(full, str(path))).endswith(said)
    os.utime(wal)  # written after the file: a -wal of its own, nothing said of it
    assert "-wal" not in str(_store_error(sqlite3.DatabaseError("database disk image is malformed"), str(path)))
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # (root reads any file: its mode cannot show it)
    unreadable = str(_store_error(sqlite3.OperationalError("unable to open database file"), str(path)))
    assert f"the database {path} cannot be read by this user (uid {os.getuid()}): its mode or owner" in unreadable


async def test_stores_opening_a_new_file_at_once_never_take_its_new_schema_for_anothers_tables(tmp_path: Path) -> None:
    """The schema version and the tables were read apart: another opener's schema, committed between the two reads,
    was refused as another application's tables (the suite's four openers at once: 11 files of 200 here)."""

    async def opened(url: str) -> int:
        async with open_store(url) as store:
            return await store.queue_depth()

    for n in range(100):
        url = f"sqlite:///{tmp_path}/new-{n}.db"
        assert await asyncio.gather(*(opened(url) for _ in range(4))) == [0, 0, 0, 0]
