"""Issue #7, part 2: attacks. Forged and replayed signatures, other people's task ids, header injection through
a URL, attempts to make edgewarm connect elsewhere than a configured node, oversized bodies, and secrets or
signatures leaking into logs or answers.

The signature and task-id tests run the app in process on a fixed clock; the others run `edgewarm serve` as a
process against `FaultServer` nodes that record every byte they receive.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from edgewarm.auth import sign
from edgewarm.config import parse_config
from edgewarm.models import ItemAction, NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.testing.faults import FaultServer, Respond
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER
from edgewarm.urls import escape_cases

from .support import (
    DAY,
    NOW,
    OTHER,
    OTHER_SECRET,
    SECRET,
    USER,
    AsyncApi,
    base_config,
    engine_rig,
    node_toml,
    real_signature,
    running_api,
    signature,
    sqlite_db,
    start_service,
    wait_until,
)

JD_ROUTES = ("/api/prefetch", "/api/refresh", "/api/prefetchQuery", "/api/refreshQuery")
URL = "http://www.example.test/a"


def jd_fields(path: str, taskid: str | None = None) -> dict[str, Any]:
    """What a JD route needs beside the credentials (a real-looking task id for the queries)."""
    if path == "/api/prefetch":
        return {"publish_urls": [URL]}
    if path == "/api/refresh":
        return {"instances": [URL], "type": "file"}
    return {"taskid": taskid or str(uuid.uuid4())}


async def native_calls(api: AsyncApi, user: str, sig: str, taskid: str) -> list[httpx.Response]:
    """One call of every native route with these credentials."""
    headers = {"X-Edgewarm-Username": user, "X-Edgewarm-Signature": sig}
    client = api.client
    return [
        await client.get(f"/v1/tasks/{taskid}", headers=headers),
        await client.get(f"/v1/tasks/{taskid}/wait", params={"timeout": 0}, headers=headers),
        await client.post(f"/v1/tasks/{taskid}/cancel", headers=headers),
        await client.get("/v1/tasks", headers=headers),
        await client.post("/v1/tasks/lookup", json={"taskids": [taskid]}, headers=headers),
        await client.get("/v1/quota", headers=headers),
    ]


async def submitted(api: AsyncApi, user: str = USER, secret: str = SECRET, path: str = "/api/prefetch") -> str:
    fields = jd_fields(path)
    if user == OTHER:
        fields = {
            k: [u.replace("www.example.test", "www.other.test") for u in v] if isinstance(v, list) else v
            for k, v in fields.items()
        }
    answer = await api.jd(path, {"username": user, "signature": signature(user, secret), **fields})
    assert answer["status"] == 0, answer
    taskid: str = answer["taskid"]
    return taskid


# -- signatures ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("days", "said"), [(-2, "20240308"), (3, "20240313"), (-8, "20240302"), (-9, None), (-365, None)]
)
async def test_a_signature_of_a_day_near_the_window_says_which_day_it_is(days: int, said: str | None) -> None:
    """A caller whose clock or time zone is off by days got a bare "signature incorrect": now the refusal
    names the day its signature is for, and the days this server takes (in its time zone); a signature of
    no day near them (or of no day at all) is refused as before, saying nothing more."""
    async with running_api(parse_config(base_config())) as api:
        off = sign(USER, SECRET, DAY + timedelta(days=days))
        answer = await api.jd("/api/prefetch", {"username": USER, "signature": off, "publish_urls": ["http://x.test/"]})
    if said is None:
        assert answer == {"status": 7, "msg": "signature incorrect"}
    else:
        assert answer == {
            "status": 7,
            "msg": f"signature incorrect: it is the signature of {said}; this server takes those of 20240309 to "
            "20240311 (days in Asia/Shanghai)",
        }


FORGED = {
    "two days ago": sign(USER, SECRET, DAY - timedelta(days=2)),
    "three days ago": sign(USER, SECRET, DAY - timedelta(days=3)),
    "in two days": sign(USER, SECRET, DAY + timedelta(days=2)),
    "a year ago": sign(USER, SECRET, DAY - timedelta(days=365)),
    "another user's (valid for them)": sign(OTHER, OTHER_SECRET, DAY),
    "another secret": sign(USER, OTHER_SECRET, DAY),
    "the secret itself": SECRET,
    "md5 of the secret alone": hashlib.md5(SECRET.encode()).hexdigest(),
    "date in another format": hashlib.md5(f"2024-03-10{USER}{SECRET}".encode()).hexdigest(),
    "truncated": signature()[:31],
    "one char longer": signature() + "0",
    "with a 0x prefix": "0x" + signature(),
    "with spaces inside": signature()[:16] + " " + signature()[16:],
    "all zeros": "0" * 32,
}


@pytest.mark.anyio
@pytest.mark.parametrize("forged", list(FORGED.values()), ids=list(FORGED))
async def test_forged_signatures_are_refused_on_every_route(forged: str) -> None:
    """Signatures of another day (2+ off), user or secret, or mangled: code 7 on JD routes, 401 on native ones."""
    async with running_api(parse_config(base_config())) as api:
        taskid = await submitted(api)
        before = api.census()
        for path in JD_ROUTES:
            answer = await api.jd(path, {"username": USER, "signature": forged, **jd_fields(path, taskid)})
            assert answer["status"] == 7 and answer["msg"].startswith("signature incorrect"), (path, answer)
        for response in await native_calls(api, USER, forged, taskid):
            assert response.status_code == 401, (response.request.url, response.text)
            assert response.json()["code"] == 7
        assert api.census() == before
        task = await api.store.get_task(taskid)
        assert task is not None and task.reason is None  # the cancel did not go through


@pytest.mark.anyio
async def test_a_users_valid_signature_does_not_work_under_another_name() -> None:
    """USER's good signature sent as OTHER (and the reverse) is code 7; a name in another case is unknown (20)."""
    async with running_api(parse_config(base_config())) as api:
        for user, sig in ((OTHER, signature()), (USER, signature(OTHER, OTHER_SECRET))):
            answer = await api.jd("/api/prefetch", {"username": user, "signature": sig, **jd_fields("/api/prefetch")})
            assert answer["status"] == 7
        answer = await api.jd(
            "/api/prefetch",
            {"username": USER.upper(), "signature": sign(USER.upper(), SECRET, DAY), **jd_fields("/api/prefetch")},
        )
        assert answer["status"] == 20


