"""Read a call: a legacy JD call's body (JSON or application/x-www-form-urlencoded) into a flat dict; the
address it came from."""

from __future__ import annotations

import codecs
import functools
import ipaddress
import json
import re
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import orjson
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..errors import JdCode, RequestRefused
from ..urls import shortened


class UnsupportedMediaType(Exception):
    """Not a JD call at all: answered with HTTP 415; the message says what to send instead."""


class Repeated(list[str]):
    """A form field given more than once, its values in order: a list to the fields that take one (publish_urls),
    refused by those that take one value (`repeated`)."""


def repeated(name: str, times: int) -> RequestRefused:
    """The refusal of a field that takes one value, given `times` times: code 2 (the parameters are wrong), not
    the field's own code for "empty" (3 for username), which it is not."""
    return RequestRefused(JdCode.PARAMS_EMPTY, f"{name} is given {times} times: give it once")


_FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 10_000  # parse_qs's bound: a bulk user's 10,000 URLs come as JSON, or as one field (a `,` string)
_LONG_LIST = "a long URL list: send it as JSON, or as one field separated by ','"  # said past MAX_FORM_FIELDS
_BOM = b"\xef\xbb\xbf"
# Python's own codecs, which no HTTP client means by a charset ("undefined" is what JavaScript writes for a
# variable never set).
_NOT_CHARSETS = frozenset({"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode"})
# ASCII, and what makes a charset read ASCII bytes as other text: UTF-7's '+' ('+ADw-' is '<', '+2AA-' a lone
# surrogate, which no store can hold: a tester's in one user's idempotency key failed other users' calls written
# with it), the escape sequences of ISO-2022 and HZ (`publish\x1b(B_urls` is publish_urls): a charset that
# reads them otherwise than ASCII does hides characters from filters in front and is refused (no HTTP client
# sends one: the WHATWG Encoding Standard drops UTF-7 and HZ).
_ASCII_PROBE = bytes(range(0x80)) + b"+AF8-+2AA-~{~}\x1b(B\x1b$B\x1b$)C"
# A field named as PHP and jQuery write a list's entries: publish_urls[] or publish_urls[0].
_LISTED = re.compile(r"([^[\]]+)\[([0-9]*)\]\Z")  # ASCII digits only (\d takes ١ too)
_BRACKETED = re.compile(r"([^\[]+)\[.*\]\Z")  # any other index: refused, not dropped


# The fields that hold URLs; the fields that may follow one written with its '?' unencoded (_no_query_cut).
_URL_FIELDS = frozenset({"publish_urls", "instances"})
_AFTER_A_RAW_QUERY = _URL_FIELDS | {"username", "signature"}  # (one given twice is refused as repeated)


_FORMLIKE = re.compile(rb"[A-Za-z_][A-Za-z0-9_%\[\]]*=[^{}]*\Z")  # name=value&…, sent labelled JSON


def where_params_go(request: Request) -> str:
    """What a refusal of missing parameters adds for a call that gave some in the URL's query string (as some
    HTTP helpers do with "params"): where they go."""
    return (
        " (the URL's query string is not read: send them in the body, as JSON or a form)" if request.url.query else ""
    )


def _no_params(request: Request) -> RequestRefused:
    """The refusal of a call whose body holds no parameters."""
    return RequestRefused(JdCode.PARAMS_EMPTY, f"parameters must not be empty{where_params_go(request)}")


NOT_AN_ADDRESS = "(X-Forwarded-For-no-address)"  # no space: a log line shows spaces in a caller as '?'


