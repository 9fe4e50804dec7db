"""The engine's per-node lanes follow a reloaded config (a node's width changes without a restart); its
outcome writer does not hold a task's last outcomes back."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewarm.config import Config, Node, parse_config
from edgewarm.engine import Engine, FetchResult
from edgewarm.engine.node_health import FAILURES_IN_A_ROW, NodeHealth
from edgewarm.errors import StoreError
from edgewarm.models import (
    ItemAction,
    ItemOutcome,
    ItemState,
    NewItem,
    NewTask,
    QuotaCharge,
    Task,
    TaskKind,
    TaskStatus,
)
from edgewarm.nodes import CacheState
from edgewarm.store import TaskStore, open_store
from edgewarm.urls import TargetUrl

pytestmark = pytest.mark.anyio

LATENCY = 0.01  # seconds each fake request takes: long enough for the lane's workers to overlap
DEADLINE = 30.0


class CountingFetcher:
    """Answers every request after LATENCY, counting the requests in flight per node (now and at most)."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.requests = 0
        self.health = None

    def reset_peaks(self) -> None:
        self.peak = {}

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        now = self.in_flight[node.name] = self.in_flight.get(node.name, 0) + 1
        self.peak[node.name] = max(self.peak.get(node.name, 0), now)
        try:
            await asyncio.sleep(LATENCY)
        finally:
            self.in_flight[node.name] -= 1
            self.requests += 1
        return FetchResult(200, 100, CacheState.MISS)

    def tells_misses(self, node: Node) -> bool:
        return True


def config(
    per_node: int,
    *,
    node_width: int | None = None,
    flush_interval: float = 0.05,
    node_name: str = "e1",
    node_kind: str = "generic",
    users: tuple[str, ...] = ("u",),
    **engine_keys: Any,
) -> Config:
    node: dict[str, Any] = {"name": node_name, "url": "http://127.0.0.1:1", "kind": node_kind}
    if node_width is not None:
        node["concurrency"] = node_width
    engine = {
        "per_node_concurrency": per_node,
        "concurrency": 64,
        "dedupe_seconds": 0,
        "flush_interval": flush_interval,
        **engine_keys,
    }
    return parse_config(
        {
            "store": "memory://",
            "engine": engine,
            "nodes": [node],
            "users": [{"name": name, "secret": "s" * 16, "domains": ["example.test"]} for name in users],
        }
    )


async def submit(store: TaskStore, count: int, node: str = "e1", user: str = "u", folder: str = "") -> str:
    task_id = str(uuid.uuid4())
    items = tuple(NewItem(seq=i, url=f"http://example.test/{folder}{task_id}/{i}", node=node) for i in range(count))
    quota = QuotaCharge("20261128", count, 0, 10**9, 10)
    await store.create_task(NewTask(task_id, user, TaskKind.PREFETCH, time.time(), items, quota))
    return task_id


async def ended(store: TaskStore, task_id: str) -> Task | None:
    """The task once it has ended, or as it is after DEADLINE."""
    for _ in range(int(DEADLINE / 0.01)):
        task = await store.get_task(task_id)
        if task is not None and task.status is not TaskStatus.IN_PROGRESS:
            break
        await asyncio.sleep(0.01)
    return task


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


async def test_a_reload_widens_and_narrows_a_nodes_lane() -> None:
    """Width 4, then 1 and 3 by [engine] per_node_concurrency, then 2 by the node's own `concurrency`: the
    requests in flight to the node peak at exactly that width in each phase, with the engine never restarted."""
    fetcher = CountingFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(4), store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            done = 0
            for new_config, count, width in (
                (None, 40, 4),
                (config(1), 20, 1),
                (config(3), 30, 3),
                (config(3, node_width=2), 20, 2),
            ):
                if new_config is not None:
                    engine.reconfigure(new_config)
                fetcher.reset_peaks()
                await submit(store, count)
                engine.wake()
                done += count
                await until(lambda d=done: fetcher.requests >= d, f"{count} requests at width {width}")
                assert fetcher.peak == {"e1": width}
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert fetcher.requests == done  # nothing fetched twice, nothing left out


