"""How a task is shown outside: the native API's summary, also the body of a webhook."""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import UTC, datetime, timedelta

from .errors import JdCode, RequestRefused
from .models import Task, TaskPlace, TaskStatus, normalize_task_id

STATUS_TEXT = {
    "en": {TaskStatus.SUCCEEDED: "Succeeded", TaskStatus.IN_PROGRESS: "In Progress", TaskStatus.FAILED: "Failed"},
    "zh": {TaskStatus.SUCCEEDED: "成功", TaskStatus.IN_PROGRESS: "进行中", TaskStatus.FAILED: "失败"},
}


_MILLISECOND = timedelta(milliseconds=1)


def iso(timestamp: float | None) -> str | None:
    """`timestamp` in UTC to the millisecond, never later than it is: a task listed `since` its own
    `created_at` is found (fromtimestamp() rounds to the microsecond: …19.4569998 was shown …19.457, and a
    filter from there left the task out, about 1 time in 2,400, a tester's)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    shown = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    if shown.timestamp() > timestamp:
        shown -= _MILLISECOND
    return shown.isoformat(timespec="milliseconds")


def task_summary(task: Task, language: str) -> dict[str, object]:
    """A task without its items; its counters come from the task row (finished items only)."""
    return {
        "taskid": task.id,
        "kind": task.kind.value,
        "status": int(task.status),
        "msg": STATUS_TEXT[language][task.status],
        "reason": task.reason,
        "cancelled_by": None if task.cancelled_by is None else task.cancelled_by.value,
        "created_at": iso(task.created_at),
        "finished_at": iso(task.finished_at),
        "duration_seconds": None if task.seconds is None else round(task.seconds, 3),
        "total": task.total,
        "succeeded": task.succeeded,
        "failed": task.failed,
        "progress": 1.0 if task.total == 0 else progress(task.succeeded + task.failed, task.total),
    }


def progress(done: int, total: int) -> float:
    """The share done, to 4 decimals, rounded down: 1.0 only when all is done (19,999 of 20,000 is 0.9999)."""
    return math.floor(done * 10_000 / total) / 10_000


TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")  # base64url, without its padding


def place_token(place: TaskPlace) -> str:
    """A place in a task list as a page's `next`: opaque to clients (its layout may change), it holds the
    task's time with every digit (a time shown to the millisecond would skip the tasks of that millisecond) and
    its id, not an offset (tasks submitted or deleted between two pages would move it)."""
    text = f"{place.created_at!r} {place.task_id}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def read_place(token: str) -> TaskPlace:
    """The place of a page's `next` given back as `after`; RequestRefused (400) for anything else."""
    refused = RequestRefused(JdCode.PARAMS_EMPTY, "after: not a task list's cursor (give a page's `next` as it came)")
    if not TOKEN.fullmatch(token):
        raise refused
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise refused from None
    at, _, task_id = text.partition(" ")
    try:
        created_at = float(at)
    except ValueError:
        raise refused from None
    if not math.isfinite(created_at) or normalize_task_id(task_id) != task_id:
        raise refused
    return TaskPlace(created_at, task_id)
