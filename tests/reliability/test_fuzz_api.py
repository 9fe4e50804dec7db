"""Issue #7, part 1: fuzzing every endpoint with both body encodings (Hypothesis, in process).

Properties held for every generated request:
- no answer is a 5xx or carries a stack trace;
- a JD route answers HTTP 200 (413 for a body over the limit, 415 for a content type it does not read); a
  refusal has a JD code (never -1, "internal error", while the store is healthy) in `status` and a non-empty
  `msg`; an acceptance has a UUIDv4 task id;
- the store holds no half-written task: a refused call adds no task, item or quota; an accepted one adds
  exactly one task with U x N items (twice that with `refresh`) and charges U;
- an accepted URL is one a cache can take (printable ASCII, http/https, no user info or fragment, a domain of
  the caller), and a call that is plainly valid is accepted;
- a task is visible only to its owner.

The number of examples per test is `scale(fast, long)`: EDGEWARM_LONG=1 runs the long version, with new random
examples each run; the test command's short version runs the same examples each time (a failure it finds is one
the code brought, not one the dice found).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgewarm.config import parse_config

from .support import (
    DAY,
    JD_CODES,
    LONG,
    OTHER,
    OTHER_SECRET,
    SECRET,
    USER,
    Census,
    SyncApi,
    base_config,
    is_task_id,
    scale,
    signature,
)

NODES = 3
MAX_BODY = 1 << 20  # the default api.max_body_bytes
MAX_URL = 4096
EXAMPLES = scale(150, 3000)
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not LONG,  # the test command's run tests the same examples each time; EDGEWARM_LONG=1 explores
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
SUBMIT = ("/api/prefetch", "/api/refresh")
QUERY = ("/api/prefetchQuery", "/api/refreshQuery")
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "application/vnd.api+json")
FORM_TYPES = ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8")
FORM_FIELDS_LIMIT = 10_000  # parse_qs(max_num_fields=...) in edgewarm.api.body
UNREAD_TYPES = ("application/xml", "image/png")
MULTIPART = "multipart/form-data; boundary=x"  # read as a form (PHP's curl): corrupted, a JD code
MISSING = object()


# -- the app, with a few tasks to look for ---------------------------------------------------------------------


class Fuzzed:
    """The app, plus the tasks made before fuzzing: USER's prefetch and refresh task, OTHER's prefetch task."""

    def __init__(self) -> None:
        self.sync = SyncApi(parse_config(base_config()))
        self.own_prefetch = self._submit("/api/prefetch", USER, SECRET, {"publish_urls": ["http://www.example.test/p"]})
        self.own_refresh = self._submit(
            "/api/refresh", USER, SECRET, {"instances": ["http://www.example.test/r"], "type": "file"}
        )
        self.foreign = self._submit("/api/prefetch", OTHER, OTHER_SECRET, {"publish_urls": ["http://www.other.test/o"]})
        self.owned = {USER: {self.own_prefetch, self.own_refresh}, OTHER: {self.foreign}}
        self.kind = {self.own_prefetch: "prefetch", self.own_refresh: "refresh", self.foreign: "prefetch"}

    def _submit(self, path: str, user: str, secret: str, fields: dict[str, Any]) -> str:
        body = {"username": user, "signature": signature(user, secret), **fields}
        answer = self.sync.request("POST", path, json=body).json()
        assert answer["status"] == 0, answer
        taskid: str = answer["taskid"]
        return taskid

    def owner_of(self, taskid: str) -> str | None:
        return next((user for user, ids in self.owned.items() if taskid in ids), None)

    def census(self) -> Census:
        return self.sync.census()


@pytest.fixture
def app() -> Iterator[Fuzzed]:
    fuzzed = Fuzzed()
    yield fuzzed
    fuzzed.sync.close()


# -- strategies --------------------------------------------------------------------------------------------------

OWNED_HOSTS = [
    "www.example.test",
    "WWW.Example.TEST",
    "www.example.test.",
    "a.img.example.test",
    "b-2.c.img.example.test",
]
HOSTILE_HOSTS = [
    "www.other.test",
    "img.example.test",
    "example.test",
    "xwww.example.test",
    "evil.test",
    "localhost",
    "127.0.0.1",
    "127.0.0.1:9",
    "[::1]",
    "[::1]:8080",
    "[::ffff:127.0.0.1]",
    "[fe80::1%25eth0]",
    "2130706433",
    "0177.0.0.1",
    "0x7f000001",
    "bücher.example.test",
    "xn--bcher-kva.img.example.test.evil.test",
    "www.example.test@evil.test",
    "user:pw@www.example.test",
    "evil.test#@www.example.test",
    "evil.test\\@www.example.test",
    "www.example.test:0",
    "www.example.test:99999",
    "www.example.test:-1",
    "www.example.test:http",
    "www.example.test..",
    "-www.example.test",
    "",
]
NASTY = [
    "\r\n",
    "\r\nX-Injected: yes",
    "\r",
    "\n",
    " ",
    "\t",
    "\x00",
    "\x7f",
    "@",
    "#",
    "#frag",
    "é",
    "\u202e",
    "\ufeff",
    "%0d%0a",
    "%0D%0AX-Injected:%20yes",
    "/..",
    "/../..",
    "/./",
    "[::1]",
    ":",
    "?",
    "\\",
    "%",
    ",",
    '"',
    "<script>",
    "{}",
    "|",
    "`",
    "http://",
]
# Everything RFC 3986 allows in a path or query, except ',' (it splits JD's comma strings) and '#': its
# characters, and '%' as it allows it, beginning an escape of two hex digits.
PATH_CHARS = "abcxyzABCXYZ0189-._~!$&'()*+;=:@/"
ESCAPES = ["%20", "%2F", "%2f", "%41", "%7e", "%7E", "%25", "%C3%A9"]

segment = st.lists(st.one_of(st.sampled_from(list(PATH_CHARS)), st.sampled_from(ESCAPES)), max_size=12).map("".join)
valid_url = st.builds(
    lambda scheme, host, port, path, query: f"{scheme}://{host}{port}{path}{query}",
    st.sampled_from(["http", "https", "HTTP", "hTtPs"]),
    st.sampled_from(OWNED_HOSTS),
    st.sampled_from(["", "", ":80", ":8080", ":65535"]),
    st.lists(segment, max_size=4).map(lambda segs: "/" + "/".join(segs)),
    st.one_of(st.just(""), segment.map(lambda q: "?" + q)),
)


def insert(base: str, piece: str, where: int) -> str:
    at = where % (len(base) + 1)
    return base[:at] + piece + base[at:]


mutated_url = st.builds(insert, valid_url, st.sampled_from(NASTY), st.integers(0, 200))
hostile_url = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}{path}",
    st.sampled_from(["http", "https", "ftp", "file", "javascript", "gopher", "HTTP", ""]),
    st.sampled_from(HOSTILE_HOSTS),
    st.sampled_from(["/", "/a", "", "/a/../../etc/passwd", "?q", "#x"]),
)
long_url = st.integers(MAX_URL - 40, 12_000).map(lambda n: "http://www.example.test/" + "a" * n)
any_url = st.one_of(
    valid_url, valid_url, valid_url, mutated_url, hostile_url, long_url, st.text(max_size=40), st.just("")
)

json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def numbered(count: int) -> list[str]:
    return [f"http://www.example.test/n/{i}" for i in range(count)]


url_list = st.one_of(
    st.lists(any_url, max_size=6),
    st.lists(valid_url, min_size=1, max_size=6),
    st.lists(any_url, max_size=6).map(",".join),
    st.lists(valid_url, min_size=1, max_size=4).map(", ".join),
    st.integers(95, 105).map(numbered),  # around the 100-per-call limit
    st.integers(1_000, 150_000).map(lambda n: ["http://www.example.test/a"] * n),  # huge: 413 or code 10/47
    st.integers(1, 300).map(lambda n: ",".join(numbered(n))),
    st.sampled_from([[], "", ",,,", " , ", ["", " "], None]),
    json_value,
)

CREDENTIALS = (
    ["good"] * 6
    + ["upper", "yesterday", "tomorrow", "other_user"]
    + [
        "two_days_ago",
        "in_two_days",
        "other_users_signature",
        "wrong_secret",
        "unknown_user",
        "missing_user",
        "missing_signature",
        "blank",
        "garbage",
    ]
)
GOOD_CREDENTIALS = {"good": USER, "upper": USER, "yesterday": USER, "tomorrow": USER, "other_user": OTHER}


def credentials(kind: str, garbage: Any) -> dict[str, Any]:
    """(username, signature) fields for a kind of caller; MISSING leaves a field out."""
    day = {"yesterday": -1, "tomorrow": 1, "two_days_ago": -2, "in_two_days": 2}.get(kind, 0)
    if kind in ("good", "yesterday", "tomorrow", "two_days_ago", "in_two_days"):
        return {"username": USER, "signature": signature(day=DAY + timedelta(days=day))}
    return {
        "upper": {"username": f" {USER} ", "signature": signature().upper()},
        "other_user": {"username": OTHER, "signature": signature(OTHER, OTHER_SECRET)},
        "other_users_signature": {"username": USER, "signature": signature(OTHER, OTHER_SECRET)},
        "wrong_secret": {"username": USER, "signature": signature(USER, "not-the-secret")},
        "unknown_user": {"username": "nobody", "signature": signature("nobody", SECRET)},
        "missing_user": {"username": MISSING, "signature": signature()},
        "missing_signature": {"username": USER, "signature": MISSING},
        "blank": {"username": "  ", "signature": ""},
        "garbage": {"username": garbage, "signature": garbage},
    }[kind]


# -- encoding ----------------------------------------------------------------------------------------------------


def form_value(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value  # repeated fields
    return json.dumps(value)


def encode(params: dict[str, Any], encoding: str) -> tuple[bytes, str | None]:
    """The body and Content-Type of `params` in one of the encodings a JD client may use."""
    present = {k: v for k, v in params.items() if v is not MISSING}
    if encoding.startswith("form"):
        fields = {k: form_value(v) for k, v in present.items()}
        return urlencode(fields, doseq=True).encode(), FORM_TYPES[encoding == "form-charset"]
    body = json.dumps(present, ensure_ascii=encoding != "json-utf8").encode("utf-8", "surrogatepass")
    content_type = {"json": JSON_TYPES[0], "json-utf8": JSON_TYPES[1], "json-none": None, "json-text": "text/plain"}
    return body, content_type.get(encoding, JSON_TYPES[2])


ENCODINGS = ["json", "json-utf8", "json-none", "json-text", "json-vnd", "form", "form-charset"]


# -- checks ----------------------------------------------------------------------------------------------------------


def no_trace(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text[:500]


def check_jd(response: httpx.Response, path: str, body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The answer of a JD route follows the wire format; returns it (None for a real HTTP refusal)."""
    no_trace(response)
    if len(body) > MAX_BODY:
        assert response.status_code == 413, response.text[:300]
        return None
    media = (content_type or "").split(";")[0].strip()
    # A body that starts with { is read as JSON whatever its type says (README).
    if content_type in UNREAD_TYPES and not body.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        assert response.status_code == 415
        return None
    assert response.status_code == 200, (response.status_code, media, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert isinstance(answer, dict) and isinstance(answer.get("status"), int), answer
    code = answer["status"]
    if code == 0:
        if path in SUBMIT:
            assert answer["msg"] == "成功" and is_task_id(answer["taskid"]), answer
        else:
            data = answer["data"]
            assert is_task_id(data["taskid"]) and data["status"] in (0, 1, 2) and data["msg"], answer
    else:
        assert code in JD_CODES, answer
        assert code != -1, f"an internal error for client input: {answer}"
        assert isinstance(answer.get("msg"), str) and answer["msg"].strip(), answer
        assert set(answer) == {"status", "msg"}, answer
    return answer


def entries(raw: Any) -> list[str] | None:
    """The URL list as JD reads it (array or ',' string, blanks dropped); None when not a list of strings."""
    if isinstance(raw, str):
        return [p.strip() for p in raw.split(",") if p.strip()]
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return [p.strip() for p in raw if p.strip()]
    return None


def owned_by(host: str, user: str) -> bool:
    if user == OTHER:
        return host == "www.other.test"
    return host == "www.example.test" or (host.endswith(".img.example.test") and len(host) > len(".img.example.test"))


def acceptable(url: str, user: str) -> bool:
    """An independent reading of README's URL rules: what a cache can take, on a domain of `user`."""
    if len(url) > MAX_URL or not re.fullmatch(r"[\x21-\x7e]+", url):
        return False
    if re.search(r"%(?![0-9A-Fa-f]{2})", url) or "%00" in url.partition("?")[0]:
        return False  # a '%' begins an escape of two hex digits; caches refuse an escaped NUL in a path
    match = re.fullmatch(r"(?i)(https?)://([^/?#]*)([/?][^#]*)?", url)
    if match is None:
        return False
    authority = match.group(2)
    if "@" in authority or "[" in authority:
        return False
    host, colon, port = authority.partition(":")
    if colon and not (port.isdigit() and not port.startswith("0") and int(port) < 65536):
        return False  # an empty port or one with leading zeros is refused too: spelled as no one spells it
    if host.endswith(".."):
        return False
    return owned_by(host.lower().rstrip("."), user)


def cache_key(url: str) -> tuple[str, ...]:
    """One object to a cache: the scheme's default port is no port (as a browser sends Host)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    query = f"?{parts.query}" if parts.query or url.endswith("?") else ""
    scheme = parts.scheme.lower()
    port = None if parts.port == {"http": 80, "https": 443}.get(scheme) else parts.port
    return (scheme, host, str(port), parts.path or "/", query)


def plainly_valid(params: dict[str, Any], path: str, urls: list[str] | None, encoding: str) -> bool:
    """True when the call must be accepted: known credentials, 1..100 distinct good URLs, a good type."""
    kind = params["_credentials"]
    if params.get("_extra") or kind not in GOOD_CREDENTIALS or urls is None or not 1 <= len(urls) <= 100:
        return False
    user = GOOD_CREDENTIALS[kind]
    if not all(acceptable(u, user) for u in urls) or len({cache_key(u) for u in urls}) != len(urls):
        return False
    if encoding.startswith("form") and any("," in u for u in urls) and not isinstance(params["_list"], list):
        return False
    if path == "/api/refresh":
        return params.get("type") == "file"
    return params.get("refresh", MISSING) is MISSING


def check_census(app: Fuzzed, before: Census, answer: dict[str, Any] | None, path: str, params: dict[str, Any]) -> None:
    """A refusal changes nothing; an acceptance adds one whole task and charges its URLs."""
    after = app.census()
    assert not after.half_written, after
    if answer is None or answer["status"] != 0 or path not in SUBMIT:
        assert after == before, (answer, before, after)
        return
    assert after.tasks == before.tasks + 1
    urls = entries(params["_list"])
    assert urls is not None
    steps = 2 if path == "/api/prefetch" and params.get("refresh") in (True, "1", "true", "True", 1) else 1
    assert after.items - before.items == len(urls) * NODES * steps, (len(urls), before, after)
    if params.get("type") == "dir":
        assert (after.usage_urls, after.usage_dirs - before.usage_dirs) == (before.usage_urls, len(urls))
    else:
        assert (after.usage_urls - before.usage_urls, after.usage_dirs) == (len(urls), before.usage_dirs)
    user = GOOD_CREDENTIALS.get(params["_credentials"])
    assert user is not None, f"accepted with credentials {params['_credentials']!r}"
    for url in urls:
        assert acceptable(url, user), f"accepted a URL a cache cannot take or that is not {user}'s: {url!r}"
    app.owned[user].add(answer["taskid"])
    app.kind[answer["taskid"]] = "prefetch" if path == "/api/prefetch" else "refresh"


# -- the JD submissions ------------------------------------------------------------------------------------------


@st.composite
def submission(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    path = draw(st.sampled_from(SUBMIT))
    kind = draw(st.sampled_from(CREDENTIALS))
    params: dict[str, Any] = credentials(kind, draw(json_value))
    listed = draw(url_list)
    params["publish_urls" if path == "/api/prefetch" else "instances"] = draw(
        st.sampled_from([listed, listed, listed, MISSING])
    )
    if path == "/api/refresh":
        params["type"] = draw(st.sampled_from(["file", "file", "dir", "", "DIR", "files", MISSING, 1, None]))
    elif draw(st.booleans()) and draw(st.booleans()):
        params["refresh"] = draw(st.sampled_from([True, False, "1", "0", "true", "yes", 2, None, [], "x"]))
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.text(max_size=10))] = draw(json_value)  # an unknown field is ignored...
        params["_extra"] = True  # ...unless it makes the JSON invalid (NaN, Infinity)
    params["_credentials"] = kind
    params["_list"] = params["publish_urls" if path == "/api/prefetch" else "instances"]
    return path, params, draw(st.sampled_from(ENCODINGS))


def wire(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not k.startswith("_")}


@FUZZ
@given(case=submission())
@example(
    case=(
        "/api/prefetch",
        {
            **credentials("good", None),
            "publish_urls": ["http://www.example.test/a"],
            "_credentials": "good",
            "_list": ["http://www.example.test/a"],
        },
        "form",
    )
)
@example(  # CI's run of 2026-11-30 drew it: a bare '%' is refused, and the oracle must know it
    case=(
        "/api/prefetch",
        {
            **credentials("good", None),
            "publish_urls": ["http://www.example.test/", "HTTP://WWW.EXAMPLE.TEST/%"],
            "_credentials": "good",
            "_list": ["http://www.example.test/", "HTTP://WWW.EXAMPLE.TEST/%"],
        },
        "json",
    )
)
def test_submissions_never_crash_and_never_half_write(app: Fuzzed, case: tuple[str, dict[str, Any], str]) -> None:
    """Random prefetch/refresh calls (JSON and form): JD answers only, whole tasks or none, good URLs only."""
    path, params, encoding = case
    body, content_type = encode(wire(params), encoding)
    before = app.census()
    headers = {} if content_type is None else {"content-type": content_type}
    response = app.sync.request("POST", path, content=body, headers=headers)
    answer = check_jd(response, path, body, content_type)
    check_census(app, before, answer, path, params)
    urls = entries(params["_list"])
    if answer is not None and plainly_valid(params, path, urls, encoding):
        assert answer["status"] == 0, f"a valid call was refused: {answer} for {urls}"


# -- raw bytes -----------------------------------------------------------------------------------------------------


def corrupt(body: bytes, how: str, where: int, junk: bytes) -> bytes:
    at = where % (len(body) + 1)
    if how == "truncate":
        return body[:at]
    if how == "insert":
        return body[:at] + junk + body[at:]
    if how == "replace":
        return body[:at] + junk + body[at + len(junk) :]
    return junk


@st.composite
def raw_call(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    path = draw(st.sampled_from(SUBMIT + QUERY))
    field = {"/api/prefetch": "publish_urls", "/api/refresh": "instances"}.get(path, "taskid")
    value: Any = "http://www.example.test/raw" if field != "taskid" else "0" * 32
    params = {**credentials("good", None), field: value, "type": "file"}
    encoding = draw(st.sampled_from(["json", "form"]))
    body, _ = encode(params, encoding)
    junk = draw(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"', b"}", b"%", b"%ff", b"&&="]
            ),
        )
    )
    how = draw(st.sampled_from(["truncate", "insert", "replace", "only"]))
    content_type = draw(st.sampled_from([*JSON_TYPES, *FORM_TYPES, MULTIPART, None, "text/plain", "", *UNREAD_TYPES]))
    return path, corrupt(body, how, draw(st.integers(0, 500)), junk), content_type


@FUZZ
@given(case=raw_call())
@example(case=("/api/prefetch", b'{"username": "\xff\xfe"}', "application/json"))
@example(case=("/api/prefetchQuery", b"username=%ff%fe&signature=\xff&taskid=\x00", FORM_TYPES[0]))
def test_corrupted_bodies_are_refused_with_a_jd_code(app: Fuzzed, case: tuple[str, bytes, str | None]) -> None:
    """Truncated JSON, invalid UTF-8, stray bytes, odd content types: a JD code or 413/415, never a crash."""
    path, body, content_type = case
    before = app.census()
    headers = {} if content_type is None else {"content-type": content_type}
    response = app.sync.request("POST", path, content=body, headers=headers)
    answer = check_jd(response, path, body, content_type)
    after = app.census()
    assert not after.half_written
    if answer is not None and answer["status"] == 0 and path in SUBMIT:
        # A harmless corruption (a blank inserted, say) may leave a valid call: one whole 1-URL task.
        assert (after.tasks - before.tasks, after.items - before.items) == (1, NODES), (body, after)
        app.owned[USER].add(answer["taskid"])
    else:
        assert after == before, (answer, body)


# -- the JD queries ----------------------------------------------------------------------------------------------


@st.composite
def task_id_text(draw: st.DrawFn, app: Fuzzed) -> Any:
    known = draw(st.sampled_from([app.own_prefetch, app.own_refresh, app.foreign]))
    return draw(
        st.one_of(
            st.just(known),
            st.sampled_from([known.upper(), known.replace("-", ""), f"  {known}\t", "{" + known + "}"]),
            st.sampled_from([known[:-1], known + "0", "urn:uuid:" + known, known.replace("-", "_")]),
            st.uuids().map(str),
            st.text(max_size=40),
            st.integers(0, 100_000).map(lambda n: "a" * n),
            json_value,
        )
    )


@FUZZ
@given(data=st.data())
def test_queries_answer_only_the_owner(app: Fuzzed, data: st.DataObject) -> None:
    """Random prefetchQuery/refreshQuery calls: JD answers only; status 0 only for the caller's own task."""
    path = data.draw(st.sampled_from(QUERY))
    kind = data.draw(st.sampled_from(CREDENTIALS))
    params = {**credentials(kind, data.draw(json_value)), "taskid": data.draw(task_id_text(app))}
    if data.draw(st.integers(0, 9)) == 0:
        params["taskid"] = MISSING
    body, content_type = encode(params, data.draw(st.sampled_from(ENCODINGS)))
    before = app.census()
    headers = {} if content_type is None else {"content-type": content_type}
    answer = check_jd(app.sync.request("POST", path, content=body, headers=headers), path, body, content_type)
    assert app.census() == before
    if answer is None:
        return
    user = GOOD_CREDENTIALS.get(kind)
    wanted = "prefetch" if path == "/api/prefetchQuery" else "refresh"
    if answer["status"] == 0:
        found = answer["data"]["taskid"]
        assert user is not None and found in app.owned[user], f"{kind} saw task {found}"
        assert app.kind[found] == wanted
    taskid = params["taskid"]
    own = user is not None and isinstance(taskid, str) and taskid.strip().lower() in app.owned[user]
    if own and app.kind[taskid.strip().lower()] == wanted:
        assert answer["status"] == 0, answer


# -- the native routes ---------------------------------------------------------------------------------------------

NATIVE_STATUSES = {200, 400, 401, 404, 405, 413, 429}
header_value = st.one_of(
    st.sampled_from([USER, OTHER, "nobody", "", " "]),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
query_value = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "", "2024-03-10", "2024-03-10T04:00:00+08:00"]),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "prefetch", "refresh", "0", "2"]),
    st.text(max_size=30),
)
QUERY_KEYS = ["status", "kind", "since", "until", "url", "offset", "limit", "timeout", "x"]


