"""The HTTP API end to end in process: JD routes, native routes, HTTP-level refusals, the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import gc
import gzip
import hashlib
import json
import logging
import math
import random
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from starlette.requests import Request

import edgewarm.api.middleware
from edgewarm import service as service_module
from edgewarm.api import create_app, responses
from edgewarm.api.body import NOT_AN_ADDRESS, caller_address
from edgewarm.api.body import _fields as form_fields
from edgewarm.api.docs import SWAGGER_CSS, SWAGGER_JS, SWAGGER_UI_VERSION
from edgewarm.api.middleware import BodyReads, BodySizeLimit, direct_endpoints
from edgewarm.api.native import epoch
from edgewarm.auth import sign
from edgewarm.client import AsyncClient, ClientError
from edgewarm.config import Config, parse_config
from edgewarm.errors import JdCode, RequestRefused, StoreError, StoreFull, StoreOutcomeUnknown
from edgewarm.logs import RepeatedFailure, _address
from edgewarm.models import ItemOutcome, ItemState, TaskFilter, TaskKind, TaskStatus
from edgewarm.service import Service
from edgewarm.store import TaskStore, open_store
from edgewarm.store.sqlite import SQLiteStore
from edgewarm.urls import parse_url
from edgewarm.views import iso

pytestmark = pytest.mark.anyio

# 04:00 UTC is noon in Shanghai: the signature day is unambiguous.
NOW = datetime(2024, 3, 10, 4, 0, tzinfo=UTC).timestamp()
DAY = date(2024, 3, 10)
USER = "jcloud_00"
SECRET = "e7a31b1c5ea0efa9aa2f29c6559f7d61"
OTHER = "other"
OTHER_SECRET = "0123456789abcdef"
SMALL = "small"
SMALL_SECRET = "small-secret"
MAX_BODY = 4096

BASE_CONFIG: dict[str, Any] = {
    "store": "memory://",
    "api": {"max_body_bytes": MAX_BODY},
    "users": [
        {"name": USER, "secret": SECRET, "domains": ["www.example.test", "*.img.example.test"]},
        {"name": OTHER, "secret": OTHER_SECRET, "domains": ["www.other.test"]},
        {"name": SMALL, "secret": SMALL_SECRET, "domains": ["www.example.test"], "urls_per_call": 3, "urls_per_day": 5},
    ],
    "nodes": [
        {"name": "shield-1", "url": "http://127.0.0.1:18090", "tier": "shield"},
        {"name": "edge-1", "url": "http://127.0.0.1:18081"},
        {"name": "edge-2", "url": "http://127.0.0.1:18082"},
    ],
}
NODES = 3


def make_config(**api: Any) -> Config:
    data = dict(BASE_CONFIG)
    data["api"] = {**BASE_CONFIG["api"], **api}
    return parse_config(data)


def signature(user: str = USER, secret: str = SECRET, day: date = DAY) -> str:
    return sign(user, secret, day)


def creds(user: str = USER, secret: str = SECRET) -> dict[str, str]:
    return {"username": user, "signature": signature(user, secret)}


def urls(count: int, host: str = "www.example.test") -> list[str]:
    return [f"http://{host}/file/{n}.bin" for n in range(count)]


@dataclass
class Api:
    client: httpx.AsyncClient
    store: TaskStore
    service: Service

    async def call(self, path: str, body: Any) -> dict[str, Any]:
        """POST a JSON body to a JD route; JD answers are always HTTP 200."""
        response = await self.client.post(path, json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def raw(self, path: str, content: bytes, content_type: str | None) -> dict[str, Any]:
        headers = {} if content_type is None else {"content-type": content_type}
        response = await self.client.post(path, content=content, headers=headers)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def prefetch(self, publish_urls: Any, user: str = USER, secret: str = SECRET) -> dict[str, Any]:
        return await self.call("/api/prefetch", {**creds(user, secret), "publish_urls": publish_urls})

    async def submitted(self, count: int = 2, user: str = USER, secret: str = SECRET) -> str:
        answer = await self.prefetch(urls(count), user, secret)
        assert answer["status"] == 0, answer
        taskid: str = answer["taskid"]
        return taskid

    async def query(self, taskid: Any, user: str = USER, secret: str = SECRET) -> httpx.Response:
        return await self.client.post("/api/prefetchQuery", json={**creds(user, secret), "taskid": taskid})

    async def native(self, taskid: str, user: str = USER, sig: str | None = None, **params: Any) -> httpx.Response:
        headers = {"X-Edgewarm-Username": user, "X-Edgewarm-Signature": sig or signature()}
        return await self.client.get(f"/v1/tasks/{taskid}", headers=headers, params=params)


@asynccontextmanager
async def running(config: Config, clock: Callable[[], float] = lambda: NOW) -> AsyncIterator[Api]:
    async with open_store("memory://") as store:
        service = Service(config, store, clock=clock)
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://edgewarm.test") as client:
            yield Api(client, store, service)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with running(make_config()) as running_api:
        yield running_api


def assert_code(answer: dict[str, Any], code: int) -> None:
    assert answer["status"] == code, answer
    assert isinstance(answer["msg"], str) and answer["msg"]
    assert "taskid" not in answer
    assert "data" not in answer


# --- code 2: parameters empty ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/prefetch", "/api/prefetchQuery"])
@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"", "application/json"),
        (b"", None),
        (b"", "application/x-www-form-urlencoded"),
        (b"   ", "application/json"),
        (b"{}", "application/json"),
        (b"{}", None),
        (b'{"username": "jcloud_00", ', "application/json"),
        (b"not json at all", "application/json"),
        (b'[{"username": "jcloud_00"}]', "application/json"),
        (b"[]", None),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
    ],
)
async def test_code_2_for_empty_or_unusable_bodies(
    api: Api, path: str, content: bytes, content_type: str | None
) -> None:
    """An empty body, {}, invalid JSON or a JSON non-object is code 2 (HTTP 200)."""
    assert_code(await api.raw(path, content, content_type), 2)


# --- codes 3, 4, 20, 7: who is calling ---------------------------------------------------------------


@pytest.mark.parametrize("username", [None, "", "   "])
async def test_code_3_for_an_empty_username(api: Api, username: str | None) -> None:
    """A missing or blank username is code 3, on both routes."""
    body: dict[str, Any] = {"signature": signature(), "publish_urls": urls(1)}
    if username is not None:
        body["username"] = username
    assert_code(await api.call("/api/prefetch", body), 3)
    query = {k: v for k, v in body.items() if k != "publish_urls"} | {"taskid": str(uuid.uuid4())}
    assert_code(await api.call("/api/prefetchQuery", query), 3)


@pytest.mark.parametrize("sig", [None, "", "  "])
async def test_code_4_for_an_empty_signature(api: Api, sig: str | None) -> None:
    """A missing or blank signature is code 4, on both routes."""
    body: dict[str, Any] = {"username": USER, "publish_urls": urls(1)}
    if sig is not None:
        body["signature"] = sig
    assert_code(await api.call("/api/prefetch", body), 4)
    query = {k: v for k, v in body.items() if k != "publish_urls"} | {"taskid": str(uuid.uuid4())}
    assert_code(await api.call("/api/prefetchQuery", query), 4)


async def test_code_3_comes_before_code_6(api: Api) -> None:
    """With neither username nor URLs, the username is reported first."""
    assert_code(await api.call("/api/prefetch", {"signature": signature()}), 3)


async def test_missing_fields_are_reported_before_the_signature_is_checked(api: Api) -> None:
    """An empty URL list or task id is reported (6, 11) even when the signature is wrong."""
    bad = {"username": USER, "signature": "0" * 32}
    assert_code(await api.call("/api/prefetch", {**bad, "publish_urls": []}), 6)
    assert_code(await api.call("/api/prefetchQuery", {**bad, "taskid": ""}), 11)
    assert_code(await api.call("/api/prefetch", {**bad, "publish_urls": urls(1)}), 7)


async def test_code_20_for_an_unknown_user(api: Api) -> None:
    """A username not in the config is code 20, on both routes."""
    body = {"username": "nobody", "signature": sign("nobody", SECRET, DAY)}
    assert_code(await api.call("/api/prefetch", {**body, "publish_urls": urls(1)}), 20)
    assert_code(await api.call("/api/prefetchQuery", {**body, "taskid": str(uuid.uuid4())}), 20)


@pytest.mark.parametrize(
    "sig",
    [
        "0" * 32,
        sign(USER, "wrong-secret", DAY),
        sign(USER, SECRET, DAY - timedelta(days=3)),
        sign(USER, SECRET, DAY + timedelta(days=2)),
        sign(OTHER, OTHER_SECRET, DAY),
        "not-hex",
    ],
)
async def test_code_7_for_a_wrong_signature(api: Api, sig: str) -> None:
    """A wrong signature, or one outside the day window, is code 7 on both routes."""
    assert_code(await api.call("/api/prefetch", {"username": USER, "signature": sig, "publish_urls": urls(1)}), 7)
    query = {"username": USER, "signature": sig, "taskid": str(uuid.uuid4())}
    assert_code(await api.call("/api/prefetchQuery", query), 7)


@pytest.mark.parametrize("offset", [-1, 0, 1])
async def test_signatures_of_yesterday_today_tomorrow_are_accepted(api: Api, offset: int) -> None:
    """The Shanghai yesterday, today and tomorrow all sign a call."""
    sig = sign(USER, SECRET, DAY + timedelta(days=offset))
    answer = await api.call("/api/prefetch", {"username": USER, "signature": sig, "publish_urls": urls(1)})
    assert answer["status"] == 0, answer


async def test_upper_case_signature_is_accepted(api: Api) -> None:
    """An upper-case hex signature is accepted."""
    answer = await api.call(
        "/api/prefetch", {"username": USER, "signature": signature().upper(), "publish_urls": urls(1)}
    )
    assert answer["status"] == 0, answer


# --- code 6, 10, 17, 18, 47: the URL list ------------------------------------------------------------


@pytest.mark.parametrize("publish_urls", [None, [], "", ",,,", " , ,", ["", " "]])
async def test_code_6_for_an_empty_url_list(api: Api, publish_urls: Any) -> None:
    """A missing, empty, blank or comma-only URL list is code 6."""
    body: dict[str, Any] = creds()
    if publish_urls is not None:
        body["publish_urls"] = publish_urls
    assert_code(await api.call("/api/prefetch", body), 6)


async def test_code_10_for_more_than_100_urls(api: Api) -> None:
    """101 URLs in one prefetch is code 10; 100 is accepted."""
    assert_code(await api.prefetch(urls(101)), 10)
    assert (await api.prefetch(urls(100)))["status"] == 0


async def test_code_10_follows_a_users_own_limit(api: Api) -> None:
    """A user whose urls_per_call is 3 gets code 10 for 4 URLs, and success for 3."""
    assert_code(await api.prefetch(urls(4), SMALL, SMALL_SECRET), 10)
    assert (await api.prefetch(urls(3), SMALL, SMALL_SECRET))["status"] == 0


async def test_code_10_for_a_comma_string_too(api: Api) -> None:
    """The limit counts URLs in a comma string as in an array."""
    assert_code(await api.prefetch(",".join(urls(101))), 10)


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://www.example.test/a",
        "http://www.example.test/a b",
        "http://www.example.test/a\r\nX: y",
        "http://127.0.0.1/a",
        "http://user@www.example.test/a",
        "www.example.test/a",
        "http://www.example.test/a#top",
    ],
)
async def test_code_17_for_an_illegal_url(api: Api, bad: str) -> None:
    """An illegal URL anywhere in the list is code 17, and nothing is created."""
    assert_code(await api.prefetch([urls(1)[0], bad]), 17)
    assert await api.store.usage(USER, f"{DAY:%Y%m%d}") == (0, 0)


async def test_a_refusal_names_every_bad_url_of_the_call_up_to_five(api: Api) -> None:
    """A call of several bad URLs is told of the first five, each with its reason, and how many more (it was
    told of the first alone: a caller fixed a call one URL at a time); several foreign domains are named too."""
    good = urls(1)[0]
    bad = ["ftp://www.example.test/a", "http://www.example.test/a b", "http://127.0.0.1/a"]
    refused = await api.prefetch([good, *bad])
    assert_code(refused, 17)
    reasons = []
    for url in bad:
        with pytest.raises(RequestRefused) as told:
            parse_url(url)
        reasons.append(told.value.message)
    assert refused["msg"] == "3 entries refused: " + "; ".join(reasons)
    assert reasons[0] == "illegal URL 'ftp://www.example.test/a': the scheme must be http or https"
    many = await api.prefetch([f"http://www.example.test/{n}#x" for n in range(8)])
    assert_code(many, 17)
    assert many["msg"].startswith("8 entries refused: illegal URL 'http://www.example.test/0#x': a fragment")
    assert many["msg"].count("illegal URL") == 5 and many["msg"].endswith("; and 3 more"), many["msg"]
    foreign = [f"http://www.other{n}.test/a" for n in (1, 2, 1, 3)]
    refused = await api.prefetch([good, *foreign[:2], f"{foreign[2]}?again", foreign[3]])
    assert_code(refused, 18)
    assert refused["msg"] == "the domains www.other1.test, www.other2.test, www.other3.test are not yours"
    dirs = await api.call(
        "/api/refresh",
        {**creds(), "type": "dir", "instances": ["http://www.example.test/x", "http://www.example.test/y?q"]},
    )
    assert_code(dirs, 17)
    assert dirs["msg"].startswith("2 entries refused: a directory must end with '/'"), dirs["msg"]
    assert await api.store.usage(USER, f"{DAY:%Y%m%d}") == (0, 0)


@pytest.mark.parametrize("publish_urls", [[1, 2], {"a": "http://www.example.test/"}, 5, True])
async def test_code_17_for_a_url_list_of_the_wrong_type(api: Api, publish_urls: Any) -> None:
    """A URL list that is not strings is code 17."""
    assert_code(await api.prefetch(publish_urls), 17)


@pytest.mark.parametrize(
    "foreign",
    ["http://www.other.test/a", "http://img.example.test/a", "http://example.test/a", "http://xwww.example.test/"],
)
async def test_code_18_for_a_domain_that_is_not_the_users(api: Api, foreign: str) -> None:
    """A URL on a domain the user does not own is code 18, and nothing is charged."""
    assert_code(await api.prefetch([urls(1)[0], foreign]), 18)
    assert await api.store.usage(USER, f"{DAY:%Y%m%d}") == (0, 0)


async def test_wildcard_domains_are_owned(api: Api) -> None:
    """URLs under the user's '*.img.example.test' are accepted."""
    answer = await api.prefetch(["http://a.img.example.test/x.jpg", "http://b.a.img.example.test/y.jpg"])
    assert answer["status"] == 0, answer


async def test_refused_calls_keep_nothing_of_their_urls() -> None:
    """100 calls of 99 unique 4,000-character URLs and one foreign domain, each refused (code 18): the process
    keeps less than 8 MB of them (before, the URL parser's cache kept every one: about 80 MB here, 540 MB
    in 1,000 calls)."""
    async with running(make_config(max_body_bytes=1_000_000)) as api:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for call in range(100):
                long_urls = [f"http://www.example.test/{call}/{n}/" + "x" * 4000 for n in range(99)]
                assert_code(await api.prefetch([*long_urls, "http://www.other.test/x"]), 18)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept < 8_000_000, kept


async def test_code_47_for_duplicate_urls(api: Api) -> None:
    """The same URL twice in one call is code 47, whether array or comma string."""
    one = urls(1)[0]
    assert_code(await api.prefetch([one, urls(2)[1], one]), 47)
    assert_code(await api.prefetch(f"{one}, {one}"), 47)
    # One object in two spellings: the scheme's default port is no port.
    assert_code(await api.prefetch([one, one.replace(".test/", ".test:80/")]), 47)


