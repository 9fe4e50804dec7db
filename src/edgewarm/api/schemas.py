"""Shapes of requests and answers, for the OpenAPI document at /docs (the handlers build answers directly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

URL_LIST = {
    "oneOf": [
        {"type": "array", "items": {"type": "string", "format": "uri"}},
        {"type": "string", "description": "URLs separated by ','"},
    ]
}


EXTENSIONS = {
    "idempotency_key": {
        "type": "string",
        "maxLength": 200,
        "description": "edgewarm extension (or the Idempotency-Key header): a retried submission with the same key "
        "returns the first task instead of making a second",
    },
    "callback_url": {
        "type": "string",
        "description": "edgewarm extension: POST the task summary here when it ends (host in [webhooks] "
        "allowed_hosts), signed X-Edgewarm-Signature: sha256=HMAC(body, secret)",
    },
}


def jd_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """openapi_extra for a JD call: the same fields as JSON or as a form (urlencoded or multipart)."""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "example": "jcloud_00"},
            "signature": {
                "type": "string",
                "description": "md5(yyyymmdd + username + secret), lower-case hex",
            },
            **properties,
        },
        "required": ["username", "signature", *required],
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
                "multipart/form-data": {"schema": schema},
            },
        }
    }


class SubmitAnswer(BaseModel):
    status: int = Field(description="0 on success, else a JD error code")
    msg: str
    taskid: str | None = Field(None, description="UUIDv4, 36 characters")


class QueryData(BaseModel):
    taskid: str
    status: int = Field(description="0 succeeded, 1 in progress, 2 failed")
    msg: str


class QueryAnswer(BaseModel):
    status: int = Field(description="0 on success, else a JD error code")
    msg: str | None = None
    data: QueryData | None = None


class ItemView(BaseModel):
    url: str
    node: str
    action: str = Field(description="warm | purge | purge_dir")
    state: str = Field(description="waiting | pending | running | succeeded | failed")
    http_status: int | None
    cache_state: str | None = Field(description="HIT, MISS, EXPIRED, BYPASS… as the node reported it")
    bytes: int | None
    attempts: int
    error: str | None = Field(description="why it failed, or why it waits (pending)")
    note: str | None = Field(
        description="what a succeeded item did, where one answer does not say it (a directory "
        "purged URL by URL: how many URLs)"
    )
    updated_at: str | None


class Counts(BaseModel):
    waiting: int
    pending: int
    running: int
    succeeded: int
    failed: int


class TaskSummary(BaseModel):
    taskid: str
    kind: str = Field(description="prefetch | refresh")
    status: int = Field(description="0 succeeded, 1 in progress, 2 failed")
    msg: str
    reason: str | None = Field(description='why it ended early: "cancelled"')
    cancelled_by: str | None = Field(
        None, description='with reason "cancelled": "user" (its user, by the API) or "operator" (edgewarm admin cancel)'
    )
    created_at: str
    finished_at: str | None
    duration_seconds: float | None
    total: int = Field(description="items: URLs × nodes (× steps)")
    succeeded: int
    failed: int
    progress: float = Field(description="finished items / all items, 0..1")


class WebhookView(BaseModel):
    url: str = Field(description="the callback URL, its password, query values and fragment shown as ***")
    state: str | None = Field(description="null while the task runs, then pending, delivered or failed")
    attempts: int
    error: str | None = Field(description="the last attempt's error")
    next_attempt_at: str | None = Field(description="while pending: when it is due (or its attempt in flight ends)")


class TaskView(TaskSummary):
    webhook: WebhookView | None = Field(None, description="only for a task submitted with a callback_url")
    counts: Counts
    nodes: dict[str, Counts] = Field(description="counts per node")
    items: list[ItemView]
    offset: int
    limit: int
    state: str | None = Field(None, description="when asked with state=: the items' state (page to counts[state])")


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    offset: int
    limit: int
    next: str | None = Field(
        None,
        description="more tasks follow: give this as `after` for the next page (an opaque cursor, stable while "
        "tasks are submitted or deleted); null on the last page",
    )


class Usage(BaseModel):
    used: int
    limit: int
    left: int


class QuotaView(BaseModel):
    day: str = Field(description="yyyymmdd in the service's time zone")
    timezone: str
    urls: Usage
    dirs: Usage
    urls_per_call: int
    dirs_per_call: int
    max_body_bytes: int = Field(description="the largest body a call may send (413 over it): long URLs, fewer a call")
    domains: list[str] = Field(description="the user's domains ('*.x': every name under x), as the calls check them")


class NativeError(BaseModel):
    code: int = Field(description="the JD error code")
    error: str
