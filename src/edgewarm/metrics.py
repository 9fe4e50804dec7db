"""Prometheus metrics of one process, in a registry of its own (no global state).

edgewarm_fetches_total{node,action,outcome}   requests sent to nodes: succeeded | retried | failed
edgewarm_fetch_seconds{node}                  latency of one request to a node, body included
edgewarm_fetched_bytes_total{node}            body bytes read from nodes
edgewarm_retries_total{node}                  outcomes that scheduled another attempt
edgewarm_items_finished_total{state}          items this process finished: succeeded | failed
edgewarm_tasks_submitted_total{kind}          tasks accepted by this process's API
edgewarm_tasks_finished_total{status}         tasks that ended, by JD status (0 succeeded, 2 failed)
edgewarm_task_duration_seconds                submit to end, for tasks that ended
edgewarm_queue_depth                          items pending or running in the store (at scrape)
edgewarm_items_in_flight                      fetches running in this process
edgewarm_webhooks_total{outcome}              webhook deliveries: delivered | retried | failed
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fetches = Counter("edgewarm_fetches", "Requests sent to nodes", ["node", "action", "outcome"], registry=r)
        self.fetch_seconds = Histogram(
            "edgewarm_fetch_seconds", "Latency of one request to a node", ["node"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.fetched_bytes = Counter("edgewarm_fetched_bytes", "Body bytes read from nodes", ["node"], registry=r)
        self.retries = Counter("edgewarm_retries", "Outcomes that scheduled another attempt", ["node"], registry=r)
        self.items_finished = Counter("edgewarm_items_finished", "Items finished", ["state"], registry=r)
        self.tasks_submitted = Counter("edgewarm_tasks_submitted", "Tasks accepted", ["kind"], registry=r)
        self.tasks_finished = Counter("edgewarm_tasks_finished", "Tasks that ended", ["status"], registry=r)
        self.task_seconds = Histogram(
            "edgewarm_task_duration_seconds", "Submit to end", buckets=TASK_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("edgewarm_queue_depth", "Items pending or running in the store", registry=r)
        self.in_flight = Gauge("edgewarm_items_in_flight", "Fetches running in this process", registry=r)
        self.webhooks = Counter("edgewarm_webhooks", "Webhook deliveries", ["outcome"], registry=r)
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}

    def observe_item(self, node: str, action: str, verdict: str, seconds: float, size: int) -> None:
        """One worked item. The labelled children are looked up once per label set: this is the hot path."""
        key = (node, action, verdict)
        children = self._children.get(key)
        if children is None:
            finished = None if verdict == "retried" else self.items_finished.labels(verdict)
            children = self._children[key] = (
                self.fetches.labels(node, action, verdict),
                self.fetch_seconds.labels(node),
                self.fetched_bytes.labels(node),
                self.retries.labels(node) if verdict == "retried" else finished,
            )
        fetches, latency, fetched, counted = children
        fetches.inc()
        latency.observe(seconds)
        if size:
            fetched.inc(size)
        if counted is not None:
            counted.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
