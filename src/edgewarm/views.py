"""How a task is shown outside: the native API's summary, also the body of a webhook."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from .models import Task, TaskStatus

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
