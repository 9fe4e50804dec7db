"""uvicorn's httptools protocol with the bounds it lacks: the size of a request's head, the time a request may
take to arrive, and the connections open at once.

Without them one client could stall every other (a head of 100 MB took the event loop tens of seconds to
take in) or hold connections open for ever (a silent connection, or one sending a byte now and then: only a
connection that has finished a request was ever closed, by the keep-alive timeout), until the process ran out
of file descriptors. nginx's own defaults are of this kind (`large_client_header_buffers`,
`client_header_timeout`, `client_body_timeout`, `worker_connections`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ..errors import JdCode
from ..logs import UNREAD

MAX_HEAD_BYTES = 64 * 1024  # a request line and its header fields, together
CLIENT_ENDED = "edgewarm.client_ended"  # in a request's scope: its client sends nothing more (eof_received)


def client_ended(scope: Mapping[str, object]) -> bool:
    """Whether the client of the request of `scope` half-closed or closed its connection (a FIN: which, cannot be
    told until an answer is written)."""
    return bool(scope.get(CLIENT_ENDED))


def _refusal(status: str, error: str) -> bytes:
    """An answer of the protocol's own, closing: JSON with a JD code, as the service's other refusals (the 431
    and 408 were empty, without a type: a JD client had nothing to read, a tester's)."""
    body = orjson.dumps({"code": int(JdCode.PARAMS_EMPTY), "error": error})
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
    return (head + "connection: close\r\n\r\n").encode() + body


_TOO_LARGE = _refusal(
    "431 Request Header Fields Too Large", f"the request's head is over {MAX_HEAD_BYTES} bytes: send less in it"
)


def _bad_request(error: httptools.HttpParserError | None) -> bytes:
    """The 400 of a request that does not parse, saying why as the parser does (uvicorn's was a plain-text
    "Invalid HTTP request received.": a JD client had nothing to read, and a URL's raw UTF-8 was not told)."""
    why = f": {error}" if error is not None and str(error) else ""
    if isinstance(error, httptools.HttpParserInvalidURLError):
        why += " (a URL's spaces, controls and non-ASCII characters are sent percent-encoded: '%E4%B8%AD' for '中')"
    return _refusal("400 Bad Request", f"the request does not parse as HTTP/1.1{why}")


class _TellingParser(httptools.HttpRequestParser):
    """httptools' parser, keeping the error it raised: uvicorn's protocol drops it."""

    error: httptools.HttpParserError | None = None

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        try:
            super().feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc
            raise


def _too_many(max_connections: int) -> bytes:
    """The 503 of a connection past the room: JSON with a JD code, as the service's other 503s (an empty one was
    taken by the CLI for a proxy's: "a proxy in front has no edgewarm to ask", a tester's)."""
    body = orjson.dumps(
        {"code": int(JdCode.INTERNAL), "error": f"the server holds all the connections it has room for "
         f"({max_connections}): try again in a moment"}
    )  # fmt: skip
    head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\n"
    head += f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    return head.encode() + body


def bounded_protocol(
    request_seconds: float, max_connections: Callable[[], int | None]
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn, with `[api] request_timeout` and the connections this process has room
    for, asked at each connection (tuning.api_connections_room by the running config's concurrency: a reload
    changing it kept the start's room, past the files left, a re-tester's; None: no bound)."""
    bounds = {"request_seconds": request_seconds, "max_connections": staticmethod(max_connections)}
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), bounds)


_IDLE, _HEAD, _BODY = range(3)  # where the parser is: between messages, in a head, in a body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A head over MAX_HEAD_BYTES is answered 431, a request not whole within `request_seconds` (from the
    connection's start, or its first byte after the last answer) 408; a connection that sends nothing is
    closed after as long; each closes the connection. A connection beyond `max_connections` open is answered
    503 at once and closed (each is an open file: the engine's requests and the store need theirs).

    The parser is fed a read's bytes in pieces: up to the end of a head (its blank line), a body's bytes by its
    Content-Length, and a chunked body's up to each blank line (its end is one: the last chunk's, or its
    trailers'), so that every head is counted, however the reads cut the bytes (one read may end a head, or
    hold a body's end and the next request's head) and whatever is answered meanwhile (an answer given before
    the body arrives); the requests behind a chunked body were taken in with it, all of a read's (a tester's
    7,000: 12 MB a connection), and a small head split across reads behind one counted as over the bound.
    Each head is also counted as the parser gives its parts, and one over the bound is not answered.

    The requests before an oversized head on the connection (pipelined: sent before their answers came) are
    answered first, then the 431: it closed the connection at once, and a request already taken in (a submit,
    say) was done but its answer lost. So are those before a request that does not parse, then its 400.
    Nothing more is read meanwhile.

    Pipelined requests are taken one ahead of the one being answered: the bytes after it wait, unread, until
    that one is answered (all those of a read were parsed, each request kept until its turn: a client that
    sent 60,000 and read no answer took the process past 1 GB, a tester's). Answers the client does not read
    (the transport's buffer full) for `request_seconds` close the connection: nothing else bounded them."""

    request_seconds = 60.0
    max_connections: Callable[[], int | None] = staticmethod(lambda: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _TellingParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # counted in server_state.connections
        self._state = _IDLE
        self._head_bytes = 0  # of the head being received
        self._tail = b""  # its last bytes: its end may span two reads
        self._body_left: int | None = None  # of a body of a known length
        self._head_parts = 0  # bytes of the head's parts the parser gave (its URL, its fields)
        self._oversize = False  # a head's parts went over MAX_HEAD_BYTES: nothing more is answered (431, closed)
        self._refusing = False  # a head over the bound came: 431 once the requests before it are answered
        self._refusal = _TOO_LARGE  # what _refuse_after_the_answers writes: 431, 400 or 408
        self._dropped: RequestResponseCycle | None = None  # the request refused 408, taken in and never to run
        self._deadline: asyncio.TimerHandle | None = None
        self._unparsed = b""  # bytes behind a request pipelined ahead: parsed once the one before is answered
        self._cycles: list[RequestResponseCycle] = []  # the requests taken in and not answered whole
        self._stalled: asyncio.TimerHandle | None = None  # the answers' bytes unread by the client since
        self._ended = False  # the client half-closed: it sends nothing more, and reads the answers due
        most = self.max_connections()
        if most is not None and len(self.server_state.connections) > most:
            UNREAD.refused(f"over {most} connections open (503, closed)", _peer(self))
            self._refusing = True  # nothing it sends is read
            transport.write(_too_many(most))
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
        for cycle in self._cycles:  # each request under way or waiting learns it, as uvicorn tells its last
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return  # read before the pause took: nothing after the oversized head is taken in
        if self._unparsed:  # read before the pause took: after the bytes waiting, in their order
            data, self._unparsed = self._unparsed + data, b""
        if self._deadline is None:
            self._arm()  # bytes of a next request (or of none: a client sending blank lines) are on the clock
        # Each byte is looked at once, by offsets into the read (a piece's rest sliced off and searched again,
        # newlines a byte apart cost the square of the read's size: 100 KB stalled every client 9 s, a tester's).
        pos, end = 0, len(data)
        while pos < end and not self.transport.is_closing():
            if self._state == _IDLE:  # blank lines between requests: the parser skips them, so may we
                pos = _BLANK_LINES.match(data, pos).end()  # type: ignore[union-attr]
                if pos == end:
                    return
            if self._state == _BODY and self._body_left is not None:
                size = end - pos if not self._body_left else min(self._body_left, end - pos)
            elif self._state == _BODY:  # chunked: up to its next blank line, which may be its end
                size = _blank_line_end(self._tail, data, pos) - pos
            else:  # (a head longer than MAX_HEAD_BYTES is refused: its end is not sought beyond)
                size = _blank_line_end(self._tail if self._state == _HEAD else b"", data, pos, MAX_HEAD_BYTES + 4) - pos
                if self._head_bytes + size > MAX_HEAD_BYTES:
                    self._too_large()
                    return
            piece, pos = data[pos : pos + size], pos + size
            super().data_received(piece)
            if self._refusing:  # it did not parse, behind a request still to be answered (send_400_response)
                return
            if self._oversize:
                self._too_large()
                return
            if self.pipeline and pos < end:  # a request waits for the one before: the rest waits with it, unread
                self._unparsed = data[pos:]
                self.flow.pause_reading()
                self._disarm()  # on the clock again when it is read (the answer before may take long: a wait)
                return
            if self._state == _HEAD:  # the head goes on in the next read
                self._head_bytes += size
            if self._state != _IDLE:
                self._tail = (self._tail + piece[-3:])[-3:]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._state, self._head_bytes, self._tail, self._body_left = _HEAD, 0, b"", None
        self._head_parts = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and its line's end
        super().on_header(name, value)
        if name.lower() == b"content-length" and value.strip().isdigit():
            self._body_left = int(value)

    def on_headers_complete(self) -> None:
        self._state, self._tail = _BODY, b""
        if not self._oversize:  # else not answered: data_received answers 431 and closes
            super().on_headers_complete()
            # uvicorn tells only its last request of a lost connection: the one answered before a pipelined one
            # wrote on, to a closed transport (a traceback: a tester's stalled reader, cut off).
            self._cycles = [c for c in self._cycles if not c.response_complete] + [self.cycle]

    def on_body(self, body: bytes) -> None:
        if self._body_left:
            self._body_left -= len(body)
        if not self._oversize:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._state = _IDLE
        self._disarm()  # the request is whole: answering it takes what it takes (a long poll, say)
        if not self._oversize:
            super().on_message_complete()

    def _count_head(self, size: int) -> None:
        self._head_parts += size
        self._oversize = self._oversize or self._head_parts > MAX_HEAD_BYTES

    def _too_large(self) -> None:
        UNREAD.refused(f"head over {MAX_HEAD_BYTES} bytes (431)", _peer(self))
        self._refuse_after_the_answers(_TOO_LARGE)

    def _refuse_after_the_answers(self, refusal: bytes, dropped: RequestResponseCycle | None = None) -> None:
        """Read nothing more; write `refusal` and close once the requests taken in before the refused one (not
        `dropped`, the refused one itself if it was taken in) are answered: at once if none waits."""
        self._refusal, self._refusing, self._dropped = refusal, True, dropped
        self._disarm()  # the answers before it take what they take (a long poll, say)
        self.flow.pause_reading()
        self._refuse_when_answered()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request taken in, if any; resumes reading
        if self._refusing:
            self.flow.pause_reading()
            self._refuse_when_answered()
        elif self._unparsed and not self.transport.is_closing():
            waiting, self._unparsed = self._unparsed, b""
            self.data_received(waiting)
        if self._ended and not self._answers_due() and not self.transport.is_closing():
            self.transport.close()  # the client sends nothing more: a request not whole never will be

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol's: keep open
        """The client half-closed (it sends nothing more, as `nc -N` and `socat` do after a request): the
        requests it sent whole are answered, then the connection is closed; at once when none is due. It was
        closed at once, and a submission taken in was made, charged and its answer lost (a tester's). Each request
        under way is marked (`client_ended`): a long poll answers at once, as it is (a client that closed its
        socket sends the same FIN: its wait went on to its timeout, holding one of the user's 50)."""
        self._ended = True
        for cycle in self._cycles:
            cycle.scope[CLIENT_ENDED] = True  # type: ignore[literal-required]
        return True if self._answers_due() and not self.transport.is_closing() else None

    def _answers_due(self) -> bool:
        """Requests taken in whole and not answered whole, or pipelined bytes waiting behind one (not a request
        whose body is still arriving: after a half-close it never will)."""
        arriving = self.cycle if self._state == _BODY else None
        return bool(self._unparsed) or any(
            not c.response_complete for c in self._cycles if c is not self._dropped and c is not arriving
        )

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.request_seconds, self._not_read)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _not_read(self) -> None:
        """The client has read none of its answers' bytes for `request_seconds`: closed, what was left unsent."""
        self._stalled = None
        if not self.transport.is_closing():
            UNREAD.refused(f"reading none of its answers for {self.request_seconds:g} s (closed)", _peer(self))
            self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        """A request that does not parse (uvicorn has logged `msg`): 400 in JSON, saying why, and closed, once
        the requests taken in before it are answered: uvicorn wrote its 400 and closed at once, and a submission
        pipelined ahead of it was made but its answer lost (a tester's 7 kinds of bad request behind a
        prefetch). One whose own body does not parse (a bad chunk) is answered at once: nothing more of it will
        come."""
        refusal = _bad_request(self.parser.error if isinstance(self.parser, _TellingParser) else None)
        ahead = self.cycle is not None and not self.cycle.more_body and not self.cycle.response_complete
        if not (ahead or self.pipeline):
            self.transport.write(refusal)
            self.transport.close()
            return
        self._refuse_after_the_answers(refusal)

    def _refuse_when_answered(self) -> None:
        """The 431 (or 400, 408), once every request taken in before the refused one is answered."""
        if self.transport.is_closing() or self.pipeline:
            return
        if any(not c.response_complete for c in self._cycles if c is not self._dropped):
            return
        self.transport.write(self._refusal)
        self.transport.close()

    def _too_slow_answer(self) -> bytes:
        return _refusal(
            "408 Request Timeout",
            f"the request was not whole within {self.request_seconds:g} s ([api] request_timeout)",
        )

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # The request not whole: the last one taken in, when its body is arriving; else one whose head is.
        slow = self.cycle if self._state == _BODY else None
        if slow is not None and self.pipeline and self.pipeline[0][0] is slow:
            self.pipeline.popleft()  # queued behind one being answered: it never runs
        if any(not c.response_complete for c in self._cycles if c is not slow):
            # Requests before it are still being answered (a long poll): they are first, then the 408 (it was
            # written at once, closing: a re-tester's long poll, answered 408 for the request behind it).
            UNREAD.refused(f"not whole within {self.request_seconds:g} s (408, closed)", _peer(self))
            self._refuse_after_the_answers(self._too_slow_answer(), slow)
            return
        if self.cycle is None or self.cycle.response_complete:  # nothing being answered: 408 is ours to say
            self.transport.write(self._too_slow_answer())
        elif not self.cycle.response_started:  # a head, and not all of its body: the app's answer is not sent
            self.cycle.disconnected = True
            self.transport.write(self._too_slow_answer())
        UNREAD.refused(f"not whole within {self.request_seconds:g} s (408, closed)", _peer(self))
        self.transport.close()


_BLANK_LINES = re.compile(rb"[\r\n]*")


def _blank_line_end(tail: bytes, data: bytes, pos: int, most: int | None = None) -> int:
    """Where in `data` the next blank line from `pos` ends (`tail`: the last bytes before `pos` of the head or
    chunked body it may end), or `data`'s end; sought no further than `most` bytes. A head ends with one; a
    chunked body too (its last chunk's, or its trailers'), and it is fed to the parser up to each (one may be
    its end: the requests behind it are not given to the parser with it). Only CRLF CRLF: the parser refuses
    bare LF line ends."""
    if tail:
        joined = tail + data[pos : pos + 3]
        spanning = joined.find(b"\r\n\r\n")
        if spanning >= 0:
            return pos + spanning + 4 - len(tail)
    found = data.find(b"\r\n\r\n", pos, len(data) if most is None else pos + most)
    return len(data) if found < 0 else found + 4


def _peer(protocol: HttpToolsProtocol) -> str | None:
    """The client's address (its port left out: the digest counts addresses, and each connection has its own)."""
    client = protocol.client
    return client[0] if client else None
