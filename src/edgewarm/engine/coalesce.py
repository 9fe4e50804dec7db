"""One warm per (URL, node) at a time: a URL submitted again while it is pending is not fetched twice.

Claims of the same (URL, node) that meet in one engine share the first one's fetch; a success is reused for
`window` seconds after it (a later task asking for the same object gets it at once), or while the node's copy
stays fresh, as the answer told (`ItemOutcome.fresh_for`), when that is sooner: a copy that expired on the node
is fetched again. A change of a node's cache
makes every fetch of that node that began before it end unshared (`changed`): a purge, of any URL or directory
(before and after it: a directory covers URLs of any spelling, and a fetch that overlapped the purge may have
filled the cache before it), or the node not answering (it may come back with an empty cache). Within one
process: workers on a shared store do not see each other's fetches.

The engine asks `share(key)` before a warm. It answers a success to reuse (recent, or of a fetch of the
same key that was running), or None: then the caller fetches and reports with `end(key, outcome)`. Nothing
is allocated for a key nobody else asks for (this is on the path of every warm); the engine asks `begin(key)`
first, and awaits `share(key, found)` only with what that found, so such a key needs no coroutine either.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..models import ItemOutcome

Key = tuple[str, str]  # (url, node)
Found = ItemOutcome | asyncio.Future[ItemOutcome] | None  # Coalescer.begin's answer
MAX_RECENT = 100_000  # successes remembered at most, whatever the window: memory stays bounded
# The note of an item that shared another's warm: one begun after any purge of the URL on the node (it told a
# `"refresh": true` task's items to use the flag they had used: a tester's).
SHARED_NOTE = (
    "not fetched again: another item warmed this URL on this node just before, after any purge of it there "
    "(dedupe_seconds)"
)


class _Running:
    """A fetch of a key: the node's purge count when it began, the task fetching (only its `end` ends it), and
    (once a second claim follows) its future."""

    __slots__ = ("future", "leader", "purges")

    def __init__(self, purges: int, leader: asyncio.Task[Any] | None) -> None:
        self.purges = purges
        self.leader = leader
        self.future: asyncio.Future[ItemOutcome] | None = None


class Coalescer:
    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._running: dict[Key, _Running] = {}  # keys being fetched
        # Successes: when, the outcome, the node's purge count when their fetch began, and until when its copy is
        # fresh (its answer's lifetime; the window's end when it told none).
        self._recent: OrderedDict[Key, tuple[float, ItemOutcome, int, float]] = OrderedDict()
        self._purges: dict[str, int] = {}  # node -> purges begun or ended there

    def changed(self, node: str) -> None:
        """`node`'s cache may have changed (a purge begins or ends there, it did not answer, a reload moved it): no
        fetch of that node that began before is shared from now on."""
        self._purges[node] = self._purges.get(node, 0) + 1

    async def share(self, key: Key, found: Found = None) -> ItemOutcome | None:
        """A success of `key` to reuse, or None: then the caller fetches it and must call `end`. `found`: what
        `begin(key)` has just answered, when it was not None (the engine asks it first: a key nobody else asks
        for needs no coroutine)."""
        if found is None:
            found = self.begin(key)
        # Bounded: each round waits for another claim's fetch of this key to end.
        while found is not None:
            shared = found if isinstance(found, ItemOutcome) else await self._follow(found)
            if shared is not None and shared.succeeded:
                return shared
            found = self.begin(key)
        return None

    def begin(self, key: Key, leader: asyncio.Task[Any] | None = None) -> Found:
        """A recent success of `key`, a running fetch of it to follow, or None: fetch it, then `end` it.
        `leader`: the current task, when the caller knows it (an engine's worker: not asked again per warm)."""
        if self.window <= 0:
            return None
        purges = self._purges.get(key[1], 0)
        if self._recent:
            self._expire()
            recent = self._recent.get(key)
            if recent is not None and recent[2] == purges and self._clock() < recent[3]:
                return recent[1]
        running = self._running.get(key)
        if running is None:
            self._running[key] = _Running(purges, asyncio.current_task() if leader is None else leader)
            return None
        if running.future is None:
            running.future = asyncio.get_running_loop().create_future()
        return running.future  # if a purge came meanwhile, its success is not shared: the next round fetches

    def end(self, key: Key, outcome: ItemOutcome | None, leader: asyncio.Task[Any] | None = None) -> None:
        """The fetch `share` asked for is over: its outcome, or None when it raised (followers fetch again).

        Whatever the window now: a reload may have set it to 0 while this fetch ran, and its entry left behind
        would keep its followers waiting for ever, and every later warm of the key once the window is back. Only
        the fetch's own entry: one begun with the window at 0 has none, and must not end another's. `leader`: the
        current task, when the caller knows it (as `begin`)."""
        running = self._running.get(key)
        if running is None or running.leader is not (asyncio.current_task() if leader is None else leader):
            return
        del self._running[key]
        fresh = running.purges == self._purges.get(key[1], 0)
        if self.window > 0 and outcome is not None and outcome.succeeded and fresh:
            now = self._clock()
            lasts = self.window if outcome.fresh_for is None else min(self.window, outcome.fresh_for)
            self._recent[key] = (now, outcome, running.purges, now + lasts)
            self._recent.move_to_end(key)
            if len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)
        followers = running.future
        if followers is not None:
            if outcome is None or not fresh or self.window <= 0:
                # Each follower asks again: a purge since the fetch began, it raised, or sharing is off now (each
                # fetches for itself).
                followers.cancel()
            else:
                followers.set_result(outcome)

    @staticmethod
    async def _follow(running: asyncio.Future[ItemOutcome]) -> ItemOutcome | None:
        """The leader's outcome, or None when the leader gave up without one."""
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if running.cancelled() and (me is None or not me.cancelling()):
                return None
            raise  # this follower itself is being cancelled (a stop), whether or not its leader was too

    def _expire(self) -> None:
        horizon = self._clock() - self.window
        recent = self._recent
        while recent:
            key, (at, _, _, _) = next(iter(recent.items()))
            if at >= horizon:
                break
            del recent[key]