def caller_address(request: Request) -> str | None:
    """The address the call came from: the peer's, or what a trusted proxy said of it (uvicorn's proxy headers,
    from 127.0.0.1 by default: FORWARDED_ALLOW_IPS): NOT_AN_ADDRESS when that is no address (any text in
    X-Forwarded-For was put in the log's list of callers, a security tester's "(user 'bob'); from 10.0.0.1")."""
    if request.client is None:
        return None
    host = request.client.host
    if ":" in host:  # without an IPv6 zone id, which may be any text (a re-tester's "fe80::1%(user'mallory')")
        host = host.partition("%")[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return NOT_AN_ADDRESS
    return host  # as written (`::ffff:10.1.2.3`, not `::ffff:a01:203`)


async def read_params(request: Request) -> dict[str, Any]:
    # Every Content-Encoding field, each a list (the first alone was read: `identity` then `gzip` passed, a tester's).
    codings = [c.strip().lower() for field in request.headers.getlist("content-encoding") for c in field.split(",")]
    if coded := [c for c in codings if c not in ("", "identity")]:
        raise UnsupportedMediaType(f"unsupported content coding {', '.join(coded)!r}: send the body uncompressed")
    raw = (await request.body()).removeprefix(_BOM)  # some clients start UTF-8 with its byte order mark
    media, *options = (part.strip() for part in request.headers.get("content-type", "").split(";"))
    media = media.lower()
    charset = _charset(options)
    if raw.lstrip()[:1] == b"{":
        # JSON whatever its type says: old scripts post it unlabelled, as curl -d does labelled a form (which
        # cannot start so), or as text/json, application/x-json, application/octet-stream.
        media = "application/json"
    elif media in ("", "text/plain"):
        media = "application/json" if raw.lstrip()[:1] == b"[" else _FORM
    if media == "application/json" or media.endswith("+json"):
        if not raw.strip():
            raise _no_params(request)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
                raise RequestRefused(
                    JdCode.PARAMS_EMPTY, f"the body is not valid JSON in UTF-8 (JSON is read as UTF-8, not {charset})"
                ) from None
            try:
                raw.decode()
            except UnicodeDecodeError as bad:  # orjson said "str is not valid UTF-8: surrogates not allowed: line 1"
                raise RequestRefused(
                    JdCode.PARAMS_EMPTY,
                    f"the body is not valid JSON in UTF-8 (byte {bad.start} is not UTF-8: JSON is read as UTF-8; a "
                    "client on a Chinese system may send GBK: encode the body in UTF-8)",
                ) from None
            looks = (
                " (it looks like a form: label it application/x-www-form-urlencoded)" if _FORMLIKE.match(raw) else ""
            )
            raise RequestRefused(JdCode.PARAMS_EMPTY, f"the body is not valid JSON: {exc}{looks}") from None
        if not isinstance(data, dict):
            raise RequestRefused(JdCode.PARAMS_EMPTY, "the body must be a JSON object of parameters")
        if not data:
            raise _no_params(request)
        if (twice := _repeated_key(raw, data)) is not None:
            raise repeated(*twice)
        return data
    if media == _FORM:
        encoding = charset or "utf-8"
        try:
            _a_charset(encoding)
            if b"a=b&".decode(encoding, errors="replace") != "a=b&":  # UTF-16, UTF-32: it read as other
                raise UnsupportedMediaType(  # characters, and was answered "username must not be empty"
                    f"charset {charset!r} does not write a form's names, '=' and '&' in ASCII: send the form in UTF-8"
                )
            _refuse_hiding(encoding)
            text = raw.decode(encoding)  # the bytes as they are, then the %-escapes of the fields: both in it
            form = parse_qs(
                text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, encoding=encoding, errors="strict"
            )
        except LookupError:
            raise UnsupportedMediaType(f"unknown charset {charset!r}: send the form in UTF-8") from None
        except UnicodeError:
            label = "" if charset else " (a form in another charset says so: charset=gbk in its Content-Type)"
            raise RequestRefused(
                JdCode.PARAMS_EMPTY, f"the form body is not valid {charset or 'UTF-8'}{label}"
            ) from None
        except ValueError:
            raise RequestRefused(
                JdCode.PARAMS_EMPTY,
                f"the form has more than {MAX_FORM_FIELDS} fields ({_LONG_LIST})",
            ) from None
        if not form:
            raise _no_params(request)
        _no_query_cut(text, encoding)
        return _fields(form)
    if media == "multipart/form-data":  # PHP's curl with an array of fields (CURLOPT_POSTFIELDS) sends this
        # The charset as the multipart parser reads it (`charset=";utf-7"` was "" here, UTF-7 to it: a re-tester's).
        _, params = parse_options_header(request.headers.get("content-type", ""))
        read_as = params.get(b"charset", b"utf-8").decode("latin-1")
        try:
            _a_charset(read_as)
        except LookupError:
            raise UnsupportedMediaType(f"unknown charset {read_as!r}: send the form in UTF-8") from None
        _refuse_hiding(read_as)
        return _fields(await _multipart(request, raw))
    raise UnsupportedMediaType(
        f"unsupported content type {media!r}: send application/json or a form (application/x-www-form-urlencoded)"
    )


async def _multipart(request: Request, raw: bytes) -> dict[str, list[str]]:
    """A multipart/form-data body's fields, as a form's (`parse_qs`'s shape); a file among them is refused, and
    a body without its closing boundary (cut short: python-multipart read it, its last part dropped, and a
    re-tester's idempotency key with it: two tasks for one call)."""
    boundary = request.headers.get("content-type", "").partition("boundary=")[2].partition(";")[0].strip().strip('"')
    if boundary and not raw.rstrip().endswith(f"--{boundary}--".encode("latin-1", "replace")):
        raise RequestRefused(
            JdCode.PARAMS_EMPTY, f"the multipart body cannot be read: it does not end with its closing --{boundary}--"
        )
    try:
        async with request.form(max_files=0, max_fields=MAX_FORM_FIELDS) as parts:
            fields: dict[str, list[str]] = {}
            for name, value in parts.multi_items():
                assert isinstance(value, str)  # max_files=0: a file is refused first
                fields.setdefault(name, []).append(value)
    except HTTPException as exc:  # Starlette's words for what python-multipart refused
        why = str(exc.detail)
        if "files" in why:
            why = "a part is a file: give the parameters as fields"
        elif "fields" in why:
            why += f" ({_LONG_LIST})"
        raise RequestRefused(JdCode.PARAMS_EMPTY, f"the multipart body cannot be read: {why}") from None
    if not fields:
        raise _no_params(request)
    return fields


_KEYS_COUNTED = 16  # a JSON object with more keys is parsed again for its repeated ones rather than searched for each
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]*\Z")  # a key of these is spelled in JSON as it is, or with \u escapes


