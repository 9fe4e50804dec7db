"""Native endpoints, the Python client (sync and async) and /metrics against a running service."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewarm.client import AsyncClient, Client, ClientError
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import FaultServer, Respond, always
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, start_service

from .support import Receiver

pytestmark = pytest.mark.integration


def urls(lab: Lab, count: int, prefix: str) -> list[str]:
    return [f"http://{DEFAULT_HOST}{p}" for p in lab.make_files(count, 64, prefix=prefix)]


def native_headers(client: Client) -> dict[str, str]:
    return {"X-Edgewarm-Username": client.username, "X-Edgewarm-Signature": client.signature()}


def test_list_filters_and_lookup(client: Client, lab: Lab) -> None:
    """/v1/tasks filters by kind, status and URL keyword; /v1/tasks/lookup returns only the user's known ids."""
    ok = client.prefetch(urls(lab, 2, "/native-list/"))
    bad = client.prefetch([f"http://{DEFAULT_HOST}/native-list/none.bin"])
    client.wait(ok, timeout=30)
    client.wait(bad, timeout=30)
    failed = client.tasks(status=2, url="native-list")["tasks"]
    assert [t["taskid"] for t in failed] == [bad]
    assert {t["taskid"] for t in client.tasks(url="native-list")["tasks"]} == {ok, bad}
    assert client.tasks(kind="refresh", url="native-list")["tasks"] == []
    found = client.lookup([ok, "00000000-0000-4000-8000-000000000000", bad.replace("-", ""), "junk"])["tasks"]
    assert [t["taskid"] for t in found] == [ok, bad]


def test_cancel_stops_pending_items_and_ends_the_task_as_failed(service: ServiceProcess, lab: Lab) -> None:
    """Cancelling a task whose URLs are slow: it ends failed with reason "cancelled", pending items say so."""
    slow = [f"http://{DEFAULT_HOST}/slow/c{i}.bin" for i in range(40)]
    for u in slow:
        lab.write_file(u.split(DEFAULT_HOST)[1], b"x" * 4096)  # half a second each at the /slow/ rate
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        taskid = client.prefetch(slow)
        view = client.cancel(taskid)
        assert view["reason"] == "cancelled"
        final = client.wait(taskid, timeout=60)
        items = client.task(taskid)["items"]
        with pytest.raises(ClientError) as again:
            client.cancel(taskid)
    assert final["status"] == 2 and final["reason"] == "cancelled"
    assert any(i["error"] == "cancelled" for i in items)
    assert final["counts"]["succeeded"] + final["counts"]["failed"] == final["total"]
    assert again.value.code == 1


def test_quota_counts_todays_urls(client: Client, lab: Lab) -> None:
    """/v1/quota: used grows by the URLs of a submission, left shrinks by as many."""
    before = client.quota()
    client.prefetch(urls(lab, 3, "/native-quota/"))
    after = client.quota()
    assert after["urls"]["used"] == before["urls"]["used"] + 3
    assert after["urls"]["left"] == before["urls"]["left"] - 3


def test_wait_endpoint_answers_when_the_task_ends(client: Client, lab: Lab) -> None:
    """The long-poll answers with the final state; a short timeout answers 'in progress' without waiting long."""
    taskid = client.prefetch(urls(lab, 5, "/native-wait/"))
    view = client.wait(taskid, timeout=30)
    assert view["status"] == 0 and view["counts"]["succeeded"] == 15
    assert set(view["nodes"]) == {"shield-1", "edge-1", "edge-2"}


def test_native_errors_have_http_status_and_jd_code(service: ServiceProcess) -> None:
    """A bad signature is 401 with code 7; an unknown task is 404 with code 1."""
    with Client(service.url, DEMO_USER, "wrong") as bad, pytest.raises(ClientError) as refused:
        bad.quota()
    assert (refused.value.http_status, refused.value.code) == (401, 7)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client, pytest.raises(ClientError) as missing:
        client.task("00000000-0000-4000-8000-000000000000")
    assert (missing.value.http_status, missing.value.code) == (404, 1)


def test_cancelling_an_ended_task_is_a_conflict_not_a_retry_later(client: Client, lab: Lab) -> None:
    """Cancel on a task that has already ended: 409 with code 1 and the reason (not 429, which clients retry)."""
    taskid = client.prefetch(urls(lab, 1, "/native-cancel-ended/"))
    assert client.wait(taskid, timeout=30)["status"] == 0
    answer = httpx.post(f"{client.base_url}/v1/tasks/{taskid}/cancel", headers=native_headers(client), timeout=10)
    assert answer.status_code == 409, answer.text
    assert answer.json() == {"code": 1, "error": f"task {taskid} has already ended"}
    assert "retry-after" not in answer.headers
    with pytest.raises(ClientError) as refused:
        client.cancel(taskid)
    assert (refused.value.http_status, refused.value.code) == (409, 1)
    cancel = httpx.get(f"{client.base_url}/openapi.json", timeout=10).json()["paths"]["/v1/tasks/{taskid}/cancel"]
    assert "409" in cancel["post"]["responses"]