@pytest.mark.anyio
async def test_yesterdays_signature_replayed_after_the_window_is_refused() -> None:
    """A signature made yesterday works today (the window), and is refused from tomorrow on, on every route."""
    clock = {"now": NOW}
    yesterdays = sign(USER, SECRET, DAY - timedelta(days=1))
    async with running_api(parse_config(base_config()), clock=lambda: clock["now"]) as api:
        body = {"username": USER, "signature": yesterdays, **jd_fields("/api/prefetch")}
        first = await api.jd("/api/prefetch", body)
        assert first["status"] == 0
        taskid = first["taskid"]
        clock["now"] = NOW + 86_400  # the next day: the captured signature is now two days old
        before = api.census()
        for path in JD_ROUTES:
            answer = await api.jd(path, {"username": USER, "signature": yesterdays, **jd_fields(path, taskid)})
            assert answer["status"] == 7, (path, answer)
        for response in await native_calls(api, USER, yesterdays, taskid):
            assert response.status_code == 401
        assert api.census() == before


@pytest.mark.anyio
async def test_the_window_turns_at_midnight_in_shanghai() -> None:
    """With window 0, the signature of the 9th works at 23:59:59 Shanghai and is refused one second later."""
    before_midnight = datetime(2024, 3, 9, 15, 59, 59, tzinfo=UTC).timestamp()  # 23:59:59 in Shanghai
    clock = {"now": before_midnight}
    ninth = sign(USER, SECRET, DAY - timedelta(days=1))
    config = parse_config(base_config(api={"signature_window_days": 0}))
    async with running_api(config, clock=lambda: clock["now"]) as api:
        body = {"username": USER, "signature": ninth, **jd_fields("/api/prefetch")}
        assert (await api.jd("/api/prefetch", body))["status"] == 0
        clock["now"] = before_midnight + 1
        assert (await api.jd("/api/prefetch", body))["status"] == 7


# -- task ids -------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_foreign_unknown_expired_and_wrong_kind_task_ids_answer_alike() -> None:
    """Another user's id, an unknown one, one whose task was deleted, one of the other kind: the same answer."""
    async with running_api(parse_config(base_config())) as api:
        foreign = await submitted(api, OTHER, OTHER_SECRET)
        refresh = await submitted(api, path="/api/refresh")
        expired = await submitted(api)
        sqlite_db(api.store).execute("DELETE FROM tasks WHERE id = ?", (expired,))  # as a retention job would
        candidates = {
            "foreign": foreign,
            "foreign, 32 hex": uuid.UUID(foreign).hex,
            "foreign, upper case": foreign.upper(),
            "unknown": str(uuid.uuid4()),
            "expired": expired,
            "refresh id on prefetchQuery": refresh,
            "malformed": "not-a-task-id",
            "path traversal": "../../etc/passwd",
            "SQL": "' OR '1'='1",
        }
        answers = {}
        for name, taskid in candidates.items():
            response = await api.client.post(
                "/api/prefetchQuery", json={"username": USER, "signature": signature(), "taskid": taskid}
            )
            answers[name] = (response.status_code, response.content)
        assert len(set(answers.values())) == 1, answers
        assert orjson.loads(next(iter(answers.values()))[1]) == {"status": 1, "msg": "task not found"}

        native = {}
        for name, taskid in candidates.items():
            if name in ("refresh id on prefetchQuery", "path traversal"):
                continue  # the native routes show every kind; a '/' in the path is another route
            for response in (await native_calls(api, USER, signature(), taskid))[:3]:
                native.setdefault(response.request.url.path.rsplit("/", 1)[-1], set()).add(
                    (response.status_code, response.content)
                )
        for route, seen in native.items():
            assert len(seen) == 1 and next(iter(seen))[0] == 404, (route, seen)
        headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
        found = await api.client.post("/v1/tasks/lookup", json={"taskids": list(candidates.values())}, headers=headers)
        assert [t["taskid"] for t in found.json()["tasks"]] == [refresh]
        listed = await api.client.get("/v1/tasks", headers=headers)
        assert foreign not in {t["taskid"] for t in listed.json()["tasks"]}
        other = await api.store.get_task(foreign)
        assert other is not None and other.reason is None  # the cancel attempts did nothing


# -- header injection: raw bytes at a node ------------------------------------------------------------------------

ALLOWED_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "content-length", "connection"}


def assert_clean_head(head: bytes) -> list[tuple[str, str]]:
    """A request head with no CR or LF out of place; returns its header fields."""
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, head
        assert all(0x20 <= byte < 0x7F for byte in line), head
    assert re.fullmatch(rb"(GET|PURGE|BAN) /\S* HTTP/1\.1", lines[0]), head
    fields = []
    for line in lines[1:]:
        name, sep, value = line.decode().partition(": ")
        assert sep and re.fullmatch(r"[A-Za-z-]+", name), head
        fields.append((name.lower(), value))
    names = [n for n, _ in fields]
    assert set(names) <= ALLOWED_HEADERS, head
    assert names.count("host") == 1, head
    return fields


