"""Metrics: the per-item tally comes out as the Prometheus families it stands for."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewarm.listening import family_of
from edgewarm.metrics import Metrics, serve_metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_items_are_counted_by_node_action_and_outcome() -> None:
    """Fetches by outcome, bytes by node, retries apart, finished items by state, latency buckets cumulative."""
    m = Metrics()
    m.items.observe("e1", "warm", "succeeded", 0.003, 4096)
    m.items.observe("e1", "warm", "succeeded", 0.001, 10)
    m.items.observe("e1", "warm", "retried", 0.7, 0)
    m.items.observe("e2", "purge", "failed", 100.0, 0)
    got = samples(m)
    assert got[("edgewarm_fetches_total", (("action", "warm"), ("node", "e1"), ("outcome", "succeeded")))] == 2
    assert got[("edgewarm_fetches_total", (("action", "warm"), ("node", "e1"), ("outcome", "retried")))] == 1
    assert got[("edgewarm_fetches_total", (("action", "purge"), ("node", "e2"), ("outcome", "failed")))] == 1
    assert got[("edgewarm_fetched_bytes_total", (("node", "e1"),))] == 4106
    assert got[("edgewarm_retries_total", (("node", "e1"),))] == 1
    assert got[("edgewarm_items_finished_total", (("state", "succeeded"),))] == 2
    assert got[("edgewarm_items_finished_total", (("state", "failed"),))] == 1
    bucket = "edgewarm_fetch_seconds_bucket"
    assert got[(bucket, (("le", "0.001"), ("node", "e1")))] == 1  # a bound counts into its own bucket
    assert got[(bucket, (("le", "0.005"), ("node", "e1")))] == 2
    assert got[(bucket, (("le", "0.5"), ("node", "e1")))] == 2
    assert got[(bucket, (("le", "1.0"), ("node", "e1")))] == 3
    assert got[(bucket, (("le", "60.0"), ("node", "e2")))] == 0
    assert got[(bucket, (("le", "+Inf"), ("node", "e2")))] == 1
    assert got[("edgewarm_fetch_seconds_count", (("node", "e1"),))] == 3
    assert abs(got[("edgewarm_fetch_seconds_sum", (("node", "e1"),))] - 0.704) < 1e-9


def test_an_item_waiting_for_its_node_is_neither_retried_nor_finished() -> None:
    """`waiting` (its node held down, no attempt spent) has its own outcome label and no other count."""
    m = Metrics()
    m.items.observe("e1", "warm", "waiting", 0.0, 0)
    got = samples(m)
    assert got[("edgewarm_fetches_total", (("action", "warm"), ("node", "e1"), ("outcome", "waiting")))] == 1
    counted = ("edgewarm_retries_total", "edgewarm_items_finished_total")
    assert not any(value for (name, _), value in got.items() if name in counted), got


def test_an_item_that_made_no_request_counts_as_worked_without_latency() -> None:
    """An item shared from another's warm (seconds None) is worked and finished, with no latency sample."""
    m = Metrics()
    m.items.observe("e1", "warm", "succeeded", 0.003, 4096)
    m.items.observe("e1", "warm", "succeeded", None, 0)
    got = samples(m)
    assert got[("edgewarm_fetches_total", (("action", "warm"), ("node", "e1"), ("outcome", "succeeded")))] == 2
    assert got[("edgewarm_items_finished_total", (("state", "succeeded"),))] == 2
    assert got[("edgewarm_fetch_seconds_count", (("node", "e1"),))] == 1
    assert got[("edgewarm_fetched_bytes_total", (("node", "e1"),))] == 4096


def test_in_flight_is_read_when_scraped() -> None:
    """The gauge of items in flight asks its source at scrape time."""
    m = Metrics()
    running = [0]
    m.in_flight.set_function(lambda: running[0])
    running[0] = 7
    assert samples(m)[("edgewarm_items_in_flight", ())] == 7


def test_nodes_held_down_are_read_when_scraped() -> None:
    """edgewarm_node_held_down: one sample per node its source names, 1 for those held down."""
    m = Metrics()
    down = {"edge-1": False, "edge-2": False}
    m.watch_nodes(lambda: dict(down))
    assert samples(m)[("edgewarm_node_held_down", (("node", "edge-2"),))] == 0
    down["edge-2"] = True
    got = samples(m)
    assert got[("edgewarm_node_held_down", (("node", "edge-2"),))] == 1
    assert got[("edgewarm_node_held_down", (("node", "edge-1"),))] == 0


