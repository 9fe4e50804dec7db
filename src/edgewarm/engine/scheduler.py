"""The warming engine: claim due items, fetch them through their nodes, write outcomes back in batches.

Flow: `claim_due_items` leases a batch → one tracked asyncio task per item, each under the per-node and total
caps → outcomes queue → the writer commits them in batches (`record_outcomes`), which releases later stages
(edges after shields) → the dispatcher is woken to claim them. Leases of items in hand are renewed; on
shutdown, in-flight fetches get a grace period, the rest are handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from ..config import Config, Node
from ..errors import StoreError
from ..metrics import Metrics
from ..models import Claim, ItemAction, ItemOutcome
from ..nodes import purge
from ..store import TaskStore
from ..urls import TargetUrl, parse_url
from .fetcher import Fetcher, FetchResult
from .outcome import purge_outcome, warm_outcome

# A directory purge on a node without prefix purge covers at most this many known URLs.
KNOWN_URLS_LIMIT = 100_000

log = logging.getLogger("edgewarm.engine")

Clock = Callable[[], float]


class Engine:
    """Runs until `stop()`; use `await engine.run()` inside an open Fetcher and store."""

    def __init__(
        self,
        config: Config,
        store: TaskStore,
        fetcher: Fetcher,
        *,
        worker_id: str | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.settings = config.engine
        self.store = store
        self.fetcher = fetcher
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._node_slots = {
            n.name: asyncio.Semaphore(n.concurrency or self.settings.per_node_concurrency) for n in config.nodes
        }
        self._fetches: dict[int, asyncio.Task[None]] = {}
        self._leased: set[int] = set()  # claimed and not yet written back
        self._outcomes: asyncio.Queue[ItemOutcome] = asyncio.Queue()
        self.fetched = 0  # fetches made by this engine, for tests
        self.metrics = metrics or Metrics()

    # -- control ----------------------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: nodes, caps and settings apply to the next claims."""
        self.config = config
        self.settings = config.engine
        for node in config.nodes:
            if node.name not in self._node_slots:
                self._node_slots[node.name] = asyncio.Semaphore(node.concurrency or self.settings.per_node_concurrency)
        self.wake()

    def wake(self) -> None:
        """New work may be due (a task was submitted, a stage finished)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; in-flight fetches get `grace_seconds` to finish."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        # Other processes on a shared store (PostgreSQL) announce new work: claim at once, not at the next poll.
        async with self.store.listen_for_work(self.wake):
            await self._run()

    async def _run(self) -> None:
        writer = asyncio.create_task(self._write_outcomes(), name=f"edgewarm-writer-{self.worker_id}")
        renewer = asyncio.create_task(self._renew_leases(), name=f"edgewarm-lease-renewer-{self.worker_id}")
        try:
            await self._dispatch()
            await self._drain()
        finally:
            renewer.cancel()
            await self._outcomes.join()
            writer.cancel()
            await asyncio.gather(writer, renewer, return_exceptions=True)
            if self._leased:
                await self.store.release_leases(self.worker_id, sorted(self._leased), self._clock())
                log.info("released %d unfinished items", len(self._leased))
                self._leased.clear()

    # -- the loops --------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            self._wake.clear()
            free = s.concurrency - len(self._fetches)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = await self.store.claim_due_items(
                        self.worker_id, min(free, s.batch_size), self._clock(), s.lease_seconds
                    )
                except StoreError as exc:
                    log.error("claiming items failed: %s", exc)
            for claim in claims:
                self._leased.add(claim.item_id)
                task = asyncio.create_task(self._work(claim), name=f"edgewarm-item-{claim.item_id}")
                self._fetches[claim.item_id] = task
                task.add_done_callback(self._fetch_done)
            if claims and len(claims) == min(free, s.batch_size):
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=s.poll_interval)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        item_id = int(task.get_name().rsplit("-", 1)[1])
        self._fetches.pop(item_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("item %d crashed: %r", item_id, task.exception())
        self._wake.set()

    async def _drain(self) -> None:
        if not self._fetches:
            return
        pending = set(self._fetches.values())
        log.info("waiting up to %.1fs for %d in-flight fetches", self.settings.grace_seconds, len(pending))
        _done, late = await asyncio.wait(pending, timeout=self.settings.grace_seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _work(self, claim: Claim) -> None:
        s = self.settings
        attempt = claim.attempts + 1
        node = self.config.node(claim.node)
        now = self._clock()
        if node is None:
            outcome = ItemOutcome(
                claim.item_id, False, claim.attempts, error=f"node {claim.node!r} is no longer configured"
            )
        elif claim.attempts >= s.max_attempts:
            outcome = ItemOutcome(
                claim.item_id,
                False,
                claim.attempts,
                error=f"gave up after {claim.attempts} attempts (a worker died holding it)",
            )
        else:
            async with self._slots, self._node_slots[node.name]:
                self.metrics.in_flight.inc()
                started = time.monotonic()
                try:
                    outcome = await self._act(claim, node, attempt)
                except Exception as exc:  # a bug must not strand the item: record it and retry later
                    log.exception("item %d: unexpected error", claim.item_id)
                    outcome = ItemOutcome(
                        claim.item_id,
                        False,
                        attempt,
                        error=f"internal error: {type(exc).__name__}",
                        retry_at=None if attempt >= s.max_attempts else now + s.backoff_max,
                    )
                finally:
                    self.metrics.in_flight.dec()
                self._observe(claim, node, outcome, time.monotonic() - started)
        self._outcomes.put_nowait(outcome)

    def _observe(self, claim: Claim, node: Node, outcome: ItemOutcome, seconds: float) -> None:
        m = self.metrics
        verdict = "succeeded" if outcome.succeeded else ("retried" if outcome.retry_at is not None else "failed")
        m.fetches.labels(node.name, claim.action.value, verdict).inc()
        m.fetch_seconds.labels(node.name).observe(seconds)
        if outcome.bytes:
            m.fetched_bytes.labels(node.name).inc(outcome.bytes)
        if outcome.retry_at is not None:
            m.retries.labels(node.name).inc()
        else:
            m.items_finished.labels("succeeded" if outcome.succeeded else "failed").inc()

    async def _act(self, claim: Claim, node: Node, attempt: int) -> ItemOutcome:
        target = parse_url(claim.url)
        if claim.action is ItemAction.WARM:
            return await self._warm(claim, node, target, attempt)
        try:
            if claim.action is ItemAction.PURGE:
                request = purge.url_purge(node)
                result = await self.fetcher.request(request.method, node, target, request.headers)
                verdict, detail = purge.verdict(request, result.status, result.network_error), None
            else:
                verdict, result, detail = await self._purge_dir(node, target)
        except purge.Unsupported as exc:
            return ItemOutcome(claim.item_id, False, attempt, error=str(exc))
        return purge_outcome(claim.item_id, attempt, verdict, result, self.settings, self._clock(), detail=detail)

    async def _purge_dir(self, node: Node, target: TargetUrl) -> tuple[purge.Verdict, FetchResult, str | None]:
        request = purge.prefix_purge(node, target.path_query)
        if request is not None:
            result = await self.fetcher.request(request.method, node, replace(target, path_query="/"), request.headers)
            return purge.verdict(request, result.status, result.network_error), result, None
        # No prefix purge on this node: purge every URL under the prefix that edgewarm has seen.
        request = purge.url_purge(node)
        known = [u for u in await self.store.known_urls(target.url, KNOWN_URLS_LIMIT) if u != target.url]
        failures: list[tuple[purge.Verdict, FetchResult]] = []
        for start in range(0, len(known), 16):
            chunk = [parse_url(u) for u in known[start : start + 16]]
            results = await asyncio.gather(
                *(self.fetcher.request(request.method, node, t, request.headers) for t in chunk)
            )
            for result in results:
                verdict = purge.verdict(request, result.status, result.network_error)
                if verdict not in (purge.Verdict.PURGED, purge.Verdict.NOT_CACHED):
                    failures.append((verdict, result))
        summary = f"purged {len(known) - len(failures)} of {len(known)} known URLs under the prefix one by one"
        if not failures:
            return purge.Verdict.PURGED, FetchResult(200), summary
        retry = [f for f in failures if f[0] is purge.Verdict.RETRY]
        return (retry or failures)[0][0], (retry or failures)[0][1], summary

    async def _warm(self, claim: Claim, node: Node, target: TargetUrl, attempt: int) -> ItemOutcome:
        result = await self.fetcher.request("GET", node, target)
        self.fetched += 1
        verified = None
        if (
            self.settings.verify
            and result.status is not None
            and 200 <= result.status < 300
            and not (result.cache_state and result.cache_state.cached)
        ):
            verified = await self.fetcher.request("GET", node, target)
        return warm_outcome(claim.item_id, attempt, result, self.settings, self._clock(), verified=verified)

    async def _write_outcomes(self) -> None:
        s = self.settings
        while True:
            batch = [await self._outcomes.get()]
            deadline = time.monotonic() + s.flush_interval
            while len(batch) < s.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._outcomes.get(), remaining))
                except TimeoutError:
                    break
            await self._flush(batch)
            for _ in batch:
                self._outcomes.task_done()

    async def _flush(self, batch: list[ItemOutcome]) -> None:
        delay = 0.1
        while True:
            try:
                await self.store.record_outcomes(self.worker_id, batch, self._clock())
                break
            except StoreError as exc:
                # Keep the outcomes and try again: if this process dies meanwhile, the leases expire and the
                # items run again, so nothing is lost either way.
                log.error("writing %d outcomes failed, retrying in %.1fs: %s", len(batch), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for outcome in batch:
            self._leased.discard(outcome.item_id)
        self._wake.set()

    async def _renew_leases(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.lease_seconds / 3)
            if self._leased:
                try:
                    await self.store.renew_leases(self.worker_id, sorted(self._leased), self._clock() + s.lease_seconds)
                except StoreError as exc:
                    log.error("renewing leases failed: %s", exc)
