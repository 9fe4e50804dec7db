"""A node lane's queue gives its claims out by turns among their users, each user's in the order they came."""

from __future__ import annotations

import asyncio

import pytest

from edgewarm.engine.turns import TurnsQueue
from edgewarm.models import Claim, ItemAction

pytestmark = pytest.mark.anyio


def claim(item: int, user: str) -> Claim:
    return Claim(item, f"task-{user}", f"http://example.test/{item}", "edge-1", ItemAction.WARM, 0, user=user)


def taken(queue: TurnsQueue) -> list[tuple[str, int]]:
    out = []
    while not queue.empty():
        got = queue.get_nowait()
        out.append((got.user, got.item_id))
    return out


async def test_users_take_turns_each_users_claims_in_the_order_they_came() -> None:
    """A user's claims queued behind another's many wait for one of the other's, not all of them; a user
    new to the queue has its turn after the users waiting already."""
    queue = TurnsQueue()
    for item in range(1, 6):
        queue.put_nowait(claim(item, "alice"))
    queue.put_nowait(claim(10, "bob"))
    queue.put_nowait(claim(11, "bob"))
    assert queue.qsize() == 7
    first = queue.get_nowait()
    assert (first.user, first.item_id) == ("alice", 1)
    queue.put_nowait(claim(20, "carol"))
    assert taken(queue) == [
        ("bob", 10),
        ("alice", 2),
        ("carol", 20),
        ("bob", 11),
        ("alice", 3),
        ("alice", 4),
        ("alice", 5),
    ]
    assert queue.qsize() == 0


async def test_one_users_claims_come_in_the_order_they_came() -> None:
    """One user (S1): the queue is a FIFO, as asyncio.Queue; claims of items written before schema version 5
    (user "") are one user's too."""
    queue = TurnsQueue()
    for item in range(5):
        queue.put_nowait(claim(item, ""))
    assert [c.item_id for c in (queue.get_nowait() for _ in range(5))] == [0, 1, 2, 3, 4]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_waiting_worker_gets_the_next_claim_put() -> None:
    """Workers waiting on an empty queue are woken by a put, as with asyncio.Queue."""
    queue = TurnsQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(claim(7, "bob"))
    got = await asyncio.wait_for(waiting, 5)
    assert (got.user, got.item_id) == ("bob", 7)


async def test_a_user_at_its_share_waits_and_a_finished_claim_lets_a_waiting_worker_take_its_next() -> None:
    """With `per_user` 2: alice's third claim waits while two of hers are out, bob's does not; the queue is
    empty to workers while only alice's wait; one of hers finished wakes a worker waiting, which takes it.
    Drained claims are not counted as out."""
    queue = TurnsQueue()
    queue.per_user = 2
    for item in (1, 2, 3):
        queue.put_nowait(claim(item, "alice"))
    queue.put_nowait(claim(10, "bob"))
    first, second, third = queue.get_nowait(), queue.get_nowait(), queue.get_nowait()
    assert [(c.user, c.item_id) for c in (first, second, third)] == [("alice", 1), ("bob", 10), ("alice", 2)]
    assert queue.empty() and queue.qsize() == 1
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.finished(second)  # bob's: alice is still at her share
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.finished(first)
    got = await asyncio.wait_for(waiting, 5)
    assert (got.user, got.item_id) == ("alice", 3)
    queue.put_nowait(claim(4, "alice"))
    assert queue.empty() and [c.item_id for c in queue.drain()] == [4] and queue.qsize() == 0
