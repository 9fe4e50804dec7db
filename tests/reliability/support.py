"""What the reliability suite shares: the long-run switch, a fixed clock and users, the in-process API (sync
and async), an in-process engine against any nodes, and readers of a store's raw tables.

`EDGEWARM_LONG=1` selects the long run: more fuzzing examples, more kills, a bigger task, a longer load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from edgewarm.api import create_app
from edgewarm.auth import sign
from edgewarm.config import Config, User, parse_config
from edgewarm.engine import Engine, Fetcher, NodeHealth
from edgewarm.models import Item, Task, TaskStatus
from edgewarm.service import Service
from edgewarm.store import TaskStore, open_store
from edgewarm.testing.service import start_service as start_service  # re-exported for the tests

T = TypeVar("T")

LONG = os.environ.get("EDGEWARM_LONG") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long run: set EDGEWARM_LONG=1")


def scale(fast: T, long: T) -> T:
    """`fast` in the normal run, `long` with EDGEWARM_LONG=1."""
    return long if LONG else fast


# 04:00 UTC is noon in Shanghai: the signature day is unambiguous.
NOW = datetime(2024, 3, 10, 4, 0, tzinfo=UTC).timestamp()
DAY = date(2024, 3, 10)
USER = "jcloud_00"
SECRET = "e7a31b1c5ea0efa9aa2f29c6559f7d61"
OTHER = "other"
OTHER_SECRET = "0123456789abcdef0123456789abcdef"
USER_DOMAINS = ("www.example.test", "*.img.example.test")
OTHER_DOMAINS = ("www.other.test",)

JD_CODES = frozenset({-1, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 15, 16, 17, 18, 20, 46, 47})


def signature(user: str = USER, secret: str = SECRET, day: date = DAY) -> str:
    return sign(user, secret, day)


def base_config(nodes: list[dict[str, Any]] | None = None, **sections: Any) -> dict[str, Any]:
    """A config document: USER and OTHER with quotas that never run out, three unreachable nodes by default."""
    data: dict[str, Any] = {
        "store": "memory://",
        "limits": {"urls_per_day": 10**12, "dirs_per_day": 10**12},
        "users": [
            {"name": USER, "secret": SECRET, "domains": list(USER_DOMAINS)},
            {"name": OTHER, "secret": OTHER_SECRET, "domains": list(OTHER_DOMAINS)},
        ],
        "nodes": nodes
        if nodes is not None
        else [
            {"name": "shield-1", "url": "http://127.0.0.1:9", "tier": "shield"},
            {"name": "edge-1", "url": "http://127.0.0.1:9"},
            {"name": "edge-2", "url": "http://127.0.0.1:9"},
        ],
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


# -- the store's raw tables ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Census:
    """Rows in the store: tasks, items, per-task item counts, quota charged."""

    tasks: int
    items: int
    usage_urls: int
    usage_dirs: int
    half_written: tuple[str, ...]  # tasks whose `total` differs from their number of item rows


CENSUS_SQL = (
    "SELECT (SELECT COUNT(*) FROM tasks), (SELECT COUNT(*) FROM items), "
    "(SELECT COALESCE(SUM(urls), 0) FROM usage), (SELECT COALESCE(SUM(dirs), 0) FROM usage)"
)
HALF_WRITTEN_SQL = (
    "SELECT t.id FROM tasks t LEFT JOIN (SELECT task_id, COUNT(*) AS n FROM items GROUP BY task_id) i "
    "ON i.task_id = t.id WHERE t.total != COALESCE(i.n, 0)"
)


def census_of(db: sqlite3.Connection) -> Census:
    tasks, items, urls, dirs = db.execute(CENSUS_SQL).fetchone()
    half = tuple(row[0] for row in db.execute(HALF_WRITTEN_SQL).fetchall())
    return Census(int(tasks), int(items), int(urls), int(dirs), half)


def sqlite_db(store: TaskStore) -> sqlite3.Connection:
    """The connection of a SQLite (or memory://) store. Use only while no store call is in flight."""
    db = getattr(store, "db", None)
    assert isinstance(db, sqlite3.Connection), "a SQLite store was expected"
    return db


@dataclass(frozen=True)
class Consistency:
    """Per task: total, counters, and items by state, read straight from a SQLite file."""

    tasks: dict[str, dict[str, Any]]

    def problems(self) -> list[str]:
        """Every way a task's counters disagree with its items (empty when all is well)."""
        out = []
        for task_id, t in self.tasks.items():
            states = t["states"]
            if t["total"] != sum(states.values()):
                out.append(f"{task_id}: total {t['total']} but {sum(states.values())} items")
            if t["succeeded"] != states.get("succeeded", 0):
                out.append(f"{task_id}: succeeded counter {t['succeeded']} but {states.get('succeeded', 0)} items")
            if t["failed"] != states.get("failed", 0):
                out.append(f"{task_id}: failed counter {t['failed']} but {states.get('failed', 0)} items")
        return out


def consistency(path: Path) -> Consistency:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tasks: dict[str, dict[str, Any]] = {}
        for task_id, total, succeeded, failed, status in db.execute(
            "SELECT id, total, succeeded, failed, status FROM tasks"
        ):
            tasks[task_id] = {"total": total, "succeeded": succeeded, "failed": failed, "status": status, "states": {}}
        for task_id, state, count in db.execute("SELECT task_id, state, COUNT(*) FROM items GROUP BY task_id, state"):
            tasks[task_id]["states"][state] = count
        return Consistency(tasks)
    finally:
        db.close()


def integrity(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


# -- the API in process ------------------------------------------------------------------------------------


@dataclass
class AsyncApi:
    client: httpx.AsyncClient
    store: TaskStore
    service: Service

    def census(self) -> Census:
        return census_of(sqlite_db(self.store))

    async def jd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def native(
        self, method: str, path: str, user: str = USER, sig: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"X-Edgewarm-Username": user, "X-Edgewarm-Signature": sig or signature()}
        return await self.client.request(method, path, headers=headers, **kw)


@contextlib.asynccontextmanager
async def running_api(config: Config, clock: Callable[[], float] = lambda: NOW) -> AsyncIterator[AsyncApi]:
    """The whole HTTP app on a memory:// store, reached through httpx's ASGI transport (no socket)."""
    async with open_store("memory://") as store:
        service = Service(config, store, clock=clock)
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://edgewarm.test") as client:
            yield AsyncApi(client, store, service)


class SyncApi:
    """`running_api` on an event loop of its own, for Hypothesis tests (which are synchronous)."""

    def __init__(self, config: Config, clock: Callable[[], float] = lambda: NOW) -> None:
        self.loop = asyncio.new_event_loop()
        self._context = running_api(config, clock)
        self.api = self.loop.run_until_complete(self._context.__aenter__())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=60))

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.run(self.api.client.request(method, path, **kw))

    def census(self) -> Census:
        return self.api.census()

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self._context.__aexit__(None, None, None))
        finally:
            self.loop.close()


