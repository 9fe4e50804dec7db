"""The fetcher's two clients: pyreqwest sends what its URL parser leaves alone, aiohttp the rest; either way
every URL reaches the node byte for byte (a recording server on loopback sees each request target)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyreqwest.client
import pytest

from edgewarm.config import Engine as Settings
from edgewarm.config import Node
from edgewarm.engine import Fetcher, FetchResult, tls_routes
from edgewarm.engine.fetcher import CUT_AGAIN, HEAD_LINES, sent_unchanged
from edgewarm.nodes import CacheState
from edgewarm.testing import Lab
from edgewarm.testing.faults import FaultServer, Reset, Respond, always, unanswered
from edgewarm.testing.lab import self_signed
from edgewarm.testing.service import free_port
from edgewarm.urls import stored_target

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
                result = await fetcher.request(
                    "GET", target_node, stored_target("http://www.example.test" + path_query)
                )
                assert (result.status, result.bytes, result.error) == (200, 100, None), path_query
        received = [(r.target, r.header("Host")) for r in node.requests]
    assert received == [(pq, "www.example.test") for pq in CASES]


@pytest.mark.parametrize("at_once", [1, 8, 64])
async def test_a_kept_alive_connection_the_node_closes_as_a_request_goes_out_is_asked_again_at_once(
    at_once: int,
) -> None:
    """A node that says keep-alive and closes 2 ms after each answer: the next request, sent on that connection
    as it closed, failed "disconnected before answering" (a tester's: 1 item in 20 failed after 3 attempts, none
    of the failed requests seen by the node). It is sent again at once on a connection of its own (sent again on
    pyreqwest's pool, 8 at a time, it met other closed ones: a re-tester's): every one 200, each answered once."""
    with FaultServer(always(Respond(200, body=b"x" * 1000, closes_after=0.002))) as server:
        node = Node(name="closer", url=server.url, concurrency=at_once)
        room = asyncio.Semaphore(at_once)
        async with Fetcher(Settings()) as fetcher:

            async def fetch(i: int) -> FetchResult:
                async with room:
                    return await fetcher.request("GET", node, stored_target(f"http://www.example.test/{i}"))

            results = await asyncio.gather(*(fetch(i) for i in range(150)))
        answered = [r.target for r in server.requests]
    assert [r.error for r in results if r.status != 200] == []
    assert sorted(answered) == sorted(f"/{i}" for i in range(150))


async def test_a_node_that_resets_every_request_gets_each_request_once_after_the_first_sent_again() -> None:
    """A node that resets every request got each one twice, the second on a connection of its own (a session's
    note): once a request sent again after a cut fails too, the node's cuts are failures at once, until it
    answers again."""
    with FaultServer(always(Reset())) as server:
        node = Node(name="resetter", url=server.url)
        async with Fetcher(Settings()) as fetcher:

            async def get(path: str) -> FetchResult:
                return await fetcher.request("GET", node, stored_target(f"http://www.example.test/{path}"))

            first = [await get(str(i)) for i in range(10)]
            seen = [r.target for r in server.requests]
            server.set_behaviour(Respond(200))
            answered = await get("ok")
            server.set_behaviour(Reset())
            again = await get("again")
        after = [r.target for r in server.requests][len(seen) :]
    assert seen == ["/0", "/0", *(f"/{i}" for i in range(1, 10))]
    assert first[0].resent and "(sent twice: again at once after a cut connection)" in (first[0].error or "")
    assert [(r.status, r.resent) for r in first[1:]] == [(None, False)] * 9
    for result in first[1:]:  # in pyreqwest's words, the OS's reason kept
        assert result.error is not None and result.error.endswith(f"({CUT_AGAIN})"), result.error
        assert result.error.startswith("resetter disconnected before answering: Connection reset by peer"), result
    assert (answered.status, after[0]) == (200, "/ok")
    assert again.resent and after[1:] == ["/again", "/again"]  # an answer came between: sent again once more


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
            result = await fetcher.request(
                "GET", Node(name="n", url=node.url), stored_target("http://www.example.test/a")
            )
        assert result.status == 200
        assert [r.target for r in node.requests] == ["/a"]
        assert proxy.connections == 0


@contextlib.asynccontextmanager
async def tls_node(certificate: tuple[Path, Path], *, legacy: bool = False) -> AsyncIterator[FaultServer]:
    """An https node on loopback that answers 200 "ok" and records each request with its connection's SNI
    (a FaultServer; async only to share an `async with` with the Fetcher); `legacy`: it speaks TLS 1.2 with
    CBC ciphers only, as old appliances do (rustls has none of them)."""
    with FaultServer(Respond(200, body=b"ok"), tls=certificate, cbc_only=legacy) as server:
        yield server


async def test_an_https_node_gets_the_urls_host_as_sni_and_the_path_byte_for_byte(
    certificate: tuple[Path, Path],
) -> None:
    """An https node (tls_verify = false for the self-signed certificate): connected at its address, the URL's
    host as SNI and in Host, the target exactly as submitted."""
    async with tls_node(certificate) as server, Fetcher(Settings()) as fetcher:
        node = Node(name="tls", url=server.url, tls_verify=False)
        for path_query in ("/a/b.mp4?x=1", "/a/../b"):
            result = await fetcher.request("GET", node, stored_target("https://www.example.test" + path_query))
            assert (result.status, result.bytes, result.error) == (200, 2, None)
    assert [(r.sni, r.head.split(b"\r\n")[0]) for r in server.requests] == [
        ("www.example.test", b"GET /a/b.mp4?x=1 HTTP/1.1"),
        ("www.example.test", b"GET /a/../b HTTP/1.1"),
    ]
    assert all(b"\r\nHost: www.example.test\r\n" in r.head for r in server.requests)


def connections_to(port: int) -> int:
    """TCP connections of this host established to 127.0.0.1:`port` (the client ends; /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2] == f"0100007F:{port:04X}" and row[3] == "01")


