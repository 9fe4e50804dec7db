"""Coalescer: one fetch per (URL, node) at a time, successes reused for a window, purges forget."""

from __future__ import annotations

import asyncio

from edgewarm.engine.coalesce import Coalescer
from edgewarm.models import ItemOutcome


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


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

        tasks = [asyncio.create_task(coalescer.warm(("u", "n"), fetch)) for _ in range(3)]
        await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    results = run(go())
    assert calls == 1
    assert sorted(shared for _, shared in results) == [False, True, True]  # type: ignore[union-attr]


def test_a_success_is_reused_within_the_window_and_fetched_again_after() -> None:
    """Within `window` seconds a success is shared; after it, or after forget(), the key is fetched again."""
    clock = Clock()
    coalescer = Coalescer(60, clock=clock)
    calls = 0

    async def fetch() -> ItemOutcome:
        nonlocal calls
        calls += 1
        return ItemOutcome(1, True, 1, 200, "MISS", 10)

    async def go() -> None:
        await coalescer.warm(("u", "n"), fetch)
        clock.now += 30
        assert (await coalescer.warm(("u", "n"), fetch))[1] is True
        assert (await coalescer.warm(("u", "other"), fetch))[1] is False
        clock.now += 31
        assert (await coalescer.warm(("u", "n"), fetch))[1] is False
        coalescer.forget(("u", "n"))
        assert (await coalescer.warm(("u", "n"), fetch))[1] is False

    run(go())
    assert calls == 4


def test_a_failure_is_not_shared_and_the_follower_fetches_itself() -> None:
    """When the first fetch fails, a claim that waited for it makes its own fetch."""
    outcomes = [ItemOutcome(1, False, 1, 503, error="HTTP 503"), ItemOutcome(2, True, 1, 200)]

    async def go() -> list[tuple[ItemOutcome, bool]]:
        coalescer = Coalescer(60)

        async def fetch() -> ItemOutcome:
            await asyncio.sleep(0.01)
            return outcomes.pop(0)

        return await asyncio.gather(coalescer.warm(("u", "n"), fetch), coalescer.warm(("u", "n"), fetch))

    first, second = run(go())  # type: ignore[misc]
    assert first[0].succeeded is False and second == (ItemOutcome(2, True, 1, 200), False)


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
            await coalescer.warm(("u", "n"), fetch)

    run(go())
    assert calls == 3
