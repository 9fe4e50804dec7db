"""A cache node that misbehaves on cue: a small fault-injecting HTTP/1.1 server (and proxy) on loopback.

``FaultServer`` listens on a free ``127.0.0.1`` port, records every request byte for byte, and answers each
one with an *action* chosen by a *behaviour*::

    with FaultServer(sequence(Respond(500), Respond(200, body=b"x" * 100))) as node:
        # node.url goes in a [[nodes]] table; the first request of each path gets 500, the next ones 200
        ...
        node.requests      # [RawRequest]: the exact head bytes received, parsed for convenience
        node.connections   # TCP connections accepted so far (a recorder that must see nothing checks this)

Actions:

- :class:`Respond` a status, headers and a body, optionally after ``delay`` seconds or trickled slowly;
  ``content_length`` may lie about the body.
- :class:`Reset` an RST instead of an answer. :class:`Close` a clean close (FIN) without an answer.
- :class:`Stall` headers and part of the body, then silence for ``hold`` seconds (a read timeout test).
- :class:`ShortBody` a ``Content-Length`` larger than the body sent, then close.
- :class:`Forward` relay the request to an upstream (e.g. a lab nginx) and its answer back: a proxy whose
  faults can be mixed with real answers (``sequence(Reset(), Forward(port))``).

``FaultServer(..., tls=(cert, key))`` speaks https (``edgewarm.testing.self_signed`` makes the pair): the same
actions over TLS, ``url`` is ``https://``, and each request records the SNI its connection asked for. A close or
reset is abrupt there too (no TLS close_notify), as when a node dies. ``cbc_only=True``: it speaks TLS 1.2 with
CBC ciphers only, as old appliances do.

``unanswered()`` is an address where connection attempts go unanswered, as to a host that is down.

Every wait is bounded and ends early on :meth:`FaultServer.stop`, which closes every socket and joins every
thread: a test can never hang on this server. Threads, not asyncio, so that it serves an event loop under test
without sharing it. Loopback only.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "Action",
    "Behaviour",
    "Close",
    "FaultServer",
    "Forward",
    "RawRequest",
    "Reset",
    "Respond",
    "ShortBody",
    "Stall",
    "always",
    "sequence",
]

_MAX_HEAD = 64 * 1024  # a request head larger than this is answered 431 and the connection closed
_MAX_BODY = 1 << 20
_TICK = 0.05  # how often blocked threads look at the stop flag


@dataclass(frozen=True, slots=True)
class RawRequest:
    """One request as received. ``head`` is every byte up to and including the blank line."""

    head: bytes
    body: bytes
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # decoded as latin-1, in order, names as sent
    peer: tuple[str, int]
    time: float
    connection: int  # the number of the TCP connection it came on (1, 2, ...)
    sni: str | None = None  # over TLS: the server name the client asked for in its handshake

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None

    @property
    def path(self) -> str:
        """The request target without its query."""
        return self.target.split("?", 1)[0]


# -- actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer ``status`` with ``body``. ``delay`` waits before the head is sent; ``trickle`` sends the body
    in ``trickle_chunk``-byte pieces that far apart. ``content_length`` overrides the true length (a lie);
    None sends the true one. ``keep_alive`` False closes the connection after the answer; ``closes_after``
    closes it that long after the answer though it says keep-alive (a node closing idle connections at once)."""

    status: int = 200
    body: bytes = b"ok\n"
    headers: tuple[tuple[str, str], ...] = (("X-Cache-Status", "MISS"),)
    delay: float = 0.0
    trickle: float = 0.0
    trickle_chunk: int = 1024
    content_length: int | None = None
    keep_alive: bool = True
    closes_after: float | None = None


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the connection with a TCP RST (SO_LINGER 0), after ``delay`` seconds."""

    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection cleanly without answering."""


@dataclass(frozen=True, slots=True)
class Stall:
    """Send the head (``declared`` bytes promised) and ``sent`` bytes of body, then say nothing for ``hold``
    seconds (or until the server stops), then close."""

    declared: int = 100_000
    sent: int = 1000
    hold: float = 30.0
    status: int = 200


@dataclass(frozen=True, slots=True)
class ShortBody:
    """``Content-Length: declared`` but only ``sent`` bytes, then close: a node that lies about the length."""

    declared: int = 1000
    sent: int = 10
    status: int = 200


@dataclass(frozen=True, slots=True)
class Forward:
    """Relay the request to ``host:port`` (with ``Connection: close``) and its whole answer back, then close."""

    port: int
    host: str = "127.0.0.1"
    timeout: float = 30.0


Action = Respond | Reset | Close | Stall | ShortBody | Forward
Behaviour = Callable[[RawRequest, int], Action]
"""Chooses the action for a request; the int counts the requests for that path so far, this one included."""


