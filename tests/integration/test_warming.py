"""Issue 2: `edgewarm serve` warms a real nginx fleet (shield + 2 edges) through the JD API."""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgewarm.client import Client
from edgewarm.engine.actions import NO_STATE_NOTE
from edgewarm.engine.outcome import NO_STATE_TOLD
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import FaultServer, Respond
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, start_service

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", edges=2, shield=True) as lab:
        yield lab


def client_for(service: ServiceProcess) -> Client:
    return Client(service.url, DEMO_USER, DEMO_SECRET)


def url_of(path: str) -> str:
    return f"http://{DEFAULT_HOST}{path}"


def test_prefetch_of_50_urls_makes_every_edge_hit_and_asks_the_origin_once(tmp_path: Path, lab: Lab) -> None:
    """50 URLs end with status 0, every URL is then a HIT on every edge, and the origin saw each URL once."""
    paths = lab.make_files(50, 4096)
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        taskid = client.prefetch([url_of(p) for p in paths])
        view = client.wait(taskid, timeout=60)
        assert client.query(taskid) == {"taskid": taskid, "status": 0, "msg": "Succeeded"}
    assert view["counts"]["succeeded"] == 150 and view["counts"]["failed"] == 0
    for edge in lab.edges:
        for path in paths:
            assert lab.fetch(edge, path).cache_status == "HIT", (edge.name, path)
    origin = Counter(r.uri for r in lab.requests(lab.origin) if r.uri.startswith("/f/"))
    assert origin == Counter({p: 1 for p in paths})


def test_a_url_the_origin_answers_404_fails_with_that_status(tmp_path: Path, lab: Lab) -> None:
    """A 404 from the origin fails the URL's items (shield: HTTP 404, edges: not attempted); task status 2."""
    (path,) = lab.make_files(1, 100)
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        taskid = client.prefetch([url_of(path), url_of("/no/such/file.bin")])
        view = client.wait(taskid, timeout=60)
        items = client.task(taskid)["items"]
    assert view["status"] == 2 and client_query_status(items) == (3, 3)
    missing = {i["node"]: i for i in items if i["url"].endswith("/no/such/file.bin")}
    assert missing["shield-1"]["http_status"] == 404
    assert missing["shield-1"]["attempts"] == 1
    assert "404" in missing["shield-1"]["error"]
    for edge in ("edge-1", "edge-2"):
        assert missing[edge]["state"] == "failed"
        assert "shield-1" in missing[edge]["error"]


def test_an_object_the_caches_will_not_store_is_not_reported_warmed(tmp_path: Path, lab: Lab) -> None:
    """`verify` off (the default): an answer that says `Cache-Control: no-store` and MISS is asked for once more;
    still a MISS, the item fails saying why (before, it succeeded on the one MISS while the cache stayed empty,
    at every later task too). A cacheable file beside it takes one GET and succeeds."""
    lab.write_file("/nocache/n.bin", b"n" * 100)
    (path,) = lab.make_files(1, 100, prefix="/ok/")
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        taskid = client.prefetch([url_of("/nocache/n.bin"), url_of(path)])
        assert client.wait(taskid, timeout=60)["status"] == 2
        items = client.task(taskid)["items"]
    shield = {i["url"]: i for i in items if i["node"] == "shield-1"}
    refused = shield[url_of("/nocache/n.bin")]
    assert (refused["state"], refused["cache_state"]) == ("failed", "MISS")
    assert refused["error"] == "not cached after the warm: MISS again (its answer said Cache-Control: no-store)"
    assert shield[url_of(path)]["state"] == "succeeded"
    gets = Counter(r.uri for r in lab.requests(lab.shield) if r.method == "GET")
    assert gets["/nocache/n.bin"] == 2  # the warm and the second look; its edges were never asked
    assert gets[path] == 1 + len(lab.edges)  # the warm, then each edge filling itself from the shield


