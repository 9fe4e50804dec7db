"""The embedded default back-end: SQLite in WAL mode, one connection served by one thread.

SQLite has a single writer anyway; funnelling every call through one thread keeps transactions simple and
lets the event loop go on while SQLite works. `memory://` is the same store on an in-memory database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from ..errors import LIST_SECONDS, ListTooLong, QuotaExceeded, StoreDamaged, StoreError, StoreFull
from ..models import (
    CANCELLED,
    WARMED_AGAIN,
    Cancel,
    Claim,
    Item,
    ItemAction,
    ItemOutcome,
    ItemState,
    NewTask,
    Released,
    Task,
    TaskCounts,
    TaskDetail,
    TaskFilter,
)
from ..tuning import out_of_open_files
from . import make_folder_of, sqlite_uri
from .base import (
    DEFER_SECONDS,
    MAX_STAGES,
    NO_WEBHOOK_DUE,
    NOT_ATTEMPTED,
    OPEN_STATES,
    RETENTION_ITEMS,
    SCHEMA_VERSION,
    UNNAMED,
    ClaimScans,
    ClaimShares,
    FairClaims,
    HandBack,
    ListTurns,
    Opening,
    OpenPurge,
    Redone,
    ScanPoint,
    SkipFor,
    UserAsk,
    Window,
    blocking_purges,
    claim_scan,
    hand_backs,
    known_search,
    list_stopped,
    new_store,
    purge_first_plan,
    purge_key,
    purge_keys,
    redone,
    rewarm_in_steps,
    run_plan,
    schema_to_make,
    skipped_for,
    tables_in_the_way,
    warm_nodes,
    wrong_version,
)
from .rows import ITEM_COLUMNS, TASK_COLUMNS, canceller, item_from_row, node_counts_from_rows, task_from_row

T = TypeVar("T")
log = logging.getLogger("edgewarm.store")

MIGRATIONS: tuple[str, ...] = (
    # version 1
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at REAL NOT NULL,
        total INTEGER NOT NULL,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL DEFAULT 1,
        finished_at REAL,
        reason TEXT
    );
    CREATE INDEX tasks_user_created ON tasks (username, created_at);
    CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        url TEXT NOT NULL,
        node TEXT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        due_at REAL NOT NULL,
        lease_owner TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        http_status INTEGER,
        cache_state TEXT,
        bytes INTEGER,
        error TEXT,
        updated_at REAL
    );
    CREATE INDEX items_task ON items (task_id, seq, stage);
    CREATE INDEX items_due ON items (due_at) WHERE state IN ('pending', 'running');
    CREATE TABLE usage (
        username TEXT NOT NULL,
        day TEXT NOT NULL,
        urls INTEGER NOT NULL DEFAULT 0,
        dirs INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (username, day)
    );
    """,
    # version 2: idempotency keys, webhooks
    """
    ALTER TABLE tasks ADD COLUMN idempotency_key TEXT;
    ALTER TABLE tasks ADD COLUMN callback_url TEXT;
    ALTER TABLE tasks ADD COLUMN webhook_state TEXT;
    ALTER TABLE tasks ADD COLUMN webhook_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN webhook_error TEXT;
    ALTER TABLE tasks ADD COLUMN webhook_due_at REAL;
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (username, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_webhook_due ON tasks (webhook_due_at) WHERE webhook_state = 'pending';
    """,
    # version 3: PostgreSQL's claims scan by (due_at, id); here the index on due_at holds the rowid (= id)
    "SELECT 1;",
    # version 4: a directory refresh finds the URLs known under it by a range of this index (known_urls), not by
    # reading every item
    "CREATE INDEX items_url ON items (lower(url));",
    # version 5: claims share the due items among their users (FairClaims): each item names its task's user, and
    # each user's due items are found in due order by this index. Items written before (or by an older process
    # still running after `db upgrade`) name none: they are claimed as one more user's, UNNAMED (filling them in
    # would rewrite every open item while the migration holds the table).
    """
    ALTER TABLE items ADD COLUMN username TEXT;
    CREATE INDEX items_user_due ON items (coalesce(username, ''), due_at) WHERE state IN ('pending', 'running');
    """,
    # version 6: who cancelled a task (Canceller): its user, or the operator (`edgewarm admin cancel`)
    "ALTER TABLE tasks ADD COLUMN cancelled_by TEXT;",
    # version 7: version 5's index as it is now, and no trigger. Builds of version 5 made it on (username,
    # due_at), which the claims' search by coalesce(username, '') cannot use (a tester's store upgraded from one:
    # 1,120 ms a claim's search of the users against 0.1), and one of them a trigger filling in an item's user.
    # (IF EXISTS, and version 4's index IF NOT EXISTS: an operator may have dropped one by hand.)
    """
    DROP TRIGGER IF EXISTS items_user;
    CREATE INDEX IF NOT EXISTS items_url ON items (lower(url));
    DROP INDEX IF EXISTS items_user_due;
    CREATE INDEX items_user_due ON items (coalesce(username, ''), due_at) WHERE state IN ('pending', 'running');
    """,
    # version 8: a later task's warm waits for an earlier task's open purge of its URL on its node (PURGE_FIRST):
    # each purge's object as its node keys it (purge_key: any spelling of its URL), the open purges by action,
    # node and that (a claim asks "is a purge open?" in one step of a small index, then for those of its warms'
    # objects and nodes), and the purge a warm handed back waits for (its end makes the warm due at once). File
    # purges open across the upgrade have no key: they hold no warm back (directory purges do)
    """
    ALTER TABLE items ADD COLUMN purge_key TEXT;
    ALTER TABLE items ADD COLUMN waits_for INTEGER;
    CREATE INDEX items_open_purges ON items (action, node, purge_key)
        WHERE action <> 'warm' AND state IN ('waiting', 'pending', 'running');
    CREATE INDEX items_waits_for ON items (waits_for) WHERE state = 'pending' AND waits_for IS NOT NULL;
    """,
    # version 9: PostgreSQL's index of leased items, for the leases of a dead worker among others; SQLite's one
    # engine takes its leases back at its start, in their tasks' places (release_all_leases): nothing to make
    "SELECT 1;",
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class SQLiteStore:
    """TaskStore on SQLite. `path` is a file path, or ":memory:"."""

    def __init__(self, path: str, *, opening: Opening = Opening.SERVICE) -> None:
        self.path = path
        self._opening = opening
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgewarm-sqlite")
        # Long reads (a big task's view, a task list searched by URL, a directory's known URLs) on a thread and
        # connection of their own: on the writer's they held up every outcome and claim meanwhile.
        self._long_reads = _ReadThreads("edgewarm-sqlite-read", 1)
        # Task lists (a `url` keyword is searched in every URL of the tasks read: up to LIST_SECONDS) on two threads
        # of their own, one user's one at a time: a user's lists held every task view of the others (a tester's six
        # lists at once: another user's view of a task took 1.5-1.9 s, not 5 ms).
        self._lists = _ReadThreads("edgewarm-sqlite-list", 2)
        self._list_turns = ListTurns()  # one list of each user's at a time
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # Waiting for the writer (group commit), and since when (time.monotonic()).
        self._to_create: deque[tuple[NewTask, Future[Task], float]] = deque()
        self._scans = ClaimScans()
        self._fair = FairClaims()
        self._identity: tuple[int, int] | None = None  # (device, inode) of the database file once open
        self._damaged: StoreDamaged | None = None  # once a statement found the file damaged: /readyz says so
        # A write refused (a full disk, a read-only file): until a probe write works (_write_probe). Not any write:
        # a small one may fit where the engine's and the API's do not, and /readyz would flap.
        self._refusing: StoreError | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._run(self._open)
        except StoreError as exc:
            if not str(exc).startswith("sqlite: ") or isinstance(exc, StoreDamaged):
                raise  # edgewarm's own words, which name the file
            raise StoreError(f"the SQLite database {self.path}: {str(exc).removeprefix('sqlite: ')}") from exc
        if self.path != ":memory:":
            # Point reads (a task by id: prefetchQuery) go through a read-only connection on the caller's
            # thread. WAL lets it read beside the writer; it skips the hop to the writer's thread, which
            # cost more than the read itself (docs/benchmarks.md, S5).
            self._reader = sqlite3.connect(
                sqlite_uri(self.path, "mode=ro"), uri=True, isolation_level=None, check_same_thread=False, timeout=0.2
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._long_reads.close()
        self._lists.close()
        await self._run(self._close, check=False)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        if self.path != ":memory:":
            for check in _BEFORE_OPENING:
                check(self.path)
            _not_without_its_wal(self.path)
            make_folder_of(self.path)
            _writable(self.path)
            _make_owner_only(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=LOCK_WAIT_SECONDS)
        try:  # refused before WAL: another application's file, or another version's, stays as it is
            version, in_the_way = _first_look(db, self.path)
            if in_the_way:
                raise tables_in_the_way(self.path, in_the_way)
            to_make = schema_to_make(self._opening, version, self.path)
        except BaseException:
            db.close()
            raise
        _enable_wal(db)
        # Submissions commit with FULL (fsync before the task id is returned: nothing submitted is lost); the
        # engine's own writes (claims, outcomes, leases) with NORMAL: after a power cut the last of them may
        # be gone, which only makes those items run again, never twice counted.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA cache_size=-65536")
        # The -wal grows past its checkpoints while a long read holds them back (a bulk submission beside a big
        # task's view), and kept its largest size for good: cut back to this when it starts over.
        db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        self._db = db
        if self.path != ":memory:":
            found = os.stat(self.path)
            self._identity = (found.st_dev, found.st_ino)
        if to_make:
            self._upgrade()
            if self.path != ":memory:":
                log.info("%s", new_store(self.path))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn: Callable[[], T], *, check: bool = True) -> T:
        """`fn` on the store's thread; `check`: first make sure the database file is still the one opened."""
        return await self._off_the_loop(self._executor, self._checked(fn) if check else fn)

    async def _write_within(self, fn: Callable[[], T]) -> T:
        """`fn` on the store's thread, given up if it has not begun within LOCK_WAIT_SECONDS (the writer held by
        another process's lock, each write ahead of it waiting its busy timeout: a tester's cancel answered after
        29 s): StoreError, nothing done. Once begun, its answer is awaited (its own wait is bounded)."""
        guard, begun, withdrawn = threading.Lock(), [False], [False]

        def run() -> T:
            with guard:
                if withdrawn[0]:
                    raise _Withdrawn
                begun[0] = True
            return fn()

        future = asyncio.ensure_future(self._run(run))
        try:
            return await asyncio.wait_for(asyncio.shield(future), LOCK_WAIT_SECONDS)
        except TimeoutError:
            with guard:
                withdrawn[0] = not begun[0]
            if not withdrawn[0]:
                return await future
            future.add_done_callback(lambda done: done.cancelled() or done.exception())  # _Withdrawn, read
            raise StoreError(_LOCKED.format(LOCK_WAIT_SECONDS)) from None

    async def _read(self, fn: Callable[[sqlite3.Connection], T], threads: _ReadThreads | None = None) -> T:
        """`fn(connection)` in one read transaction (one moment of the database), on the long reads' thread (or
        `threads`) with a read-only connection of its own (WAL: beside the writer); in memory, on the writer's
        thread."""
        if self.path == ":memory:":
            return await self._run(lambda: fn(self.db))
        uri = sqlite_uri(self.path, "mode=ro")

        def read() -> T:
            self._still_there()
            db = (threads or self._long_reads).connection(uri)
            db.execute("BEGIN")
            try:
                return fn(db)
            finally:
                db.execute("COMMIT")

        return await self._off_the_loop((threads or self._long_reads).executor, read)

    async def _off_the_loop(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        """`fn` on `executor`'s thread; SQLite's errors come out as StoreError (`_error`)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """A SQLite error as the store's; a damaged file, or a write refused, is remembered for queue_depth
        (/readyz) to tell."""
        error = _store_error(exc, self.path)
        if isinstance(error, StoreDamaged):
            self._damaged = error
        elif getattr(exc, "sqlite_errorcode", 0) & 0xFF in _WRITES_REFUSED:
            self._refusing = error
        return error

    def _checked(self, fn: Callable[[], T]) -> Callable[[], T]:
        def checked() -> T:
            self._still_there()
            return fn()

        return checked

    def _still_there(self) -> None:
        """StoreError when the database file was removed or replaced since it was opened (its folder deleted,
        say): what is written then goes to the removed file only, lost at the next start."""
        if self._identity is None:
            return
        try:
            found = os.stat(self.path)
        except OSError:
            found = None
        if found is None or (found.st_dev, found.st_ino) != self._identity:
            raise StoreError(
                f"the SQLite database {self.path} was removed or replaced while edgewarm ran: nothing is taken "
                "or written until it is back (the same file moved back: edgewarm goes on by itself; a copy of "
                "it restored: restart edgewarm)"
            )

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open")
        return self._db

    def _version(self) -> int:
        return _version_of(self.db, self.path)

    def _upgrade(self) -> int:
        db = self.db
        # The version is read under the write lock: two processes opening a new file at once must not both
        # run the first migration. (executescript would COMMIT first, so the statements run one by one.)
        with _write_transaction(db):
            version = self._version()
            if version > SCHEMA_VERSION:
                raise wrong_version(self.path, version)
            if found := _in_the_way(db, version):
                raise tables_in_the_way(self.path, found)
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[number]):
                    db.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(number + 1),))
        return version

    async def schema_version(self) -> int:
        return await self._run(self._version)

    async def upgrade(self) -> int:
        return await self._run(self._upgrade_in_room)

    def _upgrade_in_room(self) -> int:
        """`_upgrade`; on a full disk, the room it needs (it said a running service's -wal room: 21 MB, then 44,
        where it took 51: an upgrade tester's)."""
        try:
            version = self._upgrade()
            if version < SCHEMA_VERSION:  # its writes out of the -wal (31 MB left beside a 70 MB file filled the
                with contextlib.suppress(sqlite3.Error):  # disk the service then needed: a re-tester's)
                    self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return version
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != _SQLITE_FULL:
                raise
            try:
                size = os.path.getsize(self.path) + _wal_bytes(self.path)
            except OSError:
                size = 0
            raise StoreFull(
                f"sqlite: {exc}: the disk of the database {self.path} is full: the upgrade was undone, the store left "
                f"at its version; it needs about twice the room the store takes ({2 * size / 1e6:,.0f} MB) free on "
                "that disk (its new tables and indexes are written beside the old ones, into the -wal first)"
            ) from None

    # -- tasks ------------------------------------------------------------------------------------

    async def create_task(self, task: NewTask) -> Task:
        # Group commit: submissions that arrive while the writer is busy are created together, in one
        # transaction with one fsync, each under its own savepoint (a refused one does not undo the others).
        created: Future[Task] = Future()
        queued = (task, created, time.monotonic())
        self._to_create.append(queued)
        try:
            # The writer may be held by another process's lock (each of the engine's writes ahead of this one
            # waits its busy timeout): the call is answered within LOCK_WAIT_SECONDS all the same.
            async with asyncio.timeout(LOCK_WAIT_SECONDS):
                await self._run(self._create_queued)  # makes this task, or finds it made by an earlier call's group
        except BaseException as exc:
            try:  # refused (the file gone, say) or out of time before a group took it: no later group makes it
                self._to_create.remove(queued)
            except ValueError:  # another call's group took it meanwhile: that group's answer is this call's (its
                return await asyncio.wrap_future(created)  # wait for the lock is bounded by this call's arrival)
            if isinstance(exc, TimeoutError):
                raise StoreError(_LOCKED.format(LOCK_WAIT_SECONDS)) from None
            raise
        return created.result(timeout=0)

    def _create_queued(self) -> None:
        group: list[tuple[NewTask, Future[Task]]] = []
        waited_since = time.monotonic()
        while self._to_create:
            task, created, queued = self._to_create.popleft()
            if time.monotonic() - queued >= LOCK_WAIT_SECONDS:  # its caller may be gone: not made after all
                created.set_exception(StoreError(_LOCKED.format(LOCK_WAIT_SECONDS)))
            else:
                group.append((task, created))
                waited_since = min(waited_since, queued)
        if not group:
            return
        db = self.db
        # No longer than LOCK_WAIT_SECONDS from the first call's arrival for the lock another process holds.
        left = LOCK_WAIT_SECONDS - (time.monotonic() - waited_since)
        db.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
        # Every answer waits for the COMMIT: one may rest on another's rows (the same idempotency key twice in the
        # group, or a quota another filled), and a failed COMMIT undoes them all.
        answers: list[tuple[Future[Task], str | Task | Exception]] = []
        try:
            db.execute("PRAGMA synchronous=FULL")  # durable before any of these task ids is returned
            db.execute("BEGIN IMMEDIATE")
            for task, created in group:
                db.execute("SAVEPOINT submission")
                try:
                    result = _create(db, task)
                except (ValueError, TypeError, OverflowError) as exc:  # its values, refused before SQLite ran
                    # them (a lone surrogate, say): this submission fails, not the others of its group (other
                    # users' calls failed with a tester's '\ud800' in one user's idempotency key).
                    db.execute("ROLLBACK TO submission")
                    db.execute("RELEASE submission")
                    answers.append((created, exc))
                    continue
                if result is None:
                    db.execute("ROLLBACK TO submission")  # first: the message tells the usage before this call
                    answers.append((created, QuotaExceeded(_quota_message(db, task))))
                else:
                    answers.append((created, result))  # a task id made, or the task of its idempotency key
                db.execute("RELEASE submission")
            db.execute("COMMIT")
            for created, answer in answers:
                if isinstance(answer, Exception):
                    created.set_exception(answer)
                elif isinstance(answer, Task):
                    created.set_result(answer)
                else:  # read back as committed
                    row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (answer,)).fetchone()
                    created.set_result(task_from_row(row))
        except BaseException as exc:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                db.execute("ROLLBACK")
            failure = self._error(exc) if isinstance(exc, sqlite3.Error) else exc
            for _, created in group:  # the ones not answered yet were not committed
                if not created.done():
                    created.set_exception(failure)
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_SECONDS * 1000)}")

    async def get_task(self, task_id: str, username: str | None = None) -> Task | None:
        def get(db: sqlite3.Connection) -> Task | None:
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None or (username is not None and row[1] != username):
                return None
            return task_from_row(row)

        reader = self._reader
        if reader is not None:
            try:
                return get(reader)
            except sqlite3.Error:
                pass  # busy for a moment (a checkpoint), or worse: the writer's thread asks again, and says what
        return await self._run(lambda: get(self.db))

    async def task_counts(self, task_id: str) -> TaskCounts:
        def counts() -> TaskCounts:
            rows = self.db.execute(
                "SELECT state, COUNT(*) FROM items WHERE task_id = ? GROUP BY state", (task_id,)
            ).fetchall()
            return TaskCounts(**{state: count for state, count in rows})

        return await self._run(counts)

    async def node_counts(self, task_id: str) -> dict[str, TaskCounts]:
        return await self._run(lambda: node_counts_from_rows(self.db.execute(_NODE_COUNTS, (task_id,))))

    async def task_detail(
        self, task_id: str, *, offset: int = 0, limit: int = 1000, state: ItemState | None = None
    ) -> TaskDetail | None:
        def detail(db: sqlite3.Connection) -> TaskDetail | None:  # one read transaction: one moment
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            nodes = node_counts_from_rows(db.execute(_NODE_COUNTS, (task_id,)))
            page = _ITEMS_PAGE if state is None else _ITEMS_PAGE_IN_STATE
            args = (task_id, limit, offset) if state is None else (task_id, limit, offset, state.value)
            items = [item_from_row(r) for r in db.execute(page, args)] if limit else []
            return TaskDetail(task_from_row(row), nodes, items)

        return await self._read(detail)

    async def list_tasks(self, username: str, where: TaskFilter) -> list[Task]:
        # The deadline from the call, not from the read's start: lists that wait for the reads' threads behind
        # others count that wait (five slow lists at once were answered after 2, 4, 6, 8 and 10 s, a task view
        # behind them after 10 s: a re-tester's).
        def tasks(db: sqlite3.Connection) -> list[Task]:
            sql = [f"SELECT {TASK_COLUMNS} FROM tasks WHERE username = ?"]
            args: list[object] = [username]
            if where.status is not None:
                sql.append("AND status = ?")
                args.append(int(where.status))
            if where.kind is not None:
                sql.append("AND kind = ?")
                args.append(where.kind.value)
            if where.since is not None:
                sql.append("AND created_at >= ?")
                args.append(where.since)
            if where.until is not None:
                sql.append("AND created_at < ?")
                args.append(where.until)
            if where.url_contains:
                sql.append("AND EXISTS (SELECT 1 FROM items WHERE items.task_id = tasks.id AND instr(url, ?) > 0)")
                args.append(where.url_contains)
            if where.after is not None:
                # Said so that the index (username, created_at) finds the page's first task by a range.
                sql.append("AND created_at <= ? AND (created_at < ? OR id > ?)")
                args += [where.after.created_at, where.after.created_at, where.after.task_id]
            sql.append("ORDER BY created_at DESC, id LIMIT ? OFFSET ?")
            args += [where.limit, where.offset]
            read_from = time.monotonic()
            if read_from > deadline:
                raise ListTooLong(LIST_SECONDS, waited=True)
            db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            try:
                return [task_from_row(r) for r in db.execute(" ".join(sql), args).fetchall()]
            except sqlite3.OperationalError as exc:
                if str(exc) != "interrupted":
                    raise
                raise list_stopped(deadline, read_from, LIST_SECONDS) from None
            finally:
                db.set_progress_handler(None, 0)

        async with self._list_turns.turn(username, LIST_SECONDS) as deadline:
            return await self._read(tasks, self._lists)

    async def get_tasks(self, username: str, task_ids: Sequence[str]) -> list[Task]:
        def tasks(db: sqlite3.Connection) -> list[Task]:
            rows = db.execute(_TASKS_BY_ID, (_json(list(task_ids)), username)).fetchall()
            found = {row[0]: task_from_row(row) for row in rows}
            return [found[task_id] for task_id in task_ids if task_id in found]

        # A read beside the writer: behind the engine's writes, another process's lock kept it 15-30 s (a tester's).
        return await self._read(tasks)

    async def cancel_task(self, task_id: str, username: str | None, now: float) -> Cancel | None:
        def cancel() -> Cancel | None:
            db = self.db
            with _write_transaction(db):
                owner = db.execute("SELECT username FROM tasks WHERE id = ?", (task_id,)).fetchone()
                if owner is None or (username is not None and owner[0] != username):
                    return None  # nothing written: the commit ends an empty transaction
                first = db.execute(_CANCELLED_BY, (canceller(username), task_id)).rowcount == 1
                _cancel_waiting(db, [task_id], now)
            row = db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return Cancel(task_from_row(row), first)

        return await self._write_within(cancel)

    async def cancelled_tasks(self, task_ids: Sequence[str]) -> set[str]:
        def cancelled() -> set[str]:
            sql = "SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(?)) AND reason = ?"
            return {row[0] for row in self.db.execute(sql, (_json(list(task_ids)), CANCELLED))}

        return await self._run(cancelled)

    async def list_items(self, task_id: str, *, offset: int = 0, limit: int = 1000) -> list[Item]:
        def items() -> list[Item]:
            return [item_from_row(r) for r in self.db.execute(_ITEMS_PAGE, (task_id, limit, offset))]

        return await self._run(items)

    async def usage(self, username: str, day: str) -> tuple[int, int]:
        def usage(db: sqlite3.Connection) -> tuple[int, int]:
            row = db.execute("SELECT urls, dirs FROM usage WHERE username = ? AND day = ?", (username, day)).fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

        # A read beside the writer: behind the engine's writes, a lock held by another process kept it 19-27 s.
        return await self._read(usage)

    # -- the engine's side ------------------------------------------------------------------------

    async def claim_due_items(
        self,
        worker: str,
        limit: int,
        now: float,
        lease_seconds: float,
        skip_nodes: Sequence[str] = (),
        skip_for: SkipFor | None = None,
    ) -> list[Claim]:
        def lease(rows: list[Any], user: str) -> list[Claim]:
            # A running item past its lease is reclaimed, said retaken: its attempt is recorded by the new
            # holder before it sends it (begin_attempt), not here (the dead holder may never have sent it).
            if rows:
                self.db.execute(_LEASE_ITEMS, (_json([r[0] for r in rows]), worker, now + lease_seconds))
            return [Claim(r[0], r[1], r[2], r[3], _ACTIONS[r[4]], r[5], bool(r[6]), user, bool(r[7])) for r in rows]

        def window(user: str, skip: list[str], want: int, after: ScanPoint) -> Window:
            scan = claim_scan(want, skip)
            found, first_due = self.db.execute(_DUE_WINDOW, (now, want, _json(skip), scan, *after, user)).fetchone()
            rows = _from_json(found)
            if len(rows) == want:  # found before the window's end (its rest unread: the usual case)
                return Window(lease(rows, user), scan, None, (first_due, rows[0][0]))
            # Short: the whole window was read; where it ended, read before the leases move the items.
            scanned, due, item = self.db.execute(_WINDOW_END, (now, *after, scan, user)).fetchone()
            return Window(lease(rows, user), scanned, None if item is None else (due, item))

        def take(ask: UserAsk, users: int) -> list[Claim]:
            user, want = ask
            skip = skipped_for(user, skip_nodes, skip_for)
            if not skip:
                (found,) = self.db.execute(_DUE_ITEMS, (now, want, user)).fetchone()
                return lease(_from_json(found), user)
            scans = self._scans.plan(f"{worker}\n{user}", want, skip, users)
            return run_plan(scans, lambda asked: window(user, skip, *asked))

        def shares(want: int) -> list[Claim]:
            users = _from_json(self.db.execute(_DUE_USERS, (now,)).fetchone()[0])
            return run_plan(self._fair.plan(users, want), lambda ask: take(ask, len(users)))

        def claim() -> list[Claim]:
            # One step and one transaction for the whole claim, every user's share in it: a step per user made
            # the claims wait for the event loop between them (a tester's 10 users beside a slow node: the live
            # node's items took twice as long).
            with _write_transaction(self.db):
                return run_plan(purge_first_plan(limit), step)

        def step(ask: ClaimShares | HandBack) -> list[Claim]:
            if isinstance(ask, ClaimShares):
                return shares(ask.want)
            return _hand_back_blocked(self.db, ask.claims, worker, now)

        return await self._run(claim)

    async def renew_leases(self, worker: str, item_ids: Sequence[int], until: float) -> set[int]:
        def renew() -> set[int]:
            rows = self.db.execute(
                "UPDATE items SET due_at = ? WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ? "
                "AND state = 'running' RETURNING id",
                (until, _json(list(item_ids)), worker),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._run(renew)

    async def begin_attempt(self, worker: str, item_id: int, attempts: int) -> bool:
        def begin() -> bool:
            return (
                self.db.execute(
                    "UPDATE items SET attempts = ? WHERE id = ? AND lease_owner = ? AND state = 'running'",
                    (attempts, item_id, worker),
                ).rowcount
                == 1
            )

        return await self._run(begin)

    async def bring_forward(self, now: float, beyond: float) -> int:
        def bring() -> int:
            with _write_transaction(self.db):
                query = "UPDATE items SET due_at = ? WHERE state IN ('pending', 'running') AND due_at > ?"
                return self.db.execute(query, (now, beyond)).rowcount

        return await self._run(bring)

    async def bring_webhooks_forward(self, now: float, beyond: float) -> int:
        def bring() -> int:
            with _write_transaction(self.db):
                return self.db.execute(_BRING_WEBHOOKS_FORWARD, (now, beyond)).rowcount

        return await self._run(bring)

    async def others_warms(self, worker: str, nodes: Sequence[str], now: float) -> dict[int, tuple[str, str]]:
        def warms() -> dict[int, tuple[str, str]]:
            rows = self.db.execute(_OTHERS_WARMS, (worker, _json(list(nodes)), now)).fetchall()
            return {item: (node, url) for item, node, url in rows}

        return await self._run(warms)

    async def put_off_node(self, node: str, until: float, note: str) -> int:
        def put_off(since: float) -> tuple[int, float]:
            ids, last, count = self.db.execute(_NEXT_TO_PUT_OFF, (node, until, since, PUT_OFF_STEP)).fetchone()
            if count:
                self.db.execute(_PUT_OFF, (until, note, ids))
            return count, last

        total, since = 0, 0.0
        while True:  # each step its own call: the store's other calls are answered in between
            count, last = await self._run(functools.partial(put_off, since))
            total += count
            if count < PUT_OFF_STEP:
                return total
            since = last  # the next step scans on from there, not past the other nodes' items again

    async def bring_node_forward(self, node: str, now: float) -> int:
        def bring() -> int:
            with _write_transaction(self.db):
                return self.db.execute(_BRING_NODE_FORWARD, (node, now)).rowcount

        return await self._run(bring)

    async def rewarm_node(
        self, node: str, ended_before: float, now: float, note: str, attempts_below: int, *, purges: bool = False
    ) -> Redone:
        def running() -> list[tuple[str, int | None]]:
            return self.db.execute(_RUNNING_TASKS, (CANCELLED,)).fetchall()

        def step(task_id: str, start: int, end: int) -> Redone | None:
            with _write_transaction(self.db):
                if self.db.execute(_STILL_RUNNING, (task_id, CANCELLED)).fetchone() is None:
                    return None  # it ended (or was cancelled) meanwhile
                args = (node, ended_before, now, note, attempts_below, task_id, start, end, purges)
                done = redone(self.db.execute(_REWARM, args).fetchall())
                if done.count:
                    self.db.execute(_UNCOUNT, (done.count, task_id))
                return done

        async def each(task_id: str, start: int, end: int) -> Redone | None:
            # Each step its own call: the store's other calls are answered in between.
            return await self._run(functools.partial(step, task_id, start, end))

        return await rewarm_in_steps(await self._run(running), each)

    async def release_leases(self, worker: str, item_ids: Sequence[int], now: float) -> Released:
        where = "id IN (SELECT value FROM json_each(?)) AND lease_owner = ? AND state = 'running'"
        return await self._run(functools.partial(self._hand_back, where, (_json(list(item_ids)), worker), now))

    async def release_all_leases(self, now: float) -> Released:
        """Make every leased item due again: only for a process that knows it is the sole engine."""

        def release_all() -> Released:
            with _write_transaction(self.db):
                retaken = self.db.execute(_RETAKE_RUNNING, (now, CANCELLED)).rowcount
                rest = self._handed_back(_LEASED_REST, (CANCELLED,), now)
            return Released(retaken + rest.items, rest.ended)

        return await self._run(release_all)

    def _hand_back(self, where: str, args: tuple[object, ...], now: float) -> Released:
        with _write_transaction(self.db):
            return self._handed_back(where, args, now)

    def _handed_back(self, where: str, args: tuple[object, ...], now: float) -> Released:
        """The leased items `where` says due again (at their task's creation, HANDED_BACK_DUE); those of tasks
        cancelled while they were under way fail instead, as the cancel would have failed them then (not sent
        again)."""
        handed = self.db.execute(
            f"UPDATE items SET state = 'pending', due_at = {_HANDED_BACK_DUE}, lease_owner = NULL WHERE {where} "
            "RETURNING task_id",
            (now, *args),
        ).fetchall()
        if not handed:
            return Released(0)
        cancelled = self.db.execute(
            "SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(?)) AND reason = ? AND status = 1",
            (_json(sorted({t for (t,) in handed})), CANCELLED),
        ).fetchall()
        return Released(len(handed), _cancel_waiting(self.db, [t for (t,) in cancelled], now))

    async def record_outcomes(self, worker: str, outcomes: Sequence[ItemOutcome], now: float) -> int:
        def record() -> int:
            with _write_transaction(self.db):
                return _apply_outcomes(self.db, worker, outcomes, now)

        return await self._run(record)

    async def claim_due_webhooks(self, now: float, limit: int, lease_seconds: float) -> list[Task]:
        def claim() -> list[Task]:
            rows = self.db.execute(
                f"UPDATE tasks SET webhook_due_at = ? WHERE id IN (SELECT id FROM tasks WHERE webhook_state = "
                f"'pending' AND webhook_due_at <= ? ORDER BY webhook_due_at LIMIT ?) RETURNING {TASK_COLUMNS}",
                (now + lease_seconds, now, limit),
            ).fetchall()
            return [task_from_row(r) for r in rows]

        return await self._run(claim)

    async def record_webhook(
        self, task_id: str, *, delivered: bool, error: str | None, retry_at: float | None, now: float
    ) -> None:
        state = "delivered" if delivered else ("pending" if retry_at is not None else "failed")

        def record() -> None:
            self.db.execute(
                "UPDATE tasks SET webhook_state = ?, webhook_attempts = webhook_attempts + 1, webhook_error = ?, "
                "webhook_due_at = ? WHERE id = ? AND webhook_state = 'pending'",
                (state, error, retry_at, task_id),
            )

        await self._run(record)

    async def release_webhooks(self, leases: Sequence[tuple[str, float]], due_at: float) -> int:
        def release() -> int:
            db = self.db
            with _write_transaction(db):  # one statement a webhook: their leases' ends bound exactly, not as JSON
                return sum(
                    db.execute(
                        "UPDATE tasks SET webhook_due_at = ? WHERE id = ? AND webhook_state = 'pending' "
                        "AND webhook_due_at = ?",
                        (due_at, task_id, leased_until),
                    ).rowcount
                    for task_id, leased_until in leases
                )

        return await self._run(release) if leases else 0

    async def delete_finished_before(self, cutoff: float, limit: int) -> int:
        def delete() -> int:
            db = self.db
            with _write_transaction(db):
                found = db.execute(
                    "SELECT id, total FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ? "
                    f"AND {NO_WEBHOOK_DUE} LIMIT ?",
                    (cutoff, limit),
                ).fetchall()
                ids: list[str] = []
                items = 0
                for task_id, total in found:
                    if ids and items + total > RETENTION_ITEMS:
                        break
                    ids.append(task_id)
                    items += total
                db.executemany("DELETE FROM items WHERE task_id = ?", [(i,) for i in ids])
                db.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in ids])
            return len(ids)

        return await self._run(delete)

    async def delete_usage_before(self, day: str, limit: int) -> int:
        def delete() -> int:
            with _write_transaction(self.db):
                return self.db.execute(_DELETE_USAGE, (day, limit)).rowcount

        return await self._run(delete)

    async def known_urls(self, prefix: str, limit: int) -> list[str]:
        def known(db: sqlite3.Connection) -> list[str]:
            # A range of the index items_url rather than LIKE: no escaping of % and _ in the prefix to get wrong.
            # URLs are ASCII (urls.py), which SQLite's lower() covers.
            rows = db.execute(KNOWN_URLS, (*known_search(prefix), limit)).fetchall()
            return [r[0] for r in rows]

        return await self._read(known)

    async def queue_depth(self) -> int:
        if self._damaged is not None:  # the count may still work (an index): the file is damaged all the same
            raise StoreDamaged(str(self._damaged))
        if self._refusing is not None:  # reads work, writes did not: is it over (space given back)?
            await self._write_probe()

        def depth() -> int:
            row = self.db.execute("SELECT COUNT(*) FROM items WHERE state IN ('pending', 'running')").fetchone()
            return int(row[0])

        return await self._run(depth)

    async def _write_probe(self) -> None:
        """A write to learn whether writes are taken again (WRITE_PROBE_BYTES written, then removed: a write of
        nothing may fit where the engine's do not): it ends the time of writes refused, or raises."""

        def probe() -> None:
            with _write_transaction(self.db):
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('write_probe', zeroblob(?))", (WRITE_PROBE_BYTES,))
                self.db.execute("DELETE FROM meta WHERE key = 'write_probe'")

        try:
            await self._run(probe)
        except StoreError as exc:
            raise StoreError(f"the store takes no writes: {exc}") from exc
        self._refusing = None

    async def next_due_at(self) -> float | None:
        def due() -> float | None:
            row = self.db.execute("SELECT MIN(due_at) FROM items WHERE state IN ('pending', 'running')").fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(due)

    @contextlib.asynccontextmanager
    async def listen_for_work(self, callback: Callable[[], None]) -> AsyncIterator[None]:
        """Calls nothing: one process works on a SQLite file, and its API wakes its engine directly."""
        yield