def test_every_series_of_a_known_label_is_there_from_the_start_at_zero() -> None:
    """Before: a labelled counter appeared at its first increment, so increase() or rate() over the first
    failure after a start saw nothing (the series began at 1). And the process's own figures were missing."""
    m = Metrics()
    m.watch_nodes(lambda: {"e1": False, "e2": True})
    got = samples(m)
    zeros = [
        ("edgewarm_tasks_submitted_total", (("kind", "refresh"),)),
        ("edgewarm_tasks_finished_total", (("status", "2"),)),
        ("edgewarm_items_finished_total", (("state", "failed"),)),
        ("edgewarm_webhooks_total", (("outcome", "failed"),)),
        ("edgewarm_fetches_total", (("action", "purge_dir"), ("node", "e2"), ("outcome", "failed"))),
        ("edgewarm_fetches_total", (("action", "warm"), ("node", "e1"), ("outcome", "waiting"))),
        ("edgewarm_retries_total", (("node", "e1"),)),
        ("edgewarm_fetched_bytes_total", (("node", "e2"),)),
        ("edgewarm_fetch_seconds_count", (("node", "e2"),)),
    ]
    assert {key: got.get(key) for key in zeros} == dict.fromkeys(zeros, 0.0)
    assert got[("process_start_time_seconds", ())] > 0
    m.items.observe("e1", "warm", "failed", 0.01, 0)
    assert samples(m)[("edgewarm_fetches_total", (("action", "warm"), ("node", "e1"), ("outcome", "failed")))] == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_workers_metrics_server_answers_metrics_only_at_its_path(host: str) -> None:
    """`metrics_listen` (a worker's /metrics) answered every path with the metrics (prometheus_client's server):
    now /metrics only (a query string aside), 404 elsewhere; IPv6 addresses too. HEAD as GET, without the body."""
    metrics = Metrics()
    try:
        server = serve_metrics(host, 0, metrics.registry)
    except OSError as exc:  # no IPv6 on this machine's loopback
        pytest.skip(f"cannot listen on {host}: {exc}")
    try:
        base = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_port}"
        for path in ("/metrics", "/metrics?name[]=edgewarm_queue_depth", "/metrics/"):
            answer = httpx.get(base + path, timeout=5)
            assert answer.status_code == 200, path
            assert "edgewarm_queue_depth" in answer.text, path
        head = httpx.head(base + "/metrics", timeout=5)  # a probe's (405 before)
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0 and head.headers["content-type"].startswith("text/plain")
        for path in ("/", "/metricsx", "/other/metrics", "/favicon.ico"):
            answer = httpx.get(base + path, timeout=5)
            assert (answer.status_code, answer.text) == (404, "not found: the metrics are at /metrics\n"), path
        if ":" in host:  # IPv6 alone, as the API's `listen` (it was both here, the API IPv6 alone: a tester's)
            assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_the_modules_docstring_lists_every_metric_served() -> None:
    """README points at metrics.py's docstring for each name and its labels; a fact-checker found two served
    metrics missing from it (the config's reloads)."""
    import edgewarm.metrics

    listed = edgewarm.metrics.__doc__ or ""
    served = {sample.name for family in Metrics().registry.collect() for sample in family.samples}
    for name in served:
        if name.startswith(("process_", "edgewarm_fetch_process_", "python_")):
            continue  # listed by their prefix
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum").removesuffix("_created")
        assert base in listed, name


def test_the_family_listened_on_is_the_addresses_and_a_names_ipv4_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """`listen` and `metrics_listen` share one rule (listening.py): an address's family; a name's IPv4 when it has
    one, else its IPv6 (the API listened on a name of IPv6 alone as IPv4, and the metrics on its first)."""
    assert (family_of("::1"), family_of("127.0.0.1")) == (socket.AF_INET6, socket.AF_INET)
    both = [(socket.AF_INET6, 1, 6, "", ("::1", 0, 0, 0)), (socket.AF_INET, 1, 6, "", ("127.0.0.1", 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kw: both)
    assert family_of("dual.test") == socket.AF_INET
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kw: both[:1])
    assert family_of("six.test") == socket.AF_INET6