def test_an_object_of_no_lifetime_is_not_reported_warmed(tmp_path: Path, lab: Lab) -> None:
    """`Cache-Control: max-age=0` or an `Expires` passed: nginx does not store it, and the answer's MISS is
    looked at once more as for no-store (before, each succeeded on the one MISS while the caches stayed empty)."""
    for folder in ("max-age-0", "expired"):
        lab.write_file(f"/{folder}/n.bin", b"n" * 100)
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        taskid = client.prefetch([url_of("/max-age-0/n.bin"), url_of("/expired/n.bin")])
        assert client.wait(taskid, timeout=60)["status"] == 2
        items = client.task(taskid)["items"]
    shield = {i["url"]: i["error"] for i in items if i["node"] == "shield-1"}
    assert shield == {
        url_of("/max-age-0/n.bin"): "not cached after the warm: MISS again (its answer said Cache-Control: max-age=0)",
        url_of("/expired/n.bin"): "not cached after the warm: MISS again (its answer said "
        "Expires: Thu, 01 Jan 1970 00:00:00 GMT)",
    }
    for path in ("/max-age-0/n.bin", "/expired/n.bin"):
        assert lab.fetch(lab.shield, path).cache_status == "MISS"  # not stored indeed


def prefetched(client: Client, url: str) -> list[dict[str, Any]]:
    """The items of a task of `url`, once it has ended succeeded."""
    taskid = client.prefetch([url])
    assert client.wait(taskid, timeout=60)["status"] == 0
    items: list[dict[str, Any]] = client.task(taskid)["items"]
    return items


def test_a_warm_is_not_shared_once_the_nodes_copy_has_expired(tmp_path: Path, lab: Lab) -> None:
    """`Cache-Control: max-age=2`: a second task of the URL 3 s after the first warms again (before, within
    dedupe_seconds it was reported from the first warm, attempts 0, while every node held an expired copy and
    the next viewer went to the origin); one right after the first shares it, and says so."""
    lab.write_file("/max-age-2/m.bin", b"m" * 100)
    url = url_of("/max-age-2/m.bin")
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        prefetched(client, url)
        shared = prefetched(client, url)
        time.sleep(3)
        items = prefetched(client, url)
        states = {node.name: lab.fetch(node, "/max-age-2/m.bin").cache_status for node in lab.cache_nodes()}
    assert set(states.values()) == {"HIT"}, states  # what a viewer gets (within the copy's 2 s)
    assert [(i["attempts"], i["note"]) for i in items] == [(1, None)] * 3, items
    assert {i["cache_state"] for i in items} == {"EXPIRED"}, items  # each node's copy had expired: fetched anew
    assert all(i["attempts"] == 0 and "not fetched again" in i["note"] for i in shared), shared


def test_a_hit_on_nginx_of_a_copy_of_unknown_age_is_not_shared(tmp_path: Path, lab: Lab) -> None:
    """A viewer stored the copy; the warm is a HIT, and nginx tells no Age (its Date is its own): how long the
    copy has left cannot be known, so a task right after fetches again (before, it was shared for the whole
    max-age from the HIT: a re-tester's viewer got EXPIRED after a task reported it warmed)."""
    lab.write_file("/max-age-2/v.bin", b"v" * 100)
    for node in lab.cache_nodes():  # shield first: the edges fill from it
        assert lab.fetch(node, "/max-age-2/v.bin").cache_status == "MISS"
    url = url_of("/max-age-2/v.bin")
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        prefetched(client, url)
        items = prefetched(client, url)
    assert [i["attempts"] for i in items] == [1, 1, 1], items


def client_query_status(items: list[dict[str, object]]) -> tuple[int, int]:
    """(succeeded, failed) among `items`."""
    states = Counter(i["state"] for i in items)
    return states["succeeded"], states["failed"]