INJECTIONS_REFUSED = [
    "http://www.example.test/a\r\nX-Injected: yes",
    "http://www.example.test/a\nX-Injected: yes",
    "http://www.example.test/a\rX-Injected: yes",
    "http://www.example.test/a HTTP/1.1\r\nHost: evil.test\r\n\r\nGET /b",
    "http://www.example.test\r\nX-Injected: yes/a",
    "http://www.example.test/a\u0085X-Injected: yes",
    "http://www.example.test/a\u2028X-Injected: yes",
    "http://www.example.test/a\x00",
]
INJECTIONS_ENCODED = [
    "http://www.example.test/enc/%0d%0aX-Injected:%20yes",
    "http://www.example.test/enc/%0D%0A%0D%0AGET%20/smuggled%20HTTP/1.1",
    "http://www.example.test/enc/q?x=%0d%0aX-Injected:%20yes",
    "http://www.example.test/enc/%E2%80%A8",
]


@pytest.fixture
def node() -> Iterator[FaultServer]:
    with FaultServer(Respond(200, body=b"cached body\n")) as server:
        yield server


@pytest.mark.integration
def test_no_cr_or_lf_from_a_url_ever_reaches_a_node(tmp_path: Path, node: FaultServer) -> None:
    """URLs with raw CR/LF are refused (17); encoded ones reach the node byte for byte, one clean head each."""
    with start_service(tmp_path, node_toml("rec", node.url)) as service:
        sig = real_signature(DEMO_USER, DEMO_SECRET)
        with httpx.Client(base_url=service.url, timeout=30) as http:
            for bad in INJECTIONS_REFUSED:
                for body in (
                    {"username": DEMO_USER, "signature": sig, "publish_urls": [bad]},
                    {"username": DEMO_USER, "signature": sig, "instances": [bad], "type": "file"},
                ):
                    path = "/api/prefetch" if "publish_urls" in body else "/api/refresh"
                    answer = http.post(path, json=body).json()
                    assert answer["status"] == 17, (bad, answer)
                form = f"username={DEMO_USER}&signature={sig}&publish_urls=" + bad.replace("\r", "%0D").replace(
                    "\n", "%0A"
                ).replace(" ", "%20")
                answer = http.post(
                    "/api/prefetch", content=form, headers={"content-type": "application/x-www-form-urlencoded"}
                ).json()
                assert answer["status"] == 17, (bad, answer)
            answer = http.post(
                "/api/prefetch",
                json={"username": DEMO_USER, "signature": sig, "publish_urls": INJECTIONS_ENCODED, "refresh": True},
            ).json()
            assert answer["status"] == 0, answer
            taskid = answer["taskid"]
            headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": sig}
            view = http.get(f"/v1/tasks/{taskid}/wait", params={"timeout": 30}, headers=headers).json()
    assert view["status"] == 0, view
    requests = node.requests
    # A GET each, and a PURGE of each case of its escapes (escape_cases): nothing else ever arrived.
    paths = [u.removeprefix("http://www.example.test") for u in INJECTIONS_ENCODED]
    assert len(requests) == sum(1 + len(escape_cases(p)) for p in paths)
    targets = set()
    for request in requests:
        fields = assert_clean_head(request.head)
        assert dict(fields)["host"] == "www.example.test"
        targets.add(request.target)
        assert b"X-Injected" not in request.head.split(b"\r\n", 1)[1], request.head
    assert targets == {spelled for p in paths for spelled in escape_cases(p)}


@pytest.mark.anyio
async def test_a_crlf_url_planted_in_the_store_never_reaches_a_node(node: FaultServer) -> None:
    """Defence in depth: a CRLF URL written straight into the store (past the API) fails without a request."""
    planted = ["http://www.example.test/a\r\nX-Injected: yes", "http://www.example.test/b c", "http://127.0.0.1/x"]
    nodes = [{"name": "rec", "url": node.url}]
    async with engine_rig(nodes, {"max_attempts": 2}) as rig:
        items = tuple(NewItem(seq, url, "rec", ItemAction.WARM, 0) for seq, url in enumerate(planted))
        quota = QuotaCharge("20240310", len(planted), 0, 10**9, 10**9)
        task = await rig.store.create_task(NewTask(str(uuid.uuid4()), USER, TaskKind.PREFETCH, NOW, items, quota))
        rig.engine.wake()
        ended, outcomes = await rig.wait(task.id)
    assert ended.status == 2
    assert all(i.state.value == "failed" and i.error for i in outcomes), outcomes
    assert node.connections == 0 and node.requests == []


# -- connecting anywhere but a configured node ------------------------------------------------------------------