# Seconds a write waits for the lock another process holds (an operator's sqlite3 shell in a transaction, an `api`
# on the same file frozen mid-write): a submission is then answered "the store is unavailable", nothing made (it
# waited 69 s, and was made after its client had given up); the engine's writes are tried again.
LOCK_WAIT_SECONDS = 10.0
WAL_KEPT_BYTES = 16 * 1024 * 1024  # the -wal's size kept when it starts over after a checkpoint (journal_size_limit)
# Behind this process's own writes too (a tester's 4 submissions of 200,000 URLs at once were told "another process")
_BUSY = "(behind this process's own large writes, or locked by another process)"
# One line for submissions and cancels alike: the API's log says a store failing the same way once a minute (a
# tester's cancels and submissions in turn during a lock, told apart, logged a line each).
_LOCKED = f"sqlite: a call waited over {{:g}} s for the database {_BUSY}: nothing was done"


class _Withdrawn(Exception):
    """A write given up before it began (`_write_within`)."""


WAL_LOOKS = 0.5  # seconds a WAL-mode file without tables or -wal is looked at again (_not_without_its_wal)


def _make_owner_only(path: str) -> None:
    """Make the database file, when there is none, readable and writable by this user only (0600, whatever the
    umask: made by SQLite it was 0644), as its -wal and -shm, which SQLite makes with the file's own mode: it
    holds every user's URLs, and callback URLs with their tokens. A file there already keeps its mode (the
    operator's choice: `serve` warns when others can read it, store_cautions)."""
    # Made meanwhile by another process (its mode is that one's), or not makeable here: sqlite3.connect then
    # says why, in the words the store's errors are given.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _not_without_its_wal(path: str) -> None:
    """Refuse a database file in WAL mode that holds no table while no `-wal` is beside it: what edgewarm wrote
    is in a `-wal` left behind (the file was copied or moved without it; until SQLite's first checkpoint, some
    4 MB of writes, the file itself is a bare header). Opened, it would look new and get an empty schema: every
    task, quota and waiting item gone from sight, with no error. Another process creating the database at this
    moment shows the same for an instant (WAL mode set, its -wal not made yet): looked at again a few times
    over WAL_LOOKS seconds before refusing."""
    deadline = time.monotonic() + WAL_LOOKS
    while (why := _without_its_wal(path)) is not None:
        if time.monotonic() > deadline:
            raise why
        time.sleep(0.05)


