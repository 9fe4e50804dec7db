"""The columns both SQL back-ends select, and the models they become: written once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..models import CANCELLED, Canceller, Item, ItemAction, ItemState, Task, TaskCounts, TaskKind, TaskStatus

TASK_COLUMNS = (
    "id, username, kind, created_at, status, total, succeeded, failed, finished_at, reason, "
    "callback_url, webhook_state, webhook_attempts, webhook_error, idempotency_key, webhook_due_at, cancelled_by"
)
ITEM_COLUMNS = (
    "id, task_id, url, node, action, stage, state, attempts, http_status, cache_state, bytes, error, updated_at"
)


def canceller(username: str | None) -> str:
    """The cancelled_by of a cancel by `username`, the task's user, or by the operator (None)."""
    return Canceller.OPERATOR if username is None else Canceller.USER


class Row(Protocol):
    """What both drivers' rows offer: access by position."""

    def __getitem__(self, index: int, /) -> Any: ...


def task_from_row(row: Row) -> Task:
    """A row of TASK_COLUMNS (a sqlite3.Row or an asyncpg.Record)."""
    return Task(
        id=row[0],
        username=row[1],
        kind=TaskKind(row[2]),
        created_at=row[3],
        status=TaskStatus(row[4]),
        total=row[5],
        succeeded=row[6],
        failed=row[7],
        finished_at=row[8],
        reason=row[9],
        callback_url=row[10],
        webhook_state=row[11],
        webhook_attempts=row[12],
        webhook_error=row[13],
        idempotency_key=row[14],
        webhook_due_at=row[15],
        # Cancelled before schema version 6, which records who: by its user, the only one who could.
        cancelled_by=Canceller(row[16]) if row[16] else (Canceller.USER if row[9] == CANCELLED else None),
    )


def item_from_row(row: Row) -> Item:
    """A row of ITEM_COLUMNS."""
    return Item(
        id=row[0],
        task_id=row[1],
        url=row[2],
        node=row[3],
        action=ItemAction(row[4]),
        stage=row[5],
        state=ItemState(row[6]),
        attempts=row[7],
        http_status=row[8],
        cache_state=row[9],
        bytes=row[10],
        error=row[11],
        updated_at=row[12],
    )


def node_counts_from_rows(rows: Iterable[Row]) -> dict[str, TaskCounts]:
    """Rows of (node, state, count), nodes in their first item's order: the counts per node."""
    out: dict[str, TaskCounts] = {}
    for row in rows:
        node, state, count = str(row[0]), str(row[1]), int(row[2])
        out[node] = out.get(node, TaskCounts()).add(TaskCounts(**{state: count}))
    return out
