"""store/base.py's ListTurns: one list of a user's at a time, `slots` of all users' at once, each within its time."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from edgewarm.errors import ListTooLong
from edgewarm.store.base import ListTurns

pytestmark = pytest.mark.anyio


async def test_a_users_lists_take_turns_while_another_users_go_on() -> None:
    turns = ListTurns()
    held = asyncio.Event()
    order: list[str] = []

    async def list_of(user: str, hold: bool) -> None:
        async with turns.turn(user, 5.0):
            order.append(f"{user} in")
            if hold:
                await held.wait()
            order.append(f"{user} out")

    first = asyncio.create_task(list_of("alice", hold=True))
    await asyncio.sleep(0)
    second = asyncio.create_task(list_of("alice", hold=False))
    await list_of("bob", hold=False)  # not behind alice's
    assert order == ["alice in", "bob in", "bob out"]
    held.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["alice out", "alice in", "alice out"]


async def test_slots_bound_the_lists_of_all_users_and_a_turn_not_come_in_time_is_refused_unread() -> None:
    turns = ListTurns(slots=1)
    held = asyncio.Event()

    async def hold() -> None:
        async with turns.turn("alice", 5.0):
            await held.wait()

    holding = asyncio.create_task(hold())
    await asyncio.sleep(0)
    with pytest.raises(ListTooLong) as refused:
        async with turns.turn("bob", 0.05):
            pytest.fail("bob's list read while alice's held the one slot")
    # bob has no other list: he waited behind alice's (he was told "your lists are read one at a time": a tester's)
    assert refused.value.message == (
        "the list waited 0.05 s for its turn among all users' lists (a few are read at once) and was not read: "
        "ask again"
    ), refused.value.message
    with pytest.raises(ListTooLong) as own:  # alice's second waits behind her first
        async with turns.turn("alice", 0.05):
            pytest.fail("alice's second list read beside her first")
    assert own.value.message.startswith("the list waited 0.05 s for its turn (your lists are read one at a time)")
    held.set()
    await holding
    async with turns.turn("bob", 0.05) as deadline:  # the slot free again; the deadline counts from the call
        assert deadline > asyncio.get_running_loop().time() - 1


def test_a_list_stopped_after_waiting_most_of_its_time_says_so() -> None:
    """A re-tester's lists of 0.05 s each, stopped after waiting 1.9 s of their 2 for their turn, were told only
    to narrow themselves."""
    from edgewarm.store.base import list_stopped

    late = list_stopped(deadline=102.0, read_from=101.9, seconds=2.0).message
    assert late.startswith("the list waited 1.9 s of its 2 s for its turn (your lists are read one at a time)"), late
    assert "ask for fewer at once, or narrow it" in late
    slow = list_stopped(deadline=102.0, read_from=100.1, seconds=2.0).message
    assert slow.startswith("the list took over 2 s to read and was stopped: narrow it"), slow


def test_a_list_refused_unread_is_429_to_ask_again_and_a_list_too_long_400() -> None:
    """A list whose turn never came (the caller's other lists at once) was 400 code 2, as a bad parameter: a
    dashboard could not tell it to ask again (a tester's 300 lists at once). 429 with Retry-After now; a list
    that read too long is still 400 (narrow it)."""
    from edgewarm.api.responses import native_error

    unread = native_error(ListTooLong(2.0, waited=True))
    assert (unread.status_code, unread.headers.get("retry-after")) == (429, "1")
    assert orjson.loads(unread.body)["code"] == 2
    for read in (ListTooLong(2.0), ListTooLong(2.0, waiting=1.9)):
        answer = native_error(read)
        assert (answer.status_code, answer.headers.get("retry-after")) == (400, None)