# --- code 1: daily quota -------------------------------------------------------------------------------


async def test_code_1_when_the_daily_quota_is_exceeded(api: Api) -> None:
    """With urls_per_day 5, 3 + 3 URLs is refused with code 1 (nothing charged), 3 + 2 fits, then 1 more fails."""
    day = f"{DAY:%Y%m%d}"
    assert (await api.prefetch(urls(3), SMALL, SMALL_SECRET))["status"] == 0
    refused = await api.prefetch(urls(3), SMALL, SMALL_SECRET)
    assert_code(refused, 1)
    # When it renews, in the service's day (a newcomer's quota refusal did not say).
    hours, minutes = divmod(math.floor((86400 - (NOW + 8 * 3600) % 86400) / 60), 60)
    said = "daily quota exceeded: 3 of 5 URLs used today, 3 asked; it renews at 00:00 in Asia/Shanghai "
    assert refused["msg"] == said + f"(in {hours} h {minutes} min)", refused["msg"]
    assert await api.store.usage(SMALL, day) == (3, 0)
    assert (await api.prefetch(urls(2), SMALL, SMALL_SECRET))["status"] == 0
    assert await api.store.usage(SMALL, day) == (5, 0)
    assert_code(await api.prefetch(urls(1), SMALL, SMALL_SECRET), 1)


async def test_quota_is_per_user(api: Api) -> None:
    """One user's spent quota does not refuse another user."""
    assert (await api.prefetch(urls(3), SMALL, SMALL_SECRET))["status"] == 0
    assert (await api.prefetch(urls(3), SMALL, SMALL_SECRET))["status"] == 1
    assert (await api.prefetch(urls(3)))["status"] == 0


# --- code 11 and 1: task ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("taskid", [None, "", "   "])
async def test_code_11_for_an_empty_taskid(api: Api, taskid: str | None) -> None:
    """A missing or blank taskid is code 11."""
    body: dict[str, Any] = creds()
    if taskid is not None:
        body["taskid"] = taskid
    assert_code(await api.call("/api/prefetchQuery", body), 11)


async def test_code_1_for_an_unknown_task(api: Api) -> None:
    """An unknown task id is code 1 'task not found'."""
    response = await api.query(str(uuid.uuid4()))
    assert response.status_code == 200
    assert_code(response.json(), 1)


async def test_another_users_task_answers_exactly_like_an_unknown_one(api: Api) -> None:
    """Another user's task id, an unknown id and a malformed id get byte-for-byte the same answer."""
    answer = await api.call(
        "/api/prefetch", {**creds(OTHER, OTHER_SECRET), "publish_urls": ["http://www.other.test/a"]}
    )
    assert answer["status"] == 0, answer
    other_task = answer["taskid"]
    assert (await api.query(other_task, OTHER, OTHER_SECRET)).json()["status"] == 0

    foreign = await api.query(other_task)
    unknown = await api.query(str(uuid.uuid4()))
    malformed = await api.query("not-a-task-id")
    foreign_hex = await api.query(uuid.UUID(other_task).hex)
    assert foreign.status_code == unknown.status_code == malformed.status_code == foreign_hex.status_code == 200
    assert foreign.content == unknown.content == malformed.content == foreign_hex.content
    assert foreign.json()["status"] == 1


@pytest.mark.parametrize("taskid", [5, ["x"], {"id": "x"}])
async def test_a_taskid_that_is_not_a_string_is_refused(api: Api, taskid: Any) -> None:
    """A taskid of another JSON type never reaches the store: code 11."""
    assert_code((await api.query(taskid)).json(), 11)


# --- success -------------------------------------------------------------------------------------------------


def assert_submitted(answer: dict[str, Any]) -> str:
    assert answer["status"] == 0, answer
    assert answer["msg"] == "成功"
    taskid = answer["taskid"]
    assert isinstance(taskid, str) and len(taskid) == 36
    assert uuid.UUID(taskid).version == 4
    assert str(uuid.UUID(taskid)) == taskid
    return taskid


async def test_prefetch_with_a_json_array_creates_the_task_and_its_items(api: Api) -> None:
    """A JSON array of 3 URLs on 3 nodes gives a UUIDv4 task with 9 items, durable before the answer."""
    submitted = urls(3)
    taskid = assert_submitted(await api.prefetch(submitted))
    task = await api.store.get_task(taskid, USER)
    assert task is not None
    assert (task.kind, task.status, task.total, task.username) == (TaskKind.PREFETCH, TaskStatus.IN_PROGRESS, 9, USER)
    assert task.created_at == NOW
    counts = await api.store.task_counts(taskid)
    # The shield tier goes first: its items are pending, the edges wait for it.
    assert (counts.pending, counts.waiting, counts.total) == (3, 6, 9)
    items = await api.store.list_items(taskid)
    assert {(i.url, i.node) for i in items} == {(u, n) for u in submitted for n in ("shield-1", "edge-1", "edge-2")}
    assert {i.state for i in items if i.node == "shield-1"} == {ItemState.PENDING}
    assert await api.store.usage(USER, f"{DAY:%Y%m%d}") == (3, 0)


async def test_prefetch_with_a_comma_string(api: Api) -> None:
    """publish_urls as one comma-separated string works like the array."""
    taskid = assert_submitted(await api.prefetch(" , ".join(urls(2)) + ","))
    task = await api.store.get_task(taskid)
    assert task is not None and task.total == 2 * NODES