@pytest.mark.integration
def test_edgewarm_connects_only_to_configured_nodes(tmp_path: Path) -> None:
    """URLs naming a listening loopback port go only to the configured node: the listener sees no connection."""
    with FaultServer() as node, FaultServer() as trap:
        domains = ("www.example.test", "localhost", "*.localhost")
        port = trap.port
        with start_service(tmp_path, node_toml("node-1", node.url), domains=domains) as service:
            sig = real_signature(DEMO_USER, DEMO_SECRET)
            with httpx.Client(base_url=service.url, timeout=30) as http:

                def call(path: str, **fields: Any) -> dict[str, Any]:
                    answer: dict[str, Any] = http.post(
                        path, json={"username": DEMO_USER, "signature": sig, **fields}
                    ).json()
                    return answer

                for refused, code in [
                    (f"http://127.0.0.1:{port}/x", 17),
                    (f"http://[::1]:{port}/x", 17),
                    (f"http://[::ffff:127.0.0.1]:{port}/x", 17),
                    (f"http://2130706433:{port}/x", 17),
                    (f"http://localhost@127.0.0.1:{port}/x", 17),
                    (f"http://www.example.test@localhost:{port}/x", 17),
                    (f"http://evil.test:{port}/x", 18),
                    (f"http://localhost.evil.test:{port}/x", 18),
                ]:
                    assert call("/api/prefetch", publish_urls=[refused])["status"] == code, refused
                owned = [
                    f"http://localhost:{port}/a",
                    f"http://www.example.test:{port}/b",
                    f"http://x.localhost:{port}/c",
                ]
                taskids = [
                    call("/api/prefetch", publish_urls=owned)["taskid"],
                    call("/api/prefetch", publish_urls=[f"http://localhost:{port}/r"], refresh=True)["taskid"],
                    call("/api/refresh", instances=[f"http://localhost:{port}/f"], type="file")["taskid"],
                    call("/api/refresh", instances=[f"http://localhost:{port}/"], type="dir")["taskid"],
                ]
                headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": sig}
                for taskid in taskids:
                    view = http.get(f"/v1/tasks/{taskid}/wait", params={"timeout": 30}, headers=headers).json()
                    assert view["status"] == 0, view
        hosts = {r.header("Host") for r in node.requests}
    assert trap.connections == 0 and trap.requests == []
    assert {f"localhost:{port}", f"www.example.test:{port}", f"x.localhost:{port}"} <= hosts
    assert {r.method for r in node.requests} == {"GET", "PURGE"}


# -- bodies over the limit ----------------------------------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.mark.integration
def test_oversized_bodies_get_413_and_leave_nothing(tmp_path: Path, node: FaultServer) -> None:
    """Bodies over max_body_bytes (announced, chunked, or lying about their length) get 413; the service goes on."""
    extra = f"[api]\nmax_body_bytes = {LIMIT}\n"
    with start_service(tmp_path, node_toml("n", node.url), extra=extra) as service:
        sig = real_signature(DEMO_USER, DEMO_SECRET)
        big = orjson.dumps({"username": DEMO_USER, "signature": sig, "publish_urls": "x" * LIMIT})
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=service.url, timeout=30) as http:
            for path in (*JD_ROUTES, "/v1/tasks/lookup"):
                refused = http.post(path, content=big, headers=headers)
                assert refused.status_code == 413, path
                # Its charset said, as in every other answer (a tester found it missing here alone).
                assert refused.headers["content-type"] == "application/json; charset=utf-8", path

                def chunks() -> Iterator[bytes]:
                    for start in range(0, len(big), 4096):
                        yield big[start : start + 4096]

                assert http.post(path, content=chunks(), headers=headers).status_code == 413, path
            # Content-Length that is not a number, or says more than the limit while little is sent.
            for length in ("abc", "-1", str(LIMIT + 1), "99999999999999999999"):
                status = raw_post(service.port, "/api/prefetch", b"{}", length)
                assert status in (400, 413), (length, status)
            # A client that sends the whole body before it reads the answer (Python's urllib and http.client, which
            # requests builds on) gets the 413 too, 3 times of 3 (before: a connection reset, most times).
            huge = big * 30  # about 2 MB
            for _ in range(3):
                assert raw_post(service.port, "/api/prefetch", huge, str(len(huge))) == 413
                try:
                    urllib.request.urlopen(urllib.request.Request(f"{service.url}/api/prefetch", data=huge), timeout=30)
                except urllib.error.HTTPError as answered:
                    assert answered.code == 413
                else:
                    raise AssertionError("answered, not refused")
            exactly = orjson.dumps({"username": DEMO_USER, "signature": sig, "publish_urls": [URL]})
            exactly += b" " * (LIMIT - len(exactly))
            assert http.post("/api/prefetch", content=exactly, headers=headers).json()["status"] == 0
            assert http.get("/healthz").status_code == 200
        db = sqlite3.connect(tmp_path / "edgewarm.db")
        try:
            assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1
        finally:
            db.close()


