"""Retention: a round removes the tasks that ended before the cutoff, in bounded batches, and stops with them; and
the daily quota counters of the days before the window."""

from __future__ import annotations

import asyncio

import pytest

from edgewarm import retention
from edgewarm.config import Retention
from edgewarm.errors import StoreError
from edgewarm.models import ItemAction, ItemOutcome, NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.retention import first_day_kept, purge_old_tasks, run_retention
from edgewarm.store import TaskStore, open_store
from edgewarm.store import sqlite as store_sqlite

DAY = 86_400.0


def task(n: int, created_at: float, day: str = "20260101", user: str = "u") -> NewTask:
    item = NewItem(0, f"http://www.example.test/{n}", "edge-1", ItemAction.WARM, 0)
    return NewTask(
        f"00000000-0000-4000-8000-{n:012d}",
        user,
        TaskKind.PREFETCH,
        created_at,
        (item,),
        QuotaCharge(day, 1, 0, 10**9, 50),
    )


async def removed_soon(store: TaskStore, task_id: str) -> bool:
    """Whether the task is removed within a second."""
    for _ in range(100):
        if await store.get_task(task_id) is None:
            return True
        await asyncio.sleep(0.01)
    return False


async def an_old_finished_task(store: TaskStore, now: float) -> str:
    """One task that ended 8 days before `now`: its id."""
    await store.create_task(task(1, now - 9 * DAY))
    (claim,) = await store.claim_due_items("w", 10, now, 60)
    await store.record_outcomes("w", [ItemOutcome(claim.item_id, True, 1)], now - 8 * DAY)
    return claim.task_id


def test_a_round_removes_old_finished_tasks_in_batches_and_keeps_the_rest() -> None:
    """7 days: 5 tasks ended 8 days ago go (batches of 2), one ended yesterday and one still open stay."""

    async def go() -> tuple[int, list[bool]]:
        async with open_store("memory://") as store:
            now = 100 * DAY
            for n in range(7):
                await store.create_task(task(n, now - 9 * DAY))
            claims = await store.claim_due_items("w", 100, now, 60)
            by_id = {c.task_id: c.item_id for c in claims}
            ids = sorted(by_id)
            for task_id in ids[:5]:
                await store.record_outcomes("w", [ItemOutcome(by_id[task_id], True, 1)], now - 8 * DAY)
            await store.record_outcomes("w", [ItemOutcome(by_id[ids[5]], True, 1)], now - 1 * DAY)
            removed, more = await purge_old_tasks(store, Retention(days=7, batch=2), now)
            assert not more
            left = [await store.get_task(t) is not None for t in ids]
            return removed, left

    removed, left = asyncio.run(go())
    assert removed == 5
    assert left == [False] * 5 + [True, True]


def test_the_job_runs_a_round_at_once_and_ends_when_told() -> None:
    """run_retention purges on start and returns promptly once `stopping` is set."""

    async def go() -> bool:
        async with open_store("memory://") as store:
            now = 100 * DAY
            task_id = await an_old_finished_task(store, now)
            stopping = asyncio.Event()
            job = asyncio.create_task(run_retention(store, lambda: Retention(days=7), stopping, clock=lambda: now))
            gone = await removed_soon(store, task_id)
            stopping.set()
            await asyncio.wait_for(job, timeout=5)
            return gone

    assert asyncio.run(go()) is True


def test_a_reload_runs_a_round_with_the_new_settings_at_once() -> None:
    """A task ended 3 days ago stays under `days = 7`; a reload to `days = 1` removes it at once, not after the
    hour-long interval of the old settings."""

    async def go() -> tuple[bool, bool]:
        async with open_store("memory://") as store:
            now = 100 * DAY
            await store.create_task(task(1, now - 4 * DAY))
            (claim,) = await store.claim_due_items("w", 10, now, 60)
            await store.record_outcomes("w", [ItemOutcome(claim.item_id, True, 1)], now - 3 * DAY)
            settings = Retention(days=7, interval_seconds=3600)
            stopping, reloaded = asyncio.Event(), asyncio.Event()
            job = asyncio.create_task(
                run_retention(store, lambda: settings, stopping, clock=lambda: now, reloaded=reloaded)
            )
            await asyncio.sleep(0.2)
            kept = await store.get_task(claim.task_id) is not None
            settings = Retention(days=1, interval_seconds=3600)
            reloaded.set()
            gone = await removed_soon(store, claim.task_id)
            stopping.set()
            await asyncio.wait_for(job, timeout=5)
            return kept, gone

    assert asyncio.run(go()) == (True, True)