async def test_prefetch_with_a_form_body(api: Api) -> None:
    """An application/x-www-form-urlencoded body is read like JSON, with a comma string of URLs."""
    body = urlencode({**creds(), "publish_urls": ",".join(urls(2))}).encode()
    taskid = assert_submitted(await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded"))
    task = await api.store.get_task(taskid)
    assert task is not None and task.total == 2 * NODES


async def test_prefetch_with_a_form_body_holding_the_json_array(api: Api) -> None:
    """A form whose publish_urls is the JSON array's text (as PHP's json_encode gives it) is read as the array
    (before: split at its commas, refused as the illegal URL '["http://…"'); broken JSON text is refused."""
    body = urlencode({**creds(), "publish_urls": json.dumps(urls(2))}).encode()
    taskid = assert_submitted(await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded"))
    task = await api.store.get_task(taskid)
    assert task is not None and task.total == 2 * NODES
    broken = urlencode({**creds(), "publish_urls": '["http://www.example.test/a",'}).encode()
    assert_code(await api.raw("/api/prefetch", broken, "application/x-www-form-urlencoded"), 17)


async def test_prefetch_with_a_form_body_of_repeated_fields(api: Api) -> None:
    """A form with publish_urls repeated gives one URL per field."""
    fields = [*creds().items(), *(("publish_urls", u) for u in urls(3))]
    body = urlencode(fields).encode()
    taskid = assert_submitted(await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded; charset=utf-8"))
    task = await api.store.get_task(taskid)
    assert task is not None and task.total == 3 * NODES


async def test_a_form_url_whose_query_the_forms_ampersand_cut_is_refused(api: Api) -> None:
    """`instances=http://…/img?w=100&h=200` unencoded reads as the URL `…?w=100` and a field `h`: it purged
    `img?w=100` and said it succeeded (a tester's): refused, naming the field and `%26`; nothing made; so is a
    field the call reads (`…?id=9&type=file`: the refresh's type, or the URL's? a re-tester's). The credentials
    or more URLs after it, a URL's `&` written `%26`, and a URL encoded whole (its '?' as %3F: a client that
    encodes cannot have cut it; it was refused before a field of its own, a re-tester's) are taken."""
    form = "application/x-www-form-urlencoded"
    signed = urlencode(creds())
    cut = f"{signed}&type=file&instances=http://www.example.test/img?w=100&h=200".encode()
    answer = await api.raw("/api/refresh", cut, form)
    assert_code(answer, 17)
    assert "'h'" in answer["msg"] and "%26" in answer["msg"] and "img?w=100" in answer["msg"], answer["msg"]
    listed = f"publish_urls[]=http://www.example.test/a?x=1&y&publish_urls[]=http://www.example.test/b&{signed}"
    assert_code(await api.raw("/api/prefetch", listed.encode(), form), 17)
    assert await api.store.list_tasks(USER, TaskFilter()) == []
    for path, cut in (
        ("/api/refresh", "instances=http://www.example.test/p?id=9&type=file"),
        ("/api/prefetch", "publish_urls=http://www.example.test/p?id=8&refresh=1"),
        ("/api/prefetch", "publish_urls=http://www.example.test/p?id=7&idempotency_key=abc"),
    ):
        answer = await api.raw(path, f"{signed}&{cut}".encode(), form)
        assert_code(answer, 17)
        assert f"'{cut.rsplit('&', 1)[1].split('=')[0]}'" in answer["msg"], answer["msg"]
    assert await api.store.list_tasks(USER, TaskFilter()) == []
    known = f"publish_urls=http://www.example.test/a?w=100&{signed}&publish_urls=http://www.example.test/b".encode()
    assert_submitted(await api.raw("/api/prefetch", known, form))
    escaped = f"{signed}&refresh=false&publish_urls=http://www.example.test/img?w=100%26h=200".encode()
    taskid = assert_submitted(await api.raw("/api/prefetch", escaped, form))
    assert {i.url for i in await api.store.list_items(taskid)} == {"http://www.example.test/img?w=100&h=200"}
    encoded = urlencode({**creds(), "publish_urls": "http://www.example.test/x?v=1&w=2", "format": "json"})
    taskid = assert_submitted(await api.raw("/api/prefetch", encoded.encode(), form))
    assert {i.url for i in await api.store.list_items(taskid)} == {"http://www.example.test/x?v=1&w=2"}


async def test_prefetch_with_json_and_no_content_type(api: Api) -> None:
    """A JSON body sent without a Content-Type is still read as JSON."""
    body = orjson.dumps({**creds(), "publish_urls": urls(1)})
    assert_submitted(await api.raw("/api/prefetch", body, None))
    assert_submitted(
        await api.raw("/api/prefetch", b"  " + orjson.dumps({**creds(), "publish_urls": urls(1)[0]}), "text/plain")
    )


async def test_a_json_body_labelled_a_form_is_read_as_json(api: Api) -> None:
    """What `curl -d '{"username": …}'` sends: a form type on a JSON body (before: code 3, "username must not
    be empty", though it was there). A form cannot start with '{'."""
    body = orjson.dumps({**creds(), "publish_urls": urls(1)})
    assert_submitted(await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded"))


@pytest.mark.parametrize("content_type", ["application/json", None, "application/x-www-form-urlencoded"])
async def test_a_byte_order_mark_before_the_body_is_skipped(api: Api, content_type: str | None) -> None:
    """Some Windows clients start UTF-8 with a BOM (before: "not valid JSON", or code 3 for a form, its first
    field named '\ufeffusername')."""
    if content_type == "application/x-www-form-urlencoded":
        body = urlencode({**creds(), "publish_urls": urls(1)[0]}).encode()
    else:
        body = orjson.dumps({**creds(), "publish_urls": urls(1)})
    assert_submitted(await api.raw("/api/prefetch", b"\xef\xbb\xbf" + body, content_type))


async def test_a_form_is_read_in_its_charset() -> None:
    """A form in GBK, as its Content-Type says (before: read as UTF-8, the username unknown); a charset that
    is no text encoding is refused with HTTP 415, a body not in its charset with code 2."""
    config = dict(BASE_CONFIG)
    config["users"] = [*BASE_CONFIG["users"], {"name": "京东用户", "secret": "s", "domains": ["www.example.test"]}]
    async with running(parse_config(config)) as api:
        fields = {**creds("京东用户", "s"), "publish_urls": urls(1)[0]}
        body = urlencode(fields, encoding="gbk").encode()
        assert_submitted(await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded; charset=GBK"))
        # Its signature hashed over the name's GBK bytes, as such a client makes it (before: code 7).
        fields["signature"] = hashlib.md5(f"{DAY:%Y%m%d}京东用户s".encode("gbk")).hexdigest()
        body = urlencode(fields, encoding="gbk").encode()
        assert_submitted(await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded; charset=GBK"))
        refused = await api.client.post(
            "/api/prefetch", content=body, headers={"content-type": "application/x-www-form-urlencoded; charset=zlib"}
        )
        assert (refused.status_code, refused.json()) == (
            415,
            {"error": "unknown charset 'zlib': send the form in UTF-8"},
        )
        bad = await api.raw("/api/prefetch", b"username=\xff\xfe", "application/x-www-form-urlencoded; charset=utf-8")
        assert_code(bad, 2)


async def test_a_compressed_body_is_refused_with_415(api: Api) -> None:
    """Content-Encoding on a call is not read (before: "not valid JSON: str is not valid UTF-8")."""
    body = gzip.compress(orjson.dumps({**creds(), "publish_urls": urls(1)}))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = await api.client.post("/api/prefetch", content=body, headers=headers)
    assert (response.status_code, response.json()) == (
        415,
        {"error": "unsupported content coding 'gzip': send the body uncompressed"},
    )
    # In two fields, `identity` first: the first alone was read, and the body taken for GBK (a tester's).
    for fields in ([("content-encoding", "identity"), ("content-encoding", "gzip")], [("content-encoding", "br, ")]):
        response = await api.client.post(
            "/api/prefetch", content=body, headers=[("content-type", "application/json"), *fields]
        )
        assert response.status_code == 415, (fields, response.text)


async def test_a_form_field_given_twice_is_named(api: Api) -> None:
    """Before: "username must be a string" (form fields are strings); then code 3, username empty, which it is
    not: code 2, the parameters are wrong."""
    body = urlencode([*creds().items(), ("username", USER), ("publish_urls", urls(1)[0])]).encode()
    answer = await api.raw("/api/prefetch", body, "application/x-www-form-urlencoded")
    assert (answer["status"], answer["msg"]) == (2, "username is given 2 times: give it once")


REFRESH_FIELDS = [("type", "file"), ("instances", "http://www.example.test/a")]
PREFETCH_FIELDS = [("publish_urls", "http://www.example.test/a")]


@pytest.mark.parametrize(
    ("path", "fields", "name", "values"),
    [
        ("/api/prefetch", PREFETCH_FIELDS, "username", [USER, ""]),
        ("/api/prefetch", PREFETCH_FIELDS, "signature", [signature(), signature()]),
        ("/api/prefetchQuery", [("taskid", str(uuid.uuid4()))], "taskid", [""]),
        ("/api/refresh", [("instances", "http://www.example.test/a")], "type", ["file", "dir"]),
        ("/api/prefetch", PREFETCH_FIELDS, "refresh", ["1", "1"]),
        ("/api/prefetch", PREFETCH_FIELDS, "idempotency_key", ["k1", "k2"]),
        ("/api/refresh", REFRESH_FIELDS, "callback_url", ["http://hooks.test/a", "http://hooks.test/b"]),
    ],
)
async def test_a_field_of_one_value_given_twice_is_refused_as_repeated_not_as_empty(
    api: Api, path: str, fields: list[tuple[str, str]], name: str, values: list[str]
) -> None:
    """A field that takes one value, given twice in a form or as a JSON object's key twice: code 2 saying it was
    repeated. Before: the field's code for empty (3 for username, 11 for taskid, 16 for type) or a boolean's
    message ("not ['1', '1']"); in JSON the last one was taken silently ({"username": "a", "username": ""}:
    "username must not be empty"; two keys of a field given once before it: a call made on the last's)."""
    given = [(k, v) for k, v in [*creds().items(), *fields] if k != name]
    form = urlencode([*given, *((name, v) for v in [*values[:1], *values])]).encode()
    said = f"{name} is given {len(values) + 1} times: give it once"
    answer = await api.raw(path, form, "application/x-www-form-urlencoded")
    assert (answer["status"], answer["msg"]) == (2, said)
    pairs = [*given, (name, values[0]), *((name, v) for v in values)]
    body = b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in pairs) + b"}"
    answer = await api.raw(path, body, "application/json")
    assert (answer["status"], answer["msg"]) == (2, said)


async def test_a_json_key_given_twice_is_found_however_it_is_spelled(api: Api) -> None:
    """A key spelled with a \\u escape the second time is the same key; a key's name as another's value, or as a
    nested object's key, is no repeat (PHP's escaped slashes in URLs too)."""
    escaped = b'{"username": "%s", "user\\u006eame": "%s", "signature": "%s", "publish_urls": ["x"]}' % (
        USER.encode(),
        USER.encode(),
        signature().encode(),
    )
    answer = await api.raw("/api/prefetch", escaped, "application/json")
    assert (answer["status"], answer["msg"]) == (2, "username is given 2 times: give it once")
    fine = orjson.dumps(
        {**creds(), "idempotency_key": "username", "x": {"username": 1}, "publish_urls": ["http://www.example.test/a"]}
    ).replace(b"/", b"\\/")
    assert (await api.raw("/api/prefetch", fine, "application/json"))["status"] == 0


async def test_a_list_of_one_for_a_text_field_is_said_not_to_be_a_string(api: Api) -> None:
    """Before: "username is given 1 times: give it once" (a JSON list of one is no repeated form field)."""
    answer = await api.call("/api/prefetch", {**creds(), "username": [USER], "publish_urls": urls(1)})
    assert (answer["status"], answer["msg"]) == (3, "username must be a string")


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/refresh", {"type": "bogus", "instances": ["http://www.example.test/a"]}),
        ("/api/prefetch", {"refresh": "yes", "publish_urls": ["http://www.example.test/a"]}),
        ("/api/prefetch", {"callback_url": 5, "publish_urls": ["http://www.example.test/a"]}),
    ],
)
async def test_the_caller_is_checked_before_the_values_of_the_fields(api: Api, path: str, fields: Any) -> None:
    """Missing fields, then the username and the signature, then the values (before: codes 16, 2 and 17 to a
    caller without credentials, or with a wrong signature)."""
    assert_code(await api.call(path, fields), 3)
    assert_code(await api.call(path, {**fields, "username": USER, "signature": "0" * 32}), 7)
    assert (await api.call(path, {**fields, **creds()}))["status"] in (2, 16, 17)


@pytest.mark.parametrize("taskid", [123, ["x"], {"id": "x"}])
async def test_a_query_checks_the_credentials_before_the_task_id_s_type(api: Api, taskid: Any) -> None:
    """As the submissions do: a caller without a username, or with a wrong signature, is told so, not that the
    task id is no string (a reviewer's: code 11 before code 3 or 7)."""
    assert_code(await api.call("/api/prefetchQuery", {"taskid": taskid}), 3)
    assert_code(await api.call("/api/refreshQuery", {"username": USER, "signature": "0" * 32, "taskid": taskid}), 7)
    assert_code(await api.call("/api/prefetchQuery", {**creds(), "taskid": taskid}), 11)
    assert_code(await api.call("/api/prefetchQuery", {**creds(), "taskid": " "}), 11)


async def test_parameters_in_the_query_string_or_a_form_labelled_json_are_told_where_they_go(api: Api) -> None:
    """Before: "parameters must not be empty" to a POST whose parameters were in its URL's query string (as
    HTTP helpers' "params" put them), and a bare parse error to a form labelled application/json."""
    query = urlencode({**creds(), "taskid": "x"})
    response = await api.client.post(f"/api/prefetchQuery?{query}")
    assert response.json() == {
        "status": 2,
        "msg": "parameters must not be empty (the URL's query string is not read: send them in the body, as JSON "
        "or a form)",
    }
    assert (await api.raw("/api/prefetchQuery", b"", None))["msg"] == "parameters must not be empty"
    response = await api.client.post(f"/api/prefetch?{urlencode({'username': USER})}", json={"signature": "x"})
    assert response.json() == {
        "status": 3,
        "msg": "username must not be empty (the URL's query string is not read: send them in the body, as JSON or "
        "a form)",
    }  # some in the query, the rest in the body: said too (a tester's: a bare "username must not be empty")
    response = await api.client.post("/api/prefetch", json={"signature": "x"})
    assert response.json() == {"status": 3, "msg": "username must not be empty"}
    answer = await api.raw("/api/prefetchQuery", query.encode(), "application/json")
    assert answer["status"] == 2 and answer["msg"].startswith("the body is not valid JSON: "), answer
    assert answer["msg"].endswith(" (it looks like a form: label it application/x-www-form-urlencoded)"), answer
    answer = await api.raw("/api/prefetchQuery", b"[1,", "application/json")
    assert answer["status"] == 2 and "looks like a form" not in answer["msg"], answer


async def test_a_boolean_field_that_is_no_boolean_is_named(api: Api) -> None:
    """Before: "a boolean was expected, not 'yes'", naming no field."""
    answer = await api.call("/api/prefetch", {**creds(), "refresh": "yes", "publish_urls": urls(1)})
    assert (answer["status"], answer["msg"]) == (2, "refresh: a boolean was expected (true or false), not 'yes'")


async def test_prefetch_query_answers_in_progress(api: Api) -> None:
    """A fresh task is status 1 'In Progress', found by its 36- or 32-character id."""
    taskid = await api.submitted()
    for given in (taskid, uuid.UUID(taskid).hex, taskid.upper(), f" {taskid} "):
        response = await api.query(given)
        assert response.status_code == 200
        assert response.json() == {"status": 0, "data": {"taskid": taskid, "status": 1, "msg": "In Progress"}}
    # A digit of another script is no digit of a task id (uuid read `١` as 1, and the task was found: a tester's).
    assert taskid[14] == "4"  # a version 4 UUID's
    other_script = taskid[:14] + "\u0664" + taskid[15:]
    assert (await api.query(other_script)).json()["status"] == 1  # JD's "task not found"


async def test_prefetch_query_with_a_form_body(api: Api) -> None:
    """prefetchQuery also takes a form body."""
    taskid = await api.submitted()
    body = urlencode({**creds(), "taskid": taskid}).encode()
    answer = await api.raw("/api/prefetchQuery", body, "application/x-www-form-urlencoded")
    assert answer["data"]["status"] == 1


async def test_language_zh_answers_in_chinese() -> None:
    """With language = "zh", a fresh task is 进行中; the submit answer stays 成功."""
    async with running(make_config(language="zh")) as zh:
        answer = await zh.prefetch(urls(1))
        taskid = assert_submitted(answer)
        data = (await zh.query(taskid)).json()["data"]
        assert data == {"taskid": taskid, "status": 1, "msg": "进行中"}


async def test_the_signature_day_follows_the_clock() -> None:
    """The service's clock decides the signature day: at 17:30 UTC the Shanghai date is already the next day."""
    late = datetime(2024, 3, 9, 17, 30, tzinfo=UTC).timestamp()  # 2024-03-10 01:30 in Shanghai
    async with running(make_config(signature_window_days=0), clock=lambda: late) as strict:
        assert (await strict.prefetch(urls(1)))["status"] == 0
        day_before = sign(USER, SECRET, DAY - timedelta(days=1))
        answer = await strict.call(
            "/api/prefetch", {"username": USER, "signature": day_before, "publish_urls": urls(1)}
        )
        assert_code(answer, 7)


# --- HTTP-level refusals ----------------------------------------------------------------------------------


async def test_413_for_a_body_over_the_limit_by_content_length(api: Api) -> None:
    """A body larger than max_body_bytes (announced by Content-Length) is HTTP 413."""
    body = orjson.dumps({**creds(), "publish_urls": "x" * MAX_BODY})
    response = await api.client.post("/api/prefetch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"error": f"request body too large: over [api] max_body_bytes ({MAX_BODY} bytes)"}
    assert await api.store.usage(USER, f"{DAY:%Y%m%d}") == (0, 0)


async def test_a_content_length_of_5000_digits_is_413_not_an_exception() -> None:
    """int() refuses over 4,300 digits: the middleware raised ValueError out of the app (uvicorn refuses such a
    head itself, another ASGI server may not)."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    limit = BodySizeLimit(app, lambda: MAX_BODY, BodyReads())
    await limit({"type": "http", "headers": [(b"content-length", b"1" * 5000)]}, receive, send)
    assert sent[0]["status"] == 413, sent
    sent.clear()  # leading zeros are no size (RFC 9110's 1*DIGIT): a re-tester's 19 characters of value 2 were 413
    await limit({"type": "http", "headers": [(b"content-length", b"0" * 5000)]}, receive, send)
    assert sent[0]["status"] == 200, sent


async def test_a_reloaded_body_limit_applies_to_the_next_request(api: Api) -> None:
    """A reload (the service given a new config) that raises max_body_bytes lets the next larger body in,
    and one that lowers it refuses a body the old limit took (before: the limit of the start, always)."""
    body = orjson.dumps({**creds(), "publish_urls": "x" * MAX_BODY})
    api.service.config = make_config(max_body_bytes=4 * MAX_BODY)
    response = await api.client.post("/api/prefetch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["status"] == 17  # read, then refused as a URL
    api.service.config = make_config(max_body_bytes=64)
    small = orjson.dumps({**creds(), "publish_urls": urls(1)})
    response = await api.client.post("/api/prefetch", content=small, headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("drop_bytes", [64 * 1024 * 1024, 2048])
async def test_413_for_a_chunked_body_over_the_limit(
    api: Api, monkeypatch: pytest.MonkeyPatch, drop_bytes: int
) -> None:
    """A chunked body (no Content-Length) that grows past max_body_bytes is HTTP 413, its rest read and dropped
    up to DROP_BYTES (a client that sends it all before reading the answer gets the 413, not a reset); past
    those, not read."""
    monkeypatch.setattr(edgewarm.api.middleware, "DROP_BYTES", drop_bytes)
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            sent.append(1)
            yield b"a" * 1024

    response = await api.client.post("/api/prefetch", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert len(sent) == 10 if drop_bytes > 10 * 1024 else len(sent) < 10


async def test_chunked_body_under_the_limit_is_served(api: Api) -> None:
    """A chunked body within the limit reaches the route whole."""
    body = orjson.dumps({**creds(), "publish_urls": urls(2)})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16):
            yield body[start : start + 16]

    response = await api.client.post("/api/prefetch", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert_submitted(response.json())


@pytest.mark.parametrize("path", ["/api/prefetch", "/api/prefetchQuery"])
async def test_405_for_get(api: Api, path: str) -> None:
    """GET on a JD route is HTTP 405, not a JD answer, saying what to use (it said "Method Not Allowed")."""
    response = await api.client.get(path, params=creds())
    assert response.status_code == 405
    said = {"error": "method GET not allowed here: use POST"}
    assert (response.json(), response.headers["allow"]) == (said, "POST")


@pytest.mark.parametrize("key", ["k\u0085INJ", "k\u009b31m", "k\x1bx"])
async def test_an_idempotency_key_with_a_c1_control_character_is_refused(api: Api, key: str) -> None:
    """The refusal says "none of them a control character": C1 (\x80-\x9f) too (before: only C0 and DEL)."""
    answer = await api.call("/api/prefetch", {**creds(), "publish_urls": urls(1), "idempotency_key": key})
    assert answer["status"] == 2 and "control character" in answer["msg"], answer


async def test_an_idempotency_key_of_spaces_alone_is_refused(api: Api) -> None:
    """A key of " " was dropped: each retry made a task and was charged (a developer's). Refused, code 2; a
    key is taken without the spaces around it (as README says)."""
    for field in ({"idempotency_key": " "}, {"idempotency_key": "\t \t"}):
        answer = await api.call("/api/prefetch", {**creds(), "publish_urls": urls(1), **field})
        assert answer["status"] == 2 and "idempotency_key: only spaces" in answer["msg"], answer
    first = await api.call("/api/prefetch", {**creds(), "publish_urls": urls(1), "idempotency_key": " k "})
    again = await api.call("/api/prefetch", {**creds(), "publish_urls": urls(1), "idempotency_key": "k"})
    assert first["status"] == 0 and again["taskid"] == first["taskid"], (first, again)


async def test_a_native_body_too_deep_to_parse_has_its_code(api: Api) -> None:
    """Before: 400 {"error": "There was an error parsing the body"}, without the JD code the README promises."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature(), "content-type": "application/json"}
    body = b'{"taskids":' + b"[" * 1100 + b"]" * 1100 + b"}"
    response = await api.client.post("/v1/tasks/lookup", content=body, headers=headers)
    assert response.status_code == 400 and response.json()["code"] == 2, response.text


async def test_a_get_of_the_lookups_path_is_told_to_post(api: Api) -> None:
    """GET /v1/tasks/lookup was read as the task "lookup": 404 "task not found" (a session's note). It is 405,
    saying to POST, with or without credentials; a task's own id is still read."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    for sent in (headers, {}):
        response = await api.client.get("/v1/tasks/lookup", headers=sent)
        assert response.status_code == 405 and response.headers["allow"] == "POST", response.text
        assert response.json() == {"error": "method GET not allowed here: use POST"}
    taskid = await api.submitted()
    assert (await api.client.get(f"/v1/tasks/{taskid}", headers=headers)).status_code == 200


async def test_an_unknown_route_answers_404_in_the_errors_shape(api: Api) -> None:
    response = await api.client.get("/api/nothing")
    assert (response.status_code, response.json()) == (404, {"error": "Not Found"})


FORM_TYPE = "application/x-www-form-urlencoded"


@pytest.mark.parametrize("content_type", ["application/xml", "text/xml", "image/png"])
@pytest.mark.parametrize("path", ["/api/prefetch", "/api/prefetchQuery"])
async def test_415_for_an_unsupported_content_type(api: Api, path: str, content_type: str) -> None:
    """An XML (or image) body is HTTP 415, naming what is read."""
    response = await api.client.post(path, content=b"<a/>", headers={"content-type": content_type})
    media = content_type.split(";")[0]
    assert (response.status_code, response.json()) == (
        415,
        {"error": f"unsupported content type {media!r}: send application/json or a form ({FORM_TYPE})"},
    )


async def test_a_form_of_too_many_fields_is_refused_saying_how_to_send_a_long_list() -> None:
    """A bulk user's 15,000 repeated fields were "the form has more than 10000 fields", nothing more."""
    async with running(make_config(max_body_bytes=10**7)) as api:
        body = urlencode([*creds().items(), *(("publish_urls", u) for u in urls(15_000))]).encode()
        answer = await api.raw("/api/prefetch", body, FORM_TYPE)
    said = "the form has more than 10000 fields (a long URL list: send it as JSON, or as one field separated by ',')"
    assert (answer["status"], answer["msg"]) == (2, said)


async def test_a_multipart_form_is_read_as_a_form(api: Api) -> None:
    """PHP's curl given an array of fields (CURLOPT_POSTFIELDS) posts multipart/form-data: it was HTTP 415
    ("send application/json or a form", which to a PHP user it is). Its fields are read as a form's, lists
    repeated or as PHP names them; a file among them, or a body that is no multipart, is refused with code 2."""
    fields = {**creds(), "publish_urls[0]": urls(2)[0], "publish_urls[1]": urls(2)[1]}
    answer = await api.client.post("/api/prefetch", files={k: (None, v) for k, v in fields.items()})
    assert answer.headers["content-type"].startswith("application/json")
    taskid = assert_submitted(answer.json())
    assert sorted({i.url for i in await api.store.list_items(taskid)}) == urls(2)
    repeated = [*creds().items(), ("publish_urls", urls(3)[2]), ("publish_urls", urls(4)[3])]
    assert_submitted(
        (
            await api.client.post(
                "/api/prefetch", data=dict(repeated[:2]), files=[("publish_urls", (None, u)) for _, u in repeated[2:]]
            )
        ).json()
    )
    with_file = await api.client.post("/api/prefetch", data=creds(), files={"publish_urls": ("u.txt", b"http://x/")})
    said = "the multipart body cannot be read: a part is a file: give the parameters as fields"
    assert (with_file.json()["status"], with_file.json()["msg"]) == (2, said)
    broken = await api.raw("/api/prefetch", b"--x\r\nnot a part", "multipart/form-data; boundary=x")
    assert broken["status"] == 2, broken
    # Without its closing boundary: its last part was dropped (a re-tester's idempotency key: two tasks).
    parts = [*creds().items(), ("publish_urls", urls(5)[4]), ("idempotency_key", "k-cut")]
    cut = b"".join(f'--XX\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in parts)
    for body, said in ((cut, "it does not end with its closing --XX--"), (cut + b"--XX--\r\n", None)):
        answer = await api.raw("/api/prefetch", body, "multipart/form-data; boundary=XX")
        if said is None:
            assert_submitted(answer)
        else:
            assert (answer["status"], answer["msg"]) == (2, f"the multipart body cannot be read: {said}")


async def test_the_jd_calls_are_served_directly_and_nothing_else_is() -> None:
    """The JD calls (POST, the Request alone) skip FastAPI's per-request machinery; routes with parameters don't."""
    async with running(make_config()) as api:
        direct = direct_endpoints(create_app(api.service).router.routes)
    assert set(direct) == {"/api/prefetch", "/api/refresh", "/api/prefetchQuery", "/api/refreshQuery"}


async def test_the_direct_table_answers_without_the_fastapi_route(api: Api) -> None:
    """With the JD routes taken out of FastAPI's router after start, a POST is still answered (by the table) while
    a GET, which the table does not take, finds no route."""
    taskid = await api.submitted()
    app = api.client._transport.app  # type: ignore[attr-defined]
    app.router.routes[:] = [r for r in app.router.routes if not getattr(r, "path", "").startswith("/api/")]
    response = await api.query(taskid)
    assert response.status_code == 200
    assert response.json()["data"]["taskid"] == taskid
    assert (await api.client.get("/api/prefetchQuery")).status_code == 404


# --- native route ----------------------------------------------------------------------------------------------


async def test_native_task_view(api: Api) -> None:
    """GET /v1/tasks/{id} shows counts, progress and every item of a fresh task."""
    taskid = await api.submitted(2)
    response = await api.native(taskid)
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["taskid"] == taskid
    assert (view["kind"], view["status"], view["msg"]) == ("prefetch", 1, "In Progress")
    assert view["total"] == 2 * NODES
    assert view["counts"] == {"waiting": 4, "pending": 2, "running": 0, "succeeded": 0, "failed": 0}
    assert view["progress"] == 0.0
    assert view["finished_at"] is None and view["duration_seconds"] is None
    assert view["created_at"] == "2024-03-10T04:00:00.000+00:00"
    assert len(view["items"]) == 2 * NODES
    first = view["items"][0]
    assert first["url"] == urls(2)[0]
    assert first["node"] == "shield-1"
    assert (first["action"], first["state"], first["attempts"]) == ("warm", "pending", 0)


async def test_native_task_view_shows_progress(api: Api) -> None:
    """Once the shield items succeed, the view counts them and progress is 2/6."""
    taskid = await api.submitted(2)
    claims = await api.store.claim_due_items("w1", 100, NOW + 1, 60)
    assert {c.node for c in claims} == {"shield-1"}
    outcomes = [ItemOutcome(c.item_id, True, 1, 200, "MISS", 10) for c in claims]
    assert await api.store.record_outcomes("w1", outcomes, NOW + 2) == 2
    view = (await api.native(taskid)).json()
    assert view["counts"] == {"waiting": 0, "pending": 4, "running": 0, "succeeded": 2, "failed": 0}
    assert view["progress"] == pytest.approx(2 / 6, abs=1e-4)
    shield = [i for i in view["items"] if i["node"] == "shield-1"]
    assert {(i["state"], i["http_status"], i["cache_state"], i["bytes"]) for i in shield} == {
        ("succeeded", 200, "MISS", 10)
    }


async def test_native_task_view_pages_items(api: Api) -> None:
    """offset and limit page the items."""
    taskid = await api.submitted(2)
    view = (await api.native(taskid, offset=2, limit=3)).json()
    assert (view["offset"], view["limit"], len(view["items"])) == (2, 3, 3)
    assert (await api.native(taskid, limit=0)).json()["items"] == []


async def test_native_task_view_gives_the_items_in_a_state(api: Api) -> None:
    """`state=failed` finds a big task's few failures in one page (before: every page read, 26 MB for
    120,000 items); a state that is none is a 400."""
    taskid = await api.submitted(2)
    claims = await api.store.claim_due_items("w1", 100, NOW + 1, 60)
    failure = ItemOutcome(claims[0].item_id, False, 1, 404, "MISS", 0, "HTTP 404")
    await api.store.record_outcomes("w1", [failure], NOW + 2)
    view = (await api.native(taskid, state="failed")).json()
    assert [(i["state"], i["node"]) for i in view["items"]] == [  # the shield, then the edges it failed
        ("failed", "shield-1"),
        ("failed", "edge-1"),
        ("failed", "edge-2"),
    ]
    assert (await api.native(taskid, state="running")).json()["items"][0]["state"] == "running"
    assert (await api.native(taskid, state="gone")).status_code == 400


async def test_native_accepts_the_32_hex_id(api: Api) -> None:
    """The native route finds a task by its 32-hex form too."""
    taskid = await api.submitted()
    response = await api.native(uuid.UUID(taskid).hex)
    assert response.status_code == 200
    assert response.json()["taskid"] == taskid


@pytest.mark.parametrize("sig", ["0" * 32, sign(USER, SECRET, DAY - timedelta(days=3))])
async def test_native_401_on_a_bad_signature(api: Api, sig: str) -> None:
    """A wrong signature is HTTP 401 with JD code 7."""
    taskid = await api.submitted()
    response = await api.native(taskid, sig=sig)
    assert response.status_code == 401
    assert response.json()["code"] == 7


async def test_native_401_without_credentials(api: Api) -> None:
    """No credential headers, or an unknown user, is HTTP 401."""
    taskid = await api.submitted()
    assert (await api.client.get(f"/v1/tasks/{taskid}")).status_code == 401
    assert (await api.native(taskid, user="nobody", sig=sign("nobody", SECRET, DAY))).status_code == 401


async def test_native_404_for_another_users_task(api: Api) -> None:
    """Another user's task is HTTP 404, exactly like an unknown or malformed id."""
    taskid = await api.submitted()
    other_sig = signature(OTHER, OTHER_SECRET)
    foreign = await api.native(taskid, user=OTHER, sig=other_sig)
    unknown = await api.native(str(uuid.uuid4()), user=OTHER, sig=other_sig)
    malformed = await api.native("nope", user=OTHER, sig=other_sig)
    assert foreign.status_code == unknown.status_code == malformed.status_code == 404
    assert foreign.content == unknown.content == malformed.content


async def test_native_400_for_a_bad_page(api: Api) -> None:
    """A negative offset is refused before any lookup."""
    taskid = await api.submitted()
    assert (await api.native(taskid, offset=-1)).status_code == 400


# --- operations ---------------------------------------------------------------------------------------------------


async def test_openapi_lists_the_routes(api: Api) -> None:
    """/openapi.json documents the JD routes and the native task route."""
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/prefetch", "/api/prefetchQuery", "/v1/tasks/{taskid}"} <= set(paths)
    assert "post" in paths["/api/prefetch"]
    assert "get" in paths["/v1/tasks/{taskid}"]
    body = paths["/api/prefetch"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded", "multipart/form-data"} <= set(body)
    for path in ("/api/prefetch", "/api/refresh", "/api/prefetchQuery", "/api/refreshQuery"):  # (they had the 200 only)
        assert set(paths[path]["post"]["responses"]) == {"200", "405", "413", "415"}, path
    # As the answers are (a developer's check): no 422 (a parameter refused is a 400 with its JD code), a 405
    # and a 503 on the native routes, the lookup's 413, /metrics in text.
    document = response.json()
    assert not [p for p, ops in paths.items() for op in ops.values() if "422" in op["responses"]]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert {"400", "401", "404", "405", "503"} <= set(paths["/v1/tasks/{taskid}"]["get"]["responses"])
    assert "413" in paths["/v1/tasks/lookup"]["post"]["responses"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    refused = await api.native("x", limit=-1)
    assert refused.status_code == 400 and refused.json()["code"] == 2, refused.text


async def test_healthz(api: Api) -> None:
    """/healthz answers ok."""
    response = await api.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"ok": True})


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_may_ask_with_head(api: Api, path: str) -> None:
    """Load balancers and uptime checkers probe with HEAD (answered 405, allow: GET): the GET's status and
    headers, no body."""
    got = await api.client.get(path)
    head = await api.client.head(path)
    assert (head.status_code, head.content) == (got.status_code, b"")
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # the metrics' figures may change between the two
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


async def test_a_dir_refresh_is_counted_against_dirs_per_call_not_urls_per_call(api: Api) -> None:
    """A user allowed 3 URLs a call (dirs_per_call left at 5) refreshes 4 directories in one call; 6 are refused
    with code 46, naming directories; 4 files are refused with code 9 (before, the directories were counted
    against urls_per_call: "4 URLs in one call; the limit is 3")."""
    dirs = [f"http://www.example.test/d{n}/" for n in range(6)]
    body = {**creds(SMALL, SMALL_SECRET), "type": "dir"}
    accepted = await api.call("/api/refresh", {**body, "instances": dirs[:4]})
    assert accepted["status"] == 0, accepted
    refused = await api.call("/api/refresh", {**body, "instances": dirs})
    assert_code(refused, 46)
    assert refused["msg"] == "6 directories in one call; the limit is 5"
    files = await api.call("/api/refresh", {**body, "type": "file", "instances": urls(4)})
    assert_code(files, 9)
    assert files["msg"] == "4 URLs in one call; the limit is 3"


async def test_a_directory_without_its_slash_is_refused_as_illegal_before_ownership(api: Api) -> None:
    """A dir refresh's entry not ending with '/' is an illegal URL (17), found where a file refresh finds one:
    before the domains are checked (a tester: a foreign domain before it answered 15, while a prefetch's illegal
    URL after a foreign one answers 17)."""
    body = {**creds(), "type": "dir"}
    refused = await api.call(
        "/api/refresh", {**body, "instances": ["http://www.other.test/x/", "http://www.example.test/x"]}
    )
    assert_code(refused, 17)
    assert refused["msg"] == "a directory must end with '/' (and have no query): http://www.example.test/x"
    refused = await api.call(
        "/api/refresh", {**body, "instances": ["http://www.other.test/x/", "http://www.example.test/x/"]}
    )
    assert_code(refused, 15)
    # A host alone (a directory tester's one-character typo): refused, not taken for the whole site.
    for host_alone in ("http://www.example.test", "http://www.example.test:80"):
        refused = await api.call("/api/refresh", {**body, "instances": [host_alone]})
        assert_code(refused, 17)
        said = f"a directory must end with '/' (and have no query): {host_alone} (the whole site: {host_alone}/)"
        assert refused["msg"] == said, refused
    assert_submitted(await api.call("/api/refresh", {**body, "instances": ["http://www.example.test/"]}))


async def test_an_idempotency_key_used_again_for_other_urls_is_refused_naming_the_first_task(api: Api) -> None:
    """The same key with the same URLs returns the first task; with other URLs, or the same URLs refreshed
    first, the call is refused naming the first task (before, the first task came back and the other URLs were
    never warmed, silently)."""
    body = {**creds(), "idempotency_key": "launch-7"}
    first = await api.call("/api/prefetch", {**body, "publish_urls": urls(2)})
    assert first["status"] == 0, first
    again = await api.call("/api/prefetch", {**body, "publish_urls": urls(2)})
    assert again["taskid"] == first["taskid"]
    spelled = [u.replace("http://www.example.test/", "HTTP://WWW.Example.test:80/") for u in urls(2)]
    again = await api.call("/api/prefetch", {**body, "publish_urls": spelled})  # one object each: the same URLs
    assert again["taskid"] == first["taskid"], again
    for other, how in (
        ({"publish_urls": urls(3)}, "with other URLs"),
        ({"publish_urls": urls(2)[::-1]}, "with the same URLs in another order"),  # it said "or steps (refresh)"
        ({"publish_urls": urls(2), "refresh": True}, "with other steps (refresh: the purges first, or not)"),
    ):
        refused = await api.call("/api/prefetch", {**body, **other})
        assert_code(refused, 1)
        said = f"this idempotency key was used for task {first['taskid']} {how}: use a new key for this call"
        assert refused["msg"] == said, other
    assert len(await api.store.list_tasks(USER, TaskFilter())) == 1
    # The same key for a refresh: refused naming the first task and its kind.
    body = {**creds(), "idempotency_key": "launch-7", "instances": urls(2), "type": "file"}
    refused = await api.call("/api/refresh", body)
    assert_code(refused, 1)
    assert refused["msg"] == f"this idempotency key was used for task {first['taskid']}, a prefetch task: use a new key"


async def test_an_idempotency_key_used_again_for_a_directory_after_a_file_says_so(api: Api) -> None:
    """A file refresh then the same entry as a directory with the key: it said "with other steps (refresh: the
    purges first, or not)", which `refresh` plays no part in (a re-tester's)."""
    body = {**creds(), "idempotency_key": "ik-3", "instances": ["http://www.example.test/t/"]}
    first = await api.call("/api/refresh", {**body, "type": "file"})
    refused = await api.call("/api/refresh", {**body, "type": "dir"})
    assert_code(refused, 1)
    said = f"this idempotency key was used for task {first['taskid']} of another type (file or dir): use a new key"
    assert refused["msg"] == f"{said} for this call"


async def test_an_idempotency_key_used_again_with_another_callback_url_is_refused() -> None:
    """The same key and URLs with another callback URL (or none) is another request: refused naming the first
    task (before, the first task came back and the new callback was never called, silently). A key in both the
    field and the header must be the same key (before, the field won, silently)."""
    config = parse_config({**BASE_CONFIG, "webhooks": {"allowed_hosts": ["hooks.test"]}})
    async with running(config) as api:
        body = {**creds(), "publish_urls": urls(2), "idempotency_key": "launch-8"}
        first = await api.call("/api/prefetch", {**body, "callback_url": "http://hooks.test/a?token=s3"})
        assert first["status"] == 0, first
        again = await api.call("/api/prefetch", {**body, "callback_url": "http://hooks.test/a?token=s3"})
        assert again["taskid"] == first["taskid"]
        for other in ({"callback_url": "http://hooks.test/b?token=s3"}, {}):
            refused = await api.call("/api/prefetch", {**body, **other})
            assert_code(refused, 1)
            assert refused["msg"] == (
                f"this idempotency key was used for task {first['taskid']} with another callback_url (or none): use "
                "a new key for this call"
            ), other
        # Other URLs as well: both said (the callback's alone was, an upgrade tester's).
        refused = await api.call("/api/prefetch", {**body, "publish_urls": urls(3)})
        assert refused["msg"] == (
            f"this idempotency key was used for task {first['taskid']} with other URLs and with another callback_url "
            "(or none): use a new key for this call"
        )
        response = await api.client.post(
            "/api/prefetch",
            json={**creds(), "publish_urls": urls(1), "idempotency_key": "k1"},
            headers={"Idempotency-Key": "k2"},
        )
        assert_code(response.json(), 2)
        assert response.json()["msg"] == "idempotency_key and the Idempotency-Key header differ: send one"
        same = await api.client.post(
            "/api/prefetch",
            json={**creds(), "publish_urls": urls(1), "idempotency_key": "k1"},
            headers={"Idempotency-Key": "k1"},
        )
        assert same.json()["status"] == 0, same.json()
        assert len(await api.store.list_tasks(USER, TaskFilter())) == 2
        # Two headers: the first alone was read, the other's task answered (a tester's): refused, nothing made.
        twice = await api.client.post(
            "/api/prefetch",
            json={**creds(), "publish_urls": urls(1)},
            headers=[("Idempotency-Key", "k1"), ("Idempotency-Key", "k9")],
        )
        assert (twice.json()["status"], twice.json()["msg"]) == (
            2,
            "the Idempotency-Key header is given 2 times: give it once",
        )
        assert len(await api.store.list_tasks(USER, TaskFilter())) == 2


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("idempotency_key", "a\x00b", 2),
        ("idempotency_key", "a\nb", 2),
        ("idempotency_key", "k" * 201, 2),
        ("callback_url", "http://hooks.test/a\x00b", 17),
        ("callback_url", "http://hooks.test/a b", 17),
        ("callback_url", "http://hooks.test:0/x", 17),
        ("callback_url", "http://hooks.test/" + "x" * 2048, 17),
    ],
)
async def test_extension_fields_with_control_characters_or_out_of_bounds_are_refused(
    api: Api, field: str, value: str, code: int
) -> None:
    """A NUL (or another control character) in an idempotency key or a callback URL, a callback URL on port
    0 or longer than 2048 characters: refused with a clear message and nothing made (before, PostgreSQL
    refused the NUL: "the store is unavailable")."""
    answer = await api.call("/api/prefetch", {**creds(), "publish_urls": urls(1), field: value})
    assert_code(answer, code)
    assert field in answer["msg"]
    assert await api.store.list_tasks(USER, TaskFilter()) == []


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"url": "a\x00b"}, "url"),
        ({"since": "nan"}, "since"),
        ({"until": "inf"}, "until"),
        ({"since": "1e400"}, "since"),
        ({"since": "1796124067000"}, "since"),  # milliseconds: read as seconds, it matched nothing and said nothing
        ({"until": "20261399"}, "until"),  # eight digits are a date: this one is none
        ({"since": "2026"}, "since"),  # a year or seconds? As seconds, every task matched (a tester's)
        ({"until": "202612"}, "until"),
        ({"since": "2026-02-29"}, "since"),  # no such day
    ],
)
async def test_a_task_list_filter_that_is_no_text_or_no_time_is_refused(
    api: Api, params: dict[str, str], name: str
) -> None:
    """`url` with a control character, `since`/`until` not finite: 400 code 2 naming the parameter (before: a
    list as if no filter or every filter matched, or on PostgreSQL "the store is unavailable")."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    response = await api.client.get("/v1/tasks", headers=headers, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 2 and response.json()["error"].startswith(f"{name}:"), response.json()


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("since=2026", "since: 2026 may be a year or a month, or seconds since 1970: give a date (2026-01-01), or "
         "seconds as 2026.0"),
        ("until=202612", "until: 202612 may be a year or a month, or seconds since 1970: give a date (2026-12-01), "
         "or seconds as 202612.0"),
        ("since=-253402300800", "since: -253402300800 is before the year 1"),  # it said "past the year 9999"
        ("since=-62135596801", "since: -62135596801 is before the year 1"),  # it was read; then told "milliseconds"
        ("until=9999-12-31T23:59:59-01:00", "until: 9999-12-31T23:59:59-01:00 is past the year 9999"),  # was read
        ("since=%D9%A1%D9%A7%D9%A9", "since: not a time (epoch seconds or ISO 8601, in ASCII)"),  # read as 179
        ("since=002026", "since: 002026 may be a year or a month, or seconds since 1970: give a date (YYYY-MM-DD), "
         "or seconds as 002026.0"),  # it suggested 0020-26-01
        ("until=20260230", "until: eight digits are a date (YYYYMMDD), and 20260230 is none (day is out of range "
         "for month); seconds since 1970 as 20260230.0"),
        ("x" * 300 + "=1", "query." + "x" * 100 + "…: not a parameter of this call (it takes status, kind, since, "
         "until, url, after, offset, limit)"),  # its name was said whole (60,000 characters)
        ("since=2026-02-29", "since: not a time (epoch seconds or ISO 8601): day is out of range for month"),
        ("since=2026-12-03&until=2026-12-01", "until (2026-12-01) is before since (2026-12-03): swap them"),
        ("startTime=1", "query.startTime: not a parameter of this call (it takes status, kind, since, until, url, "
         "after, offset, limit)"),  # a JD habit: the whole list, unfiltered, was the answer
        ("stauts=0", "query.stauts: not a parameter of this call (it takes status, kind, since, until, url, after, "
         "offset, limit)"),
        ("status=0&status=2", "query.status: given 2 times: give it once (a list is not a filter here)"),  # the last
        ("limit=5&limit=6", "query.limit: given 2 times: give it once (a list is not a filter here)"),  # counted
    ],
)  # fmt: skip
async def test_a_task_list_query_that_would_filter_otherwise_than_asked_is_refused_saying_why(
    api: Api, query: str, said: str
) -> None:
    """Each of these was answered 200 with a list filtered otherwise than its caller meant (a tester's): a
    year read as seconds since 1970, a parameter of another API or misspelt ignored, a parameter given twice
    read once, an end before the start "no tasks"; or refused with a wrong or bare reason."""
    await api.submitted()
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    response = await api.client.get(f"/v1/tasks?{query}", headers=headers)
    assert (response.status_code, response.json()) == (400, {"code": 2, "error": said})


async def test_a_parameter_given_empty_is_one_not_given(api: Api) -> None:
    """README's template `/v1/tasks?status=&kind=&…` was refused ("query.status: Input should be a valid
    integer") while an empty `since` was no filter (a dashboard tester's): every empty one is none, on every route."""
    taskid = await api.submitted()
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    listed = await api.client.get("/v1/tasks?status=&kind=&since=&until=&url=&after=&offset=&limit=", headers=headers)
    assert listed.status_code == 200 and [t["taskid"] for t in listed.json()["tasks"]] == [taskid], listed.text
    assert (await api.client.get("/v1/tasks?limit&status=0&kind=", headers=headers)).status_code == 200
    view = await api.client.get(f"/v1/tasks/{taskid}?offset=&limit=&state=", headers=headers)
    assert view.status_code == 200 and view.json()["taskid"] == taskid, view.text
    assert (await api.client.post(f"/v1/tasks/{taskid}/cancel?", headers=headers)).status_code == 200
    waited = await api.client.get(f"/v1/tasks/{taskid}/wait?timeout=", headers=headers)  # ended: at once
    assert waited.status_code == 200 and waited.json()["status"] == 2, waited.text
    refused = await api.client.get("/v1/tasks?status=&limit=x", headers=headers)  # a value is still read
    assert refused.status_code == 400 and refused.json()["error"].startswith("query.limit"), refused.text


async def test_a_task_list_finds_a_url_by_the_whole_of_it_up_to_the_longest_taken(api: Api) -> None:
    """A URL of 2,990 characters was taken, but the list's `url` keyword stopped at 2,048 (a tester's: pasting it
    failed); the bound is `[api] max_url_length`'s."""
    long_url = "http://www.example.test/" + "a" * 2966
    wanted = assert_submitted(await api.prefetch([long_url]))
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    found = await api.client.get("/v1/tasks", params={"url": long_url}, headers=headers)
    assert found.status_code == 200 and [t["taskid"] for t in found.json()["tasks"]] == [wanted], found.text
    longest = api.service.config.api.max_url_length
    refused = await api.client.get("/v1/tasks", params={"url": "a" * (longest + 1)}, headers=headers)
    assert (refused.status_code, refused.json()["error"]) == (
        400,
        f"url: longer than the longest URL taken ({longest} characters, max_url_length)",
    )


def test_a_week_date_is_a_day_of_the_services_timezone_and_the_year_9999_is_whole() -> None:
    """`2026-W49-4` was read as midnight UTC while `2026-12-03`, the same day, as midnight in `[api] timezone`
    (a tester's: 8 hours apart in Shanghai); the last second of 9999 was refused as seconds (a tester's)."""
    shanghai = "Asia/Shanghai"
    assert epoch("2026-W49-4", "since", shanghai) == epoch("2026-12-03", "since", shanghai)
    assert epoch("2026w494", "since", shanghai) == epoch("20261203", "since", shanghai)
    assert epoch("2026-W49", "since", shanghai) == epoch("2026-11-30", "since", shanghai)  # its Monday
    assert epoch("2026-W49-4T00:00", "since", shanghai) == epoch("2026-12-03T00:00Z", "since", shanghai)  # a time: UTC
    assert epoch("253402300799.999", "until", "UTC") == 253402300799.999
    assert (
        epoch("9999-12-31T23:59:59.999999Z", "until", "UTC")
        == datetime(9999, 12, 31, 23, 59, 59, 999999, UTC).timestamp()
    )


async def test_a_task_list_url_filter_is_read_as_a_tasks_urls_hold_it(api: Api) -> None:
    """`?url=%E4%B8%AD` is decoded once to `中`, which no URL holds (they hold `%E4%B8%AD`): it found nothing (a
    tester's): found now; a space (a '+' not written %2B) is refused, saying how to write it."""
    wanted = assert_submitted(await api.prefetch(["http://www.example.test/%E4%B8%AD/a+b.bin"]))
    await api.submitted()
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    for query in ("url=%E4%B8%AD", "url=%25E4%25B8%25AD", "url=a%2Bb"):
        response = await api.client.get(f"/v1/tasks?{query}", headers=headers)
        assert [t["taskid"] for t in response.json()["tasks"]] == [wanted], (query, response.text)
    response = await api.client.get("/v1/tasks?url=a+b", headers=headers)
    assert response.status_code == 400 and "'+' as %2B" in response.json()["error"], response.text


async def test_every_native_call_refuses_a_query_parameter_it_does_not_take(api: Api) -> None:
    """A task's view, its long poll, a cancel, the quota: a parameter they do not take is refused, naming what
    they take; the Python client's list of kinds (sent twice: the last alone was read) is refused too."""
    taskid = await api.submitted()
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    for method, path, said in (
        ("GET", f"/v1/tasks/{taskid}?pageSize=5", "query.pageSize: not a parameter of this call (it takes offset, "
         "limit, state)"),
        ("GET", f"/v1/tasks/{taskid}/wait?limit=1", "query.limit: not a parameter of this call (it takes timeout)"),
        ("POST", f"/v1/tasks/{taskid}/cancel?force=1", "query.force: not a parameter of this call (it takes none)"),
        ("GET", "/v1/quota?day=1", "query.day: not a parameter of this call (it takes none)"),
    ):  # fmt: skip
        response = await api.client.request(method, path, headers=headers)
        assert (response.status_code, response.json()) == (400, {"code": 2, "error": said}), path
    assert (await api.client.get(f"/v1/tasks/{taskid}?limit=5&state=failed", headers=headers)).status_code == 200
    assert (await api.client.get(f"/v1/tasks/{taskid}/wait?timeout=0", headers=headers)).status_code == 200
    async with running(make_config(), clock=time.time) as now:
        client = AsyncClient("http://edgewarm.test", USER, SECRET)
        client._http = now.client
        with pytest.raises(ClientError, match=r"query\.kind: given 2 times"):
            await client.tasks(kind=["prefetch", "refresh"])
        with pytest.raises(ClientError, match=r"query\.statuss: not a parameter"):
            await client.tasks(statuss=0)


async def test_a_time_in_rfc_3339s_lower_case_is_read(api: Api) -> None:
    """RFC 3339 allows `t` and `z` (`2024-03-10t04:00:00z`): they were "not a time"."""
    await api.submitted()  # at NOW: 2024-03-10 04:00 UTC
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    for since, listed in (("2024-03-10t03:59:59z", 1), ("2024-03-10t04:00:01z", 0), (" 2024-03-10T03:59:59Z ", 1)):
        response = await api.client.get("/v1/tasks", headers=headers, params={"since": since})
        assert response.status_code == 200 and len(response.json()["tasks"]) == listed, (since, response.text)


def test_a_time_shown_is_never_later_than_the_time_so_a_filter_from_it_finds_its_task() -> None:
    """`created_at` to the millisecond, floored: rounded to the microsecond first, …19.4569998 was shown
    …19.457, and `since=` that left the task out (83 of 200,000 times, a tester's)."""
    rng = random.Random(7)
    for _ in range(50_000):
        moment = 1_764_650_000 + rng.random() * 1e6
        shown = iso(moment)
        assert shown is not None
        back = epoch(shown, "since", "UTC")
        assert back is not None and back <= moment and moment - back < 0.0011, (repr(moment), shown)


async def test_a_task_list_filter_of_eight_digits_is_a_date(api: Api) -> None:
    """`since=20261202` (ISO 8601's basic form, JD's signature date) is that day, not 23 August 1970 in epoch
    seconds (a tester's filter let every task through); ten digits are still seconds."""
    await api.submitted()
    created = datetime.fromtimestamp(NOW, UTC)
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    for since, listed in ((created.date() + timedelta(days=1), 0), (created.date(), 1)):
        response = await api.client.get("/v1/tasks", headers=headers, params={"since": since.strftime("%Y%m%d")})
        assert response.status_code == 200 and len(response.json()["tasks"]) == listed, response.text
    seconds = str(int(created.timestamp()) + 86_400)
    response = await api.client.get("/v1/tasks", headers=headers, params={"since": seconds})
    assert response.json()["tasks"] == []


async def test_a_date_alone_in_a_task_list_filter_is_the_services_day(api: Api) -> None:
    """A date without a time (`20240310`, `2024-03-10`) starts at midnight in `[api] timezone`, the day the
    quotas and signatures count in (it was UTC's: on Shanghai's time `since=TODAY` left out the tasks of the
    day's first 8 hours, a tester's); a time without a zone is still UTC."""
    await api.submitted()  # at NOW: 2024-03-10 04:00 UTC, 2024-03-09 23:00 in New York
    config = api.service.config
    api.service.config = config.model_copy(
        update={"api": config.api.model_copy(update={"timezone": "America/New_York"})}
    )
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    for params, listed in (
        ({"since": "20240310"}, 0),  # New York's 10 March starts at 05:00 UTC
        ({"since": "17100432.0"}, 1),  # seconds (of 1970), written so
        ({"since": "2024-03-10"}, 0),
        ({"since": "20240309"}, 1),
        ({"until": "2024-03-10"}, 1),
        ({"since": "2024-03-10T00:00:00"}, 1),  # a time: UTC's
        ({"since": "2024-03-10T04:00:01"}, 0),
    ):
        response = await api.client.get("/v1/tasks", headers=headers, params=params)
        assert response.status_code == 200, response.text
        assert len(response.json()["tasks"]) == listed, params
    refused = await api.client.get("/v1/tasks", headers=headers, params={"until": "12345678"})
    assert refused.status_code == 400 and refused.json()["error"] == (
        "until: eight digits are a date (YYYYMMDD), and 12345678 is none (month must be in 1..12); seconds since "
        "1970 as 12345678.0"
    ), refused.text


async def test_a_time_whose_plus_came_as_a_space_is_refused_saying_to_write_it_2b(api: Api) -> None:
    """`until=2026-12-01T16:29:00+08:00` written in a URL by hand: its '+' is a space to a query string, and the
    refusal said only "not a time"; written %2B, it is read."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    url = "/v1/tasks?until=2026-12-01T16:29:00+08:00"
    refused = await api.client.get(url, headers=headers)
    said = (
        "until: not a time (epoch seconds or ISO 8601): a '+' in a query string is read as a space; write it %2B "
        "(2026-12-01T16:29:00%2B08:00)"
    )
    assert (refused.status_code, refused.json()["error"]) == (400, said)
    assert (await api.client.get(url.replace("+", "%2B"), headers=headers)).status_code == 200


async def list_pages(api: Api, step: str, between: Callable[[int], Any], **params: Any) -> list[str]:
    """The task ids of a walk of /v1/tasks by pages of 3, each after the last (`step` "after": the answer's
    `next`; "offset": 3 more), awaiting `between(page_number)` after each page but the last."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    listed: list[str] = []
    page_params: dict[str, Any] = {}
    for page_number in range(10):
        response = await api.client.get("/v1/tasks", headers=headers, params={**params, **page_params, "limit": 3})
        assert response.status_code == 200, response.text
        answer = response.json()
        listed += [t["taskid"] for t in answer["tasks"]]
        more = answer["next"] if step == "after" else len(answer["tasks"]) == 3
        if not more:
            break
        page_params = {"after": answer["next"]} if step == "after" else {"offset": 3 * (page_number + 1)}
        await between(page_number)
    return listed


async def test_task_list_pages_walked_by_next_list_each_task_once_while_tasks_are_submitted() -> None:
    """Each page of /v1/tasks says `next`; given back as `after`, the next page goes on after the last task
    listed, so tasks submitted between the pages list none twice (stepping `offset`, the first page's last
    task came again on the second: testers saw it); `next` is null on the last page."""
    now = [NOW]

    def clock() -> float:
        now[0] += 1  # a second between calls to it: each task newer than the one before
        return now[0]

    async with running(make_config(), clock=clock) as api:
        made = [await api.submitted(1) for _ in range(7)][::-1]

        async def submit(_: int) -> None:
            await api.submitted(1)

        assert await list_pages(api, "after", submit) == made
        walked = await list_pages(api, "offset", submit)
        assert len(walked) > len(set(walked)) and set(made) <= set(walked)  # a task twice
        # With the other filters: the same list, stepped by `after`.
        until = (await api.store.get_task(made[2])).created_at  # type: ignore[union-attr]
        assert await list_pages(api, "after", submit, until=until, status=1) == made[3:]
        # A page that holds the last task says no next (an empty page does not follow).
        other = {"X-Edgewarm-Username": OTHER, "X-Edgewarm-Signature": signature(OTHER, OTHER_SECRET)}
        await api.prefetch(["http://www.other.test/x"], OTHER, OTHER_SECRET)
        answer = (await api.client.get("/v1/tasks", headers=other, params={"limit": 1})).json()
        assert (len(answer["tasks"]), answer["next"]) == (1, None)


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("after", "name"),
    [
        ("not a cursor", "after"),
        ("%%%", "after"),
        ("QQ", "after"),  # "A": no time, no id
        ("_w", "after"),  # not text
        (cursor("1700000000.5"), "after"),
        (cursor(f"nan {uuid.uuid4()}"), "after"),
        (cursor(f"inf {uuid.uuid4()}"), "after"),
        (cursor("1700000000.5 not-a-task-id"), "after"),
        (cursor(f"1700000000.5 {str(uuid.uuid4()).upper()}"), "after"),
        (cursor(f"1700000000.5  {uuid.uuid4()}"), "after"),
        ("A" * 201, "query.after"),
    ],
)
async def test_a_task_list_cursor_that_is_no_pages_next_is_refused(api: Api, after: str, name: str) -> None:
    """`after` that is not a page's `next` as it came (not base64url, not a time and a task id, too long):
    400 code 2 naming it, not a page from somewhere else."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    response = await api.client.get("/v1/tasks", headers=headers, params={"after": after})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 2 and response.json()["error"].startswith(f"{name}:"), response.json()


async def test_a_task_list_takes_a_cursor_or_an_offset_and_an_empty_cursor_is_the_first_page(api: Api) -> None:
    """`after` with a non-zero `offset` is refused (400 code 2: the cursor is there not to count); `after=`
    empty lists from the first task, as an empty `since` does; a lookup's answer has no next page."""
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    made = [await api.submitted(1) for _ in range(2)]
    first = (await api.client.get("/v1/tasks", headers=headers, params={"limit": 1})).json()
    assert first["next"] is not None and first["offset"] == 0
    both = await api.client.get("/v1/tasks", headers=headers, params={"after": first["next"], "offset": 1})
    assert both.status_code == 400 and both.json()["error"].startswith("offset:"), both.text
    again = await api.client.get("/v1/tasks", headers=headers, params={"after": first["next"], "offset": 0})
    assert [t["taskid"] for t in again.json()["tasks"]] == [t for t in sorted(made) if t != first["tasks"][0]["taskid"]]
    empty = (await api.client.get("/v1/tasks", headers=headers, params={"after": ""})).json()
    assert (len(empty["tasks"]), empty["next"]) == (2, None)
    looked = await api.client.post("/v1/tasks/lookup", headers=headers, json={"taskids": made})
    assert looked.json()["next"] is None


