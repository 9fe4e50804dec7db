"""Webhooks: when a task that carries a callback URL ends, POST its summary there, signed.

The signature is `X-Edgewarm-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the user's
webhook_secret, else their API secret>`; receivers check it with `verify_webhook`. The body's `sent_at` (the
POST's time, signed with the rest) lets them refuse an old one replayed (`max_age`). Only hosts listed in
`[webhooks] allowed_hosts` may be called back, checked when the task is submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import random
import re
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import aiohttp
import orjson
import yarl

from . import __version__
from .config import CaFiles, ca_files
from .errors import JdCode, RequestRefused, StoreError
from .logs import RepeatedFailure, counted
from .models import Task
from .retention import first_of
from .store import redacted
from .store.base import DUE_SLACK_SECONDS
from .urls import has_user_info, is_plain, masked_query
from .views import iso, task_summary

if TYPE_CHECKING:
    from .config import Config
    from .config import Webhooks as WebhookSettings
    from .metrics import Metrics
    from .store import TaskStore

log = logging.getLogger("edgewarm.webhooks")

SIGNATURE_HEADER = "X-Edgewarm-Signature"
USER_AGENT = f"edgewarm/{__version__} (webhook)"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CLAIM_AT_STOP_SECONDS = 1.0  # a claim under way when a stop comes is waited for this much longer (_claim)
MAX_DELIVERIES = 100  # webhooks being delivered at once by one process; each one's lease is 3 x the timeout
# Of those, to one receiver (host:port), and of one user's: one that hangs holds 10 and leaves the others to
# the others (testers' findings: 100 webhooks to one hanging receiver held every user's back a whole [webhooks]
# timeout; so did 10 receivers that hang on 10 ports of one host, one user's).
PER_RECEIVER = 10
PER_USER = 20
# Claimed webhooks that wait in the process for room (their receiver's or their user's): at most this many of
# one user to one receiver, and in all; the others are put off by a timeout (a slot frees by then), so that the
# claims reach past them to the others' (a tester's 1,100 waiting held the claims back a timeout).
HELD_PER_QUEUE = 100
MAX_HELD = 1000
RETRY_DELAY_MAX = 86_400.0  # seconds: the longest wait before a delivery is tried again


def shown_callback_url(url: str, *, accepted: bool = True) -> str:
    """A callback URL fit to show (the native view, logs, a delivery's error): a task's (`accepted`) as the
    webhook client reads it, its host the one posted to; query values and fragment as `***`, since a receiver may
    take its token there. One refused, or with user information, has it masked as `store.redacted` hides it (read
    up to the last `@`: a password with an unencoded '/', '?' or '#' too), which for an accepted
    `http://127.0.0.1:8080#@evil.test/` named a host never called ("http://127.0.0.1:***@evil.test/", a security
    tester's)."""
    parts = urlsplit(url)
    if not accepted or "@" in parts.netloc:
        parts = urlsplit(redacted(url))
    return urlunsplit(parts._replace(query=masked_query(parts.query), fragment="***" if parts.fragment else ""))


def sign_webhook(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_webhook(
    body: bytes, secret: str, header: str | None, *, max_age: float | None = None, now: float | None = None
) -> bool:
    """For receivers: True when `header` is the signature of `body` with `secret` and, with `max_age`, the body's
    `sent_at` is at most `max_age` seconds from `now` (default: this machine's clock), either way: a POST
    captured and sent again later is refused once it is that old."""
    # compare_digest raises TypeError on a str with non-ASCII characters: a forged header is False, not a 500
    # at the receiver (tester's finding).
    # None: the receiver's `headers.get(SIGNATURE_HEADER)` of a POST without one (it raised AttributeError).
    if not isinstance(header, str) or not header.isascii():
        return False
    if not hmac.compare_digest(sign_webhook(body, secret), header.strip()):
        return False
    if max_age is None:
        return True
    try:
        sent = datetime.fromisoformat(orjson.loads(body)["sent_at"]).timestamp()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return False
    return abs((time.time() if now is None else now) - sent) <= max_age


MAX_CALLBACK_URL = 2048
ANSWER_READ_BYTES = 64 * 1024  # of a receiver's answer body: read so far at most, the rest left unread


def check_callback_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """The callback URL if its host is allowed, else a refusal (JD code 17, an illegal URL)."""
    if len(url) > MAX_CALLBACK_URL:
        raise RequestRefused(JdCode.ILLEGAL_URL, f"callback_url is longer than {MAX_CALLBACK_URL} characters")
    # A password or a token in it is not said back (a proxy may log answers): shown masked, or not at all.
    try:
        shown = repr(shown_callback_url(url, accepted=False))
    except ValueError:
        shown = "(not shown)"
    if not is_plain(url):
        raise RequestRefused(
            JdCode.ILLEGAL_URL,
            f"callback_url {shown}: spaces, control and non-ASCII characters must be percent-encoded",
        )
    try:
        parts = urlsplit(url)
        host = callback_host(url)
        port = parts.port
    except ValueError:
        raise RequestRefused(JdCode.ILLEGAL_URL, f"callback_url {shown} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise RequestRefused(JdCode.ILLEGAL_URL, f"callback_url {shown} must be an http or https URL")
    if has_user_info(parts):
        raise RequestRefused(
            JdCode.ILLEGAL_URL,
            f"callback_url {shown} must not carry a user name or password (give the receiver a token in the "
            "query instead: the signature tells it the POST is edgewarm's)",
        )
    if not host or port == 0:
        raise RequestRefused(JdCode.ILLEGAL_URL, f"callback_url {shown} has no host or port to call")
    # Tester's finding: `http://[::1]./x`, `http://\\[::1]/x` and `http://[::1]%2e/x` passed urlsplit but not
    # the delivery client's parse (yarl): each stayed pending for ever. The host allowed is the one posted to.
    try:
        posted_to = delivery_host(url)
    except ValueError:
        raise RequestRefused(
            JdCode.ILLEGAL_URL, f"callback_url {shown} is not a URL the webhook client can call"
        ) from None
    if host_key(posted_to) != host_key(host):
        raise RequestRefused(
            JdCode.ILLEGAL_URL,
            f"callback_url {shown}: its host reads as {posted_to!r} to the webhook client, not {host!r}",
        )
    if not is_allowed(host, allowed_hosts):
        raise RequestRefused(
            JdCode.ILLEGAL_URL, f"callback_url host {host!r} is not allowed ([webhooks] allowed_hosts in the config)"
        )
    return url


def callback_host(url: str) -> str:
    """The host of a callback URL, as [webhooks] allowed_hosts lists it (lower case, no port)."""
    return (urlsplit(url).hostname or "").lower()


def host_key(host: str) -> str:
    """A host as compared: an IP address in its one written form (`::1` for `0:0:0:0:0:0:0:1`), a name in lower
    case without the one trailing dot of its fully qualified form (an address with a dot is no name: as written,
    `127.0.0.1.`, which the webhook client cannot call, matches nothing allowed, a re-tester's)."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        name = host.lower().removesuffix(".")
        return host if _is_address(name) else name


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_allowed(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether [webhooks] allowed_hosts lists `host`, compared as `host_key` writes hosts (tester's finding:
    `[0:0:0:0:0:0:0:1]` was refused with `::1` listed; a listed `hooks.example.test.` matched only callbacks
    spelled with its dot)."""
    return host_key(host) in {host_key(allowed) for allowed in allowed_hosts}


def delivery_host(url: str) -> str:
    """The host the delivery client (aiohttp, by yarl's parse) posts a callback URL to, as `callback_host`
    writes hosts; ValueError when it cannot parse the URL."""
    return (yarl.URL(url).host or "").lower()


def receiver_of(url: str | None) -> str:
    """Who a callback URL posts to, as deliveries are counted per receiver: `host:port` (the default port
    written), or "" for a URL the webhook client cannot parse (its delivery fails at once)."""
    try:
        parsed = yarl.URL(url or "")
        return f"{host_key(parsed.host or '')}:{parsed.port}"
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class _Held:
    """A claimed webhook whose receiver (or user) has no room: started when it has, if that is by `start_by`
    (monotonic; after it, the POST could outlast the lease: handed back, due at once)."""

    task: Task
    start_by: float


_Queue = tuple[str, str]  # the held webhooks of one user to one receiver


def _lease(task: Task) -> tuple[str, float] | None:
    """A claimed webhook's lease as the store hands it back: (task id, the lease's end its claim set)."""
    return None if task.webhook_due_at is None else (task.id, task.webhook_due_at)


def _without_the_url(text: str, url: str) -> str:
    """An error's text with the callback URL (as given, or as aiohttp writes it) in its shown form, and its
    query's values as `***` wherever else they appear (tester's finding: a server echoing the request line put
    `token=LEAKME` into the error and the log)."""
    shown = shown_callback_url(url)
    written = {url}
    with contextlib.suppress(ValueError):  # a URL yarl cannot parse (one queued before check_callback_url's rule)
        written.add(str(yarl.URL(url)))
    for spelling in written:
        text = text.replace(spelling, shown)
    for secret, masked in _query_values(url):
        text = text.replace(secret, masked)
    # And any query in the text, in whatever spelling the client or the receiver gave it (a re-tester's: aiohttp
    # sends `%c3%a9` as `%C3%A9`, `%ZZ` as `%25ZZ`, and a receiver echoed those).
    return _ANY_QUERY.sub(_masked_query, text)


_ANY_QUERY = re.compile(r"\?[^\s'\"<>]+")  # a `?` and what follows it up to a space, a quote or a bracket


def _masked_query(found: re.Match[str]) -> str:
    """A query found in an error's text: kept when its values are masked already (the URL's shown form), else
    `?***`."""
    query = found.group()
    if all(pair.partition("=")[2] == "***" for pair in query[1:].split("&")):
        return query
    return "?***"


MIN_MASKED = 3  # a query value shorter than this is masked in an error only after its `name=`: "1" is everywhere


def _query_values(url: str) -> list[tuple[str, str]]:
    """What to mask of a URL's query in a text, and with what: each value (or bare word) as written and
    decoded, longest first; a short one only after its `name=`."""
    query = urlsplit(url).query if "?" in url else ""
    masks: dict[str, str] = {}
    for pair in query.split("&") if query else ():
        name, sep, value = pair.partition("=")
        secret = value if sep else name
        for form in {secret, unquote_plus(secret)}:
            if len(form) >= MIN_MASKED:
                masks[form] = "***"
            elif form and sep:
                masks[f"{name}={form}"] = f"{name}=***"
    return sorted(masks.items(), key=lambda mask: len(mask[0]), reverse=True)


MAX_ERROR = 200  # characters of a delivery's error kept on the task and logged
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]+")


def _bounded(text: str) -> str:
    """An error's text as kept and logged: printable ASCII on one line, at most MAX_ERROR characters (tester's
    finding: a non-HTTP server's banner, 438 characters of it, was kept whole)."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


_QUOTED = re.compile(r"""\s*(?:bytearray\()?b['"]""")  # where aiohttp's quote of the bytes begins (a long line's
# is a bytearray's: "Got more than 8190 bytes when reading: bytearray(b'…')", a re-tester's)


def _malformed(message: str) -> str:
    """What aiohttp said of an answer whose head did not parse, without the excerpt of it that aiohttp quotes
    (`b'…'`: a receiver on an allowed host is not a tenant's to read through its tasks' errors, a security
    tester's internal tokens in a status line and a header): "Bad status line: Invalid status code". A server
    that is no HTTP one (an SSH banner, an echo of the request) is told as such."""
    if "Expected HTTP/" in message:
        return "not an HTTP answer"
    said = " ".join(line.strip() for line in message.split("\n\n", 1)[0].split("\n"))
    said = _QUOTED.split(said, 1)[0].strip(" :")
    return "malformed answer from the receiver: " + (said or "its head did not parse")


def _retry_delay(settings: WebhookSettings, attempts: int) -> float:
    """The longest wait before the next delivery after `attempts` failed ones (each waits from half of it), a day
    at most (a tester's: 20 attempts of the default base waited 6 days before the last, the task kept meanwhile)."""
    return min(float(settings.backoff_base * 2 ** (attempts - 1)), RETRY_DELAY_MAX)


def _lease_seconds(settings: WebhookSettings) -> float:
    """How long a claimed delivery is kept off other deliverers: its timeout, with room to record it."""
    return settings.timeout * 3


class WebhookDeliverer:
    """Delivers the webhooks of ended tasks: claims due ones from the store, POSTs, records each attempt.

    Runs in every engine process; the store's lease on a claimed delivery keeps other processes off it.
    """

    def __init__(self, config: Config, store: TaskStore, metrics: Metrics, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._wake = asyncio.Event()
        # task id -> its delivery, and the task as claimed (its lease's end: a stop hands it back)
        self._running: dict[str, tuple[asyncio.Task[None], Task]] = {}
        self._per_receiver: Counter[str] = Counter()  # receiver -> its deliveries running
        self._per_user: Counter[str] = Counter()  # user -> its deliveries running
        self._held: dict[_Queue, deque[_Held]] = {}  # (user, receiver) -> webhooks claimed, waiting for room
        self._held_ids: set[str] = set()
        self._due_now: list[tuple[str, float]] = []  # leases to hand back due at once (held too long)
        self._tls: tuple[CaFiles, ssl.SSLContext] | None = None  # the CA files' state, and a context made of them
        self._put_off: list[tuple[str, float]] = []  # and due a timeout later (no room to hold them)

    def wake(self) -> None:
        self._wake.set()

    async def bring_forward(self) -> None:
        """Deliveries due later than any retry or lease of theirs reaches are due now (a wall clock stepped back
        put them so: they would wait for it to catch up)."""
        s = self.config.webhooks
        now = self._clock()
        beyond = now + max(_retry_delay(s, s.max_attempts), _lease_seconds(s)) + DUE_SLACK_SECONDS
        try:
            brought = await self.store.bring_webhooks_forward(now, beyond)
        except StoreError as exc:
            log.error("bringing forward webhooks left due in the future: %s", exc)
            return
        if brought:
            log.warning(
                "%s due more than %.0f s ahead (a clock stepped back): due now",
                counted(brought, "webhook was", "webhooks were"),
                beyond - now,
            )
            self.wake()

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping`: each delivery on its own, at most MAX_DELIVERIES at once and PER_RECEIVER to one
        receiver (one that hangs holds up no other), with the settings of the latest reload."""
        claims_log = RepeatedFailure(log, "claiming webhooks")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            try:
                while not stopping.is_set():
                    self._wake.clear()
                    self._start_held(session)
                    await self._hand_back()
                    room, due = MAX_DELIVERIES - len(self._running), []
                    if room > 0 and not stopping.is_set():  # none once stopping: its wait made the stop longer
                        try:
                            due = await self._claim(room, stopping)
                            claims_log.worked()
                        except StoreError as exc:
                            claims_log.failed(exc)
                    # A POST begun by then ends (its timeout) before its lease does (3 x the timeout).
                    start_by = time.monotonic() + 1.5 * self.config.webhooks.timeout
                    for task in due:
                        self._take(session, task, start_by)
                    if len(due) == room > 0:
                        continue  # there may be more due now
                    await first_of(1.0, self._wake, stopping)  # a stop ends the loop at once, not after the second
            finally:
                await self._finish_or_cut_short()

    async def _claim(self, room: int, stopping: asyncio.Event) -> list[Task]:
        """Claim up to `room` due webhooks. A stop meanwhile waits CLAIM_AT_STOP_SECONDS more for the claim, then
        gives it up: not yet begun (queued behind a write that waits for a lock: a tester's stop waited 10 s
        more for it), it is never made; begun, its webhooks are sent once their leases end."""
        claim = asyncio.ensure_future(
            self.store.claim_due_webhooks(self._clock(), room, _lease_seconds(self.config.webhooks))
        )
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait([claim, stop], return_when=asyncio.FIRST_COMPLETED)
            if not claim.done():
                await asyncio.wait([claim], timeout=CLAIM_AT_STOP_SECONDS)
            if not claim.done():
                claim.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await claim
                return []
            return claim.result()
        finally:
            stop.cancel()

    async def _finish_or_cut_short(self) -> None:
        """At a stop, the deliveries under way get `[engine] grace_seconds`, as other work in flight, then are
        cancelled (tester's finding: a stop waited for `[webhooks] timeout`, 39 s with a hanging receiver).
        Those cut short record nothing; they and those held, never started, are handed back: due at once for the
        next start or another process (else each waited for its lease to end: 3 x [webhooks] timeout)."""
        unsent = [held.task for waiting in self._held.values() for held in waiting]
        self._held.clear()
        self._held_ids.clear()
        running = list(self._running.values())  # (a delivery that ends leaves _running)
        if running:
            deliveries = [delivery for delivery, _ in running]
            _, late = await asyncio.wait(deliveries, timeout=self.config.engine.grace_seconds)
            for delivery in late:
                delivery.cancel()
            await asyncio.gather(*deliveries, return_exceptions=True)
            cut = [task for delivery, task in running if delivery in late]
            if cut:
                log.warning(
                    "stopping: %s cut short after grace_seconds",
                    counted(len(cut), "webhook delivery", "webhook deliveries"),
                )
            unsent.extend(cut)
        self._due_now.extend(lease for task in unsent if (lease := _lease(task)) is not None)
        self._due_now.extend(self._put_off)  # for the next start: this process is not there a timeout later
        self._put_off.clear()
        await self._hand_back()

    async def _hand_back(self) -> None:
        """Hand back to the store the claimed webhooks this process will not send now: those held too long, due at
        once, and those it had no room to hold, due a timeout later."""
        for leases, later in ((self._due_now, 0.0), (self._put_off, self.config.webhooks.timeout)):
            if not leases:
                continue
            try:
                released = await self.store.release_webhooks(leases, self._clock() + later)
            except StoreError as exc:
                log.error(
                    "handing back %s failed (sent once their leases end): %s", counted(len(leases), "webhook"), exc
                )
            else:
                if not later:
                    log.info("handed back %s not sent: due at once", counted(released, "webhook"))
            leases.clear()

    def _take(self, session: aiohttp.ClientSession, task: Task, start_by: float) -> None:
        """A webhook just claimed: started; or held while its receiver or its user has no room; or put off when
        the webhooks held are too many."""
        queue = (task.username, receiver_of(task.callback_url))
        if task.id in self._running or task.id in self._held_ids:
            return  # its lease ran out under way (a clock stepped forward): one POST
        if self._has_room(queue):
            self._start(session, task, queue)
        elif len(self._held_ids) < MAX_HELD and len(self._held.get(queue, ())) < HELD_PER_QUEUE:
            self._held.setdefault(queue, deque()).append(_Held(task, start_by))
            self._held_ids.add(task.id)
        elif (lease := _lease(task)) is not None:
            self._put_off.append(lease)

    def _has_room(self, queue: _Queue) -> bool:
        user, receiver = queue
        return self._per_receiver[receiver] < PER_RECEIVER and self._per_user[user] < PER_USER

    def _start_held(self, session: aiohttp.ClientSession) -> None:
        """Start the held webhooks that have room again; hand back, due at once, those held too long."""
        now = time.monotonic()
        for queue, waiting in list(self._held.items()):
            while waiting and (waiting[0].start_by < now or self._has_room(queue)):
                held = waiting.popleft()
                self._held_ids.discard(held.task.id)
                if held.start_by >= now:
                    self._start(session, held.task, queue)
                elif (lease := _lease(held.task)) is not None:
                    self._due_now.append(lease)
            if not waiting:
                del self._held[queue]

    def _start(self, session: aiohttp.ClientSession, task: Task, queue: _Queue) -> None:
        delivery = asyncio.create_task(self._deliver(session, task), name=f"edgewarm-webhook-{task.id}")
        self._running[task.id] = (delivery, task)
        user, receiver = queue
        self._per_receiver[receiver] += 1
        self._per_user[user] += 1
        delivery.add_done_callback(functools.partial(self._ended, task.id, queue))

    def _ended(self, task_id: str, queue: _Queue, delivery: asyncio.Task[None]) -> None:
        """A delivery ended: room again (for the held ones first), and its failure, should one get out of
        `_deliver`, said in the log (not "Task exception was never retrieved" when it is collected)."""
        self._running.pop(task_id, None)
        for counts, key in ((self._per_receiver, queue[1]), (self._per_user, queue[0])):
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
        if not delivery.cancelled() and (exc := delivery.exception()) is not None:
            log.error("a webhook delivery failed: %s", type(exc).__name__, extra={"task_id": task_id})
        self._wake.set()

    async def _deliver(self, session: aiohttp.ClientSession, task: Task) -> None:
        """One attempt, recorded whatever happens in it: an error unforeseen is a failed attempt too (retried
        with backoff), never an exception that leaves the webhook pending, claimed again every lease, for ever
        (tester's finding: a URL aiohttp could not parse did that, its token in "Task exception was never
        retrieved")."""
        settings = self.config.webhooks
        try:
            error, given_up = await self._attempt(session, task)
        except Exception as exc:  # any error is this attempt's outcome: recorded below
            error, given_up = f"unexpected error: {type(exc).__name__}: {exc}", False
        if error is not None:
            error = _bounded(_without_the_url(error, task.callback_url or ""))
        attempts = task.webhook_attempts + 1
        retry_at = None
        if error is not None and not given_up and attempts < settings.max_attempts:
            delay = _retry_delay(settings, attempts)
            retry_at = self._clock() + random.uniform(delay / 2, delay)
        outcome = "delivered" if error is None else ("retried" if retry_at else "failed")
        self.metrics.webhooks.labels(outcome).inc()
        # A delivery given up is the receiver's to look at: a warning; one retried or delivered, information.
        level = logging.WARNING if outcome == "failed" else logging.INFO
        log.log(
            level,
            "webhook %s (attempt %d%s, to %s): %s",
            outcome,
            attempts,
            # Given up at once (its user gone, its host no longer allowed): "attempt 1" alone read as one of
            # several (an operator's, who added the user back and waited for it).
            ", not retried: no attempt can deliver it" if given_up and error is not None else "",
            shown_callback_url(task.callback_url or ""),
            error or "ok",
            extra={"task_id": task.id, "user": task.username, "attempt": attempts},
        )
        try:
            await self.store.record_webhook(
                task.id, delivered=error is None, error=error, retry_at=retry_at, now=self._clock()
            )
        except StoreError as exc:  # the lease runs out and the delivery is tried again
            log.error("recording a webhook failed: %s", exc, extra={"task_id": task.id})

    def _verified(self) -> ssl.SSLContext:
        """The TLS context of https receivers, made again once the CA files changed (SSL_CERT_FILE's: aiohttp's
        own, made at import, kept the start's CAs after a reload, a re-tester's)."""
        state = ca_files()
        if self._tls is None or self._tls[0] != state:
            self._tls = (state, ssl.create_default_context())
        return self._tls[1]

    async def _attempt(self, session: aiohttp.ClientSession, task: Task) -> tuple[str | None, bool]:
        """POST the task's summary once: the error (None when delivered) and whether it is given up (not to
        be retried)."""
        settings = self.config.webhooks
        user = self.config.user(task.username)
        if user is None or task.callback_url is None:
            return "the task's user is no longer configured", True
        try:
            host = delivery_host(task.callback_url)
        except ValueError:  # queued before check_callback_url refused such URLs: no retry can post it
            return "callback_url cannot be parsed by the webhook client", True
        if not is_allowed(host, settings.allowed_hosts):
            # Taken off the list (a reload) after the task was submitted: it is the guard against posting
            # where the operator does not want, so it holds for what was queued before too.
            return f"callback_url host {host!r} is no longer allowed ([webhooks] allowed_hosts in the config)", True
        summary = task_summary(task, self.config.api.language)
        body = orjson.dumps({**summary, "username": task.username, "sent_at": iso(self._clock())})
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign_webhook(body, user.webhook_key()),
        }
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        try:
            async with session.post(
                task.callback_url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                ssl=self._verified(),
            ) as answer:
                await answer.content.read(ANSWER_READ_BYTES)  # its body means nothing: a little, then closed
                if answer.status in REDIRECTS:
                    return f"HTTP {answer.status} (redirects are not followed: give the receiver's own URL)", False
                if not 200 <= answer.status < 300:
                    return f"HTTP {answer.status}", False
        except TimeoutError:
            return f"no answer within {settings.timeout:g} s ([webhooks] timeout)", False
        except aiohttp.ClientResponseError as exc:  # raised before an answer: its head did not parse (the
            # status is aiohttp's own, not the receiver's)
            return _malformed(exc.message), False
        except aiohttp.ClientSSLError as exc:  # the certificate's or the handshake's own words
            return f"{type(exc).__name__}: {exc}", False
        except aiohttp.ClientConnectorError as exc:  # said "… ssl:default [Connect call failed …]" for http too
            if isinstance(exc.os_error, socket.gaierror):  # os.strerror(-2) is "Unknown error -2" (a re-tester's)
                why = f"its name does not resolve ({exc.os_error.strerror or exc.os_error})"
            else:
                why = os.strerror(exc.os_error.errno) if exc.os_error.errno else str(exc.os_error)
            host = f"[{exc.host}]" if ":" in exc.host else exc.host  # (an IPv6 tester's `::1:80`)
            return f"cannot connect to the receiver {host}:{exc.port}: {why}", False
        except aiohttp.ServerDisconnectedError:
            return "the receiver closed the connection without an answer", False
        except aiohttp.ClientOSError as exc:  # "[Errno 104] Connection reset by peer", "[Errno None] Can not write…"
            why = os.strerror(exc.errno) if exc.errno else "it failed while the request was sent"
            return f"the connection to the receiver failed: {why}", False
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}", False
        return None, False
