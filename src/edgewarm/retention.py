"""Retention: remove finished tasks older than `[retention] days`, a bounded batch at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .config import Retention
from .errors import StoreError
from .store import TaskStore

log = logging.getLogger("edgewarm.retention")

MAX_BATCHES_A_ROUND = 100  # then a pause, so that writers always get their turn
BACKLOG_PAUSE = 1.0  # seconds between rounds while a round ends with tasks left to remove (else interval_seconds)


async def purge_old_tasks(store: TaskStore, settings: Retention, now: float) -> int:
    """One round: delete up to MAX_BATCHES_A_ROUND batches of tasks that ended before the cutoff."""
    cutoff = now - settings.days * 86_400
    removed = 0
    for _ in range(MAX_BATCHES_A_ROUND):
        deleted = await store.delete_finished_before(cutoff, settings.batch)
        removed += deleted
        if deleted < settings.batch:
            break
        await asyncio.sleep(0)  # one transaction per batch: let others in between
    return removed


async def run_retention(
    store: TaskStore,
    settings: Callable[[], Retention],
    stopping: asyncio.Event,
    clock: Callable[[], float] = time.time,
    reloaded: asyncio.Event | None = None,
) -> None:
    """Every `interval_seconds` until `stopping` is set; at once when `reloaded` is set (new settings); after
    BACKLOG_PAUSE while a round left tasks to remove (a round removes at most MAX_BATCHES_A_ROUND batches: a
    service that ends more tasks than that in an interval never caught up, and its store grew without bound)."""
    reloaded = reloaded or asyncio.Event()
    while not stopping.is_set():
        reloaded.clear()
        left = False
        try:
            removed = await purge_old_tasks(store, settings(), clock())
            left = removed >= MAX_BATCHES_A_ROUND * settings().batch
            if removed:
                log.info("retention: removed %d finished tasks older than %s days", removed, settings().days)
        except StoreError as exc:
            log.error("retention round failed: %s", exc)
        await first_of(BACKLOG_PAUSE if left else settings().interval_seconds, stopping, reloaded)


async def first_of(timeout: float, *events: asyncio.Event) -> None:
    """Wait until one of `events` is set, or `timeout` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
