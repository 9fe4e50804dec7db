"""What the API does, apart from HTTP: authenticate, check a submission, make a durable task, answer queries.

The order of the checks follows JD: missing fields, then the user and the signature, then the list itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from . import auth
from .config import Config, User
from .errors import CREDENTIAL_REFUSALS, JdCode, QuotaExceeded, RequestRefused, TaskNotFound, submission_refusal
from .logs import RefusalDigest, item_count
from .metrics import Metrics
from .models import (
    CANCELLED,
    Item,
    ItemAction,
    NewItem,
    NewTask,
    QuotaCharge,
    Task,
    TaskKind,
    TaskStatus,
    Tier,
    normalize_task_id,
)
from .store import TaskStore
from .urls import TargetUrl, find_duplicate, has_controls, parse_url, stored_target
from .views import STATUS_TEXT, task_summary
from .webhooks import check_callback_url

log = logging.getLogger("edgewarm.service")

MAX_IDEMPOTENCY_KEY = 200
# How many of a call's bad URLs (or foreign domains) a refusal names: a caller fixes them in one go, and a call of
# thousands of bad URLs is not told back whole.
NAMED_IN_A_REFUSAL = 5
_Entry = TypeVar("_Entry")
_Checked = TypeVar("_Checked")
# Long-polls one user may have open in one process; more answer at once with the task as it is. Each asks the store
# every half second: thousands, from clients that hung up or never read, slowed everyone's warms (a tester: a
# 2,000-URL task of another user took 21 s instead of 1-1.5 s behind 10,000 abandoned waits).
WAITS_PER_USER = 50


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """edgewarm's extensions to a JD submission."""

    idempotency_key: str | None = None  # a retried submission with the same key returns the first task
    callback_url: str | None = None  # POSTed the task summary when it ends


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    signature: str
    caller: str | None = None  # the address the call came from (a proxy's, unless it is trusted to say: README)
    repeated: str | None = None  # a credential header given more than once: which (refused, as a JD field twice is)
    # The username as given, when it had spaces around it (they are not read): its caller may have signed it so.
    signed_as: str | None = None

    @classmethod
    def as_sent(cls, username: str, signature: str, caller: str | None, repeated: str | None = None) -> Credentials:
        """A call's credentials from its fields as sent: spaces around them are not read, and a name sent with
        some is kept as `signed_as` (the JD routes' and the native routes' one rule)."""
        name = username.strip()
        return cls(name, signature.strip(), caller, repeated, username if username != name else None)