def test_an_edge_that_is_down_is_retried_then_fails_while_the_others_succeed(tmp_path: Path, lab: Lab) -> None:
    """Items of a down edge are retried up to max_attempts, then fail with a clear reason; the rest succeed.
    (`node_down_wait` 0: once the node is held down its items do not wait for it.)"""
    paths = lab.make_files(5, 1000)
    down = f'[[nodes]]\nname = "edge-down"\nurl = "http://127.0.0.1:{free_port()}"\n'
    extra = "[engine]\nmax_attempts = 3\nbackoff_base = 0.05\nbackoff_max = 0.2\nnode_down_wait = 0\n"
    with start_service(tmp_path, lab.nodes_toml() + down, extra=extra) as service, client_for(service) as client:
        taskid = client.prefetch([url_of(p) for p in paths])
        view = client.wait(taskid, timeout=60)
        items = client.task(taskid)["items"]
    assert view["status"] == 2
    for item in items:
        if item["node"] == "edge-down":
            assert item["state"] == "failed" and item["attempts"] == 3
            assert "cannot connect to edge-down" in item["error"] and "gave up after 3 attempts" in item["error"]
        else:
            assert item["state"] == "succeeded", item
    assert view["counts"] == {"waiting": 0, "pending": 0, "running": 0, "succeeded": 15, "failed": 5}


def test_sigkill_in_the_middle_of_2000_urls_then_restart_finishes_without_double_counting(
    tmp_path: Path, lab: Lab
) -> None:
    """SIGKILL mid-task; started again on the same store the task ends with status 0, each item counted once."""
    paths = lab.make_files(2000, 512)
    # A narrow pipe so that the kill lands in the middle of the task.
    extra = "[engine]\nper_node_concurrency = 4\nconcurrency = 8\n"
    service = start_service(tmp_path, lab.nodes_toml(), extra=extra)
    try:
        with client_for(service) as client:
            taskids = [client.prefetch([url_of(p) for p in paths[i : i + 100]]) for i in range(0, 2000, 100)]
            done_before = wait_for_progress(client, taskids, at_least=600)
            service.kill()
    finally:
        service.kill()
    assert done_before < 6000, "the kill came too late to test anything"
    with ServiceProcess(service.config, port=service.port).start() as again, client_for(again) as client:
        views = [client.wait(t, timeout=120) for t in taskids]
    assert all(v["status"] == 0 for v in views)
    for view in views:
        # Counters are bumped once per applied outcome: a double count would push succeeded past total.
        assert view["counts"]["succeeded"] == view["total"] == 300
        assert view["progress"] == 1.0
    edge_log = Counter(r.uri for r in lab.requests(lab.edges[0]) if r.uri.startswith("/f/"))
    assert set(edge_log) == set(paths)


def wait_for_progress(client: Client, taskids: list[str], *, at_least: int, timeout: float = 60) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sum(client.task(t, limit=0)["counts"]["succeeded"] for t in taskids)
        if done >= at_least:
            return done
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} items done after {timeout}s")


def test_sigterm_finishes_in_flight_work_and_exits_cleanly(tmp_path: Path, lab: Lab) -> None:
    """SIGTERM mid-task exits 0; started again, the task completes."""
    paths = lab.make_files(500, 512)
    extra = "[engine]\nper_node_concurrency = 2\nconcurrency = 4\n"
    service = start_service(tmp_path, lab.nodes_toml(), extra=extra)
    with client_for(service) as client:
        taskids = [client.prefetch([url_of(p) for p in paths[i : i + 100]]) for i in range(0, 500, 100)]
        wait_for_progress(client, taskids, at_least=50)
    assert service.stop() == 0
    assert "stopped cleanly" in service.log_text()
    with ServiceProcess(service.config, port=service.port).start() as again, client_for(again) as client:
        assert all(client.wait(t, timeout=120)["status"] == 0 for t in taskids)


def test_refusals_not_logged_yet_are_logged_at_a_stop(tmp_path: Path) -> None:
    """Three calls with wrong signatures, then a stop within the minute: the log told only the first (the other
    two waited for a refusal a minute later, and the metric restarts with the process: told nowhere, a
    tester's observation). The two are logged at the stop."""
    nodes = '[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:1"\n'
    service = start_service(tmp_path, nodes)
    form = {"username": DEMO_USER, "signature": "0" * 32, "taskid": "x"}
    with httpx.Client(base_url=service.url, timeout=10) as http:
        for _ in range(3):
            assert http.post("/api/prefetchQuery", data=form).json()["status"] == 7
    assert service.stop() == 0
    refused = [line for line in service.log_text().splitlines() if "calls refused for their credentials" in line]
    assert len(refused) == 2, refused
    assert "1 wrong_signature" in refused[0] and "2 wrong_signature" in refused[1], refused


