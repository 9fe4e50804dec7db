"""Issue #7, part 3a: nodes that misbehave (edgewarm.testing.faults). The engine runs in process on a
memory:// store; every node is a FaultServer on loopback; every wait is bounded.

What must hold: what is worth retrying is retried (5xx, 408, 429, resets, timeouts), what is not fails at once;
each failure says what happened; a stalled node is given up after `read_timeout`; nothing ever hangs, and a
stopping engine hands unfinished items back instead of counting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import edgewarm.engine.actions
import edgewarm.engine.scheduler
import edgewarm.runtime
import edgewarm.store.base
import edgewarm.store.sqlite
from edgewarm.config import Config, User, parse_config
from edgewarm.engine import Engine, Fetcher, NodeHealth
from edgewarm.errors import StoreError
from edgewarm.models import Item, ItemAction, ItemState, NewItem, NewTask, QuotaCharge, Task, TaskKind, TaskStatus
from edgewarm.service import Service
from edgewarm.store import SCHEMA_VERSION, TaskStore, open_store
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import (
    Action,
    Close,
    FaultServer,
    Forward,
    RawRequest,
    Reset,
    Respond,
    ShortBody,
    Stall,
    always,
    sequence,
    unanswered,
)
from edgewarm.testing.service import free_port

from .support import FAST_ENGINE, USER, Rig, base_config, engine_rig

pytestmark = pytest.mark.anyio

URL = "http://www.example.test/a.bin"
BODY = b"x" * 4096


def one_node(server: FaultServer, **extra: object) -> list[dict[str, object]]:
    return [{"name": "node-1", "url": server.url, **extra}]


def node_1_done(count: int) -> Callable[[list[Item]], bool]:
    """Whether `count` of a task's items on node-1 have succeeded (for Rig.items_when)."""
    return lambda items: sum(i.node == "node-1" and i.state is ItemState.SUCCEEDED for i in items) == count


async def warm_one(
    server: FaultServer, engine: dict[str, object] | None = None, timeout: float = 20.0
) -> tuple[Task, Item, float]:
    """Warm URL on `server` alone; the ended task, its one item, and the seconds it took."""
    async with engine_rig(one_node(server), engine) as rig:
        started = time.monotonic()
        taskid = await rig.submit([URL])
        task, items = await rig.wait(taskid, timeout)
        return task, items[0], time.monotonic() - started


# -- retried, then succeeded -------------------------------------------------------------------------------------


async def test_500_then_200_succeeds_on_the_second_attempt() -> None:
    """A node answering 500 and then 200 ends succeeded, attempts 2, having seen exactly two GETs."""
    with FaultServer(sequence(Respond(500), Respond(200, body=BODY))) as node:
        task, item, _ = await warm_one(node)
    assert task.status is TaskStatus.SUCCEEDED
    assert (item.state, item.attempts, item.http_status, item.bytes, item.error) == (
        ItemState.SUCCEEDED,
        2,
        200,
        len(BODY),
        None,
    )
    assert [r.method for r in node.requests] == ["GET", "GET"]


async def test_a_retrys_backoff_runs_from_the_failed_answer_not_from_its_request() -> None:
    """A 503 after 0.6 s with a backoff of 0.2-0.4 s: the retry was sent at once after the answer (the backoff
    counted from the request's start: a tester's 503s after 3 s were retried 0.01 s after each). It waits its
    backoff after the answer."""
    with FaultServer(sequence(Respond(503, delay=0.6), Respond(200, body=BODY))) as node:
        task, item, _ = await warm_one(node, {"max_attempts": 2, "backoff_base": 0.4, "backoff_max": 0.4})
    assert (task.status, item.attempts) == (TaskStatus.SUCCEEDED, 2)
    first, second = node.requests
    assert second.time - (first.time + 0.6) >= 0.15, second.time - first.time


async def test_503_429_408_are_each_retried() -> None:
    """503, 429 and 408 are retried in turn; the fourth attempt's 200 succeeds."""
    with FaultServer(sequence(Respond(503), Respond(429), Respond(408), Respond(200, body=BODY))) as node:
        task, item, _ = await warm_one(node, {"max_attempts": 4})
    assert task.status is TaskStatus.SUCCEEDED
    assert (item.state, item.attempts) == (ItemState.SUCCEEDED, 4)
    assert len(node.requests) == 4


async def test_a_reset_then_an_answer_succeeds() -> None:
    """A connection reset on the first try is retried; the item then succeeds within max_attempts."""
    with FaultServer(sequence(Reset(), Respond(200, body=BODY))) as node:
        task, item, _ = await warm_one(node)
    assert task.status is TaskStatus.SUCCEEDED
    assert item.state is ItemState.SUCCEEDED and 1 <= item.attempts <= 2