class HeldFetcher:
    """Holds the requests of URLs under /slow/ until `release` is set (an origin that answers a byte at a time);
    answers the others at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.slow = 0  # in flight
        self.slow_peak = 0
        self.fast = 0  # answered
        self.health = None

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        if target.path_query.startswith("/slow/"):
            self.slow += 1
            self.slow_peak = max(self.slow_peak, self.slow)
            try:
                await self.release.wait()
            finally:
                self.slow -= 1
        else:
            self.fast += 1
        return FetchResult(200, 100, CacheState.MISS)

    def tells_misses(self, node: Node) -> bool:
        return True


class RestartingFetcher(HeldFetcher):
    """HeldFetcher, with a NodeHealth; the requests of the paths in `fail_once` are answered 503 once."""

    def __init__(self) -> None:
        super().__init__()
        self.health = NodeHealth()  # type: ignore[assignment]
        self.fail_once: set[str] = set()

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        answer = await super().request(method, node, target, headers)
        if target.path_query in self.fail_once:
            self.fail_once.discard(target.path_query)
            return FetchResult(503, 0, None)
        return answer


async def test_warms_done_again_are_counted_apart_not_as_more_items_finished() -> None:
    """A Varnish node held down and back while a task runs: its warms done already are done again, and counted
    as `rewarmed` (after a 503 and a retry too), not as more items finished (a tester: items_finished_total said
    170 succeeded of 140 items; edgewarm_fetches_total 210 succeeded of 110 on the node)."""
    fetcher = RestartingFetcher()
    quick = config(4, node_kind="varnish", backoff_base=0.001, backoff_max=0.002)
    task_id = str(uuid.uuid4())
    paths = [f"/{task_id}/0", f"/{task_id}/1", f"/slow/{task_id}"]  # the slow one keeps the task running
    items = tuple(NewItem(seq=i, url=f"http://example.test{path}", node="e1") for i, path in enumerate(paths))
    async with open_store("memory://") as store:
        engine = Engine(quick, store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            quota = QuotaCharge("20261128", 3, 0, 10**9, 10)
            await store.create_task(NewTask(task_id, "u", TaskKind.PREFETCH, time.time(), items, quota))
            engine.wake()
            for _ in range(int(DEADLINE / 0.01)):
                if (await store.task_counts(task_id)).succeeded == 2:
                    break
                await asyncio.sleep(0.01)
            assert fetcher.fast == 2 and fetcher.slow == 1
            fetcher.fail_once = set(paths[:2])
            node = quick.nodes[0]
            for _ in range(FAILURES_IN_A_ROW):
                fetcher.health.observe(node, False, "cannot connect")
            fetcher.health.observe(node, True, None)  # back: came_back() tells the engine
            engine.wake()
            await until(lambda: fetcher.fast == 6, "the task's two warms done again, each after a 503")
            fetcher.release.set()
            task = await ended(store, task_id)
            assert task is not None and (task.status, task.succeeded) == (TaskStatus.SUCCEEDED, 3), task
        finally:
            fetcher.release.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    got = {
        (s.name, s.labels.get("outcome") or s.labels.get("state")): s.value
        for family in text_string_to_metric_families(engine.metrics.render().decode())
        for s in family.samples
        if s.name in ("edgewarm_fetches_total", "edgewarm_items_finished_total") and s.value
    }
    assert got == {
        ("edgewarm_fetches_total", "succeeded"): 3,
        ("edgewarm_fetches_total", "retried"): 2,
        ("edgewarm_fetches_total", "rewarmed"): 2,
        ("edgewarm_items_finished_total", "succeeded"): 3,
    }


@pytest.mark.parametrize("users", [1, 2])
async def test_one_users_slow_requests_leave_a_worker_of_the_lane_for_the_other_users(users: int) -> None:
    """With other users configured, one user's claims take at most width - 1 of a lane's workers: another
    user's items start at once beside a user's requests that take long (a tester's: 64 requests to a slow
    origin of one user's held every worker of the node, and another user's one URL waited 17-37 s for one of
    them to end). One user alone takes every worker."""
    fetcher = HeldFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(4, users=("u", "v")[:users]), store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            slow = await submit(store, 10, folder="slow/")
            engine.wake()
            await until(lambda: fetcher.slow == 4 - (users - 1), "the slow user's requests under way")
            await asyncio.sleep(0.1)
            assert fetcher.slow_peak == 4 - (users - 1)
            if users == 2:
                fast = await submit(store, 3, user="v")
                engine.wake()
                await until(lambda: fetcher.fast == 3, "the other user's items, beside the slow ones")
                assert fetcher.slow == 3
                task = await ended(store, fast)
                assert task is not None and task.status is TaskStatus.SUCCEEDED, task
            fetcher.release.set()
            task = await ended(store, slow)
            assert task is not None and task.status is TaskStatus.SUCCEEDED, task
        finally:
            fetcher.release.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


async def test_narrowing_in_the_middle_of_a_task_lets_running_requests_end_and_starts_no_more() -> None:
    """Width 8 → 1 while 8 requests run: they finish, and from then on one request at a time; every item ends."""
    fetcher = CountingFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(8), store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            task_id = await submit(store, 60)
            engine.wake()
            await until(lambda: fetcher.in_flight.get("e1", 0) == 8, "8 requests in flight")
            engine.reconfigure(config(1))
            await until(lambda: fetcher.in_flight["e1"] <= 1, "the lane narrowed")
            fetcher.reset_peaks()
            await until(lambda: fetcher.requests >= 60, "every item fetched")
            assert fetcher.peak == {"e1": 1}
            task = await ended(store, task_id)  # the last outcomes are written in a batch
            assert task is not None and task.status is TaskStatus.SUCCEEDED, task
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert fetcher.requests == 60


async def test_a_replaced_fetcher_finishes_its_requests_and_is_released_only_then() -> None:
    """The fetcher replaced while 4 requests run on it gets no new request; the future says it is free only
    once those 4 ended; the new fetcher takes every later item; every item is fetched exactly once."""
    old, new = CountingFetcher(), CountingFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(4), store, old)
        runner = asyncio.create_task(engine.run())
        try:
            await submit(store, 40)
            engine.wake()
            await until(lambda: old.in_flight.get("e1", 0) == 4, "4 requests in flight on the old fetcher")
            assert engine.metrics.registry.get_sample_value("edgewarm_items_in_flight") == 4
            released = engine.replace_fetcher(new)
            assert not released.done()
            started_on_old = old.requests + old.in_flight["e1"]
            await asyncio.wait_for(released, DEADLINE)
            assert old.in_flight["e1"] == 0 and old.requests == started_on_old  # none started after the swap
            await until(lambda: old.requests + new.requests >= 40, "every item fetched")
            assert new.requests == 40 - started_on_old > 0
            assert engine.replace_fetcher(old).done()  # `new` is idle now: free at once
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert old.requests + new.requests == 40


async def test_the_last_outcomes_are_written_at_once_not_after_the_flush_interval() -> None:
    """With `flush_interval` at 60 s, a batch waits to fill only while items are still being worked: a task's
    last outcome, with nothing else in hand, is written at once (the task ends long before 60 s), twice over."""
    fetcher = CountingFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(4, flush_interval=60.0), store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            for count in (1, 10):
                task_id = await submit(store, count)
                engine.wake()
                deadline = time.monotonic() + 10.0
                while (task := await store.get_task(task_id)) is None or task.finished_at is None:
                    assert time.monotonic() < deadline, f"the task of {count} was not finished after 10 s"
                    await asyncio.sleep(0.01)
                assert task.status is TaskStatus.SUCCEEDED and fetcher.requests >= count
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


class RecordingFetcher(CountingFetcher):
    """Also notes when each request begins and ends: (event, method, path)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        self.events.append(("begin", method, target.path_query))
        try:
            return await super().request(method, node, target, headers)
        finally:
            self.events.append(("end", method, target.path_query))


