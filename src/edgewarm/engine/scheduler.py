"""The warming engine: claim due items, work them through their nodes, write outcomes back in batches.

Flow: `claim_due_items` leases a batch (at most `CLAIM_AHEAD` times `concurrency` items in hand, and none for
a node whose lane holds its share already: a slow or dead node's claims do not fill the room while the other
nodes' items wait behind them) → each claim goes to its node's queue → that node's workers
(`per_node_concurrency` coroutines) perform it (actions.py) → outcomes queue → the writer commits them in
batches (`record_outcomes`), which releases later stages (edges after shields) → the dispatcher is woken to
claim those. Leases of items in hand are renewed; on shutdown, in-flight work gets `grace_seconds`, and what
was not done is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..config import VARIANT_KEYS, Config, Node, NodeKind
from ..errors import StoreError
from ..logs import RepeatedFailure, counted, item_count
from ..metrics import Metrics
from ..models import CANCELLED, WARMED_AGAIN, Claim, ItemAction, ItemOutcome, Task, Tier
from ..store import TaskStore
from ..store.base import DUE_SLACK_SECONDS
from ..tuning import requests_room
from ..urls import stored_target
from .actions import perform
from .coalesce import SHARED_NOTE, Coalescer
from .fetcher import SENT, NodeClient
from .node_health import Hold
from .outcome import waiting_for_node
from .turns import TurnsQueue

log = logging.getLogger("edgewarm.engine")

Clock = Callable[[], float]

# Items held per fetch slot: the ones beyond `concurrency` wait in their node's queue, so that workers go on
# while the store answers the next claim (which may queue behind submissions). Measured: with 1x, about 40 %
# of the worker slots waited for claims on S1 and 2x halved that (docs/benchmarks.md, session 3).
CLAIM_AHEAD = 2
CANCEL_CHECK_SECONDS = 1.0  # how often the engine asks the store which of its tasks in hand were cancelled
OUTCOMES_AHEAD = 2  # batches of outcomes that may wait to be written before the claims stop (_unwritten_room)
RENEW_RETRY_SECONDS = 1.0  # a lease renewal that failed is tried again this soon
# No lease renewed for this share of lease_seconds (renewals come every third): the process was frozen (SIGSTOP, a
# VM paused) or the store did not answer, and the leases in hand may have run out: a claim is sent only once its
# lease was renewed and its task is known not cancelled (_shared_recheck).
LEASE_DOUBT = 2 / 3
LAST_WRITES_SECONDS = 5.0  # a stop waits at least this long (else grace_seconds) for the last outcomes' writes
STOP_CLAIM_SECONDS = 1.0  # and this long at most for a claim under way (_claim)
STOP_WRITE_RETRY_SECONDS = 0.5  # and a write the store refused is tried again this often at least meanwhile
WARMS_WAIT_SECONDS = 300.0  # a purge waits this long at most for the warms it must follow (_after_warms)
CLOCK_STEP_SECONDS = 2.0  # the wall clock moved this much more than the monotonic one: a step (_clock_stepped)
OTHERS_WARMS_POLL_SECONDS = (0.05, 1.0)  # how often, first and at most, it asks the store of other engines' warms
PURGES_KEPT = 50_000  # purges whose next warm checks they took (_note_purge), at most
PURGES_KEPT_SECONDS = 300.0  # and for this long
LOCKED_PAUSE_SECONDS = 1.0  # until a due item left unclaimed (its row locked by another session) is sought again
DUE_TOGETHER_SECONDS = 0.1  # items put off that fall due this close together are claimed together (_until_next_look)
# A warm waits this long at most for its URL's purge done again first (_purge_first; 60 s let slow purges, or
# purges queued behind them, go after the warms they were to precede: a re-tester's 19 URLs of 50 cold), and is
# put off this long at a time meanwhile (each time an outcome written and a claim).
PURGE_FIRST_SECONDS = 300.0
PURGE_FIRST_PAUSE = 1.0
PURGE_FIRST_NOTE = "waits for the purge of this URL before it, done again at the node's new address"
REWARM_SLACK_SECONDS = 2.0  # warms written this long after their node's hold began: done again (_rewarm_returned)


@dataclass(frozen=True)
class StopLoss:
    """What an engine's stop left undone: outcomes not written and items not handed back (their items run
    again when their leases end, or at the next start)."""

    outcomes: int = 0
    items: int = 0

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.items)


class _NodeLane:
    """One node's queue and its workers: the per-node concurrency cap. A reload may change `width`: workers are
    started up to it at once; surplus ones leave when they next take a claim (handing it back to the queue)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.queue = TurnsQueue()  # its claims given out by turns among their users
        self.width = 0
        self.workers: list[asyncio.Task[None]] = []
        self.held = 0  # claims of this node in hand (queued or being worked)
        self.held_by: dict[str, int] = {}  # of those, each user's (the users with some)
        self.removed = False  # a reload took the node out of the config: its claims in hand fail, unsent

    def hold(self, claim: Claim) -> None:
        """Count `claim` in hand (queued or being worked)."""
        self.held += 1
        self.held_by[claim.user] = self.held_by.get(claim.user, 0) + 1

    def let_go(self, claim: Claim) -> None:
        """Count `claim` out: done with, or handed back."""
        self.held -= 1
        left = self.held_by[claim.user] - 1
        if left:
            self.held_by[claim.user] = left
        else:
            del self.held_by[claim.user]


# What a claim leaves out: nodes for every user's items (None) or for one user's, as (user, node) pairs.
_Skipped = frozenset[tuple[str | None, str]]


@dataclass(slots=True)
class _Following:
    """A purge out of its lane until the warms of its object other engines hold leased end (_follow_others)."""

    claim: Claim
    lane: _NodeLane
    warms: set[int] | None  # item ids; None until the store was asked after the purge's claim
    until: float  # time.monotonic() at which it goes anyway


def _reached(purge: Claim, warms: Iterable[tuple[int, str]]) -> set[int]:
    """Of `warms` (item id, URL) on the purge's node, those whose object the purge reaches."""
    purged, whole = stored_target(purge.url), purge.action is ItemAction.PURGE_DIR
    return {item for item, url in warms if purged.reaches(stored_target(url), whole=whole)}