def _repeated_key(raw: bytes, data: dict[str, Any]) -> tuple[str, int] | None:
    """A key the JSON object `raw` (`data`, as orjson read it) gives more than once, and how many times: orjson
    keeps the last one silently ({"type": "file", "type": ""} was refused as "type must not be empty", and
    {"username": "a", "username": "b"} taken as b's call). A body in which each key's spelling is found once
    (nearly every one; PHP's \\/ in its URLs included) is not parsed again."""
    if (
        len(data) <= _KEYS_COUNTED
        and b"\\u" not in raw
        and all(_PLAIN_KEY.match(key) and raw.count(orjson.dumps(key)) == 1 for key in data)
    ):
        return None
    objects: list[list[tuple[str, Any]]] = []  # each object's pairs as it ends: the outermost last
    try:
        json.loads(raw, object_pairs_hook=objects.append)
    except (ValueError, RecursionError):  # what orjson read and the standard library does not (a long number)
        return None
    seen: dict[str, int] = {}
    for key, _ in objects[-1]:
        seen[key] = seen.get(key, 0) + 1
    return next(((key, times) for key, times in seen.items() if times > 1), None)


def _charset(options: list[str]) -> str:
    """The charset a Content-Type's parameters name ("" for none), spaces around '=' allowed (as the multipart
    parser reads them: `charset = utf-7` passed the check, and the parser read UTF-7); named twice, otherwise
    the second time, refused (the parser takes the last, this the first: a re-tester's)."""
    named = [
        value.strip().strip('"')
        for name, _, value in (o.partition("=") for o in options)
        if name.strip().lower() == "charset"
    ]
    if len({value.lower() for value in named}) > 1:
        raise UnsupportedMediaType(f"the charset is named {len(named)} times ({', '.join(named)}): name it once")
    return named[0] if named else ""


def _a_charset(charset: str) -> None:
    """LookupError unless `charset` names a text encoding a client may mean (not one of _NOT_CHARSETS: Python's
    `unicode-escape` read `\\x61` as `a` in a multipart form, a re-tester's)."""
    codec = codecs.lookup(charset)
    if not codec._is_text_encoding or codec.name in _NOT_CHARSETS:
        raise LookupError(charset)


def _refuse_hiding(charset: str) -> None:
    """Refuses a form in a charset that reads ASCII otherwise (_ASCII_PROBE; LookupError: no charset at all)."""
    if _hides(codecs.lookup(charset).name):
        raise UnsupportedMediaType(
            f"charset {charset!r} is not read: it reads some ASCII as other text (as UTF-7's '+ADw-' is '<', or an "
            "escape sequence of ISO-2022 or HZ nothing), hiding characters from filters: send the form in UTF-8"
        )


@functools.lru_cache(maxsize=64)
def _hides(codec: str) -> bool:
    """Whether the codec reads _ASCII_PROBE otherwise than ASCII does."""
    try:
        return _ASCII_PROBE.decode(codec, errors="replace") != _ASCII_PROBE.decode("ascii")
    except (LookupError, TypeError, ValueError):  # a codec that takes no error handler, say: not one to read
        return True