async def test_purges_of_two_engines_waiting_for_each_others_warms_leave_the_lanes_to_them() -> None:
    """Engines A and B on one store, lanes one wide. A holds a purge of /x and then a warm of /y, B a purge of
    /y and then a warm of /x. Each purge must follow the other engine's warm of its object, and waits for it
    out of its lane: each lane sends its warm meanwhile, then the purges go. (Waiting in the lane, each purge
    kept the warm the other waits for from being sent, for WARMS_WAIT_SECONDS.)"""
    fetcher = RecordingFetcher()
    async with open_store("memory://") as store:

        async def task_of(kind: TaskKind, path: str, due_in: float = 0.0) -> None:
            action = ItemAction.PURGE if kind is TaskKind.REFRESH else ItemAction.WARM
            items = (NewItem(seq=0, url=f"http://example.test{path}", node="e1", action=action),)
            quota = QuotaCharge("20261128", 1, 0, 10**9, 10)
            await store.create_task(NewTask(str(uuid.uuid4()), "u", kind, time.time() + due_in, items, quota))

        engines = {name: Engine(config(1), store, fetcher, worker_id=name, sole=False) for name in "AB"}
        # Each warm submitted before the purge of its object (a later task's warm waits in the store for an
        # earlier task's purge, PURGE_FIRST): B's warm of /x is due just after A's claim.
        await task_of(TaskKind.PREFETCH, "/y")
        await task_of(TaskKind.PREFETCH, "/x", due_in=0.2)
        await task_of(TaskKind.REFRESH, "/x")
        held = {"A": await store.claim_due_items("A", 10, time.time(), 60.0)}
        await task_of(TaskKind.REFRESH, "/y")
        held["B"] = await store.claim_due_items("B", 10, time.time() + 0.2, 60.0)
        for name, purged, warmed in (("A", "/x", "/y"), ("B", "/y", "/x")):
            assert sorted((c.action, c.url[-2:]) for c in held[name]) == [
                (ItemAction.PURGE, purged),
                (ItemAction.WARM, warmed),
            ]
        for name, engine in engines.items():  # as the engine's claim loop hands out what it claimed
            for claim in held[name]:
                engine._hand_out(claim)
        runners = [asyncio.create_task(engine.run()) for engine in engines.values()]
        try:
            await until(lambda: fetcher.requests >= 4, "both warms and both purges sent")
        finally:
            for engine in engines.values():
                engine.stop()
            await asyncio.wait_for(asyncio.gather(*runners), DEADLINE)
    for path in ("/x", "/y"):
        order = [(event, method) for event, method, p in fetcher.events if p == path]
        assert order == [("begin", "GET"), ("end", "GET"), ("begin", "PURGE"), ("end", "PURGE")], (path, order)