async def test_a_task_that_ends_while_it_is_being_cancelled_is_refused_as_ended(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task was in progress when the cancel looked, and ended (every item succeeded) before the store
    cancelled it: 409 "has already ended", not 200 with a task that was not cancelled."""
    taskid = await api.submitted(1)
    seen = await api.store.get_task(taskid)
    for step in (1, 3):  # the shield, then the edges
        claims = await api.store.claim_due_items("w1", 100, NOW + step, 60)
        outcomes = [ItemOutcome(c.item_id, True, 1, 200, "MISS", 10) for c in claims]
        await api.store.record_outcomes("w1", outcomes, NOW + step + 1)
    assert (await api.store.get_task(taskid)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]

    async def stale(*_: object, **__: object) -> object:
        return seen

    monkeypatch.setattr(api.service, "get_task", stale)
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    answer = await api.client.post(f"/v1/tasks/{taskid}/cancel", headers=headers)
    assert answer.status_code == 409, answer.text
    assert answer.json() == {"code": 1, "error": f"task {taskid} has already ended"}
    assert (await api.store.get_task(taskid)).reason is None  # type: ignore[union-attr]


async def test_cancels_at_the_same_time_end_a_task_once(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancels of one task at the same time, each having seen it in progress: each was taken for the one that
    ended it (200, a "task ended" line and the ended-tasks metric each: a tester's 10 cancels at once gave up to
    10 of each on PostgreSQL). The store says which cancel was the first: it alone is 200 and told, the others
    409 "has already ended" (the task ended by the first: nothing under way)."""
    taskid = await api.submitted(1)
    seen = await api.store.get_task(taskid)

    async def stale(*_: object, **__: object) -> object:
        return seen  # as each of the cancels saw it, before any of them was written

    monkeypatch.setattr(api.service, "get_task", stale)
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    with caplog.at_level("INFO", logger="edgewarm"):
        answers = [await api.client.post(f"/v1/tasks/{taskid}/cancel", headers=headers) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 409, 409, 409, 409], [a.text for a in answers]
    assert answers[1].json() == {"code": 1, "error": f"task {taskid} has already ended"}
    assert sum("task ended" in r.getMessage() for r in caplog.records) == 1
    assert 'edgewarm_tasks_finished_total{status="2"} 1.0' in (await api.client.get("/metrics")).text


async def test_a_cancelled_task_counts_as_ended_in_the_metrics(api: Api) -> None:
    """Before: a cancelled task was never in edgewarm_tasks_finished_total nor the duration histogram, so
    "submitted - finished" (tasks in progress) crept up with every cancel."""
    taskid = await api.submitted(1)
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    assert (await api.client.post(f"/v1/tasks/{taskid}/cancel", headers=headers)).status_code == 200
    text = (await api.client.get("/metrics")).text
    assert 'edgewarm_tasks_finished_total{status="2"} 1.0' in text
    assert "edgewarm_task_duration_seconds_count 1.0" in text


async def test_readyz_answers_503_when_the_store_hangs(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that does not answer (a stopped database server) makes /readyz 503 within READY_SECONDS, and
    /metrics still answers (before, both waited as long as the store did)."""
    import edgewarm.api.app

    monkeypatch.setattr(edgewarm.api.app, "READY_SECONDS", 0.2)
    release = asyncio.Event()

    async def hang() -> int:
        await release.wait()
        return 0

    before = (await api.client.get("/metrics")).text  # the store answers: its depth, and up
    assert "edgewarm_queue_depth 0.0" in before and "edgewarm_store_up 1.0" in before
    monkeypatch.setattr(api.store, "queue_depth", hang)
    started = time.monotonic()
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {
        "ok": False,
        "error": "the store did not answer within 0.2 s",
    }
    metrics = await api.client.get("/metrics")
    assert metrics.status_code == 200
    assert time.monotonic() - started < 5
    # The depth is unknown, not the last one counted (before: 0.0, as if the queue were empty), and said so.
    assert "edgewarm_queue_depth NaN" in metrics.text and "edgewarm_store_up 0.0" in metrics.text
    release.set()


async def test_readyz_answers_503_while_the_store_takes_no_writes(api: Api) -> None:
    """A SQLite store whose disk is full (here: the database held at its size with max_page_count) still answers
    reads: /readyz said 200 and edgewarm_store_up 1 while every submission failed. Its refused write makes it
    503 ("takes no writes"), and store_up 0, until its probe write (256 KiB) works (room given back), without a
    restart; not at a small write that fits where the others do not (it flapped so)."""
    store = api.store
    assert isinstance(store, SQLiteStore)

    async def room(pages: int | None) -> None:
        def set_room() -> None:
            (count,) = store.db.execute("PRAGMA page_count").fetchone()
            store.db.execute(f"PRAGMA max_page_count = {count if pages is None else pages}")

        await store._run(set_room)

    await room(None)  # full: not one more page
    answer = await api.prefetch(urls(100))
    assert answer["status"] == -1 and answer["msg"].startswith("internal error: the store's disk is full"), answer
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["error"].startswith("the store takes no writes: sqlite: database or disk is full"), ready.text
    assert "edgewarm_store_up 0.0" in (await api.client.get("/metrics")).text

    def pages() -> int:
        return int(store.db.execute("PRAGMA page_count").fetchone()[0])

    await room((await store._run(pages)) + 8)  # a little room: a small submission fits, the probe does not
    assert (await api.prefetch(urls(1)))["status"] == 0
    assert (await api.client.get("/readyz")).status_code == 503
    await room(1_000_000)  # room again
    assert (await api.client.get("/readyz")).json() == {"ok": True, "queue_depth": 1}  # the small task's shield item
    assert (await api.prefetch(urls(100)))["status"] == 0


async def test_a_non_ascii_username_uses_the_native_api_through_the_client() -> None:
    """A JD username may be non-ASCII (用户): the client sends it in UTF-8 and the native API reads it so
    (before: 401 for the UTF-8 bytes, and the client raised UnicodeEncodeError before sending)."""
    data = dict(BASE_CONFIG)
    data["users"] = [*BASE_CONFIG["users"], {"name": "用户", "secret": "s3", "domains": ["www.example.test"]}]
    async with running(parse_config(data), clock=time.time) as api:
        client = AsyncClient("http://edgewarm.test", "用户", "s3")
        client._http = api.client
        taskid = await client.prefetch(["http://www.example.test/u.txt"])
        assert (await client.task(taskid))["total"] == NODES
        assert (await client.quota())["urls"] == {"used": 1, "limit": 2000, "left": 1999}


async def test_the_client_sends_task_ids_and_url_lists_as_given_and_names_a_server_it_cannot_reach() -> None:
    """A task id read from a CRLF file works; `../quota` names no other route (before: the quota came back
    as a task); an empty one is refused before sending; one URL given as a string is one URL (before: its
    characters); a server that is not there is named, with no JD code (before: "httpx.InvalidURL" raised for a
    CR, and the address left out)."""
    async with running(make_config(), clock=time.time) as api:
        client = AsyncClient("http://edgewarm.test", USER, SECRET)
        client._http = api.client
        taskid = await client.prefetch("http://www.example.test/one.txt")  # type: ignore[arg-type]
        assert (await client.task(taskid + "\r"))["total"] == NODES
        assert (await client.lookup(taskid))["tasks"][0]["taskid"] == taskid  # type: ignore[arg-type]
        for other in ("../quota", "a/b"):  # told as any unknown task (`watch a/b` said "no such route here")
            with pytest.raises(ClientError) as other_route:
                await client.task(other)
            assert other_route.value.task_not_found, other_route.value
        with pytest.raises(ClientError) as empty:
            await client.cancel(" ")
        assert empty.value.code == 11
    async with AsyncClient("http://127.0.0.1:9", USER, SECRET, timeout=2) as nowhere:
        with pytest.raises(ClientError) as unreachable:
            await nowhere.quota()
    assert unreachable.value.message.startswith("no answer from http://127.0.0.1:9: ConnectError")


async def test_lookup_answers_a_task_once_whatever_its_spellings_and_wait_takes_only_finite_seconds(api: Api) -> None:
    """A task asked by its 36- and 32-character ids is listed once (it was twice); `wait?timeout=nan` is a 400
    saying a finite number is wanted (it said "less than or equal to 60")."""
    taskid = await api.submitted(1)
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    listed = await api.client.post(
        "/v1/tasks/lookup", headers=headers, json={"taskids": [taskid, taskid.replace("-", ""), taskid.upper()]}
    )
    assert [t["taskid"] for t in listed.json()["tasks"]] == [taskid]
    waited = await api.client.get(f"/v1/tasks/{taskid}/wait", headers=headers, params={"timeout": "nan"})
    assert waited.status_code == 400 and "finite" in waited.json()["error"], waited.json()


async def test_lookup_reads_its_body_as_the_jd_routes_do_after_the_credentials(api: Api) -> None:
    """/v1/tasks/lookup read only JSON labelled JSON: `curl -d` (labelled a form) and text/plain JSON were 400
    "Input should be a valid dictionary", XML and a gzip body 400, a body labelled br read as plain. Now: JSON
    whatever its label, a form (taskids repeated or one string separated by ','), 415 for another type or a
    compressed body (as README says), and the credentials are checked before the body (401 before 400)."""
    first, second = await api.submitted(1), await api.submitted(1)
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    as_json = orjson.dumps({"taskids": [first, second]})

    async def lookup(content: bytes, content_type: str, **more: str) -> httpx.Response:
        return await api.client.post(
            "/v1/tasks/lookup", content=content, headers={**headers, "content-type": content_type, **more}
        )

    for content, content_type in [
        (as_json, "application/x-www-form-urlencoded"),
        (as_json, "text/plain"),
        (f"taskids={first}&taskids={second}".encode(), "application/x-www-form-urlencoded"),
        (f"taskids={first},{second}".encode(), "application/x-www-form-urlencoded"),
        (urlencode({"taskids": orjson.dumps([first, second]).decode()}).encode(), "application/x-www-form-urlencoded"),
        (orjson.dumps({"taskids": f"{first}, {second}"}), "application/json"),
    ]:
        found = await lookup(content, content_type)
        assert [t["taskid"] for t in found.json()["tasks"]] == [first, second], (content, found.text)
    refused = {
        "xml": await lookup(b"<a/>", "application/xml"),
        "gzip": await lookup(gzip.compress(as_json), "application/json", **{"content-encoding": "gzip"}),
        "br": await lookup(as_json, "application/json", **{"content-encoding": "br"}),
    }
    for why, response in refused.items():
        assert response.status_code == 415, (why, response.text)
    for body, error in [
        (b"{}", "parameters must not be empty"),
        (b'{"ids": []}', "taskids: a list of task ids is required"),
        (b'{"taskids": [1]}', "every task id must be a string"),
        (orjson.dumps({"taskids": ["x"] * 1001}), "taskids: 1001 ids; at most 1000 in one call"),
    ]:
        response = await lookup(body, "application/json")
        assert (response.status_code, response.json()) == (400, {"code": 2, "error": error}), body
    unsigned = await api.client.post(
        "/v1/tasks/lookup", content=b"<a/>", headers={**headers, "X-Edgewarm-Signature": "0" * 32}
    )
    assert unsigned.status_code == 401, unsigned.text


async def test_a_store_that_fails_every_call_is_logged_once_then_when_it_works_again(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store down fails every API call: its log said so once per call (hundreds of lines a second under
    load); now once, then once a minute with a count, then "works again" at the first call answered."""
    taskid = await api.submitted(1)
    working = api.store.get_task

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(api.store, "get_task", down)
    monkeypatch.setattr(
        responses,
        "STORE_READS",
        RepeatedFailure(logging.getLogger("edgewarm.api"), "answering calls from the store"),
    )
    caplog.set_level(logging.INFO, logger="edgewarm.api")
    for _ in range(10):
        assert (await api.query(taskid)).json()["status"] == -1
        assert (await api.native(taskid)).status_code == 503
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["answering calls from the store failed: database is locked"]
    monkeypatch.setattr(api.store, "get_task", working)
    for _ in range(3):
        assert (await api.query(taskid)).json()["status"] == 0
    again = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert len(again) == 1 and again[0].startswith("answering calls from the store works again"), again


async def test_a_store_that_refuses_writes_and_answers_reads_is_logged_once_not_at_each_call(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk: submissions and cancels fail, queries are answered. The log said each submission's failure
    and, at the next query, that the store "works again" (a tester's PostgreSQL on a full disk: two lines a
    call, and an operator told the disk was fine). Writes and reads are logged each their own: one line for
    the writes' failures, and "works again" once a write works."""
    taskid = await api.submitted(1)
    working = api.store.create_task

    async def full(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(api.store, "create_task", full)
    api_log = logging.getLogger("edgewarm.api")
    monkeypatch.setattr(responses, "STORE_READS", RepeatedFailure(api_log, "answering calls from the store"))
    monkeypatch.setattr(responses, "STORE_WRITES", RepeatedFailure(api_log, "writing calls' tasks to the store"))
    caplog.set_level(logging.INFO, logger="edgewarm.api")
    for _ in range(10):
        assert (await api.prefetch(urls(1)))["status"] == -1
        assert (await api.query(taskid)).json()["status"] == 0
        assert (await api.native(taskid)).status_code == 200
    said = [r.getMessage() for r in caplog.records if "the store" in r.getMessage()]
    assert said == ["writing calls' tasks to the store failed: database or disk is full"], said
    monkeypatch.setattr(api.store, "create_task", working)
    await api.submitted(1)
    said = [r.getMessage() for r in caplog.records if "the store" in r.getMessage()]
    assert len(said) == 2 and said[1].startswith("writing calls' tasks to the store works again"), said


async def test_a_wait_answered_early_is_asked_again_after_a_pause_not_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user at the service's limit of open waits (or a service stopping) gets the task at once, still running:
    the client asked again at once, a loop of calls; it now pauses a second first. The service's own limit:
    at WAITS_PER_USER, the next wait answers at once; below it, it waits."""
    monkeypatch.setattr(service_module, "WAITS_PER_USER", 1)
    async with running(make_config(), clock=time.time) as api:
        client = AsyncClient("http://edgewarm.test", USER, SECRET)
        client._http = api.client
        taskid = await client.prefetch(urls(1))  # no engine here: it stays in progress
        calls = []
        api.client.event_hooks["request"].append(lambda request: calls.append(request.url.path) or asyncio.sleep(0))
        first = asyncio.create_task(client.wait(taskid, timeout=2.5))  # holds the one wait allowed
        await asyncio.sleep(0.2)
        began = time.monotonic()
        with pytest.raises(ClientError):
            await client.wait(taskid, timeout=2.0)
        assert time.monotonic() - began >= 1.9
        with pytest.raises(ClientError):
            await first
    waits = [c for c in calls if c.endswith("/wait")]
    assert 3 <= len(waits) <= 6, waits  # the held one (once), the early ones about once a second


@pytest.mark.parametrize("content_type", ["text/json", "application/x-json", "application/octet-stream", "text/html"])
async def test_a_json_body_is_read_whatever_its_type_says(api: Api, content_type: str) -> None:
    """README: a body that starts with `{` is read as JSON whatever its type says; under these labels (older .NET
    and Java clients send text/json) it was HTTP 415."""
    body = orjson.dumps({**creds(), "publish_urls": urls(1)})
    answer = await api.raw("/api/prefetch", body, content_type)
    assert answer["status"] == 0, answer


@pytest.mark.parametrize("charset", ["undefined", "unicode_escape", "punycode"])
async def test_a_form_in_a_charset_that_is_none_is_refused_as_unknown(api: Api, charset: str) -> None:
    """`charset=undefined` (JavaScript's word for a variable never set) was "the form has more than 10000
    fields"; Python's own codecs were taken as charsets."""
    body = urlencode({**creds(), "publish_urls": urls(1)[0]}).encode()
    response = await api.client.post(
        "/api/prefetch", content=body, headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}"}
    )
    assert (response.status_code, response.json()) == (
        415,
        {"error": f"unknown charset {charset!r}: send the form in UTF-8"},
    )


@pytest.mark.parametrize("charset", ["utf-16", "UTF-32-LE", "utf_16_be"])
async def test_a_form_in_a_charset_not_written_in_ascii_is_refused_saying_so(api: Api, charset: str) -> None:
    """An ASCII form labelled `charset=utf-16` read as other characters: "username must not be empty" (a JD
    wire tester's); a form is ASCII's bytes (names, '=', '&', %-escapes) in every charset forms are sent in."""
    body = urlencode({**creds(), "publish_urls": urls(1)[0]}).encode()
    response = await api.client.post(
        "/api/prefetch", content=body, headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}"}
    )
    said = f"charset {charset!r} does not write a form's names, '=' and '&' in ASCII: send the form in UTF-8"
    assert (response.status_code, response.json()) == (415, {"error": said})


def hides(charset: str) -> str:
    return (
        f"charset {charset!r} is not read: it reads some ASCII as other text (as UTF-7's '+ADw-' is '<', or an escape "
        "sequence of ISO-2022 or HZ nothing), hiding characters from filters: send the form in UTF-8"
    )


async def test_a_form_in_a_charset_that_hides_characters_is_refused_as_a_form_or_as_multipart(api: Api) -> None:
    """A security tester's: UTF-7 writes lone surrogates ('+2AA-' in an idempotency key: other users' calls of its
    SQLite group failed, "internal error") and hides characters from filters in front ('+ADw-' is '<'); no HTTP
    client sends it; nor HZ or ISO-2022, whose escape sequences read as nothing (a re-tester's `publish\x1b(B_urls`),
    also named with spaces around '=' or twice (the multipart parser took the last, the check the first).
    Refused, nothing made; the same form in UTF-8 is taken."""
    fields = {**creds(), "publish_urls": urls(1)[0], "idempotency_key": "k+2AA-"}
    form = urlencode(fields).encode()
    for charset in ("UTF-7", "hz", "iso-2022-jp", "ISO-2022-KR"):
        answer = await api.client.post(
            "/api/prefetch",
            content=form,
            headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}"},
        )
        assert (answer.status_code, answer.json()) == (415, {"error": hides(charset)})
    parts = b"".join(
        f'--XX\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    for params, said in (
        ("charset=utf-7", hides("utf-7")),
        ("charset = utf-7", hides("utf-7")),
        ('Charset="hz"', hides("hz")),
        ("charset=utf-8; charset=utf-7", "the charset is named 2 times (utf-8, utf-7): name it once"),
        ('charset=";utf-7"', hides(";utf-7")),  # read as UTF-7 by the multipart parser (a re-tester's)
        ("charset=unicode-escape", "unknown charset 'unicode-escape': send the form in UTF-8"),
        ("charset=raw_unicode_escape", "unknown charset 'raw_unicode_escape': send the form in UTF-8"),
    ):
        multipart = await api.client.post(
            "/api/prefetch",
            content=parts + b"--XX--\r\n",
            headers={"content-type": f"multipart/form-data; boundary=XX; {params}"},
        )
        assert (multipart.status_code, multipart.json()) == (415, {"error": said}), params
    assert await api.store.usage(USER, f"{DAY:%Y%m%d}") == (0, 0)
    for charset in ("shift_jis", "gbk", "latin-1", "cp1252", "euc-kr"):  # ASCII as ASCII: read
        answer = await api.raw("/api/prefetch", form, f"application/x-www-form-urlencoded; charset={charset}")
        assert answer["status"] == 0, (charset, answer)
    assert_submitted(await api.raw("/api/prefetch", form, "application/x-www-form-urlencoded"))


def test_a_form_field_that_is_no_text_is_refused() -> None:
    """A lone surrogate (half of a UTF-16 pair) in a form's name or value, from a charset that writes one (UTF-7
    did), is refused with code 2 before any store is asked (sqlite3 raised UnicodeEncodeError: "internal error")."""
    for form in ({"idempotency_key": ["k\ud800"]}, {"publish_urls": ["http://a.test/x", "http://a.test/\udc80"]}):
        with pytest.raises(RequestRefused, match="is not text: it holds a lone surrogate") as refused:
            form_fields(form)
        assert refused.value.code == 2
    assert form_fields({"idempotency_key": ["k\u00e9\U0001f600"]}) == {"idempotency_key": "k\u00e9\U0001f600"}


async def test_json_in_another_charset_is_refused_saying_json_is_read_as_utf8(api: Api) -> None:
    """It said "str is not valid UTF-8: surrogates not allowed: line 1 column 1" (orjson's words)."""
    body = orjson.dumps({**creds(), "publish_urls": urls(1)}).replace(b"jcloud_00", "用户".encode("gbk"))
    answer = await api.raw("/api/prefetch", body, "application/json; charset=GBK")
    said = "the body is not valid JSON in UTF-8 (JSON is read as UTF-8, not GBK)"
    assert (answer["status"], answer["msg"]) == (2, said)
    # Unlabelled, or labelled UTF-8 (a Java client's platform GBK): said so too, not orjson's "surrogates".
    at = body.index("用户".encode("gbk"))
    for content_type in ("application/json", "text/plain", None, "application/json; charset=utf-8"):
        answer = await api.raw("/api/prefetch", body, content_type)
        assert answer["status"] == 2 and answer["msg"].startswith(
            f"the body is not valid JSON in UTF-8 (byte {at} is not UTF-8: JSON is read as UTF-8;"
        ), (content_type, answer)


@pytest.mark.parametrize("name", ["publish_urls[]", "publish_urls[{n}]"])
async def test_a_url_list_in_php_and_jquery_form_fields_is_read(api: Api, name: str) -> None:
    """PHP's http_build_query and jQuery write a list's entries as publish_urls[0]=… or publish_urls[]=…: it was
    "publish_urls must not be empty" (the URLs were sent)."""
    fields = [*creds().items(), *((name.format(n=n), url) for n, url in enumerate(urls(3)))]
    answer = await api.raw("/api/prefetch", urlencode(fields).encode(), "application/x-www-form-urlencoded")
    assert answer["status"] == 0, answer
    task = await api.store.get_task(answer["taskid"])
    assert task is not None and task.total == 3 * NODES


@pytest.mark.parametrize("name", ["publish_urls[]", "publish_urls[0]"])
async def test_one_php_list_entry_is_a_list_of_one_url_not_cut_at_its_commas(api: Api, name: str) -> None:
    """A PHP or jQuery list of one URL whose query holds a comma (`?size=100,200`) was taken as one string and
    cut at the comma as JD's `,` list: two other objects warmed (a QA tester's `…r.txt?next=1,http://…/s.txt`)."""
    url = urls(1)[0] + "?size=100,200"
    fields = [*creds().items(), (name, url)]
    answer = await api.raw("/api/prefetch", urlencode(fields).encode(), "application/x-www-form-urlencoded")
    assert answer["status"] == 0, answer
    items = await api.store.list_items(answer["taskid"])
    assert {item.url for item in items} == {url} and len(items) == NODES


async def test_list_entries_are_ordered_by_their_index_of_any_length(api: Api) -> None:
    """Indexes are read as numbers whatever their length: one of 5,000 digits answered -1 "internal error" with
    a traceback (int() refuses over 4,300 digits; a service whose max_body_bytes lets such a body in); 10 comes
    after 9, and 007 is 7."""
    url = urls(3)
    fields = [
        *creds().items(),
        ("publish_urls[10]", url[2]),
        ("publish_urls[9]", url[1]),
        ("publish_urls[007]", url[0]),
    ]
    answer = await api.raw("/api/prefetch", urlencode(fields).encode(), "application/x-www-form-urlencoded")
    assert answer["status"] == 0, answer
    items = await api.store.list_items(answer["taskid"])
    assert [item.url for item in items if item.stage == 0] == url, items
    huge = "9" * 5000
    form = {f"publish_urls[{huge}]": ["last"], "publish_urls[12]": ["b"], "publish_urls[]": ["a"]}
    assert form_fields(form) == {"publish_urls": ["b", "last", "a"]}
    # An entry without an index comes after the highest before it, as PHP puts it (it came before: ["after", "3"]).
    assert form_fields({"publish_urls[3]": ["3"], "publish_urls[]": ["after"]}) == {"publish_urls": ["3", "after"]}


@pytest.mark.parametrize("odd", ["publish_urls[x]", "publish_urls[-1]", "publish_urls[1][]", "publish_urls[３]"])
async def test_a_list_entry_of_another_index_is_refused_not_dropped(api: Api, odd: str) -> None:
    """`publish_urls[x]`, `[-1]`, `[1][]`, a digit of another script: the entry was dropped without a word
    (a task of the other URLs, status 0; or "publish_urls must not be empty" when it was alone)."""
    url = urls(2)
    fields = [*creds().items(), ("publish_urls[]", url[0]), (odd, url[1])]
    answer = await api.raw("/api/prefetch", urlencode(fields).encode(), "application/x-www-form-urlencoded")
    said = f"{odd!r}: a list's entries are named publish_urls[] or publish_urls[0], publish_urls[1], …"
    assert (answer["status"], answer["msg"]) == (2, said)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ([("publish_urls[0]", "a"), ("publish_urls[0]", "b")], "publish_urls[0] is given 2 times: give it once"),
        ([("publish_urls[1]", "a"), ("publish_urls[01]", "b")], "publish_urls[1] is given 2 times: give it once"),
    ],
)
def test_a_list_index_given_twice_is_refused(fields: list[tuple[str, str]], said: str) -> None:
    """PHP keeps the last entry of an index given twice; both were warmed (a tester's): which one is meant is
    not known: refused, code 2."""
    form: dict[str, list[str]] = {}
    for key, value in fields:
        form.setdefault(key, []).append(value)
    with pytest.raises(RequestRefused) as refused:
        form_fields(form)
    assert (refused.value.code, refused.value.message) == (JdCode.PARAMS_EMPTY, said)


