"""FairClaims: how a claim is shared among the users with due items; ClaimScans: how its windows are (the
stores' SQL is in the store contract)."""

from __future__ import annotations

import pytest

from edgewarm.models import Claim, ItemAction
from edgewarm.store.base import CLAIM_SCAN, CLAIM_WINDOWS, ClaimScans, FairClaims, ScanPoint, Window

pytestmark = pytest.mark.anyio


class Backlogs:
    """Each user's due items, handed out in order; records every ask."""

    def __init__(self, **due: int) -> None:
        self.due = dict(due)
        self.asked: list[tuple[str, int]] = []
        self._next = 0

    async def take(self, user: str, want: int) -> list[Claim]:
        self.asked.append((user, want))
        found = min(want, self.due[user])
        self.due[user] -= found
        claims = [Claim(self._next + n, user, "http://h/x", "edge-1", ItemAction.WARM, 0) for n in range(found)]
        self._next += found
        return claims


def shares(claims: list[Claim]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for claim in claims:
        counts[claim.task_id] = counts.get(claim.task_id, 0) + 1
    return counts


async def test_each_user_gets_an_even_share_and_a_user_with_fewer_leaves_the_rest_to_the_others() -> None:
    backlogs = Backlogs(a=1, b=100, c=100)
    claims = await FairClaims().claim(["c", "a", "b"], 10, backlogs.take)
    assert len(claims) == 10
    assert shares(claims) == {"a": 1, "b": 5, "c": 4}
    assert backlogs.asked == [("a", 4), ("b", 4), ("c", 4), ("b", 1)]  # in name order; then b's second round


async def test_a_claim_ends_when_every_user_gave_all_it_had() -> None:
    backlogs = Backlogs(a=2, b=3)
    claims = await FairClaims().claim(["a", "b"], 100, backlogs.take)
    assert shares(claims) == {"a": 2, "b": 3}
    assert backlogs.asked == [("a", 50), ("b", 50)]


async def test_users_outnumbering_the_limit_take_turns_at_coming_first() -> None:
    fair = FairClaims()
    backlogs = Backlogs(a=9, b=9, c=9)
    served = [list(shares(await fair.claim(["a", "b", "c"], 2, backlogs.take))) for _ in range(3)]
    assert served == [["a", "b"], ["c", "a"], ["b", "c"]]


async def test_no_users_no_claims() -> None:
    assert await FairClaims().claim([], 10, Backlogs().take) == []


async def test_a_claims_windows_are_shared_among_the_users_it_scans() -> None:
    """A claim skipping a node scans CLAIM_WINDOWS windows in all, shared among its users' scans (one each at
    least): 20 users with a skipped node's backlog do not make one claim read 20 x 8 windows."""
    windows = 0

    async def backlog(want: int, after: ScanPoint) -> Window:  # a whole window of the skipped node's items
        nonlocal windows
        windows += 1
        return Window([], CLAIM_SCAN, (float(windows), windows))

    scans = ClaimScans()
    for users, expected in ((1, CLAIM_WINDOWS), (4, CLAIM_WINDOWS // 4), (20, 1)):
        windows = 0
        assert await scans.claim(f"w\nuser-{users}", 10, ["slow"], backlog, users) == []
        assert windows == expected
