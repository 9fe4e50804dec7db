"""Python client for edgewarm (and for JD Cloud CDN's prefetch API): sync and async, the same methods.

    with Client("http://127.0.0.1:8080", "jcloud_00", "e7a31b…") as client:
        taskid = client.prefetch(["http://www.example.test/a.js"])
        view = client.wait(taskid)          # the native view once the task has ended

    async with AsyncClient(...) as client:
        taskid = await client.prefetch([...])

Signing is `edgewarm.auth.sign`, the very function the server verifies with. A refusal raises `ClientError`
carrying the JD code (`.code`); a transport failure raises `ClientError` with code -1.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx

from . import auth
from .errors import OUTCOME_UNKNOWN_SAID, EdgewarmError, JdCode
from .urls import password_masked


class ClientError(EdgewarmError):
    """A call that did not succeed; `code` is the JD error code (-1 for transport errors). `maybe_done`: no
    answer came, but the request may have reached the server (it was sent, then the connection broke or the
    answer was late): a submission may have made its task. `lasting`: asking again will not help (the server's
    certificate was refused), though no answer came."""

    def __init__(
        self,
        code: int,
        message: str,
        http_status: int | None = None,
        *,
        maybe_done: bool = False,
        lasting: bool = False,
    ) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.maybe_done = maybe_done
        self.lasting = lasting

    @property
    def task_not_found(self) -> bool:
        """The service's word that the task is not found (404, JD code 1): not a route missing (a wrong server
        address, or a proxy's path: told as it is, not as every task unknown)."""
        return self.http_status == 404 and self.code == JdCode.FAILURE


@dataclass(frozen=True)
class _Call:
    """One HTTP call, described once and sent by either client."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    json: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    timeout: float | None = None


NOT_THE_SERVICE = "is the server address edgewarm's own (with the path a proxy in front serves it under, if any)?"
# What an answer that is not edgewarm's says, by its status: a proxy's in front of edgewarm, mostly.
_PROXY_SAYS = {
    413: "the body is larger than a proxy in front takes (nginx's client_max_body_size: make it at least "
    "[api] max_body_bytes)",
    502: "a proxy in front got no answer from edgewarm (restarting, or stopped?)",
    503: "a proxy in front has no edgewarm to ask (restarting, or stopped?)",
    504: "a proxy in front gave up waiting for edgewarm (its timeout, nginx's proxy_read_timeout, is shorter than "
    "the call took)",
}
# Of those, the answers after which the call may have been done all the same (a submission may have made its task).
_MAYBE_DONE = frozenset({502, 504})


def _from_a_proxy(status: int, data: object) -> bool:
    """Whether an answer of `status` with the body `data` (its JSON, or None) is a proxy's in front of edgewarm:
    edgewarm never answers 502 or 504, and its 503 and 413 are JSON with `code` (the 413 of its body limit:
    `error`). Some gateways answer in JSON of their own (`{"message": …}`)."""
    if status in (502, 504):
        return True
    if status in (503, 413):
        return not (isinstance(data, dict) and ("code" in data or (status == 413 and "error" in data)))
    return False


def _json(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; an answer that is none, or a 404 for the route itself (not for a task: that
    one has a JD code), is no edgewarm answer to this call: a proxy's in front (saying why), or the server
    address is wrong."""
    path, status = response.request.url.path, response.status_code
    try:
        data = response.json()
    except (ValueError, RecursionError):  # (nested beyond the parser's depth: a broken proxy's, a tester's)
        data = None
    proxys = _from_a_proxy(status, data)
    if proxys or not isinstance(data, dict):
        why = _PROXY_SAYS[status] if proxys else NOT_THE_SERVICE
        raise ClientError(
            JdCode.INTERNAL, f"HTTP {status} for {path}, not edgewarm's answer: {why}", status,
            maybe_done=status in _MAYBE_DONE,
        )  # fmt: skip
    if status == 404 and "code" not in data:
        raise ClientError(JdCode.INTERNAL, f"HTTP 404 for {path}: no such route here: {NOT_THE_SERVICE}", 404)
    return data


def _jd(response: httpx.Response) -> dict[str, Any]:
    data = _json(response)
    if response.status_code != 200:
        raise ClientError(JdCode.INTERNAL, str(data.get("error") or response.text), response.status_code)
    status = data.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise _garbled(response, f"its status is {status!r}, no JD code")
    if status != 0:
        said = str(data.get("msg", ""))
        raise ClientError(status, said, response.status_code, maybe_done=_outcome_unknown(status, said))
    return data