async def test_a_list_given_both_plain_and_php_style_is_refused(api: Api) -> None:
    """`publish_urls=b&publish_urls[]=a`: the `[]` entries were dropped without a word (a task of b alone)."""
    url = urls(2)
    fields = [*creds().items(), ("publish_urls", url[0]), ("publish_urls[]", url[1])]
    answer = await api.raw("/api/prefetch", urlencode(fields).encode(), "application/x-www-form-urlencoded")
    said = "publish_urls is given both as publish_urls and as publish_urls[]: give it one way"
    assert (answer["status"], answer["msg"]) == (2, said)


@pytest.mark.parametrize("path", ["/v1/tasks/", "//v1/tasks", "/v1//quota", "/v1/quota/"])
async def test_a_native_route_with_slashes_doubled_or_added_is_answered_not_redirected(api: Api, path: str) -> None:
    """`/v1/tasks/` was redirected (307) to `/v1/tasks`: behind a proxy under a path prefix (`/cdn/`), the
    redirect named the root, where nothing answers (a tester's nginx)."""
    await api.submitted()
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    response = await api.client.get(f"http://edgewarm.test{path}", headers=headers)
    assert response.status_code == 200, (response.status_code, response.headers.get("location"), response.text)


@pytest.mark.parametrize("path", ["/api/prefetch/", "//api/prefetch", "/api//prefetch"])
async def test_a_jd_call_to_its_path_with_slashes_doubled_or_added_is_answered(api: Api, path: str) -> None:
    """A base URL written with a final "/" posts to //api/prefetch (it was 404), and /api/prefetch/ was
    redirected (307), which JD clients (PHP's curl, Java's HttpURLConnection) do not follow for a POST."""
    response = await api.client.post(f"http://edgewarm.test{path}", json={**creds(), "publish_urls": urls(1)})
    assert response.status_code == 200 and response.json()["status"] == 0, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"  # said: older clients guess