def raw_post(port: int, path: str, body: bytes, content_length: str) -> int:
    """POST with a hand-written Content-Length; the HTTP status answered (0 when the server just closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: edgewarm\r\nContent-Type: application/json\r\n"
            f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        answer = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answer += chunk
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return int(match.group(1)) if match else 0


# -- secrets and signatures never shown ---------------------------------------------------------------------------


@pytest.mark.integration
def test_secrets_and_signatures_never_appear_in_logs_or_answers(tmp_path: Path, node: FaultServer) -> None:
    """Debug logs, good and bad calls, SIGHUPs: no log line and no answer carries a secret or a signature."""
    other_secret = "5ecret-of-the-second-user-0123456"
    second_user = f'[[users]]\nname = "second"\nsecret = "{other_secret}"\ndomains = ["www.second.test"]\n'
    extra = 'log_level = "debug"\n'
    token = "purge-token-of-the-node-4242"
    nodes = node_toml("n", node.url) + f'purge_headers = {{ "X-Purge-Token" = "{token}" }}\n'
    service = start_service(tmp_path, second_user + nodes, extra=extra)
    secrets = [DEMO_SECRET, other_secret, token]
    signatures = [real_signature(DEMO_USER, DEMO_SECRET, d) for d in range(-3, 4)]
    signatures += [real_signature("second", other_secret, d) for d in range(-3, 4)]
    signatures += [real_signature(DEMO_USER, other_secret), real_signature("second", DEMO_SECRET)]
    good, wrong = signatures[3], real_signature(DEMO_USER, other_secret)
    answers: list[bytes] = []
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:

            def keep(response: httpx.Response) -> httpx.Response:
                answers.append(str(response.headers).encode() + response.content)
                return response

            def jd(path: str, **fields: Any) -> dict[str, Any]:
                answer: dict[str, Any] = keep(http.post(path, json=fields)).json()
                return answer

            url = [URL]
            calls: list[dict[str, Any]] = [
                {"username": DEMO_USER, "signature": wrong, "publish_urls": url},
                {"username": DEMO_USER, "signature": DEMO_SECRET, "publish_urls": url},  # the secret as signature
                {"username": DEMO_SECRET, "signature": good, "publish_urls": url},  # the secret as username
                {"username": good, "signature": good, "publish_urls": url},
                {"username": "second", "signature": good, "publish_urls": url},
                {"username": DEMO_USER, "signature": signatures[0], "publish_urls": url},  # 3 days ago
                {"username": DEMO_USER, "signature": good, "publish_urls": ["http://www.second.test/x"]},
                {"username": DEMO_USER, "signature": good, "publish_urls": ["ftp://x/"]},
                {"username": DEMO_USER, "signature": good, "taskid": str(uuid.uuid4())},
            ]
            for body in calls:
                for path in ("/api/prefetch", "/api/prefetchQuery"):
                    assert jd(path, **body)["status"] != 0
            keep(http.post("/api/prefetch", content=b'{"username": "x", "signature": "' + good.encode() + b'"'))
            keep(
                http.post(
                    "/api/prefetch",
                    content=f"username={DEMO_USER}&signature={good}&publish_urls=%ZZ\xff".encode("latin-1"),
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
            )
            many = "&".join(["publish_urls=x"] * 10_001)  # refused with code 2, the signature beside it
            keep(
                http.post(
                    "/api/prefetch",
                    content=f"username={DEMO_USER}&signature={good}&{many}",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
            )
            refreshed = jd("/api/refresh", username=DEMO_USER, signature=good, instances=url, type="file")
            assert refreshed["status"] == 0
            for sig in (wrong, DEMO_SECRET, good):
                headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": sig}
                for path in ("/v1/tasks", "/v1/quota", f"/v1/tasks/{uuid.uuid4()}"):
                    keep(http.get(path, headers=headers))
            good_answer = jd("/api/prefetch", username=DEMO_USER, signature=good, publish_urls=url)
            assert good_answer["status"] == 0
            taskid = good_answer["taskid"]
            headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": good}
            keep(http.get(f"/v1/tasks/{taskid}/wait", params={"timeout": 30}, headers=headers))
            jd("/api/prefetchQuery", username=DEMO_USER, signature=good, taskid=taskid)
            for path in ("/metrics", "/readyz", "/healthz", "/openapi.json"):
                keep(http.get(path))
            # A reload that fails (bad TOML next to the secrets), then one that works.
            config = service.config.read_text()
            service.config.write_text(config.replace("[[users]]", f'broken = "{DEMO_SECRET}\n[[users]]', 1))
            os.kill(service.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
            wait_until(lambda: "SIGHUP" in service.log.read_text(), 10, "the failed reload is logged")
            service.config.write_text(config)
            os.kill(service.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
            wait_until(lambda: "config reloaded" in service.log.read_text(), 10, "the reload is logged")
            assert jd("/api/prefetch", username=DEMO_USER, signature=good, publish_urls=url)["status"] == 0
    finally:
        assert service.stop() == 0
    log = service.log.read_bytes()
    assert b"received SIGTERM" in log and b"keeping the running config" in log
    assert any(r.header("X-Purge-Token") == token for r in node.requests)  # the token was in use
    for secret in secrets:
        assert secret.encode() not in log, f"the secret {secret[:4]}... is in the log"
    for sig in signatures:
        assert sig.encode() not in log, f"a signature {sig[:6]}... is in the log"
        assert sig.upper().encode() not in log
    for answer in answers:
        for secret in secrets:
            assert secret.encode() not in answer, answer[:300]
        for sig in signatures:
            assert sig.encode() not in answer, answer[:300]
        assert b"Traceback" not in answer
    assert len(answers) > 30


@pytest.mark.integration
def test_the_service_process_serves_with_every_node_down_without_leaking(tmp_path: Path) -> None:
    """Nodes that refuse connections: items fail with the node's name, never its config secret or a signature."""
    extra = "[engine]\nmax_attempts = 1\nnode_down_wait = 0\n"  # fail at once, not wait for the node
    with start_service(tmp_path, node_toml("down-1", "http://127.0.0.1:9"), extra=extra) as s:
        sig = real_signature(DEMO_USER, DEMO_SECRET)
        with httpx.Client(base_url=s.url, timeout=30) as http:
            answer = http.post("/api/prefetch", json={"username": DEMO_USER, "signature": sig, "publish_urls": [URL]})
            taskid = answer.json()["taskid"]
            headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": sig}
            view = http.get(f"/v1/tasks/{taskid}/wait", params={"timeout": 30}, headers=headers).json()
            items = http.get(f"/v1/tasks/{taskid}", headers=headers).json()["items"]
    assert view["status"] == 2
    assert "cannot connect to down-1" in items[0]["error"]
    assert DEMO_SECRET not in str(items) and sig not in str(items)


def _raw_exchange(port: int, request: bytes, then: bytes = b"") -> tuple[bytes, bytes]:
    """Send `request`, read its answer (up to 1 s of quiet), send `then` and read what comes (up to 1 s)."""

    def read(sock: socket.socket) -> bytes:
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                data += chunk
        return data

    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(request)
        first = read(sock)
        with contextlib.suppress(OSError):
            sock.sendall(then)
        return first, read(sock) if then else b""


