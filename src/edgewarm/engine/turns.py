"""A node lane's queue: its claims given to the lane's workers by turns among the users whose claims wait in it,
no user's more at once than its share of the workers."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator

from ..models import Claim


class _Turns:
    """Claims by user (`Claim.user`), each user's in the order they came; taken by turns among the users."""

    __slots__ = ("_by_user", "_count", "_order")

    def __init__(self) -> None:
        self._by_user: dict[str, deque[Claim]] = {}
        self._order: deque[str] = deque()  # the users with claims waiting: the first one's turn is next
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Claim]:
        return (claim for user in self._order for claim in self._by_user[user])

    def waits(self, user: str) -> bool:
        """Whether `user` has claims waiting."""
        return user in self._by_user

    def append(self, claim: Claim) -> None:
        waiting = self._by_user.get(claim.user)
        if waiting is None:  # a user new to the lane has its turn after every user waiting already
            waiting = self._by_user[claim.user] = deque()
            self._order.append(claim.user)
        waiting.append(claim)
        self._count += 1

    def next_user(self, working: dict[str, int], most: int) -> int | None:
        """The place in the turns of the first user with fewer than `most` claims `working`, or None."""
        for place, user in enumerate(self._order):
            if working.get(user, 0) < most:
                return place
        return None

    def pop(self, place: int = 0) -> Claim:
        """The next claim of the user at `place` in the turns, whose turn then comes after every other's."""
        user = self._order[place]
        waiting = self._by_user[user]
        claim = waiting.popleft()
        self._count -= 1
        del self._order[place]
        if waiting:
            self._order.append(user)
        else:
            del self._by_user[user]
        return claim


class TurnsQueue(asyncio.Queue[Claim]):
    """An asyncio.Queue of claims that gives them out by turns among their users, each user's in the order they
    came. The store's claims share the due items among the users (store/base.py, FairClaims); a lane that
    gave its claims out in the order they came would undo that for what it holds: a user's claims queued behind
    another user's many (a large task's items in hand, a slow node's backlog) would wait for all of those, not
    for one of each other user's.

    A user has at most `per_user` claims out at once (None: no bound), taken and not yet `finished`: the lane
    sets it below its width when several users are configured, so that a worker is left for the other users'
    claims. Else a user whose origin answers slowly (a byte every 29 s, each request up to fetch_timeout) held
    every worker of the lane, and another user's claims waited for one of those requests to end (a tester's:
    17-37 s for one URL). The queue is `empty()` while only users at their share have claims waiting."""

    def _init(self, maxsize: int) -> None:
        self._queue = _Turns()
        self.per_user: int | None = None
        self._working: dict[str, int] = {}  # the claims out, by user (the users with some)

    def _put(self, item: Claim) -> None:
        self._queue.append(item)

    def empty(self) -> bool:
        if self.per_user is None:
            return not self._queue
        return not self._queue or self._queue.next_user(self._working, self.per_user) is None

    def _get(self) -> Claim:
        place = 0 if self.per_user is None else self._queue.next_user(self._working, self.per_user)
        assert place is not None  # not empty()
        claim = self._queue.pop(place)
        self._working[claim.user] = self._working.get(claim.user, 0) + 1
        return claim

    def finished(self, claim: Claim) -> None:
        """`claim`, taken from the queue, is done with (or put back): its user may have another out."""
        left = self._working[claim.user] - 1
        if left:
            self._working[claim.user] = left
        else:
            del self._working[claim.user]
        if self.per_user is not None and left == self.per_user - 1 and self._queue.waits(claim.user):
            self._wakeup_next(self._getters)  # type: ignore[attr-defined]  # asyncio.Queue's own: as a put does

    def drain(self) -> list[Claim]:
        """Every claim waiting, taken out (not out to a worker: not counted as such)."""
        taken = []
        while self._queue:
            taken.append(self._queue.pop())
        return taken