class Service:
    def __init__(
        self,
        config: Config,
        store: TaskStore,
        *,
        clock: Callable[[], float] = time.time,
        on_submit: Callable[[], None] | None = None,
        on_cancel: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._on_submit = on_submit
        self._on_cancel = on_cancel  # this process's engine, told at once (others learn it from the store)
        self._stopping = stopping or asyncio.Event()  # set when the process stops: long polls answer at once
        self.waits_open: dict[str, int] = {}  # long-polls open, by user
        self.starting: str | None = None  # why this process is not ready yet, for /readyz (its engine's start)
        self._refusals = RefusalDigest(log, "calls refused for their credentials")
        self._submissions_refused = RefusalDigest(log, "submissions refused")

    def flush_logs(self) -> None:
        """Write the refusals counted and not logged yet (at a stop: RefusalDigest)."""
        self._refusals.flush()
        self._submissions_refused.flush()

    def status_text(self, status: TaskStatus) -> str:
        return STATUS_TEXT[self.config.api.language][status]

    def summary(self, task: Task) -> dict[str, object]:
        return task_summary(task, self.config.api.language)

    def today(self) -> str:
        now = datetime.fromtimestamp(self._clock(), UTC)
        return f"{auth.today(now, self.config.api.timezone):%Y%m%d}"

    def _quota_renews(self) -> str:
        """When the day's quota renews: `it renews at 00:00 in Asia/Shanghai (in 5 h 12 min)`."""
        zone = ZoneInfo(self.config.api.timezone)
        now = datetime.fromtimestamp(self._clock(), zone)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), zone)
        # As timestamps: two times of one zone subtract as wall clocks (an hour off on a daylight-saving day).
        # Whole minutes left (3 s after midnight is "23 h 59 min", not "24 h 0 min"), 1 at least.
        minutes = max(1, math.floor((midnight.timestamp() - now.timestamp()) / 60))
        return f"it renews at 00:00 in {self.config.api.timezone} (in {minutes // 60} h {minutes % 60} min)"

    def authenticate(self, credentials: Credentials) -> User:
        """The user whose signature this is (codes 3, 4, 20, 7); a refusal is counted (metrics) and told in the
        log (a line a minute at most: RefusalDigest). A credential given twice is refused first (code 2)."""
        if credentials.repeated is not None:  # the first was taken: two names, one call (a hostile tenant's probe)
            raise RequestRefused(JdCode.PARAMS_EMPTY, f"{credentials.repeated}: given more than once; give it once")
        try:
            return self._authenticate(credentials)
        except RequestRefused as exc:
            reason = CREDENTIAL_REFUSALS[exc.code]
            self.metrics.credentials_refused.labels(reason).inc()
            known = exc.code is JdCode.SIGNATURE_INCORRECT  # a configured user: named (an unknown name is anyone's)
            self._refusals.refused(f"{reason} (user {credentials.username!r})" if known else reason, credentials.caller)
            raise

    def _authenticate(self, credentials: Credentials) -> User:
        if not credentials.username:
            raise RequestRefused(JdCode.USERNAME_EMPTY, "username must not be empty")
        if not credentials.signature:
            raise RequestRefused(JdCode.SIGNATURE_EMPTY, "signature must not be empty")
        user = self.config.user(credentials.username)
        if user is None:
            raise RequestRefused(JdCode.USER_UNKNOWN, "username does not exist")
        api = self.config.api
        now = datetime.fromtimestamp(self._clock(), UTC)
        window = api.signature_window_days
        # A name given with spaces around it is read without them; its signature may be of either (a tenant's
        # client signed " bob", as it sent it, and was told "signature incorrect").
        names = (user.name,) if credentials.signed_as is None else (user.name, credentials.signed_as)
        if not any(auth.verify(name, user.secret, credentials.signature, now, api.timezone, window) for name in names):
            day = auth.signed_day(user.name, user.secret, credentials.signature, now, api.timezone, window)
            if day is None:
                raise RequestRefused(JdCode.SIGNATURE_INCORRECT, "signature incorrect")
            days = auth.accepted_days(now, api.timezone, window)
            taken = f"{days[0]:%Y%m%d}" if len(days) == 1 else f"{days[0]:%Y%m%d} to {days[-1]:%Y%m%d}"
            raise RequestRefused(
                JdCode.SIGNATURE_INCORRECT,
                f"signature incorrect: it is the signature of {day:%Y%m%d}; this server takes those of {taken} "
                f"(days in {api.timezone})",
            )
        return user

    def check_urls(
        self, user: User, urls: list[str], *, too_many: JdCode, not_yours: JdCode, dirs: bool = False
    ) -> list[TargetUrl]:
        """The JD checks on a URL list, in this order: count (`dirs`: directories, by `dirs_per_call`), legality
        (`dirs`: each ends with '/'), duplicates, ownership."""
        if not urls:
            raise RequestRefused(JdCode.LIST_EMPTY, "the URL list must not be empty")
        limits = user.limits(self.config.limits)
        limit, what = (limits.dirs_per_call, "directories") if dirs else (limits.urls_per_call, "URLs")
        if len(urls) > limit:
            raise RequestRefused(too_many, f"{len(urls)} {what} in one call; the limit is {limit}")
        max_length = self.config.api.max_url_length
        targets = _every_one_checked(urls, lambda url: parse_url(url, max_length))
        if dirs:
            targets = _every_one_checked(targets, TargetUrl.as_dir)
        # Two spellings of one object (host case, an empty path) are one URL to a cache.
        duplicate = find_duplicate(targets)
        if duplicate is not None:
            first, again = duplicate
            same = "" if first.url == again.url else f" (the same object as {first.url})"
            raise RequestRefused(JdCode.DUPLICATE_URLS, f"duplicate URL in the request: {again.url}{same}")
        foreign = list(dict.fromkeys(target.host for target in targets if not user.owns(target.host)))
        if len(foreign) == 1:
            raise RequestRefused(not_yours, f"the domain {foreign[0]} is not yours")
        if foreign:
            raise RequestRefused(not_yours, f"the domains {_some(foreign, 'more')} are not yours")
        return targets

    @contextlib.contextmanager
    def refusals_told(self, user: User, caller: str | None = None) -> Iterator[None]:
        """Around a submission of `user`'s, from its credentials accepted on (the API's reading of its fields
        too): a refusal is counted (metrics) and told in the log (a line a minute at most, by reason and user: an
        operator sees who hits the daily quota, or sends URLs that are not theirs; and from where: `caller`)."""
        try:
            yield
        except RequestRefused as exc:
            reason = submission_refusal(exc)
            self.metrics.submissions_refused.labels(reason).inc()
            self._submissions_refused.refused(f"{reason} (user {user.name!r})", caller)
            raise

    async def submit_prefetch(
        self, user: User, urls: list[str], *, refresh_first: bool = False, options: SubmitOptions | None = None
    ) -> Task:
        """Warm `urls` on every node; with `refresh_first`, purge each URL on a node before warming it there."""
        targets = self.check_urls(user, urls, too_many=JdCode.TOO_MANY_PREFETCH_URLS, not_yours=JdCode.DOMAIN_NOT_YOURS)
        steps = (ItemAction.PURGE, ItemAction.WARM) if refresh_first else (ItemAction.WARM,)
        items = self._items(targets, steps)
        return await self._create(user, TaskKind.PREFETCH, items, urls=len(targets), dirs=0, options=options)

    async def submit_refresh(
        self, user: User, entries: list[str], kind: str, *, options: SubmitOptions | None = None
    ) -> Task:
        """Purge files (`kind` "file") or directories ("dir": each entry ends with '/') on every node."""
        dirs = kind == "dir"
        too_many = JdCode.TOO_MANY_DIRS if dirs else JdCode.TOO_MANY_REFRESH_URLS
        targets = self.check_urls(
            user, entries, too_many=too_many, not_yours=JdCode.REFRESH_DOMAIN_NOT_YOURS, dirs=dirs
        )
        if not dirs:
            items = self._items(targets, (ItemAction.PURGE,))
            return await self._create(user, TaskKind.REFRESH, items, urls=len(targets), dirs=0, options=options)
        items = self._items(targets, (ItemAction.PURGE_DIR,))
        return await self._create(user, TaskKind.REFRESH, items, urls=0, dirs=len(targets), options=options)

    def _items(self, targets: list[TargetUrl], steps: tuple[ItemAction, ...]) -> tuple[NewItem, ...]:
        """Every (URL, node) item of each step, staged: tier by tier (shields, then edges), the steps in turn.

        So a shield is purged and warmed before an edge is purged, and an edge never refills from a shield
        that still holds the old object.
        """
        nodes = self.config.nodes
        if not nodes:
            raise RequestRefused(JdCode.INTERNAL, "no cache nodes are configured")
        tiers = [t for t in (Tier.SHIELD, Tier.EDGE) if any(n.tier is t for n in nodes)]
        return tuple(
            NewItem(
                seq=seq, url=target.url, node=node.name, action=action, stage=tiers.index(node.tier) * len(steps) + step
            )
            for seq, target in enumerate(targets)
            for node in nodes
            for step, action in enumerate(steps)
        )

    async def _create(
        self,
        user: User,
        kind: TaskKind,
        items: tuple[NewItem, ...],
        *,
        urls: int,
        dirs: int,
        options: SubmitOptions | None,
    ) -> Task:
        options = options or SubmitOptions()
        key = options.idempotency_key
        if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY or has_controls(key)):
            raise RequestRefused(
                JdCode.PARAMS_EMPTY,
                f"idempotency_key must be at most {MAX_IDEMPOTENCY_KEY} characters, none of them a control character",
            )
        callback = None
        if options.callback_url:
            callback = check_callback_url(options.callback_url, self.config.webhooks.allowed_hosts)
        limits = user.limits(self.config.limits)
        quota = QuotaCharge(self.today(), urls, dirs, limits.urls_per_day, limits.dirs_per_day)
        task = NewTask(
            str(uuid.uuid4()), user.name, kind, self._clock(), items, quota, options.idempotency_key, callback
        )
        try:
            created = await self.store.create_task(task)
        except QuotaExceeded as exc:  # when it renews: the day is the service's, not the caller's
            raise QuotaExceeded(f"{exc.message}; {self._quota_renews()}") from None
        if created.id == task.id:
            self.metrics.tasks_submitted.labels(kind.value).inc()
            log.info(
                "task submitted: %s by %s, %s, %s",
                kind.value,
                user.name,
                f"{dirs} {'directory' if dirs == 1 else 'directories'}" if dirs else f"{urls} URL{'s' * (urls != 1)}",
                item_count(len(items)),
                extra={
                    "task_id": task.id,
                    "user": user.name,
                    "kind": kind.value,
                    "urls": urls,
                    "dirs": dirs,
                    "items": len(items),
                },
            )
            if self._on_submit is not None:
                self._on_submit()
        elif created.kind is not kind:
            raise RequestRefused(
                JdCode.FAILURE,
                f"this idempotency key was used for task {created.id}, a {created.kind.value} task: use a new key",
            )
        else:
            # Each way it differs, named (the callback's alone was, when the URLs differed too: an upgrade tester's).
            other = [await self._other_request(created, items)]
            other.append("with another callback_url (or none)" if created.callback_url != callback else None)
            if said := [o for o in other if o is not None]:
                raise RequestRefused(
                    JdCode.FAILURE,
                    f"this idempotency key was used for task {created.id} {' and '.join(said)}: use a new key for "
                    "this call",
                )
        return created

    async def _other_request(self, task: Task, items: tuple[NewItem, ...]) -> str | None:
        """How `task` (found by its idempotency key) was made otherwise than for `items`, or None when for the same
        URLs (one object to a cache: in any spelling of the host and port), in the same order, and the same steps
        (its nodes may differ: the fleet may have changed since)."""
        stored = await self.store.list_items(task.id, limit=task.total)

        def request(of: Sequence[Item | NewItem]) -> tuple[list[str], set[ItemAction]]:
            urls: list[str] = []
            for item in of:
                if not urls or urls[-1] != item.url:
                    urls.append(item.url)
            # One object to a cache each (a task holds no two spellings of one: code 47).
            return [stored_target(url).cache_key for url in urls], {item.action for item in of}

        (had, steps), (given, asked) = request(stored), request(items)
        if had != given:
            return "with the same URLs in another order" if sorted(had) == sorted(given) else "with other URLs"
        if steps == asked:
            return None
        if (ItemAction.PURGE_DIR in steps) != (ItemAction.PURGE_DIR in asked):
            return "of another type (file or dir)"
        return "with other steps (refresh: the purges first, or not)"

    async def get_task(self, user: User, raw_task_id: str, kind: TaskKind | None = None) -> Task:
        """The user's task; anything else (malformed, unknown, another user's, other kind) is 'not found'."""
        if not raw_task_id:
            raise RequestRefused(JdCode.TASKID_EMPTY, "taskid must not be empty")
        task_id = normalize_task_id(raw_task_id)
        task = None if task_id is None else await self.store.get_task(task_id, user.name)
        if task is None or (kind is not None and task.kind is not kind):
            raise TaskNotFound()
        return task

    async def cancel(self, user: User, raw_task_id: str) -> Task:
        task = await self.get_task(user, raw_task_id)
        if task.status is not TaskStatus.IN_PROGRESS:
            raise RequestRefused(JdCode.FAILURE, f"task {task.id} has already ended")
        found = await self.store.cancel_task(task.id, user.name, self._clock())
        if found is None:
            raise TaskNotFound()
        cancelled = found.task
        if cancelled.reason != CANCELLED or (not found.first and cancelled.finished_at is not None):
            # It ended between the look above and the cancel: on its own, or by another cancel at the same time.
            raise RequestRefused(JdCode.FAILURE, f"task {task.id} has already ended")
        if not found.first:  # another cancel's, its items under way not all back: 200 told no caller it was theirs
            raise RequestRefused(
                JdCode.FAILURE, f"task {task.id} was cancelled already: it ends when its items under way come back"
            )
        if found.first and cancelled.finished_at is not None:  # a cancel after the first (items under way): told then
            self.metrics.task_ended(cancelled, log)
        elif found.first:
            under_way = cancelled.total - cancelled.succeeded - cancelled.failed
            log.info(
                "task cancelled by %s: it ends when its items under way come back (%d not ended yet)",
                user.name,
                under_way,
                extra={"task_id": task.id, "user": user.name, "items": under_way},
            )
        if self._on_cancel is not None:
            self._on_cancel(task.id)
        return cancelled

    async def wait(
        self, user: User, raw_task_id: str, timeout: float, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> Task:
        """The task once it has ended, or as it is after `timeout` seconds (long-poll), when the process stops
        (the caller asks again, of this process once restarted or of another), or when `gone()` says the caller
        hung up. At once, as it is, when the user has WAITS_PER_USER waits open already."""
        deadline = time.monotonic() + timeout
        task = await self.get_task(user, raw_task_id)
        if self.waits_open.get(user.name, 0) >= WAITS_PER_USER:
            return task
        self.waits_open[user.name] = self.waits_open.get(user.name, 0) + 1
        self.metrics.waits_open.inc()
        try:
            delay = 0.02
            while (
                task.status is TaskStatus.IN_PROGRESS
                and (left := deadline - time.monotonic()) > 0
                and not self._stopping.is_set()
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(delay, left))
                delay = min(delay * 1.5, 0.5)
                if gone is not None and await gone():
                    break
                task = await self.get_task(user, task.id)
            return task
        finally:
            self.metrics.waits_open.dec()
            if (left_open := self.waits_open[user.name] - 1) > 0:
                self.waits_open[user.name] = left_open
            else:
                del self.waits_open[user.name]

    async def quota(self, user: User) -> dict[str, object]:
        limits = user.limits(self.config.limits)
        day = self.today()
        urls, dirs = await self.store.usage(user.name, day)
        return {
            "day": day,
            "timezone": self.config.api.timezone,
            "urls": {"used": urls, "limit": limits.urls_per_day, "left": max(0, limits.urls_per_day - urls)},
            "dirs": {"used": dirs, "limit": limits.dirs_per_day, "left": max(0, limits.dirs_per_day - dirs)},
            "urls_per_call": limits.urls_per_call,
            "dirs_per_call": limits.dirs_per_call,
            "max_body_bytes": self.config.api.max_body_bytes,
            "domains": list(user.domains),
        }


def _every_one_checked(entries: Sequence[_Entry], check: Callable[[_Entry], _Checked]) -> list[_Checked]:
    """`check` of each entry; if it refused some, one refusal naming the first few (each with its reason) and
    how many more: a caller is not sent back once for each bad URL of a call."""
    checked: list[_Checked] = []
    refusals: list[RequestRefused] = []
    for entry in entries:
        try:
            checked.append(check(entry))
        except RequestRefused as exc:
            refusals.append(exc)
    if not refusals:
        return checked
    if len(refusals) == 1:
        raise refusals[0]
    messages = [exc.message for exc in refusals]
    raise RequestRefused(refusals[0].code, f"{len(refusals)} entries refused: {_some(messages, 'more', sep='; ')}")


def _some(names: list[str], more: str, sep: str = ", ") -> str:
    """The first NAMED_IN_A_REFUSAL of `names`, and how many more."""
    told = sep.join(names[:NAMED_IN_A_REFUSAL])
    rest = len(names) - NAMED_IN_A_REFUSAL
    return told if rest <= 0 else f"{told}{sep}and {rest} {more}"