def _outcome_unknown(code: int, said: str) -> bool:
    """Whether an answer of `code` says the store did not confirm the submission, which may have been made."""
    return code == JdCode.INTERNAL and OUTCOME_UNKNOWN_SAID in said


def _native(response: httpx.Response) -> dict[str, Any]:
    data = _json(response)
    if response.status_code != 200:
        code = data.get("code", -1)
        code = code if isinstance(code, int) and not isinstance(code, bool) else JdCode.INTERNAL
        said = str(data.get("error") or response.text)
        raise ClientError(code, said, response.status_code, maybe_done=_outcome_unknown(code, said))
    return data


def _field(key: str, kind: type) -> Callable[[httpx.Response], Any]:
    """A JD answer's field `key` (or "data.key" in its `data`), of `kind`: an answer without it, or with another
    kind of value, is no edgewarm answer (a tester's fake: KeyError and tracebacks escaped, the CLI's note of what
    was sent lost)."""

    def read(response: httpx.Response) -> Any:
        value: Any = _jd(response)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, kind):
            raise _garbled(response, f"it has no {key} ({kind.__name__})")
        return value

    return read


def _view(*keys: str) -> Callable[[httpx.Response], dict[str, Any]]:
    """A native answer that must hold `keys` (a task's view: its status and counts; a list: its tasks)."""

    def read(response: httpx.Response) -> dict[str, Any]:
        data = _native(response)
        if missing := [key for key in keys if key not in data]:
            raise _garbled(response, f"it has no {', '.join(missing)}")
        return data

    return read


def _garbled(response: httpx.Response, why: str) -> ClientError:
    """An answer of HTTP 200 in JSON that is still none of edgewarm's: a call that writes may have been done."""
    return ClientError(
        JdCode.INTERNAL,
        f"HTTP {response.status_code} for {response.request.url.path}, not edgewarm's answer: {why} "
        f"({NOT_THE_SERVICE})",
        response.status_code,
        maybe_done=response.request.method == "POST",
    )


_TASK_VIEW = _view("taskid", "status", "total", "counts", "nodes", "items")
_QUOTA_VIEW = _view("day", "timezone", "urls", "dirs", "urls_per_call", "dirs_per_call")  # (an older one: no more)