def _is_text(value: str) -> bool:
    """Whether `value` is Unicode text that UTF-8 writes (no lone surrogate: a store refuses one)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_query_cut(text: str, encoding: str) -> None:
    """Refuse a form that may have cut a URL's query at its '&': a field of URLs written with a '?' as it is
    (not `%3F`: a client that encodes its fields cannot have cut one), followed by a field other than more URLs,
    `username` or `signature`. `instances=http://a.com/img?w=100&h=200` read as `…?w=100` and a field `h` (a
    tester's purge of `img?w=100`, said to succeed), `…?id=9&type=file` as the refresh's `type` (a re-tester's):
    whether such a field is the form's or the URL's cannot be told, so it is asked."""
    after: tuple[str, str] | None = None  # the field of URLs before, and its value, when it holds a raw '?'
    for pair in text.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        name = unquote_plus(raw_name, encoding=encoding, errors="replace")
        base = name.partition("[")[0]
        if after is not None and base not in _AFTER_A_RAW_QUERY:
            raise RequestRefused(
                JdCode.ILLEGAL_URL,
                f"{after[0]} {shortened(after[1])!r} is followed by the field {shortened(name, 40)!r}: is it the "
                "rest of the URL's query, cut at its '&'? In a form, '&' separates the fields: write a URL's '&' "
                "as '%26' (curl --data-urlencode does), or give the URLs' field last, or send JSON",
            )
        raw_query = base in _URL_FIELDS and "?" in raw_value
        after = (name, unquote_plus(raw_value, encoding=encoding, errors="replace")) if raw_query else None


def _fields(form: dict[str, list[str]]) -> dict[str, Any]:
    """A form's fields: a repeated one (publish_urls=a&publish_urls=b) is a list (Repeated), a single one a
    string; entries named as PHP and jQuery name a list's (publish_urls[]=a, publish_urls[0]=a) are that list, in
    their order, also when there is one (a list of one URL, not a string that `split_list` would cut at its
    commas)."""
    for key, values in form.items():
        if not all(_is_text(value) for value in (key, *values)):
            raise RequestRefused(
                JdCode.PARAMS_EMPTY,
                f"the form's field {key.encode('utf-8', 'replace').decode()[:80]!r} is not text: it holds a lone "
                "surrogate (half of a UTF-16 pair), which no URL, name or key can hold: send the form in UTF-8",
            )
    fields: dict[str, Any] = {}
    # In the index's order, read as a number of any length without making it one (int() refuses 4,300 digits);
    # an entry without one comes after the highest before it, as PHP puts it: (digits' length, digits, turn).
    listed: dict[str, list[tuple[tuple[int, str, int], str]]] = {}
    indexed: set[tuple[str, str]] = set()  # (list, index) given: PHP keeps an index's last entry: which is meant?
    for key, values in form.items():
        if (entry := _LISTED.match(key)) is not None:
            entries = listed.setdefault(entry[1], [])
            if entry[2]:
                digits = entry[2].lstrip("0") or "0"
                position = (len(digits), digits, 0)
                if len(values) > 1 or (entry[1], digits) in indexed:
                    raise repeated(f"{entry[1]}[{digits[:20]}]", len(values) + ((entry[1], digits) in indexed))
                indexed.add((entry[1], digits))
            else:
                highest = max((p for p, _ in entries), default=(0, "", 0))
                position = (highest[0], highest[1], highest[2] + 1)
            entries.extend((position, value) for value in values)
        elif (odd := _BRACKETED.match(key)) is not None:
            name = odd[1]
            raise RequestRefused(
                JdCode.PARAMS_EMPTY, f"{key[:80]!r}: a list's entries are named {name}[] or {name}[0], {name}[1], …"
            )
        else:
            fields[key] = values[0] if len(values) == 1 else Repeated(values)
    for name, entries in listed.items():
        if name in fields:
            raise RequestRefused(
                JdCode.PARAMS_EMPTY, f"{name} is given both as {name} and as {name}[]: give it one way"
            )
        fields[name] = [value for _, value in sorted(entries, key=lambda e: e[0])]
    return fields


def text_field(params: dict[str, Any], name: str, code: JdCode, *, strip: bool = True) -> str:
    """A string field (without spaces around it, unless not `strip`); absent or empty gives "", given more than
    once is refused (`repeated`), any other type is refused with `code`."""
    value = params.get(name)
    if value is None:
        return ""
    if isinstance(value, Repeated):
        raise repeated(name, len(value))
    if not isinstance(value, str):
        raise RequestRefused(code, f"{name} must be a string")
    return value.strip() if strip else value