def test_requests_that_are_not_http_are_logged_a_line_a_minute(tmp_path: Path) -> None:
    """uvicorn answers a request it cannot parse 400 and logged a warning for each (a scanner's junk, a line
    a request, a tester's observation): counted into a line a minute at most, as edgewarm's own refusals."""
    nodes = '[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:1"\n'
    service = start_service(tmp_path, nodes)
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
            conn.sendall(b"\x16\x03\x01 junk \r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 400 ")
    # Upgrade requests (WebSocket, h2c): answered as plain requests, and each made two warnings, the second
    # advising to install a WebSocket library (a tester's 500 requests: 1,000 lines in 0.1 s).
    for upgrade in (b"websocket", b"h2c", b"websocket"):
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
            conn.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n"
            )
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert service.stop() == 0
    text = service.log_text()
    assert "Invalid HTTP request received" not in text, text
    assert "upgrade request" not in text.lower().replace("upgrade requests answered", ""), text
    assert "WebSocket library" not in text, text
    told = [line for line in text.splitlines() if "requests answered 400 as not HTTP" in line]
    assert len(told) == 2 and "1 invalid_request" in told[0] and "3 invalid_request" in told[1], told
    upgrades = [line for line in text.splitlines() if "upgrade requests answered as plain HTTP" in line]
    assert len(upgrades) == 2 and "1 upgrade" in upgrades[0] and "2 upgrade" in upgrades[1], upgrades


@pytest.mark.parametrize("path", ["/api/prefetch", "/v1/tasks/lookup"])
def test_a_stop_answers_a_body_still_arriving_at_once(tmp_path: Path, path: str) -> None:
    """A stop while a request's body still trickles in (a proxy that does not buffer it): the request is answered
    at once, saying nothing was done, and the process ends. It held the stop for all of `grace_seconds`,
    then uvicorn cancelled it with a traceback in the log (a tester behind nginx). A JD call is answered as JD
    answers an error, HTTP 200 with code -1 (it was a native 503, which a legacy client cannot read)."""
    nodes = '[[nodes]]\nname = "n"\nurl = "http://127.0.0.1:1"\n'
    service = start_service(tmp_path, nodes, extra="[engine]\ngrace_seconds = 60\n")
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode())
        conn.sendall(b'Content-Length: 100\r\n\r\n{"username": ')
        time.sleep(0.5)  # the head is read and the body awaited
        assert service.stop(timeout=20) == 0, service.log_tail()
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    why = "edgewarm is stopping and the request's body had not all arrived: nothing was done"
    if path.startswith("/api/"):
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower(), answer
        assert json.loads(body) == {"status": -1, "msg": f"internal error: {why}"}
    else:
        assert head.startswith(b"HTTP/1.1 503 ") and b"connection: close" in head.lower(), answer
        assert json.loads(body) == {"code": -1, "error": why}
    assert "Traceback" not in service.log_text() and "stopped cleanly" in service.log_text()


def test_https_nodes_are_warmed_over_tls_shield_first(tmp_path: Path) -> None:
    """A fleet reached over https (nginx with TLS, given by address; URLs of an https site): every URL ends a
    HIT on every edge when asked over https, the origin is asked once per URL (edges ask the shield over
    https too), and what was warmed is the https cache: over plain http the same URL is still a MISS (the
    lab's cache key holds the scheme). Plain URLs go through pyreqwest, one with a `'` in its query through aiohttp."""
    with Lab(tmp_path / "lab", edges=2, shield=True, tls=True) as lab:
        paths = lab.make_files(30, 4096)
        quoted = f"{paths[0]}?v='1'"
        urls = [f"https://{DEFAULT_HOST}{p}" for p in [*paths, quoted]]
        with start_service(tmp_path, lab.nodes_toml(https=True)) as service, client_for(service) as client:
            taskid = client.prefetch(urls)
            view = client.wait(taskid, timeout=60)
        assert view["status"] == 0 and view["counts"]["succeeded"] == 3 * len(urls)
        for edge in lab.edges:
            for path in paths:
                assert lab.fetch(edge, path, https=True).cache_status == "HIT", (edge.name, path)
        origin = Counter(r.uri for r in lab.requests(lab.origin) if r.uri.startswith("/f/"))
        plain = [lab.fetch(edge, paths[1]).cache_status for edge in lab.edges]
    assert origin == Counter({p: 1 for p in [*paths, quoted]})
    assert plain == ["MISS", "MISS"]


