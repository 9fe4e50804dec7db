"""How a task is shown outside: the native API's summary, also the body of a webhook."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from .models import Task, TaskStatus

STATUS_TEXT = {
    "en": {TaskStatus.SUCCEEDED: "Succeeded", TaskStatus.IN_PROGRESS: "In Progress", TaskStatus.FAILED: "Failed"},
    "zh": {TaskStatus.SUCCEEDED: "成功", TaskStatus.IN_PROGRESS: "进行中", TaskStatus.FAILED: "失败"},
}


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


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