# -- the engine in process ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """An engine and the API's service on one memory:// store, warming through the configured nodes."""

    config: Config
    store: TaskStore
    service: Service
    engine: Engine
    runner: asyncio.Task[None]
    created: list[str] = field(default_factory=list)

    @property
    def user(self) -> User:
        user = self.config.user(USER)
        assert user is not None
        return user

    async def submit(self, urls: list[str], *, refresh_first: bool = False) -> str:
        task = await self.service.submit_prefetch(self.user, urls, refresh_first=refresh_first)
        self.engine.wake()
        self.created.append(task.id)
        return task.id

    async def refresh_dir(self, directory: str) -> str:
        task = await self.service.submit_refresh(self.user, [directory], "dir")
        self.engine.wake()
        self.created.append(task.id)
        return task.id

    async def cancel(self, task_id: str) -> None:
        await self.service.cancel(self.user, task_id)

    async def stop(self, within: float = 10.0) -> None:
        """Stop the engine; AssertionError when it has not ended within `within` seconds."""
        self.engine.stop()
        done, _ = await asyncio.wait([self.runner], timeout=within)
        if not done:
            self.runner.cancel()
            await asyncio.gather(self.runner, return_exceptions=True)
            raise AssertionError(f"the engine did not stop within {within}s")
        self.runner.result()  # an engine that crashed fails the test

    async def wait(self, task_id: str, timeout: float = 30.0) -> tuple[Task, list[Item]]:
        """The task once ended (AssertionError after `timeout`), and its items."""
        deadline = time.monotonic() + timeout
        while True:
            task = await self.store.get_task(task_id)
            assert task is not None
            if task.status is not TaskStatus.IN_PROGRESS:
                return task, await self.store.list_items(task_id, limit=100_000)
            if self.runner.done():
                raise AssertionError(f"the engine stopped: {self.runner.exception()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still in progress after {timeout}s")
            await asyncio.sleep(0.02)

    async def items_when(self, task_id: str, ready: Callable[[list[Item]], bool], timeout: float = 10.0) -> list[Item]:
        """The task's items once `ready(items)` holds, or as they are after `timeout` (the caller asserts)."""
        deadline = time.monotonic() + timeout
        while True:
            items = await self.store.list_items(task_id, limit=100_000)
            if ready(items) or time.monotonic() > deadline:
                return items
            await asyncio.sleep(0.01)


