"""Native routes: what JD's answer cannot say. Authenticated with the same daily signature, in headers."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Header, Query
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import JdCode, RequestRefused, TaskNotFound
from ..models import (
    Item,
    ItemState,
    Task,
    TaskCounts,
    TaskDetail,
    TaskFilter,
    TaskKind,
    TaskPlace,
    TaskStatus,
    normalize_task_id,
)
from ..service import Credentials, Service
from ..urls import as_browsers_send, has_controls, shortened, split_list
from ..views import iso, place_token, read_place
from ..webhooks import shown_callback_url
from .body import caller_address, read_params
from .protocol import client_ended
from .responses import answered, native_error
from .schemas import NativeError, QuotaView, TaskList, TaskView


def item_view(item: Item) -> dict[str, object]:
    # The store keeps one text per item: why it failed or waits, or what a succeeded one did (outcome.py).
    done = item.state is ItemState.SUCCEEDED
    return {
        "url": item.url,
        "node": item.node,
        "action": item.action.value,
        "state": item.state.value,
        "http_status": item.http_status,
        "cache_state": item.cache_state,
        "bytes": item.bytes,
        "attempts": item.attempts,
        "error": None if done else item.error,
        "note": item.error if done else None,
        "updated_at": iso(item.updated_at),
    }


def counts_view(counts: TaskCounts) -> dict[str, int]:
    return {
        "waiting": counts.waiting,
        "pending": counts.pending,
        "running": counts.running,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
    }


def webhook_view(task: Task) -> dict[str, object] | None:
    """The callback of a task that has one: state null while the task runs, then pending, delivered or failed."""
    if not task.callback_url:
        return None
    return {
        "url": shown_callback_url(task.callback_url),
        "state": task.webhook_state,
        "attempts": task.webhook_attempts,
        "error": task.webhook_error,
        "next_attempt_at": iso(task.webhook_due_at) if task.webhook_state == "pending" else None,
    }


def task_view(
    service: Service, detail: TaskDetail, offset: int, limit: int, state: ItemState | None = None
) -> dict[str, object]:
    webhook = webhook_view(detail.task)
    return {
        **service.summary(detail.task),
        **({} if webhook is None else {"webhook": webhook}),
        "counts": counts_view(detail.counts),
        "nodes": {name: counts_view(c) for name, c in detail.nodes.items()},
        "items": [item_view(i) for i in detail.items],
        "offset": offset,
        "limit": limit,
        **({} if state is None else {"state": state.value}),  # the items' filter: page to counts[state]
    }


Username = Annotated[str, Header(alias="X-Edgewarm-Username", description="the JD username")]
Signature = Annotated[str, Header(alias="X-Edgewarm-Signature", description="md5(yyyymmdd + username + secret)")]


def caller_credentials(request: Request, username: Username = "", signature: Signature = "") -> Credentials:
    """A native call's credentials (its headers) and where it came from."""
    repeated = next((n for n in _CREDENTIAL_HEADERS if len(request.headers.getlist(n)) > 1), None)
    # (A space HTTP does not take out of a header, U+3000 or NBSP, is read as a JD field's: signed either way.)
    return Credentials.as_sent(header_text(username), signature, caller_address(request), repeated)


_CREDENTIAL_HEADERS = ("X-Edgewarm-Username", "X-Edgewarm-Signature")


Caller = Annotated[Credentials, Depends(caller_credentials)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": NativeError},
    401: {"model": NativeError},
    404: {"model": NativeError},
    405: {
        "description": "Another method (`Allow` names this route's)",
        "content": {"application/json": {"example": {"error": "method POST not allowed here: use GET"}}},
    },
    503: {"model": NativeError, "description": "The store does not answer, or the service is stopping: ask again"},
}
CANCEL_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"model": NativeError, "description": "The task has already ended, or was cancelled already"},
}


