"""One warm per (URL, node) at a time: a URL submitted again while it is pending is not fetched twice.

Claims of the same (URL, node) that meet in one engine share the first one's fetch; a success is reused for
`window` seconds after it (a later task asking for the same object gets it at once). A purge of the URL on
that node forgets it. Within one process: workers on a shared store do not see each other's fetches.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..models import ItemOutcome

Key = tuple[str, str]  # (url, node)
MAX_RECENT = 100_000  # successes remembered at most, whatever the window: memory stays bounded


class Coalescer:
    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._running: dict[Key, asyncio.Future[ItemOutcome]] = {}
        self._recent: OrderedDict[Key, tuple[float, ItemOutcome]] = OrderedDict()

    async def warm(self, key: Key, fetch: Callable[[], Awaitable[ItemOutcome]]) -> tuple[ItemOutcome, bool]:
        """The outcome of `fetch`, or a success shared by another claim of the same key; True when shared."""
        if self.window <= 0:
            return await fetch(), False
        self._expire()
        recent = self._recent.get(key)
        if recent is not None:
            return recent[1], True
        running = self._running.get(key)
        if running is not None:
            shared = await self._follow(running)
            if shared is not None and shared.succeeded:
                return shared, True
        future: asyncio.Future[ItemOutcome] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            outcome = await fetch()
        except BaseException:
            future.cancel()  # followers do their own fetch
            raise
        finally:
            self._running.pop(key, None)
        future.set_result(outcome)
        if outcome.succeeded:
            self._recent[key] = (self._clock(), outcome)
            if len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)
        return outcome, False

    @staticmethod
    async def _follow(running: asyncio.Future[ItemOutcome]) -> ItemOutcome | None:
        """The leader's outcome, or None when the leader was cancelled."""
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            if running.cancelled():
                return None
            raise  # this follower itself is being cancelled

    def forget(self, key: Key) -> None:
        """The object changed on that node (a purge): the next warm fetches it."""
        self._recent.pop(key, None)

    def _expire(self) -> None:
        horizon = self._clock() - self.window
        while self._recent:
            key, (at, _) = next(iter(self._recent.items()))
            if at >= horizon:
                break
            del self._recent[key]
