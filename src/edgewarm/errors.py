"""One exception tree for edgewarm. Driver and HTTP-library errors are translated at the boundary.

EdgewarmError
├── ConfigError            a config file that cannot be used; names the key
├── StoreError             the store failed (driver errors are wrapped here)
│   ├── StoreOutcomeUnknown a write's answer was lost: it may have been made
│   ├── StoreDamaged       the database file is damaged
│   ├── StoreFull          the store's disk is full: writes are refused, reads answered
│   └── SchemaVersionError the schema is older or newer than this code: run `edgewarm db upgrade`
└── RequestRefused         a JD call refused with a JD error code (answered as HTTP 200)
    ├── QuotaExceeded
    └── TaskNotFound
"""

from __future__ import annotations

import enum


class JdCode(enum.IntEnum):
    """JD Cloud CDN's error codes (the subset that applies)."""

    OK = 0
    INTERNAL = -1
    FAILURE = 1
    PARAMS_EMPTY = 2
    USERNAME_EMPTY = 3
    SIGNATURE_EMPTY = 4
    TYPE_EMPTY = 5
    LIST_EMPTY = 6
    SIGNATURE_INCORRECT = 7
    TOO_MANY_REFRESH_URLS = 9
    TOO_MANY_PREFETCH_URLS = 10
    TASKID_EMPTY = 11
    REFRESH_DOMAIN_NOT_YOURS = 15
    BAD_TYPE = 16
    ILLEGAL_URL = 17
    DOMAIN_NOT_YOURS = 18
    USER_UNKNOWN = 20
    TOO_MANY_DIRS = 46
    DUPLICATE_URLS = 47


# The refusals of a call's credentials, by the reason counted (edgewarm_credentials_refused_total) and logged.
CREDENTIAL_REFUSALS = {
    JdCode.USERNAME_EMPTY: "no_username",
    JdCode.SIGNATURE_EMPTY: "no_signature",
    JdCode.USER_UNKNOWN: "unknown_user",
    JdCode.SIGNATURE_INCORRECT: "wrong_signature",
}


# The refusals of a known user's submission, by the reason counted (edgewarm_submissions_refused_total) and
# logged; every other code counts as "other" (QuotaExceeded as "quota": its code, 1, is not its own).
SUBMISSION_REFUSALS = {
    JdCode.ILLEGAL_URL: "bad_url",
    JdCode.DOMAIN_NOT_YOURS: "domain_not_yours",
    JdCode.REFRESH_DOMAIN_NOT_YOURS: "domain_not_yours",
    JdCode.DUPLICATE_URLS: "duplicate_urls",
    JdCode.TOO_MANY_PREFETCH_URLS: "too_many_urls",
    JdCode.TOO_MANY_REFRESH_URLS: "too_many_urls",
    JdCode.TOO_MANY_DIRS: "too_many_urls",
}
SUBMISSION_REFUSAL_REASONS = ("quota", *sorted(set(SUBMISSION_REFUSALS.values())), "other")


class EdgewarmError(Exception):
    """Root of every error edgewarm raises on purpose."""


class ConfigError(EdgewarmError):
    """The configuration is invalid; `key` names the offending key (e.g. `nodes[1].url`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class StoreError(EdgewarmError):
    """The store could not do what was asked."""


class StoreOutcomeUnknown(StoreError):
    """A write was sent whole and its answer lost, and the store has not answered since: it may have been made."""


class StoreDamaged(StoreError):
    """The database file is damaged: nothing that reads the damaged part works until it is restored."""


class StoreFull(StoreError):
    """The store's disk is full (SQLITE_FULL; PostgreSQL's SQLSTATE 53100): the write was refused, nothing of it
    made; the store takes no writes until space is freed."""


class SchemaVersionError(StoreError):
    """The database schema does not match this version of edgewarm."""


class RequestRefused(EdgewarmError):
    """A legacy JD call was refused; `code` is the JD error code put in the answer's `status`."""

    def __init__(self, code: JdCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# How an answer says the store did not confirm a submission that may have been made (StoreOutcomeUnknown): the
# client reads it as `maybe_done` (it said False, and a retry with a new key made a second task: an integrator's).
OUTCOME_UNKNOWN_SAID = "the store did not confirm the task, which may have been made"


class QuotaExceeded(RequestRefused):
    def __init__(self, message: str) -> None:
        super().__init__(JdCode.FAILURE, message)


def submission_refusal(exc: RequestRefused) -> str:
    """The reason a submission's refusal is counted and logged under (SUBMISSION_REFUSAL_REASONS)."""
    if isinstance(exc, QuotaExceeded):
        return "quota"
    return SUBMISSION_REFUSALS.get(exc.code, "other")


class ListTooLong(RequestRefused):
    """A task list read longer than LIST_SECONDS (a `url` keyword over a user's many tasks): refused, not
    read on, so that the other users' views, which wait behind it, are not held for seconds."""

    def __init__(
        self, seconds: float, *, waited: bool = False, waiting: float = 0.0, behind_others: bool = False
    ) -> None:
        self.unread = waited  # its turn never came: lists at once were the cause (HTTP 429, not 400)
        narrow = (
            "narrow it (since and until, kind, status), the url keyword most: it is looked for in every URL of the "
            "tasks it reads"
        )
        if waited and behind_others:  # its own lists read, it waited for a slot of all users' (it said "your lists")
            said = (
                f"the list waited {seconds:g} s for its turn among all users' lists (a few are read at once) and was "
                "not read: ask again"
            )
        elif waited:  # its time went waiting for its turn: the caller's own lists are read one at a time
            said = (
                f"the list waited {seconds:g} s for its turn (your lists are read one at a time) and was not read: "
                "ask for fewer at once, or ask again"
            )
        elif waiting >= seconds / 2:  # stopped, most of its time gone waiting for its turn (a re-tester's)
            said = (
                f"the list waited {waiting:.1f} s of its {seconds:g} s for its turn (your lists are read one at a "
                f"time) and its read did not end in the rest: ask for fewer at once, or {narrow}"
            )
        else:
            said = f"the list took over {seconds:g} s to read and was stopped: {narrow}"
        super().__init__(JdCode.PARAMS_EMPTY, said)


LIST_SECONDS = 2.0  # a task list is read for this long at most (ListTooLong)


class TaskNotFound(RequestRefused):
    def __init__(self, message: str = "task not found") -> None:
        super().__init__(JdCode.FAILURE, message)


REASON_CHARS = 300  # an exception's words in a message: at most this long (a parser's may quote a whole head)


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """`text` on one line (its line breaks and runs of spaces made one space), cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def reason_of(exc: BaseException) -> str:
    """An exception's words for a message, on one line and bounded, or its type's name when it has none (a bare
    TimeoutError)."""
    return one_line(str(exc)) or type(exc).__name__


def described(exc: BaseException) -> str:
    """`Type: words`, or the type alone (a bare TimeoutError: "no answer in time") when it has no words."""
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text}"
    return f"{type(exc).__name__} (no answer in time)" if isinstance(exc, TimeoutError) else type(exc).__name__