class Engine:
    """Runs until `stop()`; use `await engine.run()` inside an open Fetcher and store."""

    def __init__(
        self,
        config: Config,
        store: TaskStore,
        fetcher: NodeClient,
        *,
        worker_id: str | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
        sole: bool = True,
    ) -> None:
        self.config = config
        self._shields = config.shields()
        self._varnish = _has_varnish(config)  # purges are noted for the check of the warms after them
        # Another engine on the store (PostgreSQL workers) may purge a node without this one knowing: then no
        # warm is shared, since one from before that purge would be reported for a warm asked after it.
        self._sole = sole
        self.settings = config.engine
        self.store = store
        self.fetcher = fetcher
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # What a stop left undone, once run() has ended (StopLoss): said by the service's last line.
        self.lost = StopLoss()
        self._writing = 0  # outcomes of the batch being written
        self._lanes: dict[str, _NodeLane] = {}
        self._retired: set[asyncio.Task[None]] = set()  # workers of removed nodes' lanes, until they end (_retire)
        self._in_hand: dict[int, Claim] = {}  # claimed and not yet worked (queued or running)
        self._fresh = False  # new work may be due (a submission, a stage released) since the last claim
        # When the items this engine made due later (retries, a held node's items put off) fall due, soonest first:
        # a claim then, not at the next poll (a tester's retries waited poll_interval, 10 s, not their backoff).
        self._due_later: list[float] = []
        self._dry: tuple[_Skipped, float] | None = None  # see _is_dry
        self._put_off_until: dict[str, float] = {}  # node -> the cooldown end its items were put off to (_put_off)
        self._putting_off: dict[str, asyncio.Task[None]] = {}  # node -> its items being put off (or brought back)
        self._leased: dict[int, str] = {}  # claimed and not yet written back: item -> task
        self._claimed_early: dict[int, Claim] = {}  # claimed again before their last write was taken (_hand_out)
        self._cancelled: set[str] = set()  # tasks of items in hand that were cancelled: not sent (_watch_cancels)
        self._unrenewed = False  # the last lease renewal failed: renew before the next claim (_renew)
        self._renewed = time.monotonic()  # when the last renewal that worked began: the leases held until then
        self._recheck: asyncio.Future[set[int] | None] | None = None  # a renewal after a doubt (_shared_recheck)
        self._recheck_failed = -math.inf  # when one last failed (time.monotonic()): not asked again at once
        self._lost: set[int] = set()  # claims in hand whose leases the store no longer renews: not sent
        self._lease_changed = asyncio.Event()  # a reload changed lease_seconds: the renewer wakes (_renew_leases)
        self._skew: float | None = None  # wall clock minus monotonic clock at the last look (_clock_stepped)
        self._claims_log = RepeatedFailure(log, "claiming items")  # a store down: a line a minute, not each poll
        self._cancels_log = RepeatedFailure(log, "looking for cancelled tasks")
        self._renewals_log = RepeatedFailure(log, "renewing leases")
        self._writes_log = RepeatedFailure(log, "writing outcomes (kept, and tried again)")
        # Once, then a line a minute: a start on a store taking no writes logged it for each item taken back.
        self._attempts_log = RepeatedFailure(log, "recording the attempt an item taken over begins (sent anyway)")
        # A line a minute, not each question (a tester's PostgreSQL without free connections: 2,800 lines in 3.5 min).
        self._others_log = RepeatedFailure(log, "asking for other workers' warms")
        self.on_task_finished: Callable[[Task], None] | None = None
        # Called after the items are brought forward (at the start, and when the wall clock stepped back).
        self.on_bring_forward: Callable[[], Awaitable[None]] | None = None
        self._coalescer = Coalescer(self._dedupe_seconds())
        self._warming: dict[str, dict[int, str]] = {}  # node -> its warms sending now: item -> URL (_after_warms)
        self._warm_ended: dict[str, asyncio.Event] = {}  # node -> set when one of its warms ends (purges wait)
        # (URL, node) -> when this engine purged it, and whether its next warm was checked (_note_purge)
        # In the purges' order, oldest first: an OrderedDict, whose oldest is found at once (a dict's first item is
        # found by stepping over the slots of those deleted before it: 30-130 µs a purge once full, a tester found).
        self._purged: OrderedDict[tuple[str, str], tuple[float, bool]] = OrderedDict()
        self._following: dict[int, _Following] = {}  # purges waiting for other engines' warms, out of their lanes
        self._follower: asyncio.Task[None] | None = None  # asks the store until they may go (_follow_others)
        self._idle = asyncio.Event()  # set when nothing is in hand
        self._idle.set()
        self._outcomes: asyncio.Queue[ItemOutcome] = asyncio.Queue()
        # Succeeded, not yet written: item -> its claim (its node, attempts and `rewarm`: _before_writing)
        self._unwritten: dict[int, Claim] = {}
        self._redo: set[int] = set()  # of those, the items of a node moved by a reload meanwhile: done again
        self._moved_at: dict[str, float] = {}  # node -> when a reload last moved it (time.monotonic())
        # Moved nodes' work being made due again (_rewarm_moved): writes wait for it; so do the node's requests
        self._moves: list[asyncio.Task[None]] = []
        self._moving: dict[str, asyncio.Task[None]] = {}  # (the same, by node: _node_worker)
        # node -> URL -> until when (time.monotonic()) its warms wait for a purge of it done again (_purge_first)
        self._purges_first: dict[str, dict[str, float]] = {}
        self._unconfigured_told: set[str] = set()  # nodes not configured whose items failed: said once each
        self._using: dict[NodeClient, int] = {}  # fetcher -> items working through it now
        self._retiring: dict[NodeClient, asyncio.Future[None]] = {}  # replaced fetchers still in use
        self.fetched = 0  # items worked by this engine, for tests
        self.metrics.in_flight.set_function(lambda: sum(self._using.values()))  # items being worked now

    # -- control ----------------------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: node widths apply at once, other settings and new nodes from the next claim.
        A node's items due later (put off while it was held down, or waiting to be retried) are due at once when
        the node is now at another address or gone (what kept them was the old address's), every node's when
        node_down_wait or backoff_max was cut (they would wait past the new one). A node at another address
        has what it did for the tasks still running done again there (`_rewarm_moved`). Warms are not shared with
        those of before when the variant they ask for changed (`accept_encoding`, `user_agent`)."""
        new_variant = any(getattr(config.engine, k) != getattr(self.settings, k) for k in VARIANT_KEYS)
        for old in self.config.nodes:  # a node now at another address (or gone) holds none of what it warmed
            if config.node(old.name) != old or new_variant:
                self._coalescer.changed(old.name)
        moved = {old.name for old in self.config.nodes if (new := config.node(old.name)) is None or new.url != old.url}
        # A node the reload removes is told by the reload's line; one added again is told anew if it goes again.
        self._unconfigured_told = {name for name in self._unconfigured_told | moved if config.node(name) is None}
        if config.engine.lease_seconds != self.settings.lease_seconds:
            self._lease_changed.set()
        waits_less = (
            config.engine.node_down_wait < self.settings.node_down_wait
            or config.engine.backoff_max < self.settings.backoff_max
        )
        self.config = config
        self._shields = config.shields()
        self._varnish = _has_varnish(config)
        self.settings = config.engine
        self._coalescer.window = self._dedupe_seconds()
        for lane in list(self._lanes.values()):
            node = config.node(lane.node.name)
            lane.removed = node is None
            self._staff(lane, node or lane.node)
            self._retire(lane)
        self._bring_back({node.name for node in config.nodes} | moved if waits_less else moved)
        # After the bringing back: the warms again wait 2 s first, and the node's work runs in the order asked.
        self._rewarm_moved([node for name in sorted(moved) if (node := config.node(name)) is not None])
        self.wake()

    def _widths(self) -> dict[str, int]:
        """Each configured node's width: what its settings ask for (`concurrency`, or `per_node_concurrency`),
        while the widths add up to `[engine] concurrency` at most (the fetcher's connections, all nodes
        together); beyond that, `concurrency` shared max-min fairly (a node asking for less than an even split
        gets it, the others share the rest evenly). Else slow nodes' requests could hold every connection and
        the other nodes' wait for one (a tester's 4 slow nodes of the default 64 beside a live one, 256 in all:
        the live node warmed at the slow nodes' pace)."""
        asked = {n.name: self._asked(n) for n in self.config.nodes}
        left, widths = requests_room(self.settings.concurrency), {}  # (the process's open files' room)
        for i, name in enumerate(sorted(asked, key=lambda name: asked[name])):
            widths[name] = min(asked[name], max(1, left // (len(asked) - i)))
            left -= widths[name]
        return widths

    def _asked(self, node: Node) -> int:
        """The width `node`'s settings ask for: its own `concurrency`, else `[engine] per_node_concurrency`."""
        return node.concurrency or self.settings.per_node_concurrency

    def _dedupe_seconds(self) -> float:
        return self.settings.dedupe_seconds if self._sole else 0.0

    def replace_fetcher(self, fetcher: NodeClient) -> asyncio.Future[None]:
        """Work the next items through `fetcher` (a reload changed the fetcher's settings). The future is done
        once no item works through the one replaced: then it may be closed."""
        old, self.fetcher = self.fetcher, fetcher
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if old in self._using:
            self._retiring[old] = released
        else:
            released.set_result(None)
        return released

    def wake(self) -> None:
        """New work may be due (a task was submitted, a stage finished)."""
        self._fresh = True
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; work in hand gets `grace_seconds` to finish."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        # Other processes on a shared store (PostgreSQL) announce new work: claim at once, not at the next poll.
        async with self.store.listen_for_work(self.wake):
            await self._run()

    async def _run(self) -> None:
        self._renewed = time.monotonic()  # nothing leased yet
        await self._bring_forward()  # a clock stepped back before this start (or during a stop) left work ahead
        writer = asyncio.create_task(self._write_outcomes(), name=f"edgewarm-writer-{self.worker_id}")
        renewer = asyncio.create_task(self._renew_leases(), name=f"edgewarm-lease-renewer-{self.worker_id}")
        cancels = asyncio.create_task(self._watch_cancels(), name=f"edgewarm-cancels-{self.worker_id}")
        try:
            await self._dispatch()
            await self._drain()
        finally:
            workers = [w for lane in self._lanes.values() for w in lane.workers]
            workers.extend(self._retired)
            workers.extend(self._putting_off.values())
            if self._follower is not None:
                workers.append(self._follower)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            cancels.cancel()
            written = await self._write_the_last_outcomes()  # the leases are renewed meanwhile: not lost to others
            unwritten = 0 if written else self._outcomes.qsize() + self._writing
            renewer.cancel()
            writer.cancel()
            await asyncio.gather(writer, renewer, cancels, return_exceptions=True)
            if self._leased and not written:
                # The store took no write for the whole wait: a release would wait behind the one under way (a
                # tester's stop with the SQLite file locked: 10 s more, 30 s in all with grace_seconds = 5).
                log.error(
                    "not handing back %s: the store took none of the last outcomes (not reachable, locked by "
                    "another process, full or read-only: a line says which once its write gives up, if it did "
                    "before; they run again when their leases end, or at the next start)",
                    item_count(len(self._leased)),
                )
                self.lost = StopLoss(unwritten, len(self._leased))
                self._leased.clear()
            elif self._leased:
                try:
                    released = await asyncio.wait_for(
                        self.store.release_leases(self.worker_id, sorted(self._leased), self._clock()),
                        LAST_WRITES_SECONDS,
                    )
                    log.info("released %s unfinished", item_count(len(self._leased)))
                    for task in released.ended:  # cancelled, its last items under way among those handed back
                        self._task_ended(task)
                except (StoreError, TimeoutError) as exc:
                    log.error(
                        "releasing %s failed (they run again when their leases end, or at the next start): %s",
                        item_count(len(self._leased)),
                        exc if isinstance(exc, StoreError) else f"no answer within {LAST_WRITES_SECONDS:g} s",
                    )
                    self.lost = StopLoss(unwritten, len(self._leased))
                self._leased.clear()
            elif unwritten:
                self.lost = StopLoss(unwritten, 0)
            for outcome in (writer, renewer):
                if not outcome.cancelled() and outcome.exception() is not None:
                    raise outcome.exception()  # type: ignore[misc]

    # -- claiming ---------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping.is_set():
            s = self.settings
            self._wake.clear()
            await self._clock_stepped()
            self._fall_due()
            room = self._room()
            limit = min(room - self._counted(self._part(room)), self._unwritten_room(), s.batch_size)
            resting = self._resting_nodes()
            self._rewarm_returned()
            for name in [*resting, *self._cut_nodes()]:
                self._coalescer.changed(name)  # held down or cut: it may come back empty (a restart), its warms with it
            self._put_off(resting)
            skip, skip_for = self._nodes_to_skip(resting)
            skipped = frozenset([(None, n) for n in skip] + [(u, n) for u, nodes in skip_for.items() for n in nodes])
            claims: list[Claim] = []
            claimed = False
            # After a store outage this engine's leases may have run out: it renews them before it claims, so
            # that it does not take other workers' expired leases before they could renew theirs.
            if limit > 0 and not self._is_dry(skipped) and (not self._unrenewed or await self._renew()):
                self._fresh = False
                try:
                    claims = await self._claim(limit, skip, skip_for)
                    self._claims_log.worked()
                    claimed = True
                except StoreError as exc:
                    self._claims_log.failed(exc)
                dry = bool(skipped) and len(claims) < limit
                self._dry = (skipped, time.monotonic() + s.poll_interval) if dry else None
            self._say_taken_over(claims)
            for claim in claims:
                self._hand_out(claim)
            if claims and len(claims) == limit:
                continue  # there may be more due right now
            if claimed and not claims and not self._stopping.is_set():  # (a stop's: no more of the store's time)
                await self._look_ahead(skipped=bool(skipped))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._until_next_look())

    async def _claim(self, limit: int, skip: list[str], skip_for: dict[str, list[str]]) -> list[Claim]:
        """The store's claim of due items. A stop waits STOP_CLAIM_SECONDS at most for one under way: the store's
        statements queued behind a write waiting for a lock each waited their own 10 s (a tester's stop with the
        SQLite file locked by another process took 24.6 s with grace_seconds = 5). One not begun by then is dropped
        (never run); one the store is still doing is left to it: its items run again when their leases end (or at
        the next start)."""
        s = self.settings
        claiming = asyncio.ensure_future(
            self.store.claim_due_items(self.worker_id, limit, self._clock(), s.lease_seconds, skip, skip_for)
        )
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((claiming, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not claiming.done():
                await asyncio.wait((claiming,), timeout=STOP_CLAIM_SECONDS)
        finally:
            stopped.cancel()
            if not claiming.done():
                claiming.cancel()
        return claiming.result() if claiming.done() else []

    def _say_taken_over(self, claims: list[Claim]) -> None:
        """Log the claimed items whose leases another engine on the store had let run out (it died, was frozen or
        cut off): they run again here (a tester's 1,512 items of a killed worker were taken over without a word,
        the tasks only ending a lease later). A sole engine's are the ones its start took back, said then."""
        if self._sole:
            return
        if taken := sum(1 for c in claims if c.retaken and c.item_id not in self._leased):
            log.warning(
                "took over %s whose leases had run out (the worker that held them died, or was frozen or cut off "
                "for longer than lease_seconds): they run again here",
                item_count(taken),
            )

    async def _look_ahead(self, *, skipped: bool) -> None:
        """Nothing was claimed: claim when the earliest item falls due, not at the next poll. The engine knows the
        due times it set itself (_due_at); this finds the others: set before its start, by another worker (its
        outcome's announcement woke this engine), or a lease's end. Kept only when earlier than any known. One
        due already and not claimed, with no node skipped, is a row another session holds locked (PostgreSQL's
        claims skip those): looked for again after LOCKED_PAUSE_SECONDS (it waited the whole poll_interval)."""
        try:
            when = await self.store.next_due_at()
        except StoreError:
            return  # the next poll claims as before
        if when is None:
            return
        now = self._clock()
        if when <= now:
            if skipped:
                return  # likely a skipped node's: its lane claims again as it frees (_done_with)
            when = now + LOCKED_PAUSE_SECONDS
        if not (self._due_later and self._due_later[0] <= when):
            self._due_at(when)

    def _due_at(self, when: float) -> None:
        """Items this engine put off fall due at `when` (wall clock): a claim then (_fall_due)."""
        heapq.heappush(self._due_later, when)

    def _fall_due(self) -> None:
        """The items put off until now are due: new work, as a submission's is (_is_dry does not hold it back)."""
        now, due = self._clock(), self._due_later
        while due and due[0] <= now:
            heapq.heappop(due)
            self._fresh = True

    def _until_next_look(self) -> float:
        """Seconds until the next claim: the poll interval, or less when items put off fall due before (those due
        within DUE_TOGETHER_SECONDS of each other in one claim: 10,000 retries jittered over a minute are not
        10,000 claims)."""
        poll = self.settings.poll_interval
        if not self._due_later:
            return poll
        return min(poll, max(DUE_TOGETHER_SECONDS, self._due_later[0] - self._clock()))

    async def _clock_stepped(self) -> None:
        """Act on a step of the wall clock (an NTP correction, a VM resumed), told by its distance to the
        monotonic clock: stepped back, what was due before the step is due again at once (it would wait for the
        clock to catch up: an hour's step, an hour); forward, the leases are renewed at once (they ran out by
        the step: the next claim would take this engine's own items in hand again)."""
        skew = self._clock() - time.monotonic()
        last, self._skew = self._skew, skew
        if last is None or abs(skew - last) < CLOCK_STEP_SECONDS:
            return
        log.warning("the wall clock stepped %s by %.1f s", "back" if skew < last else "forward", abs(skew - last))
        if skew < last:
            await self._bring_forward()
        else:
            await self._renew()

    async def _bring_forward(self) -> None:
        """Items due later than any retry, hold or lease reaches are due now (a clock stepped back put them so)."""
        s = self.settings
        now = self._clock()
        beyond = now + max(s.backoff_max, s.lease_seconds, s.node_down_wait) + DUE_SLACK_SECONDS
        try:
            brought = await self.store.bring_forward(now, beyond)
        except StoreError as exc:
            log.error("bringing forward items left due in the future: %s", exc)
        else:
            if brought:
                log.warning(
                    "%s were due more than %.0f s ahead (a clock stepped back): due now",
                    item_count(brought),
                    beyond - now,
                )
        if self.on_bring_forward is not None:
            await self.on_bring_forward()

    def _room(self) -> int:
        """How many claimed items this engine may hold (a reload may change `concurrency`)."""
        return requests_room(self.settings.concurrency) * CLAIM_AHEAD

    def _unwritten_room(self) -> int:
        """How many more items may be claimed before their outcomes are written: the items worked but not yet
        written are at most OUTCOMES_AHEAD batches. A store slow to write (PostgreSQL writers waiting for each
        other's task rows) slows the claims, not only the writes: else thousands of items would be warmed and
        not recorded, sent again when this process dies and their leases expire, and counted late."""
        return self._room() + OUTCOMES_AHEAD * self.settings.batch_size - len(self._leased)

    def _part(self, room: int) -> int:
        """A node's part of the `room` (`_room()`) among the configured nodes (every task has items on each)."""
        return room // max(1, len(self.config.nodes))

    def _share(self, lane: _NodeLane) -> int:
        """How many claimed items a node's lane may hold: enough to keep its workers busy, or its part of the
        room if that is more."""
        return max(lane.width * CLAIM_AHEAD, self._part(self._room()))

    def _counted(self, part: int) -> int:
        """The items in hand that count against the room: each lane's up to its `part` of it (`_part`). What a
        lane holds beyond its part (up to its share, and a claim's worth more: a claim made while it was just below its
        share may bring it a whole claim of its node's backlog, the due items in front of each user's being its
        own) would otherwise leave the other nodes a sliver of the room until a slow node worked it off (a
        tester's 10 users beside a node answering 8 a second: it held 482 of the 512 and the live node's items
        took twice as long; 4 slow nodes of the default width held the whole room between them)."""
        beyond = 0
        for lane in self._lanes.values():  # a loop, not sum() of a generator: this runs for every item done
            if lane.held > part:
                beyond += lane.held - part
        return len(self._in_hand) - beyond

    def _nodes_to_skip(self, resting: dict[str, Hold]) -> tuple[list[str], dict[str, list[str]]]:
        """The nodes left out of the next claim: the `resting` ones; and, for each user, those whose lanes hold
        their share (`_share`) and at least an even part of it of the user's items (the share over the users
        with items in the lane). So a slow node's claims do not fill the room while the other nodes' items wait
        behind them (when all their lanes are full, so is the room), and another user's items of such a node
        are still claimed: its turns in the lane come next (engine/turns.py), not after all that the lane
        holds (a tester's 1-URL task waited 1.6-6.7 s behind another user's on a node of 0.5 s answers). While
        the users but the one holding most hold less than its share: beyond, the lane is left out for everyone
        (else, with more users than its share, each user not in it yet was claimed: a tester's worker held 453
        of a slow node's items for 270 users, 10 times its share, which the other workers could not take)."""
        skip = list(resting)
        skip_for: dict[str, list[str]] = {}
        for lane in self._lanes.values():
            share = self._share(lane)
            if lane.held < share or lane.node.name in resting:
                continue
            if lane.held - max(lane.held_by.values()) >= share:
                skip.append(lane.node.name)
                continue
            even = max(1, share // len(lane.held_by))
            for user, held in lane.held_by.items():
                if held >= even:
                    skip_for.setdefault(user, []).append(lane.node.name)
        return skip, skip_for

    def _cut_nodes(self) -> set[str]:
        """The nodes a connection to was closed under a request since the last round (NodeHealth.were_cut)."""
        health = self.fetcher.health
        return set() if health is None else health.were_cut()

    def _resting_nodes(self) -> dict[str, Hold]:
        """The nodes held down whose items wait for them now (node_health.py, `node_down_wait`): no request
        may go to them, so their items would only come back unsent."""
        health, patience = self.fetcher.health, self.settings.node_down_wait
        if health is None or not patience:
            return {}
        holds = ((node.name, health.resting(node)) for node in self.config.nodes)
        return {name: hold for name, hold in holds if hold is not None and hold.down_for < patience}

    def _put_off(self, resting: dict[str, Hold]) -> None:
        """Put off the items of each node that a new cooldown holds down to its end, so that they are not due
        meanwhile: a claim that skips the node would otherwise scan past them (a large task's items for a dead
        node would keep a later task's items beyond the claim's scan). In the background: claims for the
        other nodes go on meanwhile."""
        for name, hold in resting.items():
            if hold.probe_out or self._put_off_until.get(name) == hold.asked_at:
                continue
            running = self._putting_off.get(name)
            if running is not None and not running.done():
                continue  # this cooldown's turn comes at a claim after it
            self._put_off_until[name] = hold.asked_at
            task = asyncio.create_task(self._put_off_node(name, hold), name=f"edgewarm-put-off-{name}")
            self._putting_off[name] = task

    async def _put_off_node(self, name: str, hold: Hold) -> None:
        until, note = self._clock() + hold.retry_in, waiting_for_node(hold.reason, self.settings)
        try:
            count = await self.store.put_off_node(name, until, note)
        except StoreError as exc:
            log.error("putting off the items of node %s failed: %s", name, exc, extra={"node": name})
            return
        if count:
            self._due_at(until)
            log.info("put off %s of node %s for %.0f s", item_count(count), name, hold.retry_in, extra={"node": name})

    def _rewarm_returned(self) -> None:
        """For each node back after a hold whose cache may have restarted empty (`Node.rewarms_after_down`), make
        its warms of the tasks still running that ended before the hold began (and a little after: an answer
        is written a batch later) due again, in the background. Each engine learns of holds for itself: on a
        shared store, the warms done again by another's note of the same hold ended after it, and stay."""
        health = self.fetcher.health
        if health is None:
            return
        for url, down_for in health.came_back():
            ended_before = self._clock() - down_for + REWARM_SLACK_SECONDS
            for node in self.config.nodes:
                if node.url == url and node.rewarms_after_down:
                    note = (
                        f"{WARMED_AGAIN} {node.name} could not be reached for a while and may have restarted with an "
                        "empty cache (rewarm_after_down)"
                    )
                    why = "it is back after a hold (it may have restarted empty)"
                    work = functools.partial(self._rewarm_node, node.name, ended_before, note, why)
                    self._after_node_work(node.name, work)

    def _rewarm_moved(self, nodes: list[Node]) -> None:
        """These nodes are at another address now: another cache, which holds none of what the old one was
        warmed with (nor purged of). What they did for the tasks still running is done again there: the warms
        (and a refresh's purges) written before now, at once (`_rewarm_node`; this engine's outcomes are written
        after it, so none of its writes ends a task meanwhile), and those under way or not yet written as they
        are written (`_moved_outcome`, `_redo`), however long their requests take. (It waited 2 s, then did
        those written up to 2 s after the move: a task that ended meanwhile reported the new cache warmed, a
        slower request was not done again, and warms already made at the new address were, a tester's.)"""
        ended_before, now = self._clock(), time.monotonic()
        for moved in nodes:
            self._moved_at[moved.name] = now
            self._redo.update(item for item, claim in self._unwritten.items() if claim.node == moved.name)
            note = moved_note(moved.name)
            why = "it was moved to another address by a reload"
            work = functools.partial(self._rewarm_node, moved.name, ended_before, note, why, purges=True)
            self._after_node_work(moved.name, work)
            self._moves.append(self._putting_off[moved.name])
            self._moving[moved.name] = self._putting_off[moved.name]

    def _after_node_work(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Do `work` on node `name`'s items in the background, once the node's work under way (its items put
        off, brought back, warmed again) is over: in the order asked."""
        before = self._putting_off.get(name)

        async def after() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await work()

        self._putting_off[name] = asyncio.create_task(after(), name=f"edgewarm-node-work-{name}")

    async def _rewarm_node(self, name: str, ended_before: float, note: str, why: str, *, purges: bool = False) -> None:
        """Warm again node `name`'s warms of the tasks still running that ended before `ended_before` (and its
        purges of refresh tasks, with `purges`), saying `note` in their items and `why` in the log."""
        try:
            now, attempts = self._clock(), self.settings.max_attempts
            done = await self.store.rewarm_node(name, min(ended_before, now), now, note, attempts, purges=purges)
        except StoreError as exc:
            log.error("warming again what node %s had warmed failed: %s", name, exc, extra={"node": name})
            return
        self._purge_first(name, done.purged)
        if count := done.count:
            log.warning(
                "node %s: %s done again: %s",
                name,
                counted(count, *_REDONE[purges]),
                why,
                extra={"node": name},
            )
            self.wake()

    def _bring_back(self, names: set[str]) -> None:
        """Make the items of these nodes due later due now (after any putting off under way), in the background."""
        for name in sorted(names):
            self._put_off_until.pop(name, None)  # a hold of the node from now on puts its items off again
            self._after_node_work(name, functools.partial(self._bring_back_node, name))

    async def _bring_back_node(self, name: str) -> None:
        try:
            count = await self.store.bring_node_forward(name, self._clock())
        except StoreError as exc:
            log.error("bringing back the items of node %s failed: %s", name, exc, extra={"node": name})
            return
        if count:
            log.info("node %s: %s due later made due now (a reload)", name, item_count(count), extra={"node": name})
            self.wake()

    def _is_dry(self, skip: _Skipped) -> bool:
        """Whether a claim now would only scan past the skipped nodes' items again: the last one, leaving out
        some of these nodes, came back short, and since then no work may have come (`wake`: a submission,
        outcomes written) and no poll interval passed."""
        if self._dry is None or self._fresh:
            return False
        skipped, until = self._dry
        return time.monotonic() < until and all(pair in skip or (None, pair[1]) in skip for pair in skipped)

    def _hand_out(self, claim: Claim) -> None:
        """Give `claim` to its node's lane; with other engines on the store, a purge first waits for their warms
        of what it purges, out of the lane (_follow_others). An item this engine holds already (its lease ran out
        by a clock stepped forward, and the claim took it again, renewed) is not worked twice. One that the store
        had pending (not retaken) is no longer in hand: its outcome, a retry due at once, was committed before
        the writer took the store's answer; it is handed out once the writer has (it waited a whole lease)."""
        if claim.item_id in self._leased:
            if not claim.retaken and claim.item_id not in self._in_hand:
                self._claimed_early[claim.item_id] = claim
            return
        self._leased[claim.item_id] = claim.task_id
        node = self.config.node(claim.node)
        if node is None:
            if claim.node not in self._unconfigured_told:  # once a node: a restart on a config without it said
                self._unconfigured_told.add(claim.node)  # nothing while its open items failed (a tester's 240)
                log.warning(
                    "node %s is not configured: its open items in the store fail, unsent (the first: task %s)",
                    claim.node,
                    claim.task_id,
                    extra={"node": claim.node, "task_id": claim.task_id},
                )
            self._end_unsent(claim)
            return
        if claim.retaken and claim.attempts >= self.settings.max_attempts:
            # Its last attempts were begun by workers that died during them. (An item not retaken gets here with
            # its attempts spent when a reload lowered max_attempts: it makes one more, its last.)
            reason = f"gave up after {claim.attempts} attempts (the worker died during the last)"
            self._outcomes.put_nowait(ItemOutcome(claim.item_id, False, claim.attempts, error=reason))
            return
        self._in_hand[claim.item_id] = claim
        self._idle.clear()
        lane = self._lane(node)
        lane.hold(claim)
        if claim.action is not ItemAction.WARM and not self._sole:
            self._following[claim.item_id] = _Following(claim, lane, None, time.monotonic() + WARMS_WAIT_SECONDS)
            if self._follower is None or self._follower.done():
                self._follower = asyncio.create_task(self._follow_others(), name=f"edgewarm-follower-{self.worker_id}")
            return
        lane.queue.put_nowait(claim)

    def _lane(self, node: Node) -> _NodeLane:
        lane = self._lanes.get(node.name)
        if lane is None:
            lane = self._lanes[node.name] = _NodeLane(node)
            self._staff(lane, node)
        lane.node = node  # a reload may have changed its settings
        return lane

    def _staff(self, lane: _NodeLane, node: Node) -> None:
        """Give `lane` its width (`_widths`): start workers up to it (see _NodeLane for fewer)."""
        lane.node = node
        lane.width = self._widths().get(node.name) or self._asked(node)  # not configured: a reload removed it
        # With other users, one worker is left for their claims (TurnsQueue); one user alone takes them all.
        lane.queue.per_user = None if len(self.config.users) < 2 else max(1, lane.width - 1)
        for _ in range(lane.width - len(lane.workers)):
            name = f"edgewarm-{node.name}-{len(lane.workers)}"
            lane.workers.append(asyncio.create_task(self._node_worker(lane), name=name))

    def _retire(self, lane: _NodeLane) -> None:
        """Drop `lane` once its node was removed by a reload and nothing of it is in hand: its workers leave (else
        each node renamed or replaced kept its lane and workers for the life of the process). A node added
        back later gets a new lane (_lane). Its workers wait for their queue's next claim: cancelled (one of
        them may be the caller: it ends at its next wait), tracked until they end, as stop() awaits them."""
        if not lane.removed or lane.held or self._lanes.get(lane.node.name) is not lane:
            return
        del self._lanes[lane.node.name]
        self._warming.pop(lane.node.name, None)  # empty: none of its warms is in hand
        for worker in lane.workers:
            worker.cancel()
            self._retired.add(worker)
            worker.add_done_callback(self._retired.discard)
        lane.workers = []

    # -- working ----------------------------------------------------------------------------------

    async def _node_worker(self, lane: _NodeLane) -> None:
        queue, me = lane.queue, asyncio.current_task()  # me: the leader of its warms' fetches (Coalescer)
        while True:
            # A claim waiting is taken at once, as get() would (it awaits nothing then), without its coroutine.
            claim = await queue.get() if queue.empty() else queue.get_nowait()
            try:
                if len(lane.workers) > lane.width:  # a reload narrowed the lane: this worker leaves
                    lane.queue.put_nowait(claim)
                    lane.workers = [w for w in lane.workers if w is not me]
                    return
                node = lane.node
                if self._stopping.is_set():
                    self._done_with(claim, lane)  # not started: it stays leased and is handed back at the end
                    continue
                if self._in_doubt():  # after a freeze: nothing sent before the leases were renewed, cancels looked up
                    await self._shared_recheck()
                if claim.item_id in self._lost:
                    self._leased.pop(claim.item_id, None)  # no longer this worker's: no outcome of ours
                    self._done_with(claim, lane)
                    continue
                if claim.retaken and claim.task_id not in self._cancelled:
                    await self._look_for_cancels({claim.task_id})  # its holder died: the task may be long cancelled
                if lane.removed or claim.task_id in self._cancelled:
                    self._end_unsent(claim, None if lane.removed else CANCELLED)
                    self._done_with(claim, lane)
                    continue
                attempt = claim.attempts + 1
                if claim.retaken and not await self._begin_attempt(claim, attempt):
                    self._leased.pop(claim.item_id, None)  # another worker holds it now: no outcome of ours
                    self._done_with(claim, lane)
                    continue
                if (moving := self._moving.get(node.name)) is not None:  # nothing to its new address before what
                    await asyncio.wait([moving])  # the move makes due again is known (_purge_first)
                    if self._moving.get(node.name) is moving:
                        del self._moving[node.name]
                fetcher = self.fetcher
                self._using[fetcher] = self._using.get(fetcher, 0) + 1
                started = time.monotonic()
                shared = False
                sent = [0]
                SENT.set(sent)
                try:
                    outcome, shared = await self._perform(claim, node, attempt, fetcher, me)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must not strand the item: record it and retry later
                    log.exception("item %d: unexpected error", claim.item_id, extra={"node": node.name})
                    retry = None if attempt >= self.settings.max_attempts else self._clock() + self.settings.backoff_max
                    outcome = ItemOutcome(
                        claim.item_id, False, attempt, error=f"internal error: {type(exc).__name__}", retry_at=retry
                    )
                finally:
                    self._release(fetcher)
                self.fetched += 1
                moved = self._moved_at and outcome.succeeded and started < self._moved_at.get(node.name, started)
                if moved:
                    outcome = self._moved_outcome(claim)  # sent to the address the node had before
                elif outcome.succeeded:
                    self._unwritten[claim.item_id] = claim
                if claim.rewarm and outcome.retry_at is not None and not (outcome.error or "").startswith(WARMED_AGAIN):
                    outcome = replace(outcome, error=f"{WARMED_AGAIN} {outcome.error or 'to be retried'}")  # its next
                    # claim is a warm done again too (a move's says so already: _moved_outcome)
                # No latency for an item that sent no request: shared, or its node held down.
                seconds = time.monotonic() - started if sent[0] and not shared else None
                self._observe(claim, node, outcome, seconds, moved=bool(moved))
                self._outcomes.put_nowait(outcome)
                self._done_with(claim, lane)
            finally:
                lane.queue.finished(claim)

    def _moved_outcome(self, claim: Claim, *, counted: bool = False) -> ItemOutcome:
        """A success at the address a reload has moved `claim`'s node from: to be done again at once, at the
        new one, its attempt not counted (it did not reach the node as it is now). `counted`: the success is in
        the metrics as an item finished already (it ended before the move, unwritten): its next is a warm done
        again (`warmed again:`), as is a warm done again's (a re-tester's items finished counted twice)."""
        said = moved_note(claim.node) if claim.rewarm or counted else sent_again(claim.node)
        if claim.action is not ItemAction.WARM:
            self._purge_first(claim.node, (claim.url,))
        return ItemOutcome(claim.item_id, False, claim.attempts, error=said, retry_at=self._clock())

    def _purge_first(self, node: str, urls: Iterable[str]) -> None:
        """These URLs' purges are done again at `node`'s new address (a reload moved it): its warms of them wait
        for one (PURGE_FIRST_SECONDS at most), as they came after them at the old address. Else a refresh's purge
        done again after a later prefetch's warm, done again too, left the URL cold there (a re-tester's 36 of
        2,000, the prefetch reported warmed)."""
        if urls:
            now = time.monotonic()
            first = {url: until for url, until in self._purges_first.get(node, {}).items() if until > now}
            self._purges_first[node] = first | dict.fromkeys(urls, now + PURGE_FIRST_SECONDS)

    def _waits_for_a_purge(self, claim: Claim, node: str) -> ItemOutcome | None:
        """For a warm of a URL whose purge is to be done again at its node first (_purge_first): put off a moment,
        its attempt not counted; else None."""
        first = self._purges_first.get(node)
        if not first or (until := first.get(claim.url)) is None:
            return None
        if time.monotonic() > until:
            del first[claim.url]
            if not first:
                del self._purges_first[node]
            return None
        retry = self._clock() + PURGE_FIRST_PAUSE
        return ItemOutcome(claim.item_id, False, claim.attempts, error=PURGE_FIRST_NOTE, retry_at=retry)

    def _end_unsent(self, claim: Claim, why: str | None = None) -> None:
        """End a claim without sending it: its task was cancelled (`why`), or its node is no longer configured
        (a failure of this engine's, in the metrics as such; a cancelled item counts in its task only)."""
        self._outcomes.put_nowait(_unsent(claim, why))
        if why is None:
            self.metrics.items.observe(claim.node, claim.action, "rewarm_failed" if claim.rewarm else "failed", None, 0)

    def _release(self, fetcher: NodeClient) -> None:
        left = self._using[fetcher] - 1
        if left:
            self._using[fetcher] = left
            return
        del self._using[fetcher]
        released = self._retiring.pop(fetcher, None)
        if released is not None and not released.done():
            released.set_result(None)

    async def _begin_attempt(self, claim: Claim, attempt: int) -> bool:
        """Record the attempt a retaken item is about to make (a worker that died holding it may have sent it or
        not: only attempts begun are counted, so that one that kills its worker still ends). False when the
        item is no longer this worker's."""
        try:
            begun = await self.store.begin_attempt(self.worker_id, claim.item_id, attempt)
        except StoreError as exc:  # sent anyway: at worst, an attempt is not counted if this worker dies too
            self._attempts_log.failed(f"item {claim.item_id}, attempt {attempt}: {exc}")
            return True
        self._attempts_log.worked()
        return begun

    async def _perform(
        self, claim: Claim, node: Node, attempt: int, fetcher: NodeClient, me: asyncio.Task[Any] | None
    ) -> tuple[ItemOutcome, bool]:
        """The claim's outcome, and whether it was shared from another claim's warm (no request was made). `me`:
        the current task (the worker's)."""
        key = (claim.url, node.name)
        coalescer = self._coalescer
        if claim.action is not ItemAction.WARM:
            await self._after_warms(claim, node)
            coalescer.changed(node.name)  # warms of this node from before the purge are not shared from now on,
            try:  # nor those that overlapped it
                judged = self._clock()
                done = self._retry_after(
                    await perform(claim, node, attempt, fetcher, self.store, self.settings, judged), judged
                )
            finally:
                coalescer.changed(node.name)
                if (first := self._purges_first.get(node.name)) is not None:
                    first.pop(claim.url, None)  # its warms go now (_purge_first)
                    if not first:
                        del self._purges_first[node.name]
            if done.succeeded and claim.action is ItemAction.PURGE and self._varnish:
                self._note_purge(key)
            return done, False
        if self._purges_first and (later := self._waits_for_a_purge(claim, node.name)) is not None:
            return later, True  # no request made
        # share() only when the key is recent or being fetched: a warm of a key nobody else asks for awaits nothing.
        found = coalescer.begin(key, me)
        shared = None if found is None else await coalescer.share(key, found)
        if shared is not None:
            # No attempt of its own: the item says so (attempts as it was claimed) and shows what the shared warm got.
            note = SHARED_NOTE if shared.error is None else f"{SHARED_NOTE}; {shared.error}"  # what the warm's said
            shared = replace(shared, item_id=claim.item_id, attempts=claim.attempts, error=note, retry_at=None)
            return shared, True
        purged_at = self._purged_at(key, node) if self._purged else None
        outcome = None
        warming = self._warming.get(node.name)
        if warming is None:  # not setdefault(): its {} would be built for every warm
            warming = self._warming[node.name] = {}
        warming[claim.item_id] = claim.url
        try:
            upstream = self._shields if node.tier is Tier.EDGE else ()  # what an edge fetches through
            now = self._clock()
            outcome = await perform(
                claim, node, attempt, fetcher, self.store, self.settings, now, upstream=upstream, purged=purged_at
            )
            outcome = self._retry_after(outcome, now)
        finally:
            del warming[claim.item_id]
            if (ended := self._warm_ended.pop(node.name, None)) is not None:
                ended.set()
            coalescer.end(key, outcome, me)
            if outcome is not None and outcome.http_status is None and not outcome.succeeded:
                coalescer.changed(node.name)  # no answer: it may come back empty (a restart), its warms with it
        return outcome, False

    def _retry_after(self, outcome: ItemOutcome, judged: float) -> ItemOutcome:
        """`outcome`, its retry's backoff counted from the end of its requests, not from `judged` (when they began,
        the time `perform` judged by): a failure slower than its backoff, a timeout or a slow 503, was retried at
        once (a tester's 503s after 3 s: retried 0.01 s after each)."""
        if outcome.retry_at is None:
            return outcome
        return replace(outcome, retry_at=outcome.retry_at + max(0.0, self._clock() - judged))

    def _purged_at(self, key: tuple[str, str], node: Node) -> float | None:
        """For the first warm after this engine's purge of the URL on a Varnish `node` (a refresh's, its next
        stage), within PURGES_KEPT_SECONDS: when the oldest copy the warm may rightly get was stored, at the
        earliest (time.monotonic()): the purge's time, or the earliest of its shields' purges, for an edge (it
        may have been refilled from one of them since its own, with their age carried on). None: no check (no
        such purge; another engine purged a shield; a node whose Age is not its own: nginx sends none, Squid
        and ATS count it from the origin's Date, whose clock may be behind)."""
        found = self._purged.get(key)
        if found is None or found[1]:  # one check per purge: a later warm may get an upstream's old copy
            return None
        own = found[0]
        self._purged[key] = (own, True)  # kept: its edges' warms look at it
        if node.kind is not NodeKind.VARNISH or time.monotonic() - own > PURGES_KEPT_SECONDS:
            return None
        if node.tier is Tier.EDGE and self._shields:
            upstream = [self._purged.get((key[0], shield.name)) for shield in self._shields]
            if None in upstream:
                return None
            own = min(own, *(t[0] for t in upstream if t is not None))
        return own

    def _note_purge(self, key: tuple[str, str]) -> None:
        """`key` (URL, node) was purged now: the next warm of it by this engine checks that the purge took
        (_purged_at), within PURGES_KEPT_SECONDS and among the last PURGES_KEPT purges."""
        now, purged = time.monotonic(), self._purged
        purged.pop(key, None)  # to the end: the dict's order is the purges' order
        purged[key] = (now, False)
        while len(purged) > PURGES_KEPT or now - next(iter(purged.values()))[0] > PURGES_KEPT_SECONDS:
            purged.popitem(last=False)

    async def _after_warms(self, claim: Claim, node: Node) -> None:
        """A purge waits for this engine's warms of what it purges on `node` that are sending now: a warm that
        began before the purge may store the old object after it (nginx answers a purge of a key it is still
        fetching "not cached", then stores what the fetch brings). Bounded by WARMS_WAIT_SECONDS. (Other
        engines' warms: _follow_others.)"""
        warming = self._warming.get(node.name)
        if not warming:
            return
        waiting = _reached(claim, warming.items())
        deadline = time.monotonic() + WARMS_WAIT_SECONDS
        while waiting.intersection(warming) and (left := deadline - time.monotonic()) > 0:
            ended = self._warm_ended.setdefault(node.name, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), left)

    async def _follow_others(self) -> None:
        """Until no purge waits out of its lane: ask the store for the warms other engines on it hold leased on
        the purges' nodes (sending, or about to; one question for all the purges). A purge new since the last
        question begins to follow those it reaches, as the first answer asked after its claim has them: a warm
        leased later began after the purge was due (after its refresh, and after the earlier tiers' purges), so
        it fetches the new object. Each purge is queued in its lane once the warms it follows were written back
        or their leases ended (a dead worker's), or after WARMS_WAIT_SECONDS, or when it will not be sent (a
        stop, a cancel). Out of the lanes, since two workers' purges waiting for each other's warms would fill
        both lanes and keep those very warms from being sent. A store that does not answer: the new purges go
        as if there were no other engine, the others keep waiting within their bound."""
        pause, most = OTHERS_WARMS_POLL_SECONDS
        while self._following:
            asked = [item for item, following in self._following.items() if following.warms is None]
            if not asked:
                await asyncio.sleep(pause)
                pause = min(pause * 2, most)
            nodes = sorted({following.claim.node for following in self._following.values()})
            try:
                leased: dict[int, tuple[str, str]] | None = await self.store.others_warms(
                    self.worker_id, nodes, self._clock()
                )
                self._others_log.worked()
            except StoreError as exc:
                self._others_log.failed(exc)
                leased = None
            now = time.monotonic()
            for item in asked:
                if (following := self._following.get(item)) is not None:
                    node = following.claim.node
                    on_node = ((i, url) for i, (n, url) in (leased or {}).items() if n == node)
                    following.warms = _reached(following.claim, on_node)
            for item, following in list(self._following.items()):
                if following.warms is None:
                    continue  # claimed while the store was being asked: the next answer is its first
                if leased is not None:
                    following.warms.intersection_update(leased)
                if not following.warms or now > following.until or self._given_up(following.claim, following.lane):
                    del self._following[item]
                    following.lane.queue.put_nowait(following.claim)

    def _given_up(self, claim: Claim, lane: _NodeLane) -> bool:
        """Whether `claim` will not be sent whatever it waits for: a stop, its task cancelled, its node removed."""
        return self._stopping.is_set() or claim.task_id in self._cancelled or lane.removed

    def _done_with(self, claim: Claim, lane: _NodeLane) -> None:
        self._in_hand.pop(claim.item_id, None)
        self._lost.discard(claim.item_id)
        if not self._in_hand:
            self._idle.set()
        lane.let_go(claim)
        if lane.removed:
            self._retire(lane)
        # Claim again while a quarter of the room is free (half of a node's part, with more than two nodes), not
        # when the queues run dry: a claim takes a few milliseconds (it waits its turn with the store's other
        # writes), and workers must not idle meanwhile. Free as `_counted` says: slow nodes holding their parts
        # of the room would else let the others claim only at each poll (a tester's 4 slow nodes: the live
        # node warmed ~70 items a second).
        room = self._room()
        part = self._part(room)
        if room - self._counted(part) >= min(room // 4, part // 2):
            self._wake.set()

    def _observe(
        self, claim: Claim, node: Node, outcome: ItemOutcome, seconds: float | None, *, moved: bool = False
    ) -> None:
        """The item in the metrics; `seconds` its requests took, None when it made none (shared, node held down).
        A warm done again ends as `rewarmed` or `rewarm_failed`: its item had ended once already (a tester's
        items_finished_total counted 170 items succeeded of 140)."""
        if outcome.succeeded:
            verdict = "rewarmed" if claim.rewarm else "succeeded"
        elif outcome.retry_at is None:
            verdict = "rewarm_failed" if claim.rewarm else "failed"
        else:  # an item that waits for its node (held down) spent no attempt; one sent again after a move did
            verdict = "retried" if outcome.attempts > claim.attempts or moved else "waiting"
        size = 0 if seconds is None else outcome.bytes or 0
        self.metrics.items.observe(node.name, claim.action, verdict, seconds, size)

    async def _write_the_last_outcomes(self) -> bool:
        """At a stop: wait for the outcomes still to be written, up to grace_seconds (at least a few seconds)
        when the store does not take them: then this process ends without them, and their items run again
        when their leases end (sent twice, counted once). Whether they were written."""
        limit = max(self.settings.grace_seconds, LAST_WRITES_SECONDS)
        try:
            await asyncio.wait_for(self._outcomes.join(), timeout=limit)
        except TimeoutError:
            log.error(
                "stopping with %s unwritten: the store did not take them within %g s; their items run "
                "again when their leases end",
                counted(self._outcomes.qsize() + self._writing, "outcome"),
                limit,
            )
            return False
        return True

    async def _drain(self) -> None:
        if not self._in_hand:
            return
        log.info("waiting up to %.1fs for %s in hand", self.settings.grace_seconds, item_count(len(self._in_hand)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self.settings.grace_seconds)

    # -- writing ----------------------------------------------------------------------------------

    async def _write_outcomes(self) -> None:
        while True:
            s = self.settings
            batch = [await self._outcomes.get()]
            # One wait per batch, not one per outcome: let the batch fill for flush_interval, then take it. Not
            # when nothing is left in hand: no outcome is coming, and a task's last one would wait for nothing.
            if self._outcomes.qsize() + 1 < s.batch_size and not self._idle.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), timeout=s.flush_interval)
            while len(batch) < s.batch_size and not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            self._writing = len(batch)
            await self._flush(batch)
            self._writing = 0
            for _ in batch:
                self._outcomes.task_done()

    async def _before_writing(self, batch: list[ItemOutcome]) -> None:
        """Before each try of a batch: what a move makes due again is first (no write of ours ends a task before
        it), and the batch's successes at a node moved since they ended are to be done again (_rewarm_moved; at
        each try: a move while the store keeps refusing the batch, a tester's locked file, let them through)."""
        if self._moves:
            moves, self._moves = self._moves, []
            await asyncio.gather(*moves, return_exceptions=True)
        redo = self._redo
        if not redo:
            return
        for index, outcome in enumerate(batch):
            if outcome.item_id in redo and (claim := self._unwritten.get(outcome.item_id)) is not None:
                redo.discard(outcome.item_id)
                batch[index] = self._moved_outcome(claim, counted=True)

    async def _flush(self, batch: list[ItemOutcome]) -> None:
        delay = 0.1
        tries: set[float] = set()  # each try's time: a try whose answer was lost may have committed the batch
        while True:
            await self._before_writing(batch)
            now = self._clock()
            tries.add(now)
            try:
                await self.store.record_outcomes(self.worker_id, batch, now)
                self._writes_log.worked()
                break
            except StoreError as exc:
                # Keep the outcomes and try again: if this process dies meanwhile, the leases expire and the
                # items run again, so nothing is lost either way.
                self._writes_log.failed(exc)
                await self._pause_before_writing_again(delay)
                delay = min(delay * 2, 5.0)
        for outcome in batch:
            self._unwritten.pop(outcome.item_id, None)
            self._redo.discard(outcome.item_id)  # (a move during the try that wrote it: the store's pass has it)
        touched = {t for o in batch if (t := self._leased.pop(o.item_id, None)) is not None}
        for outcome in batch:
            if (early := self._claimed_early.pop(outcome.item_id, None)) is not None:
                if self._stopping.is_set():  # the lanes may be gone: handed back with the others at the end
                    self._leased[early.item_id] = early.task_id
                else:
                    self._hand_out(early)
        for when in {o.retry_at for o in batch if o.retry_at is not None}:
            self._due_at(when)
        self.wake()  # later stages may be due now
        await self._note_finished(touched, tries)

    async def _pause_before_writing_again(self, delay: float) -> None:
        """`delay`, or while stopping STOP_WRITE_RETRY_SECONDS at most: a store back during the stop's wait for
        the last outcomes is written to then (a tester's PostgreSQL was back 2.4 s before the wait ended, the next
        try 1.3 s after it: 24 items not handed back, 4 warms made again)."""
        if self._stopping.is_set():
            await asyncio.sleep(min(delay, STOP_WRITE_RETRY_SECONDS))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _note_finished(self, task_ids: set[str], tries: set[float]) -> None:
        """Tasks this batch ended (their finished_at is the time of one of its tries: the one that committed
        it, which is not the last when the store's answer to it was lost): metrics, and their webhooks."""
        for task_id in task_ids:
            try:
                task = await self.store.get_task(task_id)
            except StoreError:
                continue  # only bookkeeping: the outcomes are written
            if task is None or task.finished_at not in tries:
                continue
            self._task_ended(task)

    def _task_ended(self, task: Task) -> None:
        """A task this engine's writes ended: its metrics, its log line, its webhook."""
        self.metrics.task_ended(task, log)
        if self.on_task_finished is not None:
            self.on_task_finished(task)

    def cancelled(self, task_id: str) -> None:
        """`task_id` was cancelled (by this process's API): its items in hand are not sent."""
        if any(claim.task_id == task_id for claim in self._in_hand.values()):
            self._cancelled.add(task_id)
            self._end_queued({task_id})

    def _end_queued(self, task_ids: set[str]) -> None:
        """End at once, unsent ("cancelled"), the claims of `task_ids` that wait in their lanes' queues (they
        would end so only once a worker of their lane is free: after the slowest request under way)."""
        for lane in self._lanes.values():
            for claim in lane.queue.drain():
                if claim.task_id in task_ids:
                    self._end_unsent(claim, CANCELLED)
                    self._done_with(claim, lane)
                else:
                    lane.queue.put_nowait(claim)

    async def _watch_cancels(self) -> None:
        """Learn, every CANCEL_CHECK_SECONDS, which tasks of the items in hand were cancelled (by any process):
        their items not yet started are not sent (a cancel stops only the items that wait in the store)."""
        while True:
            await asyncio.sleep(CANCEL_CHECK_SECONDS)
            in_hand = {claim.task_id for claim in self._in_hand.values()}
            self._cancelled &= in_hand
            if unknown := in_hand - self._cancelled:
                await self._look_for_cancels(unknown)

    async def _look_for_cancels(self, task_ids: set[str]) -> None:
        """Ask the store which of `task_ids` were cancelled: their items not yet started are not sent, those
        waiting in the lanes end at once. The store not answering, they go on (asked again at the next look)."""
        try:
            found = await self.store.cancelled_tasks(sorted(task_ids))
        except StoreError as exc:
            self._cancels_log.failed(exc)
            return
        self._cancels_log.worked()
        new = found - self._cancelled
        self._cancelled |= found
        self._end_queued(found)
        for task_id in sorted(new):  # cancelled by the operator, or through another process's API (told there)
            mine = [claim for claim in self._in_hand.values() if claim.task_id == task_id]
            if mine:
                log.info(
                    "task cancelled (seen in the store): it ends when its items under way here come back (%d)",
                    len(mine),
                    extra={"task_id": task_id, "user": mine[0].user, "items": len(mine)},
                )

    async def _renew_leases(self) -> None:
        """Renew every third of a lease; again within a second after a failure (the store may be back); at once
        when a reload changed lease_seconds: the claims from then on are leased for the new length, which the
        pause begun under the old one may outlast (a tester's 60 cut to 2: the new leases ran out before the
        renewal, 20 s on, and another worker sent their items again)."""
        while True:
            self._lease_changed.clear()
            s = self.settings
            pause = min(s.lease_seconds / 3, RENEW_RETRY_SECONDS) if self._unrenewed else s.lease_seconds / 3
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_changed.wait(), pause)
            await self._renew()

    async def _renew(self) -> bool:
        """Renew the leases of the items in hand; False (and logged) when the store did not take it. After a doubt
        (LEASE_DOUBT), the renewal the lanes wait for (_shared_recheck), cancels looked up with it."""
        if self._in_doubt():
            return await self._shared_recheck() is not None
        return await self._renewed_leases() is not None

    async def _renewed_leases(self, *, mark: bool = True) -> set[int] | None:
        """Renew the leases of the items in hand; the ids renewed, or None (and logged) when the store did not
        take it. A claim in hand whose lease the store did not renew is no longer this worker's (taken over after
        its lease ran out): it is not sent (`_lost`). `mark`: the leases are known held from its start (else the
        caller marks them so, _recheck_leases)."""
        started, held = time.monotonic(), set()
        asked = sorted(self._leased)
        if asked:
            until = self._clock() + self.settings.lease_seconds
            try:
                held = await self.store.renew_leases(self.worker_id, asked, until)
                self._renewals_log.worked()
            except StoreError as exc:
                self._renewals_log.failed(exc)
                self._unrenewed = True
                return None
        lost = [item for item in asked if item not in held and item in self._in_hand]
        if lost:
            self._lost.update(lost)
            log.warning(
                "%s no longer leased to this worker after %.1f s without a lease renewed (the process frozen, or "
                "the store silent): not sent here (another worker took them, or their task was cancelled)",
                item_count(len(lost)),
                started - self._renewed,
            )
        self._unrenewed = False
        if mark:
            self._renewed = max(self._renewed, started)
        return held

    def _in_doubt(self) -> bool:
        """Whether the leases in hand may have run out (LEASE_DOUBT): no renewal for too long, and none failed
        just now (the store down: the claims go on as before, their outcomes kept until it is back)."""
        now = time.monotonic()
        return (
            now - self._renewed > self.settings.lease_seconds * LEASE_DOUBT
            and now - self._recheck_failed > RENEW_RETRY_SECONDS
        )

    def _shared_recheck(self) -> asyncio.Future[set[int] | None]:
        """The renewal after a doubt, one for the lanes and the renewer alike: the lanes send nothing before it
        (a tester's worker, frozen 12 s past its 6 s leases, sent a cancelled refresh's purges and warms as it
        resumed, recorded as never sent; and claims other workers had taken over)."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self._recheck_leases())
        return asyncio.shield(self._recheck)

    async def _recheck_leases(self) -> set[int] | None:
        started = time.monotonic()
        held = await self._renewed_leases(mark=False)
        if held is None:
            self._recheck_failed = time.monotonic()
            return None
        await self._look_for_cancels({claim.task_id for claim in self._in_hand.values()})
        self._renewed = max(self._renewed, started)  # only now: a lane would send a cancelled task's claim
        return held


_REDONE = {  # what _rewarm_node's count is of (a tester's log called a move's purges "warms")
    False: ("warm of the tasks still running is", "warms of the tasks still running are"),
    True: ("warm or purge of the tasks still running is", "warms and purges of the tasks still running are"),
}


def moved_note(node: str) -> str:
    """The error of an item done again because a reload moved its node to another address after it had ended
    (its claim is a warm done again: `rewarm`, not counted as finished twice)."""
    return f"{WARMED_AGAIN} a reload moved {node} to another address, which holds none of what it warmed"


def sent_again(node: str) -> str:
    """The error of an item sent again because a reload moved its node while it was under way or its outcome
    unwritten: not yet ended, so not `warmed again:` (its success at the new address is its first, counted)."""
    return f"to be sent again: a reload moved {node} to another address while this was under way"


def _has_varnish(config: Config) -> bool:
    """Whether the fleet has a Varnish node, whose warms after a purge are checked (Engine._purged_at)."""
    return any(node.kind is NodeKind.VARNISH for node in config.nodes)


def _unsent(claim: Claim, why: str | None = None) -> ItemOutcome:
    """The outcome of a claim not sent: its task was cancelled (`why`), or its node is no longer configured."""
    return ItemOutcome(claim.item_id, False, claim.attempts, error=why or f"node {claim.node!r} is not configured")