def test_with_verify_a_url_the_node_does_not_cache_and_tells_no_state_of_fails(tmp_path: Path, lab: Lab) -> None:
    """nginx does not use its cache for a URL whose cache key is longer than its proxy_buffer_size (4 KiB
    here: a query of 4,000 characters) and then sends no X-Cache-Status. With `verify = true`, a node that
    told a MISS before is asked again; telling no state again, the item fails saying why (before, it
    succeeded unverified while every request went to the origin)."""
    lab.write_file("/ok/a.txt", b"a" * 100)
    long_path = "/ok/a.txt?" + "x" * 4000  # the file's name would be too long: a query the origin ignores
    extra = "[engine]\nverify = true\n"
    with start_service(tmp_path, lab.nodes_toml(), extra=extra) as service, client_for(service) as client:
        assert client.wait(client.prefetch([url_of("/ok/a.txt")]), timeout=60)["status"] == 0  # MISS, then HIT
        taskid = client.prefetch([url_of(long_path)])
        assert client.wait(taskid, timeout=60)["status"] == 2
        items = client.task(taskid)["items"]
    shield = next(i for i in items if i["node"] == "shield-1")
    assert (shield["state"], shield["cache_state"]) == ("failed", None)
    assert shield["error"] == f"not cached after the warm: no cache state again ({NO_STATE_TOLD})"
    assert lab.fetch(lab.shield, long_path).cache_status is None  # nginx tells nothing: not from its cache


def test_without_verify_a_url_the_node_tells_no_state_of_succeeds_with_a_note(tmp_path: Path, lab: Lab) -> None:
    """The same URL without verify counts as warmed (README), and its items say that the node told no state
    where it tells one for other URLs (before: "Succeeded" and nothing more, a tester's JD client)."""
    lab.write_file("/ok/b.txt", b"b" * 100)
    long_path = "/ok/b.txt?" + "x" * 4000
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        assert client.wait(client.prefetch([url_of("/ok/b.txt")]), timeout=60)["status"] == 0  # MISS: told
        taskid = client.prefetch([url_of(long_path)])
        assert client.wait(taskid, timeout=60)["status"] == 0
        items = client.task(taskid)["items"]
    assert {(i["state"], i["cache_state"], i["note"]) for i in items} == {("succeeded", None, NO_STATE_NOTE)}, items


