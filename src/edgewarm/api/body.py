"""Read a legacy JD call's body: JSON or application/x-www-form-urlencoded, into a flat dict."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request

from ..errors import JdCode, RequestRefused


class UnsupportedMediaType(Exception):
    """Not a JD call at all: answered with HTTP 415."""


async def read_params(request: Request) -> dict[str, Any]:
    raw = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("", "text/plain"):
        # Old scripts post JSON without saying so.
        media = "application/json" if raw.lstrip()[:1] in (b"{", b"[") else "application/x-www-form-urlencoded"
    if media == "application/json" or media.endswith("+json"):
        if not raw.strip():
            raise RequestRefused(JdCode.PARAMS_EMPTY, "parameters must not be empty")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RequestRefused(JdCode.PARAMS_EMPTY, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RequestRefused(JdCode.PARAMS_EMPTY, "the body must be a JSON object of parameters")
        if not data:
            raise RequestRefused(JdCode.PARAMS_EMPTY, "parameters must not be empty")
        return data
    if media == "application/x-www-form-urlencoded":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRefused(JdCode.PARAMS_EMPTY, "the form body is not valid UTF-8") from None
        try:
            form = parse_qs(text, keep_blank_values=True, max_num_fields=10_000)
        except ValueError:
            raise RequestRefused(JdCode.PARAMS_EMPTY, "the form has more than 10000 fields") from None
        if not form:
            raise RequestRefused(JdCode.PARAMS_EMPTY, "parameters must not be empty")
        # A repeated field (publish_urls=a&publish_urls=b) is a list; a single one a string.
        return {key: values[0] if len(values) == 1 else values for key, values in form.items()}
    raise UnsupportedMediaType(media)


def text_field(params: dict[str, Any], name: str, code: JdCode) -> str:
    """A string field; absent or empty gives "", any other type is refused with `code`."""
    value = params.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestRefused(code, f"{name} must be a string")
    return value.strip()
