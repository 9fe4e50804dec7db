"""uvicorn's httptools protocol with the two bounds it lacks: the size of a request's head, and the time a
request may take to arrive.

Without them one client could stall every other (a head of 100 MB took the event loop tens of seconds to
take in) or hold connections open for ever (a silent connection, or one sending a byte now and then: only a
connection that has finished a request was ever closed, by the keep-alive timeout), until the process ran out
of file descriptors. nginx's own defaults are of this kind (`large_client_header_buffers`,
`client_header_timeout`, `client_body_timeout`).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # a request line and its header fields, together

log = logging.getLogger("edgewarm.api")

_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def bounded_protocol(request_seconds: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn, with `[api] request_timeout`."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"request_seconds": request_seconds})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A head over MAX_HEAD_BYTES is answered 431, a request not whole within `request_seconds` (from the
    connection's start, or its first byte after the last answer) 408; a connection that sends nothing is
    closed after as long; each closes the connection."""

    request_seconds = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # of the head being received (0 between requests)
        self._in_head = True  # a request's head may be coming (and no request is being answered)
        self._heads_done = 0  # heads completed, so that data_received sees whether one was in its bytes
        self._tail = b""  # the last bytes of a head being received: its end may span two reads
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:
            self._arm()  # bytes of a next request (or of none: a client sending blank lines) are on the clock
        if self._in_head and self._head_bytes + _head_part(self._tail, data) > MAX_HEAD_BYTES:
            self._too_large()  # checked before the parser takes it: a head ending in these bytes is one too
            return
        heads_before, in_head = self._heads_done, self._in_head
        super().data_received(data)
        if self._heads_done != heads_before:
            self._head_bytes, self._tail = 0, b""  # a head ended in these bytes: a next one is counted from here
        elif in_head and self._in_head:
            self._head_bytes += len(data)
            self._tail = (self._tail + data)[-3:]

    def _too_large(self) -> None:
        if not self.transport.is_closing():
            log.warning("a request head over %d bytes from %s: answered 431", MAX_HEAD_BYTES, _peer(self))
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()  # the request is whole: answering it takes what it takes (a long poll, say)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timeout for an idle connection
        self._in_head = True

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
        if self.cycle is None or self.cycle.response_complete:  # nothing being answered: 408 is ours to say
            self.transport.write(_TOO_SLOW)
        elif not self.cycle.response_started:  # a head, and not all of its body: the app's answer is not sent
            self.cycle.disconnected = True
            self.transport.write(_TOO_SLOW)
        log.info("a request not whole within %g s from %s: connection closed", self.request_seconds, _peer(self))
        self.transport.close()


def _head_part(tail: bytes, data: bytes) -> int:
    """How many bytes of `data` belong to the head being received (`tail`: its last bytes so far): up to the
    blank line that ends it (CRLF or LF line ends), or all of them."""
    joined = tail + data
    ends = [found + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (found := joined.find(blank)) >= 0]
    return min(ends) - len(tail) if ends else len(data)


def _peer(protocol: HttpToolsProtocol) -> str:
    client = protocol.client
    return f"{client[0]}:{client[1]}" if client else "a client"
