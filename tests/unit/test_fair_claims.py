"""FairClaims: how a claim is shared among the users with due items; ClaimScans: how its windows are (the
stores' SQL is in the store contract)."""

from __future__ import annotations

import pytest

from edgewarm.models import Claim, ItemAction
from edgewarm.store.base import (
    CLAIM_SCAN,
    CLAIM_WINDOWS,
    ClaimScans,
    FairClaims,
    ScanPoint,
    UserAsk,
    Window,
    run_plan,
    run_plan_async,
)

pytestmark = pytest.mark.anyio


class Backlogs:
    """Each user's due items, handed out in order; records every ask."""

    def __init__(self, **due: int) -> None:
        self.due = dict(due)
        self.asked: list[UserAsk] = []
        self._next = 0

    def take(self, ask: UserAsk) -> list[Claim]:
        self.asked.append(ask)
        user, want = ask
        found = min(want, self.due[user])
        self.due[user] -= found
        claims = [Claim(self._next + n, user, "http://h/x", "edge-1", ItemAction.WARM, 0) for n in range(found)]
        self._next += found
        return claims


def claim(fair: FairClaims, users: list[str], limit: int, backlogs: Backlogs) -> dict[str, int]:
    """Each user's count in one claim, in the order served."""
    counts: dict[str, int] = {}
    for leased in run_plan(fair.plan(users, limit), backlogs.take):
        counts[leased.task_id] = counts.get(leased.task_id, 0) + 1
    return counts


def test_each_user_gets_an_even_share_and_a_user_with_fewer_leaves_the_rest_to_the_others() -> None:
    backlogs = Backlogs(a=1, b=100, c=100)
    assert claim(FairClaims(), ["c", "a", "b"], 10, backlogs) == {"a": 1, "b": 5, "c": 4}
    assert backlogs.asked == [("a", 4), ("b", 4), ("c", 4), ("b", 1)]  # in name order; then b's second round


def test_a_claim_ends_when_every_user_gave_all_it_had() -> None:
    backlogs = Backlogs(a=2, b=3)
    assert claim(FairClaims(), ["a", "b"], 100, backlogs) == {"a": 2, "b": 3}
    assert backlogs.asked == [("a", 50), ("b", 50)]


def test_users_outnumbering_the_limit_take_turns_at_coming_first() -> None:
    fair, backlogs = FairClaims(), Backlogs(a=9, b=9, c=9)
    served = [list(claim(fair, ["a", "b", "c"], 2, backlogs)) for _ in range(3)]
    assert served == [["a", "b"], ["c", "a"], ["b", "c"]]


def test_no_users_no_claims() -> None:
    assert claim(FairClaims(), [], 10, Backlogs()) == {}


async def test_a_plan_runs_the_same_with_awaited_steps() -> None:
    """run_plan_async (PostgreSQL's) asks what run_plan (SQLite's) does."""
    backlogs = Backlogs(a=1, b=100, c=100)

    async def take(ask: UserAsk) -> list[Claim]:
        return backlogs.take(ask)

    leased = await run_plan_async(FairClaims().plan(["a", "b", "c"], 10), take)
    assert len(leased) == 10 and backlogs.asked == [("a", 4), ("b", 4), ("c", 4), ("b", 1)]


def test_a_claims_windows_are_shared_among_the_users_it_scans() -> None:
    """A claim skipping a node scans CLAIM_WINDOWS windows in all, shared among its users' scans (one each at
    least): 20 users with a skipped node's backlog do not make one claim read 20 x 8 windows."""
    windows = 0

    def backlog(ask: tuple[int, ScanPoint]) -> Window:  # a whole window of the skipped node's items
        nonlocal windows
        windows += 1
        return Window([], CLAIM_SCAN, (float(windows), windows))

    scans = ClaimScans()
    for users, expected in ((1, CLAIM_WINDOWS), (4, CLAIM_WINDOWS // 4), (20, 1)):
        windows = 0
        assert run_plan(scans.plan(f"w\nuser-{users}", 10, ["slow"], users), backlog) == []
        assert windows == expected