def _header(path: str) -> tuple[bytes, int] | None:
    """The 100-byte header of the SQLite database file at `path`, and the file's size; None when it is absent (a
    new store) or unreadable (the open says so), or no SQLite database."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    return (header, size) if len(header) == 100 and header.startswith(b"SQLite format 3\x00") else None


def _wal_bytes(path: str) -> int:
    """The size of the `-wal` beside the database file at `path` (0 when there is none): the writes it holds."""
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def _without_its_wal(path: str) -> StoreError | None:
    found = _header(path)
    if found is None or found[0][18:20] != b"\x02\x02":
        return None  # not a database in WAL mode
    if _wal_bytes(path) > 0:
        return None
    # immutable: the file alone, no -wal or -shm looked for (nor made: a read-only open would leave them).
    with contextlib.closing(sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True)) as db:
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if tables:
        return None
    return StoreError(
        f"the SQLite database {path} is in WAL mode but holds no table, and {path}-wal is not beside it: its "
        "content is in that -wal, left where the file was copied or moved from. Put it back beside the file "
        '(or copy a running store with: sqlite3 FILE ".backup COPY")'
    )


def _writable(path: str) -> None:
    """Refuse a database this process cannot write (its folder made): on a read-only file system; its file,
    folder, -wal or -shm not writable by this user (left by a process of another user, root's, killed, they made
    every write fail with "attempt to write a readonly database", naming neither the file nor the cause); or
    with several names."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.statvfs(folder).f_flag & os.ST_RDONLY:  # not the user's rights: chmod would not help
        raise StoreError(f"the SQLite database {path} is on a read-only file system (mounted ro?)")
    for what, named in (("file", path), ("folder", folder), ("-wal file", path + "-wal"), ("-shm file", path + "-shm")):
        if os.path.exists(named) and not os.access(named, os.W_OK):
            raise StoreError(f"the SQLite database {path}: its {what} is not writable by this user (uid {os.getuid()})")
    if os.path.exists(path) and (links := os.stat(path).st_nlink) > 1:
        raise StoreError(
            f"the SQLite database {path} has {links} names (hard links): SQLite keeps a -wal beside each name, so "
            f"processes that open it by different names lose each other's writes; keep one (find / -xdev "
            f"-samefile {os.path.realpath(path)})"
        )