async def test_questions_for_other_workers_warms_that_keep_failing_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that does not answer (a PostgreSQL without free connections): each purge goes as if there were no
    other engine, and the failure is logged once, not at each question (a tester's: 2,800 lines in 3.5 min)."""
    async with open_store("memory://") as store:
        asked = [0]

        async def refusing(*args: Any) -> dict[int, tuple[str, str]]:
            asked[0] += 1
            raise StoreError("postgresql: too many connections")

        store.others_warms = refusing  # type: ignore[method-assign]
        fetcher = CountingFetcher()
        engine = Engine(config(4), store, fetcher, sole=False)
        runner = asyncio.create_task(engine.run())
        try:
            with caplog.at_level("INFO", logger="edgewarm.engine"):
                for number in range(6):
                    items = (NewItem(0, f"http://example.test/p/{number}", "e1", action=ItemAction.PURGE),)
                    quota = QuotaCharge("20261128", 1, 0, 10**9, 10)
                    await store.create_task(
                        NewTask(str(uuid.uuid4()), "u", TaskKind.REFRESH, time.time(), items, quota)
                    )
                    engine.wake()
                    await until(lambda n=number: fetcher.requests > n, f"purge {number} sent")
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    told = [r.getMessage() for r in caplog.records if "other workers' warms" in r.getMessage()]
    assert asked[0] >= 6 and len(told) == 1, (asked, told)
    assert told[0] == "asking for other workers' warms failed: postgresql: too many connections"


async def test_outcome_writes_that_keep_failing_are_logged_once_then_once_when_they_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that refuses writes (a full disk): the outcomes are kept and written again; the failure is logged
    as it begins and once more when the writes work, not at each try (before: a line every try, every 5 s
    once the backoff reached its most, for as long as the disk stayed full)."""
    async with open_store("memory://") as store:
        engine = Engine(config(4), store, CountingFetcher())
        real, tries = store.record_outcomes, [0]

        async def refusing(*args: Any) -> int:
            tries[0] += 1
            if tries[0] <= 4:
                raise StoreError("sqlite: database or disk is full")
            return await real(*args)

        store.record_outcomes = refusing  # type: ignore[method-assign]
        task_id = await submit(store, 1)
        (claim,) = await store.claim_due_items(engine.worker_id, 1, time.time(), 60.0)
        engine._leased[claim.item_id] = claim.task_id
        with caplog.at_level("INFO", logger="edgewarm.engine"):
            await asyncio.wait_for(engine._flush([ItemOutcome(claim.item_id, True, 1)]), DEADLINE)
        assert (await store.get_task(task_id)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    said = [r.getMessage() for r in caplog.records if "writing outcomes" in r.getMessage()]
    assert said == [
        "writing outcomes (kept, and tried again) failed: sqlite: database or disk is full",
        said[-1],
    ] and said[-1].startswith("writing outcomes (kept, and tried again) works again, after "), said
    assert "(3 more failures alike not logged)" in said[-1] and tries[0] == 5


async def test_a_task_ended_by_a_write_whose_answer_was_lost_is_noted_once() -> None:
    """The store commits a batch that ends a task, but its answer is lost (PostgreSQL: the connection drops after
    COMMIT) and the batch is written again: the task is noted as ended once (tasks_finished, its log line, its
    webhook's wake). Before, only a task ended at the last try's time was noted: this one, ended at the first
    try's, never was."""
    async with open_store("memory://") as store:
        engine = Engine(config(4), store, CountingFetcher())
        noted: list[str] = []
        engine.on_task_finished = lambda task: noted.append(task.id)
        real, tries = store.record_outcomes, [0]

        async def answer_lost_once(*args: Any) -> int:
            written = await real(*args)
            tries[0] += 1
            if tries[0] == 1:
                raise StoreError("postgresql: connection was closed in the middle of operation")
            return written

        store.record_outcomes = answer_lost_once  # type: ignore[method-assign]
        task_id = await submit(store, 1)
        (claim,) = await store.claim_due_items(engine.worker_id, 1, time.time(), 60.0)
        engine._leased[claim.item_id] = claim.task_id
        await asyncio.wait_for(engine._flush([ItemOutcome(claim.item_id, True, 1)]), DEADLINE)
    assert tries[0] == 2 and noted == [task_id]
    succeeded = {"status": str(int(TaskStatus.SUCCEEDED))}
    assert engine.metrics.registry.get_sample_value("edgewarm_tasks_finished_total", succeeded) == 1


class StuckNodeFetcher(CountingFetcher):
    """Nodes named "stuck…" answer only once `release` is set; the others as CountingFetcher."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        if node.name.startswith("stuck"):
            await self.release.wait()
        return await super().request(method, node, target, headers)


@pytest.mark.parametrize("stuck", [["stuck"], ["stuck-1", "stuck-2"]])
async def test_a_lanes_items_beyond_its_part_leave_the_room_to_the_other_nodes(stuck: list[str]) -> None:
    """Room 16 (concurrency 8): a first claim gives a node that does not answer 16 of its items (nothing else
    was due). What a lane holds beyond its part of the room (8 of 16 with one such node; 5 with two, whose
    lanes of width 8 may hold 16 each) does not count against the room: another node's 40 items are claimed
    and worked meanwhile (before, the room stayed full until the stuck nodes answered: with one, beyond its
    share of 8 by a claim; with two, each within its share of 16, the room all theirs)."""
    fetcher = StuckNodeFetcher()
    nodes = [{"name": name, "url": f"http://127.0.0.1:{n}"} for n, name in enumerate([*stuck, "e1"], 1)]
    width = 4 if len(stuck) == 1 else 8
    engine_config = {"per_node_concurrency": width, "concurrency": 8, "dedupe_seconds": 0, "flush_interval": 0.05}
    users = [{"name": "u", "secret": "s" * 16, "domains": ["example.test"]}]
    conf = parse_config({"store": "memory://", "engine": engine_config, "nodes": nodes, "users": users})
    async with open_store("memory://") as store:
        engine = Engine(conf, store, fetcher)

        async def submit_to(node: str, count: int) -> None:
            items = tuple(NewItem(seq=i, url=f"http://example.test/{node}/{i}", node=node) for i in range(count))
            quota = QuotaCharge("20261128", count, 0, 10**9, 10)
            await store.create_task(NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, time.time(), items, quota))

        for name in stuck:
            await submit_to(name, 40)
        runner = asyncio.create_task(engine.run())
        try:
            await until(lambda: len(engine._in_hand) >= 16, "16 of the stuck nodes' items in hand")
            await submit_to("e1", 40)
            engine.wake()
            await until(lambda: fetcher.requests == 40, "the other node's 40 items while the stuck nodes' wait")
            assert engine._lanes["stuck" if len(stuck) == 1 else "stuck-1"].held == 16
        finally:
            fetcher.release.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


async def test_a_lane_holding_its_share_of_one_users_items_still_takes_another_users() -> None:
    """Room 16 (concurrency 8), a node that does not answer and another: the first claim gives the first node's
    lane 16 of alice's 40 items, beyond its share (8), and no claim takes more of hers; bob's 3 items of that
    node, submitted then, are claimed all the same, and once the node answers they go before alice's 12
    waiting (turns: engine/turns.py). Before, the lane was left out of every claim until it held fewer than its
    share, and then gave out its claims in the order they came."""
    fetcher = StuckNodeFetcher()
    engine_config = {"per_node_concurrency": 4, "concurrency": 8, "dedupe_seconds": 0, "flush_interval": 0.05}
    users = [{"name": name, "secret": name * 16, "domains": ["example.test"]} for name in ("alice", "bob")]
    nodes = [{"name": "stuck", "url": "http://127.0.0.1:1"}, {"name": "e1", "url": "http://127.0.0.1:2"}]
    conf = parse_config({"store": "memory://", "engine": engine_config, "nodes": nodes, "users": users})
    async with open_store("memory://") as store:
        engine = Engine(conf, store, fetcher)
        sent: list[str] = []
        request = fetcher.request

        async def noting(method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None) -> Any:
            sent.append(target.path_query)
            return await request(method, node, target, headers)

        fetcher.request = noting  # type: ignore[method-assign]

        async def submit(user: str, count: int) -> None:
            items = tuple(NewItem(seq=i, url=f"http://example.test/{user}/{i}", node="stuck") for i in range(count))
            quota = QuotaCharge("20261128", count, 0, 10**9, 10)
            await store.create_task(NewTask(str(uuid.uuid4()), user, TaskKind.PREFETCH, time.time(), items, quota))

        await submit("alice", 40)
        runner = asyncio.create_task(engine.run())
        try:
            await until(lambda: len(engine._in_hand) >= 16, "16 of alice's items in hand")
            await submit("bob", 3)
            engine.wake()

            def in_hand(user: str) -> int:
                return sum(f"/{user}/" in claim.url for claim in engine._in_hand.values())

            await until(lambda: in_hand("bob") == 3, "bob's 3 items in hand")
            assert in_hand("alice") == 16
            fetcher.release.set()
            await until(lambda: fetcher.requests == 43, "every item sent")
            firsts = [path.split("/")[1] for path in sent[4:8]]  # after the 4 of alice's under way
            assert firsts.count("bob") == 2 and sent.index("/bob/2") < 12, sent
        finally:
            fetcher.release.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


async def test_a_lane_at_its_share_takes_other_users_items_up_to_its_share_however_many_users() -> None:
    """Room 16 (concurrency 8), a node that does not answer and another; 60 users with 3 items each on the
    first: its lane (share 8) takes the items of users holding fewer than an even part of it while the users
    but the one holding most hold less than its share (and a claim's worth more), however many users there
    are. Before, each user not in the lane yet was claimed (the even part of a share among 60 users is 1): a
    tester's worker held 453 items of a slow node's for 270 users, 10 times the lane's share, which other
    workers could not take meanwhile."""
    fetcher = StuckNodeFetcher()
    engine_config = {"per_node_concurrency": 4, "concurrency": 8, "dedupe_seconds": 0, "flush_interval": 0.05}
    names = [f"user{n:02d}" for n in range(60)]
    users = [{"name": name, "secret": name * 4, "domains": ["example.test"]} for name in names]
    nodes = [{"name": "stuck", "url": "http://127.0.0.1:1"}, {"name": "e1", "url": "http://127.0.0.1:2"}]
    conf = parse_config({"store": "memory://", "engine": engine_config, "nodes": nodes, "users": users})
    async with open_store("memory://") as store:
        for name in names:
            items = tuple(NewItem(seq=i, url=f"http://example.test/{name}/{i}", node="stuck") for i in range(3))
            quota = QuotaCharge("20261128", 3, 0, 10**9, 10)
            await store.create_task(NewTask(str(uuid.uuid4()), name, TaskKind.PREFETCH, time.time(), items, quota))
        engine = Engine(conf, store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            await until(lambda: len(engine._in_hand) >= 16, "the lane at its share")
            for _ in range(20):  # claims go on while the other node's part of the room is free
                engine.wake()
                await asyncio.sleep(0.02)
            assert 16 <= engine._lanes["stuck"].held <= 2 * 8 + 16, engine._lanes["stuck"].held
            fetcher.release.set()
            await until(lambda: fetcher.requests == 180, "every item sent")
        finally:
            fetcher.release.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


@pytest.mark.parametrize(
    ("concurrency", "asked", "widths"),
    [
        (256, [64, 64], [64, 64]),  # they fit: as asked
        (256, [64] * 5, [51, 51, 51, 51, 52]),  # 320 asked: 256 shared evenly (the defaults with 5 nodes)
        (64, [4, 64, 64], [4, 30, 30]),  # the one asking less than an even split gets it, the others the rest
        (8, [64] * 11, [1] * 11),  # at least one each
    ],
)
async def test_node_widths_share_the_engines_concurrency_once_they_add_up_to_more(
    concurrency: int, asked: list[int], widths: list[int]
) -> None:
    """The fetcher has `[engine] concurrency` connections for all nodes: widths adding up to more would let slow
    nodes' requests hold them all, and the other nodes' requests wait for one."""
    nodes = [{"name": f"n{i}", "url": f"http://127.0.0.1:{i + 1}", "concurrency": w} for i, w in enumerate(asked)]
    users = [{"name": "u", "secret": "s" * 16, "domains": ["example.test"]}]
    conf = parse_config({"store": "memory://", "engine": {"concurrency": concurrency}, "nodes": nodes, "users": users})
    async with open_store("memory://") as store:
        engine = Engine(conf, store, CountingFetcher())
        assert [engine._widths()[f"n{i}"] for i in range(len(asked))] == widths


class FlakyFetcher(CountingFetcher):
    """Answers 503 to each URL's first `failures` requests, then 200."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.asked: dict[str, list[float]] = {}

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        times = self.asked.setdefault(target.path_query, [])
        times.append(time.monotonic())
        await super().request(method, node, target, headers)
        return FetchResult(503, 0, None) if len(times) <= self.failures else FetchResult(200, 100, CacheState.MISS)


async def test_a_retry_is_claimed_when_its_backoff_ends_not_at_the_next_poll() -> None:
    """An item answered 503 is due again after its backoff (here under 0.1 s); nothing else wakes the engine, and
    it waited for its next poll: with poll_interval = 60, two retries took two minutes (a tester's 10 s poll: 20 s
    for a task of 2 s)."""
    fetcher = FlakyFetcher(failures=2)
    slow_polls = config(4, poll_interval=60.0, backoff_base=0.05, backoff_max=0.1, max_attempts=3)
    async with open_store("memory://") as store:
        engine = Engine(slow_polls, store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            task_id = await submit(store, 3)
            engine.wake()
            task = await ended(store, task_id)
            assert task is not None and task.status is TaskStatus.SUCCEEDED, task
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert fetcher.requests == 9 and all(len(times) == 3 for times in fetcher.asked.values())


async def test_a_retry_set_before_a_restart_is_claimed_when_its_backoff_ends_not_at_the_next_poll() -> None:
    """The first engine put the items off (503, a backoff of 1-2 s) and stopped; the next, with poll_interval =
    60, claims them when they fall due: it asks the store when the earliest is due, as it knows only the due
    times it set itself (before: at its next poll, a minute after its start)."""
    fetcher = FlakyFetcher(failures=1)
    backoff: dict[str, Any] = {"backoff_base": 2.0, "backoff_max": 2.0, "max_attempts": 3}
    async with open_store("memory://") as store:
        first = Engine(config(4, **backoff), store, fetcher)
        runner = asyncio.create_task(first.run())
        try:
            task_id = await submit(store, 3)
            first.wake()
            await until(lambda: fetcher.requests == 3, "the first attempts")
        finally:
            first.stop()
            await asyncio.wait_for(runner, DEADLINE)
        items = await store.list_items(task_id)
        assert [(item.state, item.attempts) for item in items] == [(ItemState.PENDING, 1)] * 3
        second = Engine(config(4, poll_interval=60.0, **backoff), store, fetcher)
        runner = asyncio.create_task(second.run())
        try:
            task = await ended(store, task_id)
            assert task is not None and task.status is TaskStatus.SUCCEEDED, task
        finally:
            second.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert fetcher.requests == 6 and all(len(times) == 2 for times in fetcher.asked.values())


class GatedFetcher(CountingFetcher):
    """Answers only once `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        self.in_flight[node.name] = self.in_flight.get(node.name, 0) + 1
        await self.gate.wait()
        return await super().request(method, node, target, headers)


async def test_leases_cut_by_a_reload_are_renewed_before_they_run_out() -> None:
    """lease_seconds cut from 60 to 1 by a reload: the lease of an item claimed after it is renewed before its
    second is over. Before, the renewer slept the old third of a lease (20 s): the 1 s lease ran out while the
    item was still being sent, and another worker's claim took it and sent it again."""
    fetcher = GatedFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(4, lease_seconds=60.0), store, fetcher, sole=False)
        real, renewed = store.renew_leases, []

        async def renewing(worker: str, item_ids: Any, until: float) -> set[int]:
            renewed.extend(item_ids)
            return await real(worker, item_ids, until)

        store.renew_leases = renewing  # type: ignore[method-assign]
        runner = asyncio.create_task(engine.run())
        try:
            await asyncio.sleep(0.1)  # the renewer sleeps its 20 s
            engine.reconfigure(config(4, lease_seconds=1.0))
            await submit(store, 1)
            engine.wake()
            await until(lambda: fetcher.in_flight.get("e1") == 1, "the item sent")
            (item_id,) = engine._leased
            await asyncio.sleep(0.8)  # the lease taken at the claim, just before, lasts 1 s
            assert item_id in renewed
        finally:
            fetcher.gate.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


async def one_sent_and_one_taken_over(store: TaskStore, engine: Engine, fetcher: GatedFetcher) -> str:
    """A task of 4 items on `engine`'s lane one wide: one sent (held by `fetcher`), three queued, the last of
    them released and claimed by another worker (its lease ran out while this one was frozen). Its task's id."""
    task_id = await submit(store, 4)
    engine.wake()
    await until(lambda: len(engine._leased) == 4 and fetcher.in_flight.get("e1") == 1, "one sent, 3 queued")
    taken = max(engine._leased)
    await store.release_leases(engine.worker_id, [taken], time.time())
    assert [c.item_id for c in await store.claim_due_items("w2", 1, time.time(), 30.0)] == [taken]
    return task_id


async def test_after_a_freeze_past_its_leases_a_worker_sends_nothing_before_asking_the_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker frozen past its leases (SIGSTOP; here: its last renewal set back) while its task was cancelled:
    as it resumes, its lanes send no queued claim before its leases were renewed and the cancels looked up (a
    tester's worker sent a cancelled refresh's purges and warms on resuming, recorded as never sent). A claim
    whose lease the store did not renew (taken over) is not sent either, without an outcome of this worker's."""
    fetcher = GatedFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(1, lease_seconds=30.0), store, fetcher, sole=False)
        runner = asyncio.create_task(engine.run())
        try:
            task_id = await one_sent_and_one_taken_over(store, engine, fetcher)
            assert await store.cancel_task(task_id, None, time.time()) is not None
            engine._renewed -= 60.0  # frozen for 60 s, past the 30 s leases
            with caplog.at_level("INFO", logger="edgewarm.engine"):
                fetcher.gate.set()
                await until(lambda: not engine._in_hand, "the claims in hand ended")
        finally:
            fetcher.gate.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert fetcher.requests == 1  # the one under way at the freeze
    said = [r.getMessage() for r in caplog.records if "no longer leased" in r.getMessage()]
    assert said and said[0].startswith("1 item no longer leased to this worker after 6"), said


async def test_after_a_freeze_the_renewer_running_first_leaves_no_taken_over_claim_to_the_lanes() -> None:
    """The same freeze without a cancel, the lease renewer running before any lane looks (its timer long past
    at the resume): a claim another worker took over meanwhile was sent all the same (a re-tester's: 153 of
    500 URLs warmed twice a node), the renewal having made the lanes trust their claims again. A renewal's
    answer now ends the claims it did not renew, whoever asked it."""
    fetcher = GatedFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(1, lease_seconds=30.0), store, fetcher, sole=False)
        runner = asyncio.create_task(engine.run())
        try:
            await one_sent_and_one_taken_over(store, engine, fetcher)
            engine._renewed -= 60.0  # frozen for 60 s
            assert await engine._renew()  # the renewer's turn comes first
            fetcher.gate.set()
            await until(lambda: not engine._in_hand, "the claims in hand ended")
        finally:
            fetcher.gate.set()
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert fetcher.requests == 3  # the one under way and the two still this worker's; not the one taken over


async def test_items_taken_over_from_a_worker_whose_leases_ran_out_are_said(caplog: pytest.LogCaptureFixture) -> None:
    """On a shared store, a killed worker's items were taken over by the others without a word (a tester's 1,512
    items on PostgreSQL: the tasks only ended a lease later)."""
    fetcher = CountingFetcher()
    async with open_store("memory://") as store:
        task_id = await submit(store, 5)
        await store.claim_due_items("dead-worker", 10, time.time(), 0.3)  # and never heard of again
        engine = Engine(config(4, poll_interval=0.1), store, fetcher, sole=False)
        runner = asyncio.create_task(engine.run())
        try:
            finished = await ended(store, task_id)
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    assert finished is not None and finished.status is TaskStatus.SUCCEEDED and fetcher.requests == 5
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("took over")]
    assert said == [
        "took over 5 items whose leases had run out (the worker that held them died, or was frozen or cut off for "
        "longer than lease_seconds): they run again here"
    ]


