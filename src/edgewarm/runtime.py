"""Run edgewarm: the API, the engine, or both in one process, with a graceful shutdown.

The first SIGINT/SIGTERM stops taking work: the API closes its socket and finishes open requests, the engine
stops claiming and gives in-flight fetches `grace_seconds`. A second signal exits at once; unfinished leases
then expire and the items run again, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from . import hangups
from .api import create_app
from .api.middleware import BodyReads
from .api.protocol import bounded_protocol
from .config import (
    FETCHER_KEYS,
    CaFiles,
    Config,
    Node,
    ca_file_cautions,
    ca_files,
    file_cautions,
    load_config,
    reload_changes,
    reload_refusal,
    restart_only_changes,
)
from .engine import Engine, Fetcher, NodeHealth, ProcessFetcher, open_fetcher
from .errors import ConfigError, EdgewarmError, StoreDamaged, StoreError, described
from .listening import family_of
from .logs import HTTP_DIGESTS, RepeatedFailure, counted, item_count
from .metrics import Metrics, serve_metrics
from .retention import first_of, run_retention
from .service import Service
from .store import TaskStore, make_folder_of, open_store, redacted, sqlite_path, store_cautions
from .tuning import api_connections_room, open_files_room
from .urls import TargetUrl
from .webhooks import WebhookDeliverer

log = logging.getLogger("edgewarm")

LISTEN_BACKLOG = 2048  # uvicorn's own


class ListenError(EdgewarmError):
    """The API's address, or a worker's metrics address, cannot be listened on (in use, not this machine's)."""


def _cannot_listen(address: str, exc: OSError) -> ListenError:
    """The one wording for an address that cannot be listened on, the API's or a worker's metrics'."""
    return ListenError(f"cannot listen on {address}: {exc.strerror or exc}")


def listen_on(config: Config) -> socket.socket:
    """A socket listening on the API's address (SO_REUSEADDR, as uvicorn binds), or ListenError saying why not."""
    host = config.listen_host
    try:
        # (create_server makes an IPv6 socket IPv6 alone, as listening.ipv6_alone)
        return socket.create_server((host, config.listen_port), family=family_of(host), backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise _cannot_listen(config.listen, exc) from None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.contextmanager
def sole_engine_lock(store_url: str) -> Generator[bool, None, None]:
    """For a SQLite file: hold an exclusive lock so that only one engine works on it.

    Yields True when this process is known to be the only engine, so leases left by a dead one can be
    taken back at once instead of waiting for them to expire.
    """
    path = sqlite_path(store_url)
    if path is None:
        yield False
        return
    if path == ":memory:":
        yield True
        return
    # Named after the file itself: a second name for it (a symbolic link left where it was moved from, a folder
    # linked elsewhere) must meet the same lock. The database file is locked too (flock: apart from SQLite's own
    # fcntl locks on Linux; closed after the store): the lock file can be removed under its holder (a tester
    # tidying a "stale lock" started a second engine on the store), the database not while it is in use.
    real = os.path.realpath(path)
    make_folder_of(real)
    with _flocked(real + ".engine.lock", "the engine's lock", path), _flocked(real, "the database", path):
        yield True


@contextlib.contextmanager
def _flocked(path: str, what: str, store: str) -> Generator[None, None, None]:
    """Hold an exclusive flock of the file at `path` (made if missing, for its owner only); StoreError saying
    another engine works on `store` when another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another edgewarm engine is already working on {store}: stop it first (SQLite takes one engine; "
                "`edgewarm api` may run beside it, or use PostgreSQL for several workers)"
            ) from None
        yield
    finally:
        os.close(fd)


async def run(config: Config, *, api: bool = True, engine: bool = True, config_path: str | None = None) -> bool:
    """Run until a signal; `api` and `engine` choose the parts (`serve` runs both). True when the stop was clean;
    False when it left outcomes unwritten or items not handed back (its last line says so): the command exits 1,
    for a supervisor to tell it from a clean stop.

    SIGHUP reloads `config_path`: users, limits, nodes and engine settings change without dropping work
    (the fetcher's own settings, config.FETCHER_KEYS, through a new fetcher: the old one finishes the requests
    it has and is closed); `listen` and `store` need a restart. A config that does not load is logged and the
    old one kept.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = 0
    live = _Live(config)

    def on_hangup() -> None:
        if config_path is None:
            return
        if stopping.is_set():  # a reload would open a fetcher, or fail a removed node's items, during the stop
            log.info("SIGHUP ignored: the service is stopping")
            return
        try:
            fresh = load_config(config_path)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running config: %s", exc)
            live.metrics.config_taken(False)
            return
        if (refusal := reload_refusal(live.config, fresh)) is not None:
            log.error("SIGHUP: keeping the running config: %s", refusal)
            live.metrics.config_taken(False)
            return
        if changed := restart_only_changes(config, fresh):  # against the start's: those are still in use
            log.warning("SIGHUP: %s change only on restart (the values at start stay in use)", ", ".join(changed))
        gone = [node.name for node in live.config.nodes if fresh.node(node.name) is None]
        left = [user.name for user in live.config.users if fresh.user(user.name) is None]
        changes = reload_changes(live.config, fresh)
        live.apply(fresh)
        live.metrics.config_taken(True)
        log.info(
            "SIGHUP: config reloaded (%s, %s)%s",
            counted(len(fresh.users), "user"),
            counted(len(fresh.nodes), "node"),
            f": {changes}" if changes else "",
        )
        if gone:  # a node renamed is one removed and one added
            shared = (  # (a tester's worker failed new tasks' items of the node the API processes still gave them)
                "; on a shared store, those this process claims, of tasks submitted later too while other "
                "processes still have the node: give every process the same nodes"
                if sqlite_path(config.store) is None
                else ""
            )
            log.warning("SIGHUP: nodes no longer configured, their open items fail%s: %s", shared, ", ".join(gone))
        if left:
            log.warning(
                "SIGHUP: users no longer configured (their open tasks keep running, their webhooks are not sent): %s",
                ", ".join(left),
            )
        _log_cautions(fresh, engine, config_path)

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info(
                "received %s: finishing in-flight work (send it again to exit at once)", signal.Signals(signum).name
            )
            stopping.set()
        else:
            log.warning("second signal: exiting now; unfinished items run again after restart")
            if (child := live.fetch_process_pid()) is not None:
                with contextlib.suppress(ProcessLookupError):  # one stopped would outlive us (it ends at its
                    os.kill(child, signal.SIGKILL)  # stdin's end, which it cannot see stopped: a tester's)
            os._exit(1)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if hangups.take():  # asked before the handler was there: the file may have changed since it was read
        on_hangup()
    try:
        # A database an older edgewarm left elsewhere is refused before the engine's lock file is made beside it.
        unopened = open_store(config.store)
        # Bound first: an address in use is one error before anything starts, and before "running" is logged.
        listening = listen_on(config) if api else None
        with (
            contextlib.closing(listening) if listening else contextlib.nullcontext(),
            sole_engine_lock(config.store) if engine else contextlib.nullcontext(False) as sole,
        ):
            async with unopened as store:
                return await _run_parts(
                    live,
                    config,
                    store,
                    api=api,
                    engine=engine,
                    sole=bool(sole),
                    stopping=stopping,
                    listening=listening,
                    config_path=config_path,
                )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        hangups.ignore()  # removed, SIGHUP's default action would end the process (exit -1 after a clean stop)


class _Live:
    """The parts that follow a config reload."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.service: Service | None = None
        self.engine: Engine | None = None
        self.fetcher: Fetcher | ProcessFetcher | None = None  # the engine's, open
        self.fetcher_settings = config.engine  # what `fetcher` was opened with
        self.fetcher_cas = ca_files()  # the CA files as they were when `fetcher` was opened
        # The nodes held down, whichever fetcher asks them; a cooldown ends by node_down_wait's end.
        self.health = NodeHealth(
            patience=lambda: self.config.engine.node_down_wait, attempts=lambda: self.config.engine.max_attempts
        )
        self.deliverer: WebhookDeliverer | None = None
        self.metrics = Metrics()  # this process's, served by the API or on metrics_listen
        self.reloaded = asyncio.Event()  # retention takes its new settings at once
        self.swaps: set[asyncio.Task[None]] = set()
        self._swapping = asyncio.Lock()

    def fetch_process_pid(self) -> int | None:
        """The PID of the engine's fetch process (`[engine] fetch_process`), while one runs."""
        return self.fetcher.pid if isinstance(self.fetcher, ProcessFetcher) else None

    def apply(self, config: Config) -> None:
        self.config = config
        self.health.reconfigured(config.nodes)
        if self.service is not None:
            self.service.config = config
        if self.engine is not None:
            self.engine.reconfigure(config)
            if self._fetcher_changes(ca_files()):
                swap = asyncio.create_task(self._swap_fetcher(), name="edgewarm-fetcher-swap")
                self.swaps.add(swap)
                swap.add_done_callback(self.swaps.discard)
        if self.deliverer is not None:
            self.deliverer.config = config
        self.reloaded.set()

    def _fetcher_changes(self, cas: CaFiles) -> list[str]:
        """What a new fetcher would take that the one open lacks: [engine] settings, and the CA files (`cas`, as
        they are now: a TLS tester's CA added to SSL_CERT_FILE was read only at a restart, or by a reload changing
        a setting)."""
        changed = [k for k in FETCHER_KEYS if getattr(self.config.engine, k) != getattr(self.fetcher_settings, k)]
        return changed + ([CA_FILES] if cas != self.fetcher_cas else [])

    async def _swap_fetcher(self) -> None:
        """A fetcher with the latest settings takes the next requests; the old one closes once it has none."""
        assert self.engine is not None
        async with self._swapping:  # one at a time, each to the latest config
            cas, settings = ca_files(), self.config.engine  # looked at once: what the new fetcher is said to take
            changed = self._fetcher_changes(cas)
            if not changed:
                return
            fresh = open_fetcher(settings, self.health)
            try:
                await fresh.__aenter__()
            except Exception as exc:
                log.error("SIGHUP: the fetcher for %s did not start; the old one stays: %s", _said(changed), exc)
                return
            old, self.fetcher, self.fetcher_settings, self.fetcher_cas = self.fetcher, fresh, settings, cas
            released = self.engine.replace_fetcher(fresh)
        verb = "apply" if len(changed) > 1 or changed == [CA_FILES] else "applies"
        log.info("SIGHUP: %s %s to new requests; the old fetcher finishes its own", _said(changed), verb)
        await released
        if old is not None:
            await old.__aexit__(None, None, None)


CA_FILES = "the CA files"  # what _fetcher_changes names for SSL_CERT_FILE's (or the system's) CAs changed


def _said(changed: list[str]) -> str:
    """The fetcher's changes as a reload's line names them: `[engine] user_agent, the CA files`."""
    settings = [k for k in changed if k != CA_FILES]
    return ", ".join(
        [*([f"[engine] {', '.join(settings)}"] if settings else []), *([CA_FILES] if CA_FILES in changed else [])]
    )


def _log_cautions(config: Config, engine: bool, config_path: str | None) -> None:
    """The settings that are valid but keep a feature from working or are unsafe (at start and on a reload)."""
    for caution in [*(file_cautions(config_path) if config_path else []), *config.cautions(), *ca_file_cautions()]:
        log.warning("%s", caution)
    if engine and (room := open_files_room(config.engine.concurrency)) is not None:
        log.warning("%s", room)


ASK_RESTED_EVERY = 1.0  # how often nodes held down are looked at for a cooldown that ended


async def _ask_rested_nodes(live: _Live, stopping: asyncio.Event) -> None:
    """Ask each node held down whose cooldown is over (`HEAD /`), though no item of it is due: the answer, or
    the failure, tells whether it is up again (NodeHealth), so that `edgewarm_node_held_down` and the next task's
    items do not go on taking it for down until traffic for it happens to come, until `stopping`."""
    while not stopping.is_set():
        fetcher, health = live.fetcher, live.health
        rested = [n for n in live.config.nodes if health.is_down(n) and health.resting(n) is None]
        if fetcher is not None and rested:
            # Its certificate unchecked: it names the sites, not the node's own address, and a refusal was logged as
            # the node's certificate failing (a TLS tester's); whether the node answers is what is asked.
            asking: asyncio.Future[Any] = asyncio.gather(  # (a fetcher replaced by a reload may refuse: no matter)
                *(fetcher.request("HEAD", n.model_copy(update={"tls_verify": False}), _node_root(n)) for n in rested),
                return_exceptions=True,
            )
            stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
            await asyncio.wait([asking, stop], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not asking.done():  # stopping: what the answers would tell no longer matters
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asking
        await first_of(ASK_RESTED_EVERY, stopping)


def _node_root(node: Node) -> TargetUrl:
    """`/` of the node itself (not a submitted URL: its host may be an address): what a node held down is asked."""
    parts = urlsplit(node.url)
    host = parts.hostname or ""
    return TargetUrl(f"{node.url}/", parts.scheme, host, parts.netloc, "/")


QUEUE_DEPTH_EVERY = 5.0  # a worker's /metrics (no API to ask the store at each scrape) counts this often


async def _count_the_queue(store: TaskStore, metrics: Metrics, stopping: asyncio.Event) -> None:
    """Keep `edgewarm_queue_depth` of a process without the API up to date, until `stopping`."""
    counting = RepeatedFailure(log, "counting the queue for /metrics")
    while not stopping.is_set():
        try:
            metrics.queue_counted(await asyncio.wait_for(store.queue_depth(), QUEUE_DEPTH_EVERY))
            counting.worked()
        except (TimeoutError, StoreError) as exc:
            metrics.queue_counted(None)
            counting.failed(exc if isinstance(exc, StoreError) else described(exc))
        await first_of(QUEUE_DEPTH_EVERY, stopping)


TAKE_BACK_SECONDS = 60.0  # a start tries this long to take back the items a previous process left leased


async def _take_back(store: TaskStore, metrics: Metrics, store_url: str, stopping: asyncio.Event) -> bool:
    """Take back the items a previous process left leased (release_all_leases), tried again as the engine tries
    its writes again while the store does not take them (another process holding the SQLite file's write lock:
    a start ended at once on "sqlite: database is locked"), for TAKE_BACK_SECONDS; then StoreError. False when
    a stop came first."""
    deadline, delay = time.monotonic() + TAKE_BACK_SECONDS, 0.5
    said: str | None = None  # the failure last logged: a line when it changes, not one each try (a tester's 15)
    while True:
        try:
            released = await store.release_all_leases(time.time())
            break
        except StoreDamaged:
            raise  # waiting mends no damaged file (it was tried again for 60 s, the API not listening)
        except StoreError as exc:
            if stopping.is_set():
                return False
            if time.monotonic() + delay > deadline:
                raise StoreError(
                    f"taking back the items left running by a previous process failed for {TAKE_BACK_SECONDS:g} s "
                    f"on {redacted(store_url)}: {exc}"
                ) from exc
            if str(exc) != said:
                said = str(exc)
                log.warning(
                    "taking back the items left running by a previous process failed, tried again for up to %g s: %s",
                    TAKE_BACK_SECONDS,
                    exc,
                )
            await first_of(delay, stopping)
            delay = min(delay * 2, 5.0)
            if stopping.is_set():
                return False
    if released.items:
        log.info("took back %s left running by a previous process", item_count(released.items))
    for ended in released.ended:  # cancelled, its last items under way among those taken back
        metrics.task_ended(ended, log)
    return True


async def _run_parts(
    live: _Live,
    config: Config,
    store: TaskStore,
    *,
    api: bool,
    engine: bool,
    sole: bool,
    stopping: asyncio.Event,
    listening: socket.socket | None,
    config_path: str | None,
) -> bool:
    """The service's parts, from their start to their stop: whether the stop was clean (run's answer). `config`:
    the file as read at start, whose start-only settings are used (not a reload's before this: a reviewer's), the
    reloadable ones given to the parts once made (below)."""
    metrics = live.metrics
    metrics.fetch_process_pid = live.fetch_process_pid
    async with contextlib.AsyncExitStack() as stack:
        worker: Engine | None = None
        tasks: list[asyncio.Task[None]] = []
        if api and config.metrics_listen:
            log.warning("metrics_listen is for `edgewarm worker`: this process serves /metrics on `listen`")
        if engine:
            fetcher = live.fetcher = open_fetcher(config.engine, live.health)
            live.fetcher_settings = config.engine  # a reload before this one may have changed them
            live.fetcher_cas = ca_files()
            await fetcher.__aenter__()
            stack.push_async_callback(_close_fetchers, live)
            worker = live.engine = Engine(config, store, fetcher, metrics=metrics, sole=sole)
            # Any part that fails to start stops those started before the store closes under them.
            stack.push_async_callback(_stop_parts, worker, tasks, stopping)
            if config.metrics_listen and not api:  # an address in use is an error before anything starts
                host, _, port = config.metrics_listen.rpartition(":")
                try:
                    metrics_server = serve_metrics(host.strip("[]"), int(port), metrics.registry)
                except OSError as exc:
                    raise _cannot_listen(config.metrics_listen, exc) from None
                stack.callback(metrics_server.server_close)
                stack.callback(metrics_server.shutdown)
                log.info("metrics on http://%s/metrics", config.metrics_listen)
                metrics.queue_counted(None)  # not counted until the take-back is done (it said 0: a re-tester's)
        # The API serves from here, while the engine takes back a previous process's items (up to a minute
        # behind another process's SQLite lock: /healthz and /readyz went unanswered, an ops tester's).
        server: _Server | None = None
        body_reads = BodyReads()  # the requests whose bodies are still arriving: answered 503 at a stop
        if api:
            service = live.service = Service(
                config,
                store,
                on_submit=worker.wake if worker else None,
                on_cancel=worker.cancelled if worker else None,
                metrics=metrics,
                stopping=stopping,
            )
            if engine and sole:
                service.starting = "starting: taking back the items a previous process left running"
            server = _Server(
                uvicorn.Config(
                    create_app(service, body_reads),
                    host=config.listen_host,
                    port=config.listen_port,
                    log_level="warning",
                    log_config=None,  # its records go to the root logger: one JSON object per line, as ours
                    # A head's size, a request's time and the connections open bounded.
                    http=bounded_protocol(
                        config.api.request_timeout,
                        lambda: api_connections_room(live.config.engine.concurrency if engine else 0),
                    ),
                    # An idle connection kept as long as a silent one may wait (uvicorn's 5 s made pooled clients
                    # post on connections it had just closed).
                    timeout_keep_alive=math.ceil(config.api.request_timeout),
                    access_log=False,
                    lifespan="off",
                    # Open requests (a long poll) get the grace too; 0 is none (`or None` made it unlimited).
                    timeout_graceful_shutdown=math.ceil(config.engine.grace_seconds),
                )
            )
            tasks.append(
                asyncio.create_task(server.serve(sockets=[listening] if listening else None), name="edgewarm-api")
            )
            # Its end asked for before the parts' stop awaits it (a start that fails, or a stop, below), and at
            # once at a signal during the start (it answered "starting" while a take-back's write waited: a
            # re-tester's).
            stack.callback(setattr, server, "should_exit", True)
            ending = asyncio.create_task(_serving_ends(stopping, server, body_reads), name="edgewarm-api-stop")
            stack.callback(ending.cancel)
        if engine:
            assert worker is not None
            # Before the tasks that use the store start: a take-back that fails ends the start, and they would
            # go on with a store closing under them ("retention round failed: the store is not open").
            if sole and not await _take_back(store, metrics, config.store, stopping):
                log.info("edgewarm stopped before its engine started: the store took no writes meanwhile")
                return True
            if live.service is not None:
                live.service.starting = None
            if not sole and config.engine.dedupe_seconds:
                log.info("dedupe_seconds is not applied: other engines on this store may purge what this one warmed")
            metrics.watch_nodes(lambda: {node.name: live.health.is_down(node) for node in live.config.nodes})
            tasks.append(asyncio.create_task(_ask_rested_nodes(live, stopping), name="edgewarm-node-probes"))
            deliverer = WebhookDeliverer(config, store, metrics)
            worker.on_task_finished = lambda task: deliverer.wake() if task.callback_url else None
            worker.on_bring_forward = deliverer.bring_forward
            live.deliverer = deliverer
            tasks.append(asyncio.create_task(deliverer.run(stopping), name="edgewarm-webhooks"))
            tasks.append(
                asyncio.create_task(
                    run_retention(
                        store,
                        lambda: live.config.retention,
                        stopping,
                        reloaded=live.reloaded,
                        timezone=lambda: live.config.api.timezone,
                    ),
                    name="edgewarm-retention",
                )
            )
            if config.metrics_listen and not api:
                tasks.append(
                    asyncio.create_task(_count_the_queue(store, metrics, stopping), name="edgewarm-queue-depth")
                )
            tasks.append(asyncio.create_task(worker.run(), name="edgewarm-engine"))
        if live.config is not config:  # reloaded while the parts above were made: give them what they missed
            live.apply(live.config)
        # The cautions before the line that says it runs: whoever waits for that line (a supervisor, the tests'
        # ServiceProcess) has them in the log by then (after it, a test read the log between the two: CI's).
        _log_cautions(config, engine, config_path)
        for caution in store_cautions(config.store):  # at start only: the store changes only on a restart
            log.warning("%s", caution)
        parts = " + ".join(p for p, on in (("api", api), ("engine", engine)) if on)
        where = f", listening on {config.listen}" if api else ""
        log.info("edgewarm running: %s on %s%s", parts, redacted(config.store), where)
        stop_wait = asyncio.create_task(stopping.wait(), name="edgewarm-stop-signal")
        done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stopping.set()  # whatever ended first, everything stops (the API by _serving_ends)
        if worker is not None:
            worker.stop()
        stop_wait.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s failed: %r", task.get_name(), result)
                raise result
        # Before the last line (a supervisor reads that one as the stop's word): the fetchers' held failures,
        # and their fetch processes' ends (one stopped was killed 5 s later, after "stopped cleanly": a tester's).
        await _close_fetchers(live)
        if live.service is not None:
            live.service.flush_logs()
            for digest in HTTP_DIGESTS:
                digest.flush()
        if server is not None and not server.started and stop_wait not in done:
            raise StoreError(f"the API could not listen on {config.listen}")
        if worker is not None and (lost := worker.lost):
            log.warning(
                "edgewarm stopped; %s not written and %s not handed back: they run again when their "
                "leases end, or at the next start",
                counted(lost.outcomes, "outcome"),
                item_count(lost.items),
            )
            return False
        log.info("edgewarm stopped cleanly")
        return True


async def _serving_ends(stopping: asyncio.Event, server: _Server, body_reads: BodyReads) -> None:
    """The API stops serving when the process stops, whatever part of its start or run it is in."""
    await stopping.wait()
    server.should_exit = True
    body_reads.stop()


async def _stop_parts(worker: Engine, tasks: list[asyncio.Task[None]], stopping: asyncio.Event) -> None:
    """At the end, the engine's parts stopped (at once when one failed to start: the others ended after the store
    had closed, "retention round failed: the store is not open"); a stop's own end has stopped them already."""
    stopping.set()
    worker.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _close_fetchers(live: _Live) -> None:
    """At the end: the fetchers being replaced close once the stopped engine has left them, then the current
    one. (Bounded: should a replaced one still be held, it is left to the process's exit.)"""
    if live.swaps:
        _, late = await asyncio.wait(live.swaps, timeout=10.0)
        for swap in late:
            swap.cancel()
    if live.fetcher is not None:
        fetcher, live.fetcher = live.fetcher, None  # closed once (at the stop's end, or the exit's)
        await fetcher.__aexit__(None, None, None)