@pytest.mark.integration
def test_malformed_and_oversized_requests_leave_clean_connections_and_json_logs(
    tmp_path: Path, node: FaultServer
) -> None:
    """A Content-Length with a trailing space is a length (before: 413); a 413 to a client that waits with
    `Expect: 100-continue` closes the connection (before: kept open, the client's next request on it was never
    answered); uvicorn's word on a request it cannot parse is a JSON line like every other (before: a plain
    "WARNING:  Invalid HTTP request received." in the JSON log)."""
    with start_service(tmp_path, node_toml("rec", node.url)) as service:
        assert service.port is not None
        body = b'{"username":"x","signature":"y","taskid":"z"}'
        head = b"POST /api/prefetchQuery HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        answer, _ = _raw_exchange(service.port, head + b"Content-Length: %d \r\n\r\n" % len(body) + body)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        big = head + b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        answer, after = _raw_exchange(service.port, big, then=head + b"Content-Length: 2\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower(), answer
        assert after == b""  # closed: the client knows at once to open another connection
        answer, _ = _raw_exchange(service.port, head + b"Content-Length: -1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        time.sleep(0.2)
        log = service.log.read_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert any("requests answered 400 as not HTTP" in orjson.loads(line)["message"] for line in lines), log


@pytest.mark.integration
def test_oversized_heads_and_slow_or_silent_clients_are_cut_off(tmp_path: Path) -> None:
    """A head over 64 KiB is answered 431 at once (before: a 100 MB header was read whole, every other client
    waited seconds, and it was answered 200), also when it ends in the read that takes it over; a connection
    silent for `request_timeout`, sending its head a byte at a time, or not sending all of its body, is closed,
    with 408 (before: held open for ever, until the process ran out of file descriptors); a long poll longer
    than the timeout is answered whole (the timeout is for the request to arrive, not for the answer)."""
    extra = "[api]\nrequest_timeout = 1.0\n"
    with (
        FaultServer(Respond(200, body=b"slow\n", delay=3.0)) as slow,
        start_service(tmp_path, node_toml("slow", slow.url), extra=extra) as service,
    ):
        assert service.port is not None
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: ")
            with contextlib.suppress(OSError):  # the server may close while this is still sending
                for _ in range(20):
                    sock.sendall(b"a" * 8192)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        assert time.monotonic() - started < 3
        # A head over the bound that ends in the bytes of one read: it was answered 200 (the count was kept
        # only while a head was incomplete after a read). A body over it in the head's read is no head.
        whole = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 100_000 + b"\r\nConnection: close\r\n\r\n"
        answer, _ = _raw_exchange_after(service.port, whole, wait=3.0)
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        query = orjson.dumps({"username": DEMO_USER, "signature": "x" * 32, "taskid": "y" * 100_000})
        head = b"POST /api/prefetchQuery HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        answer, _ = _raw_exchange_after(
            service.port, head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(query) + query, wait=3.0
        )
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        # Blank lines before it, or requests before it in the same read: it was answered too. Those requests
        # are answered first, then the 431 (they went unanswered, done: a submit's task made, its id lost).
        submit = orjson.dumps({"username": DEMO_USER, "signature": real_signature(DEMO_USER, DEMO_SECRET)})
        prefetch = b"POST /api/prefetch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        prefetch += b"Content-Length: %d\r\n\r\n" % len(submit) + submit
        healthz = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        for before, answered in ((b"\r\n\r\n", 0), (healthz, 1), (healthz + prefetch + healthz, 3)):
            answer, _ = _raw_exchange_after(service.port, before + whole, wait=3.0)
            statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)  # (the bodies are JSON: no status line in them)
            assert statuses == [b"200"] * answered + [b"431"], answer
        # Behind a chunked body in the same read (its end not known ahead: the head went to the parser with it,
        # uncounted, and was answered 200: a tester's). Counted as the parser gives its parts.
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        answer, _ = _raw_exchange_after(service.port, chunked + whole, wait=3.0)
        assert answer.count(b"HTTP/1.1 ") == 2 and answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.rsplit(b"HTTP/1.1 ", 1)[1].startswith(b"431 "), answer
        # A body over the bound is no head, behind a request in the same read either (it was counted as one
        # once that request was answered: 431).
        listed = head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(query) + query
        answer, _ = _raw_exchange_after(service.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + listed, wait=3.0)
        assert answer.count(b"HTTP/1.1 200 ") == 2, answer
        # A head whole, its body not within request_timeout: closed with no word (before), 408 now.
        short, _ = _raw_exchange_after(service.port, head + b"Content-Length: 100\r\n\r\n{", wait=3.0)
        assert short.startswith(b"HTTP/1.1 408 "), short
        silent, _ = _raw_exchange_after(service.port, b"", wait=3.0)
        assert silent.startswith(b"HTTP/1.1 408 "), silent
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            started = time.monotonic()
            trickled = b""
            with contextlib.suppress(OSError):
                for byte in b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
                    if time.monotonic() - started > 1.5:
                        break
            trickled = sock.recv(65536)
        assert trickled.startswith(b"HTTP/1.1 408 "), trickled
        sig = real_signature(DEMO_USER, DEMO_SECRET)
        body = {"username": DEMO_USER, "signature": sig, "publish_urls": ["http://www.example.test/slow-poll"]}
        taskid = httpx.post(f"{service.url}/api/prefetch", json=body, timeout=10).json()["taskid"]
        headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": sig}
        started = time.monotonic()
        polled = httpx.get(f"{service.url}/v1/tasks/{taskid}/wait", params={"timeout": 2}, headers=headers, timeout=10)
        assert polled.status_code == 200 and polled.json()["status"] == 1, polled.text
        assert time.monotonic() - started >= 1.9  # answered at the poll's end, past request_timeout
    # The refusals are told as a digest: the first at once, the rest at the stop (a minute had not passed);
    # before, a line each (a tester's loop of large heads: 2,186 lines, 118 KB of log a second).
    told = [
        orjson.loads(line)["message"]
        for line in service.log.read_text().splitlines()
        if line.strip() and "refused unread" in line
    ]
    assert told[0] == "requests refused unread: 1 head over 65536 bytes (431); from 127.0.0.1", told
    assert len(told) == 2 and told[1].startswith("requests refused unread in the last "), told
    assert " head over 65536 bytes (431); " in told[1] and " not whole within 1 s (408, closed); " in told[1], told
    assert "answered 431" not in service.log.read_text()


