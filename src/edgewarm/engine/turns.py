"""A node lane's queue: its claims given to the lane's workers by turns among the users whose claims wait in it."""

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

    def append(self, claim: Claim) -> None:
        waiting = self._by_user.get(claim.user)
        if waiting is None:  # a user new to the lane has its turn after every user waiting already
            waiting = self._by_user[claim.user] = deque()
            self._order.append(claim.user)
        waiting.append(claim)
        self._count += 1

    def popleft(self) -> Claim:
        user = self._order[0]
        waiting = self._by_user[user]
        claim = waiting.popleft()
        self._count -= 1
        if waiting:
            self._order.rotate(-1)
        else:
            del self._by_user[user]
            self._order.popleft()
        return claim


class TurnsQueue(asyncio.Queue[Claim]):
    """An asyncio.Queue of claims that gives them out by turns among their users, each user's in the order they
    came. The store's claims share the due items among the users (store/base.py, FairClaims); a lane that
    gave its claims out in the order they came would undo that for what it holds: a user's claims queued behind
    another user's many (a large task's items in hand, a slow node's backlog) would wait for all of those, not
    for one of each other user's."""

    def _init(self, maxsize: int) -> None:
        self._queue = _Turns()

    def _put(self, item: Claim) -> None:
        self._queue.append(item)

    def _get(self) -> Claim:
        return self._queue.popleft()