async def test_a_stop_does_not_wait_for_a_claim_the_store_does_not_answer() -> None:
    """A store whose statements each waited for another process's lock (SQLite's 10 s) held a stop for as long as
    the claim under way took: a tester's took 24.6 s with grace_seconds = 5. The stop waits STOP_CLAIM_SECONDS
    for it, then goes on without it."""
    fetcher = CountingFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(4, poll_interval=0.05, grace_seconds=0.5), store, fetcher)
        claiming = asyncio.Event()

        async def locked(*args: Any) -> list[Any]:
            claiming.set()
            await asyncio.sleep(60)  # the store's answer, a minute away
            return []

        store.claim_due_items = locked  # type: ignore[method-assign]
        store.next_due_at = locked  # type: ignore[method-assign]  # nor for the look ahead after an empty claim
        runner = asyncio.create_task(engine.run())
        await asyncio.wait_for(claiming.wait(), DEADLINE)
        started = time.monotonic()
        engine.stop()
        await asyncio.wait_for(runner, 10)
        assert time.monotonic() - started < 5


async def test_a_node_removed_by_a_reload_leaves_with_its_lane_and_workers() -> None:
    """The node replaced by reloads, one of another name each time, then the first one added back: only the
    configured node has a lane and workers, and the node added back warms through a new lane. Before, each
    removed node kept its lane and its per_node_concurrency workers for the life of the process."""
    fetcher = CountingFetcher()
    async with open_store("memory://") as store:
        engine = Engine(config(8, node_name="n0"), store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            for name in ("n0", "n1", "n2", "n0"):
                engine.reconfigure(config(8, node_name=name))
                task = await ended(store, await submit(store, 3, node=name))
                assert task is not None and task.status is TaskStatus.SUCCEEDED, task
                for _ in range(500):  # the removed lanes' workers end
                    workers = [t for t in asyncio.all_tasks() if t.get_name().startswith("edgewarm-n")]
                    if len(workers) == 8:
                        break
                    await asyncio.sleep(0.01)
                assert len(workers) == 8, workers
                assert list(engine._lanes) == [name] and len(engine._lanes[name].workers) == 8
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)


