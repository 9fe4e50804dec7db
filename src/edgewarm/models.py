"""The domain: tasks, items, their states. Frozen dataclasses and enums, no I/O."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass


class TaskKind(enum.StrEnum):
    PREFETCH = "prefetch"
    REFRESH = "refresh"


class TaskStatus(enum.IntEnum):
    """JD's `data.status`: 0 succeeded, 1 in progress, 2 failed."""

    SUCCEEDED = 0
    IN_PROGRESS = 1
    FAILED = 2


class ItemState(enum.StrEnum):
    """Life of one (URL, node) pair.

    WAITING: an edge item whose URL has not yet succeeded on every shield.
    PENDING: due for work at `due_at`. RUNNING: leased by a worker until `lease_until`.
    """

    WAITING = "waiting"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ItemAction(enum.StrEnum):
    """What an item does to its node."""

    WARM = "warm"
    PURGE = "purge"
    PURGE_DIR = "purge_dir"


class Canceller(enum.StrEnum):
    """Who cancelled a task: its user (the API) or the operator (`edgewarm admin cancel`, from the store)."""

    USER = "user"
    OPERATOR = "operator"


class Tier(enum.StrEnum):
    SHIELD = "shield"
    EDGE = "edge"


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item as submitted, before the store gives it an id."""

    seq: int  # the URL's position in its task; items of one URL share it
    url: str
    node: str
    action: ItemAction = ItemAction.WARM
    # An item runs only after every item of the same task and URL with a lower stage succeeded:
    # shields (stage 0) before edges (1); a purge before the warm that follows it. Stages start at 0.
    stage: int = 0


@dataclass(frozen=True, slots=True)
class Item:
    id: int
    task_id: str
    url: str
    node: str
    action: ItemAction
    stage: int
    state: ItemState
    attempts: int = 0
    http_status: int | None = None
    cache_state: str | None = None
    bytes: int | None = None
    error: str | None = None
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    username: str
    kind: TaskKind
    created_at: float
    status: TaskStatus
    total: int
    succeeded: int = 0
    failed: int = 0
    finished_at: float | None = None
    reason: str | None = None
    callback_url: str | None = None
    webhook_state: str | None = None  # pending | delivered | failed; None without a callback URL
    webhook_attempts: int = 0
    webhook_error: str | None = None
    idempotency_key: str | None = None
    webhook_due_at: float | None = None  # the next delivery attempt, while pending
    cancelled_by: Canceller | None = None  # with reason "cancelled"

    @property
    def seconds(self) -> float | None:
        """Submit to end, None while it runs; never below 0 (a wall clock stepped back between the two, or two
        processes whose clocks differ, would make it so)."""
        return None if self.finished_at is None else max(0.0, self.finished_at - self.created_at)


@dataclass(frozen=True, slots=True)
class TaskCounts:
    waiting: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.waiting + self.pending + self.running + self.succeeded + self.failed

    def add(self, other: TaskCounts) -> TaskCounts:
        return TaskCounts(
            self.waiting + other.waiting,
            self.pending + other.pending,
            self.running + other.running,
            self.succeeded + other.succeeded,
            self.failed + other.failed,
        )


@dataclass(frozen=True, slots=True)
class Cancel:
    """What a cancel found: the task after it, and whether this cancel was its first (it set the reason: the
    task's end, if it ended at once, is this cancel's to tell; a cancel at the same time of another caller, or a
    later one, is not)."""

    task: Task
    first: bool


@dataclass(frozen=True, slots=True)
class Released:
    """Items handed back by a worker (or every worker's, at a sole engine's start), and the tasks that ended
    by it: cancelled ones whose last items under way were among them (they fail "cancelled", unsent)."""

    items: int
    ended: tuple[Task, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """A task with its counts (overall and per node) and a page of its items, as of one moment."""

    task: Task
    nodes: dict[str, TaskCounts]
    items: list[Item]

    @property
    def counts(self) -> TaskCounts:
        total = TaskCounts()
        for counts in self.nodes.values():
            total = total.add(counts)
        return total


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What a worker reports for one leased item."""

    item_id: int
    succeeded: bool
    attempts: int
    http_status: int | None = None
    cache_state: str | None = None
    bytes: int | None = None
    error: str | None = None  # why it failed (or waits); for a success, what it did where no answer says it
    # Set when the failure is worth another try: the item goes back to PENDING, due at this time.
    retry_at: float | None = None
    # A warm's: seconds the node's copy stays fresh, as its answer told (None: not told). Not stored: the engine
    # shares a success for no longer (coalesce.py).
    fresh_for: float | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """An item leased to a worker."""

    item_id: int
    task_id: str
    url: str
    node: str
    action: ItemAction
    attempts: int  # attempts recorded so far (outcomes, and attempts begun after a retake)
    # Taken over from a worker whose lease ran out (it died, say): it may or may not have sent the item, so
    # the attempt this claim makes is recorded before it is sent (`TaskStore.begin_attempt`).
    retaken: bool = False
    # Its task's user ("" for items written before schema version 5: store.base.UNNAMED), whose turn it waits
    # for in its node's lane (engine/turns.py).
    user: str = ""
    # A warm that had succeeded and is warmed again (its error starts with WARMED_AGAIN): its outcome is not
    # another item's end (the metrics count it apart).
    rewarm: bool = False


