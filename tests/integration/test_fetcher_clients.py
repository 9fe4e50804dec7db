"""The fetcher's two clients: pyreqwest sends what its URL parser leaves alone, aiohttp the rest; either way
every URL reaches the node byte for byte (a recording server on loopback sees each request target)."""

from __future__ import annotations

import os

import pyreqwest.client
import pytest

from edgewarm.config import Engine as Settings
from edgewarm.config import Node
from edgewarm.engine import Fetcher
from edgewarm.engine.fetcher import sent_unchanged
from edgewarm.testing.faults import FaultServer, Respond, always
from edgewarm.urls import parse_url

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# Every printable ASCII character a submitted URL may hold (all but "#"), in a path and in a query, then dot
# segments (plain and percent-encoded) and ordinary URLs.
_CHARS = [chr(c) for c in range(0x21, 0x7F) if chr(c) != "#"]
CASES = (
    [f"/a{c}b" for c in _CHARS]
    + [f"/a?x{c}y" for c in _CHARS]
    + ["/a/../b", "/a/./b", "/.", "/a/..", "/a/%2e%2e/b", "/a/.%2E/b", "/a/%2e/b", "/a/..b/c", "/a/.b", "/a..b"]
    + ["/", "/a/b.mp4?x=1&y=2", "//double//slash", "/a%20b/%E4%B8%AD?q=%2F&q=2", "/p?", "/a?x=../../b"]
)


async def test_sent_unchanged_names_exactly_the_urls_pyreqwest_sends_as_they_are() -> None:
    """For every case, `sent_unchanged` is True exactly when pyreqwest itself delivers the target unchanged."""
    with FaultServer(always(Respond(200))) as node:
        async with pyreqwest.client.ClientBuilder().build() as client:
            for path_query in CASES:
                response = await client.get(node.url + path_query).build().send()
                assert response.status == 200
        received = [r.target for r in node.requests]
    assert len(received) == len(CASES)
    assert {pq: pq == got for pq, got in zip(CASES, received, strict=True)} == {pq: sent_unchanged(pq) for pq in CASES}
    # Nearly every URL takes the fast client; aiohttp gets 7 characters in a path, 4 in a query, 7 dot segments.
    assert sum(map(sent_unchanged, CASES)) == len(CASES) - 18


async def test_every_url_reaches_the_node_byte_for_byte_whichever_client_sends_it() -> None:
    """The Fetcher delivers each case's path and query exactly as submitted, with the URL's host in Host."""
    with FaultServer(always(Respond(200, body=b"x" * 100))) as node:
        target_node = Node(name="rec", url=node.url)
        async with Fetcher(Settings()) as fetcher:
            for path_query in CASES:
                result = await fetcher.request("GET", target_node, parse_url("http://www.example.test" + path_query))
                assert (result.status, result.bytes, result.error) == (200, 100, None), path_query
        received = [(r.target, r.header("Host")) for r in node.requests]
    assert received == [(pq, "www.example.test") for pq in CASES]


async def test_a_proxy_in_the_environment_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY and ALL_PROXY point at a recording server: the warm still goes to the node, and the proxy
    sees no connection (reqwest, unlike aiohttp, would follow them unless told not to)."""
    with FaultServer(always(Respond(200))) as proxy, FaultServer(always(Respond(200))) as node:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert os.environ["HTTP_PROXY"] == proxy.url
        async with Fetcher(Settings()) as fetcher:
            result = await fetcher.request("GET", Node(name="n", url=node.url), parse_url("http://www.example.test/a"))
        assert result.status == 200
        assert [r.target for r in node.requests] == ["/a"]
        assert proxy.connections == 0