def test_a_task_submitted_and_ended_is_one_log_line_each(tmp_path: Path, lab: Lab) -> None:
    """An operator can follow tasks from the log alone (before: nothing at info between start and stop). A
    directory refresh's line counts directories (before: "1 URLs")."""
    (path,) = lab.make_files(1, 100, prefix="/logged/")
    with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
        taskid = client.prefetch([url_of(path)])
        assert client.wait(taskid, timeout=60)["status"] == 0
        dirs = client.refresh([url_of("/logged/"), url_of("/other/")], directories=True)
        # The engine logs the end after it wrote the last outcome, which `wait` may read first: wait for the line.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            f'"task_id":"{taskid}"' in line and '"task ended: ' in line for line in service.log.read_text().splitlines()
        ):
            time.sleep(0.05)
        lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.strip()]
    about = [line["message"] for line in lines if line.get("task_id") == taskid]
    assert about[0] == f"task submitted: prefetch by {DEMO_USER}, 1 URL, 3 items", about
    (refresh,) = [line for line in lines if line.get("task_id") == dirs and line["message"].startswith("task s")]
    assert refresh["message"] == f"task submitted: refresh by {DEMO_USER}, 2 directories, 6 items", refresh
    assert (refresh["urls"], refresh["dirs"]) == (0, 2)
    assert any(m.startswith("task ended: status 0 (3 succeeded, 0 failed) in ") for m in about), about
    # The figures are fields of their own too, for a log pipeline to count by.
    submitted, ended = (next(line for line in lines if line["message"].startswith(s)) for s in ("task s", "task e"))
    assert {k: submitted.get(k) for k in ("task_id", "user", "kind", "urls", "items")} == {
        "task_id": taskid,
        "user": DEMO_USER,
        "kind": "prefetch",
        "urls": 1,
        "items": 3,
    }
    assert {k: ended.get(k) for k in ("task_id", "user", "kind", "status", "succeeded", "failed")} == {
        "task_id": taskid,
        "user": DEMO_USER,
        "kind": "prefetch",
        "status": 0,
        "succeeded": 3,
        "failed": 0,
    }
    assert 0 < ended["seconds"] < 60


def test_a_cancelled_task_ends_with_a_log_line_too(tmp_path: Path) -> None:
    """A cancel is a task's end: its line has the status and the duration, as every other end's (before, only
    "task cancelled by …": counting ends in the log missed every cancelled task)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # connections refused: the items wait for their node, the task stays open
        nodes = '[[nodes]]\nname = "dead"\nurl = "http://{}:{}"\n'.format(*sock.getsockname())
        with start_service(tmp_path, nodes) as service, client_for(service) as client:
            taskid = client.prefetch([url_of(f"/cancelled/{i}") for i in range(5)])
            service.wait_for_log("node dead held down", 20)
            time.sleep(0.5)  # its items back in the store, waiting: the cancel ends them there, not the engine
            client.cancel(taskid)
            assert client.wait(taskid, timeout=30)["status"] == 2
            service.wait_for_log("task ended: status 2", 10)  # the engine's, when items in hand ended the task
            lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.strip()]
    about = [line["message"] for line in lines if line.get("task_id") == taskid]
    ended = [m for m in about if m.startswith("task ended: status 2 (0 succeeded, 5 failed) in ")]
    assert len(ended) == 1, about


def test_a_task_of_one_url_waits_for_its_node_restarting_within_node_down_wait(tmp_path: Path) -> None:
    """One URL, its only node down for 6 s (nginx killed, then started again): the task succeeds once the node
    is back, as README says of a node back within node_down_wait. Before, the node was held down only after 5
    failed connections in a row, and the item's 4 attempts (max_attempts) were spent in about 3.5 s: it failed."""
    with Lab(tmp_path / "lab", edges=1, shield=False) as lab:
        (path,) = lab.make_files(1, 100, prefix="/restart/")
        with start_service(tmp_path, lab.nodes_toml()) as service, client_for(service) as client:
            lab.kill("edge-1")
            taskid = client.prefetch([url_of(path)])
            time.sleep(6.0)
            lab.restart("edge-1")
            task = client.wait(taskid, timeout=60)
            (item,) = client.task(taskid)["items"]
        state = lab.fetch(lab.node("edge-1"), path).cache_status
    assert task["status"] == 0, item
    assert (item["state"], item["http_status"]) == ("succeeded", 200), item
    assert state == "HIT"