def _writable_if_there(path: str) -> None:
    """_writable, once its folder is there; else whether a start can make it (check-config said OK to a folder
    under a file, or under one this user may not write, and `serve` then exited "cannot make the folder": a
    newcomer's): check-config's."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        _writable(path)
        return
    above = folder
    while not os.path.exists(above):
        above = os.path.dirname(above)
    reason = "Not a directory" if not os.path.isdir(above) else None
    if reason is None and not os.access(above, os.W_OK | os.X_OK):
        reason = f"Permission denied ({above} is not writable by this user, uid {os.getuid()})"
    if reason is not None:
        raise StoreError(f"cannot make the folder {folder} for {path}: {reason}")


def file_refusal(path: str) -> StoreError | None:
    """What a start would refuse the SQLite file at `path` for, read without writing to it (check-config says it):
    no database, cut short, its -wal there without it or a stale one, or without its -wal (copied alone: an
    upgrade tester's, said OK), a schema of another version, or a file this process cannot write (a read-only
    mount passed the check, a tester's); or None."""
    for check in (*_BEFORE_OPENING, _not_without_its_wal, _schema_of_this_version, _writable_if_there):
        try:
            check(path)
        except StoreError as exc:
            return exc
    return None


def _not_replaying_a_stale_wal(path: str) -> None:
    """Refuse a database whose -wal was last written before the file was and which reads damaged with it: a
    file restored or copied in over a store that was not stopped cleanly, whose -wal SQLite would replay into
    it (a re-tester's backup, restored over a killed store: it started without a word, damaged). Checked
    read-only (`quick_check`, a read of every page: only in this case), so the file stays as it was; a -wal of
    its own, older than a checkpoint's write of the file, reads whole and is let be."""
    stale = _stale_wal(path)
    if not stale:
        return
    try:
        with contextlib.closing(sqlite3.connect(sqlite_uri(path, "mode=ro"), uri=True)) as db:
            found = [row[0] for row in db.execute("PRAGMA quick_check(1)")]
            newest = _newest_task(path)
            lost = newest is not None and db.execute("SELECT 1 FROM tasks WHERE id = ?", (newest,)).fetchone() is None
    except sqlite3.DatabaseError as exc:
        found, lost = [str(exc)], False
    if found != ["ok"]:
        said = " ".join(found[0].replace("*** in database main ***", "").split())  # one line
        raise StoreDamaged(f"sqlite: the database {path} reads damaged with its -wal ({said}){stale}")
    if lost:  # its own -wal holds the file's writes and later ones: never one that loses the file's newest task
        raise StoreDamaged(
            f"sqlite: the database {path} read with its -wal lacks the newest task the file alone holds ({newest}): "
            f"that -wal is another file's{stale}"
        )


def _newest_task(path: str) -> str | None:
    """The id of the newest task in the database file alone (its -wal not read), or None (none, or no tasks
    table): what a -wal of the file's own cannot lose, written before the file's last write (a tester's backup
    restored over a killed store read whole with the old store's -wal, its tasks gone, and was served)."""
    try:
        with contextlib.closing(sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True)) as alone:
            row = alone.execute("SELECT id FROM tasks ORDER BY rowid DESC LIMIT 1").fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else str(row[0])


