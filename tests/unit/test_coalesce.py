"""Coalescer: one fetch per (URL, node) at a time, successes reused for a window, a purge on a node ends the
sharing of that node's earlier fetches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from edgewarm.engine.coalesce import Coalescer
from edgewarm.models import ItemOutcome


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def warm(
    coalescer: Coalescer, key: tuple[str, str], fetch: Callable[[], Awaitable[ItemOutcome]]
) -> tuple[ItemOutcome, bool]:
    """What the engine does around a warm: the outcome, and True when it was shared."""
    shared = await coalescer.share(key)
    if shared is not None:
        return shared, True
    outcome = None
    try:
        outcome = await fetch()
    finally:
        coalescer.end(key, outcome)
    return outcome, False


def test_concurrent_claims_of_one_key_share_a_single_fetch() -> None:
    """Three claims of one (URL, node) at once: one fetch, two shared outcomes."""
    calls = 0

    async def go() -> list[tuple[ItemOutcome, bool]]:
        coalescer = Coalescer(60)
        gate = asyncio.Event()

        async def fetch() -> ItemOutcome:
            nonlocal calls
            calls += 1
            await gate.wait()
            return ItemOutcome(1, True, 1, 200, "MISS", 10)

        tasks = [asyncio.create_task(warm(coalescer, ("u", "n"), fetch)) for _ in range(3)]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(go())
    assert calls == 1
    assert sorted(shared for _, shared in results) == [False, True, True]


def test_a_success_is_reused_within_the_window_and_fetched_again_after() -> None:
    """Within `window` seconds a success is shared; after it, or after a purge on its node, the key is fetched
    again."""
    clock = Clock()
    coalescer = Coalescer(60, clock=clock)
    calls = 0

    async def fetch() -> ItemOutcome:
        nonlocal calls
        calls += 1
        return ItemOutcome(1, True, 1, 200, "MISS", 10)

    async def go() -> None:
        await warm(coalescer, ("u", "n"), fetch)
        clock.now += 30
        assert (await warm(coalescer, ("u", "n"), fetch))[1] is True
        assert (await warm(coalescer, ("u", "other"), fetch))[1] is False
        clock.now += 31
        assert (await warm(coalescer, ("u", "n"), fetch))[1] is False
        coalescer.changed("n")
        assert (await warm(coalescer, ("u", "n"), fetch))[1] is False

    asyncio.run(go())
    assert calls == 4


def test_a_success_is_shared_no_longer_than_the_nodes_copy_stays_fresh() -> None:
    """A warm whose answer said the copy lasts 3 s is shared for 3 s of the 60 s window (a tester's max-age=3:
    a second task 5 s later was reported warmed while every node's copy had expired); one that told no
    lifetime, for the window."""
    clock = Clock()
    coalescer = Coalescer(60, clock=clock)
    calls = 0

    def fetch_lasting(fresh_for: float | None) -> Callable[[], Awaitable[ItemOutcome]]:
        async def fetch() -> ItemOutcome:
            nonlocal calls
            calls += 1
            return ItemOutcome(1, True, 1, 200, "MISS", 10, fresh_for=fresh_for)

        return fetch

    async def go() -> None:
        await warm(coalescer, ("short", "n"), fetch_lasting(3.0))
        await warm(coalescer, ("long", "n"), fetch_lasting(600.0))
        await warm(coalescer, ("untold", "n"), fetch_lasting(None))
        clock.now += 2.5
        assert (await warm(coalescer, ("short", "n"), fetch_lasting(3.0)))[1] is True
        clock.now += 1
        assert (await warm(coalescer, ("short", "n"), fetch_lasting(3.0)))[1] is False  # expired: fetched
        clock.now += 50
        assert (await warm(coalescer, ("long", "n"), fetch_lasting(600.0)))[1] is True  # the window bounds it
        assert (await warm(coalescer, ("untold", "n"), fetch_lasting(None)))[1] is True
        clock.now += 10
        assert (await warm(coalescer, ("long", "n"), fetch_lasting(600.0)))[1] is False
        assert (await warm(coalescer, ("untold", "n"), fetch_lasting(None)))[1] is False

    asyncio.run(go())
    assert calls == 6


def test_a_purge_of_any_url_on_a_node_ends_the_sharing_of_that_nodes_earlier_warms_only() -> None:
    """A directory purge covers URLs of any spelling: after a purge on node n (of whatever URL), no success of n
    from before it is shared, while node m's still are (before, only the purged URL's own key was forgotten, so
    a warm right after a directory refresh was answered "succeeded" from memory and never fetched)."""
    coalescer = Coalescer(60)
    calls = 0

    async def fetch() -> ItemOutcome:
        nonlocal calls
        calls += 1
        return ItemOutcome(1, True, 1, 200, "MISS", 10)

    async def go() -> list[bool]:
        for key in (("http://www.example.test/d/a", "n"), ("http://WWW.EXAMPLE.TEST/d/b", "n"), ("x", "m")):
            await warm(coalescer, key, fetch)
        coalescer.changed("n")  # the purge of http://www.example.test/d/ begins …
        coalescer.changed("n")  # … and ends
        shared = []
        for key in (("http://www.example.test/d/a", "n"), ("http://WWW.EXAMPLE.TEST/d/b", "n"), ("x", "m")):
            shared.append((await warm(coalescer, key, fetch))[1])
        shared.append((await warm(coalescer, ("http://www.example.test/d/a", "n"), fetch))[1])  # the new fetch
        return shared

    assert asyncio.run(go()) == [False, False, True, True]
    assert calls == 5


def test_a_warm_that_overlapped_a_purge_is_not_shared_and_its_followers_fetch_again() -> None:
    """A fetch that began before a purge on its node and ended after the purge began may have filled the cache
    before the purge emptied it: neither the claims waiting on it nor later ones get its success."""
    calls = 0

    async def go() -> list[tuple[ItemOutcome, bool]]:
        coalescer = Coalescer(60)
        gate = asyncio.Event()

        async def fetch() -> ItemOutcome:
            nonlocal calls
            calls += 1
            if calls == 1:
                await gate.wait()
            return ItemOutcome(calls, True, 1, 200, "MISS", 10)

        leader = asyncio.create_task(warm(coalescer, ("u", "n"), fetch))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(warm(coalescer, ("u", "n"), fetch))
        await asyncio.sleep(0.01)
        coalescer.changed("n")
        gate.set()
        results = list(await asyncio.gather(leader, follower))
        results.append(await warm(coalescer, ("u", "n"), fetch))
        return results

    (lead, lead_shared), (follow, follow_shared), (later, later_shared) = asyncio.run(go())
    assert (lead.item_id, lead_shared) == (1, False)
    assert (follow.item_id, follow_shared) == (2, False)  # fetched itself after the purge
    assert (later.item_id, later_shared) == (2, True)  # the follower's fetch, begun after the purge, is shared
    assert calls == 2


def test_a_failure_is_not_shared_and_the_follower_fetches_itself() -> None:
    """When the first fetch fails, a claim that waited for it makes its own fetch."""
    outcomes = [ItemOutcome(1, False, 1, 503, error="HTTP 503"), ItemOutcome(2, True, 1, 200)]

    async def go() -> list[tuple[ItemOutcome, bool]]:
        coalescer = Coalescer(60)

        async def fetch() -> ItemOutcome:
            await asyncio.sleep(0.01)
            return outcomes.pop(0)

        return await asyncio.gather(warm(coalescer, ("u", "n"), fetch), warm(coalescer, ("u", "n"), fetch))

    first, second = asyncio.run(go())
    assert first[0].succeeded is False and second == (ItemOutcome(2, True, 1, 200), False)


def test_a_leader_that_raises_lets_its_follower_fetch() -> None:
    """A fetch that raised (say it was cancelled) shares nothing: the claim that followed it fetches."""
    calls = 0

    async def go() -> tuple[ItemOutcome, bool]:
        coalescer = Coalescer(60)

        async def broken() -> ItemOutcome:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")

        async def fine() -> ItemOutcome:
            nonlocal calls
            calls += 1
            return ItemOutcome(2, True, 1, 200)

        leader = asyncio.create_task(warm(coalescer, ("u", "n"), broken))
        await asyncio.sleep(0)
        follower = asyncio.create_task(warm(coalescer, ("u", "n"), fine))
        results = await asyncio.gather(leader, follower, return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert await coalescer.share(("u", "n")) == ItemOutcome(2, True, 1, 200)  # the follower's success is kept
        return results[1]  # type: ignore[return-value]

    assert asyncio.run(go()) == (ItemOutcome(2, True, 1, 200), False)
    assert calls == 2


def test_window_zero_turns_it_off() -> None:
    """dedupe_seconds = 0: every claim fetches."""
    calls = 0

    async def fetch() -> ItemOutcome:
        nonlocal calls
        calls += 1
        return ItemOutcome(1, True, 1, 200)

    async def go() -> None:
        coalescer = Coalescer(0)
        for _ in range(3):
            await warm(coalescer, ("u", "n"), fetch)

    asyncio.run(go())
    assert calls == 3


def test_a_follower_cancelled_with_its_leader_at_a_stop_does_not_fetch() -> None:
    """A stop cancels every warm at once: the leader (its fetch cancelled, it ends unshared) and a claim following
    it. The follower ends cancelled (before: it took its leader's cancel for a failure to share, became the
    leader and sent the whole request, holding the stop past grace_seconds for a slow object)."""
    fetches: list[str] = []

    async def fetch(who: str) -> ItemOutcome:
        fetches.append(who)
        await asyncio.sleep(30)
        return ItemOutcome(1, True, 1, 200)

    async def go() -> tuple[bool, list[str]]:
        coalescer = Coalescer(window=60.0)
        key = ("http://www.example.test/slow", "n")
        leader = asyncio.create_task(warm(coalescer, key, lambda: fetch("leader")))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(warm(coalescer, key, lambda: fetch("follower")))
        await asyncio.sleep(0.01)
        leader.cancel()  # in the order a stop cancels the lanes' workers: the leader's `end` runs first
        follower.cancel()
        await asyncio.wait({leader, follower}, timeout=5)
        return follower.cancelled(), fetches

    follower_cancelled, fetched = asyncio.run(go())
    assert follower_cancelled
    assert fetched == ["leader"]


def test_a_reload_turning_the_window_to_zero_while_a_fetch_is_followed_strands_nothing() -> None:
    """dedupe_seconds set to 0 by a reload while a claim follows another's fetch: the follower fetches for itself
    (sharing is off now) and the key is left with no running fetch; set back to 60, a later warm of the key
    fetches. Before, `end` returned at once with the window at 0: the leader's entry stayed, its follower waited
    for ever (a task in progress for ever), and every later warm of the key followed a fetch long over."""
    fetches: list[str] = []

    async def go() -> list[tuple[ItemOutcome, bool]]:
        coalescer = Coalescer(60)
        key = ("u", "n")
        gate = asyncio.Event()

        async def fetch(who: str) -> ItemOutcome:
            fetches.append(who)
            await gate.wait()
            return ItemOutcome(1, True, 1, 200)

        leader = asyncio.create_task(warm(coalescer, key, lambda: fetch("leader")))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(warm(coalescer, key, lambda: fetch("follower")))
        await asyncio.sleep(0.01)
        coalescer.window = 0  # the reload
        gate.set()
        results = list(await asyncio.wait_for(asyncio.gather(leader, follower), 5))
        assert not coalescer._running
        coalescer.window = 60  # and another
        results.append(await asyncio.wait_for(warm(coalescer, key, lambda: fetch("later")), 5))
        return results

    results = asyncio.run(go())
    assert fetches == ["leader", "follower", "later"]
    assert [shared for _, shared in results] == [False, False, False]


def test_a_fetch_begun_with_the_window_at_zero_does_not_end_a_later_ones_sharing() -> None:
    """A fetch begun while dedupe_seconds was 0 (it has no entry) that ends after a reload set it to 60 and
    another claim began a fetch of the key: the later fetch stays the one its followers wait for."""

    async def go() -> tuple[list[tuple[ItemOutcome, bool]], int]:
        coalescer = Coalescer(0)
        key = ("u", "n")
        first_gate, second_gate = asyncio.Event(), asyncio.Event()
        calls = 0

        async def fetch(gate: asyncio.Event, status: int) -> ItemOutcome:
            nonlocal calls
            calls += 1
            await gate.wait()
            return ItemOutcome(1, True, 1, status)

        early = asyncio.create_task(warm(coalescer, key, lambda: fetch(first_gate, 201)))
        await asyncio.sleep(0.01)
        coalescer.window = 60
        later = asyncio.create_task(warm(coalescer, key, lambda: fetch(second_gate, 202)))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(warm(coalescer, key, lambda: fetch(second_gate, 203)))
        await asyncio.sleep(0.01)
        first_gate.set()
        await asyncio.wait_for(early, 5)
        assert key in coalescer._running  # the later fetch's, untouched
        second_gate.set()
        results = await asyncio.wait_for(asyncio.gather(early, later, follower), 5)
        return results, calls

    results, calls = asyncio.run(go())
    assert calls == 2
    assert [(outcome.http_status, shared) for outcome, shared in results] == [(201, False), (202, False), (202, True)]