async def test_https_urls_of_many_sites_do_not_keep_their_connections_idle_for_long(
    certificate: tuple[Path, Path],
) -> None:
    """URLs of 30 sites through one https node, 8 at a time each: every site's client opens its own connections
    (240). Idle ones are closed within seconds (before, each site's stayed open 15 s and 256 sites were kept:
    QA saw 4,400 sockets open with 20 URLs per new site every 0.3 s, and under 1,024 open files the store and
    the warms failed)."""
    with FaultServer(always(Respond(200, body=b"ok", delay=0.2)), tls=certificate) as server:
        async with Fetcher(Settings()) as fetcher:
            node = Node(name="tls", url=server.url, tls_verify=False)
            targets = [stored_target(f"https://site-{s}.example.test/{i}") for s in range(30) for i in range(8)]
            results = await asyncio.gather(*(fetcher.request("GET", node, t) for t in targets))
            assert {r.status for r in results} == {200}
            opened = server.connections
            await asyncio.sleep(2 * tls_routes.ROUTE_IDLE_SECONDS + 1.5)  # hyper reaps idle ones once an interval
            left = connections_to(int(server.url.rsplit(":", 1)[1]))
    assert opened >= 200, opened  # the connections were made (most sites' 8 requests overlapped)
    assert left == 0, left