def _a_sqlite_file(path: str) -> None:
    """Refuse a file that is there, not empty, and no SQLite database, before SQLite reads it ("file is not a
    database"), for check-config too (it said OK: a re-tester's text file)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return  # none yet: a new store (or unreadable: the open says why)
    if size and _header(path) is None and os.access(path, os.R_OK):
        raise StoreError(f"the file {path} is no SQLite database (it does not begin as one): is `store` that file?")


def _schema_of_this_version(path: str) -> None:
    """Refuse a database whose schema is of another edgewarm's version (an older one's: `db upgrade` first), or
    another application's (tables, no edgewarm schema), as a start would. Read-only: the file alone when no
    -wal holds writes (nothing made beside it), else with its -wal (a running service's; `db upgrade`'s
    version may be there still)."""
    if _header(path) is None:
        return  # none yet (a new store), or not a database: _a_sqlite_file says it
    options = "mode=ro" if _wal_bytes(path) > 0 else "mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(sqlite_uri(path, options), uri=True)) as db:
            version, in_the_way = _first_look(db, path)
    except sqlite3.Error:
        return  # unreadable now: the start says why
    if in_the_way:
        raise tables_in_the_way(path, in_the_way)
    schema_to_make(Opening.SERVICE, version, path)


def _not_a_wal_alone(path: str) -> None:
    """Refuse to make a new store where a `-wal` with writes is left without its database file (removed or moved
    under a running service, or not copied back with it): it holds the last writes of that file, which a new
    store beside it would never show (a tester's start made a new, empty store without a word)."""
    wal = _wal_bytes(path)
    if wal > 0 and (not os.path.exists(path) or os.path.getsize(path) == 0):
        raise StoreError(
            f"the SQLite database {path} is missing (or empty) but its {path}-wal of {wal} bytes is there: the last "
            "writes of a store whose file was removed or moved. Put the file back beside it; or, to start a new "
            "store, move the -wal away"
        )


def _not_cut_short(path: str) -> None:
    """Refuse a database file shorter than its header says it is (cut by a copy that did not finish, a full disk
    during a copy, a bad restore): opened, it worked until a statement read a missing page, then failed as
    "damaged" mid-run. Looked at only without a `-wal` holding writes (a checkpoint cut by a crash may leave the
    file short; its -wal has the pages and SQLite finishes it) and when the header's size is valid (SQLite 3.7+
    writes it; the version numbers at 92 and 24 agree)."""
    found = _header(path)
    if found is None or _wal_bytes(path) > 0:
        return
    header, size = found
    if header[92:96] != header[24:28]:
        return  # a size SQLite itself would not trust
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if pages and size < pages * page_size:
        raise StoreDamaged(
            f"the SQLite database {path} is cut short: {size} bytes where its header says {pages * page_size} "
            f"({pages} pages of {page_size}): a copy that did not finish, or a disk that filled during one. "
            "Restore it from a backup (or try sqlite3's .recover on a copy)"
        )


# What a start refuses the file at a path for before it opens it, in this order (_not_cut_short first: the next
# ones read the file's tables); file_refusal's too, for check-config.
_BEFORE_OPENING: tuple[Callable[[str], None], ...] = (
    _a_sqlite_file,
    _not_cut_short,
    _not_a_wal_alone,
    _not_replaying_a_stale_wal,
)


def _store_error(exc: sqlite3.Error, path: str) -> StoreError:
    """A SQLite error as the store's: a damaged file is named, with what to do (else retried as unavailable)."""
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
        return StoreDamaged(
            f"sqlite: the database {path} is damaged ({exc}): check it with sqlite3 {path} "
            f"'PRAGMA integrity_check', and restore it from a backup (or try sqlite3's .recover){_stale_wal(path)}"
        )
    if "unable to open" in str(exc):
        if (why := out_of_open_files()) is not None:
            return StoreError(f"sqlite: {exc}: {why}")
        if os.path.exists(path) and not os.access(path, os.R_OK):  # its mode or owner changed under the service
            return StoreError(
                f"sqlite: {exc}: the database {path} cannot be read by this user (uid {os.getuid()}): its mode or "
                "owner was changed? (a running service's reads open their connections as they need them)"
            )
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
        return StoreFull(
            f"sqlite: {exc}: the disk of the database {path} is full: nothing is written until space is freed "
            f"there{_wal_room(path)}"
        )
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
        return StoreError(
            f"sqlite: the database {path} is locked by another process (a sqlite3 shell in a transaction?): "
            f"a write waited {LOCK_WAIT_SECONDS:g} s for it"
        )
    return StoreError(f"sqlite: {exc}")


def _wal_room(path: str) -> str:
    """How much to free on a full disk: the -wal's size (its checkpoint writes its pages into the file before
    it is emptied) and WAL_KEPT_BYTES (the -wal grows again to that under load): freeing just more than the
    -wal's size filled the disk again at once, the figure said then doubled (a tester's 2.1 MB, then 4.2)."""
    if path == ":memory:":
        return ""
    wanted = _wal_bytes(path) + WAL_KEPT_BYTES
    return f" ({wanted / 1e6:,.0f} MB or more: the -wal's pages go into the file, and the -wal grows again)"


def _stale_wal(path: str) -> str:
    """What to say of a damaged database when the -wal beside it was last written before the file was: a file
    restored or copied in over a store that was not stopped cleanly, whose -wal SQLite then replayed into it
    (restoring the same file again did the same: an operator's)."""
    try:
        wal, file = os.stat(path + "-wal"), os.stat(path)
    except OSError:
        return ""
    # Its change time too: a restore by `mv` or `cp -p` keeps the backup's older write time (a re-tester's).
    if not wal.st_size or wal.st_mtime >= max(file.st_mtime, file.st_ctime):
        return ""
    return (
        f"; its -wal ({wal.st_size:,} bytes) was last written before the file was (or put in place): if the file was "
        "restored or copied in over a store not stopped cleanly, that -wal and the -shm are the old file's: stop "
        "edgewarm, move them away, then restore the file again"
    )


WRITE_PROBE_BYTES = 256 * 1024  # written (and removed) to learn whether a store that refused writes takes them again
# SQLite's primary result codes of a write the file or its disk refuses: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL.
_SQLITE_BUSY = 5  # "database is locked": another connection's write lock, held past the busy timeout
_SQLITE_FULL = 13
# And SQLITE_BUSY: another process's lock; then /readyz answered 200 to an `api` whose every submission waited
# 10 s and failed (a re-tester's). Each probes with a write until one is taken (queue_depth).
_WRITES_REFUSED = frozenset({8, 10, _SQLITE_FULL, _SQLITE_BUSY})
_ACTIONS = {a.value: a for a in ItemAction}
_BRING_WEBHOOKS_FORWARD = "UPDATE tasks SET webhook_due_at = ? WHERE webhook_state = 'pending' AND webhook_due_at > ?"
_AT_STAGE = "SELECT DISTINCT node, action FROM items WHERE task_id = ? AND seq = ? AND stage = ?"
_NODE_COUNTS = "SELECT node, state, COUNT(*) FROM items WHERE task_id = ? GROUP BY node, state ORDER BY MIN(id)"
# The first cancel of a running task says who.
_CANCELLED_BY = "UPDATE tasks SET cancelled_by = ? WHERE id = ? AND status = 1 AND reason IS NULL"
_ITEMS_PAGE = f"SELECT {ITEM_COLUMNS} FROM items WHERE task_id = ? ORDER BY seq, stage, id LIMIT ? OFFSET ?"
_ITEMS_PAGE_IN_STATE = (
    f"SELECT {ITEM_COLUMNS} FROM items WHERE task_id = ?1 AND state = ?4 ORDER BY seq, stage, id LIMIT ?2 OFFSET ?3"
)

# Claims: the first ?2 due items as one JSON array (one step); then their leases. No REAL columns travel as
# JSON (it would round them).
# The last column: a warm done again (models.Claim.rewarm).
_CLAIMED_COLUMNS = (
    "json_group_array(json_array(id, task_id, url, node, action, attempts, state = 'running', "
    f"coalesce(substr(error, 1, {len(WARMED_AGAIN)}) = '{WARMED_AGAIN}', 0)))"
)
# An item's user as the index items_user_due has it (UNNAMED: written before schema version 5).
_USER = f"coalesce(username, '{UNNAMED}')"
# The users with items due at ?1, as a JSON array: the users with items pending or running found by one step of
# the index items_user_due each (a loose index scan), not a read of their items, and each one's first open item
# by one more; none of that when the first open item of all (the index items_due) is not due: an idle poll is
# one index step however many users have open items. A claim asks only these for their shares.
_DUE_USERS = (
    f"WITH RECURSIVE open (name) AS (SELECT (SELECT {_USER} FROM items WHERE state IN ('pending', 'running') "
    f"ORDER BY {_USER} LIMIT 1) WHERE (SELECT due_at FROM items WHERE state IN ('pending', 'running') "
    f"ORDER BY due_at LIMIT 1) <= ?1 UNION ALL SELECT (SELECT {_USER} FROM items "
    f"WHERE state IN ('pending', 'running') AND {_USER} > open.name ORDER BY {_USER} LIMIT 1) FROM open "
    "WHERE open.name IS NOT NULL) SELECT json_group_array(name) FROM open WHERE name IS NOT NULL AND "
    f"(SELECT due_at FROM items WHERE state IN ('pending', 'running') AND {_USER} = open.name ORDER BY due_at "
    "LIMIT 1) <= ?1"
)
# Of user ?3's items, the first ?2 due.
_DUE_ITEMS = (
    f"SELECT {_CLAIMED_COLUMNS} FROM (SELECT id, task_id, url, node, action, attempts, state, error FROM items "
    f"WHERE state IN ('pending', 'running') AND {_USER} = ?3 AND due_at <= ?1 ORDER BY due_at, id LIMIT ?2)"
)
# A window of a claim that skips nodes: of user ?7's ?4 due items after (due_at, id) (?5, ?6), the first ?2
# but those of the nodes in ?3 (a JSON array), and the first one's due time (a column of its own: exact). Read
# lazily: it stops once ?2 are found.
_DUE_WINDOW = (
    f"SELECT {_CLAIMED_COLUMNS}, min(due_at) FROM (SELECT * FROM (SELECT id, task_id, url, node, action, attempts, "
    "state, error, due_at "
    f"FROM items WHERE state IN ('pending', 'running') AND {_USER} = ?7 AND due_at <= ?1 "
    "AND (due_at, id) > (?5, ?6) ORDER BY due_at, id LIMIT ?4) WHERE node NOT IN (SELECT value FROM json_each(?3)) "
    "LIMIT ?2)"
)
# Of that window (?1 now, user ?5, after (?2, ?3), ?4 items): how many items it holds and the last of them.
_WINDOW_END = (
    f"WITH w AS MATERIALIZED (SELECT due_at, id FROM items WHERE state IN ('pending', 'running') AND {_USER} = ?5 "
    "AND due_at <= ?1 AND (due_at, id) > (?2, ?3) ORDER BY due_at, id LIMIT ?4) "
    "SELECT (SELECT count(*) FROM w), last.due_at, last.id "
    "FROM (SELECT 1) LEFT JOIN (SELECT due_at, id FROM w ORDER BY due_at DESC, id DESC LIMIT 1) AS last"
)
# `state IN (…)` as the partial index items_due says it, so that the index finds the leases by their end.
_OTHERS_WARMS = (
    "SELECT id, node, url FROM items WHERE state IN ('pending', 'running') AND state = 'running' AND due_at > ?3 "
    "AND node IN (SELECT value FROM json_each(?2)) AND action = 'warm' AND lease_owner <> ?1"
)

# Due again at their task's creation (no later than ?1, now: a clock stepped back), not now: due now, a user's
# oldest task handed back at a restart went behind the tasks they submitted after it (a tester: the release
# being warmed ended last), as claims take a user's items by (due_at, id). Stages keep their order (a later
# stage's items wait for the earlier one's, whatever their due times).
_HANDED_BACK_DUE = "min(?1, (SELECT created_at FROM tasks WHERE tasks.id = items.task_id))"
# release_all_leases (?1 now, ?2 CANCELLED): the items under way when their engine died stay leased, due again:
# taken again as retaken, their next attempt recorded before it is sent (an item that kills its engine ends
# after max_attempts; handed back as pending, it was sent for ever at no cost); but those of tasks cancelled,
# and those leased yet pending, are handed back (_LEASED_REST).
_RETAKE_RUNNING = (
    f"UPDATE items SET due_at = {_HANDED_BACK_DUE} WHERE state IN ('pending', 'running') AND state = 'running' "
    "AND lease_owner IS NOT NULL AND task_id NOT IN (SELECT id FROM tasks WHERE reason = ?2 AND status = 1)"
)
_LEASED_REST = (
    "state IN ('pending', 'running') AND lease_owner IS NOT NULL "
    "AND (state = 'pending' OR task_id IN (SELECT id FROM tasks WHERE reason = ? AND status = 1))"
)

# get_tasks: `+username`, so that they are found by their ids (SQLite chose the index of a user's tasks and read
# all of them: 0.2-0.3 s for one of 617,000 tasks, on the writer's thread, every submission waiting behind it).
_TASKS_BY_ID = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT value FROM json_each(?)) AND +username = ?"