def always(action: Action) -> Behaviour:
    """The same action for every request."""
    return lambda _request, _count: action


def sequence(*actions: Action) -> Behaviour:
    """The n-th request for a path gets ``actions[n-1]``; the last action repeats."""
    if not actions:
        raise ValueError("sequence() needs at least one action")
    return lambda _request, count: actions[min(count, len(actions)) - 1]


@contextlib.contextmanager
def unanswered(host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, int]]:
    """An address, (host, port), where connection attempts go unanswered: a listening socket whose queue is full,
    so each attempt waits for the client's connect timeout, as with a host that is down."""
    with socket.socket() as silent, socket.socket() as filler:
        silent.bind((host, port))
        silent.listen(0)
        filler.connect(silent.getsockname())  # the queue is full from now on
        bound_host, bound_port = silent.getsockname()[:2]
        yield bound_host, bound_port


# -- the server -----------------------------------------------------------------------------------------


@dataclass
class _Shared:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RawRequest] = field(default_factory=list)
    per_path: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    open_sockets: set[socket.socket] = field(default_factory=set)
    threads: list[threading.Thread] = field(default_factory=list)


class FaultServer:
    """An HTTP/1.1 server on ``127.0.0.1`` that answers each request with ``behaviour``'s action.

    ``behaviour`` is an :data:`Action` (used for every request) or a :data:`Behaviour`. ``idle_timeout``
    closes a keep-alive connection that sends nothing for that long (or takes that long over its TLS
    handshake). ``tls``: a certificate and its key (PEM files): https; ``cbc_only``: TLS 1.2 with CBC ciphers
    only; ``port``: listen there (0: a free one). Use as a context manager.
    """

    def __init__(
        self,
        behaviour: Action | Behaviour = Respond(),
        *,
        idle_timeout: float = 60.0,
        tls: tuple[Path, Path] | None = None,
        cbc_only: bool = False,
        port: int = 0,
    ) -> None:
        self._behaviour = self._as_behaviour(behaviour)
        self._idle_timeout = idle_timeout
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
            self._tls.sni_callback = _note_sni
            if cbc_only:
                self._tls.maximum_version = ssl.TLSVersion.TLSv1_2
                self._tls.set_ciphers("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA")
        self._stopping = threading.Event()
        self._shared = _Shared()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = port  # 0: any free one (a port given: a node's address that comes back, say)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self._listener is not None:
            raise RuntimeError("FaultServer already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(512)
        listener.settimeout(_TICK)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"fault-accept-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every stall and delay, close every socket, join every thread. Idempotent."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._shared.lock:
            sockets = list(self._shared.open_sockets)
            threads = list(self._shared.threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        if self._acceptor is not None:
            self._acceptor.join(max(0.0, deadline - time.monotonic()))
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- what a test reads and sets ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self._tls is not None else 'http'}://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RawRequest]:
        """Every request received so far, in order of arrival."""
        with self._shared.lock:
            return list(self._shared.requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._shared.lock:
            return self._shared.connections

    def set_behaviour(self, behaviour: Action | Behaviour) -> None:
        """Answer the following requests with ``behaviour`` (the per-path counts go on)."""
        self._behaviour = self._as_behaviour(behaviour)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RawRequest]:
        """The requests once there are at least ``count``; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} requests, not {count}, after {timeout}s")
            time.sleep(0.01)

    @staticmethod
    def _as_behaviour(behaviour: Action | Behaviour) -> Behaviour:
        if isinstance(behaviour, Respond | Reset | Close | Stall | ShortBody | Forward):
            return always(behaviour)
        return behaviour

    # -- threads ------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            with self._shared.lock:
                self._shared.connections += 1
                number = self._shared.connections
                self._shared.open_sockets.add(conn)
                thread = threading.Thread(
                    target=self._serve, args=(conn, peer, number), name=f"fault-conn-{number}", daemon=True
                )
                self._shared.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int], number: int) -> None:
        conn.settimeout(_TICK)
        buffer = b""
        try:
            if self._tls is not None:
                tls = self._handshake(conn)
                if tls is None:
                    return  # _handshake closed it
                conn = tls
            while not self._stopping.is_set():
                head, buffer = self._read_head(conn, buffer)
                if head is None:
                    return
                request, buffer, ok = self._parse(conn, head, buffer, peer, number)
                with self._shared.lock:
                    self._shared.requests.append(request)
                    self._shared.per_path[request.path] += 1
                    count = self._shared.per_path[request.path]
                if not ok:
                    self._send(conn, _head(400, (), 0, keep_alive=False))
                    return
                if not self._act(conn, request, self._behaviour(request, count)):
                    return
        except OSError:
            return
        finally:
            with self._shared.lock:
                self._shared.open_sockets.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _handshake(self, conn: socket.socket) -> ssl.SSLSocket | None:
        """`conn` over TLS once its handshake is done; None when it fails, stalls or the server stops."""
        assert self._tls is not None
        with self._shared.lock:  # wrapping detaches `conn`: stop() must shut the TLS socket down instead
            self._shared.open_sockets.discard(conn)
            tls = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            self._shared.open_sockets.add(tls)
        given_up = time.monotonic() + self._idle_timeout
        while not self._stopping.is_set() and time.monotonic() < given_up:
            try:
                tls.do_handshake()
                return tls
            except TimeoutError:
                continue
            except OSError:  # ssl.SSLError too: the client refused our certificate, or went away
                break
        with self._shared.lock:
            self._shared.open_sockets.discard(tls)
        with contextlib.suppress(OSError):
            tls.close()
        return None

    def _read_head(self, conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
        """The next request head (through the blank line) and what follows it; None when the peer is gone."""
        idle_until = time.monotonic() + self._idle_timeout
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > _MAX_HEAD:
                self._send(conn, _head(431, (), 0, keep_alive=False))
                return None, b""
            if self._stopping.is_set() or time.monotonic() > idle_until:
                return None, b""
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return None, b""
            buffer += chunk
        end = buffer.index(b"\r\n\r\n") + 4
        return buffer[:end], buffer[end:]

    def _parse(
        self, conn: socket.socket, head: bytes, buffer: bytes, peer: tuple[str, int], number: int
    ) -> tuple[RawRequest, bytes, bool]:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ")
        ok = len(parts) == 3 and parts[2].startswith("HTTP/")
        method, target, version = (parts[0], parts[1], parts[2]) if ok else ("", "", "")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                ok = False
                continue
            headers.append((name, value.strip()))
        length_text = next((v for k, v in headers if k.lower() == "content-length"), "0")
        length = int(length_text) if length_text.isdigit() and int(length_text) <= _MAX_BODY else 0
        deadline = time.monotonic() + self._idle_timeout
        while len(buffer) < length and not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            buffer += chunk
        body, rest = buffer[:length], buffer[length:]
        sni = getattr(conn, "sni", None)
        request = RawRequest(head, body, method, target, version, tuple(headers), peer, time.time(), number, sni)
        return request, rest, ok

    def _act(self, conn: socket.socket, request: RawRequest, action: Action) -> bool:
        """Carry out `action`; True when the connection stays open for another request."""
        if isinstance(action, Respond):
            if not self._pause(action.delay):
                return False
            length = len(action.body) if action.content_length is None else action.content_length
            body = b"" if request.method == "HEAD" else action.body
            if not action.trickle:
                self._send(conn, _head(action.status, action.headers, length, action.keep_alive) + body)
            else:
                self._send(conn, _head(action.status, action.headers, length, action.keep_alive))
                for start in range(0, len(body), max(1, action.trickle_chunk)):
                    if not self._pause(action.trickle):
                        return False
                    self._send(conn, body[start : start + max(1, action.trickle_chunk)])
            if action.closes_after is not None:
                self._pause(action.closes_after)
                return False
            return action.keep_alive
        if isinstance(action, Reset):
            self._pause(action.delay)
            # SO_LINGER on with a zero timeout: close() sends RST and drops unsent data.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if isinstance(action, Close):
            return False
        if isinstance(action, Stall):
            self._send(conn, _head(action.status, (), action.declared, keep_alive=True) + b"s" * action.sent)
            self._pause(action.hold)
            return False
        if isinstance(action, ShortBody):
            self._send(conn, _head(action.status, (), action.declared, keep_alive=True) + b"b" * action.sent)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            return False
        self._forward(conn, request, action)
        return False

    def _forward(self, conn: socket.socket, request: RawRequest, action: Forward) -> None:
        lines = [line for line in request.head[:-4].split(b"\r\n") if not line.lower().startswith(b"connection:")]
        head = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"
        with socket.create_connection((action.host, action.port), timeout=action.timeout) as upstream:
            upstream.sendall(head + request.body)
            deadline = time.monotonic() + action.timeout
            while not self._stopping.is_set() and time.monotonic() < deadline:
                chunk = upstream.recv(65536)
                if not chunk:
                    return
                self._send(conn, chunk)

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; False when the server is stopping."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._stopping.is_set():
                raise OSError("the fault server is stopping")
            try:
                sent = conn.send(view)
            except TimeoutError:
                continue
            view = view[sent:]


def _note_sni(tls: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext) -> None:
    """The TLS handshake's SNI, kept on the connection for the requests that come over it."""
    tls.sni = server_name  # type: ignore[union-attr]


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}


def _head(status: int, headers: Sequence[tuple[str, str]], length: int, keep_alive: bool) -> bytes:
    reason = _REASONS.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
