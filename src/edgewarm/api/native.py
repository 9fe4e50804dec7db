"""Native routes: what JD's answer cannot say. Authenticated with the same daily signature, in headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from ..models import Item, Task, TaskCounts
from ..service import Credentials, Service
from .responses import JSONResponse, native_error
from .schemas import NativeError, TaskView


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def item_view(item: Item) -> dict[str, object]:
    return {
        "url": item.url,
        "node": item.node,
        "action": item.action.value,
        "state": item.state.value,
        "http_status": item.http_status,
        "cache_state": item.cache_state,
        "bytes": item.bytes,
        "attempts": item.attempts,
        "error": item.error,
        "updated_at": iso(item.updated_at),
    }


def task_view(
    service: Service, task: Task, counts: TaskCounts, items: list[Item], offset: int, limit: int
) -> dict[str, object]:
    done = counts.succeeded + counts.failed
    return {
        "taskid": task.id,
        "kind": task.kind.value,
        "status": int(task.status),
        "msg": service.status_text(task.status),
        "reason": task.reason,
        "created_at": iso(task.created_at),
        "finished_at": iso(task.finished_at),
        "duration_seconds": None if task.finished_at is None else round(task.finished_at - task.created_at, 3),
        "total": task.total,
        "counts": {
            "waiting": counts.waiting,
            "pending": counts.pending,
            "running": counts.running,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
        },
        "progress": 1.0 if task.total == 0 else round(done / task.total, 4),
        "items": [item_view(i) for i in items],
        "offset": offset,
        "limit": limit,
    }


Username = Annotated[str, Header(alias="X-Edgewarm-Username", description="the JD username")]
Signature = Annotated[str, Header(alias="X-Edgewarm-Signature", description="md5(yyyymmdd + username + secret)")]


def native_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["native"])

    @router.get(
        "/tasks/{taskid}",
        response_model=TaskView,
        responses={401: {"model": NativeError}, 404: {"model": NativeError}},
        summary="A task in full: counts, progress, timestamps and each item's outcome",
    )
    async def get_task(
        taskid: str,
        username: Username = "",
        signature: Signature = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=0, le=10_000)] = 1000,
    ) -> Response:
        try:
            user = service.authenticate(Credentials(username.strip(), signature.strip()))
            task = await service.get_task(user, taskid)
            counts = await service.store.task_counts(task.id)
            items = await service.store.list_items(task.id, offset=offset, limit=limit) if limit else []
            return JSONResponse(task_view(service, task, counts, items, offset, limit))
        except Exception as exc:
            return native_error(exc)

    return router