# PURGE_FIRST: whether a file purge, and a directory purge, is open; then the open file purges of the claimed
# warms' objects (?1: [node, purge key] pairs), the open directory purges of their nodes (?1).
# Each by the index items_open_purges (named: the planner must not read the table for a purge that is not there).
_OPEN_PURGE_KINDS = (
    "SELECT (SELECT 1 FROM items INDEXED BY items_open_purges WHERE action = 'purge' AND action <> 'warm' "
    f"AND state IN {OPEN_STATES} LIMIT 1), (SELECT 1 FROM items INDEXED BY items_open_purges "
    f"WHERE action = 'purge_dir' AND action <> 'warm' AND state IN {OPEN_STATES} LIMIT 1)"
)
_OPEN_FILE_PURGES = (
    "SELECT p.id, p.task_id, p.node, p.url, p.action, p.username FROM json_each(?1) AS k "
    "CROSS JOIN items AS p INDEXED BY items_open_purges ON p.action = 'purge' AND p.node = k.value ->> 0 "
    "AND p.purge_key = k.value ->> 1 "
    f"WHERE p.action <> 'warm' AND p.state IN {OPEN_STATES}"
)
_OPEN_DIR_PURGES = (
    "SELECT id, task_id, node, url, action, username FROM items INDEXED BY items_open_purges "
    "WHERE action = 'purge_dir' AND node IN (SELECT value FROM json_each(?1)) "
    f"AND action <> 'warm' AND state IN {OPEN_STATES}"
)
# ?1: [item, note, the purge it waits for] rows of warms leased to ?2 just now, due at ?3.
_HAND_BACK_BLOCKED = (
    "UPDATE items SET state = 'pending', lease_owner = NULL, due_at = ?3, error = d.value ->> 1, "
    "waits_for = d.value ->> 2 FROM json_each(?1) AS d "
    "WHERE items.id = d.value ->> 0 AND items.lease_owner = ?2 AND items.state = 'running'"
)
_WAITING = "state = 'pending' AND waits_for IS NOT NULL"
_ANY_WAITING = f"SELECT 1 FROM items INDEXED BY items_waits_for WHERE {_WAITING} LIMIT 1"
_RELEASE_WAITING = (
    f"UPDATE items INDEXED BY items_waits_for SET due_at = ?1, waits_for = NULL WHERE {_WAITING} "
    "AND waits_for IN (SELECT value FROM json_each(?2))"
)
_RELEASE_ORPHANS = (
    f"UPDATE items INDEXED BY items_waits_for SET due_at = ?1, waits_for = NULL WHERE {_WAITING} AND NOT EXISTS "
    f"(SELECT 1 FROM items AS p WHERE p.id = items.waits_for AND p.state IN {OPEN_STATES})"
)