async def test_a_known_users_submissions_refused_are_counted_and_told_by_reason_a_line_a_minute(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """A QA tester's operator saw no trace of a user over its daily quota, or sending URLs not its own or not
    URLs at all: only refusals for credentials were counted and logged. Now a known user's refused submission is
    counted by reason (a fixed set: no user input in the label) and told in the log, a line a minute at most."""
    with caplog.at_level("WARNING", logger="edgewarm.service"):
        assert (await api.prefetch(urls(3), SMALL, SMALL_SECRET))["status"] == 0
        assert_code(await api.prefetch(urls(3), SMALL, SMALL_SECRET), 1)  # over its 5 a day
        assert_code(await api.prefetch(urls(4), SMALL, SMALL_SECRET), 10)  # over its 3 a call
        assert_code(await api.prefetch(["ftp://www.example.test/a"]), 17)
        assert_code(await api.prefetch(urls(1, host="www.not-mine.test")), 18)
        assert_code(await api.prefetch(urls(1) * 2), 47)
        assert_code(await api.prefetch(urls(1), USER, "not the secret"), 7)  # the credentials': not counted here
        # The API's reading of the fields after the caller is known counts too (a re-tester's), not before it
        # (JD's order: a missing field first, then the caller: an empty list is no known user's refusal).
        assert_code(await api.call("/api/prefetch", {**creds(), "publish_urls": 5}), 17)
        assert_code(await api.call("/api/refresh", {**creds(), "instances": urls(1), "type": "nonsense"}), 16)
        assert_code(await api.call("/api/prefetch", {**creds(), "publish_urls": []}), 6)
        text = (await api.client.get("/metrics")).text
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("submissions refused")]
        assert lines == [f"submissions refused: 1 quota (user '{SMALL}'); from 127.0.0.1"], lines
        for reason, count in (
            ("quota", 1),
            ("too_many_urls", 1),
            ("bad_url", 2),
            ("domain_not_yours", 1),
            ("duplicate_urls", 1),
            ("other", 1),
        ):
            assert f'edgewarm_submissions_refused_total{{reason="{reason}"}} {count}.0' in text, (reason, text)
        api.service._submissions_refused._last = time.monotonic() - 61  # a minute on
        assert_code(await api.prefetch(urls(3), SMALL, SMALL_SECRET), 1)
    said = caplog.records[-1].getMessage()
    assert said.startswith("submissions refused in the last 6") and said.endswith(
        f"s: 2 bad_url (user '{USER}'); 1 domain_not_yours (user '{USER}'); 1 duplicate_urls (user '{USER}'); "
        f"1 other (user '{USER}'); 1 quota (user '{SMALL}'); 1 too_many_urls (user '{SMALL}'); from 127.0.0.1"
    ), said