def _raw_exchange_after(port: int, request: bytes, wait: float) -> tuple[bytes, float]:
    """Send `request` (maybe nothing) and read until the server closes, at most `wait` s: (bytes, seconds)."""
    started = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if request:
            sock.sendall(request)
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                data += chunk
    return data, time.monotonic() - started


@pytest.mark.integration
@pytest.mark.integration
def test_pipelined_requests_whose_answers_are_not_read_hold_no_memory_and_are_cut_off(tmp_path: Path) -> None:
    """A client sending 20,000 pipelined requests and reading no answer: every request of a read was taken in and
    kept until its turn (a tester's 60,000: past 1 GB, before any credentials), and nothing closed it. Requests
    are taken one ahead of the answer being sent; answers unread for `request_timeout` close the connection."""
    extra = "[api]\nrequest_timeout = 1.0\n"
    with (
        FaultServer(Respond(200, body=b"ok")) as node,
        start_service(tmp_path, node_toml("n", node.url), extra=extra) as service,
    ):
        assert service.port is not None and service.proc is not None

        def rss_mb() -> float:
            status = Path(f"/proc/{service.proc.pid}/status").read_text()  # type: ignore[union-attr]
            return int(status.split("VmRSS:")[1].split()[0]) / 1024

        before = rss_mb()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", service.port))
            sock.settimeout(3)
            with contextlib.suppress(TimeoutError, OSError):  # the server stops reading: the send blocks
                sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n" * 20_000)
            grown = rss_mb() - before
            said = "requests refused unread: 1 reading none of its answers for 1 s (closed); from 127.0.0.1"
            service.wait_for_log(said, 10)  # it reads nothing meanwhile: a stalled reader
            port = f"{sock.getsockname()[1]:04X}"  # this end's, as /proc/net/tcp writes it; 01: ESTABLISHED
            rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
            assert not [r for r in rows if r[1].endswith(f":{port}") and r[3] == "01"], "not closed by the server"
        assert grown < 40, f"{grown:.0f} MB more"
        assert "Traceback" not in service.log.read_text()  # the request being answered learnt it too


@pytest.mark.integration
def test_a_submission_pipelined_ahead_of_a_request_that_does_not_parse_is_answered_before_the_400(
    tmp_path: Path,
) -> None:
    """A prefetch pipelined ahead of a request that does not parse was made, but the only answer was the 400 (its
    task id lost: a tester's); it is answered first, then the 400 (tests/unit/test_protocol.py, byte by byte)."""
    extra = "[api]\nrequest_timeout = 5.0\n"
    with (
        FaultServer(Respond(200, body=b"ok")) as node,
        start_service(tmp_path, node_toml("n", node.url), extra=extra) as service,
    ):
        assert service.port is not None and service.proc is not None
        for number, bad in enumerate((b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", b"get /x HTTP/1.1\r\n\r\n")):
            url = f"http://www.example.test/pipelined-{number}"
            submit = orjson.dumps(
                {"username": DEMO_USER, "signature": real_signature(DEMO_USER, DEMO_SECRET), "publish_urls": url}
            )
            prefetch = b"POST /api/prefetch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            prefetch += b"Content-Length: %d\r\n\r\n" % len(submit) + submit
            answer, _ = _raw_exchange_after(service.port, prefetch + bad, wait=5.0)
            assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"400"], answer
            assert b'"taskid":"' in answer, answer
        assert "Traceback" not in service.log.read_text()


@pytest.mark.integration
def test_a_submission_whose_client_half_closes_after_it_is_answered(tmp_path: Path) -> None:
    """A client that sends its request whole and half-closes (FIN: `nc -N`, `socat`) got the connection closed,
    no answer, and its task was made and charged (a tester's, 11 of 11): it is answered, then closed. A long poll
    so sent is answered at once, the task as it is (a FIN is also what a caller that hung up sends)."""
    with (
        FaultServer(Respond(200, body=b"ok", delay=5.0)) as node,
        start_service(tmp_path, node_toml("n", node.url)) as service,
    ):
        assert service.port is not None
        for number, version in enumerate((b"1.1", b"1.0")):
            submit = orjson.dumps(
                {
                    "username": DEMO_USER,
                    "signature": real_signature(DEMO_USER, DEMO_SECRET),
                    "publish_urls": f"http://www.example.test/half-closed-{number}",
                }
            )
            request = b"POST /api/prefetch HTTP/%s\r\nHost: t\r\nContent-Type: application/json\r\n" % version
            request += b"Content-Length: %d\r\n\r\n" % len(submit) + submit
            with socket.create_connection(("127.0.0.1", service.port), timeout=10.0) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(65536):  # to the server's close (the timeout bounds it)
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ") and b'"taskid":"' in answer, answer
        taskid = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["taskid"]
        poll = (
            f"GET /v1/tasks/{taskid}/wait?timeout=30 HTTP/1.1\r\nHost: t\r\nX-Edgewarm-Username: {DEMO_USER}\r\n"
            f"X-Edgewarm-Signature: {real_signature(DEMO_USER, DEMO_SECRET)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", service.port), timeout=10.0) as sock:
            sock.sendall(poll)
            sock.shutdown(socket.SHUT_WR)
            asked = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            took = time.monotonic() - asked
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"status":1' in answer, answer
        assert took < 5.0, took  # at once, not at the poll's 30 s (a wait looks at its caller each half second)