async def test_a_retry_claimed_before_the_writer_took_the_stores_answer_is_sent_at_once() -> None:
    """An item answered 503, due again at once: its outcome is committed, but the store's answer reaches the writer
    late (a busy loop, a PostgreSQL answer read after the next claim's), and the claim meanwhile brings the item
    back. It is sent once the answer is taken, not a lease later. Before, the claim was dropped as one of an
    item still in hand: the item waited for its lease to end (here 4 s; by default 60)."""
    fetcher = FlakyFetcher(failures=1)
    quick = config(4, poll_interval=0.05, backoff_base=0.001, backoff_max=0.002, lease_seconds=4.0)
    async with open_store("memory://") as store:
        real = store.record_outcomes

        async def answered_late(*args: Any) -> int:
            written = await real(*args)
            await asyncio.sleep(0.5)
            return written

        store.record_outcomes = answered_late  # type: ignore[method-assign]
        engine = Engine(quick, store, fetcher)
        runner = asyncio.create_task(engine.run())
        try:
            task = await ended(store, await submit(store, 1))
            assert task is not None and task.status is TaskStatus.SUCCEEDED, task
        finally:
            engine.stop()
            await asyncio.wait_for(runner, DEADLINE)
    (times,) = fetcher.asked.values()
    assert len(times) == 2 and times[1] - times[0] < 2.0, times
