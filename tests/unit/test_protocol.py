"""The API's HTTP protocol (api/protocol.py) driven byte by byte: how pipelined requests are framed and answered."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from edgewarm.api.protocol import bounded_protocol

pytestmark = pytest.mark.anyio


class _Transport(asyncio.Transport):
    """Records what the protocol writes; reading paused or not, as asked."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 80)}.get(name, default)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Every request answered 200 once its body is whole; a JD submission's answer waits a moment (a store)."""
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await asyncio.sleep(0.05)
    if scope["path"] == "/wait":  # a long poll
        await asyncio.sleep(0.6)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _connection(request_seconds: float = 5.0) -> tuple[Any, _Transport]:
    config = Config(app=_app, log_level="critical", lifespan="off")
    protocol = bounded_protocol(request_seconds, lambda: None)(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _answered(transport: _Transport, count: int) -> list[bytes]:
    for _ in range(200):  # bounded: 2 s
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.written)
        if len(statuses) >= count or transport.closed:
            break
        await asyncio.sleep(0.01)
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.written)


async def test_a_request_that_does_not_parse_behind_one_under_way_is_refused_after_its_answer() -> None:
    """A submission pipelined ahead of a request that does not parse was made, but the only answer was the 400
    (uvicorn's, closing at once: a tester's 7 kinds of bad request); it is answered first, then the 400."""
    for bad in (b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", b"get /x HTTP/1.1\r\n\r\n"):
        protocol, transport = await _connection()
        protocol.data_received(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}" + bad)
        assert await _answered(transport, 2) == [b"200", b"400"], transport.written
        assert transport.closed
        protocol.connection_lost(None)
    protocol, transport = await _connection()  # its own body does not parse: at once
    protocol.data_received(b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert await _answered(transport, 1) == [b"400"] and transport.closed, transport.written
    protocol.connection_lost(None)


async def test_a_request_that_does_not_parse_is_told_why_in_json() -> None:
    """The 400 of a request that does not parse is JSON with a JD code and the parser's reason (uvicorn's was a
    plain "Invalid HTTP request received.": raw UTF-8 in a URL, a tester's, was not told), alone or behind a
    request under way; a URL's raw non-ASCII is told how to send it."""
    for ahead in (b"", b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"):
        protocol, transport = await _connection()
        protocol.data_received(ahead + "GET /v1/tasks?url=中 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert (await _answered(transport, 2 if ahead else 1))[-1] == b"400", transport.written
        head, body = transport.written.rsplit(b"\r\n\r\n", 1)
        assert b"content-type: application/json" in head and transport.closed, transport.written
        told = orjson.loads(body)
        assert told["code"] == 2, told
        assert told["error"].startswith("the request does not parse as HTTP/1.1: Invalid char in url query"), told
        assert "'%E4%B8%AD' for '中'" in told["error"], told
        protocol.connection_lost(None)
    protocol, transport = await _connection()
    protocol.data_received(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")
    assert await _answered(transport, 1) == [b"400"] and transport.closed, transport.written
    told = orjson.loads(transport.written.rsplit(b"\r\n\r\n", 1)[1])
    assert told["error"].startswith("the request does not parse as HTTP/1.1: Invalid header"), told
    assert "percent-encoded" not in told["error"], told
    protocol.connection_lost(None)


async def test_requests_behind_a_chunked_body_are_taken_one_ahead() -> None:
    """Every request behind a chunked body in one read went to the parser at once (a tester's 7,000 a read: 12 MB
    a connection); they wait their turn, one ahead of the one being answered, as behind any other body."""
    protocol, transport = await _connection()
    chunked = b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n1234567\r\n0\r\n\r\n"
    protocol.data_received(chunked + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 1000)
    assert len(protocol.pipeline) <= 1 and not transport.reading
    statuses = await _answered(transport, 3)  # answered in turn, each one's successor parsed after it
    assert len(statuses) >= 3 and set(statuses) == {b"200"}, transport.written[:300]
    protocol.connection_lost(None)


async def test_a_head_split_across_reads_behind_a_large_chunked_body_is_not_taken_for_an_oversized_one() -> None:
    """A chunked body of 77 KB, and the first bytes of a small head behind it in the same read, the rest in the
    next: answered 431, "head over 65536 bytes" (the body's bytes counted as the head's, a tester's)."""
    protocol, transport = await _connection()
    body = b"x" * 77_000
    head = b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    protocol.data_received(head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
    await _answered(transport, 1)
    protocol.data_received(b"st: t\r\n\r\n")
    assert await _answered(transport, 2) == [b"200", b"200"], transport.written
    protocol.connection_lost(None)


async def test_newlines_are_given_to_the_parser_in_few_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """100,000 newlines between requests, or as a chunk's bytes: each read was cut at every blank line, and the
    rest of it sliced off and searched again each time, the square of its size (a tester's 100 KB stalled every
    client 9 s). Blank lines between requests are skipped, a chunk's newlines go to the parser whole."""
    fed: list[int] = []
    feed = HttpToolsProtocol.data_received

    def counted(self: HttpToolsProtocol, data: bytes) -> None:
        fed.append(len(data))
        feed(self, data)

    monkeypatch.setattr(HttpToolsProtocol, "data_received", counted)
    protocol, transport = await _connection()
    protocol.data_received(b"\n" * 100_000 + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert await _answered(transport, 1) == [b"200"] and len(fed) == 1, fed[:5]
    head = b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    fed.clear()
    protocol.data_received(head + b"%x\r\n" % 100_000 + b"\n" * 100_000 + b"\r\n0\r\n\r\n")
    assert await _answered(transport, 2) == [b"200", b"200"] and len(fed) <= 3, fed[:5]
    protocol.connection_lost(None)


async def test_a_chunked_body_and_the_request_behind_it_are_read_whatever_the_reads_cut() -> None:
    """A chunked body (a blank line in its bytes, a trailer) and a request behind it, cut into two reads at
    every byte: each is answered, in order."""
    body = b"5\r\n\r\n\r\nx\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    stream = b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    stream += b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    for cut in range(1, len(stream)):
        protocol, transport = await _connection()
        protocol.data_received(stream[:cut])
        protocol.data_received(stream[cut:])
        assert await _answered(transport, 2) == [b"200", b"200"], (cut, transport.written)
        protocol.connection_lost(None)


async def test_a_request_not_whole_in_time_behind_a_long_poll_is_refused_after_its_answer() -> None:
    """A long poll, then the head of a request whose body does not come (a client waiting for 100 Continue, which
    comes only once the request's turn does), or only part of a head: the 408 was the connection's first and only
    answer, the long poll's lost (a re-tester's). The long poll is answered first, then the 408."""
    for behind in (b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n", b"POST /x HTTP/1.1\r\nHo"):
        protocol, transport = await _connection(request_seconds=0.2)
        protocol.data_received(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.05)
        protocol.data_received(behind)
        assert await _answered(transport, 2) == [b"200", b"408"], transport.written
        assert transport.closed
        protocol.connection_lost(None)


async def test_requests_sent_whole_before_a_half_close_are_answered_then_the_connection_closed() -> None:
    """A client that half-closes after its request (`nc -N`, `socat`): the connection was closed at once and a
    submission taken in was made, its answer lost (a tester's). The requests sent whole are answered (two
    pipelined), then it is closed; at once when nothing is due, or when what is left is a request not whole."""
    protocol, transport = await _connection()
    protocol.data_received(
        b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nokGET /x HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert protocol.eof_received() is True and not transport.closed
    assert await _answered(transport, 2) == [b"200", b"200"]
    for _ in range(100):  # bounded: 1 s
        if transport.closed:
            break
        await asyncio.sleep(0.01)
    assert transport.closed
    idle, idle_transport = await _connection()
    assert not idle.eof_received() and not idle_transport.closed  # asyncio closes it on a falsy answer
    partial, _ = await _connection()
    partial.data_received(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nok")
    assert not partial.eof_received()  # its body will never come whole
    head, _ = await _connection()
    head.data_received(b"GET /x HTTP/1.1\r\nHost:")
    assert not head.eof_received()
