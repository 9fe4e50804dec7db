"""One warm per (URL, node) at a time: a URL submitted again while it is pending is not fetched twice.

Claims of the same (URL, node) that meet in one engine share the first one's fetch; a success is reused for
`window` seconds after it (a later task asking for the same object gets it at once). A purge of the URL on
that node forgets it. Within one process: workers on a shared store do not see each other's fetches.

The engine asks `share(key)` before a warm. It answers a success to reuse (recent, or of a fetch of the
same key that was running), or None: then the caller fetches and reports with `end(key, outcome)`. Nothing
is allocated for a key nobody else asks for (this is on the path of every warm).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from ..models import ItemOutcome

Key = tuple[str, str]  # (url, node)
MAX_RECENT = 100_000  # successes remembered at most, whatever the window: memory stays bounded


class Coalescer:
    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        # Keys being fetched; the future is made only when a second claim of the key comes to follow.
        self._running: dict[Key, asyncio.Future[ItemOutcome] | None] = {}
        self._recent: OrderedDict[Key, tuple[float, ItemOutcome]] = OrderedDict()

    async def share(self, key: Key) -> ItemOutcome | None:
        """A success of `key` to reuse, or None: then the caller fetches it and must call `end`."""
        # Bounded: each round waits for another claim's fetch of this key to end.
        while (found := self._begin(key)) is not None:
            shared = found if isinstance(found, ItemOutcome) else await self._follow(found)
            if shared is not None and shared.succeeded:
                return shared
        return None

    def _begin(self, key: Key) -> ItemOutcome | asyncio.Future[ItemOutcome] | None:
        """A recent success of `key`, a running fetch of it to follow, or None: fetch it, then `end` it."""
        if self.window <= 0:
            return None
        if self._recent:
            self._expire()
            recent = self._recent.get(key)
            if recent is not None:
                return recent[1]
        if key not in self._running:
            self._running[key] = None
            return None
        running = self._running[key]
        if running is None:
            running = self._running[key] = asyncio.get_running_loop().create_future()
        return running

    def end(self, key: Key, outcome: ItemOutcome | None) -> None:
        """The fetch `share` asked for is over: its outcome, or None when it raised (followers fetch again)."""
        if self.window <= 0:
            return
        followers = self._running.pop(key, None)
        if outcome is not None and outcome.succeeded:
            self._recent[key] = (self._clock(), outcome)
            if len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)
        if followers is not None:
            if outcome is None:
                followers.cancel()
            else:
                followers.set_result(outcome)

    @staticmethod
    async def _follow(running: asyncio.Future[ItemOutcome]) -> ItemOutcome | None:
        """The leader's outcome, or None when the leader gave up without one."""
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
        recent = self._recent
        while recent:
            key, (at, _) = next(iter(recent.items()))
            if at >= horizon:
                break
            del recent[key]