async def test_a_slow_body_is_fine_while_it_keeps_moving() -> None:
    """A body trickled over 1.2 s, never silent for read_timeout (0.5 s), succeeds on the first attempt."""
    slow = Respond(200, body=BODY, trickle=0.1, trickle_chunk=len(BODY) // 12)
    with FaultServer(slow) as node:
        task, item, took = await warm_one(node, {"read_timeout": 0.5})
    assert task.status is TaskStatus.SUCCEEDED
    assert (item.attempts, item.bytes) == (1, len(BODY))
    assert took >= 1.0


async def test_a_slow_first_byte_within_read_timeout_succeeds() -> None:
    """Headers after 0.3 s with read_timeout 1 s: succeeded, one attempt."""
    with FaultServer(Respond(200, body=BODY, delay=0.3)) as node:
        task, item, _ = await warm_one(node, {"read_timeout": 1.0})
    assert task.status is TaskStatus.SUCCEEDED and item.attempts == 1


# -- failed, with a clear reason --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_a_4xx_fails_at_once(status: int) -> None:
    """A 4xx other than 408/429 is not retried: one request, failed, 'not retried' in the error."""
    with FaultServer(Respond(status)) as node:
        task, item, _ = await warm_one(node)
    assert task.status is TaskStatus.FAILED
    assert (item.state, item.attempts, item.http_status) == (ItemState.FAILED, 1, status)
    assert item.error == f"HTTP {status} (not retried: the origin refused it)"
    assert len(node.requests) == 1


async def test_a_node_that_always_answers_500_gives_up_after_max_attempts() -> None:
    """Always 500: exactly max_attempts (3) GETs, then failed with 'HTTP 500; gave up after 3 attempts'."""
    with FaultServer(Respond(500)) as node:
        task, item, _ = await warm_one(node)
    assert task.status is TaskStatus.FAILED
    assert (item.attempts, item.http_status) == (3, 500)
    assert item.error == "HTTP 500; gave up after 3 attempts"
    assert len(node.requests) == 3


async def test_a_node_that_resets_every_connection_fails_clearly() -> None:
    """Every connection reset: failed after 3 attempts, the error naming the node and the reset."""
    with FaultServer(Reset()) as node:
        task, item, took = await warm_one(node)
    assert task.status is TaskStatus.FAILED
    assert item.attempts == 3 and item.http_status is None
    assert item.error is not None and "node-1" in item.error and "reset by peer" in item.error
    assert "gave up after 3 attempts" in item.error
    assert took < 5


async def test_a_node_that_closes_without_answering_fails_clearly() -> None:
    """A close before any answer: failed after 3 attempts, 'disconnected' in the error."""
    with FaultServer(Close()) as node:
        task, item, _ = await warm_one(node)
    assert task.status is TaskStatus.FAILED
    assert item.error is not None and "disconnected" in item.error.lower() and "node-1" in item.error


async def test_a_stall_mid_body_times_out_after_read_timeout() -> None:
    """Headers, 1 kB, then 30 s of silence: each attempt times out after read_timeout (0.3 s); the item fails."""
    with FaultServer(Stall(declared=100_000, sent=1000, hold=30.0)) as node:
        task, item, took = await warm_one(node, {"read_timeout": 0.3, "max_attempts": 2})
    assert task.status is TaskStatus.FAILED
    assert item.attempts == 2
    assert item.error == "timeout talking to node-1: silent for read_timeout (0.3 s); gave up after 2 attempts"
    assert 0.6 <= took < 5.0
    assert len(node.requests) == 2


async def test_a_slow_first_byte_beyond_read_timeout_times_out() -> None:
    """No header for 5 s with read_timeout 0.3 s: a timeout, retried, then failed, in well under 5 s."""
    with FaultServer(Respond(200, delay=5.0)) as node:
        task, item, took = await warm_one(node, {"read_timeout": 0.3, "max_attempts": 2})
    assert task.status is TaskStatus.FAILED
    assert item.error is not None and item.error.startswith("timeout talking to node-1")
    assert took < 4.0


async def test_a_body_shorter_than_its_content_length_fails_naming_the_shortfall() -> None:
    """Content-Length 1000 but 10 bytes and a close: never a success; the error tells 10 of 1000 bytes."""
    with FaultServer(ShortBody(declared=1000, sent=10)) as node:
        task, item, _ = await warm_one(node)
    assert task.status is TaskStatus.FAILED
    assert item.state is ItemState.FAILED and item.attempts == 3
    assert item.error is not None and "10 of 1000 bytes" in item.error


async def test_a_short_body_is_reported_as_short_body_with_the_nodes_status() -> None:
    """The error of a short body is 'short body: 10 of 1000 bytes' and keeps the node's HTTP status (200)."""
    with FaultServer(ShortBody(declared=1000, sent=10)) as node:
        _, item, _ = await warm_one(node)
    assert item.http_status == 200
    assert item.error is not None and item.error.startswith("short body: 10 of 1000 bytes")


async def test_a_body_longer_than_its_content_length_ends_at_its_length_on_a_connection_never_reused() -> None:
    """Content-Length 5 but 10 bytes sent: the answer is its 5 declared bytes (HTTP/1.1 framing); the 5 others
    are never read as the next answer: each of three warms (one at a time) comes on a new connection."""
    urls = [f"http://www.example.test/{n}.bin" for n in range(3)]
    connections = {}
    for declared in (10, 5):  # first the truth, where one connection serves all three
        with FaultServer(Respond(200, body=b"x" * 10, content_length=declared)) as node:
            async with engine_rig(one_node(node), {"per_node_concurrency": 1}) as rig:
                task, items = await rig.wait(await rig.submit(urls), 20.0)
            connections[declared] = [r.connection for r in node.requests]
        assert task.status is TaskStatus.SUCCEEDED
        assert [(i.http_status, i.bytes, i.error) for i in items] == [(200, declared, None)] * 3
    assert connections == {10: [1, 1, 1], 5: [1, 2, 3]}


# -- never hangs --------------------------------------------------------------------------------------------------


async def test_stopping_during_a_stall_hands_the_item_back_uncounted() -> None:
    """Stopped during a 30 s stall, the engine ends within its grace and the item is pending again, uncounted."""
    with FaultServer(Stall(hold=30.0)) as node:
        async with engine_rig(one_node(node), {"read_timeout": 30.0, "grace_seconds": 0.3}) as rig:
            taskid = await rig.submit([URL])
            started = time.monotonic()
            while not node.requests:
                assert time.monotonic() - started < 5, "the node got no request"
                await asyncio.sleep(0.01)
            stopping = time.monotonic()
            await rig.stop(within=3.0)
            took = time.monotonic() - stopping
            task = await rig.store.get_task(taskid)
            items = await rig.store.list_items(taskid)
    assert 0.3 <= took < 3.0
    assert task is not None and task.status is TaskStatus.IN_PROGRESS
    assert (task.succeeded, task.failed) == (0, 0)
    assert [(i.state, i.attempts) for i in items] == [(ItemState.PENDING, 0)]


async def test_a_fleet_of_broken_nodes_ends_every_item_in_bounded_time() -> None:
    """A flaky shield and five broken edges: 240 items end in bounded time, each failing the way its node broke."""
    faults = {
        "edge-reset": Reset(),
        "edge-stall": Stall(hold=30.0),
        "edge-short": ShortBody(),
        "edge-slow": Respond(200, body=BODY, delay=5.0),
        "edge-good": Respond(200, body=BODY),
    }
    servers = {name: FaultServer(action).start() for name, action in faults.items()}
    shield = FaultServer(sequence(Respond(502), Respond(200, body=BODY))).start()
    try:
        nodes = [{"name": "shield-1", "url": shield.url, "tier": "shield"}]
        nodes += [{"name": name, "url": server.url} for name, server in servers.items()]
        urls = [f"http://www.example.test/fleet/{i}.bin" for i in range(40)]
        engine = {"read_timeout": 0.3, "max_attempts": 2, "per_node_concurrency": 16}
        async with engine_rig(nodes, engine) as rig:
            started = time.monotonic()
            taskid = await rig.submit(urls)
            task, items = await rig.wait(taskid, timeout=30)
            took = time.monotonic() - started
    finally:
        for server in [shield, *servers.values()]:
            server.stop()
    assert took < 15, took
    assert task.status is TaskStatus.FAILED
    assert task.total == len(items) == 240
    assert (task.succeeded, task.failed) == (
        sum(i.state is ItemState.SUCCEEDED for i in items),
        sum(i.state is ItemState.FAILED for i in items),
    )
    by_node: dict[str, set[str]] = {}
    for item in items:
        by_node.setdefault(item.node, set()).add(item.state.value)
    assert by_node["shield-1"] == {"succeeded"} and by_node["edge-good"] == {"succeeded"}
    for name in ("edge-reset", "edge-stall", "edge-short", "edge-slow"):
        assert by_node[name] == {"failed"}, name
    errors = {i.node: i.error or "" for i in items if i.state is ItemState.FAILED}
    assert "reset by peer" in errors["edge-reset"]
    assert errors["edge-stall"].startswith("timeout") and errors["edge-slow"].startswith("timeout")
    assert "1000 bytes" in errors["edge-short"]


async def test_a_node_that_never_answers_does_not_hold_the_others_back() -> None:
    """One node answers at once, the other drops every connection attempt (a listening socket whose queue is
    full: each attempt waits for `connect_timeout`, 3 s). The good node's 100 warms all end while the dead
    node's first attempts are still waiting: its claims queue in its own lane, not in the room the good node
    needs (before, the good node got a claim only as the dead node's items ended: 21 s for the 100)."""
    with FaultServer(Respond(200, body=BODY)) as good, unanswered() as silent:
        nodes = [
            {"name": "good", "url": good.url},
            {"name": "dead", "url": "http://{}:{}".format(*silent)},
        ]
        engine = {"connect_timeout": 3.0, "concurrency": 8, "per_node_concurrency": 4, "max_attempts": 1}
        async with engine_rig(nodes, engine, stop_within=15.0) as rig:
            started = time.monotonic()
            taskid = await rig.submit([f"http://www.example.test/hol/{i}.bin" for i in range(100)])
            for _ in range(3000):  # 30 s at most
                if len(good.requests) >= 100:
                    break
                await asyncio.sleep(0.01)
            took = time.monotonic() - started
            assert len(good.requests) == 100 and took < 3.0, took
            for _ in range(200):  # their outcomes are written within flush_interval
                items = await rig.store.list_items(taskid)
                if sum(i.state is ItemState.SUCCEEDED for i in items) == 100:
                    break
                await asyncio.sleep(0.01)
            assert {i.node for i in items if i.state is ItemState.SUCCEEDED} == {"good"}
            assert sum(i.state is ItemState.SUCCEEDED for i in items) == 100


async def test_a_node_that_never_answers_is_held_down_and_its_items_end_soon() -> None:
    """A node that drops every connection attempt (`connect_timeout` 1 s, 4 at a time, 3 attempts): after 5
    connections in a row failed it is held down, and its 100 items fail their attempts at once, saying so,
    instead of each waiting 3 x 1 s in turn (75 s before). (`node_down_wait` 0: they do not wait for it.)"""
    with unanswered() as silent:
        nodes = [{"name": "dead", "url": "http://{}:{}".format(*silent)}]
        # read_timeout above connect_timeout: a timeout before it ran out can only be the connection's
        engine = {"concurrency": 8, "per_node_concurrency": 4, "read_timeout": 5.0, "node_down_wait": 0}
        async with engine_rig(nodes, engine) as rig:
            started = time.monotonic()
            task, items = await rig.wait(await rig.submit([f"http://www.example.test/d/{i}" for i in range(100)]), 60)
            took = time.monotonic() - started
    assert task.status is TaskStatus.FAILED and task.failed == 100 and took < 20, took
    held = [i for i in items if (i.error or "").startswith("not tried: dead is held down after ")]
    assert len(held) >= 90 and all("the last: timeout talking to dead" in (i.error or "") for i in held)


async def test_items_wait_for_a_node_held_down_up_to_node_down_wait_then_fail() -> None:
    """A node that refuses connections for good: held down, its items wait for it without spending attempts,
    and once it has been down for longer than `node_down_wait` (1.5 s here) they spend them and fail, saying
    why; none before that time."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = [{"name": "gone", "url": "http://{}:{}".format(*sock.getsockname())}]
        async with engine_rig(nodes, {"node_down_wait": 1.5}) as rig:
            started = time.monotonic()
            task, items = await rig.wait(await rig.submit([f"http://www.example.test/g/{i}" for i in range(20)]), 30)
            took = time.monotonic() - started
    assert task.status is TaskStatus.FAILED and task.failed == 20 and 1.5 < took < 20, took
    assert all(item.attempts <= FAST_ENGINE["max_attempts"] for item in items), items
    held = [i.error for i in items if (i.error or "").startswith("not tried: gone is held down after ")]
    assert held and all(
        e.endswith("down for longer than node_down_wait (1.5 s); gave up after 3 attempts") for e in held
    )


def held_down_seen(items: list[Item]) -> bool:
    return any("held down" in (i.error or "") for i in items)


async def test_the_items_of_a_node_held_down_are_not_claimed_while_it_rests() -> None:
    """While a node is held down the engine claims none of its items (they would only come back unsent): over
    3 s of a 100-URL task on a refusing node, the items worked are the few let out when the cooldown ends (at
    most the lane's share, 16 here), not every waiting item again and again; the task stays open meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = [{"name": "down", "url": "http://{}:{}".format(*sock.getsockname())}]
        async with engine_rig(nodes, {"concurrency": 8, "per_node_concurrency": 4}) as rig:
            taskid = await rig.submit([f"http://www.example.test/r/{i}" for i in range(100)])
            items = await rig.items_when(taskid, held_down_seen)
            assert held_down_seen(items)
            before = rig.engine.fetched
            await asyncio.sleep(3.0)
            worked = rig.engine.fetched - before
            task = await rig.store.get_task(taskid)
            waited = rig.engine.metrics.registry.get_sample_value(
                "edgewarm_fetches_total", {"node": "down", "action": "warm", "outcome": "waiting"}
            )
            finished = rig.engine.metrics.registry.get_sample_value(
                "edgewarm_items_finished_total", {"state": "waiting"}
            )
    assert worked <= 40, worked
    assert waited and finished is None, (waited, finished)
    assert task is not None and task.status is TaskStatus.IN_PROGRESS


async def test_a_later_task_is_not_kept_behind_the_waiting_items_of_a_node_held_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node held down whose items wait for it: they are put off to the cooldown's end (each saying why; in
    steps of 7 here), so a claim that skips the node does not scan past them. With the claim's scan at 20
    items, a later task's items for the live node are warmed at once, behind 100 waiting ones, while the dead
    node is still held down (without the put-off, none of them within 5.5 s)."""
    monkeypatch.setattr(edgewarm.store.base, "CLAIM_SCAN", 20)
    monkeypatch.setattr(edgewarm.store.sqlite, "PUT_OFF_STEP", 7)  # many steps
    with FaultServer(always(Respond(200, body=b"ok"))) as live, socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = [{"name": "dead", "url": "http://{}:{}".format(*dead.getsockname())}, {"name": "live", "url": live.url}]
        async with engine_rig(nodes, {"concurrency": 8, "per_node_concurrency": 4}) as rig:
            first = await rig.submit([f"http://www.example.test/w/{i}" for i in range(100)])

            def put_off(items: list[Item]) -> bool:
                waiting = [i for i in items if i.node == "dead" and i.state is ItemState.PENDING]
                return len(waiting) >= 95 and all("its items wait for it" in (i.error or "") for i in waiting)

            items = await rig.items_when(first, put_off)
            assert put_off(items), items
            started = time.monotonic()
            second = await rig.submit([f"http://www.example.test/later/{i}" for i in range(10)])
            items = await rig.items_when(second, lambda items: sum(i.state is ItemState.SUCCEEDED for i in items) == 10)
            took = time.monotonic() - started
            resting = rig.engine.fetcher.health.resting(rig.config.nodes[0]) if rig.engine.fetcher.health else None
    assert {i.node for i in items if i.state is ItemState.SUCCEEDED} == {"live"} and took < 2.0, took
    assert resting is not None, "the dead node was no longer held down when the later task's warms ended"


async def test_a_later_task_is_not_kept_behind_a_slow_nodes_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live but slow node (0.2 s an answer, 4 at a time) with a backlog far beyond a claim's window (20
    items here): the fast node's 300 warms, and a later task's 10, end while the slow node still has most of
    its 300 to do (before, claims that skipped it scanned only its first 20 due items and found nothing: the
    fast node's items waited behind that backlog until all but 16 of the slow node's were done)."""
    monkeypatch.setattr(edgewarm.store.base, "CLAIM_SCAN", 20)
    with (
        FaultServer(always(Respond(200, body=b"ok"))) as fast,
        FaultServer(always(Respond(200, body=b"ok", delay=0.2))) as slow,
    ):
        nodes = [{"name": "slow", "url": slow.url}, {"name": "fast", "url": fast.url}]
        async with engine_rig(nodes, {"concurrency": 8, "per_node_concurrency": 4}) as rig:
            fast_done = lambda items: sum(i.node == "fast" and i.state is ItemState.SUCCEEDED for i in items)  # noqa: E731
            firsts = [await rig.submit([f"http://www.example.test/w{k}/{i}" for i in range(100)]) for k in range(3)]
            for first in firsts:
                items = await rig.items_when(first, lambda items: fast_done(items) == 100)
                assert fast_done(items) == 100
            started = time.monotonic()
            second = await rig.submit([f"http://www.example.test/later/{i}" for i in range(10)])
            items = await rig.items_when(second, lambda items: fast_done(items) == 10)
            took = time.monotonic() - started
            first_items = [i for first in firsts for i in await rig.store.list_items(first, limit=1000)]
            slow_left = sum(i.node == "slow" and i.state is not ItemState.SUCCEEDED for i in first_items)
    assert fast_done(items) == 10 and took < 2.5, took
    assert slow_left >= 40, slow_left  # the slow node's backlog was still there


@pytest.mark.parametrize("why", ["another engine may share the store", "a reload set dedupe_seconds to 0"])
async def test_an_engine_that_may_not_see_every_purge_or_is_told_so_shares_no_warm(why: str) -> None:
    """Two tasks warm one URL within dedupe_seconds: each is sent to the node when the engine is not the
    store's only one (PostgreSQL workers: another may have purged the node since), or after a reload turned
    dedupe off (before, the reload's dedupe_seconds was not applied)."""
    with FaultServer(always(Respond(200, body=BODY))) as server:
        sole = why != "another engine may share the store"
        async with engine_rig(one_node(server), sole=sole) as rig:
            if sole:
                rig.engine.reconfigure(parse_config(base_config(one_node(server), engine={"dedupe_seconds": 0})))
            for _ in range(2):
                task, _items = await rig.wait(await rig.submit([URL]), 20)
                assert task.status is TaskStatus.SUCCEEDED
    assert len(server.requests) == 2


@pytest.mark.parametrize("told", [True, False], ids=["by-this-process", "by-another-process"])
async def test_a_cancelled_tasks_items_in_hand_are_not_sent(told: bool) -> None:
    """A slow node (0.3 s an answer, 2 at a time) and 100 URLs: the engine holds 16 claimed items. Cancelled
    through this process's API, or in the store by another process (learnt within CANCEL_CHECK_SECONDS), the
    items in hand not yet started are not sent: the node gets the 2 in flight and at most the few started
    before the engine learnt it (before, every item in hand was sent: 14 more)."""
    with FaultServer(always(Respond(200, body=b"ok", delay=0.3))) as node:
        async with engine_rig(one_node(node), {"concurrency": 8, "per_node_concurrency": 2}) as rig:
            taskid = await rig.submit([f"http://www.example.test/c/{i}" for i in range(100)])
            await rig.items_when(taskid, lambda items: sum(i.state is ItemState.RUNNING for i in items) >= 16)
            if told:
                await rig.cancel(taskid)
            else:
                await rig.store.cancel_task(taskid, USER, time.time())
            sent = len(node.requests)
            task, items = await rig.wait(taskid, 20)
    after = len(node.requests) - sent
    assert task.status is TaskStatus.FAILED and task.reason == "cancelled"
    assert after <= (2 if told else 8), after
    assert sum(i.error == "cancelled" for i in items) >= 100 - sent - after


async def test_a_store_slow_to_write_slows_the_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that takes 0.2 s to write each batch of 10 outcomes, a fast node, 200 URLs: the items claimed
    and not yet written stay within the room (16) and two batches (before, every item was claimed, warmed
    and left unwritten: a process that died then had all of them sent again, and the counts lagged)."""
    with FaultServer(always(Respond(200, body=b"ok"))) as node:
        async with engine_rig(one_node(node), {"concurrency": 8, "per_node_concurrency": 8, "batch_size": 10}) as rig:
            write = rig.store.record_outcomes

            async def slow_write(worker: str, outcomes: Any, now: float) -> int:
                await asyncio.sleep(0.2)
                return await write(worker, outcomes, now)

            monkeypatch.setattr(rig.store, "record_outcomes", slow_write)
            taskids = [await rig.submit([f"http://www.example.test/s{k}/{i}" for i in range(100)]) for k in range(2)]
            most = 0
            for _ in range(3000):  # bounded: 30 s
                most = max(most, len(rig.engine._leased))
                tasks = [await rig.store.get_task(t) for t in taskids]
                if all(t is not None and t.status is not TaskStatus.IN_PROGRESS for t in tasks):
                    break
                await asyncio.sleep(0.01)
    assert most <= 16 + 2 * 10, most
    assert len(node.requests) == 200


async def test_leases_are_renewed_while_the_last_outcomes_are_written_at_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop with outcomes still to write to a slow store (0.4 s a batch of 5) and leases of 0.6 s: the leases
    are renewed until they are written (before, the renewing stopped first: the leases ran out meanwhile and
    other workers took those items and sent them again, each a lost attempt)."""
    with FaultServer(always(Respond(200, body=b"ok"))) as node:
        engine = {"concurrency": 8, "per_node_concurrency": 8, "batch_size": 5, "lease_seconds": 0.6}
        async with engine_rig(one_node(node), engine) as rig:
            write, renew = rig.store.record_outcomes, rig.store.renew_leases
            renewed_at_stop = 0

            async def slow_write(worker: str, outcomes: Any, now: float) -> int:
                await asyncio.sleep(0.4)
                return await write(worker, outcomes, now)

            async def counted_renew(worker: str, item_ids: Any, until: float) -> set[int]:
                nonlocal renewed_at_stop
                renewed_at_stop += rig.engine._stopping.is_set()
                return await renew(worker, item_ids, until)

            monkeypatch.setattr(rig.store, "record_outcomes", slow_write)
            monkeypatch.setattr(rig.store, "renew_leases", counted_renew)
            await rig.submit([f"http://www.example.test/r/{i}" for i in range(50)])
            await rig.items_when(rig.created[0], lambda items: len(node.requests) >= 10)
            await rig.stop(20)
            items = await rig.store.list_items(rig.created[0], limit=100)
    assert renewed_at_stop >= 1
    assert all(i.state is not ItemState.RUNNING or i.attempts <= 1 for i in items)


async def test_a_node_given_another_address_by_a_reload_is_warmed_again() -> None:
    """A reload points node-1 at another server: the same URL warmed again within dedupe_seconds reaches that
    server (before, the first server's success was shared: the new one got no request)."""
    with FaultServer(always(Respond(200, body=BODY))) as first, FaultServer(always(Respond(200, body=BODY))) as second:
        async with engine_rig(one_node(first)) as rig:
            task, _items = await rig.wait(await rig.submit([URL]), 20)
            assert task.status is TaskStatus.SUCCEEDED
            rig.engine.reconfigure(parse_config(base_config(one_node(second), engine=FAST_ENGINE)))
            task, _items = await rig.wait(await rig.submit([URL]), 20)
            assert task.status is TaskStatus.SUCCEEDED
    assert (len(first.requests), len(second.requests)) == (1, 1)


@dataclass
class Moving:
    """A rig whose node-1 (at `first`) a reload may point at `second`; node-2 (at `slow`) keeps its tasks running."""

    rig: Rig
    first: FaultServer
    second: FaultServer
    slow: FaultServer
    engine: dict[str, object]

    def move(self) -> None:
        """The reload pointing node-1 at `second`."""
        node_2 = {"name": "node-2", "url": self.slow.url}
        self.rig.engine.reconfigure(parse_config(base_config([*one_node(self.second), node_2], engine=self.engine)))

    def remove(self) -> None:
        """A reload leaving node-1 out."""
        node_2 = {"name": "node-2", "url": self.slow.url}
        self.rig.engine.reconfigure(parse_config(base_config([node_2], engine=self.engine)))


@contextlib.asynccontextmanager
async def moving_rig(slow_seconds: float, **engine: object) -> AsyncIterator[Moving]:
    """A Moving rig, node-2 answering after `slow_seconds`; `engine`: more [engine] settings."""
    with (
        FaultServer(always(Respond(200, body=BODY))) as first,
        FaultServer(always(Respond(200, body=BODY))) as second,
        FaultServer(always(Respond(200, body=BODY, delay=slow_seconds))) as slow,
    ):
        settings = {**FAST_ENGINE, "read_timeout": 15.0, **engine}
        async with engine_rig([*one_node(first), {"name": "node-2", "url": slow.url}], settings) as rig:
            yield Moving(rig, first, second, slow, settings)


async def test_a_node_moved_by_a_reload_mid_task_has_what_it_had_warmed_warmed_again_at_the_new_address() -> None:
    """A reload points node-1 at another server while its task still runs (a slow node-2 keeps it running):
    what node-1 had warmed is warmed again there (before, the task succeeded with the new server cold for every
    URL warmed at the old address: a QA tester's 891 of 3,000); node-2, not moved, is not sent anything twice."""
    urls = [f"http://www.example.test/moved/{i}" for i in range(10)]
    async with moving_rig(5.0) as m:
        task_id = await m.rig.submit(urls)
        done = await m.rig.items_when(task_id, node_1_done(10))
        assert len(m.first.requests) == 10, done
        m.move()
        task, items = await m.rig.wait(task_id, 30)
    assert task.status is TaskStatus.SUCCEEDED, items
    assert sorted(r.path for r in m.second.requests) == sorted(u.removeprefix("http://www.example.test") for u in urls)
    assert (len(m.first.requests), len(m.slow.requests)) == (10, 10)
    assert all(i.attempts == 2 for i in items if i.node == "node-1"), items


async def test_a_node_moved_then_removed_keeps_what_it_warmed_at_the_new_address() -> None:
    """A reload moves node-1, another removes it once its warms were done again at the new address: they stay
    succeeded (the warms again of the move once ran 2 s after it, on a node removed meanwhile: its succeeded
    items made pending failed "not configured", a re-tester's 54 of 120; now they are done at once)."""
    urls = [f"http://www.example.test/gone/{i}" for i in range(10)]
    async with moving_rig(5.0) as m:
        task_id = await m.rig.submit(urls)
        await m.rig.items_when(task_id, node_1_done(10))
        m.move()
        await m.rig.items_when(task_id, lambda items: node_1_done(10)(items) and len(m.second.requests) == 10)
        m.remove()
        task, items = await m.rig.wait(task_id, 30)
    assert [i.state for i in items if i.node == "node-1"] == [ItemState.SUCCEEDED] * 10, items
    assert (task.succeeded, task.failed, len(m.second.requests)) == (20, 0, 10), task


async def test_a_node_moved_as_its_task_ends_has_its_warms_done_again_before_the_task_ends() -> None:
    """node-1 moved 1 s before its task's last warm (node-2's, slow) ends: what node-1 had warmed is warmed
    again at the new address before the task ends (the warms again waited 2 s after the move, the task had
    ended successful meanwhile, and the new address got nothing: a tester's 3 tries of 3)."""
    urls = [f"http://www.example.test/late/{i}" for i in range(10)]
    async with moving_rig(1.0) as m:
        task_id = await m.rig.submit(urls)
        await m.rig.items_when(task_id, node_1_done(10))
        m.move()
        task, items = await m.rig.wait(task_id, 30)
    assert task.status is TaskStatus.SUCCEEDED, items
    assert (len(m.first.requests), len(m.second.requests), len(m.slow.requests)) == (10, 10, 10)
    assert all(i.attempts == 2 for i in items if i.node == "node-1"), items


def finished_and(rig: Rig, outcome: str) -> tuple[float | None, float | None]:
    """The items finished succeeded, and node-1's warms of `outcome`, as the metrics count them."""
    sample = rig.engine.metrics.registry.get_sample_value
    return (
        sample("edgewarm_items_finished_total", {"state": "succeeded"}),
        sample("edgewarm_fetches_total", {"node": "node-1", "action": "warm", "outcome": outcome}),
    )


async def sent_to(server: FaultServer, count: int) -> None:
    """Once `server` has had `count` requests (10 s at most)."""
    for _ in range(100):  # bounded: 10 s
        if len(server.requests) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(server.requests)} requests of {count}")


