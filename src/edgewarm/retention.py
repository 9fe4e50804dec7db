"""Retention: remove finished tasks older than `[retention] days`, a bounded batch at a time, and the daily quota
counters (`usage`) of the days before the window."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from . import auth
from .config import Retention
from .errors import StoreError
from .logs import counted
from .store import TaskStore

log = logging.getLogger("edgewarm.retention")

MAX_BATCHES_A_ROUND = 100  # then a pause, so that writers always get their turn
BACKLOG_PAUSE = 1.0  # seconds between rounds while a round ends with tasks left to remove (else interval_seconds)
FAILED_PAUSE = 60.0  # seconds after a round the store refused (interval_seconds if shorter)
USAGE_BATCH = 10_000  # quota counters (one user's day each, a few dozen bytes) a transaction


async def purge_old_tasks(store: TaskStore, settings: Retention, now: float) -> tuple[int, bool]:
    """One round: delete up to MAX_BATCHES_A_ROUND batches of tasks that ended before the cutoff; how many, and
    whether some may be left (the round ended at its last batch)."""
    cutoff = now - settings.days * 86_400
    return await _in_batches(lambda limit: store.delete_finished_before(cutoff, limit), settings.batch)


def first_day_kept(now: float, days: float, timezone: str) -> str:
    """The earliest day (YYYYMMDD, the quotas' day: the date in `[api] timezone`) whose quota counters retention
    keeps: the day `days` before `now` (a part of it is within the window), and yesterday at the latest (a
    submission is charged to today, but a process whose clock is a little behind may still charge yesterday)."""
    window = auth.today(datetime.fromtimestamp(now - days * 86_400, UTC), timezone)
    yesterday = auth.today(datetime.fromtimestamp(now, UTC), timezone) - timedelta(days=1)
    return f"{min(window, yesterday):%Y%m%d}"


async def purge_old_usage(store: TaskStore, settings: Retention, now: float, timezone: str) -> tuple[int, bool]:
    """One round: delete up to MAX_BATCHES_A_ROUND batches of the daily quota counters of the days before
    `first_day_kept` (days that can no longer be charged); how many, and whether some may be left."""
    day = first_day_kept(now, settings.days, timezone)
    return await _in_batches(lambda limit: store.delete_usage_before(day, limit), USAGE_BATCH)


async def _in_batches(delete: Callable[[int], Awaitable[int]], batch: int) -> tuple[int, bool]:
    """`delete(batch)` until it removes none (a batch of tasks is bounded by their items too: fewer than `batch`
    is not the end), MAX_BATCHES_A_ROUND times at most; the total, and whether the last removed some (more may be
    left: told by that, not by the total, which batches bounded by their items keep under `batch` a batch)."""
    removed = 0
    for _ in range(MAX_BATCHES_A_ROUND):
        deleted = await delete(batch)
        removed += deleted
        if not deleted:
            return removed, False
        await asyncio.sleep(0)  # one transaction per batch: let others in between
    return removed, True


async def run_retention(
    store: TaskStore,
    settings: Callable[[], Retention],
    stopping: asyncio.Event,
    clock: Callable[[], float] = time.time,
    reloaded: asyncio.Event | None = None,
    timezone: Callable[[], str] = lambda: auth.DEFAULT_TIMEZONE,
) -> None:
    """Every `interval_seconds` until `stopping` is set; at once when `reloaded` is set (new settings); after
    BACKLOG_PAUSE while a round may have left tasks or quota counters to remove (a round removes at most
    MAX_BATCHES_A_ROUND batches: a service that ends more tasks than that in an interval never caught up, and
    its store grew without bound; and a reviewer's: tasks of over RETENTION_ITEMS / batch items each, 250 by
    default, made batches under `batch`, taken for the end: 10,000 tasks of 500 items an hour at most).
    `timezone`: the quotas' (`[api] timezone`), whose days the counters are."""
    reloaded = reloaded or asyncio.Event()
    while not stopping.is_set():
        reloaded.clear()
        current = settings()
        pause = current.interval_seconds
        try:
            now = clock()
            removed, tasks_left = await purge_old_tasks(store, current, now)
            if removed:
                log.info("retention: removed %s older than %s days", counted(removed, "finished task"), current.days)
            counters, counters_left = await purge_old_usage(store, current, now, timezone())
            if counters:
                log.info(
                    "retention: removed %d daily quota counters of days older than %s days", counters, current.days
                )
            if tasks_left or counters_left:
                pause = BACKLOG_PAUSE
        except StoreError as exc:
            # Tried again in a minute: a store locked or busy a while kept its backlog for the interval (an hour)
            # (a re-tester's).
            pause = min(FAILED_PAUSE, pause)
            log.error("retention round failed: %s; tried again in %g s", exc, pause)
        await first_of(pause, stopping, reloaded)


async def first_of(timeout: float, *events: asyncio.Event) -> None:
    """Wait until one of `events` is set, or `timeout` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
