"""JSON answers, and the one table from errors to answers."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.responses import Response

from ..errors import (
    OUTCOME_UNKNOWN_SAID,
    JdCode,
    ListTooLong,
    QuotaExceeded,
    RequestRefused,
    StoreError,
    StoreFull,
    StoreOutcomeUnknown,
    TaskNotFound,
)
from ..logs import RepeatedFailure
from .body import UnsupportedMediaType

log = logging.getLogger("edgewarm.api")

# A store down fails every call: its log says so once, then once a minute with a count, then "works again".
# Reads and writes each their own: a store that answers reads and refuses writes (a full disk) logged each
# submission's failure and the next query's "works again", two lines a call, while writes never worked.
STORE_READS = RepeatedFailure(log, "answering calls from the store")
STORE_WRITES = RepeatedFailure(log, "writing calls' tasks to the store (submissions, cancels)")


def _store_log(writes: bool) -> RepeatedFailure:
    return STORE_WRITES if writes else STORE_READS


SUCCESS_MSG = "成功"  # JD's top-level msg on success, in every language setting, as legacy clients compare it


class JSONResponse(Response):
    media_type = "application/json; charset=utf-8"  # said: older clients read a body without it as ISO-8859-1

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def answered(content: Any, *, writes: bool = False) -> JSONResponse:
    """A call answered from the store (after failures, the log says the store works again); `writes`: a call
    that writes (a submission, a cancel)."""
    _store_log(writes).worked()
    return JSONResponse(content)


def jd_ok(*, writes: bool = False, **fields: Any) -> JSONResponse:
    return answered({"status": 0, "msg": SUCCESS_MSG, **fields}, writes=writes)


def jd_error(exc: BaseException, *, writes: bool = False) -> JSONResponse:
    """A JD answer for an error: HTTP 200 with the JD code in `status`, as legacy clients expect. `writes`: the
    call writes (a submission, a cancel)."""
    if isinstance(exc, UnsupportedMediaType):
        return unsupported_media(exc)
    if isinstance(exc, RequestRefused):
        return JSONResponse({"status": int(exc.code), "msg": exc.message})
    if isinstance(exc, StoreError):
        _store_log(writes).failed(exc)
        return JSONResponse({"status": int(JdCode.INTERNAL), "msg": f"internal error: {_unavailable(exc)}"})
    log.error("internal error", exc_info=exc)
    return JSONResponse({"status": int(JdCode.INTERNAL), "msg": "internal error"})


def _unavailable(exc: StoreError) -> str:
    """What a caller is told of a store that failed its call: nothing was done (its disk full, or not answering), or
    (its answer lost) maybe."""
    if isinstance(exc, StoreOutcomeUnknown):
        return (
            f"{OUTCOME_UNKNOWN_SAID}: send the call again with the same idempotency key (a new one may make a second "
            "task)"
        )
    if isinstance(exc, StoreFull):
        return "the store's disk is full: nothing was done; send the call again once space has been freed"
    return "the store is unavailable"


_NATIVE_HTTP_STATUS = {
    JdCode.SIGNATURE_INCORRECT: 401,
    JdCode.USER_UNKNOWN: 401,
    JdCode.USERNAME_EMPTY: 401,
    JdCode.SIGNATURE_EMPTY: 401,
    # Code 1 is also "not found" and the daily quota (told apart by their class, below); what is left is a
    # refusal by the task's state, e.g. cancelling a task that has already ended: retrying cannot help.
    JdCode.FAILURE: 409,
}


def native_status(exc: RequestRefused) -> int:
    """The HTTP status of a refusal on a native route."""
    if isinstance(exc, TaskNotFound):
        return 404
    if isinstance(exc, QuotaExceeded):
        return 429  # the daily quota: comes back with the next day
    if isinstance(exc, ListTooLong) and exc.unread:
        return 429  # the caller's own lists at once: ask again (it was 400, as a bad parameter: a dashboard tester's)
    return _NATIVE_HTTP_STATUS.get(exc.code, 400)


def native_error(exc: BaseException, *, writes: bool = False) -> JSONResponse:
    """Native routes: a real HTTP status, with the JD code beside it. `writes`: the call writes (a cancel)."""
    if isinstance(exc, UnsupportedMediaType):
        return unsupported_media(exc)
    if isinstance(exc, RequestRefused):
        again = {"Retry-After": "1"} if isinstance(exc, ListTooLong) and exc.unread else None
        said = {"code": int(exc.code), "error": exc.message}
        return JSONResponse(said, status_code=native_status(exc), headers=again)
    if isinstance(exc, StoreError):
        _store_log(writes).failed(exc)
        return JSONResponse({"code": int(JdCode.INTERNAL), "error": _unavailable(exc)}, status_code=503)
    log.error("internal error", exc_info=exc)
    return JSONResponse({"code": int(JdCode.INTERNAL), "error": "internal error"}, status_code=500)


def unsupported_media(exc: UnsupportedMediaType) -> JSONResponse:
    """Not a JD call at all: a real HTTP 415."""
    return JSONResponse({"error": str(exc)}, status_code=415)