@st.composite
def native_call(draw: st.DrawFn, app: Fuzzed) -> tuple[str, str, dict[str, Any], str | None]:
    route = draw(st.sampled_from(["task", "task", "wait", "list", "list", "lookup", "lookup", "quota"]))
    kind = draw(st.sampled_from(CREDENTIALS))
    creds = credentials(kind, None)
    headers: dict[str, Any] = {}
    if draw(st.integers(0, 5)) == 0:
        headers = {"X-Edgewarm-Username": draw(header_value), "X-Edgewarm-Signature": draw(header_value)}
        kind = "garbage"
    else:
        for field, header in (("username", "X-Edgewarm-Username"), ("signature", "X-Edgewarm-Signature")):
            if creds[field] is not MISSING:
                headers[header] = str(creds[field])
    params = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), query_value, max_size=4))
    kw: dict[str, Any] = {"headers": headers, "params": params}
    taskid = draw(task_id_text(app))
    segment = quote(str(taskid)[:5000], safe="")
    if route == "task":
        return "GET", f"/v1/tasks/{segment}", kw, kind
    if route == "wait":
        kw["params"] = {**params, "timeout": draw(st.sampled_from(["0", "-1", "0.01", "61", "nan", "x", ""]))}
        return "GET", f"/v1/tasks/{segment}/wait", kw, kind
    if route == "list":
        return "GET", "/v1/tasks", kw, kind
    if route == "quota":
        return "GET", "/v1/quota", kw, kind
    ids = draw(st.lists(task_id_text(app), max_size=6))
    raw = draw(
        st.one_of(
            st.just({"taskids": ids}),
            st.integers(990, 1010).map(lambda n: {"taskids": [app.own_prefetch] * n}),
            json_value,
        )
    )
    kw["content"] = json.dumps(raw).encode()
    kw["headers"] = {**headers, "content-type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    return "POST", "/v1/tasks/lookup", kw, kind


@FUZZ
@given(data=st.data())
def test_native_routes_never_crash_and_never_leak(app: Fuzzed, data: st.DataObject) -> None:
    """Random native calls: 200 or a 4xx with a JD code, never a 5xx; only the caller's own tasks are shown."""
    method, path, kw, kind = data.draw(native_call(app))
    before = app.census()
    response = app.sync.request(method, path, **kw)
    no_trace(response)
    assert app.census() == before
    if response.status_code == 307 and response.headers["location"].startswith("http://edgewarm.test/v1/tasks"):
        return  # "/v1/tasks/" (or ".../%2F", which the server decodes) redirects to "/v1/tasks"
    assert response.status_code in NATIVE_STATUSES, (response.status_code, response.text[:300])
    answer = response.json()
    assert isinstance(answer, dict)
    user = GOOD_CREDENTIALS.get(kind or "")
    if response.status_code != 200:
        if "code" in answer:
            assert answer["code"] in JD_CODES and answer["code"] != -1, answer
            assert isinstance(answer["error"], str) and answer["error"].strip(), answer
        else:
            assert response.status_code in (404, 405) and "error" in answer, answer  # no such route
        return
    assert user is not None, f"{kind} credentials got an answer: {answer}"
    shown = [t["taskid"] for t in answer.get("tasks", [])] + ([answer["taskid"]] if "taskid" in answer else [])
    for taskid in shown:
        assert taskid in app.owned[user], f"{user} was shown {taskid}"


# -- the named hostile URLs, each on both encodings ---------------------------------------------------------------

NAMED: list[tuple[str, str, set[int]]] = [
    ("CRLF", "http://www.example.test/a\r\nX-Injected: yes", {17}),
    ("bare LF", "http://www.example.test/a\nHost: evil.test", {17}),
    ("bare CR", "http://www.example.test/a\rb", {17}),
    ("space", "http://www.example.test/a b", {17}),
    ("tab", "http://www.example.test/a\tb", {17}),
    ("NUL", "http://www.example.test/a\x00b", {17}),
    ("user info", "http://user@www.example.test/a", {17}),
    ("user info to another host", "http://www.example.test@evil.test/a", {17}),
    ("user and password", "http://u:p@www.example.test/a", {17}),
    ("IPv6 loopback", "http://[::1]/a", {17}),
    ("IPv6 with port", "http://[::1]:8080/a", {17}),
    ("IPv4-mapped IPv6", "http://[::ffff:127.0.0.1]/a", {17}),
    ("broken IPv6", "http://[::1/a", {17}),
    ("IPv4", "http://127.0.0.1/a", {17}),
    ("IPv4 as one number", "http://2130706433/a", {17}),
    ("IDN, not encoded", "http://bücher.img.example.test/a", {17}),
    ("IDN, punycode, not the user's", "http://xn--bcher-kva.test/a", {18, 15}),
    ("fragment", "http://www.example.test/a#b", {17}),
    ("lone #", "http://www.example.test/a#", {17}),
    ("10 kB path", "http://www.example.test/" + "a" * 10_000, {17}),
    ("ftp", "ftp://www.example.test/a", {17}),
    ("javascript", "javascript:alert(1)", {17}),
    ("no scheme", "//www.example.test/a", {17}),
    ("no host", "http:///a", {17}),
    ("port 0", "http://www.example.test:0/a", {17}),
    ("port too big", "http://www.example.test:65536/a", {17}),
    ("not the user's", "http://www.other.test/a", {18, 15}),
    ("suffix trick", "http://www.example.test.evil.test/a", {18, 15}),
    ("wildcard apex", "http://img.example.test/a", {18, 15}),
    ("dot segments: no viewer asks them", "http://www.example.test/a/../../b/./c", {17}),
]
ACCEPTED = [
    ("percent-encoded CRLF stays encoded", "http://www.example.test/a%0d%0aX-Injected:%20yes"),
    ("punycode under a wildcard", "http://xn--bcher-kva.img.example.test/a"),
    ("trailing dot", "http://www.example.test./a"),
    ("upper-case host", "HTTP://WWW.EXAMPLE.TEST/A"),
    ("4 kB path", "http://www.example.test/" + "a" * (MAX_URL - len("http://www.example.test/"))),
]


@pytest.fixture
def api() -> Iterator[SyncApi]:
    sync = SyncApi(parse_config(base_config()))
    yield sync
    sync.close()


@pytest.mark.parametrize("encoding", ["json", "form"])
@pytest.mark.parametrize("path", SUBMIT)
@pytest.mark.parametrize(("name", "url", "codes"), NAMED, ids=[n for n, _, _ in NAMED])
def test_named_hostile_urls_are_refused_and_leave_nothing(
    api: SyncApi, path: str, encoding: str, name: str, url: str, codes: set[int]
) -> None:
    """Each hostile URL from the issue (CRLF, spaces, @, IPv6, IDN, fragments, 10 kB...) is code 17/18/15."""
    field = "publish_urls" if path == "/api/prefetch" else "instances"
    params = {**credentials("good", None), field: ["http://www.example.test/ok", url], "type": "file"}
    body, content_type = encode(params, encoding)
    before = api.census()
    response = api.request("POST", path, content=body, headers={"content-type": str(content_type)})
    answer = check_jd(response, path, body, content_type)
    assert answer is not None and answer["status"] in codes, (name, answer)
    assert api.census() == before


@pytest.mark.parametrize(("name", "url"), ACCEPTED, ids=[n for n, _ in ACCEPTED])
def test_odd_but_legal_urls_are_kept_byte_for_byte(api: SyncApi, name: str, url: str) -> None:
    """Dot segments, encoded CRLF, punycode, a trailing dot, upper case, 4 kB: accepted, stored as given."""
    answer = api.request("POST", "/api/prefetch", json={**credentials("good", None), "publish_urls": [url]}).json()
    assert answer["status"] == 0, (name, answer)
    items = api.run(api.api.store.list_items(answer["taskid"]))
    assert {i.url for i in items} == {url} and len(items) == NODES


# -- edge values of the native query strings, and the form-field limit -----------------------------------------------

NATIVE_EDGES = [
    {"offset": str(2**63)},
    {"offset": str(10**30)},
    {"offset": str(2**63 - 1)},
    {"offset": "-1"},
    {"limit": str(2**63)},
    {"limit": "0"},
    {"since": "nan"},
    {"since": "1e999"},
    {"until": "-1e999"},
    {"since": "0001-01-01T00:00:00+01:00"},
    {"until": "9999-12-31T23:59:59-14:00"},
    {"since": "not a time"},
    {"status": "3"},
    {"status": "x"},
    {"kind": "purge"},
    {"url": "\x00"},
    {"url": "a" * 3000},
]


@pytest.mark.parametrize(
    "params", NATIVE_EDGES, ids=[next(iter(p.items()))[0] + "=" + next(iter(p.values()))[:20] for p in NATIVE_EDGES]
)
@pytest.mark.parametrize("route", ["list", "task"])
def test_native_query_edge_values_are_4xx_not_5xx(app: Fuzzed, route: str, params: dict[str, str]) -> None:
    """Offsets past 2**63, NaN or infinite times, bad enums: HTTP 200 or a 4xx with a JD code, never a 5xx."""
    path = "/v1/tasks" if route == "list" else f"/v1/tasks/{app.own_prefetch}"
    headers = {"X-Edgewarm-Username": USER, "X-Edgewarm-Signature": signature()}
    response = app.sync.request("GET", path, params=params, headers=headers)
    no_trace(response)
    assert response.status_code in (200, 400), (response.status_code, response.text)
    if response.status_code == 400:
        assert response.json()["code"] == 2


def test_a_form_of_more_than_10000_fields_is_refused_with_code_2(api: SyncApi) -> None:
    """A form body of 10,001 fields is a client error (code 2), not an internal error (-1)."""
    fields = [*credentials("good", None).items(), *(("publish_urls", "http://www.example.test/a"),) * 9_999]
    body = urlencode(fields).encode()
    assert len(body) < MAX_BODY
    before = api.census()
    response = api.request("POST", "/api/prefetch", content=body, headers={"content-type": FORM_TYPES[0]})
    assert api.census() == before
    assert response.status_code == 200
    assert response.json()["status"] == 2, response.json()