def test_a_users_task_of_one_url_is_warmed_during_another_users_large_task(tmp_path: Path) -> None:
    """Claims share the due items among their users: a task of one URL that a second user submits just after
    the first user's 4,000 URLs (a shield and 2 edges) ends while most of those are still to do (before, oldest
    first, it waited for all of them: README measured 4-15 s behind 30,000)."""
    other = ("other", "o" * 32)
    extra = (
        "[limits]\nurls_per_call = 4000\n[engine]\nconcurrency = 16\n\n"
        f'[[users]]\nname = "{other[0]}"\nsecret = "{other[1]}"\ndomains = ["{DEFAULT_HOST}"]\n\n'
    )
    with Lab(tmp_path / "lab", edges=2) as lab:
        large = lab.make_files(4000, 1024)
        (small,) = lab.make_files(1, 1024, prefix="/small/")
        with (
            start_service(tmp_path, lab.nodes_toml(), extra=extra) as service,
            client_for(service) as client,
            Client(service.url, *other) as second,
        ):
            first = client.prefetch([url_of(p) for p in large])
            view = second.wait(second.prefetch([url_of(small)]), timeout=60)
            progress = client.task(first, limit=1)["counts"]
            assert view["status"] == 0 and view["counts"]["succeeded"] == 3
            to_do = progress["waiting"] + progress["pending"] + progress["running"]
            assert to_do > 6000, progress  # of 12,000 items (4,000 URLs on 3 nodes)
            assert client.wait(first, timeout=120)["counts"]["succeeded"] == 12000


def test_a_users_item_on_a_slow_node_waits_for_one_of_another_users_items_there_not_all(tmp_path: Path) -> None:
    """A node's lane gives out what it holds by turns among the users (engine/turns.py): a second user's item
    on a slow node (0.2 s an answer, 2 at a time) that the lane holds behind 30 of the first user's goes at the
    lane's next free worker; before, in the order claimed, after all of them (14 or more of the first user's
    requests reached the node between the second user's submission and its own request). Beside a real nginx
    edge; both tasks end with every item succeeded."""
    other = ("other", "o" * 32)
    extra = (
        "[engine]\nconcurrency = 16\n\n"
        f'[[users]]\nname = "{other[0]}"\nsecret = "{other[1]}"\ndomains = ["{DEFAULT_HOST}"]\n\n'
    )
    with (
        Lab(tmp_path / "lab", edges=1, shield=False) as lab,
        FaultServer(Respond(200, body=b"x" * 100, delay=0.2)) as slow,
    ):
        large = lab.make_files(60, 1024)
        (small,) = lab.make_files(1, 1024, prefix="/small/")
        nodes = lab.nodes_toml() + f'\n[[nodes]]\nname = "slow"\nurl = "{slow.url}"\nconcurrency = 2\n'
        with (
            start_service(tmp_path, nodes, extra=extra) as service,
            client_for(service) as client,
            Client(service.url, *other) as second,
        ):
            first = client.prefetch([url_of(p) for p in large])
            slow.wait_for_requests(4, timeout=30)  # the slow node's lane holds its share of the first user's
            before = len(slow.requests)
            view = second.wait(second.prefetch([url_of(small)]), timeout=60)
            assert view["status"] == 0 and view["counts"]["succeeded"] == 2
            paths = [request.path for request in slow.requests]
            ahead = paths[before : paths.index(small)]
            assert len(ahead) < 8, ahead  # the 2 under way when it was submitted, then its turn
            assert client.wait(first, timeout=60)["counts"]["succeeded"] == 120


def test_a_node_answering_503_to_every_request_is_told_in_the_log(tmp_path: Path, lab: Lab) -> None:
    """A shield whose origin answers 503: each request fails, retried, and the log had only the task's lines.
    Now a warning names the node and counts its 503s (the first at once, the rest at the stop here, before the
    minute), without the URL; the edges, not asked, have none."""
    extra = "[engine]\nbackoff_base = 0.01\nbackoff_max = 0.02\nmax_attempts = 3\n"
    with start_service(tmp_path, lab.nodes_toml(), extra=extra) as service, client_for(service) as client:
        taskid = client.prefetch([url_of("/status/503/told-a"), url_of("/status/503/told-b")])
        assert client.wait(taskid, timeout=60)["status"] == 2
    lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.strip().startswith("{")]
    told = [line["message"] for line in lines if line["message"].startswith("node ") and line["level"] == "warning"]
    assert told[0] == "node shield-1: 1 HTTP 503", told
    assert re.fullmatch(r"node shield-1 in the last \d+ s: 5 HTTP 503", told[-1]), told
    assert len(told) == 2 and not any("told-" in line for line in told), told