async def test_a_warm_under_way_when_its_node_is_moved_is_done_again_at_the_new_address_however_long_it_takes() -> None:
    """node-1's warms take 3 s; a reload moves it 0.5 s in: each is done again at the new address when it ends,
    its attempt at the old one not counted (only those that ended within 2 s of the move were, a tester's 7
    large objects of 16 reported warmed at a cache that never got them)."""
    urls = [f"http://www.example.test/under-way/{i}" for i in range(5)]
    with (
        FaultServer(always(Respond(200, body=BODY, delay=3.0))) as first,
        FaultServer(always(Respond(200, body=BODY))) as second,
    ):
        engine = {**FAST_ENGINE, "read_timeout": 15.0}
        async with engine_rig(one_node(first), engine) as rig:
            task_id = await rig.submit(urls)
            await sent_to(first, 5)
            await asyncio.sleep(0.5)
            rig.engine.reconfigure(parse_config(base_config(one_node(second), engine=engine)))
            task, items = await rig.wait(task_id, 30)
            finished, retried = finished_and(rig, "retried")
    assert task.status is TaskStatus.SUCCEEDED, items
    assert (len(first.requests), len(second.requests)) == (5, 5)
    assert [(i.attempts, i.error) for i in items] == [(1, None)] * 5, items
    # Each finished once, at the new address (they had ended "waiting", then "rewarmed": never counted, a re-tester's)
    assert (finished, retried) == (5, 5)