async def test_calls_refused_for_their_credentials_are_counted_and_told_a_line_a_minute(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a flood of bad signatures left no trace at any log level, and no metric: a credential-stuffing
    attempt, or a client with a broken clock, went unseen. Every refusal is counted by reason; the log has a
    line for the first and, a minute later at the next one, a count of those since (not a line per call)."""
    with caplog.at_level("WARNING", logger="edgewarm.service"):
        for _ in range(30):
            assert_code(await api.prefetch(urls(1), USER, "not the secret"), 7)
        assert_code(await api.call("/api/prefetch", {"username": "nobody", "signature": "x", "publish_urls": "a"}), 20)
        assert_code(await api.call("/api/prefetch", {"username": USER, "publish_urls": "a"}), 4)
        text = (await api.client.get("/metrics")).text
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [f"calls refused for their credentials: 1 wrong_signature (user '{USER}'); from 127.0.0.1"], (
            lines
        )
        assert 'edgewarm_credentials_refused_total{reason="wrong_signature"} 30.0' in text
        assert 'edgewarm_credentials_refused_total{reason="unknown_user"} 1.0' in text
        assert 'edgewarm_credentials_refused_total{reason="no_signature"} 1.0' in text
        assert 'edgewarm_credentials_refused_total{reason="no_username"} 0.0' in text
        # A native call from another address (edgewarm's log named none: a tester behind a proxy)
        elsewhere = httpx.ASGITransport(app=create_app(api.service), client=("192.0.2.7", 4321))
        async with httpx.AsyncClient(transport=elsewhere, base_url="http://edgewarm.test") as other:
            headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": "not the signature"}
            assert (await other.get("/v1/quota", headers=headers)).status_code == 401
        api.service._refusals._last = time.monotonic() - 61  # a minute on
        assert_code(await api.call("/api/prefetch", {"username": "", "signature": "x", "publish_urls": "a"}), 3)
    said = caplog.records[-1].getMessage()
    assert said.startswith("calls refused for their credentials in the last 6") and said.endswith(
        f"s: 1 no_signature; 1 no_username; 1 unknown_user; 30 wrong_signature (user '{USER}'); from 127.0.0.1, "
        "192.0.2.7"
    ), said


async def test_after_a_stop_a_body_not_all_there_is_cut_and_one_there_is_read() -> None:
    """A re-tester's: a call whose body began arriving in the moment the server still served after a stop was not
    cut (the cut was for the reads open at the stop), and held the stop for grace_seconds again."""
    reads = BodyReads()
    reads.stop()
    whole = {"type": "http.request", "body": b'{"a": 1}', "more_body": False}

    async def there() -> dict[str, object]:
        return whole

    assert await reads.read(there, 100) == [b'{"a": 1}']
    parts = [{"type": "http.request", "body": b'{"a"', "more_body": True}]

    async def trickling() -> dict[str, object]:
        if parts:
            return parts.pop()
        await asyncio.sleep(30)  # the rest never comes in time
        return whole

    reading = asyncio.create_task(reads.read(trickling, 100))
    done, _ = await asyncio.wait({reading}, timeout=10)  # the cut is at once: not after the rest's 30 s
    reading.cancel()
    assert done and isinstance(reading.exception(), TimeoutError), done


def test_a_store_that_may_have_made_the_task_says_so_not_nothing_done() -> None:
    """A submission's COMMIT answer lost and the store silent since: "the store is unavailable" (nothing was done)
    would have a caller's retry with a new key make a second task."""
    unknown = StoreOutcomeUnknown("postgresql: connection refused; the task may have been made")
    jd = json.loads(responses.jd_error(unknown, writes=True).body)
    native = responses.native_error(unknown, writes=True)
    said = (
        "the store did not confirm the task, which may have been made: send the call again with the same "
        "idempotency key (a new one may make a second task)"
    )
    assert jd == {"status": -1, "msg": f"internal error: {said}"}
    assert native.status_code == 503 and json.loads(native.body) == {"code": -1, "error": said}
    plain = json.loads(responses.jd_error(StoreError("postgresql: connection refused")).body)
    assert plain == {"status": -1, "msg": "internal error: the store is unavailable"}


async def test_a_submission_on_a_full_disk_is_told_the_stores_disk_is_full_and_logged_once(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite answering SQLITE_FULL (its max_page_count reached: the same error as a full disk) to submissions:
    they were told "the store is unavailable", as if it were down; now that its disk is full (code -1 still,
    nothing made), and the log says so once, naming the database."""
    taskid = await api.submitted(1)
    assert isinstance(api.store, SQLiteStore)
    (pages,) = api.store.db.execute("PRAGMA page_count").fetchone()
    api.store.db.execute(f"PRAGMA max_page_count = {pages}")
    api_log = logging.getLogger("edgewarm.api")
    monkeypatch.setattr(responses, "STORE_READS", RepeatedFailure(api_log, "answering calls from the store"))
    monkeypatch.setattr(responses, "STORE_WRITES", RepeatedFailure(api_log, "writing calls' tasks to the store"))
    caplog.set_level(logging.INFO, logger="edgewarm.api")
    said = "the store's disk is full: nothing was done; send the call again once space has been freed"
    for _ in range(3):
        assert await api.prefetch(urls(100)) == {"status": -1, "msg": f"internal error: {said}"}
    assert (await api.query(taskid)).json()["status"] == 0  # reads are answered
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [
        "writing calls' tasks to the store failed: sqlite: database or disk is full: the disk of the database "
        ":memory: is full: nothing is written until space is freed there"
    ], logged
    native = responses.native_error(StoreFull("sqlite: database or disk is full"), writes=True)
    assert native.status_code == 503 and json.loads(native.body) == {"code": -1, "error": said}


@pytest.mark.parametrize(
    ("utc", "said"),
    [
        (datetime(2026, 3, 8, 5, 30, tzinfo=UTC), "in 22 h 30 min"),  # 00:30 EST; the day is 23 hours long
        (datetime(2026, 11, 1, 4, 30, tzinfo=UTC), "in 24 h 30 min"),  # 00:30 EDT; the day is 25 hours long
        (datetime(2026, 6, 1, 4, 30, tzinfo=UTC), "in 23 h 30 min"),
        (datetime(2026, 6, 1, 4, 0, 3, tzinfo=UTC), "in 23 h 59 min"),  # 3 s after midnight: not "24 h 0 min"
        (datetime(2026, 6, 2, 3, 59, 30, tzinfo=UTC), "in 0 h 1 min"),
    ],
)
def test_when_the_quota_renews_counts_a_daylight_saving_days_hours(utc: datetime, said: str) -> None:
    """A re-tester's New York: both days said "in 23 h 30 min" (two times of one zone subtract as wall clocks)."""
    service = Service(make_config(timezone="America/New_York"), None, clock=utc.timestamp)  # type: ignore[arg-type]
    assert service._quota_renews() == f"it renews at 00:00 in America/New_York ({said})"


async def test_a_second_cancel_while_the_first_ones_items_come_back_is_refused(api: Api) -> None:
    """A cancel after another, the task's items under way not all back (it has not ended): 200, as if it were
    the caller's (a developer's 10 cancels at once: several 200s). 409, saying it was cancelled already."""
    taskid = await api.submitted(2)
    assert await api.store.claim_due_items("w1", 100, NOW + 1, 60)  # under way
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    first = await api.client.post(f"/v1/tasks/{taskid}/cancel", headers=headers)
    assert first.status_code == 200 and first.json()["status"] == 1, first.text
    again = await api.client.post(f"/v1/tasks/{taskid}/cancel", headers=headers)
    assert again.status_code == 409, again.text
    said = f"task {taskid} was cancelled already: it ends when its items under way come back"
    assert again.json() == {"code": 1, "error": said}


async def test_a_credential_header_given_twice_is_refused(api: Api) -> None:
    """Two `X-Edgewarm-Username` headers: the first was taken (a hostile tenant's probe); a JD field given twice
    is refused. Refused too, code 2, naming the header."""
    taskid = await api.submitted(1)
    for twice in ("X-Edgewarm-Username", "X-Edgewarm-Signature"):
        headers = [("X-Edgewarm-Username", USER), ("X-Edgewarm-Signature", signature()), (twice, "other")]
        answer = await api.client.get(f"/v1/tasks/{taskid}", headers=headers)
        assert answer.status_code == 400, answer.text
        assert answer.json() == {"code": 2, "error": f"{twice}: given more than once; give it once"}
    once = [("X-Edgewarm-Username", USER), ("X-Edgewarm-Signature", signature())]
    assert (await api.client.get(f"/v1/tasks/{taskid}", headers=once)).status_code == 200


def test_a_client_whose_pool_an_interrupt_left_locked_is_closed_after_it() -> None:
    """Ctrl-C or SIGTERM raised inside httpx may leave its connection pool's lock taken (a CI run's `submit`,
    SIGTERM'd, then waited for ever to look up a task and close): after_an_interrupt gives the client a new pool,
    so that its calls and close() go on."""
    import threading

    from edgewarm.client import Client

    client = Client("http://127.0.0.1:9", USER, SECRET)
    lock = client._http._transport._pool._optional_thread_lock._lock  # type: ignore[attr-defined]
    lock.acquire()  # as an interrupt between its acquire and its `with` block leaves it
    client.after_an_interrupt()
    closed = threading.Thread(target=client.close, daemon=True)
    closed.start()
    closed.join(timeout=10)
    assert not closed.is_alive()
    lock.release()


def test_the_caller_is_an_address_or_said_to_be_none() -> None:
    """A security tester's: uvicorn takes a trusted proxy's X-Forwarded-For as the client's host, whatever its
    text, and the log's list of refused callers read "from 203.0.113.9, evil text (user 'bob'); from 10.0.0.1"."""

    def caller(host: str) -> str | None:
        return caller_address(Request({"type": "http", "client": (host, 0), "headers": []}))

    assert caller("203.0.113.9") == "203.0.113.9" and caller("::1") == "::1"
    assert caller("evil text (user 'bob'); from 10.0.0.1") == caller("unknown") == NOT_AN_ADDRESS
    assert caller("fe80::1%(user'mallory');from10.9.9.9") == "fe80::1"  # a zone id may be any text: left out
    assert caller("10.1.1.1%(user 'mallory')") == NOT_AN_ADDRESS  # IPv4 has none
    assert caller("::ffff:10.1.2.3") == "::ffff:10.1.2.3"
    assert _address(NOT_AN_ADDRESS) == NOT_AN_ADDRESS  # as the log line shows a caller (spaces were '?')
    assert caller_address(Request({"type": "http", "headers": []})) is None


async def test_a_username_with_spaces_around_it_may_be_signed_as_given(api: Api) -> None:
    """A tenant's: " jcloud_00" is read as jcloud_00 (spaces around a name are not read), and its client's
    signature of the name as it sent it was "signature incorrect" (code 7). Either is taken; another is not."""
    for name in (f" {USER}", f"{USER} \t"):
        for signed in (name, USER):
            answer = await api.call(
                "/api/prefetch", {"username": name, "signature": signature(signed), "publish_urls": urls(1)}
            )
            assert_submitted(answer)
        wrong = await api.call(
            "/api/prefetch", {"username": name, "signature": signature(f"x{USER}"), "publish_urls": urls(1)}
        )
        assert_code(wrong, 7)
    # A native header keeps a space HTTP does not take out (U+3000, sent as UTF-8): signed either way (a re-tester's).
    name = f"{USER}\u3000"
    for signed in (name, USER):
        headers = {"X-Edgewarm-Username": name.encode(), "X-Edgewarm-Signature": signature(signed).encode()}
        assert (await api.client.get("/v1/quota", headers=headers)).status_code == 200, signed


async def test_the_docs_page_loads_swagger_ui_of_one_version_checked_by_its_hashes(api: Api) -> None:
    """A security tester's: /docs loaded `swagger-ui-dist@5` from a CDN without Subresource Integrity (another
    script served there would run on the API's origin, where a signature is typed into "Try it out")."""
    page = await api.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for url, integrity in (SWAGGER_JS, SWAGGER_CSS):
        assert f"swagger-ui-dist@{SWAGGER_UI_VERSION}/" in url and integrity.startswith("sha384-")
        assert page.text.count(url) == 1 and f'"{url}" integrity="{integrity}" crossorigin="anonymous"' in page.text
    assert "url: '/openapi.json'" in page.text and "tiangolo" not in page.text
    assert (await api.client.get("/redoc")).status_code == 404  # its script had no integrity either
    assert (await api.client.get("/openapi.json")).json()["info"]["title"] == "edgewarm"