@pytest.mark.integration
def test_an_open_files_limit_below_concurrency_leaves_the_api_and_the_store_their_files(tmp_path: Path) -> None:
    """Under an open-files limit of 256 with the default `[engine] concurrency = 256` and 4 nodes: the requests'
    sockets took every file, the API's connections were dropped unanswered (a tester's /healthz failed 169 of
    180 probes), the store could not open its file and the warms crawled. The engine sends what the limit
    leaves room for (requests_room), says so at start, and the API answers throughout."""
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(FaultServer(Respond(200, body=b"x" * 4096, delay=0.05))) for _ in range(4)]
        toml = "".join(node_toml(f"n{i}", node.url) for i, node in enumerate(nodes))
        extra = "[limits]\nurls_per_call = 1500\n"
        service = stack.enter_context(start_service(tmp_path, toml, extra=extra, open_files=256))
        assert service.port is not None
        service.wait_for_log("it sends 112 requests at once at most, and takes 64 API connections", 10)
        signature = real_signature(DEMO_USER, DEMO_SECRET)
        urls = [f"http://www.example.test/tight/{i}" for i in range(1500)]
        answer = httpx.post(
            f"{service.url}/api/prefetch",
            json={"username": DEMO_USER, "signature": signature, "publish_urls": urls},
            timeout=30,
        ).json()
        assert answer["status"] == 0, answer
        headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": signature}
        probes, answered, status = 0, 0, 1
        deadline = time.monotonic() + 120
        while status == 1 and time.monotonic() < deadline:  # bounded: 120 s
            probes += 1
            with contextlib.suppress(httpx.HTTPError):
                view = httpx.get(f"{service.url}/v1/tasks/{answer['taskid']}?limit=0", headers=headers, timeout=2)
                if view.status_code == 200:
                    answered += 1
                    status = view.json()["status"]
            time.sleep(0.2)
        assert status == 0, view.text
        assert answered == probes, f"{probes - answered} of {probes} probes unanswered"
        assert "Too many open files" not in service.log.read_text()


def _past_the_room(port: int, opened: int, room: int) -> list[bytes]:
    """Open `opened` idle connections to `port` and read what those past the API's `room` are answered: each a
    503, and about as many as past the room (the start's health checks have closed theirs)."""
    idle: list[socket.socket] = []
    try:
        for _ in range(opened):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 10
        answers: dict[int, bytes] = {}
        while time.monotonic() < deadline and len(answers) < opened - room:
            for number, sock in enumerate(idle):
                if number in answers:
                    continue
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answers[number] = sock.recv(1024)
            time.sleep(0.1)
    finally:
        for sock in idle:
            sock.close()
    refused = sum(answer.startswith(b"HTTP/1.1 503 ") for answer in answers.values())
    assert refused == len(answers) >= opened - room - 2, answers
    return list(answers.values())


@pytest.mark.integration
def test_a_reload_that_raises_concurrency_past_the_open_files_room_narrows_the_apis(tmp_path: Path) -> None:
    """Under a limit of 1,024 a reload raises `concurrency` from 64 to 1,000: the warning said the API takes 256
    connections, and it took 576 still, the start's (a re-tester's 506 answered, then 190 reset, the store out of
    files). The room is asked at each connection, by the running config's concurrency."""
    with (
        FaultServer(Respond(200, body=b"ok")) as node,
        start_service(
            tmp_path, node_toml("n", node.url), extra="[engine]\nconcurrency = 64\n", open_files=1024
        ) as service,
    ):
        assert service.port is not None and service.proc is not None
        config = tmp_path / "edgewarm.toml"
        config.write_text(config.read_text().replace("concurrency = 64", "concurrency = 1000"))
        service.proc.send_signal(signal.SIGHUP)
        service.wait_for_log("it sends 496 requests at once at most, and takes 256 API connections", 10)
        _past_the_room(service.port, 300, 256)
        assert "over 256 connections open (503, closed)" in service.log.read_text()


@pytest.mark.integration
def test_connections_past_the_open_files_room_are_answered_503_and_logged(tmp_path: Path) -> None:
    """Under an open-files limit of 600 with `[engine] concurrency = 64`, the API has room for 600 - 64 - 192 =
    344 connections: a client opening 400 idle ones gets 503 on those past it, at once, each closed, and the log
    says so; the rest of the process keeps its files (before: every connection was taken until the process ran
    out of files, the engine's requests and the store then failing "Too many open files", nothing logged: a
    security tester's). Once they close, the service works as before."""
    extra = "[engine]\nconcurrency = 64\nper_node_concurrency = 8\n"
    with (
        FaultServer(Respond(200, body=b"ok")) as node,
        start_service(tmp_path, node_toml("n", node.url), extra=extra, open_files=600) as service,
    ):
        assert service.port is not None
        answers = _past_the_room(service.port, 400, 344)
        # JSON with a JD code, as edgewarm's other 503s (an empty one was taken by the CLI for a proxy's)
        head, _, body = answers[0].partition(b"\r\n\r\n")
        assert b"\r\nretry-after: 1\r\n" in head and orjson.loads(body) == {
            "code": -1,
            "error": "the server holds all the connections it has room for (344): try again in a moment",
        }, answers
        sig = real_signature(DEMO_USER, DEMO_SECRET)
        body = {"username": DEMO_USER, "signature": sig, "publish_urls": ["http://www.example.test/after-flood"]}
        answer = httpx.post(f"{service.url}/api/prefetch", json=body, timeout=10).json()
        assert answer["status"] == 0, answer
        done = f"{service.url}/api/prefetchQuery"
        query = {"username": DEMO_USER, "signature": sig, "taskid": answer["taskid"]}
        wait_until(lambda: httpx.post(done, json=query, timeout=10).json()["data"]["status"] == 0, 15, "warmed")
    log = service.log.read_text()
    assert "over 344 connections open (503, closed); from 127.0.0.1" in log, log[-3000:]
    assert "Too many open files" not in log