async def test_successes_the_store_has_not_taken_when_their_node_is_moved_are_done_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store refuses writes (a locked file) while node-1's warms succeed; a reload moves node-1; then the
    store takes writes again: the batch kept and tried again had been taken out of those to do again before its
    first try, so its successes at the old address were written as they were (a re-tester's 36 of 3,000 cold)."""
    urls = [f"http://www.example.test/stalled/{i}" for i in range(5)]
    with (
        FaultServer(always(Respond(200, body=BODY))) as first,
        FaultServer(always(Respond(200, body=BODY))) as second,
    ):
        async with engine_rig(one_node(first), FAST_ENGINE) as rig:
            write, refusing = rig.store.record_outcomes, [True]

            async def locked(worker: str, outcomes: Any, now: float) -> int:
                if refusing[0]:
                    raise StoreError("sqlite: database is locked")
                return await write(worker, outcomes, now)

            monkeypatch.setattr(rig.store, "record_outcomes", locked)
            task_id = await rig.submit(urls)
            await sent_to(first, 5)
            await asyncio.sleep(0.3)  # the batch tried and refused
            rig.engine.reconfigure(parse_config(base_config(one_node(second), engine=FAST_ENGINE)))
            await asyncio.sleep(0.3)
            refusing[0] = False
            task, items = await rig.wait(task_id, 30)
            finished, again = finished_and(rig, "rewarmed")
    assert task.status is TaskStatus.SUCCEEDED, items
    assert (len(first.requests), len(second.requests)) == (5, 5)
    assert [(i.attempts, i.error) for i in items] == [(1, None)] * 5, items
    # Finished once each, when they ended at the old address; their warms at the new one are warms done again
    # (they were counted as finished twice: a re-tester's 12,050 for 12,000)
    assert (finished, again) == (5, 5)


async def test_warms_made_at_the_new_address_after_a_move_are_not_done_again() -> None:
    """A task submitted just after node-1 was moved warms it at the new address once: the move's warms again
    took what ended within 2 s after it too, so these were made pending again, then "shared" from themselves
    (a tester's 856 warms announced done again, none sent, each noted as another item's)."""
    async with moving_rig(3.0) as m:
        before = await m.rig.submit([f"http://www.example.test/before/{i}" for i in range(5)])
        await m.rig.items_when(before, node_1_done(5))
        m.move()
        after = await m.rig.submit([f"http://www.example.test/after/{i}" for i in range(5)])
        task, items = await m.rig.wait(after, 30)
        await m.rig.wait(before, 30)
    assert task.status is TaskStatus.SUCCEEDED, items
    assert [(i.attempts, i.error) for i in items if i.node == "node-1"] == [(1, None)] * 5, items
    assert sorted(r.path for r in m.second.requests) == sorted(
        [f"/before/{i}" for i in range(5)] + [f"/after/{i}" for i in range(5)]
    )


async def test_a_moved_nodes_warms_done_again_wait_for_the_purges_of_their_urls_done_again() -> None:
    """A prefetch of 20 URLs and a refresh of them, both done on node-1 (node-2, slow, keeps them running);
    node-1 moved: both are made due again at once, and at the new address each URL is purged, then warmed, so
    that it ends warm with what the origin has now (a warm that went before the purge of its URL left it cold,
    the prefetch reported warmed: a re-tester's 36 of 2,000, a refresh and a later prefetch by two users; here
    the prefetch is the older task, so that its warms are claimed first every time)."""
    urls = [f"http://www.example.test/order/{i}" for i in range(20)]
    async with moving_rig(3.0, dedupe_seconds=0.0) as m:
        prefetch = await m.rig.submit(urls)
        await m.rig.items_when(prefetch, node_1_done(20))
        refresh = await m.rig.service.submit_refresh(m.rig.user, urls, "file")
        m.rig.engine.wake()
        await m.rig.items_when(refresh.id, node_1_done(20))
        m.move()
        for task_id in (refresh.id, prefetch):
            ended, items = await m.rig.wait(task_id, 30)
            assert ended.status is TaskStatus.SUCCEEDED, items
    order: dict[str, list[str]] = {}
    for request in m.second.requests:
        order.setdefault(request.path, []).append(request.method)
    assert order == {u.removeprefix("http://www.example.test"): ["PURGE", "GET"] for u in urls}, order


async def test_a_refresh_whose_node_is_moved_purges_again_at_the_new_address() -> None:
    """A refresh of 5 files; node-1 moved after it purged them (node-2, slow, keeps the task running): the
    purges are made again at the new address (only warms were: the new cache kept its old copies, a tester's
    83 of 150 still HIT, the refresh reported succeeded)."""
    urls = [f"http://www.example.test/purged/{i}" for i in range(5)]
    async with moving_rig(2.0) as m:
        task = await m.rig.service.submit_refresh(m.rig.user, urls, "file")
        m.rig.engine.wake()
        await m.rig.items_when(task.id, node_1_done(5))
        m.move()
        ended, items = await m.rig.wait(task.id, 30)
    assert ended.status is TaskStatus.SUCCEEDED, items
    assert [r.method for r in m.first.requests] == [r.method for r in m.second.requests] == ["PURGE"] * 5
    paths = sorted(u.removeprefix("http://www.example.test") for u in urls)
    assert sorted(r.path for r in m.second.requests) == paths


async def test_max_attempts_lowered_by_a_reload_gives_a_waiting_retry_its_last_attempt() -> None:
    """Items waiting to retry an HTTP 500 after their first attempt; a reload lowers max_attempts to 1. They
    make one more attempt and end failed with its outcome (before: failed at once with no request, "gave up
    after 1 attempts (the worker died during the last)" though no worker died, their 500 erased)."""
    with FaultServer(always(Respond(500, body=b"no"))) as node:
        engine = {"max_attempts": 5, "backoff_base": 1.0, "backoff_max": 1.0}
        async with engine_rig(one_node(node), engine) as rig:
            task_id = await rig.submit([f"http://www.example.test/lowered/{i}" for i in range(3)])
            waiting = await rig.items_when(
                task_id, lambda items: all(i.attempts == 1 and i.state is ItemState.PENDING for i in items)
            )
            assert all(i.http_status == 500 for i in waiting), waiting
            lowered = {**FAST_ENGINE, **engine, "max_attempts": 1}
            rig.engine.reconfigure(parse_config(base_config(one_node(node), engine=lowered)))
            task, items = await rig.wait(task_id, 20)
    assert task.status is TaskStatus.FAILED
    assert [(i.attempts, i.http_status) for i in items] == [(2, 500)] * 3, items
    assert all((i.error or "").startswith("HTTP 500") for i in items), items
    assert len(node.requests) == 6


async def test_backoff_cut_by_a_reload_brings_waiting_retries_forward() -> None:
    """Items waiting to retry after a 500 with a backoff of 200 s; a reload cuts backoff to 0.05 s: they are
    retried at once (before: they waited out the old backoff, up to backoff_max, which may be a week)."""
    with FaultServer(sequence(Respond(500, body=b"no"), Respond(200, body=BODY))) as node:
        engine = {"backoff_base": 200.0, "backoff_max": 600.0}
        async with engine_rig(one_node(node), engine) as rig:
            task_id = await rig.submit([f"http://www.example.test/backoff/{i}" for i in range(3)])
            await rig.items_when(
                task_id, lambda items: all(i.attempts == 1 and i.state is ItemState.PENDING for i in items)
            )
            rig.engine.reconfigure(parse_config(base_config(one_node(node), engine=FAST_ENGINE)))
            task, items = await rig.wait(task_id, 15)
    assert task.status is TaskStatus.SUCCEEDED, items
    assert len(node.requests) == 6


@pytest.mark.parametrize(("key", "value"), [("accept_encoding", "gzip"), ("user_agent", "other-agent/1")])
async def test_a_warm_is_not_shared_with_one_asked_after_a_reload_changed_the_variant(key: str, value: str) -> None:
    """A reload changes accept_encoding (or user_agent): the variant a warm fills. The same URL warmed again
    within dedupe_seconds is fetched (before: the old variant's success was shared, attempts 0, and the new
    variant stayed cold on every node: a QA tester's 200 of 200)."""
    with FaultServer(always(Respond(200, body=BODY))) as node:
        async with engine_rig(one_node(node)) as rig:
            task, _items = await rig.wait(await rig.submit([URL]), 20)
            assert task.status is TaskStatus.SUCCEEDED
            rig.engine.reconfigure(parse_config(base_config(one_node(node), engine={**FAST_ENGINE, key: value})))
            task, items = await rig.wait(await rig.submit([URL]), 20)
    assert task.status is TaskStatus.SUCCEEDED
    assert len(node.requests) == 2 and items[0].attempts == 1, items


@pytest.mark.parametrize("change", ["address", "node_down_wait"])
async def test_items_put_off_for_a_node_held_down_are_due_at_once_after_a_reload_that_moves_it_or_cuts_the_wait(
    change: str,
) -> None:
    """A node held down has its items put off to its cooldown's end (up to 60 s after a long outage: put off
    by hand here). A reload points it at a live address (its port was mistyped), or cuts node_down_wait to 0:
    its items were kept until then all the same (the QA pass: 60 s for a live node; items meant to end at once
    ended 47 s later). Now they are due at once: warmed there, or failed saying the node is held down."""
    with FaultServer(always(Respond(200, body=BODY))) as live, socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = [{"name": "edge-x", "url": "http://{}:{}".format(*dead.getsockname())}]
        async with engine_rig(nodes, {"node_down_wait": 300}) as rig:
            task_id = await rig.submit([f"http://www.example.test/m/{i}" for i in range(5)])

            def waiting(items: list[Item]) -> bool:
                return all(i.state is ItemState.PENDING and "wait for it" in (i.error or "") for i in items)

            assert waiting(await rig.items_when(task_id, waiting))
            assert await rig.store.put_off_node("edge-x", time.time() + 60, "its items wait for it (by hand)") > 0
            if change == "address":
                nodes = [{"name": "edge-x", "url": live.url}]
                rig.engine.reconfigure(parse_config(base_config(nodes, engine={**FAST_ENGINE, "node_down_wait": 300})))
            else:
                rig.engine.reconfigure(parse_config(base_config(nodes, engine={**FAST_ENGINE, "node_down_wait": 0})))
            task, items = await rig.wait(task_id, 15)
    if change == "address":
        assert (task.status, len(live.requests)) == (TaskStatus.SUCCEEDED, 5), items
    else:
        assert task.status is TaskStatus.FAILED
        assert all("held down" in (i.error or "") for i in items), items


async def test_verify_on_a_node_that_tells_no_cache_state_warms_once_and_succeeds() -> None:
    """`verify = true` and a generic node whose cache-state header edgewarm does not know: the warm succeeds on
    one request, as without verify (before: a second GET, then "not cached after the warm: no cache state
    again", on every URL)."""
    with FaultServer(always(Respond(200, body=BODY, headers=(("X-Proxy-State", "HIT"),)))) as server:
        async with engine_rig(one_node(server, kind="generic"), {"verify": True}) as rig:
            task, items = await rig.wait(await rig.submit([URL]), 20)
    assert task.status is TaskStatus.SUCCEEDED, items
    assert len(server.requests) == 1


async def test_an_item_shared_from_another_warm_is_no_request_in_the_metrics() -> None:
    """Two tasks warm one URL within dedupe_seconds: the node gets one request; /metrics counts two items
    worked but one request's latency and one body (before, the shared item was counted as a second request)."""
    with FaultServer(always(Respond(200, body=BODY))) as server:
        async with engine_rig(one_node(server)) as rig:
            for _ in range(2):
                task, _items = await rig.wait(await rig.submit([URL]), 20)
                assert task.status is TaskStatus.SUCCEEDED
            sample = rig.engine.metrics.registry.get_sample_value
            worked = sample("edgewarm_fetches_total", {"node": "node-1", "action": "warm", "outcome": "succeeded"})
            timed_requests = sample("edgewarm_fetch_seconds_count", {"node": "node-1"})
            read = sample("edgewarm_fetched_bytes_total", {"node": "node-1"})
    assert len(server.requests) == 1
    assert (worked, timed_requests, read) == (2, 1, len(BODY))


async def test_a_node_that_failed_to_answer_shares_no_warm_from_before_and_a_shared_item_made_no_attempt() -> None:
    """A node that did not answer (a reset: it may have restarted, its cache empty) holds none of the warms
    from before as far as sharing goes: the URL warmed before is fetched again for a later task, within
    dedupe_seconds (before, the earlier success was shared and the node left cold after a cache restart, the
    item saying 200 in 1 attempt). A warm shared from another says it made no attempt (attempts 0)."""
    crash = "http://www.example.test/crash"

    def behaviour(request: RawRequest, count: int) -> Action:
        return Reset() if request.path == "/crash" and count == 1 else Respond(200, body=BODY)

    with FaultServer(behaviour) as server:
        async with engine_rig(one_node(server)) as rig:
            for urls in ([URL], [crash], [URL], [URL]):  # the reset comes between the first two warms of URL
                task, items = await rig.wait(await rig.submit(urls), 20)
                assert task.status is TaskStatus.SUCCEEDED, items
    asked = Counter(r.path for r in server.requests)
    assert asked == {"/a.bin": 2, "/crash": 2}, asked
    assert [(i.http_status, i.attempts) for i in items] == [(200, 0)]  # the last: shared from the third


class SteppingClock:
    """The wall clock plus `offset`, which a test changes: an NTP step, a VM resumed."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_work_due_before_the_wall_clock_stepped_back_does_not_wait_for_it_to_catch_up() -> None:
    """The clock was an hour ahead when 40 URLs were submitted; NTP sets it right mid-task. The items left run
    on at once (before: they were due an hour ahead, and waited that long, silently; a restart did not help).
    The webhooks' deliverer is told too (its retries were left an hour ahead)."""
    clock = SteppingClock(offset=3600.0)
    told: list[float] = []

    async def stepped_back() -> None:
        told.append(clock())

    with FaultServer(always(Respond(200, body=BODY, delay=0.05))) as server:
        # 2 at a time: most items stay in the store (the engine claims 2 x concurrency ahead), due an hour ahead.
        async with engine_rig(one_node(server), {"concurrency": 2, "per_node_concurrency": 2}, clock=clock) as rig:
            rig.engine.on_bring_forward = stepped_back
            taskid = await rig.submit([f"http://www.example.test/back/{i}" for i in range(40)])
            await rig.items_when(taskid, lambda items: sum(i.state is ItemState.SUCCEEDED for i in items) >= 4)
            assert len(told) == 1 and told[0] > time.time() + 3000, told  # at the start, by the clock ahead
            clock.offset = 0.0
            task, items = await rig.wait(taskid, 20)
    assert task.status is TaskStatus.SUCCEEDED, Counter(i.state for i in items)
    assert len(server.requests) == 40
    assert len(told) == 2 and abs(told[1] - time.time()) < 30, told  # and at the step


async def test_a_wall_clock_stepped_forward_does_not_send_the_items_in_hand_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The clock jumps an hour ahead while 8 slow requests are out: the engine's leases look expired by it, and
    its next claim took its own items in hand again (each sent twice, with "unexpected error" tracebacks; with
    dedupe_seconds on, warms were shared from the running fetch, but purges were sent twice). Each item is sent
    once."""
    clock = SteppingClock()
    with FaultServer(always(Respond(200, body=BODY, delay=1.0))) as server:
        engine = {"per_node_concurrency": 8, "read_timeout": 5.0, "dedupe_seconds": 0}  # no sharing to hide it
        async with engine_rig(one_node(server), engine, clock=clock) as rig:
            taskid = await rig.submit([f"http://www.example.test/ahead/{i}" for i in range(8)])
            await rig.items_when(taskid, lambda items: len(server.requests) >= 8)
            clock.offset = 3600.0
            task, items = await rig.wait(taskid, 20)
    assert task.status is TaskStatus.SUCCEEDED, items
    assert Counter(r.path for r in server.requests) == {f"/ahead/{i}": 1 for i in range(8)}
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


async def test_items_of_a_node_held_down_are_no_requests_in_the_latency_histogram() -> None:
    """A node that refuses connections: once held down, its items fail unsent ("not tried"), and only the
    items that did try a connection are in edgewarm_fetch_seconds (before, every item was, most at under
    1 ms: the dead node looked the fastest on a latency dashboard)."""
    dead = [{"name": "dead-1", "url": f"http://127.0.0.1:{free_port()}"}]
    async with engine_rig(dead, {"max_attempts": 1, "node_down_wait": 0, "concurrency": 4}) as rig:
        urls = [f"http://www.example.test/dead/{i}" for i in range(100)]
        task, items = await rig.wait(await rig.submit(urls), 30)
        sample = rig.engine.metrics.registry.get_sample_value
        timed = sample("edgewarm_fetch_seconds_count", {"node": "dead-1"})
    assert task.status is TaskStatus.FAILED
    unsent = sum(1 for i in items if (i.error or "").startswith("not tried:"))
    assert 0 < unsent < len(items), [i.error for i in items][:5]
    assert timed == len(items) - unsent


async def taken_over(
    config: Config, store: TaskStore, service: Service, fetcher: Fetcher, task_id: str
) -> tuple[Task, list[Item]]:
    """The task once an engine (not the store's only one) has taken over the items a dead worker held."""
    engine = Engine(config, store, fetcher, sole=False)
    rig = Rig(config, store, service, engine, asyncio.create_task(engine.run()))
    try:
        return await rig.wait(task_id, 20)
    finally:
        await rig.stop()


@pytest.mark.parametrize("sole", [False, True])
async def test_a_dead_workers_items_are_counted_by_the_attempts_begun_not_by_its_lease(sole: bool) -> None:
    """A worker died holding 10 items (SIGKILL, say): it had begun the third attempt of one, and only held the
    others claimed ahead. When their lease ran out, the engine that takes them over sends each of the 9 once,
    as their first attempt (before: every one was charged the dead worker's attempt, sent or not, so that
    workers killed a few times failed items never sent, "gave up after N attempts"), and gives the one up
    unsent: its max_attempts (3) were begun.

    `sole`: the same on SQLite's sole engine (`serve`), whose next start takes its items back at once
    (release_all_leases) rather than after their leases: before, they came back pending, not retaken, so an item
    whose request kills the process was sent after each restart for ever, its attempts never counted (a
    tester's 6 kills: still running, 0 attempts)."""
    with FaultServer(always(Respond(200, body=BODY))) as server:
        nodes = one_node(server)
        config = parse_config(base_config(nodes, engine=FAST_ENGINE))
        async with open_store("memory://") as store, Fetcher(config.engine, NodeHealth()) as fetcher:
            service = Service(config, store)
            user = config.user(USER)
            assert user is not None
            task = await service.submit_prefetch(user, [f"http://www.example.test/dead/{i}" for i in range(10)])
            held = await store.claim_due_items("dead", 100, time.time(), 300.0 if sole else 0.3)
            assert len(held) == 10
            assert await store.begin_attempt("dead", held[0].item_id, 3)
            if sole:
                assert (await store.release_all_leases(time.time())).items == 10  # as `serve` does when it starts
            engine = Engine(config, store, fetcher, sole=sole)
            rig = Rig(config, store, service, engine, asyncio.create_task(engine.run()))
            try:
                ended, items = await rig.wait(task.id, 20)
            finally:
                await rig.stop()
    by_id = {i.id: i for i in items}
    given_up = by_id.pop(held[0].item_id)
    assert (given_up.state, given_up.attempts, given_up.error) == (
        ItemState.FAILED,
        3,
        "gave up after 3 attempts (the worker died during the last)",
    )
    assert {(i.state, i.attempts) for i in by_id.values()} == {(ItemState.SUCCEEDED, 1)}
    assert len(server.requests) == 9 and ended.status is TaskStatus.FAILED


async def left_by_a_dead_worker(service: Service, urls: list[str]) -> tuple[User, Task]:
    """USER's task of `urls`, its items claimed by a worker "dead" whose leases end 0.3 s from now."""
    user = service.config.user(USER)
    assert user is not None
    task = await service.submit_prefetch(user, urls)
    assert len(await service.store.claim_due_items("dead", 100, time.time(), 0.3)) == len(urls)
    return user, task


async def test_attempts_of_items_taken_over_that_the_store_cannot_record_are_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A start whose store takes no writes (a full disk) logged "recording attempt 1 of item N failed" for each
    item taken back, 275 lines in 0.2 s (a tester's): once now, then as a step failing again and again is."""
    with FaultServer(always(Respond(200, body=BODY))) as server:
        config = parse_config(base_config(one_node(server), engine=FAST_ENGINE))
        async with open_store("memory://") as store, Fetcher(config.engine, NodeHealth()) as fetcher:
            service = Service(config, store)
            _user, task = await left_by_a_dead_worker(service, [f"http://www.example.test/full/{i}" for i in range(30)])
            await asyncio.sleep(0.4)  # the dead worker's leases end: the items are taken over

            async def full(worker: str, item_id: int, attempt: int) -> bool:
                raise StoreError("sqlite: database or disk is full")

            monkeypatch.setattr(store, "begin_attempt", full)
            engine = Engine(config, store, fetcher)
            rig = Rig(config, store, service, engine, asyncio.create_task(engine.run()))
            with caplog.at_level(logging.ERROR, logger="edgewarm.engine"):
                try:
                    ended, _items = await rig.wait(task.id, 20)
                finally:
                    await rig.stop()
    said = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert ended.status is TaskStatus.SUCCEEDED and len(server.requests) == 30
    assert len(said) == 1 and said[0].startswith("recording the attempt an item taken over begins"), said


async def cancelled_under_way(rig: Rig, server: FaultServer, urls: list[str]) -> str:
    """A task of `urls` submitted, then cancelled once its first request reached `server`."""
    taskid = await rig.submit(urls)
    await rig.items_when(taskid, lambda items: len(server.requests) >= 1)
    await rig.cancel(taskid)
    return taskid


async def test_a_cancel_while_an_item_is_under_way_is_logged_at_the_cancel_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cancel of a task whose item is being fetched: a line at the cancel, and the task's end line says it
    was cancelled, by whom (before: nothing at the cancel, and the end line read like any failed task's)."""
    with FaultServer(always(Respond(200, body=BODY, delay=1.0))) as server:
        async with engine_rig(one_node(server), {"read_timeout": 5.0}) as rig:
            with caplog.at_level("INFO", logger="edgewarm"):
                taskid = await cancelled_under_way(rig, server, ["http://www.example.test/slow/c.bin"])
                ended, _ = await rig.wait(taskid, 10)
    lines = [(r.getMessage(), getattr(r, "task_id", None)) for r in caplog.records if "task " in r.getMessage()]
    assert (f"task cancelled by {USER}: it ends when its items under way come back (1 not ended yet)", taskid) in lines
    (end,) = [r for r in caplog.records if r.getMessage().startswith("task ended")]
    assert end.getMessage().endswith(f"cancelled by {USER}") and getattr(end, "cancelled_by", None) == USER
    assert ended.status is TaskStatus.FAILED and ended.succeeded == 1


async def test_a_cancel_ends_the_claims_waiting_in_the_lanes_at_once() -> None:
    """One request at a time to a node that answers in 5 s: at the cancel, one item is under way and the
    others wait claimed in the node's lane. They showed "running" until the slow answer came back (a lane
    worker ended them only when free); now they fail "cancelled" at once, unsent."""
    with FaultServer(always(Respond(200, body=BODY, delay=5.0))) as server:
        node = one_node(server, concurrency=1)
        async with engine_rig(node, {"read_timeout": 10.0}) as rig:
            taskid = await cancelled_under_way(rig, server, [f"http://www.example.test/q/{i}" for i in range(5)])
            items = await rig.items_when(taskid, lambda items: sum(i.state is ItemState.FAILED for i in items) == 4)
            answered = len(server.requests), [r for r in server.requests if r.time + 5.0 <= time.time()]
    assert sorted((i.state, i.error) for i in items) == [(ItemState.FAILED, "cancelled")] * 4 + [
        (ItemState.RUNNING, None)
    ]
    assert answered == (1, []), answered  # ended while the one under way was still out


async def test_a_cancelled_task_that_ends_when_a_stop_hands_its_items_back_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cancelled with its item under way, then the engine stopped before the item came back: the store ends
    the task as it takes the item back, and nothing said so (no end line, no metric)."""
    with FaultServer(always(Respond(200, body=BODY, delay=5.0))) as server:
        async with engine_rig(one_node(server), {"read_timeout": 10.0}) as rig:
            with caplog.at_level("INFO", logger="edgewarm"):
                taskid = await cancelled_under_way(rig, server, ["http://www.example.test/slow/s.bin"])
                await rig.stop()
                task = await rig.store.get_task(taskid)
    assert task is not None and task.status is TaskStatus.FAILED
    (end,) = [r for r in caplog.records if r.getMessage().startswith("task ended")]
    assert getattr(end, "task_id", None) == taskid and getattr(end, "cancelled_by", None) == USER
    ended = rig.engine.metrics.registry.get_sample_value("edgewarm_tasks_finished_total", {"status": "2"})
    assert ended == 1.0


async def test_a_dead_workers_items_of_a_task_cancelled_meanwhile_are_not_sent() -> None:
    """A worker died holding 5 items of a task; the task was cancelled while they were under way. When their
    leases run out, the engine that takes them over fails them "cancelled" unsent (before: it sent each, as
    it learnt of the cancel only a few seconds later)."""
    with FaultServer(always(Respond(200, body=BODY))) as server:
        config = parse_config(base_config(one_node(server), engine=FAST_ENGINE))
        async with open_store("memory://") as store, Fetcher(config.engine, NodeHealth()) as fetcher:
            service = Service(config, store)
            user, task = await left_by_a_dead_worker(service, [f"http://www.example.test/gone/{i}" for i in range(5)])
            await service.cancel(user, task.id)
            await asyncio.sleep(0.4)  # the dead worker's leases run out
            ended, items = await taken_over(config, store, service, fetcher, task.id)
    assert {(i.state, i.error) for i in items} == {(ItemState.FAILED, "cancelled")}
    assert ended.status is TaskStatus.FAILED and ended.reason == "cancelled"
    assert server.requests == []


async def test_a_stop_while_the_store_is_down_ends_within_its_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store refuses every write (PostgreSQL down) and the engine is stopped: it waits for the last
    outcomes at most max(grace_seconds, 5 s), says how many it leaves unwritten, and ends (before: it retried
    every 5 s for as long as the store was down, the SIGTERM seemingly ignored)."""
    with FaultServer(always(Respond(200, body=b"ok"))) as node:
        async with engine_rig(one_node(node), {"grace_seconds": 0.5}, stop_within=15) as rig:

            async def down(*_: object) -> int:
                raise StoreError("postgresql: ConnectionRefusedError: the store is down")

            monkeypatch.setattr(rig.store, "record_outcomes", down)
            await rig.submit([f"http://www.example.test/down/{i}" for i in range(20)])
            await rig.items_when(rig.created[0], lambda _: len(node.requests) >= 20)
            started = time.monotonic()
            await rig.stop(15)
            took = time.monotonic() - started
    assert 5.0 <= took < 12.0, took
    assert "stopping with 20 outcomes unwritten" in caplog.text


async def test_a_store_back_during_a_stop_takes_the_last_outcomes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store goes away as the stop begins and is back 3.5 s later, within the stop's wait for the last
    outcomes (5 s): they are written then, and the items handed back (a tester's PostgreSQL restart: the writes'
    backoff, grown to 3.2 s, tried again after the wait had ended: outcomes lost, warms made again)."""
    with FaultServer(always(Respond(200, body=b"ok", delay=0.3))) as node:
        async with engine_rig(one_node(node), {"grace_seconds": 0.5}, stop_within=15) as rig:
            record = rig.store.record_outcomes
            back_at: list[float] = []

            async def down_then_back(*args: Any, **kwargs: Any) -> int:
                if not back_at or time.monotonic() < back_at[0]:
                    raise StoreError("postgresql: ConnectionRefusedError: the store is down")
                return await record(*args, **kwargs)

            await rig.submit([f"http://www.example.test/back/{i}" for i in range(4)])
            await rig.items_when(rig.created[0], lambda _: len(node.requests) >= 4)
            monkeypatch.setattr(rig.store, "record_outcomes", down_then_back)
            back_at.append(time.monotonic() + 3.5)
            await rig.stop(15)
            assert not rig.engine.lost, rig.engine.lost
            items = await rig.store.list_items(rig.created[0])
    assert [(i.state, i.attempts) for i in items] == [(ItemState.SUCCEEDED, 1)] * 4


async def test_after_a_failed_lease_renewal_the_engine_renews_before_it_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store outage longer than the leases: this engine renews its own before it claims again, so that it
    does not take other workers' expired leases first (before: claims went on whatever the renewals did, and
    after an outage workers took each other's items and sent them again)."""
    calls: list[str] = []
    with FaultServer(always(Respond(200, body=b"ok", delay=0.3))) as node:
        # Renewals every 0.5 s; the items in hand end every 0.3 s, and then the engine claims more.
        engine = {"lease_seconds": 1.5, "concurrency": 4, "per_node_concurrency": 2}
        async with engine_rig(one_node(node), engine) as rig:
            renew, claim = rig.store.renew_leases, rig.store.claim_due_items
            failures = 1

            async def flaky_renew(*args: Any) -> set[int]:
                nonlocal failures
                calls.append("renew")
                if failures:
                    failures -= 1
                    calls.append("renew failed")
                    raise StoreError("postgresql: the store is down")
                return await renew(*args)

            async def logged_claim(*args: Any, **kwargs: Any) -> Any:
                calls.append("claim")
                return await claim(*args, **kwargs)

            monkeypatch.setattr(rig.store, "renew_leases", flaky_renew)
            monkeypatch.setattr(rig.store, "claim_due_items", logged_claim)
            task, _items = await rig.wait(await rig.submit([f"http://www.example.test/r/{i}" for i in range(20)]), 30)
    assert task.status is TaskStatus.SUCCEEDED
    assert "renew failed" in calls, calls
    last_failure = len(calls) - 1 - calls[::-1].index("renew failed")
    after = [c for c in calls[last_failure + 1 :] if c in ("renew", "claim")]
    assert after and after[0] == "renew", calls


async def test_a_directory_with_more_known_urls_than_purged_one_by_one_fails_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More URLs known under a directory than a node without prefix purge takes one by one (the limit set to
    3 here; 100,000 in use): the first are purged, and the item fails saying more may be cached (before: it
    succeeded, PURGED, with most of the directory still cached)."""
    monkeypatch.setattr(edgewarm.engine.actions, "KNOWN_URLS_LIMIT", 3)
    with FaultServer(always(Respond(200, body=b"ok"))) as node:
        async with engine_rig(one_node(node)) as rig:
            warmed, _ = await rig.wait(await rig.submit([f"http://www.example.test/d/{i}" for i in range(5)]), 20)
            assert warmed.status is TaskStatus.SUCCEEDED
            ended, (item,) = await rig.wait(await rig.refresh_dir("http://www.example.test/d/"), 20)
    assert ended.status is TaskStatus.FAILED
    assert item.error is not None and item.error.startswith(
        "purged 3 of the first 3 URLs known at or under the directory: a directory refresh reaches 3 in one spelling, "
        "and more may be known there"
    ), item.error
    assert sum(r.method == "PURGE" for r in node.requests) == 3


async def test_a_directory_purge_that_fails_names_the_cause_of_its_first_failure() -> None:
    """The node answers every PURGE 503: the item said "purged 0 of the 3 URLs known at or under the directory;
    gave up after 3 attempts", without the cause a single URL's refresh gives."""

    def answer(request: Any, _count: int) -> Respond:
        return Respond(503, body=b"down") if request.method == "PURGE" else Respond(200, body=b"ok")

    with FaultServer(answer) as node:
        async with engine_rig(one_node(node)) as rig:
            warmed, _ = await rig.wait(await rig.submit([f"http://www.example.test/e/{i}" for i in range(3)]), 20)
            assert warmed.status is TaskStatus.SUCCEEDED
            ended, (item,) = await rig.wait(await rig.refresh_dir("http://www.example.test/e/"), 20)
    assert ended.status is TaskStatus.FAILED
    # 3 known: the 3 warmed (the directory's own refresh item is no URL cached)
    assert item.error == (
        "purged 0 of the 3 URLs known at or under the directory; the first failure: HTTP 503; gave up after 3 attempts"
    ), item.error


async def test_a_node_not_in_the_config_at_a_start_fails_its_open_items_saying_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload tester's: a node taken out of the file while the service was stopped; at the start its 240 open
    items failed "node 'edge-1' is not configured" and the log said nothing of it (a reload says it). Said once."""
    with FaultServer(always(Respond(200, body=b"ok"))) as kept:
        async with engine_rig([{"name": "kept", "url": kept.url}]) as rig:
            urls = [f"http://www.example.test/left/{i}" for i in range(6)]
            items = tuple(
                NewItem(seq, url, node, ItemAction.WARM, 0) for seq, url in enumerate(urls) for node in ("kept", "gone")
            )
            made = NewTask(
                str(uuid.uuid4()), USER, TaskKind.PREFETCH, time.time(), items, QuotaCharge("d", 6, 0, 99, 9)
            )
            with caplog.at_level(logging.WARNING, logger="edgewarm.engine"):
                await rig.store.create_task(made)
                rig.engine.wake()
                _, ended = await rig.wait(made.id, 10)
    gone = [i for i in ended if i.node == "gone"]
    assert len(gone) == 6 and all(i.error == "node 'gone' is not configured" for i in gone), gone
    assert {i.state for i in ended if i.node == "kept"} == {ItemState.SUCCEEDED}
    said = [r.getMessage() for r in caplog.records if "is not configured" in r.getMessage()]
    assert said == [
        f"node gone is not configured: its open items in the store fail, unsent (the first: task {made.id})"
    ]


async def test_a_node_taken_out_by_a_reload_gets_no_more_requests(caplog: pytest.LogCaptureFixture) -> None:
    """A reload removes a slow node while its lane holds claims: those fail at once, unsent, saying the node is
    not configured (before, they went on being sent to it, for as long as its backlog lasted)."""
    with (
        FaultServer(always(Respond(200, body=b"ok"))) as fast,
        FaultServer(always(Respond(200, body=b"ok", delay=0.3))) as slow,
    ):
        nodes = [{"name": "fast", "url": fast.url}, {"name": "slow", "url": slow.url}]
        engine = {"concurrency": 8, "per_node_concurrency": 1}
        async with engine_rig(nodes, engine) as rig:
            taskid = await rig.submit([f"http://www.example.test/gone/{i}" for i in range(20)])
            await rig.items_when(taskid, lambda _: len(slow.requests) >= 1)
            with caplog.at_level(logging.WARNING, logger="edgewarm.engine"):
                rig.engine.reconfigure(parse_config(base_config(nodes[:1], engine={**FAST_ENGINE, **engine})))
            sent = len(slow.requests)
            started = time.monotonic()
            task, items = await rig.wait(taskid, 10)
            took = time.monotonic() - started
            sample = rig.engine.metrics.registry.get_sample_value
            failed = sample("edgewarm_fetches_total", {"node": "slow", "action": "warm", "outcome": "failed"})
            finished = sample("edgewarm_items_finished_total", {"state": "failed"})
    gone = [i for i in items if i.node == "slow" and i.state is ItemState.FAILED]
    assert len(slow.requests) <= sent + 1  # at most the one in flight at the reload
    assert gone and all(i.error == "node 'slow' is not configured" for i in gone), gone
    assert failed == finished == len(gone)  # in the metrics as the failures they are (they were left out)
    assert {i.state for i in items if i.node == "fast"} == {ItemState.SUCCEEDED}
    assert took < 2.0 and task.status is TaskStatus.FAILED
    assert not [r for r in caplog.records if "is not configured" in r.getMessage()]  # the reload's line says it


async def test_a_held_down_node_that_comes_back_is_warmed() -> None:
    """A node that refuses connections is held down; its items wait for it without spending attempts (2 here,
    gone in a tenth of a second), and once it listens again (3 s later) the probe after the cooldown finds it
    and every item succeeds."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Cache-Status: MISS\r\n\r\nok")
                await writer.drain()
        writer.close()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = [{"name": "back", "url": "http://{}:{}".format(*sock.getsockname())}]
        engine = {"max_attempts": 2, "backoff_base": 0.05, "backoff_max": 0.1}
        async with engine_rig(nodes, engine) as rig:
            taskid = await rig.submit([f"http://www.example.test/b/{i}" for i in range(20)])
            assert held_down_seen(await rig.items_when(taskid, held_down_seen))
            await asyncio.sleep(3.0)
            waiting = await rig.store.list_items(taskid)
            bad = [
                (i.state.value, i.attempts, i.error)
                for i in waiting
                if i.state not in (ItemState.PENDING, ItemState.RUNNING) or i.attempts >= 2
            ]
            assert not bad, bad
            server = await asyncio.start_server(answer, sock=sock)
            try:
                task, items = await rig.wait(taskid, 30)
            finally:
                server.close()
    assert task.status is TaskStatus.SUCCEEDED and task.succeeded == 20
    assert all(i.attempts <= 2 for i in items)


# -- the proxy in front of a real cache ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_flaky_proxy_in_front_of_real_nginx_ends_with_a_hit(tmp_path: Path) -> None:
    """A proxy resetting each URL's first request before a real nginx edge: all succeed on retry, then HIT."""
    with Lab(tmp_path / "lab", edges=1, shield=False) as lab:
        paths = lab.make_files(10, 2048)
        edge = lab.edges[0]
        with FaultServer(sequence(Reset(), Forward(edge.port))) as proxy:
            async with engine_rig(one_node(proxy)) as rig:
                taskid = await rig.submit([f"http://www.example.test{p}" for p in paths])
                task, items = await rig.wait(taskid, timeout=30)
        assert task.status is TaskStatus.SUCCEEDED, [i.error for i in items]
        assert all(i.attempts >= 1 and i.cache_state == "MISS" and i.bytes == 2048 for i in items)
        for path in paths:
            assert lab.fetch(edge, path).cache_status == "HIT"
        assert {r.target for r in proxy.requests} == set(paths)


@pytest.mark.integration
async def test_edges_wait_for_their_shield_while_it_restarts_and_are_warmed_once_it_is_back(tmp_path: Path) -> None:
    """The shield (real nginx) is killed once it holds every URL, while its edges still warm theirs: each edge
    answers 502 for what it has not cached yet. Those items wait for the shield, as its own items would, instead
    of spending their 3 attempts in a tenth of a second on the edges (the task failed), and are not sent to the
    edges meanwhile; once the shield is back, every item succeeds and every URL is a HIT on every node."""
    with Lab(tmp_path / "lab", edges=2, shield=True) as lab:
        # Enough that the edges (one request at a time each) are far behind when the shield is done: a URL's
        # edges are due as soon as its shield's warm ends, in its task's place.
        paths = lab.make_files(1000, 1024)
        assert lab.shield is not None
        nodes = [
            {"name": "shield-1", "url": lab.shield.url, "tier": "shield", "concurrency": 16},
            *({"name": edge.name, "url": edge.url, "concurrency": 1} for edge in lab.edges),
        ]
        engine = {"node_down_wait": 60, "concurrency": 32}
        async with engine_rig(nodes, engine) as rig:
            urls = [f"http://www.example.test{p}" for p in paths]
            taskids = [await rig.submit(urls[i : i + 100]) for i in range(0, len(urls), 100)]

            async def all_items() -> list[Item]:
                return [i for t in taskids for i in await rig.store.list_items(t, limit=1000)]

            def shield_done(items: list[Item]) -> bool:
                return all(i.state is ItemState.SUCCEEDED for i in items if i.node == "shield-1")

            for _ in range(500):
                if shield_done(await all_items()):
                    break
                await asyncio.sleep(0.01)
            lab.kill("shield-1")
            left = [i for i in await all_items() if i.state is not ItemState.SUCCEEDED]
            assert len(left) > 100, "the edges were done before the shield went away"

            def waiting(items: list[Item]) -> bool:
                return any(
                    "which fetches through shield-1: not tried: shield-1 is held down" in (i.error or "") for i in items
                )

            for _ in range(500):
                if waiting(await all_items()):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            items = await all_items()
            assert waiting(items)
            assert not [i for i in items if i.state is ItemState.FAILED], [i.error for i in items if i.error][:3]
            # Not sent to the edges meanwhile: at each end of the shield's cooldown (2 s, then 4) every waiting
            # edge item was, each a 502 (a tester's: 220 a time). A request under way on each edge at most.
            errors = sum(r.status == 502 for edge in lab.edges for r in lab.requests(edge))
            await asyncio.sleep(4.0)
            more = sum(r.status == 502 for edge in lab.edges for r in lab.requests(edge)) - errors
            assert more <= len(lab.edges), f"{more} 502s of the edges while the shield was held down"
            lab.restart("shield-1")
            ended = [await rig.wait(t, timeout=90) for t in taskids]
        for task, items in ended:
            assert task.status is TaskStatus.SUCCEEDED, [i.error for i in items if i.state is ItemState.FAILED][:3]
            assert all(i.attempts <= FAST_ENGINE["max_attempts"] for i in items)
        for path in paths[::10]:
            for node in lab.cache_nodes():
                assert lab.fetch(node, path).cache_status == "HIT", (node.name, path)


def varnish_like(age: int, delay: float = 0.0) -> Any:
    """A Varnish node whose VCL answers PURGE 200 and removes nothing (the built-in VCL pipes it to a backend
    that answers 200): every GET is a HIT (two transaction ids) `age` seconds old, answered after `delay`."""

    def answer(request: Any, _count: int) -> Respond:
        if request.method == "PURGE":
            return Respond(200, body=b"purged\n", headers=(("X-Varnish", "7"),))
        return Respond(200, body=b"old\n", headers=(("X-Varnish", "9 3"), ("Age", str(age))), delay=delay)

    return answer


@pytest.mark.parametrize(
    ("kind", "age", "delay", "took"),
    [("varnish", 3600, 0.0, False), ("varnish", 0, 0.0, True), ("varnish", 2, 3.0, True), ("squid", 3600, 0.0, True)],
    ids=["old", "refilled", "refilled-slow-answer", "not-varnish"],
)
async def test_a_warm_after_a_purge_that_gets_a_copy_older_than_the_purge_fails(
    kind: str, age: int, delay: float, took: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`"refresh": true` on a Varnish node whose purge answers 200 and removes nothing: the purge and the warm
    both succeeded while the node kept serving its old copy (before). The warm's HIT tells its age: a copy an
    hour old, seconds after the purge, fails the warm, saying why; one stored since is a warm like any other
    (Age 0: a viewer refilled it; Age 2 in an answer that took 3 s: the time is taken at the answer, when the
    node counts it). Only on Varnish: Squid and ATS count Age from the origin's Date (a clock behind makes a
    new copy old), nginx sends none. (No slack here: AGE_SLACK_SECONDS is 0.)"""
    monkeypatch.setattr(edgewarm.engine.actions, "AGE_SLACK_SECONDS", 0)
    with FaultServer(varnish_like(age, delay=delay)) as node:
        async with engine_rig(one_node(node, kind=kind), {"read_timeout": 10, "fetch_timeout": 20}) as rig:
            task, items = await rig.wait(await rig.submit(["http://www.example.test/old.js"], refresh_first=True), 30)
            # A later warm is not checked: the node may rightly refill an old copy from an upstream since.
            later, _ = await rig.wait(await rig.submit(["http://www.example.test/old.js"]), 30)
    assert later.status is TaskStatus.SUCCEEDED, later
    purge, warm = sorted(items, key=lambda item: item.stage)
    assert (purge.action.value, purge.state, purge.cache_state) == ("purge", ItemState.SUCCEEDED, "PURGED")
    if took:
        assert task.status is TaskStatus.SUCCEEDED and warm.state is ItemState.SUCCEEDED, warm
        return
    assert task.status is TaskStatus.FAILED and warm.state is ItemState.FAILED, warm
    assert warm.error is not None and warm.error.startswith(
        "served from the node's cache 3600 s old, 0 s after its purge: the purge did not remove it, or the node "
        "refilled it from an upstream that still had it (does the node itself handle PURGE?"
    ), warm.error
    assert warm.attempts == 1


async def test_an_edge_refilled_from_its_shield_since_its_purge_may_carry_the_shields_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a shield, an edge refilled (by a viewer) between its purge and its warm serves the shield's copy
    with the shield's age carried on: no older than the shield's own purge, which came first (shields first;
    its warm takes 3 s here). edge-1's copy, 2 s old, is older than its own purge but not than the shield's: it
    passes; edge-2's, older than every purge, fails. (No slack here: AGE_SLACK_SECONDS is 0.)"""
    monkeypatch.setattr(edgewarm.engine.actions, "AGE_SLACK_SECONDS", 0)
    with (
        FaultServer(varnish_like(0, delay=3.0)) as shield,
        FaultServer(varnish_like(2)) as fresh_edge,
        FaultServer(varnish_like(3600)) as stale_edge,
    ):
        nodes = [
            {"name": "shield-1", "url": shield.url, "kind": "varnish", "tier": "shield"},
            {"name": "edge-1", "url": fresh_edge.url, "kind": "varnish"},
            {"name": "edge-2", "url": stale_edge.url, "kind": "varnish"},
        ]
        async with engine_rig(nodes, {"read_timeout": 10, "fetch_timeout": 20}) as rig:
            _task, items = await rig.wait(await rig.submit(["http://www.example.test/e.js"], refresh_first=True), 30)
    warms = {item.node: item for item in items if item.action.value == "warm"}
    assert warms["shield-1"].state is ItemState.SUCCEEDED, warms
    assert warms["edge-1"].state is ItemState.SUCCEEDED, warms
    assert warms["edge-2"].state is ItemState.FAILED and "3600 s old" in (warms["edge-2"].error or ""), warms


async def test_a_reload_while_the_service_starts_its_parts_reaches_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGHUP that adds a user while `serve` makes its parts (here: while it takes back the items of a
    previous process, an await like the store's and the fetcher's opening) was logged "config reloaded" but
    the API, made after it from the config of before, refused the user (code 20) until the next SIGHUP (a
    re-tester's 2 starts of 13). The parts made meanwhile get the reloaded config once they all exist."""
    from edgewarm.client import AsyncClient, ClientError
    from edgewarm.config import load_config
    from edgewarm.runtime import run
    from edgewarm.testing.service import write_config

    port = free_port()
    nodes = '[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:9"\n'
    path = write_config(tmp_path / "edgewarm.toml", store=f"sqlite:///{tmp_path}/e.db", nodes_toml=nodes, port=port)
    carol = "carol-secret-0123456789"
    taking_back = edgewarm.store.sqlite.SQLiteStore.release_all_leases
    reloaded = asyncio.Event()

    async def reload_meanwhile(self: Any, now: float) -> Any:
        path.write_text(path.read_text() + f'\n[[users]]\nname = "carol"\nsecret = "{carol}"\ndomains = ["a.test"]\n')
        signal.raise_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)  # the loop runs the reload meanwhile
        reloaded.set()
        return await taking_back(self, now)

    monkeypatch.setattr(edgewarm.store.sqlite.SQLiteStore, "release_all_leases", reload_meanwhile)
    service = asyncio.create_task(run(load_config(str(path)), config_path=str(path)))
    try:
        await asyncio.wait_for(reloaded.wait(), 20)
        async with AsyncClient(f"http://127.0.0.1:{port}", "carol", carol) as client:
            for _ in range(100):  # 10 s at most for the API to listen
                try:
                    quota = await client.quota()
                    break
                except ClientError as exc:
                    assert exc.code != 20, "the reloaded user is unknown to the API"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the API never answered")
        assert quota["urls"]["used"] == 0
    finally:
        signal.raise_signal(signal.SIGTERM)  # the service's own handler: a graceful stop
        await asyncio.wait_for(service, 30)


# -- `serve` beside another process's write lock on the SQLite file, and its stop ---------------------------


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("edgewarm")]


async def _until_logged(
    caplog: pytest.LogCaptureFixture, text: str, service: asyncio.Task[None], within: float
) -> None:
    deadline = time.monotonic() + within
    while not any(text in m for m in _messages(caplog)):
        assert not service.done(), f"the service ended: {service.exception()!r}; {_messages(caplog)}"
        assert time.monotonic() < deadline, f"{text!r} not logged: {_messages(caplog)}"
        await asyncio.sleep(0.05)


def _locked(path: Path) -> sqlite3.Connection:
    """Another process's write lock on the database file, as a sqlite3 shell's `BEGIN IMMEDIATE` holds it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    return db


async def _with_a_task(url: str, urls: int) -> None:
    """A store at `url` holding one task of `urls` URLs on node-1, as a previous start left it."""
    from edgewarm.models import NewItem, NewTask, QuotaCharge, TaskKind

    items = tuple(NewItem(seq, f"http://www.example.test/{seq}.bin", "node-1") for seq in range(urls))
    async with open_store(url) as store:
        await store.create_task(
            NewTask("t-1", USER, TaskKind.PREFETCH, time.time(), items, QuotaCharge("20240101", urls, 0, 10**9, 10**9))
        )


@pytest.mark.parametrize("released", [True, False])
async def test_a_start_beside_another_process_s_write_lock_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, released: bool
) -> None:
    """`serve` beside a sqlite3 shell holding the file's write lock: a tester's start ended after one lock wait
    with a bare "Error: sqlite: database is locked", and "retention round failed: the store is not open" logged
    on the way. Its first write (taking back a previous process's leases) is tried again, saying the file is
    locked by another process; the engine starts once the lock is let go; else the start fails naming the file,
    with nothing started that would use the store as it closes; the failure logged once, not at each try."""
    from edgewarm.runtime import run

    caplog.set_level(logging.INFO, logger="edgewarm")
    monkeypatch.setattr(edgewarm.store.sqlite, "LOCK_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(edgewarm.runtime, "TAKE_BACK_SECONDS", 30.0 if released else 3.0, raising=False)
    path = tmp_path / "ew.db"
    url = f"sqlite://{path}"
    await _with_a_task(url, 1)
    locker = _locked(path)
    config = parse_config(base_config(one_node_at("http://127.0.0.1:9"), store=url, engine=FAST_ENGINE))
    service = asyncio.create_task(run(config, api=False, engine=True))
    try:
        if released:
            await _until_logged(caplog, f"the database {path} is locked by another process", service, 10)
            locker.rollback()
            await _until_logged(caplog, "edgewarm running", service, 10)
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(service, 20)
        else:
            with pytest.raises(StoreError) as failed:
                await asyncio.wait_for(service, 20)
            assert f"the database {path} is locked by another process (a sqlite3 shell in a transaction?)" in str(
                failed.value
            )
            assert str(failed.value).startswith("taking back the items left running by a previous process failed")
            # Said once, not at each try (a re-tester's 15 lines in 52 s on a full disk)
            assert len([m for m in _messages(caplog) if "tried again for up to" in m]) == 1, _messages(caplog)
    finally:
        locker.close()
        if not service.done():
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(service, 20)
    assert not [m for m in _messages(caplog) if "retention round failed" in m or "is not open" in m], _messages(caplog)


async def test_a_start_on_a_damaged_file_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking back a previous process's items from a damaged file was tried again for TAKE_BACK_SECONDS (60 s,
    the API not listening, the same warning again and again: an operator's): waiting mends no damaged file."""
    from edgewarm.errors import StoreDamaged
    from edgewarm.runtime import run

    async def damaged(self: object, now: float) -> None:
        raise StoreDamaged("sqlite: the database e.db is damaged (database disk image is malformed)")

    monkeypatch.setattr(edgewarm.store.sqlite.SQLiteStore, "release_all_leases", damaged)
    url = f"sqlite://{tmp_path}/ew.db"
    config = parse_config(base_config(one_node_at("http://127.0.0.1:9"), store=url, engine=FAST_ENGINE))
    began = time.monotonic()
    with pytest.raises(StoreDamaged):
        await asyncio.wait_for(run(config, api=False, engine=True), 30)
    assert time.monotonic() - began < 5


async def test_a_new_empty_store_is_said_once_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A `store` mistyped started on a new, empty database without a word (every task id then "not found": an
    operator's): the first start says it made one; the next, on the same file, does not."""
    from edgewarm.runtime import run

    caplog.set_level(logging.INFO, logger="edgewarm")
    path = tmp_path / "typo" / "ew.db"
    config = parse_config(base_config(one_node_at("http://127.0.0.1:9"), store=f"sqlite://{path}", engine=FAST_ENGINE))
    said = []
    for _ in range(2):
        caplog.clear()
        service = asyncio.create_task(run(config, api=False, engine=True))
        await _until_logged(caplog, "edgewarm running", service, 10)
        said.append([m for m in _messages(caplog) if "new, empty store" in m])
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(service, 20)
    made = f"made a new, empty store in {path} (schema version {SCHEMA_VERSION}): no task of before is in it"
    assert len(said[0]) == 1 and said[0][0].startswith(made) and said[1] == [], said


def one_node_at(url: str) -> list[dict[str, object]]:
    return [{"name": "node-1", "url": url}]


async def test_a_stop_writes_its_nodes_failures_before_its_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The failures of a node held for their minute were written after "edgewarm stopped cleanly" (an SRE's
    supervisor read the last line as the stop's word): now before it."""
    from edgewarm.runtime import run

    caplog.set_level(logging.INFO, logger="edgewarm")
    url = f"sqlite://{tmp_path / 'ew.db'}"
    await _with_a_task(url, 20)
    engine = {**FAST_ENGINE, "max_attempts": 50, "per_node_concurrency": 2}
    with FaultServer(always(Respond(503, body=b"busy"))) as server:
        config = parse_config(base_config(one_node(server), store=url, engine=engine))
        service = asyncio.create_task(run(config, api=False, engine=True))
        try:
            deadline = time.monotonic() + 10
            while len(server.requests) < 6:  # the first failure told, the next ones held for their minute
                assert time.monotonic() < deadline and not service.done()
                await asyncio.sleep(0.05)
            signal.raise_signal(signal.SIGTERM)
            assert await asyncio.wait_for(service, 20) is True
        finally:
            if not service.done():
                signal.raise_signal(signal.SIGTERM)
                await asyncio.wait_for(service, 20)
    messages = _messages(caplog)
    told = [n for n, m in enumerate(messages) if m.startswith("node node-1")]
    assert len(told) == 2 and "HTTP 503" in messages[told[1]], messages
    assert messages[-1] == "edgewarm stopped cleanly" and told[1] < len(messages) - 1, messages[-5:]


async def test_a_stop_with_the_store_locked_is_bounded_and_says_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop while another process holds the SQLite file's write lock: a tester's took 30 s with grace_seconds
    = 5 (a webhook claim and the items' release each waited for the lock after the outcomes were given up) and
    its last line said "edgewarm stopped cleanly" with 6 outcomes unwritten and the items not handed back. It
    ends within grace_seconds and the store's waits under way, and says what it left."""
    from edgewarm.runtime import run

    caplog.set_level(logging.INFO, logger="edgewarm")
    lock_wait, grace = 1.0, 1.0
    monkeypatch.setattr(edgewarm.store.sqlite, "LOCK_WAIT_SECONDS", lock_wait)
    monkeypatch.setattr(edgewarm.engine.scheduler, "LAST_WRITES_SECONDS", grace)
    path = tmp_path / "ew.db"
    url = f"sqlite://{path}"
    await _with_a_task(url, 20)
    engine = {**FAST_ENGINE, "grace_seconds": grace, "per_node_concurrency": 2, "read_timeout": 5.0}
    with FaultServer(always(Respond(200, body=BODY, delay=0.3))) as server:
        config = parse_config(base_config(one_node(server), store=url, engine=engine))
        service = asyncio.create_task(run(config, api=False, engine=True))
        locker: sqlite3.Connection | None = None
        try:
            deadline = time.monotonic() + 10
            while len(server.requests) < 3:  # under way, and an outcome written
                assert time.monotonic() < deadline and not service.done()
                await asyncio.sleep(0.05)
            locker = _locked(path)
            await asyncio.sleep(0.2)  # the next outcomes wait for the lock
            began = time.monotonic()
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(service, 30)
            took = time.monotonic() - began
        finally:
            if locker is not None:
                locker.close()
            if not service.done():
                signal.raise_signal(signal.SIGTERM)
                await asyncio.wait_for(service, 20)
    messages = _messages(caplog)
    assert "edgewarm stopped cleanly" not in messages, messages
    assert service.result() is False  # `worker` and `serve` exit 1 (they exited 0: a tester's supervisor saw it clean)
    last = messages[-1]
    assert last.startswith("edgewarm stopped; ") and "outcomes not written and " in last, messages
    assert last.endswith("not handed back: they run again when their leases end, or at the next start"), last
    # grace_seconds, then the write under way (one lock wait), and the claim under way at the signal (one more)
    assert took < grace + 2 * lock_wait + 1.5, (took, messages)


async def test_a_sighup_during_a_stop_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP just after SIGTERM: a tester's was reloaded during the stop ("SIGHUP: config reloaded"; it may
    open a new fetcher, or fail a removed node's items); it is ignored, and says so."""
    from edgewarm.config import load_config
    from edgewarm.runtime import run
    from edgewarm.testing.service import write_config

    caplog.set_level(logging.INFO, logger="edgewarm")
    nodes = '[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:9"\n'
    path = write_config(
        tmp_path / "edgewarm.toml", store=f"sqlite:///{tmp_path}/e.db", nodes_toml=nodes, port=free_port()
    )
    service = asyncio.create_task(run(load_config(str(path)), api=False, config_path=str(path)))
    try:
        await _until_logged(caplog, "edgewarm running", service, 20)
        path.write_text(path.read_text().replace('name = "edge-1"', 'name = "edge-2"'))
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGHUP)
        await asyncio.wait_for(service, 20)
    finally:
        if not service.done():
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(service, 20)
    messages = _messages(caplog)
    assert "SIGHUP ignored: the service is stopping" in messages, messages
    assert not [m for m in messages if "config reloaded" in m or "no longer configured" in m], messages


async def test_a_sighup_held_from_before_the_start_keeps_the_start_s_start_only_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload asked while the process started (held until its handler is there) runs first: its file's
    start-only settings (here `metrics_listen`) were put to use, while its line said the start's stayed (a
    reviewer's). Now the start's are, as said; the reloadable ones (a node renamed) are the file's."""
    from edgewarm.config import load_config
    from edgewarm.runtime import run
    from edgewarm.testing.service import write_config

    caplog.set_level(logging.INFO, logger="edgewarm")
    first, second = free_port(), free_port()
    nodes = '[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:9"\n'
    path = write_config(
        tmp_path / "edgewarm.toml",
        store=f"sqlite:///{tmp_path}/e.db",
        nodes_toml=nodes,
        port=free_port(),
        extra=f'metrics_listen = "127.0.0.1:{first}"',
    )
    config = load_config(str(path))
    path.write_text(path.read_text().replace(str(first), str(second)).replace('"edge-1"', '"edge-2"'))
    monkeypatch.setattr(edgewarm.runtime.hangups, "take", lambda: True)
    service = asyncio.create_task(run(config, api=False, config_path=str(path)))
    try:
        await _until_logged(caplog, "edgewarm running", service, 20)
        with socket.create_connection(("127.0.0.1", first), timeout=5):
            pass  # the start's
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", second), timeout=5):
            pass
    finally:
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(service, 20)
    messages = _messages(caplog)
    assert "SIGHUP: metrics_listen change only on restart (the values at start stay in use)" in messages, messages
    assert [m for m in messages if "SIGHUP: config reloaded" in m and "nodes added: edge-2" in m], messages


@pytest.mark.integration
async def test_a_varnish_fetch_failure_handed_to_a_warm_that_waited_for_it_is_asked_again(tmp_path: Path) -> None:
    """A viewer's request makes a real Varnish fetch from an origin that fails (1.5 s, then a reset); the warm sent
    meanwhile waits for that fetch and gets its 503 as a HIT (two X-Varnish ids), which Varnish keeps a few
    seconds for such requests: a tester's warm failed at once "it keeps this answer of the origin's", then, Age 0
    retried, at Age 1 (a re-tester's). It is asked again once Varnish has dropped it, and warms."""
    failing = sequence(Reset(delay=1.5), Respond(200, body=b"x" * 1000, headers=()))
    with (
        FaultServer(failing) as origin,
        Lab(tmp_path / "lab", edges=0, shield=False, varnish=1, varnish_backend=origin.port) as lab,
    ):
        varnish = lab.varnishes[0]
        nodes = [{"name": "varnish-1", "url": varnish.url, "kind": "varnish"}]
        async with engine_rig(nodes, {"read_timeout": 5.0, "max_attempts": 2}) as rig:
            viewer = asyncio.create_task(asyncio.to_thread(lab.fetch, varnish, "/flaky/a"))
            await asyncio.sleep(0.3)  # the viewer's fetch under way
            task, items = await rig.wait(await rig.submit([f"http://{DEFAULT_HOST}/flaky/a"]), timeout=30)
            assert (await viewer).status == 503
    (item,) = items
    assert task.status is TaskStatus.SUCCEEDED, item.error
    assert item.attempts == 2 and len(origin.requests) == 2


@contextlib.asynccontextmanager
async def _a_start_behind_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock_wait: float, *, worker: bool = False
) -> AsyncIterator[tuple[asyncio.Task[bool], sqlite3.Connection, str, Callable[[], None]]]:
    """`serve` (API and engine; with `worker`, the engine alone and its `metrics_listen`) started on a store with
    an item left running, while another process holds its write lock: the service's task, the lock's connection
    (rollback lets it go), the address it serves on, and its stop (SIGTERM, once: a second would end the
    process, pytest with it). Stopped at the end."""
    from edgewarm.runtime import run

    monkeypatch.setattr(edgewarm.store.sqlite, "LOCK_WAIT_SECONDS", lock_wait)
    monkeypatch.setattr(edgewarm.runtime, "TAKE_BACK_SECONDS", 30.0, raising=False)
    path = tmp_path / "ew.db"
    url = f"sqlite://{path}"
    await _with_a_task(url, 1)
    locker = _locked(path)
    address = f"127.0.0.1:{free_port()}"
    served = {"metrics_listen": address} if worker else {"listen": address}
    config = parse_config(base_config(one_node_at("http://127.0.0.1:9"), store=url, engine=FAST_ENGINE, **served))
    service = asyncio.create_task(run(config, api=not worker))
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            signal.raise_signal(signal.SIGTERM)

    try:
        yield service, locker, f"http://{address}", stop
    finally:
        locker.close()
        if not service.done():
            stop()
            await asyncio.wait_for(service, 20)


async def test_a_start_beside_another_process_s_write_lock_answers_its_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While `serve` waits to take back a previous process's items (up to a minute behind another process's
    lock), /healthz answers 200 and /readyz 503 at once (an ops tester's: the port took connections and answered
    nothing until the lock was let go, a liveness probe's 1 s timed out); once it is let go, /readyz is 200."""
    import httpx

    caplog.set_level(logging.INFO, logger="edgewarm")
    async with _a_start_behind_a_lock(tmp_path, monkeypatch, 0.3) as (service, locker, address, _):
        await _until_logged(caplog, "is locked by another process", service, 10)
        async with httpx.AsyncClient(base_url=address, timeout=5) as http:
            health = None
            for _ in range(10):  # (the server starts serving beside the take-back: each try 1 s at most)
                with contextlib.suppress(httpx.TransportError):
                    health = await http.get("/healthz", timeout=1)
                    break
                await asyncio.sleep(0.1)
            assert health is not None and health.status_code == 200, "no answer to /healthz"
            assert (await http.get("/readyz")).status_code == 503
            assert "edgewarm running" not in caplog.text
            locker.rollback()
            await _until_logged(caplog, "edgewarm running", service, 10)
            assert (await http.get("/readyz")).status_code == 200


async def test_a_stop_during_a_start_behind_a_lock_stops_the_api_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the start's take-back waits for another process's lock: the API stops answering at once,
    as at any stop (a re-tester's answered /readyz "starting" for the 7.6 s the write under way still waited)."""
    import httpx

    starting = _a_start_behind_a_lock(tmp_path, monkeypatch, 4.0)
    async with starting as (service, _, address, stop), httpx.AsyncClient(base_url=address, timeout=1) as http:
        for _ in range(30):  # until it serves (bounded: 3 s)
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 503:
                    break
            await asyncio.sleep(0.1)
        stop()
        await asyncio.sleep(0.5)
        assert not service.done()  # the take-back's write still waits for the lock
        with pytest.raises(httpx.TransportError):
            await http.get("/healthz")


async def test_a_worker_s_queue_depth_is_unknown_until_its_take_back_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's /metrics during its start's take-back behind another process's lock said
    `edgewarm_queue_depth 0.0`, though items waited (a re-tester's): NaN, `edgewarm_store_up` 0, until counted."""
    import httpx

    caplog.set_level(logging.INFO, logger="edgewarm")
    starting = _a_start_behind_a_lock(tmp_path, monkeypatch, 0.3, worker=True)
    async with starting as (service, _, address, _), httpx.AsyncClient(timeout=5) as http:
        await _until_logged(caplog, "is locked by another process", service, 10)
        text = (await http.get(f"{address}/metrics")).text
    assert "edgewarm_queue_depth NaN" in text and "edgewarm_store_up 0.0" in text, text