_LEASE_ITEMS = (
    "UPDATE items SET state = 'running', lease_owner = ?2, due_at = ?3 WHERE id IN (SELECT value FROM json_each(?1))"
)

# Putting off a node's items (put_off_node), a step at a time in due order, from the due time ?3 the last step
# reached; `state IN (…)` as the partial index items_due says it, so that the index finds the due items.
PUT_OFF_STEP = 2_000
_NEXT_TO_PUT_OFF = (
    "SELECT json_group_array(id), max(due_at), count(*) FROM (SELECT id, due_at FROM items "
    "WHERE state IN ('pending', 'running') AND due_at < ?2 AND due_at >= ?3 AND state = 'pending' AND node = ?1 "
    "ORDER BY due_at LIMIT ?4)"
)
# A warm done again keeps saying so (its claim's `rewarm`) under the note.
_PUT_OFF = (
    f"UPDATE items SET due_at = ?1, error = CASE WHEN substr(error, 1, {len(WARMED_AGAIN)}) = '{WARMED_AGAIN}' "
    f"THEN '{WARMED_AGAIN} ' || ?2 ELSE ?2 END WHERE id IN (SELECT value FROM json_each(?3)) AND state = 'pending'"
)
# known_urls, in its order (TaskStore.known_urls), which the index items_url gives but among one URL's spellings.
KNOWN_URLS = (
    "SELECT DISTINCT url FROM items WHERE lower(url) >= ?1 AND lower(url) < ?2 AND substr(url, ?3, length(?4)) = ?4 "
    "AND action <> 'purge_dir' ORDER BY lower(url), url LIMIT ?5"
)
# Retention's removal of old days' quota counters (?1 the first day kept, ?2 rows at most).
_DELETE_USAGE = "DELETE FROM usage WHERE rowid IN (SELECT rowid FROM usage WHERE day < ? LIMIT ?)"
_BRING_NODE_FORWARD = (
    "UPDATE items SET due_at = ?2 WHERE state IN ('pending', 'running') AND due_at > ?2 AND state = 'pending' "
    "AND node = ?1"
)
# rewarm_node: the running tasks (not cancelled) and each one's largest URL position; then, a step at a time (?1
# node, ?2 ended before, ?3 now, ?4 note, ?5 attempts below, ?6 task, ?7-?8 its URL positions), the node's warms
# there by the items' task index.
_RUNNING_TASKS = (
    "SELECT id, (SELECT max(seq) FROM items WHERE task_id = tasks.id) FROM tasks "
    "WHERE status = 1 AND coalesce(reason, '') <> ?"
)
_STILL_RUNNING = "SELECT 1 FROM tasks WHERE id = ? AND status = 1 AND coalesce(reason, '') <> ?"
_REWARM = (
    "UPDATE items SET state = 'pending', due_at = ?3, lease_owner = NULL, http_status = NULL, cache_state = NULL, "
    "bytes = NULL, error = ?4, updated_at = ?3 WHERE task_id = ?6 AND seq >= ?7 AND seq < ?8 AND node = ?1 "
    "AND state = 'succeeded' AND updated_at < ?2 AND attempts < ?5 "
    "AND (action = 'warm' OR (?9 AND (SELECT kind FROM tasks WHERE id = ?6) = 'refresh')) "  # ?9: a refresh's purges
    "RETURNING url, action"
)
_UNCOUNT = "UPDATE tasks SET succeeded = succeeded - ? WHERE id = ?"

# Outcomes (?1: rows of _outcome_row as JSON, ?2: now, ?3: the worker, ?4: CANCELLED) apply to the items still
# leased to the worker. A retry of an item whose task was cancelled meanwhile fails instead: the task is ending.
_OUTCOMES = (
    "(SELECT value ->> 0 AS id, value ->> 1 AS state, value ->> 2 AS due, value ->> 3 AS attempts, "
    "value ->> 4 AS http_status, value ->> 5 AS cache_state, value ->> 6 AS bytes, value ->> 7 AS error "
    "FROM json_each(?1)) AS o"
)
_LEASED = "items.id = o.id AND items.lease_owner = ?3 AND items.state = 'running'"
_CANCELLED_RETRY = "o.state = 'pending' AND (SELECT reason FROM tasks WHERE tasks.id = items.task_id) = ?4"
_NEW_STATE = f"CASE WHEN {_CANCELLED_RETRY} THEN 'failed' ELSE o.state END"
_APPLICABLE_OUTCOMES = (  # what _RECORD_OUTCOMES will write, as one JSON array of [task, seq, new state, id]
    f"SELECT json_group_array(json_array(items.task_id, items.seq, {_NEW_STATE}, items.id)) "
    f"FROM items JOIN {_OUTCOMES} ON {_LEASED}"
)
# Of the tasks in ?1 (a JSON array of ids), the ones with stages, as a JSON array. Every URL of a task has its
# items at the same stages, so its first URL's items tell, found by the index on (task_id, seq, stage) in a
# few steps whatever the task's size (asking for a waiting item read every item of a task that had none left
# near its start: a batch of outcomes of a task of 150,000 items took 30-50 ms more).
_STAGED_TASKS = (
    "SELECT json_group_array(t.value) FROM json_each(?) AS t WHERE EXISTS (SELECT 1 FROM items "
    "WHERE task_id = t.value AND seq = (SELECT min(seq) FROM items WHERE task_id = t.value) AND stage > 0)"
)
# ?1: rows of [task, succeeded added, failed added].
_ADD_COUNTS = (
    "UPDATE tasks SET succeeded = succeeded + c.value ->> 1, failed = failed + c.value ->> 2 "
    "FROM json_each(?) AS c WHERE tasks.id = c.value ->> 0"
)
_RECORD_OUTCOMES = (
    f"UPDATE items SET state = {_NEW_STATE}, error = CASE WHEN {_CANCELLED_RETRY} THEN ?4 ELSE o.error END, "
    "due_at = o.due, lease_owner = NULL, attempts = o.attempts, http_status = o.http_status, "
    f"cache_state = o.cache_state, bytes = o.bytes, updated_at = ?2 FROM {_OUTCOMES} WHERE {_LEASED}"
)


def _json(rows: object) -> str:
    """Many rows as one statement parameter, read back with json_each."""
    return orjson.dumps(rows).decode()


def _from_json(text: str) -> list[Any]:
    """Rows (or values) that SQLite's json_group_array gathered into one value: one step instead of one per row."""
    rows: list[Any] = orjson.loads(text)
    return rows


@contextlib.contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock at once) … COMMIT; on any error, ROLLBACK unless SQLite has rolled back
    already (a full disk)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _version_of(db: sqlite3.Connection, path: str) -> int:
    """The schema version of the database `db` (at `path`, for the message); 0: none."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(meta)")}
    if not {"key", "value"} <= columns:
        return 0  # no table meta, or another application's: refused by its name (_in_the_way)
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreError(
            f"the SQLite database {path}: its schema_version is {row[0]!r}, not a number (damaged, or not edgewarm's)"
        ) from None


def _first_look(db: sqlite3.Connection, path: str) -> tuple[int, list[str]]:
    """The schema version and the tables in the way (`_in_the_way`), read in one transaction: read apart, another
    process's new schema, committed between the two reads, was taken for another application's tables (four
    processes opening a new file at once: 11 of 200 new files refused by one of them). check-config's look too."""
    db.execute("BEGIN")
    try:
        version = _version_of(db, path)
        return version, _in_the_way(db, version)
    finally:
        db.execute("ROLLBACK")


def _in_the_way(db: sqlite3.Connection, version: int) -> list[str]:
    """The tables of a database without edgewarm's schema (`version` 0): another application's, which edgewarm's
    are not added to (they were, beside a table of its own: a re-tester's). SQLite's own (sqlite_…) aside."""
    if version:
        return []
    sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    return [name for (name,) in db.execute(sql)]


def _enable_wal(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch to WAL. While another connection switches a new file too, SQLite answers "locked" at once
    instead of waiting (its busy timeout does not cover this): try again until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _statements(script: str) -> list[str]:
    """The statements of a migration script, split where sqlite3 sees a complete one end."""
    statements: list[str] = []
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statements.append(script[start : end + 1].strip())
            start = end + 1
    if script[start:].strip():
        statements.append(script[start:].strip())
    return statements


def _create(db: sqlite3.Connection, task: NewTask) -> Task | str | None:
    """Charge the quota and insert one task with its items, inside the caller's transaction.

    Returns the id of the task made, the earlier task with the same idempotency key, or None when the quota
    does not allow it (the caller rolls its charge back).
    """
    q = task.quota
    if task.idempotency_key is not None:
        earlier = db.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE username = ? AND idempotency_key = ?",
            (task.username, task.idempotency_key),
        ).fetchone()
        if earlier is not None:
            return task_from_row(earlier)
    charged = db.execute(
        "INSERT INTO usage (username, day, urls, dirs) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (username, day) DO UPDATE SET urls = urls + excluded.urls, dirs = dirs + excluded.dirs "
        "WHERE (excluded.urls = 0 OR usage.urls + excluded.urls <= ?) "
        "AND (excluded.dirs = 0 OR usage.dirs + excluded.dirs <= ?) "
        "RETURNING urls",
        (task.username, q.day, q.urls, q.dirs, q.urls_limit, q.dirs_limit),
    ).fetchone()
    if charged is None or q.urls > q.urls_limit or q.dirs > q.dirs_limit:
        return None
    db.execute(
        "INSERT INTO tasks (id, username, kind, created_at, total, idempotency_key, callback_url) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (task.id, task.username, task.kind.value, task.created_at, len(task.items), task.idempotency_key,
         task.callback_url),
    )  # fmt: skip
    # One statement for the items (executemany is a step per row, and each step hands the GIL over).
    db.execute(
        "INSERT INTO items (task_id, seq, stage, url, node, action, state, due_at, username, purge_key) "
        "SELECT ?1, value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, "
        "CASE WHEN value ->> 1 = 0 THEN 'pending' ELSE 'waiting' END, ?2, ?4, value ->> 5 FROM json_each(?3)",
        (
            task.id,
            task.created_at,
            _json([(i.seq, i.stage, i.url, i.node, i.action.value, purge_key(i.url, i.action)) for i in task.items]),
            task.username,
        ),
    )
    if not task.items:
        _finish_tasks(db, [task.id], task.created_at)
    return task.id


