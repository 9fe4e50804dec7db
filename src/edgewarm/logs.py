"""Structured logs: one JSON object per line, with `task_id` and `node` where a record carries them.

Nothing that logs here is given a secret: request bodies, signatures and store passwords are never passed
to a logger (store URLs go through `store.redacted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import orjson

from .errors import described
from .models import CANCELLED, Canceller, Task

# Fields a record may carry (`extra=`) that are written as JSON fields of their own.
_FIELDS = (
    "task_id",
    "item_id",
    "node",
    "url",
    "worker",
    "user",
    "kind",
    "urls",
    "dirs",
    "items",
    "status",
    "succeeded",
    "failed",
    "seconds",
    "cancelled_by",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# What may differ between failures alike: quoted names and numbers (PostgreSQL's full disk names the file it
# could not extend, a different one each time).
_ALIKE = re.compile(r"\"[^\"]*\"|'[^']*'|\d+")
CALLERS_SHOWN = 3  # a RefusalDigest's line names this many addresses the calls came from
CALLERS_KEPT = 1_000  # and counts this many at most between its lines
REPEAT_LOG_SECONDS = 60.0  # a step failing the same way again and again is logged this often (RepeatedFailure)


class RepeatedFailure:
    """The log of a step done over and over (a claim at every poll): a failure is logged at once, then while
    the step goes on failing the same way, once every `every` seconds with how many failures went unlogged
    meanwhile; a failure of another kind at once; and a line when the step works again."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        every: float = REPEAT_LOG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._what, self._every, self._clock = log, what, every, clock
        self._since: float | None = None  # when the step began failing
        self._last = 0.0  # when it last failed
        self._failures = 0  # since it began failing
        self._logged: tuple[float, str] | None = None  # when the last failure was logged, and what it said
        self._unlogged = 0

    def failed(self, reason: BaseException | str) -> None:
        now, said = self._clock(), str(reason)
        alike = _ALIKE.sub("…", said)
        self._last = now
        self._failures += 1
        if self._since is None:
            self._since = now
        elif self._logged is not None and self._logged[1] == alike and now - self._logged[0] < self._every:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more failures alike not logged)" if self._unlogged else ""
        self._log.error("%s failed: %s%s", self._what, said, more)
        self._logged, self._unlogged = (now, alike), 0

    def worked(self) -> None:
        if self._since is None:
            return
        more = f" ({self._unlogged} more failures alike not logged)" if self._unlogged else ""
        # The failures' span, not the time to this call: a step asked again only when work comes (an API call)
        # would count the quiet after an outage as part of it.
        ago = self._clock() - self._last
        if self._failures == 1:  # not "0.0 s of failures" (a tester read that as no outage at all)
            said = "1 failure" + (f", {ago:.1f} s ago" if ago >= 0.1 else "")
        else:
            span = self._last - self._since
            said = f"{self._failures} failures over {span:.1f} s" + (
                f", the last {ago:.1f} s ago" if ago >= 0.1 else ""
            )
        self._log.info("%s works again, after %s%s", self._what, said, more)
        self._since, self._logged, self._unlogged, self._failures = None, None, 0, 0


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` of `noun`, as a line says it: "1 item", "2 items"; `plural` where "s" does not make it ("1 webhook
    delivery", "2 webhook deliveries")."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def item_count(count: int) -> str:
    """`count` items, as a line says it: "1 item", "2 items"."""
    return counted(count, "item")


class RefusalDigest:
    """Calls refused (`what`: for their credentials, say), logged as a warning a minute at most: the first at
    once, then the ones refused since, counted by reason, when the minute has passed (a flood of bad signatures
    is one line a minute, not one per call; the metric counts every one), and the addresses they came from
    (CALLERS_SHOWN of them, and how many more). Those not written yet are written at a stop (`flush`): else a
    burst's refusals after its first were told nowhere (the metric restarts with the process). `say` writes a
    reason's count (default: "3 wrong_signature"); the node clients count a node's failed requests so too, the
    node a field of the line (`fields`)."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        every: float = REPEAT_LOG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[int, str], str] = lambda count, reason: f"{count} {reason}",
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self._log, self._what, self._every, self._clock, self._say = log, what, every, clock, say
        self._fields = dict(fields or {})  # the line's own fields (its node, say: README, Logs)
        self._last: float | None = None  # when a line was last written
        self._counts: dict[str, int] = {}  # reason -> refusals not written yet
        self._callers: dict[str, None] = {}  # their addresses, in the order first seen (CALLERS_KEPT at most)
        self._due: asyncio.TimerHandle | None = None  # the line of those held, when their minute has passed

    def refused(self, reason: str, caller: str | None = None) -> None:
        """A refusal for `reason`, of a call from address `caller` (None: not known)."""
        self._counts[reason] = self._counts.get(reason, 0) + 1
        if caller is not None and len(self._callers) < CALLERS_KEPT:
            self._callers[_address(caller)] = None
        now = self._clock()
        if self._last is not None and now - self._last < self._every:
            if self._due is None:
                with contextlib.suppress(RuntimeError):  # no event loop (a script): told with a later refusal
                    self._due = asyncio.get_running_loop().call_later(self._last + self._every - now, self.flush)
            return
        self._write(now)

    def flush(self) -> None:
        """Write the refusals held (none: nothing): when their minute has passed, and at a stop."""
        if self._counts:
            self._write(self._clock())

    def _write(self, now: float) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        told = "; ".join(self._say(count, reason) for reason, count in sorted(self._counts.items()))
        if self._callers:
            told += f"; from {_addresses(list(self._callers))}"
        self._log.warning("%s%s: %s", self._what, since, told, extra=self._fields)
        self._last, self._counts, self._callers = now, {}, {}


def _address(caller: str) -> str:
    """An address as a log line shows it: what a trusted proxy's X-Forwarded-For said may be anything (a
    re-tester's 7,000 characters, tabs, Latin-1): printable ASCII, 64 characters at most (an IPv6 address has
    45)."""
    shown = "".join(c if c.isascii() and c.isprintable() and c != " " else "?" for c in caller[:65])
    return shown if len(shown) <= 64 else shown[:63] + "…"


def _addresses(callers: list[str]) -> str:
    """The first CALLERS_SHOWN of these addresses, and how many more (at least, when CALLERS_KEPT were kept)."""
    shown = ", ".join(callers[:CALLERS_SHOWN])
    more = len(callers) - CALLERS_SHOWN
    if more <= 0:
        return shown
    return f"{shown} and {'at least ' if len(callers) == CALLERS_KEPT else ''}{more} more"


def log_task_ended(log: logging.Logger, task: Task) -> None:
    """The one line of a task's end (by its last outcome, or a cancel), its figures also as fields; a task
    cancelled says so and by whom (its user's name, or "operator"), whether it ended at the cancel or when its
    items under way came back."""
    assert task.seconds is not None
    seconds = round(task.seconds, 3)
    fields = {
        "task_id": task.id,
        "user": task.username,
        "kind": task.kind.value,
        "status": int(task.status),
        "succeeded": task.succeeded,
        "failed": task.failed,
        "seconds": seconds,
    }
    message = "task ended: status %d (%d succeeded, %d failed) in %.3f s"
    if task.reason != CANCELLED:
        log.info(message, task.status, task.succeeded, task.failed, seconds, extra=fields)
    else:
        by = fields["cancelled_by"] = cancelled_by(task)
        log.info(message + ", cancelled by %s", task.status, task.succeeded, task.failed, seconds, by, extra=fields)


def cancelled_by(task: Task) -> str:
    """Who cancelled `task`, for a log line: its user's name, or "operator"."""
    return str(Canceller.OPERATOR) if task.cancelled_by is Canceller.OPERATOR else task.username


class WithoutTraceback(logging.Filter):
    """A library's warning of a failure it retries by itself (asyncpg's pool restoring its connections while
    the database is down, every 1 to 60 s): one line naming the error, not a traceback at each retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and record.levelno < logging.ERROR:
            record.msg, record.args = f"{record.getMessage()}: {described(record.exc_info[1])}", ()
            record.exc_info = record.exc_text = None
        return True


# Libraries whose warnings come with a traceback of a failure they retry themselves.
RETRYING_LOGGERS = ("asyncpg.pool",)


class Digested(logging.Filter):
    """A library's warning of each bad request it answers itself (uvicorn's "Invalid HTTP request received.",
    a 400, before edgewarm sees the request: a scanner's junk made a line each), counted into `digest` instead:
    a line a minute at most, as the refusals of edgewarm's own."""

    def __init__(self, message: str, reason: str, digest: RefusalDigest | None) -> None:
        super().__init__()
        self.message, self.reason, self.digest = message, reason, digest

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self.message)):
            return True
        if self.digest is not None:  # None: a second line of the same request's, counted by the first
            self.digest.refused(self.reason)
        return False


# Requests uvicorn refuses as not HTTP, before the app sees them: told by this digest (flushed at a stop).
NOT_HTTP = RefusalDigest(logging.getLogger("edgewarm.api"), "requests answered 400 as not HTTP")
# An `Upgrade` (WebSocket, h2c) is answered as a plain request; uvicorn warned twice a request, advising to
# install a WebSocket library edgewarm has no use for (a tester's 500 requests: 1,000 lines in 0.1 s).
UPGRADES = RefusalDigest(logging.getLogger("edgewarm.api"), "upgrade requests answered as plain HTTP")
_DIGESTED = (
    ("uvicorn.error", Digested("Invalid HTTP request received.", "invalid_request", NOT_HTTP)),
    ("uvicorn.error", Digested("Unsupported upgrade request.", "upgrade", UPGRADES)),
    ("uvicorn.error", Digested("No supported WebSocket library detected.", "upgrade", None)),
)
# Requests cut before the app read them (a head too large, one not whole in time: api/protocol.py): a line a
# minute at most (before: a line each, 118 KB of log a second from one client's loop of large heads).
UNREAD = RefusalDigest(logging.getLogger("edgewarm.api"), "requests refused unread")
HTTP_DIGESTS = (NOT_HTTP, UNREAD, UPGRADES)  # the server's own refusals: written at a stop


class TextFormatter(logging.Formatter):
    """For humans: time, level, logger, message, then the record's fields (`task_id=…`) the JSON lines carry."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"{name}={record.__dict__[name]}" for name in _FIELDS if record.__dict__.get(name) is not None]
        line = super().format(record)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the line that has the fields
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


_SETUP: list[tuple[str, str]] = []  # this process's setup_logging (level, format), for a child to log alike


def logging_setup() -> tuple[str, str] | None:
    """The (level, format) this process's log was set up with (None: not set up: a script, a test)."""
    return _SETUP[-1] if _SETUP else None


def setup_logging(level: str, fmt: str = "json") -> None:
    _SETUP[:] = [(level, fmt)]
    for name in RETRYING_LOGGERS:
        retrying = logging.getLogger(name)
        if not any(isinstance(f, WithoutTraceback) for f in retrying.filters):
            retrying.addFilter(WithoutTraceback())
    for name, digested in _DIGESTED:
        library = logging.getLogger(name)
        if digested not in library.filters:
            library.addFilter(digested)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
