"""Crashes with https nodes: `edgewarm serve` SIGKILLed, and an https edge killed, while a task warms a real
nginx fleet over TLS (the Lab's shield and edge with `tls=True`; edges ask the shield over https too).

- SIGKILL of the service twice during a prefetch of 1,500 URLs through an https shield and edge, restarted
  each time on the same SQLite file: the task ends with status 0, each item counted once (read straight from
  the file), every URL is then a HIT on both nodes when asked over https, and the origin got one request per
  URL, a second only for a URL whose request to the shield a kill cut off (the shield, its client gone, kept
  nothing: nginx's doing; the item, taken back at the restart, is warmed again as README says). Once with
  plain URLs only (pyreqwest, rustls), once with every fifth URL holding a `'` in its query (sent byte for byte
  through aiohttp, OpenSSL: engine/fetcher.py `sent_unchanged`), both clients sending up to each kill.
- The https edge SIGKILLed (`Lab.kill`) for 3 s mid-task and restarted on its port with its cache: the counts
  are exact, the task ends with status 0, the edge filled every URL from the shield, what was sent to it after
  it came back is a HIT there, the origin got exactly one request per URL, and the service's log says the edge
  was held down and came back, with no traceback.

The shield is given by IP address and the edge by name (`localhost`): pyreqwest's routes for both (tls_routes.py).
`tls_verify = false`, as `Lab.nodes_toml(https=True)` writes it: the Lab's certificate (like the session's in
tests/conftest.py) is made by `openssl req -x509`, a self-signed certificate marked a CA, which rustls never
takes as a node's own; with verification on, the Fetcher would leave such a node to aiohttp (OpenSSL), and the
crash would no longer be tested with pyreqwest in flight. Verified certificates are tested in
tests/integration/test_fetcher_clients.py and tests/reliability/test_tls_faults.py.
"""

from __future__ import annotations

import http.client
import re
import ssl
import time
from collections import Counter
from pathlib import Path

import pytest

from edgewarm.client import Client
from edgewarm.engine.fetcher import sent_unchanged
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.lab import LabNode
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess

from .support import consistency, integrity, start_service, wait_until

pytestmark = pytest.mark.integration

SITE = DEFAULT_HOST  # the name the Lab's certificate is for
SIZE = 256  # bytes of each file


def https_nodes(lab: Lab) -> str:
    """The lab's shield (by IP address) and edges (by name) at their https ports, certificates not checked."""
    tables = []
    for node in lab.cache_nodes():
        assert node.tls_url is not None
        url = node.tls_url if node.tier == "shield" else node.tls_url.replace("127.0.0.1", "localhost")
        table = f'[[nodes]]\nname = "{node.name}"\nurl = "{url}"\ntier = "{node.tier}"\nkind = "nginx"\n'
        tables.append(table + "tls_verify = false\n")
    return "\n".join(tables)