def _quota_message(db: sqlite3.Connection, task: NewTask) -> str:
    q = task.quota
    row = db.execute("SELECT urls, dirs FROM usage WHERE username = ? AND day = ?", (task.username, q.day)).fetchone()
    return q.refusal(row[0], row[1]) if row else q.refusal(0, 0)


def _apply_outcomes(db: sqlite3.Connection, worker: str, outcomes: Sequence[ItemOutcome], now: float) -> int:
    first = {o.item_id: o for o in reversed(outcomes)}.values()  # an item's first outcome in the batch
    params = (_json([_outcome_row(o, now) for o in first]), now, worker, CANCELLED)
    # The batch travels as one JSON array and each statement answers in one row: a few steps per batch, not
    # one per item (each step hands the GIL to the event loop and waits to get it back: docs/benchmarks.md).
    written = _from_json(db.execute(_APPLICABLE_OUTCOMES, params).fetchone()[0])
    db.execute(_RECORD_OUTCOMES, params)
    finals: dict[str, list[int]] = {}  # task -> [succeeded, failed] added
    advanced: set[tuple[str, int]] = set()  # (task, seq) whose stage finished or failed
    ended: list[int] = []
    for task_id, seq, state, item_id in written:
        if state == "pending":
            continue
        counts = finals.setdefault(task_id, [0, 0])
        counts[0 if state == "succeeded" else 1] += 1
        advanced.add((task_id, seq))
        ended.append(item_id)
    stage_failed = False
    if advanced:
        # Tasks with stages release or fail their next stage; the others skip the gate.
        (staged,) = db.execute(_STAGED_TASKS, (_json(list(finals)),)).fetchone()
        gated = set(_from_json(staged))
        for task_id, seq in advanced:
            if task_id in gated and (skipped := _advance_stage(db, task_id, seq, now)):
                finals[task_id][1] += skipped
                stage_failed = True
    _release_waiting(db, ended, now, orphans=stage_failed)
    if finals:
        db.execute(_ADD_COUNTS, (_json([[task_id, ok, failed] for task_id, (ok, failed) in finals.items()]),))
    _finish_tasks(db, list(finals), now)
    return len(written)


def _outcome_row(o: ItemOutcome, now: float) -> tuple[object, ...]:
    """An outcome as a row of _RECORD_OUTCOMES: a failure with a retry time goes back to pending, due then."""
    if o.retry_at is not None and not o.succeeded:
        state, due = "pending", o.retry_at
    else:
        state, due = ("succeeded" if o.succeeded else "failed"), now
    return (o.item_id, state, due, o.attempts, o.http_status, o.cache_state, o.bytes, o.error)


def _cancel_waiting(db: sqlite3.Connection, task_ids: list[str], now: float) -> tuple[Task, ...]:
    """Cancel tasks: their items that wait in the store fail, said cancelled; each task ends once all its
    items have (those under way end as they come back). Returns the tasks that ended by it."""
    if not task_ids:
        return ()
    for task_id in task_ids:
        failed = db.execute(
            "UPDATE items SET state = 'failed', error = ?, lease_owner = NULL, updated_at = ? "
            "WHERE task_id = ? AND state IN ('waiting', 'pending')",
            (CANCELLED, now, task_id),
        ).rowcount
        db.execute(
            "UPDATE tasks SET failed = failed + ?, reason = ? WHERE id = ? AND status = 1", (failed, CANCELLED, task_id)
        )
    _release_waiting(db, [], now, orphans=True)  # the warms that waited for the purges cancelled
    _finish_tasks(db, task_ids, now)
    ended = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT value FROM json_each(?)) AND finished_at = ?"
    return tuple(task_from_row(row) for row in db.execute(ended, (_json(task_ids), now)))


class _ReadThreads:
    """Threads for reads, each with a read-only connection of its own (made at its first read)."""

    def __init__(self, name: str, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

    def connection(self, uri: str) -> sqlite3.Connection:
        """This thread's connection to the database at `uri`."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            self._connections.append(db)
        return db

    def close(self) -> None:
        """Wait for the reads under way, then close the connections."""
        self.executor.shutdown(wait=True)
        for db in self._connections:
            db.close()
        self._connections.clear()


def _hand_back_blocked(db: sqlite3.Connection, claims: list[Claim], worker: str, now: float) -> list[Claim]:
    """Hand back, unsent and due DEFER_SECONDS later, the warms among `claims` (just leased to `worker`) that an
    earlier task's open purge holds back (PURGE_FIRST); returns them. One step of a small index when no purge is
    open."""
    if not claims:
        return []
    files, dirs = db.execute(_OPEN_PURGE_KINDS).fetchone()
    rows = db.execute(_OPEN_FILE_PURGES, (_json(purge_keys(claims)),)).fetchall() if files else []
    if dirs:
        rows += db.execute(_OPEN_DIR_PURGES, (_json(warm_nodes(claims)),)).fetchall()
    blocked = blocking_purges(claims, [OpenPurge(r[0], r[1], r[2], r[3], _ACTIONS[r[4]], r[5]) for r in rows])
    if blocked:
        db.execute(_HAND_BACK_BLOCKED, (_json(hand_backs(claims, blocked)), worker, now + DEFER_SECONDS))
    return [claim for claim in claims if claim.item_id in blocked]


def _release_waiting(db: sqlite3.Connection, ended: list[int], now: float, *, orphans: bool = False) -> int:
    """Make due at `now` the warms handed back for a purge among the items `ended` (PURGE_FIRST); with `orphans`,
    those whose purge is no longer open whatever ended it (a cancel, a failed stage). One step of a small index
    when none waits."""
    if db.execute(_ANY_WAITING).fetchone() is None:
        return 0
    count = db.execute(_RELEASE_WAITING, (now, _json(ended))).rowcount if ended else 0
    if orphans:
        count += db.execute(_RELEASE_ORPHANS, (now,)).rowcount
    return count


def _finish_tasks(db: sqlite3.Connection, task_ids: list[str], now: float) -> None:
    """End the tasks whose items are all final: 0 when all succeeded and none was cancelled, else 2."""
    if task_ids:
        db.execute(
            "UPDATE tasks SET status = CASE WHEN failed = 0 AND reason IS NULL THEN 0 ELSE 2 END, finished_at = ?1, "
            "webhook_state = CASE WHEN callback_url IS NOT NULL THEN 'pending' END, "
            "webhook_due_at = CASE WHEN callback_url IS NOT NULL THEN ?1 END "
            "WHERE id IN (SELECT value FROM json_each(?2)) AND status = 1 AND succeeded + failed >= total",
            (now, _json(task_ids)),
        )


def _advance_stage(db: sqlite3.Connection, task_id: str, seq: int, now: float) -> int:
    """Release the next stage of one URL once every earlier item has ended, or fail what an earlier failure
    stops (STAGE_GATE). Returns the items failed."""
    failed_count = 0
    for _ in range(MAX_STAGES):
        (stage,) = db.execute(
            "SELECT MIN(stage) FROM items WHERE task_id = ? AND seq = ? AND state = 'waiting'", (task_id, seq)
        ).fetchone()
        if stage is None:
            break
        earlier = db.execute(
            "SELECT node, state, action FROM items WHERE task_id = ? AND seq = ? AND stage < ?", (task_id, seq, stage)
        ).fetchall()
        at_stage = db.execute(_AT_STAGE, (task_id, seq, stage)).fetchall()
        here = {node for node, _ in at_stage}
        purges = all(action != "warm" for _, action in at_stage)
        # A failed warm does not stop a later purge (STAGE_GATE).
        failed_on = {node for node, state, action in earlier if state == "failed" and not (purges and action == "warm")}
        if below := sorted(failed_on - here):  # an earlier tier failed: every waiting item of the URL fails
            failed_count += db.execute(
                "UPDATE items SET state = 'failed', error = ?, updated_at = ? "
                "WHERE task_id = ? AND seq = ? AND state = 'waiting'",
                (f"{NOT_ATTEMPTED}{', '.join(below)}", now, task_id, seq),
            ).rowcount
            break
        for node in sorted(failed_on & here):
            failed_count += db.execute(
                "UPDATE items SET state = 'failed', error = ?, updated_at = ? "
                "WHERE task_id = ? AND seq = ? AND stage = ? AND node = ? AND state = 'waiting'",
                (f"{NOT_ATTEMPTED}{node}", now, task_id, seq, stage, node),
            ).rowcount
        open_on = {node for node, state, _ in earlier if state in ("pending", "running")}
        if open_on - here:  # an earlier tier's item under way: the whole stage waits
            break
        # Another node of its tier holds none of it (STAGE_GATE): each node's own earlier items only.
        released = db.execute(
            "UPDATE items SET state = 'pending', due_at = ? WHERE task_id = ? AND seq = ? AND stage = ? "
            "AND state = 'waiting' AND node NOT IN (SELECT value FROM json_each(?))",
            (now, task_id, seq, stage, _json(sorted(open_on))),
        ).rowcount
        if released or open_on:
            break  # else every item of this stage failed: on to the next
    return failed_count