@dataclass(frozen=True, slots=True)
class QuotaCharge:
    """What a submission adds to its user's daily usage, and the limits it must stay within."""

    day: str  # yyyymmdd in the service's time zone
    urls: int
    dirs: int
    urls_limit: int
    dirs_limit: int

    def refusal(self, used_urls: int, used_dirs: int) -> str:
        """Why the charge does not fit beside today's usage. Each kind has its own limit, and only a kind the
        charge adds to can refuse it (a reload may have lowered a limit below what is used)."""
        if self.dirs and used_dirs + self.dirs > self.dirs_limit:
            return f"daily quota exceeded: {used_dirs} of {self.dirs_limit} directories used today, {self.dirs} asked"
        return f"daily quota exceeded: {used_urls} of {self.urls_limit} URLs used today, {self.urls} asked"


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    username: str
    kind: TaskKind
    created_at: float
    items: tuple[NewItem, ...]
    quota: QuotaCharge
    # A second submission with the same key from the same user returns the first task, charging nothing.
    idempotency_key: str | None = None
    callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class TaskPlace:
    """A task's place in a task list (newest first, then by id): a page that ends with it goes on after it.
    The place stays where it is when tasks are submitted or deleted, its own task too (unlike an offset)."""

    created_at: float
    task_id: str

    @classmethod
    def of(cls, task: Task) -> TaskPlace:
        return cls(task.created_at, task.id)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What `list_tasks` selects; every field narrows, None means any."""

    status: TaskStatus | None = None
    kind: TaskKind | None = None
    since: float | None = None  # created at or after
    until: float | None = None  # created before
    url_contains: str | None = None
    after: TaskPlace | None = None  # only the tasks listed after this place (keyset paging)
    offset: int = 0
    limit: int = 100


CANCELLED = "cancelled"
# How the error of a warm made pending again after it had succeeded begins (its node back after a hold, or moved
# by a reload: engine/scheduler.py): its claim says `rewarm`.
WARMED_AGAIN = "warmed again:"


def normalize_task_id(raw: str) -> str | None:
    """The 36-character form of a task id given in 36- or 32-character form; None when it is not one."""
    text = raw.strip()
    if len(text) not in (32, 36) or not text.isascii():  # (uuid reads `١` as 1: a wire tester's found the task)
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def distinct_task_ids(given: Iterable[str]) -> list[str]:
    """Each task of `given` once, however its id is spelled (its 36-character form: in upper case, or its 32
    characters, it was followed or counted twice), in their order; text that is no task id as it came."""
    return list(dict.fromkeys(normalize_task_id(text) or text for text in given))