def check_server(address: str) -> None:
    """ValueError, saying what to give, when `address` is no http(s) URL of a host and port (`127.0.0.1:8080`
    without its scheme was "no answer from 127.0.0.1:8080", as if the server were down); its password masked."""
    shown = password_masked(address)
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:  # a port that is no number, a bracket left open
        raise ValueError(f"the server address {shown} is not a URL: give http(s)://host[:port]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(f"the server address {shown} is not an http(s) URL: give http(s)://host[:port]")


class _Calls:
    """What each method sends; the sync and async clients only differ in how they send it."""

    def __init__(
        self,
        base_url: str,
        username: str,
        secret: str,
        *,
        timeout: float = 30.0,
        timezone: str = auth.DEFAULT_TIMEZONE,
    ) -> None:
        base_url = base_url.strip()  # a space or tab pasted around it (urlsplit takes it, httpx does not)
        check_server(base_url)
        if not auth.known_timezone(timezone):  # else every call raised ZoneInfoNotFoundError (a KeyError)
            raise ValueError(f"unknown time zone {timezone!r}: give an IANA name, as Asia/Shanghai")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._secret = secret
        self._timezone = timezone
        self._open(_call_timeout(timeout))

    def _open(self, timeout: float) -> None:
        """Make the HTTP client the calls are sent through (each client its own kind)."""
        raise NotImplementedError

    def signature(self, now: datetime | None = None) -> str:
        """Today's signature (in the service's time zone)."""
        return auth.sign(self.username, self._secret, auth.today(now or datetime.now(UTC), self._timezone))

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {"username": self.username, "signature": self.signature(), **fields}

    def _auth(self) -> dict[bytes, bytes]:
        # In UTF-8: a non-ASCII username (a JD username may be one) is no str header httpx can send.
        return {b"X-Edgewarm-Username": self.username.encode(), b"X-Edgewarm-Signature": self.signature().encode()}

    @staticmethod
    def _extensions(refresh: bool, callback_url: str | None, idempotency_key: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if refresh:
            fields["refresh"] = True
        if callback_url:
            fields["callback_url"] = callback_url
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        return fields

    def _prefetch(
        self, urls: Sequence[str], refresh: bool, callback_url: str | None, idempotency_key: str | None
    ) -> _Call:
        body = self._body(publish_urls=_listed(urls), **self._extensions(refresh, callback_url, idempotency_key))
        return _Call("POST", "/api/prefetch", _field("taskid", str), json=body)

    def _refresh(
        self, entries: Sequence[str], directories: bool, callback_url: str | None, idempotency_key: str | None
    ) -> _Call:
        body = self._body(
            instances=_listed(entries),
            type="dir" if directories else "file",
            **self._extensions(False, callback_url, idempotency_key),
        )
        return _Call("POST", "/api/refresh", _field("taskid", str), json=body)

    def _query(self, taskid: str, refresh: bool) -> _Call:
        path = "/api/refreshQuery" if refresh else "/api/prefetchQuery"
        return _Call("POST", path, _field("data", dict), json=self._body(taskid=taskid))

    def _task(self, taskid: str, offset: int, limit: int, state: str | None = None) -> _Call:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state is not None:
            params["state"] = state
        return _Call("GET", _task_path(taskid), _TASK_VIEW, params=params, headers=self._auth())

    def _tasks(self, filters: dict[str, Any]) -> _Call:
        params = {k: v for k, v in filters.items() if v is not None}
        return _Call("GET", "/v1/tasks", _view("tasks"), params=params, headers=self._auth())

    def _lookup(self, taskids: Sequence[str]) -> _Call:
        return _Call(
            "POST", "/v1/tasks/lookup", _view("tasks"), json={"taskids": _listed(taskids)}, headers=self._auth()
        )

    def _cancel(self, taskid: str) -> _Call:
        return _Call("POST", _task_path(taskid, "/cancel"), _TASK_VIEW, headers=self._auth())

    def _quota(self) -> _Call:
        return _Call("GET", "/v1/quota", _QUOTA_VIEW, headers=self._auth())

    def _wait_once(self, taskid: str, seconds: float, left: float) -> _Call:
        """One long poll of `seconds`; `left`: seconds to the caller's deadline, which a slow or frozen server's
        silence may pass by WAIT_GRACE at most (it was 10 s: the server's answer may be late by that much
        under load when more polls follow; the last one has no time for it)."""
        params = {"timeout": seconds}
        timeout = seconds + min(10.0, max(0.0, left - seconds) + WAIT_GRACE)
        return _Call(
            "GET", _task_path(taskid, "/wait"), _TASK_VIEW, params=params, headers=self._auth(), timeout=timeout
        )


WAIT_PAUSE = 1.0  # seconds before asking again after a wait that came back early, the task still running
WAIT_GRACE = 1.0  # seconds past `wait`'s timeout a silent server may keep its last poll's answer


def _call_timeout(timeout: float) -> float:
    """A client's `timeout`: seconds over 0 (0 failed every call "Operation now in progress" as if the server
    were down, -1 at the first call with httpx's words: a tester's); refused when the client is made."""
    if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout: {timeout!r} is no number of seconds over 0")
    return float(timeout)


def _waited(timeout: float) -> float:
    """`wait`'s timeout, a number of seconds from 0, or infinity (NaN waited for ever, unsaid: a developer's)."""
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout: {timeout!r} is no number of seconds from 0")
    return timeout


def _pause_after(view: dict[str, Any], asked: float, took: float, left: float) -> float:
    """Seconds to pause before asking again after a wait that answered `view` in `took` of the `asked` seconds:
    one that came back early with the task still running (the service stopping, or this user's waits at their
    limit there) is asked again after a second, not at once (a loop of calls). `left`: to the caller's deadline."""
    if view["status"] != 1 or took >= asked - 0.1:
        return 0.0
    return max(0.0, min(WAIT_PAUSE, left))


def _listed(values: Sequence[str]) -> list[str]:
    """A list of URLs or task ids; one string is one of them (not its characters)."""
    return [values] if isinstance(values, str) else list(values)


def _task_path(taskid: str, then: str = "") -> str:
    """The native path of a task: the id stripped (a line read from a file may end in CR) and escaped (an id
    such as `../quota` names no other route); an empty one is refused here."""
    text = taskid.strip()
    if not text:
        raise ClientError(JdCode.TASKID_EMPTY, "the task id is empty")
    if "/" in text:  # no id holds one, and the server's router reads it as a separator even escaped: "no such
        raise ClientError(JdCode.FAILURE, "task not found", 404)  # route here" was said of `watch a/b` (a re-tester's)
    return f"/v1/tasks/{quote(text, safe='')}{then}"


def _transport_error(exc: httpx.HTTPError | httpx.InvalidURL, server: str) -> ClientError:
    """No answer (the server not reached, the connection broken, a URL httpx cannot send): code -1, naming the
    server (its password masked); `maybe_done` unless the request cannot have reached it (no connection was made)."""
    server = password_masked(server)
    unsent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol, httpx.InvalidURL)
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        why = str(exc).rpartition("certificate verify failed: ")[2]
        # A name the certificate lacks is no CA's matter (a TLS tester was told of SSL_CERT_FILE for one).
        mismatch = "mismatch" in why.lower() or "not valid for" in why
        hint = (
            "give the server address by a name its certificate has"
            if mismatch
            else "signed by a CA of your own? Name its certificate (PEM) in SSL_CERT_FILE"
        )
        return ClientError(
            JdCode.INTERNAL, f"{server} refused: its certificate did not verify ({why}): {hint}", lasting=True
        )
    if isinstance(exc, httpx.ConnectError) and "WRONG_VERSION_NUMBER" in str(exc):  # asked again, the same
        return ClientError(
            JdCode.INTERNAL,
            f"{server} answered no TLS: it serves plain HTTP? Give http:// (or the port of its TLS proxy)",
            lasting=True,
        )
    # httpx's own words, unless it has none beyond "timed out" (its sync client's, for any timeout)
    unsaid = str(exc) in ("", "timed out") and type(exc) in _UNSAID
    said = _UNSAID[type(exc)] if unsaid else f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ClientError(JdCode.INTERNAL, f"no answer from {server}: {said}", maybe_done=not isinstance(exc, unsent))


# httpx's timeouts carry no words of their own (none, or "timed out"): what each means.
_UNSAID: dict[type[Exception], str] = {
    httpx.ReadTimeout: "ReadTimeout: it kept silent past the call's timeout",
    httpx.WriteTimeout: "WriteTimeout: it took no more of the request within the call's timeout",
    httpx.ConnectTimeout: "ConnectTimeout: no connection within the call's timeout",
    httpx.PoolTimeout: "PoolTimeout: no connection free within the call's timeout",
}


class Client(_Calls):
    """Synchronous client."""

    def _open(self, timeout: float) -> None:
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def after_an_interrupt(self) -> None:
        """A new connection pool for the calls and the close() after an interrupt (Ctrl-C, SIGTERM), the old one
        left unclosed: raised inside httpx, an interrupt may leave its pool's lock taken, and a call or close()
        through it waited for ever (a CI run's `submit`, stopped by SIGTERM, hung 300 s)."""
        self._http = httpx.Client(base_url=self.base_url, timeout=self._http.timeout)

    @contextlib.contextmanager
    def timeout_of(self, seconds: float) -> Iterator[None]:
        """Within it, each call waits `seconds` at most (not the client's `timeout`)."""
        before, self._http.timeout = self._http.timeout, httpx.Timeout(seconds)
        try:
            yield
        finally:
            self._http.timeout = before

    def _send(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                headers=call.headers,
                timeout=call.timeout or httpx.USE_CLIENT_DEFAULT,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, self.base_url) from None
        return call.parse(response)

    def prefetch(
        self,
        urls: Sequence[str],
        *,
        refresh: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit one call (at most the per-call limit of URLs); return the task id."""
        return str(self._send(self._prefetch(urls, refresh, callback_url, idempotency_key)))

    def refresh(
        self,
        entries: Sequence[str],
        *,
        directories: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Purge files (or directories ending with '/'); return the task id."""
        return str(self._send(self._refresh(entries, directories, callback_url, idempotency_key)))

    def query(self, taskid: str, *, refresh: bool = False) -> dict[str, Any]:
        """JD's answer `data`: {"taskid", "status", "msg"}."""
        return dict(self._send(self._query(taskid, refresh)))

    def task(self, taskid: str, *, offset: int = 0, limit: int = 1000, state: str | None = None) -> dict[str, Any]:
        """The native view: counts (also per node), progress, timestamps and items (those in `state`, if given:
        "failed", say)."""
        return dict(self._send(self._task(taskid, offset, limit, state)))

    def tasks(self, **filters: Any) -> dict[str, Any]:
        """List tasks: status, kind, since, until (ISO 8601 or epoch), url (keyword), limit, and after (the
        answer's `next`: the page after it, stable while tasks come and go) or offset."""
        return dict(self._send(self._tasks(filters)))

    def lookup(self, taskids: Sequence[str]) -> dict[str, Any]:
        return dict(self._send(self._lookup(taskids)))

    def cancel(self, taskid: str) -> dict[str, Any]:
        return dict(self._send(self._cancel(taskid)))

    def quota(self) -> dict[str, Any]:
        return dict(self._send(self._quota()))

    def wait(self, taskid: str, *, timeout: float = 600.0) -> dict[str, Any]:
        """Long-poll until the task has ended; return its native view (without items)."""
        deadline = time.monotonic() + _waited(timeout)
        while True:
            left, began = max(0.0, deadline - time.monotonic()), time.monotonic()
            asked = min(30.0, left)
            view = dict(self._send(self._wait_once(taskid, asked, left)))
            if view["status"] != 1:
                return view
            if time.monotonic() >= deadline:
                raise ClientError(JdCode.FAILURE, f"task {taskid} still in progress after {timeout}s")
            time.sleep(_pause_after(view, asked, time.monotonic() - began, deadline - time.monotonic()))


IN_FLIGHT = 100  # an AsyncClient's calls in flight at once (its connections); more wait their turn


class AsyncClient(_Calls):
    """Asynchronous client, the same methods as `Client`, awaited."""

    def _open(self, timeout: float) -> None:
        limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)
        self._room: asyncio.Semaphore | None = None  # made in the loop of the first call

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        # Calls past IN_FLIGHT wait their turn here, outside httpx: in its pool each waiting request made every
        # other's turn dearer (a tester's 3,000 calls of one client: most failed "PoolTimeout" while the server
        # idled), and that wait counted against each call's timeout.
        if self._room is None:
            self._room = asyncio.Semaphore(IN_FLIGHT)
        async with self._room:
            return await self._sent(call)

    async def _sent(self, call: _Call) -> Any:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                headers=call.headers,
                timeout=call.timeout or httpx.USE_CLIENT_DEFAULT,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _transport_error(exc, self.base_url) from None
        return call.parse(response)

    async def prefetch(
        self,
        urls: Sequence[str],
        *,
        refresh: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        return str(await self._send(self._prefetch(urls, refresh, callback_url, idempotency_key)))

    async def refresh(
        self,
        entries: Sequence[str],
        *,
        directories: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        return str(await self._send(self._refresh(entries, directories, callback_url, idempotency_key)))

    async def query(self, taskid: str, *, refresh: bool = False) -> dict[str, Any]:
        return dict(await self._send(self._query(taskid, refresh)))

    async def task(
        self, taskid: str, *, offset: int = 0, limit: int = 1000, state: str | None = None
    ) -> dict[str, Any]:
        return dict(await self._send(self._task(taskid, offset, limit, state)))

    async def tasks(self, **filters: Any) -> dict[str, Any]:
        return dict(await self._send(self._tasks(filters)))

    async def lookup(self, taskids: Sequence[str]) -> dict[str, Any]:
        return dict(await self._send(self._lookup(taskids)))

    async def cancel(self, taskid: str) -> dict[str, Any]:
        return dict(await self._send(self._cancel(taskid)))

    async def quota(self) -> dict[str, Any]:
        return dict(await self._send(self._quota()))

    async def wait(self, taskid: str, *, timeout: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + _waited(timeout)
        while True:
            left, began = max(0.0, deadline - time.monotonic()), time.monotonic()
            asked = min(30.0, left)
            view = dict(await self._send(self._wait_once(taskid, asked, left)))
            if view["status"] != 1:
                return view
            if time.monotonic() >= deadline:
                raise ClientError(JdCode.FAILURE, f"task {taskid} still in progress after {timeout}s")
            await asyncio.sleep(_pause_after(view, asked, time.monotonic() - began, deadline - time.monotonic()))