FAST_ENGINE = {
    "max_attempts": 3,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "read_timeout": 1.0,
    "connect_timeout": 1.0,
    "poll_interval": 0.05,
    "grace_seconds": 0.5,
}


@contextlib.asynccontextmanager
async def engine_rig(
    nodes: list[dict[str, Any]],
    engine: dict[str, Any] | None = None,
    stop_within: float = 10.0,
    sole: bool = True,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Rig]:
    """Run an Engine on `nodes` (`sole`: as the store's only engine; `clock`: its wall clock and the API's); on
    exit stop it and require it to end within `stop_within` seconds."""
    config = parse_config(base_config(nodes, engine={**FAST_ENGINE, **(engine or {})}))
    async with open_store("memory://") as store, Fetcher(config.engine, NodeHealth()) as fetcher:
        worker = Engine(config, store, fetcher, sole=sole, clock=clock)
        runner = asyncio.create_task(worker.run())
        service = Service(config, store, on_submit=worker.wake, on_cancel=worker.cancelled, clock=clock)
        rig = Rig(config, store, service, worker, runner)
        try:
            yield rig
        finally:
            if not runner.done():
                await rig.stop(stop_within)


# -- small helpers ----------------------------------------------------------------------------------------

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def is_task_id(value: object) -> bool:
    return isinstance(value, str) and bool(UUID4.match(value)) and str(uuid.UUID(value)) == value


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(interval)


@contextlib.contextmanager
def timed(limit: float, what: str) -> Iterator[None]:
    """Fail when the block takes longer than `limit` seconds (after it ends: the bound is in the block)."""
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed <= limit, f"{what} took {elapsed:.1f}s, more than {limit}s"


# -- `edgewarm serve` as a process ----------------------------------------------------------------------------------


def real_signature(user: str, secret: str, offset_days: int = 0) -> str:
    """The signature of the caller's real date (Asia/Shanghai) moved by `offset_days`."""
    from datetime import timedelta

    from edgewarm.auth import today

    return sign(user, secret, today(datetime.now(UTC)) + timedelta(days=offset_days))


class PlainCalls:
    """Prefetch calls and native waits over plain HTTP, signed for the real date, every answer read as it comes
    (a full disk's -1 too): what the full-disk tests drive a service process with."""

    def __init__(self, http: httpx.Client, user: str, secret: str) -> None:
        self.http, self.user = http, user
        self.signature = real_signature(user, secret)

    def submit(self, n: int, prefix: str) -> dict[str, Any]:
        """A prefetch of `n` URLs under /`prefix`/ of www.example.test: JD's answer."""
        urls = [f"http://www.example.test/{prefix}/{i}" for i in range(n)]
        body = {"username": self.user, "signature": self.signature, "publish_urls": urls}
        response = self.http.post("/api/prefetch", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def wait(self, taskid: object, timeout: float = 30) -> dict[str, Any]:
        """The task's native view once it has ended, or after `timeout` seconds as it is."""
        headers = {"X-Edgewarm-Username": self.user, "X-Edgewarm-Signature": self.signature}
        view: dict[str, Any] = self.http.get(
            f"/v1/tasks/{taskid}/wait", params={"timeout": timeout}, headers=headers
        ).json()
        return view


def node_toml(name: str, url: str, tier: str = "edge", kind: str = "nginx") -> str:
    return f'[[nodes]]\nname = "{name}"\nurl = "{url}"\ntier = "{tier}"\nkind = "{kind}"\n'