def test_async_client_does_what_the_sync_one_does(service: ServiceProcess, lab: Lab) -> None:
    """AsyncClient: prefetch, query, wait, and a typed error carrying the JD code."""
    targets = urls(lab, 2, "/native-async/")

    async def go() -> tuple[dict[str, object], dict[str, object], int]:
        async with AsyncClient(service.url, DEMO_USER, DEMO_SECRET) as client:
            taskid = await client.prefetch(targets)
            view = await client.wait(taskid, timeout=30)
            answer = await client.query(taskid)
            try:
                await client.prefetch(["http://not-mine.test/x"])
            except ClientError as exc:
                return view, answer, exc.code
            raise AssertionError("a foreign domain was accepted")

    view, answer, code = asyncio.run(go())
    assert view["status"] == 0 and answer["status"] == 0 and code == 18


def test_metrics_count_a_finished_task(service: ServiceProcess, client: Client, lab: Lab) -> None:
    """/metrics parses with prometheus_client; fetch and item counters grow by exactly the task's items."""

    def sample() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = sample()
    taskid = client.prefetch(urls(lab, 4, "/native-metrics/"))
    assert client.wait(taskid, timeout=30)["status"] == 0
    after = sample()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for node in ("shield-1", "edge-1", "edge-2"):
        assert grew("edgewarm_fetches_total", node=node, action="warm", outcome="succeeded") == 4
        assert grew("edgewarm_fetch_seconds_count", node=node) == 4
        assert grew("edgewarm_fetched_bytes_total", node=node) == 4 * 64
    assert grew("edgewarm_items_finished_total", state="succeeded") == 12
    assert grew("edgewarm_tasks_submitted_total", kind="prefetch") == 1
    assert after[("edgewarm_queue_depth", ())] >= 0
    assert httpx.get(f"{service.url}/readyz", timeout=10).json()["ok"] is True


def test_a_url_resubmitted_while_pending_is_fetched_once_per_node(client: Client, lab: Lab) -> None:
    """Two tasks with the same slow URL at once: both succeed, edgewarm fetched it once per node."""
    lab.write_file("/slow/dedupe/big.bin", b"z" * 16_384)  # served at 8 KiB/s: about 2 s a fetch
    url = f"http://{DEFAULT_HOST}/slow/dedupe/big.bin"
    first = client.prefetch([url])
    second = client.prefetch([url])
    assert first != second
    assert client.wait(first, timeout=60)["status"] == 0
    assert client.wait(second, timeout=60)["status"] == 0

    def fetches(node_name: str) -> int:
        return [r.uri for r in lab.requests(lab.node(node_name))].count("/slow/dedupe/big.bin")

    for edge in lab.edges:
        lab.wait_for_requests(edge, 1, uri="/slow/dedupe/big.bin")
        assert fetches(edge.name) == 1, edge.name
    # The shield: edgewarm's one warm, then each edge filling itself from it.
    assert fetches("shield-1") == 1 + len(lab.edges)
    assert fetches("origin") == 1