async def test_an_https_node_whose_certificate_is_not_trusted_fails_naming_the_node(
    certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """With tls_verify (the default) a self-signed certificate is refused, by either client (pyreqwest for
    "/a", aiohttp for a dot segment): a final network error naming the node and the certificate. The log says
    so once (before: nothing, though every item of the node failed at once: an expired certificate went
    unseen by an operator watching the log)."""
    with caplog.at_level("INFO", logger="edgewarm.engine"):
        async with tls_node(certificate) as server, Fetcher(Settings()) as fetcher:
            for path_query in ("/a", "/x/../a", "/b", "/c"):
                target = stored_target("https://www.example.test" + path_query)
                result = await fetcher.request("GET", Node(name="tls", url=server.url), target)
                assert result.status is None and result.network_error and result.final
                assert result.error is not None and result.error.startswith(f"cannot connect to tls ({server.url}): ")
                assert "certificate verify failed: " in result.error and "Error(" not in result.error
    assert server.requests == []
    said = [r.getMessage() for r in caplog.records if "certificate" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("verifying tls's certificate failed: "), said


async def test_a_trusted_self_signed_ca_certificate_is_taken_whatever_the_urls_spelling(
    certificate: tuple[Path, Path],
) -> None:
    """openssl req -x509 makes a certificate marked a CA; trusted (SSL_CERT_FILE), OpenSSL takes it as the node's
    own and rustls never does: a URL with a dot segment (aiohttp) warmed, a plain one (pyreqwest) failed "a CA
    certificate served as the node's own". Both warm now (the node's requests go through aiohttp)."""
    script = (
        "import asyncio, sys\n"
        "from edgewarm.config import Engine, Node\n"
        "from edgewarm.engine.fetcher import Fetcher\n"
        "from edgewarm.urls import stored_target\n"
        "async def main():\n"
        "    async with Fetcher(Engine()) as fetcher:\n"
        "        for path in ('/a', '/x/../a', '/b'):\n"
        "            target = stored_target('https://www.example.test' + path)\n"
        "            result = await fetcher.request('GET', Node(name='tls', url=sys.argv[1]), target)\n"
        "            print(result.status, result.error)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "SSL_CERT_FILE": str(certificate[0])}  # read by aiohttp when it is imported
    async with tls_node(certificate) as server:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script, server.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.stdout.splitlines() == ["200 None"] * 3, done.stdout + done.stderr


async def test_a_new_fetcher_reads_the_cas_of_ssl_cert_file_again_for_aiohttp_too(
    certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS tester's: the node's CA added to SSL_CERT_FILE, then a reload's new fetcher: pyreqwest's new client
    trusted it, aiohttp (a dot segment's URL) did not until a restart (its context was made once, at import)."""
    cas = tmp_path / "cas.pem"
    cas.write_bytes(self_signed(tmp_path / "other", "other.test")[0].read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(cas))
    target = stored_target("https://www.example.test/x/../a")  # sent unchanged: through aiohttp
    async with tls_node(certificate) as server:
        node = Node(name="tls", url=server.url)
        async with Fetcher(Settings()) as fetcher:
            refused = await fetcher.request("GET", node, target)
        assert refused.error is not None and "certificate verify failed" in refused.error, refused
        cas.write_bytes(certificate[0].read_bytes())
        async with Fetcher(Settings()) as fetcher:
            warmed = await fetcher.request("GET", node, target)
    assert (warmed.status, warmed.error) == (200, None)


async def test_an_https_node_speaking_only_tls_that_rustls_lacks_is_warmed_through_aiohttp(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS 1.2 with CBC ciphers only: pyreqwest (rustls) cannot connect, so the request is sent again through
    aiohttp (OpenSSL), which can; the node answers it, with the URL's host as SNI. From then on that node's
    requests go to aiohttp at once: pyreqwest was tried for the first only."""
    tried: list[str] = []
    with_pyreqwest = Fetcher._with_pyreqwest

    async def counting(self: Fetcher, client: Any, method: str, url: str, *rest: Any, **kw: Any) -> object:
        tried.append(url)
        return await with_pyreqwest(self, client, method, url, *rest, **kw)

    monkeypatch.setattr(Fetcher, "_with_pyreqwest", counting)
    async with tls_node(certificate, legacy=True) as server, Fetcher(Settings()) as fetcher:
        node = Node(name="old", url=server.url, tls_verify=False)
        results = [await fetcher.request("GET", node, stored_target(f"https://www.example.test/{p}")) for p in "abc"]
    assert [(r.status, r.bytes, r.error) for r in results] == [(200, 2, None)] * 3
    assert [(r.sni, r.head.split(b"\r\n")[0]) for r in server.requests] == [
        ("www.example.test", f"GET /{p} HTTP/1.1".encode()) for p in "abc"
    ]
    assert len(tried) == 1 and tried[0].endswith("/a")


async def test_an_https_node_that_is_down_is_asked_once_and_not_left_to_aiohttp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listens at the node's address: pyreqwest's TCP connection is refused, the error names the node,
    and aiohttp is not asked again (the same address would refuse it too); the node is not left to aiohttp."""
    monkeypatch.setattr(Fetcher, "_with_aiohttp", _no_aiohttp)
    url = f"https://127.0.0.1:{free_port()}"
    node = Node(name="down", url=url, tls_verify=False)
    async with Fetcher(Settings()) as fetcher:
        for _ in range(2):
            result = await fetcher.request("GET", node, stored_target("https://www.example.test/a"))
            assert result.status is None and result.error is not None
            assert result.error.startswith(f"cannot connect to down ({url}): Connection refused")
        assert not fetcher._routes.uses_openssl(node)


async def _no_aiohttp(*args: object) -> FetchResult:
    raise AssertionError("aiohttp was used")


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost"], ids=["by-ip", "by-name"])
async def test_an_https_node_is_warmed_through_pyreqwest_whether_given_by_address_or_by_name(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """With aiohttp switched off: plain URLs to an https node given by IP address or by name still warm
    (pyreqwest, a client per site resolving its name to the node's address), each with its own host as SNI
    and in Host; at most TLS_CLIENTS such clients are kept (the least recently used dropped)."""
    monkeypatch.setattr(Fetcher, "_with_aiohttp", _no_aiohttp)
    monkeypatch.setattr(tls_routes, "TLS_CLIENTS", 2)
    hosts = ["www.example.test", "img.example.test", "cdn.example.test", "www.example.test"]
    async with tls_node(certificate) as server, Fetcher(Settings()) as fetcher:
        node = Node(name="tls", url=server.url.replace("127.0.0.1", address), tls_verify=False)
        results = [await fetcher.request("GET", node, stored_target(f"https://{host}/a?x=1")) for host in hosts]
        kept = [(key[2], key[3]) for key in fetcher._routes._routes]
    assert [(r.status, r.bytes, r.error) for r in results] == [(200, 2, None)] * 4
    assert [(r.sni, r.head.split(b"\r\n")[:2]) for r in server.requests] == [
        (host, [b"GET /a?x=1 HTTP/1.1", f"Host: {host}".encode()]) for host in hosts
    ]
    assert kept == [("cdn.example.test", "127.0.0.1"), ("www.example.test", "127.0.0.1")]


@contextlib.contextmanager
def resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> Iterator[dict[str, list[str]]]:
    """The running loop resolves each of `names` to its list of addresses (both clients ask the loop); the
    dict may be changed meanwhile. Other names resolve as usual."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: object, port: object, *args: Any, **kw: Any) -> list[Any]:
        if isinstance(host, str) and host in names:
            if not names[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            tcp = (socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
            return [(socket.AF_INET, *tcp, (ip, int(str(port)))) for ip in names[host]]
        return await real(host, port, *args, **kw)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    yield names


async def test_a_named_https_node_whose_first_address_refuses_is_warmed_at_its_next_one(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node name with two addresses, the first refusing connections (127.0.0.2: nothing listens there):
    the first request is answered through aiohttp (which tries every address), and pyreqwest goes on with the
    second address, so the next requests are pyreqwest's alone; the node is not left to aiohttp."""
    asked = []
    with_aiohttp = Fetcher._with_aiohttp

    async def counting(self: Fetcher, *args: Any) -> FetchResult:
        asked.append(args[3].path_query)
        return await with_aiohttp(self, *args)

    monkeypatch.setattr(Fetcher, "_with_aiohttp", counting)
    async with tls_node(certificate) as server, Fetcher(Settings()) as fetcher:
        with resolving(monkeypatch, {"edge.test": ["127.0.0.2", "127.0.0.1"]}):
            node = Node(name="named", url=server.url.replace("127.0.0.1", "edge.test"), tls_verify=False)
            results = [
                await fetcher.request("GET", node, stored_target(f"https://www.example.test/{p}")) for p in "abc"
            ]
            assert not fetcher._routes.uses_openssl(node)
    assert [(r.status, r.bytes, r.error) for r in results] == [(200, 2, None)] * 3
    assert asked == ["/a"]
    assert [r.sni for r in server.requests] == ["www.example.test"] * 3


async def test_a_named_https_node_whose_first_address_never_answers_is_warmed_at_its_next_one(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node name whose first address takes no connection (a listening socket on 127.0.0.2 whose one-place
    queue is full: the kernel drops further SYNs, as a firewall that drops packets does): the first request
    waits connect_timeout there, is answered through aiohttp, and pyreqwest goes on with the second address;
    the next requests take no such wait. Before, every request timed out on the first address."""
    async with tls_node(certificate) as server, Fetcher(Settings(connect_timeout=1.0)) as fetcher:
        port = int(server.url.rsplit(":", 1)[1])
        with unanswered("127.0.0.2", port), resolving(monkeypatch, {"edge.test": ["127.0.0.2", "127.0.0.1"]}):
            node = Node(name="named", url=server.url.replace("127.0.0.1", "edge.test"), tls_verify=False)
            took = []
            for p in "abc":
                started = asyncio.get_running_loop().time()
                result = await fetcher.request("GET", node, stored_target(f"https://www.example.test/{p}"))
                took.append(asyncio.get_running_loop().time() - started)
                assert (result.status, result.bytes, result.error) == (200, 2, None)
    assert took[0] >= 1.0 and max(took[1:]) < 1.0
    assert [r.sni for r in server.requests] == ["www.example.test"] * 3


async def test_a_named_https_node_is_asked_for_again_after_name_ttl(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NAME_TTL at 0, every request has the node's name asked again in the background: when the name
    moves to an address where nothing listens, the requests after that fail to connect; when it moves back,
    they warm again. aiohttp is never needed for the node's own address."""
    monkeypatch.setattr(tls_routes, "NAME_TTL", 0.0)
    async with tls_node(certificate) as server, Fetcher(Settings()) as fetcher:
        with resolving(monkeypatch, {"edge.test": ["127.0.0.1"]}) as names:
            node = Node(name="named", url=server.url.replace("127.0.0.1", "edge.test"), tls_verify=False)
            target = stored_target("https://www.example.test/a")

            async def warm_until(ok: bool) -> int:
                """Requests until one's success is `ok` (at most 20; the new address is taken in the background)."""
                for count in range(1, 21):
                    if ((await fetcher.request("GET", node, target)).status == 200) is ok:
                        return count
                    await asyncio.sleep(0.01)
                raise AssertionError(f"no request with success {ok} in 20")

            assert await warm_until(True) == 1
            names["edge.test"] = ["127.0.0.3"]
            await warm_until(False)
            names["edge.test"] = ["127.0.0.1"]
            await warm_until(True)


async def test_a_folded_header_line_is_accepted_and_a_malformed_head_is_named() -> None:
    """A header folded over two lines (obs-fold: RFC 9112 says a client accepts it in a response) warms as
    usual, with either client; a space before a header's colon is a malformed head, named as such."""
    folded = Respond(200, body=b"ok", headers=(("X-Cache-Status", "MISS"), ("X-Note", "first\r\n second")))
    with FaultServer(always(folded)) as node, FaultServer(always(Respond(headers=(("X-Bad ", "v"),)))) as bad:
        async with Fetcher(Settings()) as fetcher:
            results = [
                await fetcher.request(
                    "GET", Node(name="n", url=node.url), stored_target(f"http://www.example.test{pq}")
                )
                for pq in ("/a", "/a/../b")  # pyreqwest, then aiohttp
            ]
            broken = await fetcher.request(
                "GET", Node(name="bad", url=bad.url), stored_target("http://www.example.test/a")
            )
    assert [(r.status, r.bytes, r.error) for r in results] == [(200, 2, None)] * 2
    assert broken.status is None
    assert broken.error == "bad answered with a malformed HTTP head: invalid HTTP header parsed"


async def test_header_values_with_bytes_outside_ascii_are_read_as_far_as_they_can_be() -> None:
    """pyreqwest gives no text for a header value with a byte outside ASCII (ValueError): each such answer
    failed as "internal error: ValueError" with a traceback, at every attempt. Now such a field is not read
    (a Set-Cookie still counts), with either client."""
    answers = {
        "cookie": (("X-Cache-Status", "MISS"), ("Set-Cookie", "name=J\u00fcrgen")),
        "control": (("X-Cache-Status", "MISS"), ("Cache-Control", "max-age=3600, x-note=\u00e9t\u00e9")),
        "state": (("X-Cache-Status", "H\u00cfT"), ("Age", "3")),
    }

    def answer(request: Any, _count: int) -> Respond:
        return Respond(200, body=b"ok", headers=answers[request.target.rsplit("/", 1)[-1]])

    with FaultServer(answer) as node:
        async with Fetcher(Settings()) as fetcher:
            seen = {
                (name, via): await fetcher.request(
                    "GET", Node(name="n", url=node.url), stored_target(f"http://www.example.test{prefix}{name}")
                )
                for name in answers
                for via, prefix in (("pyreqwest", "/"), ("aiohttp", "/x/../"))
            }
    told = {key: (r.status, r.error, r.cache_state, r.not_stored) for key, r in seen.items()}
    for via in ("pyreqwest", "aiohttp"):
        assert told["cookie", via] == (200, None, CacheState.MISS, "Set-Cookie"), told
        assert told["control", via] == (200, None, CacheState.MISS, None), told
        # An unreadable X-Cache-Status tells no state (aiohttp reads it: not a state word): Age tells a HIT.
        assert told["state", via] == (200, None, CacheState.HIT, None), told


async def test_a_body_that_never_ends_is_cut_at_fetch_timeout_by_either_client() -> None:
    """A body trickling 100 bytes every 0.1 s (never silent for read_timeout): before, the request went on as
    long as the node sent (a live stream: for ever, its task in progress and a cancel no help). Now it ends
    at fetch_timeout, and says so; a silent node says which limit it reached too."""
    endless = Respond(200, body=b"x" * 1_000_000, trickle=0.1, trickle_chunk=100)
    with FaultServer(always(endless)) as node, FaultServer(always(Respond(200, delay=5.0))) as silent:
        settings = Settings(read_timeout=0.5, connect_timeout=0.2, fetch_timeout=1.5)
        async with Fetcher(settings) as fetcher:
            results = []
            for pq in ("/a", "/x/../a"):  # pyreqwest, then aiohttp
                started = asyncio.get_running_loop().time()
                result = await fetcher.request("GET", Node(name="n", url=node.url), stored_target(f"http://w.test{pq}"))
                results.append((result.status, result.error, asyncio.get_running_loop().time() - started))
            quiet = await fetcher.request("GET", Node(name="q", url=silent.url), stored_target("http://w.test/a"))
    for status, error, took in results:
        assert (status, error) == (None, "timeout talking to n: not done within fetch_timeout (1.5 s)"), results
        assert 1.4 <= took < 3.0, results
    assert quiet.error == "timeout talking to q: no answer's head within read_timeout (0.5 s)"


async def test_a_head_slower_than_read_timeout_is_not_called_silence() -> None:
    """A head sent a line every 0.3 s, whole after 1.2 s, read_timeout 0.5 s: pyreqwest's read_timeout bounds the
    wait for the whole head, and its failure was worded "silent for read_timeout", though the node never was (a
    tester's). Said for what it is; aiohttp's read_timeout is a silence there too, and it warms."""

    async def trickled_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            for line in (b"HTTP/1.1 200 OK\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"Content-Length: 2\r\n"):
                writer.write(line)
                await writer.drain()
                await asyncio.sleep(0.3)
            writer.write(b"\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(trickled_head, "127.0.0.1", 0)
    node = Node(name="n", url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        async with Fetcher(Settings(read_timeout=0.5, connect_timeout=0.2)) as fetcher:
            plain = await fetcher.request("GET", node, stored_target("http://w.test/a"))  # pyreqwest
            odd = await fetcher.request("GET", node, stored_target("http://w.test/x/../a"))  # aiohttp
    finally:
        server.close()
        await server.wait_closed()
    assert (plain.status, plain.error) == (None, "timeout talking to n: no answer's head within read_timeout (0.5 s)")
    assert (odd.status, odd.error, odd.bytes) == (200, None, 2)


async def test_a_body_that_does_not_match_its_framing_is_named_for_what_it_is() -> None:
    """Chunked with a Content-Length of 5, its 1,000 bytes of chunks whole: "short body: 1000 of 5 bytes"
    (RFC 9112: the chunks decide, the warm succeeds); a chunked body broken off read "short body: 0 of 5
    bytes". aiohttp's words for a malformed head quoted the node's raw bytes over several lines: one line
    now, bounded."""
    chunked = b"3e8\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n"
    long = Respond(200, body=chunked, headers=(("Transfer-Encoding", "chunked"),), content_length=5)
    broken = Respond(200, body=b"zz\r\nabc", headers=(("Transfer-Encoding", "chunked"),), content_length=5)
    twice = Respond(200, body=b"0123456789", headers=(("Content-Length", "10"),))
    answers = {"long": long, "broken": broken, "twice": twice}
    with FaultServer(lambda request, _count: answers[request.target.rsplit("/", 1)[-1]]) as node:
        async with Fetcher(Settings()) as fetcher:

            async def fetch(pq: str) -> FetchResult:
                return await fetcher.request("GET", Node(name="n", url=node.url), stored_target(f"http://w.test{pq}"))

            too_long, broken_off, quoted = await fetch("/long"), await fetch("/broken"), await fetch("/x/../twice")
    assert (too_long.status, too_long.bytes, too_long.error) == (200, 1000, None)
    assert broken_off.error == "short body: broken off after 0 bytes"
    assert quoted.error is not None and quoted.error.startswith("n answered with a malformed HTTP head: ")
    assert "\n" not in quoted.error and len(quoted.error) <= 400, quoted.error


async def test_an_answer_head_larger_than_hyper_reads_warms_through_aiohttp() -> None:
    """hyper reads at most 100 header lines: such an answer is asked for again through aiohttp and warms, with
    the node's cache state, whichever client sends the URL (the node sees pyreqwest's URL twice). A header line
    of 20,000 bytes (over aiohttp's default 8,190) warms through both clients too."""
    many = (*((f"X-Debug-{i}", "v") for i in range(150)), ("X-Cache-Status", "MISS"))
    long = (("X-Cache-Status", "HIT"), ("X-Long", "v" * 20_000))
    with (
        FaultServer(always(Respond(200, body=b"ok", headers=many))) as wide,
        FaultServer(always(Respond(200, body=b"ok", headers=long))) as tall,
    ):
        async with Fetcher(Settings()) as fetcher:
            results = {
                (server.url, pq): await fetcher.request(
                    "GET", Node(name="n", url=server.url), stored_target(f"http://www.example.test{pq}")
                )
                for server in (wide, tall)
                for pq in ("/a", "/a/../b")  # pyreqwest first, then aiohttp
            }
        seen = {server.url: [r.target for r in server.requests] for server in (wide, tall)}
    assert {key: (r.status, r.bytes, r.cache_state, r.error) for key, r in results.items()} == {
        (wide.url, "/a"): (200, 2, CacheState.MISS, None),
        (wide.url, "/a/../b"): (200, 2, CacheState.MISS, None),
        (tall.url, "/a"): (200, 2, CacheState.HIT, None),
        (tall.url, "/a/../b"): (200, 2, CacheState.HIT, None),
    }
    assert seen == {wide.url: ["/a", "/a", "/a/../b"], tall.url: ["/a", "/a/../b"]}


async def test_an_answer_head_beyond_every_limit_is_named_malformed_without_a_status() -> None:
    """More header lines than HEAD_LINES: a network error naming the head, not the 400 aiohttp makes up."""
    lines = tuple((f"X-H{i}", "v") for i in range(HEAD_LINES + 1))
    with FaultServer(always(Respond(200, body=b"ok", headers=lines))) as node:
        async with Fetcher(Settings()) as fetcher:
            results = [
                await fetcher.request(
                    "GET", Node(name="n", url=node.url), stored_target(f"http://www.example.test{pq}")
                )
                for pq in ("/a", "/a/../b")
            ]
    assert [(r.status, r.error) for r in results] == [
        (None, "n answered with a malformed HTTP head: Too many headers received")
    ] * 2
    assert all(r.network_error for r in results)


# Run in a fresh interpreter, whose peak memory (VmHWM) is its own: GET each path through the Fetcher.
_WARM_AND_REPORT_PEAK = """
import asyncio, json, sys
from edgewarm.config import Engine, Node
from edgewarm.engine import Fetcher
from edgewarm.urls import stored_target

async def main(node_url, paths):
    async with Fetcher(Engine()) as fetcher:
        node = Node(name="n", url=node_url)
        return [(r.status, r.bytes, r.error) for p in paths
                for r in [await fetcher.request("GET", node, stored_target("http://www.example.test" + p))]]

results = asyncio.run(main(sys.argv[1], sys.argv[2:]))
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"results": results, "peak_kib": peak}))
"""


def test_bodies_are_streamed_and_never_held_by_either_client(tmp_path: Path) -> None:
    """A 256 MiB object from a real nginx, through pyreqwest and through aiohttp (a dot segment), in one
    process: every byte is read, and the process's peak memory stays far below the object's size."""
    size = 256 << 20
    with Lab(tmp_path / "lab", edges=1, shield=False) as lab:
        (path,) = lab.make_files(1, size, prefix="/big/")
        argv = [sys.executable, "-c", _WARM_AND_REPORT_PEAK, lab.origin.url, path, "/x/.." + path]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["results"] == [[200, size, None], [200, size, None]]
    assert report["peak_kib"] * 1024 < 160 << 20  # about 75 MiB measured; one body held would be 256 MiB more


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_node_name_that_cannot_be_looked_up_is_a_network_error_not_an_exception(scheme: str) -> None:
    """A node whose name has a label over 63 characters (the config refuses it; a node made without the
    config's checks reaches the Fetcher anyway) fails with a network error through either client, and no
    exception leaves the Fetcher."""
    url = f"{scheme}://{'a' * 64}.example.net:8443"
    node = Node.model_construct(name="long", url=url, tls_verify=False, kind=Node.model_fields["kind"].default)
    async with Fetcher(Settings(connect_timeout=1.0)) as fetcher:
        for path_query in ("/a", "/x/../a"):  # pyreqwest, then aiohttp
            result = await fetcher.request("GET", node, stored_target("https://www.example.test" + path_query))
            assert result.status is None and result.network_error
            assert result.error is not None and result.error.startswith(f"cannot connect to long ({url}): ")


@pytest.mark.parametrize("path", ["/a", "/x/../a"], ids=["pyreqwest", "aiohttp"])
async def test_only_a_connection_never_made_counts_as_unreachable(path: str) -> None:
    """`unreachable` (what holds a node down: engine/node_health.py) through either client: set for a refused
    connection and for one not answered within connect_timeout; not for a node that connects and then keeps
    silent past read_timeout (pyreqwest calls that a "connection timeout" too), nor for one that answers."""
    settings = Settings(connect_timeout=0.5, read_timeout=1.0)
    target = stored_target(f"http://www.example.test{path}")
    with (
        unanswered() as silent,
        FaultServer(Respond(200, body=b"ok", delay=5.0)) as slow,
        FaultServer(Respond(200, body=b"ok")) as good,
    ):
        cases = {
            "refused": (f"http://127.0.0.1:{free_port()}", True),
            "unanswered": ("http://{}:{}".format(*silent), True),
            "silent": (slow.url, False),
            "good": (good.url, False),
        }
        async with Fetcher(settings) as fetcher:
            for name, (url, unreachable) in cases.items():
                result = await fetcher.request("GET", Node(name=name, url=url), target)
                assert result.unreachable is unreachable, (name, result)
                assert (result.status == 200) is (name == "good"), (name, result)


_OUT_OF_FILES = """
import asyncio, json, logging, os, resource, sys
from edgewarm.config import Engine, Node
from edgewarm.engine import Fetcher, NodeHealth
from edgewarm.tuning import open_files_room
from edgewarm.urls import stored_target

async def main() -> None:
    node = Node(name="n", url=sys.argv[1])
    health = NodeHealth()
    async with Fetcher(Engine(concurrency=200), health) as fetcher:
        target = stored_target("http://www.example.test/a")
        held = []  # the files left: fewer than the 16 connections requests_room gives 64 files
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        for fd in held[:6]:
            os.close(fd)
        results = await asyncio.gather(*(fetcher.request("GET", node, target) for _ in range(120)))
    errors = [r.error for r in results if r.error]
    print(json.dumps({"ok": sum(r.status == 200 for r in results), "errors": errors, "down": health.is_down(node),
                      "caution": open_files_room(200)}))

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
asyncio.run(main())
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # not the interpreter's finalization: pyreqwest's threads once aborted it here (out of files)
"""


def test_a_process_out_of_open_files_does_not_hold_its_node_down_and_says_so() -> None:
    """With 6 open files left for 120 requests at once, connections fail with EMFILE: those failures are this
    process's, so the node is not held down for them (its items would wait for a node that is up), and each
    says so; the limit is named as too low for the concurrency."""
    with FaultServer(Respond(delay=0.3, keep_alive=False)) as server:
        run = subprocess.run(
            [sys.executable, "-c", _OUT_OF_FILES, server.url], capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout)
    assert seen["errors"] and seen["ok"], seen
    assert all("this process has run out of open files" in e for e in seen["errors"]), seen["errors"][:3]
    assert seen["down"] is False
    assert seen["caution"].startswith("the open-files limit of this process (64) is below what [engine] concurrency")
    # "See its log" leads somewhere: the log says it, once (before: nothing; a minute later, with a count).
    said = [line for line in run.stderr.splitlines() if "connecting to nodes failed" in line]
    assert len(said) == 1 and "this process has run out of open files (" in said[0], run.stderr[-2000:]
    assert "of its limit 64)" in said[0], said
