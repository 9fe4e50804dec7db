"""Prometheus metrics of one process, in a registry of its own (no global state).

edgewarm_fetches_total{node,action,outcome}   items worked: succeeded | retried | failed | waiting (node held down);
                                              rewarmed | rewarm_failed: a warm done again that ended (its node
                                              back after a hold, or moved by a reload: its item had ended once)
edgewarm_fetch_seconds{node}                  time an item's requests to a node took (its warm, and the verify GET
                                              if any), body included; none for an item that sent no request
                                              (shared from another's warm, or its node held down)
edgewarm_fetched_bytes_total{node}            body bytes read from nodes (a verify GET's not counted)
edgewarm_retries_total{node}                  outcomes that scheduled another attempt
edgewarm_items_finished_total{state}          items this process worked to their end: succeeded | failed (items the
                                              store ends unsent, a failed earlier stage or a cancel, are counted in
                                              their tasks only; a warm done again is not another end)
edgewarm_tasks_submitted_total{kind}          tasks accepted by this process's API
edgewarm_tasks_finished_total{status}         tasks that ended, by JD status (0 succeeded, 2 failed, cancelled too)
edgewarm_task_duration_seconds                submit to end, for tasks that ended
edgewarm_queue_depth                          items pending or running in the store (at scrape, a worker's every
                                              5 s; those waiting for their shields not included); NaN when the
                                              store did not answer the count
edgewarm_store_up                             1 when the store answered the last count of the queue, else 0
edgewarm_items_in_flight                      fetches running in this process
edgewarm_node_held_down{node}                 1 while the engine holds the node down (connections failed in a row)
edgewarm_webhooks_total{outcome}              webhook deliveries: delivered | retried | failed
edgewarm_credentials_refused_total{reason}    API calls refused for their credentials: no_username | no_signature |
                                              unknown_user | wrong_signature
edgewarm_submissions_refused_total{reason}    a known user's prefetches and refreshes refused: quota | bad_url |
                                              domain_not_yours | duplicate_urls | too_many_urls | other
edgewarm_api_waits_open                       long-polls (/v1/tasks/{id}/wait) open
edgewarm_config_last_reload_successful        0 after a SIGHUP whose config file was refused (the running one kept)
edgewarm_config_last_reload_success_timestamp_seconds   when the config in use was taken (start, or a reload)
process_*                                     the process's CPU, memory, open files and start time
edgewarm_fetch_process_*                      the same of its fetch process (`[engine] fetch_process = true`)

Every series of a fixed label set (and, in an engine's process, every configured node's) is there from the start,
at 0: a rate or increase() over the first failure after a start sees it.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .errors import CREDENTIAL_REFUSALS, SUBMISSION_REFUSAL_REASONS
from .listening import family_of, ipv6_alone
from .logs import log_task_ended
from .models import ItemAction, Task, TaskKind, TaskStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BUCKET_LABELS = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")  # as prometheus_client writes `le`
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
ITEM_VERDICTS = ("succeeded", "retried", "failed", "waiting", "rewarmed", "rewarm_failed")  # ItemTally.observe's
ITEM_STATES = ("succeeded", "failed")  # edgewarm_items_finished_total's
_NO_LATENCY = (0.0,) * (len(LATENCY_BUCKETS) + 2)
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.items = ItemTally()
        r.register(self.items)
        self.tasks_submitted = Counter("edgewarm_tasks_submitted", "Tasks accepted", ["kind"], registry=r)
        self.tasks_finished = Counter("edgewarm_tasks_finished", "Tasks that ended", ["status"], registry=r)
        self.task_seconds = Histogram(
            "edgewarm_task_duration_seconds", "Submit to end", buckets=TASK_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("edgewarm_queue_depth", "Items pending or running in the store", registry=r)
        self.store_up = Gauge("edgewarm_store_up", "1 when the store answered the last count of the queue", registry=r)
        self.in_flight = Gauge("edgewarm_items_in_flight", "Fetches running in this process", registry=r)
        self.webhooks = Counter("edgewarm_webhooks", "Webhook deliveries", ["outcome"], registry=r)
        self.waits_open = Gauge("edgewarm_api_waits_open", "Long-polls (/v1/tasks/{id}/wait) open", registry=r)
        self.credentials_refused = Counter(
            "edgewarm_credentials_refused", "API calls refused for their credentials", ["reason"], registry=r
        )
        self.submissions_refused = Counter(
            "edgewarm_submissions_refused", "A known user's submissions refused", ["reason"], registry=r
        )
        # As Prometheus's own config_last_reload_successful: a refused reload is seen without reading the log (a
        # reload tester's mistyped file left /readyz and /metrics as they were).
        self.config_reload_ok = Gauge(
            "edgewarm_config_last_reload_successful",
            "0 when the last reload (SIGHUP) of the config file was refused (the running config kept), else 1",
            registry=r,
        )
        self.config_loaded_at = Gauge(
            "edgewarm_config_last_reload_success_timestamp_seconds",
            "When the config in use was taken: at the start, or by the last reload taken",
            registry=r,
        )
        self.config_taken(True)
        ProcessCollector(registry=r)
        # The fetch process's own (`[engine] fetch_process`), as `edgewarm_fetch_process_…`: its PID while it
        # runs (the runtime tells), none otherwise. /metrics told of the parent alone: 33 open files while the
        # child, which makes the requests, held 269 (a tester's).
        self.fetch_process_pid: Callable[[], int | None] = lambda: None
        ProcessCollector(namespace="edgewarm_fetch", pid=lambda: self.fetch_process_pid() or "none", registry=r)
        for counter, values in (
            (self.tasks_submitted, [kind.value for kind in TaskKind]),
            (self.tasks_finished, [str(int(TaskStatus.SUCCEEDED)), str(int(TaskStatus.FAILED))]),
            (self.webhooks, list(WEBHOOK_OUTCOMES)),
            (self.credentials_refused, list(CREDENTIAL_REFUSALS.values())),
            (self.submissions_refused, list(SUBMISSION_REFUSAL_REASONS)),
        ):
            for value in values:
                counter.labels(value)

    def config_taken(self, taken: bool) -> None:
        """A reload of the config file was taken (or the config read at the start), or refused."""
        self.config_reload_ok.set(1 if taken else 0)
        if taken:
            self.config_loaded_at.set_to_current_time()

    def queue_counted(self, depth: int | None) -> None:
        """The store's queue depth, or None when the store did not answer: then the depth is unknown (NaN),
        not the last one counted, and `edgewarm_store_up` says why."""
        self.queue_depth.set(float("nan") if depth is None else depth)
        self.store_up.set(0 if depth is None else 1)

    def task_ended(self, task: Task, log: logging.Logger) -> None:
        """`task` ended (by its last outcome, or cancelled): counted, and its one line written to `log`."""
        self.tasks_finished.labels(str(int(task.status))).inc()
        self.task_seconds.observe(task.seconds or 0.0)
        log_task_ended(log, task)

    def watch_nodes(self, held_down: Callable[[], dict[str, bool]]) -> None:
        """Report `edgewarm_node_held_down` from `held_down()`: each configured node's name, and whether the
        engine holds it down now (engine/node_health.py). Read at each scrape; its nodes' item series are
        reported from the start (at 0)."""
        self.registry.register(_NodesHeldDown(held_down))
        self.items.nodes = lambda: list(held_down())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NodesHeldDown(Collector):
    def __init__(self, held_down: Callable[[], dict[str, bool]]) -> None:
        self._held_down = held_down

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "edgewarm_node_held_down", "1 while the node is held down: its connections failed in a row", labels=["node"]
        )
        for name, down in self._held_down().items():
            gauge.add_metric([name], 1.0 if down else 0.0)
        yield gauge


class ItemTally(Collector):
    """The per-item metrics, counted in plain numbers and turned into Prometheus families when scraped.

    `observe` is on the path of every fetch: a labelled prometheus_client child takes a lock for every
    increment, and an item touches five of them. Here it is a dict lookup and a few additions on the event
    loop's thread; a scrape from another thread reads a copy (at worst one item behind).
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], list[int]] = {}  # (node, action, verdict) -> [count, bytes]
        self._latency: dict[str, list[float]] = {}  # node -> per-bucket counts (+Inf last), then the sum
        self.nodes: Callable[[], list[str]] = list  # the configured nodes, whose series start at 0 (watch_nodes)

    def observe(self, node: str, action: str, verdict: str, seconds: float | None, size: int) -> None:
        """One worked item: `verdict` is succeeded, retried, failed, waiting (its node held down: no attempt
        spent), or rewarmed or rewarm_failed (a warm done again ended: not another item finished); `seconds`
        its requests took, None when it made none (its outcome was shared from another item's warm of the same
        URL); `size` the body bytes read."""
        counts = self._items.get((node, action, verdict))
        if counts is None:
            counts = self._items[(node, action, verdict)] = [0, 0]
        counts[0] += 1
        counts[1] += size
        if seconds is None:
            return
        latency = self._latency.get(node)
        if latency is None:
            latency = self._latency[node] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        seen = dict.fromkeys((node, action.value, verdict) for node in self.nodes() for action in ItemAction
                             for verdict in ITEM_VERDICTS)  # fmt: skip
        counted = dict(self._items)  # a copy: the event loop's thread may add a key meanwhile
        items = [(key, list(counted.get(key, (0, 0)))) for key in {**seen, **counted}]
        timed = dict(self._latency)
        latency = [(node, list(timed.get(node, _NO_LATENCY))) for node in {**dict.fromkeys(self.nodes()), **timed}]
        fetches = CounterMetricFamily(
            "edgewarm_fetches", "Items worked on nodes, by outcome", labels=["node", "action", "outcome"]
        )
        fetched = CounterMetricFamily("edgewarm_fetched_bytes", "Body bytes read from nodes", labels=["node"])
        retries = CounterMetricFamily("edgewarm_retries", "Outcomes that scheduled another attempt", labels=["node"])
        finished = CounterMetricFamily("edgewarm_items_finished", "Items finished", labels=["state"])
        by_node: dict[str, int] = {}
        retried: dict[str, int] = {}
        by_state: dict[str, int] = dict.fromkeys(ITEM_STATES, 0)
        for (node, action, verdict), (count, size) in items:
            fetches.add_metric([node, action, verdict], count)
            by_node[node] = by_node.get(node, 0) + size
            retried.setdefault(node, 0)
            if verdict == "retried":
                retried[node] += count
            elif verdict in by_state:
                by_state[verdict] += count
        for node, size in by_node.items():
            fetched.add_metric([node], size)
        for node, count in retried.items():
            retries.add_metric([node], count)
        for state, count in by_state.items():
            finished.add_metric([state], count)
        seconds = HistogramMetricFamily(
            "edgewarm_fetch_seconds", "Time an item's requests to a node took, body included", labels=["node"]
        )
        for node, values in latency:
            cumulative, buckets = 0.0, []
            for le, share in zip(_BUCKET_LABELS, values, strict=False):
                cumulative += share
                buckets.append((le, cumulative))
            seconds.add_metric([node], buckets, values[-1])
        yield from (fetches, seconds, fetched, retries, finished)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line on stderr for each scrape."""


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Serve `registry` at http://HOST:PORT/metrics on a thread of its own (a worker's `metrics_listen`): other
    paths are 404 (prometheus_client's own server answers every path with the metrics). Stop it with
    `shutdown()` and `server_close()`. OSError when the address cannot be listened on."""
    app = make_wsgi_app(registry)

    def metrics_only(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)  # type: ignore[no-any-return]
        # A probe's HEAD (prometheus_client answers it 405): the GET's status and headers, no body.
        said: list[Any] = []
        body = b"".join(app({**environ, "REQUEST_METHOD": "GET"}, lambda *args: said.extend(args)))
        status, headers = said[0], [(k, v) for k, v in said[1] if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return []

    class Server(ThreadingWSGIServer):
        address_family = family_of(host)

        def server_bind(self) -> None:
            ipv6_alone(self.socket)
            super().server_bind()

    server: WSGIServer = make_server(host, port, metrics_only, Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="edgewarm-metrics", daemon=True).start()
    return server