def webhook_when(client: Client, taskid: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30) -> Any:
    """The task's `webhook` object, polled until `done` holds for it (or the last one seen after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        webhook = client.task(taskid, limit=0)["webhook"]
        if done(webhook) or time.monotonic() > deadline:
            return webhook
        time.sleep(0.02)


def test_the_task_view_shows_its_webhook_delivery(tmp_path: Path) -> None:
    """GET /v1/tasks/{id} has `webhook` when the task has a callback URL: pending with the attempts and the last
    error while retried, then failed after max_attempts; delivered on a 2xx. The query (a token, maybe) is
    redacted. No callback URL: no `webhook`. The JD query answer and the webhook body do not change."""
    extra = '[webhooks]\nallowed_hosts = ["127.0.0.1"]\nmax_attempts = 3\nbackoff_base = 1.0\n'
    always_500, always_200 = Receiver(fail_first=1_000), Receiver()
    with FaultServer(always(Respond(200, body=b"ok"))) as node, always_500 as failing, always_200 as accepting:
        nodes = f'[[nodes]]\nname = "rec"\nurl = "{node.url}"\n'
        with (
            start_service(tmp_path, nodes, extra=extra) as service,
            Client(service.url, DEMO_USER, DEMO_SECRET) as client,
        ):
            failed = client.prefetch(["http://www.example.test/hook/a"], callback_url=f"{failing.url}?token=s3cret")
            delivered = client.prefetch(["http://www.example.test/hook/b"], callback_url=accepting.url)
            plain = client.prefetch(["http://www.example.test/hook/c"])
            for taskid in (failed, delivered, plain):
                assert client.wait(taskid, timeout=30)["status"] == 0
            retried = webhook_when(client, failed, lambda w: w["attempts"] >= 1)
            final = webhook_when(client, failed, lambda w: w["state"] != "pending")
            ok = webhook_when(client, delivered, lambda w: w["state"] != "pending")
            ended = client.task(failed)
            raw = httpx.get(f"{service.url}/v1/tasks/{failed}", headers=native_headers(client), timeout=10).text
            without = client.task(plain)
            jd_answer = client.query(failed)
    hook = {"url": f"{failing.url}?token=***", "error": "HTTP 500", "next_attempt_at": None}
    due = retried["next_attempt_at"]
    assert retried == {**hook, "state": "pending", "attempts": retried["attempts"], "next_attempt_at": due}
    assert retried["attempts"] >= 1
    assert datetime.fromisoformat(due) > datetime.fromisoformat(ended["finished_at"])  # the backoff's end
    assert final == {**hook, "state": "failed", "attempts": 3}
    assert len(failing.calls) == 3
    assert ended["webhook"] == final and "s3cret" not in raw
    assert ok == {"url": accepting.url, "state": "delivered", "attempts": 1, "error": None, "next_attempt_at": None}
    assert "webhook" not in without
    assert set(jd_answer) == {"taskid", "status", "msg"}
    assert b"webhook" not in accepting.calls[0][0] and b"s3cret" not in accepting.calls[0][0]


def test_a_wait_whose_caller_hung_up_stops_and_a_user_has_at_most_50_open(
    service: ServiceProcess, client: Client, lab: Lab
) -> None:
    """Long-polls went on asking the store for their whole timeout after their callers had gone: a user could
    open thousands (each socket closed at once) and slow every other user's warms. A wait now ends when its
    caller hangs up, and a user has at most WAITS_PER_USER open: more answer at once, the task as it is."""
    import socket

    from edgewarm.service import WAITS_PER_USER

    def waits_open() -> float:
        text = httpx.get(f"{service.url}/metrics", timeout=10).text
        found = [s.value for f in text_string_to_metric_families(text) for s in f.samples]
        names = [s.name for f in text_string_to_metric_families(text) for s in f.samples]
        return found[names.index("edgewarm_api_waits_open")]

    def until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    path = lab.make_files(1, 20 * 8192, prefix="/slow/hung-up/")[0]  # 20 s on the shield at the /slow/ rate
    taskid = client.prefetch([f"http://{DEFAULT_HOST}{path}"])
    host, port = service.url.removeprefix("http://").split(":")
    head = (
        f"GET /v1/tasks/{taskid}/wait?timeout=30 HTTP/1.1\r\nHost: {host}\r\n"
        f"X-Edgewarm-Username: {client.username}\r\nX-Edgewarm-Signature: {client.signature()}\r\n\r\n"
    ).encode()
    extra = 5
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(WAITS_PER_USER + extra)]
    try:
        for s in sockets:
            s.sendall(head)
        until(lambda: waits_open() == WAITS_PER_USER, 10, "the user's waits open")
        answered = []
        for s in sockets:
            s.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                answered.append(s.recv(65536))
        assert len(answered) == extra, answered
        assert all(a.startswith(b"HTTP/1.1 200 ") and b'"status":1' in a for a in answered), answered
        assert waits_open() == WAITS_PER_USER  # still open: their callers wait
    finally:
        for s in sockets:
            s.close()
    until(lambda: waits_open() == 0, 5, "the waits of callers that hung up ended")
    # Hung up the moment it was sent: the wait ends as soon as it looks.
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head)
    until(lambda: waits_open() == 0, 5, "the waits of callers that hung up at once ended")
    assert client.task(taskid)["status"] == 1  # it ran all along: the waits saw it as it was
    client.cancel(taskid)


def test_an_idle_connection_is_kept_as_long_as_a_silent_one_may_wait(service: ServiceProcess) -> None:
    """uvicorn closed a connection idle for 5 s: a pooled client posting on it then got EOF (README: a
    connection is closed once silent for `[api] request_timeout`, 60 s). Idle 6 s, it still answers."""
    import socket

    host, port = service.url.removeprefix("http://").split(":")
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def answer(s: socket.socket) -> bytes:
        got = b""
        while b'{"ok":true}' not in got:  # bounded by the socket's timeout
            chunk = s.recv(65536)
            if not chunk:
                break  # closed
            got += chunk
        return got

    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        assert answer(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(6.0)
        s.sendall(request)
        assert answer(s).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_wait_on_a_silent_server_ends_about_its_timeout_not_10_s_after(flavour: str) -> None:
    """A server that keeps silent past the long poll it was asked (frozen, or swamped): `wait(timeout=1)` gives
    up about a second after its timeout (it waited 10 s more: the poll's own margin, meant for polls that
    others follow), with a clear error."""
    taskid = "0" * 32
    with FaultServer(always(Respond(200, delay=30))) as frozen:
        began = time.monotonic()
        with pytest.raises(ClientError) as raised:
            if flavour == "sync":
                with Client(frozen.url, DEMO_USER, DEMO_SECRET) as client:
                    client.wait(taskid, timeout=1)
            else:

                async def go() -> None:
                    async with AsyncClient(frozen.url, DEMO_USER, DEMO_SECRET) as client:
                        await client.wait(taskid, timeout=1)

                asyncio.run(go())
        took = time.monotonic() - began
    assert 1.5 < took < 5, took
    # httpx's words were "timed out" (the sync client's) or none (the async one's): both say what it means
    assert str(raised.value).endswith("ReadTimeout: it kept silent past the call's timeout"), raised.value
