"""The JD Cloud CDN wire format: /api/prefetch, /api/prefetchQuery, /api/refresh, /api/refreshQuery."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..errors import JdCode, RequestRefused
from ..models import TaskKind
from ..service import Credentials, Service, SubmitOptions
from ..urls import split_list
from .body import Repeated, caller_address, read_params, repeated, text_field, where_params_go
from .responses import answered, jd_error, jd_ok
from .schemas import EXTENSIONS, URL_LIST, QueryAnswer, SubmitAnswer, jd_body


def credentials_of(params: dict[str, Any], request: Request) -> Credentials:
    return Credentials.as_sent(
        text_field(params, "username", JdCode.USERNAME_EMPTY, strip=False),
        text_field(params, "signature", JdCode.SIGNATURE_EMPTY),
        caller_address(request),
    )


def require(credentials: Credentials, present: bool, code: JdCode, message: str) -> None:
    """JD reports a missing list or task id only once username and signature are there."""
    if credentials.username and credentials.signature and not present:
        raise RequestRefused(code, message)


_MISSING = frozenset(
    {JdCode.USERNAME_EMPTY, JdCode.SIGNATURE_EMPTY, JdCode.TYPE_EMPTY, JdCode.LIST_EMPTY, JdCode.TASKID_EMPTY}
)


def refused(exc: Exception, request: Request, *, writes: bool = False) -> Response:
    """`jd_error`, a missing field's refusal told where the parameters go when some came in the URL's query
    string (a tester's `?username=…` beside a body holding the rest had a bare "username must not be empty")."""
    if isinstance(exc, RequestRefused) and exc.code in _MISSING:
        exc = RequestRefused(exc.code, exc.message + where_params_go(request))
    return jd_error(exc, writes=writes)


def flag(params: dict[str, Any], name: str) -> bool:
    """A boolean extension field, from JSON (true) or a form ("true", "1")."""
    value = params.get(name)
    if isinstance(value, Repeated):
        raise repeated(name, len(value))
    if isinstance(value, bool):
        return value
    if value in (None, "", "0", "false", "False", 0):
        return False
    if value in ("1", "true", "True", 1):
        return True
    raise RequestRefused(JdCode.PARAMS_EMPTY, f"{name}: a boolean was expected (true or false), not {value!r}")


def submit_options(params: dict[str, Any], request: Request) -> SubmitOptions:
    """The extension fields: `idempotency_key` (or the `Idempotency-Key` header) and `callback_url`."""
    key = text_field(params, "idempotency_key", JdCode.PARAMS_EMPTY)
    given = params.get("idempotency_key")
    if isinstance(given, str) and given and not key:  # dropped, it made a second task of a retry (a developer's " ")
        raise RequestRefused(JdCode.PARAMS_EMPTY, "idempotency_key: only spaces; give a key, or none")
    if len(headers := request.headers.getlist("idempotency-key")) > 1:  # the first alone was read (a tester's)
        raise repeated("the Idempotency-Key header", len(headers))
    header = headers[0] if headers else ""
    if key and header and key.strip() != header.strip():
        raise RequestRefused(JdCode.PARAMS_EMPTY, "idempotency_key and the Idempotency-Key header differ: send one")
    key = key or header
    callback = text_field(params, "callback_url", JdCode.ILLEGAL_URL)
    return SubmitOptions(idempotency_key=key.strip() or None, callback_url=callback or None)


def _not_a_call(description: str, error: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": {"error": error}}}}


# What is no JD call at all keeps its HTTP status (every JD error is a 200 with its code): said in the OpenAPI
# document, which listed the 200 alone.
NOT_JD_CALLS: dict[int | str, dict[str, Any]] = {
    405: _not_a_call("Not a POST (`Allow: POST`)", "method GET not allowed here: use POST"),
    413: _not_a_call("A body over [api] max_body_bytes", "request body too large: over [api] max_body_bytes"),
    415: _not_a_call(
        "A body neither JSON, a form nor multipart, or compressed",
        "unsupported content type 'application/xml': send application/json or a form",
    ),
}


def legacy_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["JD Cloud CDN (legacy)"])

    @router.post(
        "/api/prefetch",
        responses=NOT_JD_CALLS,
        response_model=SubmitAnswer,
        summary="Prefetch (warm) URLs on every cache node",
        openapi_extra=jd_body(
            {
                "publish_urls": URL_LIST,
                "refresh": {
                    "type": "boolean",
                    "default": False,
                    "description": "edgewarm extension: purge each URL on a node before warming it there",
                },
                **EXTENSIONS,
            },
            ["publish_urls"],
        ),
    )
    async def prefetch(request: Request) -> Response:
        try:
            params = await read_params(request)
            credentials = credentials_of(params, request)
            raw_urls = params.get("publish_urls")
            require(credentials, raw_urls not in (None, "", []), JdCode.LIST_EMPTY, "publish_urls must not be empty")
            user = service.authenticate(credentials)
            with service.refusals_told(user, credentials.caller):
                refresh_first = flag(params, "refresh")
                options = submit_options(params, request)
                task = await service.submit_prefetch(
                    user, split_list(raw_urls), refresh_first=refresh_first, options=options
                )
            return jd_ok(taskid=task.id, writes=True)
        except Exception as exc:
            return refused(exc, request, writes=True)

    @router.post(
        "/api/refresh",
        responses=NOT_JD_CALLS,
        response_model=SubmitAnswer,
        summary="Refresh (purge) files or directories on every cache node",
        openapi_extra=jd_body(
            {"instances": URL_LIST, "type": {"type": "string", "enum": ["file", "dir"]}, **EXTENSIONS},
            ["instances", "type"],
        ),
    )
    async def refresh(request: Request) -> Response:
        try:
            params = await read_params(request)
            credentials = credentials_of(params, request)
            given = params.get("type")
            require(credentials, given not in (None, ""), JdCode.TYPE_EMPTY, "type must not be empty")
            raw = params.get("instances")
            require(credentials, raw not in (None, "", []), JdCode.LIST_EMPTY, "instances must not be empty")
            user = service.authenticate(credentials)  # missing fields first, then the caller, then the values
            with service.refusals_told(user, credentials.caller):
                kind = text_field(params, "type", JdCode.BAD_TYPE)
                if not kind:
                    raise RequestRefused(JdCode.TYPE_EMPTY, "type must not be empty")
                if kind not in ("file", "dir"):
                    raise RequestRefused(JdCode.BAD_TYPE, f"type must be 'file' or 'dir', not {kind!r}")
                options = submit_options(params, request)
                task = await service.submit_refresh(user, split_list(raw), kind, options=options)
            return jd_ok(taskid=task.id, writes=True)
        except Exception as exc:
            return refused(exc, request, writes=True)

    @router.post(
        "/api/refreshQuery",
        responses=NOT_JD_CALLS,
        response_model=QueryAnswer,
        summary="Status of a refresh task",
        openapi_extra=jd_body({"taskid": {"type": "string"}}, ["taskid"]),
    )
    async def refresh_query(request: Request) -> Response:
        return await query(request, TaskKind.REFRESH)

    @router.post(
        "/api/prefetchQuery",
        responses=NOT_JD_CALLS,
        response_model=QueryAnswer,
        summary="Status of a prefetch task",
        openapi_extra=jd_body({"taskid": {"type": "string"}}, ["taskid"]),
    )
    async def prefetch_query(request: Request) -> Response:
        return await query(request, TaskKind.PREFETCH)

    async def query(request: Request, kind: TaskKind) -> Response:
        try:
            params = await read_params(request)
            credentials = credentials_of(params, request)
            given = params.get("taskid")
            require(credentials, given not in (None, ""), JdCode.TASKID_EMPTY, "taskid must not be empty")
            user = service.authenticate(credentials)  # the credentials before the task id's type (a reviewer's)
            raw_id = text_field(params, "taskid", JdCode.TASKID_EMPTY)
            if not raw_id:
                raise RequestRefused(JdCode.TASKID_EMPTY, "taskid must not be empty")
            task = await service.get_task(user, raw_id, kind)
            data = {"taskid": task.id, "status": int(task.status), "msg": service.status_text(task.status)}
            return answered({"status": 0, "data": data})
        except Exception as exc:
            return refused(exc, request)

    return router