@pytest.mark.parametrize(("batch", "items_a_batch"), [(2, 50_000), (200, 1)], ids=["by-tasks", "by-items"])
def test_a_backlog_larger_than_a_round_is_removed_round_after_round_not_an_interval_apart(
    monkeypatch: pytest.MonkeyPatch, batch: int, items_a_batch: int
) -> None:
    """A round removes at most MAX_BATCHES_A_ROUND batches; the next came interval_seconds (an hour) later, so a
    service ending more tasks than that an hour never caught up. Rounds now follow each other after
    BACKLOG_PAUSE while one ends at its last batch; so too when a batch stops at RETENTION_ITEMS items, under
    `batch` tasks (a reviewer's: 30,000 tasks of 500 items, 10,000 removed, the rest left for an hour)."""
    monkeypatch.setattr(retention, "MAX_BATCHES_A_ROUND", 2)
    monkeypatch.setattr(retention, "BACKLOG_PAUSE", 0.05)
    monkeypatch.setattr(store_sqlite, "RETENTION_ITEMS", items_a_batch)  # (the PostgreSQL store's: integration)

    async def go() -> list[bool]:
        async with open_store("memory://") as store:
            now = 100 * DAY
            for n in range(9):
                await store.create_task(task(n, now - 9 * DAY))
            claims = await store.claim_due_items("w", 100, now, 60)
            await store.record_outcomes("w", [ItemOutcome(c.item_id, True, 1) for c in claims], now - 8 * DAY)
            stopping = asyncio.Event()
            settings = Retention(days=7, batch=batch, interval_seconds=3600)
            job = asyncio.create_task(run_retention(store, lambda: settings, stopping, clock=lambda: now))
            gone = [await removed_soon(store, c.task_id) for c in claims]  # 9 tasks: rounds of 4, or of 2
            stopping.set()
            await asyncio.wait_for(job, timeout=5)
            return gone

    assert asyncio.run(go()) == [True] * 9


# 2026-01-10 20:00 UTC: 2026-01-11 04:00 in Asia/Shanghai, the quotas' default zone
JAN_10_8PM_UTC = 1_768_075_200.0


def test_the_first_day_whose_quota_counters_are_kept_is_the_windows_in_the_quotas_zone() -> None:
    """7 days before 2026-01-11 04:00 in Shanghai is 2026-01-04 there (2026-01-03 in UTC); a window shorter than a
    day still keeps yesterday's counters (a process whose clock is a little behind may charge it)."""
    assert first_day_kept(JAN_10_8PM_UTC, 7, "Asia/Shanghai") == "20260104"
    assert first_day_kept(JAN_10_8PM_UTC, 7, "UTC") == "20260103"
    assert first_day_kept(JAN_10_8PM_UTC, 0.01, "Asia/Shanghai") == "20260110"
    assert first_day_kept(JAN_10_8PM_UTC, 1, "America/Los_Angeles") == "20260109"


def test_a_round_removes_the_quota_counters_of_the_days_before_the_window_in_the_same_pass() -> None:
    """Retention removed no row of `usage` (one per user per day): they piled up for ever. A round now removes the
    counters of the days before the window's first, in the quotas' time zone, and keeps that day's and later
    ones (today's: the quota being charged)."""
    days = ("20251231", "20260103", "20260104", "20260111")

    async def go() -> list[tuple[int, int]]:
        async with open_store("memory://") as store:
            for n, day in enumerate(days):
                await store.create_task(task(n, JAN_10_8PM_UTC, day=day, user=f"user-{n % 2}"))
            stopping = asyncio.Event()
            job = asyncio.create_task(
                run_retention(
                    store,
                    lambda: Retention(days=7),
                    stopping,
                    clock=lambda: JAN_10_8PM_UTC,
                    timezone=lambda: "Asia/Shanghai",
                )
            )
            for _ in range(100):
                if await store.usage("user-1", "20260103") == (0, 0):
                    break
                await asyncio.sleep(0.01)
            stopping.set()
            await asyncio.wait_for(job, timeout=5)
            return [await store.usage(f"user-{n % 2}", day) for n, day in enumerate(days)]

    assert asyncio.run(go()) == [(0, 0), (0, 0), (1, 0), (1, 0)]


def test_a_round_the_store_refused_is_tried_again_soon_not_an_interval_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A round that failed (the store locked by another process for a while) waited interval_seconds (an hour)
    with its backlog (a re-tester's): tried again after FAILED_PAUSE."""
    monkeypatch.setattr(retention, "FAILED_PAUSE", 0.05)

    async def go() -> bool:
        async with open_store("memory://") as store:
            now = 100 * DAY
            task_id = await an_old_finished_task(store, now)
            delete = store.delete_finished_before
            refusals = [1]

            async def locked(cutoff: float, limit: int) -> int:
                if refusals:
                    refusals.pop()
                    raise StoreError("sqlite: the database is locked by another process")
                return await delete(cutoff, limit)

            monkeypatch.setattr(store, "delete_finished_before", locked)
            stopping = asyncio.Event()
            settings = Retention(days=7, interval_seconds=3600)
            job = asyncio.create_task(run_retention(store, lambda: settings, stopping, clock=lambda: now))
            gone = await removed_soon(store, task_id)
            stopping.set()
            await asyncio.wait_for(job, timeout=5)
            return gone

    assert asyncio.run(go())
    assert "retention round failed: sqlite: the database is locked by another process; tried again in 0.05 s" in (
        caplog.text
    )