def targets(paths: list[str], quoted_every: int) -> list[str]:
    """The URL paths to warm: each file once, every `quoted_every`-th with a `'` in its query (0: none)."""
    out = [f"{p}?v='{i}'" if quoted_every and i % quoted_every == quoted_every - 1 else p for i, p in enumerate(paths)]
    quoted = [t for t in out if not sent_unchanged(t)]
    assert len(quoted) == (len(paths) // quoted_every if quoted_every else 0), "aiohttp's share is not as planned"
    return out


def settings(urls: int) -> str:
    return (
        f"[limits]\nurls_per_call = {urls}\n[api]\nmax_body_bytes = {16 << 20}\n"
        "[engine]\nconcurrency = 16\nper_node_concurrency = 8\n"
    )


def progress(client: Client, taskid: str) -> int:
    """Items finished, as the task's own counters say."""
    view = client.task(taskid, limit=0)
    return int(view["succeeded"]) + int(view["failed"])


def wait_for_progress(service: ServiceProcess, taskid: str, at_least: int, timeout: float = 60.0) -> int:
    with Client(service.url, DEMO_USER, DEMO_SECRET, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while (done := progress(client, taskid)) < at_least:
            assert time.monotonic() < deadline, f"stuck at {done} items, waiting for {at_least}"
            time.sleep(0.02)
        return done


def https_cache_states(lab: Lab, node: LabNode, uris: list[str]) -> dict[str, str | None]:
    """Each URI's cache state on `node` asked over https (one kept-alive connection, the lab's certificate
    checked; names are not: the connection is to 127.0.0.1)."""
    assert node.tls_port is not None
    context = ssl.create_default_context(cafile=str(lab.root / "tls" / "cert.pem"))
    context.check_hostname = False
    states: dict[str, str | None] = {}
    conn = http.client.HTTPSConnection("127.0.0.1", node.tls_port, timeout=10, context=context)
    try:
        for uri in uris:
            conn.request("GET", uri, headers={"Host": SITE})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, (node.name, uri, response.status)
            states[uri] = response.getheader("X-Cache-Status")
    finally:
        conn.close()
    return states


def log_problems(text: str) -> list[str]:
    """Log lines that carry a traceback."""
    return [line for line in text.splitlines() if "Traceback" in line or '"exception":' in line]


@pytest.mark.parametrize("quoted_every", [pytest.param(0, id="pyreqwest"), pytest.param(5, id="pyreqwest-and-aiohttp")])
def test_sigkill_of_the_service_during_an_https_prefetch_then_each_item_once_and_every_url_a_hit(
    tmp_path: Path, quoted_every: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILLed twice and restarted on one SQLite file while 1,500 URLs warm through an https shield and
    edge: status 0, each item counted once, every URL a HIT on both nodes over https, the origin asked once
    per URL; with quoted URLs among them, both clients were sending up to each kill."""
    urls, kills = 1_500, 2
    total = 2 * urls
    with Lab(tmp_path / "lab", edges=1, shield=True, tls=True) as lab:
        sent = targets(lab.make_files(urls, SIZE), quoted_every)
        assert lab.shield is not None
        edge = lab.edges[0]
        service = start_service(tmp_path / "svc", https_nodes(lab), extra=settings(urls))
        db = tmp_path / "svc" / "edgewarm.db"
        at_kill: list[int] = []
        kill_times: list[float] = []
        started = time.monotonic()
        try:
            with Client(service.url, DEMO_USER, DEMO_SECRET, timeout=120) as client:
                taskid = client.prefetch([f"https://{SITE}{t}" for t in sent])
            for k in range(kills):
                at_kill.append(wait_for_progress(service, taskid, total * (k + 1) // (kills + 2)))
                service.kill()
                kill_times.append(time.time())
                service = ServiceProcess(service.config, port=service.port).start(30)
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                view = client.wait(taskid, timeout=120)
            took = time.monotonic() - started
        finally:
            stopped = service.stop()
        log = service.log.read_text(errors="replace")
        assert stopped == 0, log[-3000:]
        assert all(done < total for done in at_kill), f"a kill came after the end: {at_kill}"
        assert view["status"] == 0, view
        assert view["counts"] == {"waiting": 0, "pending": 0, "running": 0, "succeeded": total, "failed": 0}
        found = consistency(db)
        assert found.problems() == []
        assert found.tasks[taskid]["states"] == {"succeeded": total}
        assert integrity(db) == "ok"
        assert log_problems(log) == []

        # What each node sent for the last 100 requests before each kill: both clients' URLs when both are used.
        logged = sorted(lab.requests(lab.shield) + lab.requests(edge), key=lambda r: r.time)
        before_kills = [[not sent_unchanged(r.uri) for r in logged if r.time <= at][-100:] for at in kill_times]
        assert all(len(last) == 100 for last in before_kills), "fewer than 100 requests before a kill"
        mixes = [sorted(set(last)) for last in before_kills]
        assert mixes == [[False, True] if quoted_every else [False]] * kills, mixes

        # The origin is asked once per URL, but again for a URL whose warm on the shield a kill cut off: the
        # shield, its client gone before the body was sent, kept nothing (nginx), and the item, taken back at
        # the restart, is warmed again (README: unfinished items run again on the next start).
        origin = Counter(r.uri for r in lab.requests(lab.origin) if r.host == SITE)
        again = {uri: n for uri, n in origin.items() if n > 1}
        cut = {r.uri for r in lab.requests(lab.shield) if r.bytes < SIZE and r.time <= kill_times[-1] + 1}
        took_back = sum(int(n) for n in re.findall(r"took back (\d+) items? left running", log))
        assert set(origin) == set(sent), "the origin was asked for other URLs, or not for every one"
        assert all(n <= kills + 1 for n in again.values()) and set(again) <= cut, (again, cut)
        assert len(again) <= took_back, (len(again), took_back)
        states = {node.name: Counter(https_cache_states(lab, node, sent).values()) for node in (lab.shield, edge)}
        assert states == {"shield-1": Counter({"HIT": urls}), "edge-1": Counter({"HIT": urls})}, states
    with capsys.disabled():
        print(
            f"\n[reliability] https fleet, SIGKILL x{kills} during {urls} URLs ({total} items, "
            f"{len(sent) - sum(map(sent_unchanged, sent))} through aiohttp): done at kills {at_kill}; "
            f"task ended after {took:.1f}s; {len(again)} URLs asked of the origin again (cut at the shield by a kill)"
        )


def test_an_https_edge_killed_mid_task_and_restarted_then_counts_exact_and_its_warms_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The https edge SIGKILLed for 3 s mid-task (its items in flight through both clients), then restarted:
    the task ends with status 0, counted once; what was sent to the edge after it came back is a HIT there,
    the origin was asked once per URL; the log tells the edge held down and back, and holds no traceback."""
    urls = 1_000
    total = 2 * urls
    with Lab(tmp_path / "lab", edges=1, shield=True, tls=True) as lab:
        sent = targets(lab.make_files(urls, SIZE), 10)
        assert lab.shield is not None
        edge = lab.edges[0]
        service = start_service(tmp_path / "svc", https_nodes(lab), extra=settings(urls))
        db = tmp_path / "svc" / "edgewarm.db"
        started = time.monotonic()
        with service:
            with Client(service.url, DEMO_USER, DEMO_SECRET, timeout=120) as client:
                taskid = client.prefetch([f"https://{SITE}{t}" for t in sent])
            at_kill = wait_for_progress(service, taskid, total // 4)
            lab.kill(edge.name)
            killed = time.time()
            time.sleep(3.0)
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                while_down = client.task(taskid, limit=0)
            lab.restart(edge.name)
            back = time.time()
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                view = client.wait(taskid, timeout=120)
            took = time.monotonic() - started
            assert view["status"] == 0, view
            logged = service.log
            wait_until(lambda: "answers again" in logged.read_text(errors="replace"), 10, "the edge's return logged")
        log = service.log.read_text(errors="replace")
        assert service.proc is not None and service.proc.returncode == 0, log[-3000:]
        assert at_kill < total and while_down["status"] == 1, (at_kill, while_down)
        assert view["status"] == 0, view
        assert view["counts"] == {"waiting": 0, "pending": 0, "running": 0, "succeeded": total, "failed": 0}
        found = consistency(db)
        assert found.problems() == []
        assert found.tasks[taskid]["states"] == {"succeeded": total}
        assert log_problems(log) == []
        assert "node edge-1 held down for " in log and "node edge-1 answers again" in log

        edge_log = [r for r in lab.requests(edge) if r.host == SITE]  # not the engine's `HEAD /` of it
        down = [r for r in edge_log if killed < r.time < back]
        after = sorted({r.uri for r in edge_log if r.time >= back})
        assert down == [], "the edge answered while it was down"
        # Every URL reached the edge: it filled each from the shield (the edge's own log may lack a request it
        # answered just before it was killed: nginx logs a request after answering it).
        shield = Counter(r.uri for r in lab.requests(lab.shield))
        assert [u for u in sent if shield[u] < 2] == [], "URLs the edge never asked the shield for"
        assert after, "nothing was left for the edge when it came back: the kill came too late"
        assert any(not sent_unchanged(u) for u in after) and any(sent_unchanged(u) for u in after), after
        # The site's URLs only: the engine's `HEAD /` to the edge held down (Host: localhost) reaches the origin.
        origin = Counter(r.uri for r in lab.requests(lab.origin) if r.host == SITE)
        assert origin == Counter(sent), "the origin was not asked exactly once per URL"
        assert Counter(https_cache_states(lab, edge, after).values()) == Counter({"HIT": len(after)})
        assert Counter(https_cache_states(lab, lab.shield, sent).values()) == Counter({"HIT": urls})
    with capsys.disabled():
        print(
            f"\n[reliability] https edge killed for 3 s at {at_kill} of {total} items: {len(after)} URLs sent "
            f"to it after it came back; task ended after {took:.1f}s"
        )
