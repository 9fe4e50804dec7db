"""Operator commands' reads of the store (cli/admin.py)."""

from __future__ import annotations

from typing import Any

import pytest

from edgewarm.cli import admin
from edgewarm.models import ItemAction, NewItem, NewTask, QuotaCharge, Task, TaskFilter, TaskKind
from edgewarm.store import TaskStore, open_store

pytestmark = pytest.mark.anyio


def task(n: int, user: str = "u") -> NewTask:
    item = NewItem(0, f"http://www.example.test/{n}", "edge-1", ItemAction.WARM, 0)
    quota = QuotaCharge("20260101", 1, 0, 10**9, 50)
    return NewTask(f"00000000-0000-4000-8000-{n:012d}", user, TaskKind.PREFETCH, 1000.0 + n, (item,), quota)


class EndsOneAfterTheFirstPage:
    """The store as another process shares it: the newest task is cancelled once the first page is read."""

    def __init__(self, store: TaskStore, newest: str) -> None:
        self.store, self.newest, self.pages = store, newest, 0

    async def list_tasks(self, username: str, where: TaskFilter) -> list[Task]:
        page = await self.store.list_tasks(username, where)
        self.pages += 1
        if self.pages == 1:
            await self.store.cancel_task(self.newest, None, 2000.0)
        return page

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_users_running_tasks_are_each_read_once_while_one_ends_between_the_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`admin cancel --user` reads the running tasks by pages, each after the last page's last task: a task
    that ends between two pages moves no other out of them (stepping an offset, the next page began one task
    later: the task after the first page was not read, not cancelled)."""
    monkeypatch.setattr(admin, "PAGE", 2)
    async with open_store("memory://") as store:
        for n in range(1, 6):
            await store.create_task(task(n))
        await store.create_task(task(9, user="other"))
        newest = task(5).id
        found = await admin._running(EndsOneAfterTheFirstPage(store, newest), "u")  # type: ignore[arg-type]
    assert found == [task(n).id for n in range(1, 6)]