def header_text(value: str) -> str:
    """A header's text as sent in UTF-8 (a non-ASCII JD username, say): the server reads header bytes as
    Latin-1, so they are read again; a value that is not UTF-8 stays as read."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def plain_filter(url: str | None, longest: int) -> str | None:
    """The `url` filter of a task list, refused when it holds a control character or a space, or is longer than
    `longest` (`[api] max_url_length`), as no URL of a task does; its non-ASCII characters percent-encoded, as a
    task's URLs hold them (`?url=%E4%B8%AD`, decoded once to `中`, found nothing: a tester's)."""
    if url and len(url) > longest:  # (it was 2,048 whatever the setting: a URL taken could not be looked for whole)
        raise RequestRefused(
            JdCode.PARAMS_EMPTY, f"url: longer than the longest URL taken ({longest} characters, max_url_length)"
        )
    if url and has_controls(url):
        raise RequestRefused(JdCode.PARAMS_EMPTY, "url: a control character is in no URL")
    if url and " " in url:
        raise RequestRefused(
            JdCode.PARAMS_EMPTY,
            "url: a space is in no URL (in a query string a '+' is a space: write a URL's '+' as %2B, and its %20 "
            "as %2520)",
        )
    return as_browsers_send(url) if url else None


LAST_EPOCH_SECOND = 253_402_300_800  # 10000-01-01T00:00:00Z: from it, a number is no time in seconds (milliseconds?)
FIRST_EPOCH_SECOND = -62_135_596_800  # 0001-01-01T00:00:00Z: the first a time can be


def epoch(value: str | None, name: str, timezone: str) -> float | None:
    """A time given as epoch seconds or ISO 8601 (UTC when it names no zone). A date alone (20261202, ISO 8601's
    basic form: as seconds, a day of 1970; or 2026-12-02) is that day's start in `timezone`, the service's day
    (`[api] timezone`: the quotas' and the signatures'; it was UTC's, 8 hours off Shanghai's day). A number
    past the year 9999 is refused (milliseconds, most likely: read as seconds it matched no task, and said
    nothing), and so are four or six digits (a year or a month, most likely: as seconds, every task matched)."""
    if value is None or not (value := value.strip()):
        return None
    if not value.isascii():  # (Arabic-Indic digits were read as seconds, a tester's; limit and offset refuse them)
        raise RequestRefused(JdCode.PARAMS_EMPTY, f"{name}: not a time (epoch seconds or ISO 8601, in ASCII)")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise RequestRefused(JdCode.PARAMS_EMPTY, f"{name}: not a time (epoch seconds or ISO 8601)")
        if seconds < FIRST_EPOCH_SECOND:  # (a tester's: told to give seconds, not milliseconds, for this)
            raise RequestRefused(JdCode.PARAMS_EMPTY, f"{name}: {value} is before the year 1")
        if seconds >= LAST_EPOCH_SECOND:  # (seconds of 9999's last one were refused too: a tester's)
            said = f"{name}: {value} is past the year 9999 in seconds: give epoch seconds, not milliseconds"
            raise RequestRefused(JdCode.PARAMS_EMPTY, said)
        if value.isdigit() and len(value) in (4, 6):  # 2026, 202612: read as seconds, every task matched, silently
            date = f"{value[:4]}-{value[4:] or '01'}-01"
            raise RequestRefused(
                JdCode.PARAMS_EMPTY,
                f"{name}: {value} may be a year or a month, or seconds since 1970: give a date "
                f"({date if _is_date(date) else 'YYYY-MM-DD'}), or seconds as {value}.0",
            )
        if not (len(value) == 8 and value.isdigit()):
            return seconds
    try:
        moment = datetime.fromisoformat(value.upper())  # RFC 3339's 't' and 'z' too
    except ValueError as exc:
        if len(value) == 8 and value.isdigit():  # it was "not a time": it is, as seconds (of 1970)
            raise RequestRefused(
                JdCode.PARAMS_EMPTY,
                f"{name}: eight digits are a date (YYYYMMDD), and {value} is none ({exc}); seconds since 1970 as "
                f"{value}.0",
            ) from None
        why = str(exc)
        hint = "" if why.startswith("Invalid isoformat") else f": {why}"  # "day is out of range for month"
        if _PLUS_AS_SPACE.search(value):  # the query string's '+' is a space: '+08:00' came as ' 08:00'
            head, _, offset = value.rstrip().rpartition(" ")
            hint = f": a '+' in a query string is read as a space; write it %2B ({head}%2B{offset})"
        raise RequestRefused(JdCode.PARAMS_EMPTY, f"{name}: not a time (epoch seconds or ISO 8601){hint}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone) if _DATE.fullmatch(value.upper()) else UTC)
    try:
        moment.astimezone(UTC)  # a time of the years 1 to 9999 in UTC (9999-12-31T23:59:59-01:00, of 10000, was taken)
    except OverflowError:
        when = "before the year 1" if moment.year == 1 else "past the year 9999"
        raise RequestRefused(JdCode.PARAMS_EMPTY, f"{name}: {value} is {when}") from None
    return moment.timestamp()


def _is_date(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


# A date alone: a calendar date, or a week's (2026-W49-4; a week alone is its Monday), read in `[api] timezone` (a
# week's was read in UTC: 8 hours from its calendar date's in Shanghai, a tester's).
_DATE = re.compile(r"\d{4}-?\d{2}-?\d{2}|\d{4}-?W\d{2}(-?\d)?")
_PLUS_AS_SPACE = re.compile(r"\d \d{2}:?\d{2}\s*\Z")


def cursor_filter(after: str | None, offset: int) -> TaskPlace | None:
    """The place a task list goes on from, read from `after` (a page's `next`), which takes no offset."""
    if not after:
        return None  # as an empty since or until: the first page
    if offset:
        raise RequestRefused(JdCode.PARAMS_EMPTY, "offset: give either after (a page's next) or offset, not both")
    return read_place(after)


MAX_LOOKUP = 1000


class Lookup(BaseModel):
    """The body of /v1/tasks/lookup (its OpenAPI schema: the route reads the body as the JD routes do)."""

    taskids: list[str] = Field(max_length=MAX_LOOKUP)


def lookup_ids(params: dict[str, Any]) -> list[str]:
    """The task ids of a lookup's body, read as a JD list is (urls.split_list: a JSON array, a form's repeated
    field or its JSON text, or one string separated by ','); each once, whichever of its spellings (36 or 32
    characters) came, in the order first asked; what is no task id is left out, as an unknown id is."""
    value = params.get("taskids")
    if value is None:
        raise RequestRefused(JdCode.PARAMS_EMPTY, "taskids: a list of task ids is required")
    listed = split_list(value, "task id", JdCode.PARAMS_EMPTY)
    if len(listed) > MAX_LOOKUP:
        raise RequestRefused(JdCode.PARAMS_EMPTY, f"taskids: {len(listed)} ids; at most {MAX_LOOKUP} in one call")
    return list(dict.fromkeys(i for i in (normalize_task_id(raw) for raw in listed) if i is not None))


_TAKEN: dict[int, tuple[str, ...]] = {}  # the query parameters a route (its id()) takes


async def plain_query(request: Request) -> None:  # async: no thread of the pool for it
    """Refuse a query parameter the route does not take (`startTime`, a JD habit, or a typo: the answer was
    the whole list, unfiltered) or one given twice (`status=0&status=2`: the last alone counted, a filter half
    applied), as a parameter that does not parse is (400, JD code 2)."""
    params = request.query_params
    if not params:
        return
    route: APIRoute = request.scope["route"]
    taken = _TAKEN.get(id(route))
    if taken is None:
        taken = _TAKEN[id(route)] = _query_names(route.dependant)
    for name in params:
        if name not in taken:
            takes = f"it takes {', '.join(taken)}" if taken else "it takes none"
            said = f"not a parameter of this call ({takes})"  # its name shortened: one of 60,000 came back whole
            raise RequestValidationError([{"loc": ("query", shortened(name, 100)), "msg": said}])
        if len(given := params.getlist(name)) > 1:
            msg = f"given {len(given)} times: give it once (a list is not a filter here)"
            raise RequestValidationError([{"loc": ("query", name), "msg": msg}])


def _query_names(dependant: Dependant) -> tuple[str, ...]:
    own = tuple(param.alias for param in dependant.query_params)
    return own + tuple(name for sub in dependant.dependencies for name in _query_names(sub))


LOOKUP = "lookup"  # /v1/tasks/lookup: beside /v1/tasks/{taskid}


def native_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["native"], dependencies=[Depends(plain_query)])

    async def full_view(task: Task, offset: int, limit: int, state: ItemState | None = None) -> dict[str, object]:
        """The task as of one moment: its row (counters, progress) read with its items' counts and page."""
        detail = await service.store.task_detail(task.id, offset=offset, limit=limit, state=state)
        if detail is None:
            raise TaskNotFound()  # removed meanwhile (retention)
        return task_view(service, detail, offset, limit, state)

    @router.get("/tasks/{taskid}", response_model=TaskView, responses=ERRORS, summary="A task in full")
    async def get_task(
        taskid: str,
        caller: Caller,
        offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, Query(ge=0, le=10_000)] = 1000,
        state: Annotated[ItemState | None, Query(description="only the items in this state (failed, say)")] = None,
    ) -> Response:
        """Counts (overall and per node), progress, timestamps and each item's outcome, paged."""
        if taskid == LOOKUP:  # no task id: a GET of the lookup's path (it was "task not found", 404)
            raise HTTPException(405, headers={"Allow": "POST"})
        try:
            task = await service.get_task(service.authenticate(caller), taskid)
            return answered(await full_view(task, offset, limit, state))
        except Exception as exc:
            return native_error(exc)

    @router.get("/tasks/{taskid}/wait", response_model=TaskView, responses=ERRORS, summary="Wait for a task to end")
    async def wait_task(
        request: Request,
        taskid: str,
        caller: Caller,
        timeout: Annotated[float, Query(ge=0, le=60, allow_inf_nan=False, description="seconds, at most 60")] = 30,
    ) -> Response:
        """Long-poll: answers when the task has ended, or after `timeout` seconds with its state then (no items)."""
        try:

            async def gone() -> bool:  # closed, or half-closed: its answer then is the task as it is
                return client_ended(request.scope) or await request.is_disconnected()

            task = await service.wait(service.authenticate(caller), taskid, timeout, gone)
            if await request.is_disconnected():
                return Response(status_code=499)  # nobody to read it (499: nginx's word for it, in the access log)
            return answered(await full_view(task, 0, 0))
        except Exception as exc:
            return native_error(exc)

    @router.post("/tasks/{taskid}/cancel", response_model=TaskView, responses=CANCEL_ERRORS, summary="Cancel a task")
    async def cancel_task(taskid: str, caller: Caller) -> Response:
        """Pending items stop (failed, "cancelled"); running ones finish; the task ends as failed, reason
        "cancelled"."""
        try:
            task = await service.cancel(service.authenticate(caller), taskid)
            return answered(await full_view(task, 0, 0), writes=True)
        except Exception as exc:
            return native_error(exc, writes=True)

    @router.get("/tasks", response_model=TaskList, responses=ERRORS, summary="List tasks")
    async def list_tasks(
        caller: Caller,
        status: Annotated[int | None, Query(ge=0, le=2, description="0 succeeded, 1 in progress, 2 failed")] = None,
        kind: Annotated[TaskKind | None, Query()] = None,
        since: Annotated[str | None, Query(description="created at or after (epoch or ISO 8601)")] = None,
        until: Annotated[str | None, Query(description="created before (epoch or ISO 8601)")] = None,
        url: Annotated[str | None, Query(description="a URL of the task contains this")] = None,
        after: Annotated[
            str | None,
            Query(max_length=200, description="a page's `next`: the tasks after that page (with the same filters)"),
        ] = None,
        offset: Annotated[
            int, Query(ge=0, le=2**63 - 1, description="skip this many tasks (not with after, which is stable)")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        """The user's tasks, newest first, with their totals (no items). To walk the pages, give each page's
        `next` as the following call's `after`: each task is listed once however many tasks are submitted or
        deleted meanwhile (stepping `offset`, they move the pages: a task listed twice, another skipped)."""
        try:
            user = service.authenticate(caller)
            timezone = service.config.api.timezone
            start, end = epoch(since, "since", timezone), epoch(until, "until", timezone)
            if start is not None and end is not None and end < start:  # swapped: else "no tasks", as if none were
                raise RequestRefused(JdCode.PARAMS_EMPTY, f"until ({until}) is before since ({since}): swap them")
            where = TaskFilter(
                status=None if status is None else TaskStatus(status),
                kind=kind,
                since=start,
                until=end,
                url_contains=plain_filter(url, service.config.api.max_url_length),
                after=cursor_filter(after, offset),
                offset=offset,
                limit=limit + 1,  # one more: whether a next page has any
            )
            tasks = await service.store.list_tasks(user.name, where)
            page, more = tasks[:limit], len(tasks) > limit
            return answered(
                {
                    "tasks": [service.summary(t) for t in page],
                    "offset": offset,
                    "limit": limit,
                    "next": place_token(TaskPlace.of(page[-1])) if more else None,
                }
            )
        except Exception as exc:
            return native_error(exc)

    @router.post(
        f"/tasks/{LOOKUP}",
        response_model=TaskList,
        responses={
            **ERRORS,
            413: {"description": "A body over [api] max_body_bytes"},
            415: {"description": "A body neither JSON nor a form, or compressed"},
        },
        summary="Several tasks in one call",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": Lookup.model_json_schema()}}}
        },
    )
    async def lookup(request: Request, caller: Caller) -> Response:
        """The given tasks that exist and are the user's (others are left out), in the order asked. The body is
        read as a JD call's is (JSON whatever its label, or a form); credentials are checked first."""
        try:
            user = service.authenticate(caller)
            ids = lookup_ids(await read_params(request))
            tasks = await service.store.get_tasks(user.name, ids)
            return answered(
                {"tasks": [service.summary(t) for t in tasks], "offset": 0, "limit": len(ids), "next": None}
            )
        except Exception as exc:
            return native_error(exc)

    @router.get("/quota", response_model=QuotaView, responses=ERRORS, summary="Today's quota: used and left")
    async def quota(caller: Caller) -> Response:
        try:
            return answered(await service.quota(service.authenticate(caller)))
        except Exception as exc:
            return native_error(exc)

    return router
