"""Reading a node's cache state from its response headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edgewarm.config import NodeKind
from edgewarm.nodes import (
    NUMBER_MOST,
    CacheState,
    age_of,
    asks_not_to_store,
    cache_state,
    fresh_for,
    header_number,
    retry_after_of,
)
from edgewarm.nodes.signals import DELTA_MOST


def state(**headers: str) -> CacheState | None:
    return cache_state(CIMultiDict({name.replace("_", "-"): value for name, value in headers.items()}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ExampleCache; hit", CacheState.HIT),
        ("ExampleCache; hit; ttl=376", CacheState.HIT),
        ("ExampleCache; fwd=uri-miss", CacheState.MISS),
        ("ExampleCache; fwd=uri-miss; stored", CacheState.MISS),
        ("ExampleCache; fwd=miss; stored", CacheState.MISS),
        ("ExampleCache; fwd=vary-miss", CacheState.MISS),
        ('ExampleCache; fwd="miss"', CacheState.MISS),
        ("ExampleCache; fwd=stale; fwd-status=304", CacheState.EXPIRED),
        ("ExampleCache; fwd=bypass", CacheState.BYPASS),
        ("ExampleCache; HIT", CacheState.HIT),
    ],
)
def test_cache_status_rfc9211(value: str, expected: CacheState) -> None:
    """Cache-Status (RFC 9211): 'hit' is a HIT, fwd=stale EXPIRED, fwd=bypass BYPASS, other fwd a MISS."""
    assert state(Cache_Status=value) is expected


def test_cache_status_takes_the_last_member() -> None:
    """With several caches listed, the last one (the node we talked to) decides."""
    assert state(Cache_Status="a; hit, b; fwd=miss") is CacheState.MISS
    assert state(Cache_Status="OriginCache; fwd=uri-miss, CDN; hit") is CacheState.HIT


def test_cache_status_without_a_verdict_falls_back() -> None:
    """A Cache-Status member with no hit/fwd does not decide; the next header does."""
    assert state(Cache_Status="ExampleCache; ttl=10") is None
    assert state(Cache_Status="ExampleCache", X_Cache_Status="HIT") is CacheState.HIT


def test_cache_status_wins_over_other_headers() -> None:
    """Cache-Status is read first."""
    assert state(Cache_Status="n; fwd=miss", X_Cache_Status="HIT", Age="100") is CacheState.MISS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HIT", CacheState.HIT),
        ("MISS", CacheState.MISS),
        ("EXPIRED", CacheState.EXPIRED),
        ("STALE", CacheState.STALE),
        ("UPDATING", CacheState.UPDATING),
        ("REVALIDATED", CacheState.REVALIDATED),
        ("BYPASS", CacheState.BYPASS),
        ("hit", CacheState.HIT),
    ],
)
def test_nginx_x_cache_status(value: str, expected: CacheState) -> None:
    """nginx's $upstream_cache_status words map one to one."""
    assert state(X_Cache_Status=value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HIT from squid", CacheState.HIT),
        ("MISS from squid.example.test", CacheState.MISS),
        ("TCP_MISS", CacheState.MISS),
        ("TCP_HIT", CacheState.HIT),
        ("TCP_MEM_HIT", CacheState.HIT),
        ("TCP_REFRESH_HIT", CacheState.HIT),
        ("TCP_REFRESH_MISS", CacheState.MISS),
    ],
)
def test_x_cache(value: str, expected: CacheState) -> None:
    """X-Cache as Squid, ATS and CDNs write it."""
    assert state(X_Cache=value) is expected


@pytest.mark.parametrize("kind", [NodeKind.SQUID, NodeKind.ATS, NodeKind.VARNISH])
def test_squid_ats_and_varnish_are_read_in_x_cache_before_a_parents_x_cache_status(kind: NodeKind) -> None:
    """Behind an nginx shield, such a node passes the shield's X-Cache-Status on: its own X-Cache decides."""
    headers = CIMultiDict({"X-Cache-Status": "HIT", "X-Cache": "MISS from squid-1"})
    assert cache_state(headers, kind) is CacheState.MISS
    assert cache_state(CIMultiDict({"X-Cache-Status": "HIT"}), kind) is CacheState.HIT  # no X-Cache: as before


@pytest.mark.parametrize("kind", [NodeKind.SQUID, NodeKind.ATS, NodeKind.VARNISH])
def test_squid_ats_and_varnish_are_read_in_x_cache_before_an_upstreams_cache_status(kind: NodeKind) -> None:
    """Squid 5.7 and ATS 9.2 pass an upstream's `Cache-Status` on without a member of their own: a tester's
    9 MB object, over the Squid edge's maximum_object_size, was reported warmed (a HIT, even with verify) while
    Squid said `X-Cache: MISS from squid-edge` beside the origin's `Cache-Status: upstream-cache; hit`."""
    headers = CIMultiDict({"Cache-Status": "upstream-cache; hit", "X-Cache": "MISS from squid-edge"})
    assert cache_state(headers, kind) is CacheState.MISS
    assert cache_state(CIMultiDict({"Cache-Status": "upstream-cache; hit"}), kind) is CacheState.HIT  # no X-Cache
    assert cache_state(headers, NodeKind.NGINX) is CacheState.HIT  # nginx writes no X-Cache: Cache-Status first


def test_an_nginx_node_is_read_in_its_x_cache_status_before_an_upstreams_cache_status() -> None:
    """nginx passes an upstream's `Cache-Status` on too (a re-tester's: a MISS reported as the upstream's hit, and
    with verify every task failed on a real HIT reported as the upstream's `fwd=miss`)."""
    passed_on = {"Cache-Status": "upstream-cache; hit", "X-Cache-Status": "MISS"}
    assert cache_state(CIMultiDict(passed_on), NodeKind.NGINX) is CacheState.MISS
    hit = {"Cache-Status": "upstream-cache; fwd=miss", "X-Cache-Status": "HIT"}
    assert cache_state(CIMultiDict(hit), NodeKind.NGINX) is CacheState.HIT
    assert cache_state(CIMultiDict(passed_on), NodeKind.GENERIC) is CacheState.HIT  # RFC 9211's first elsewhere


@pytest.mark.parametrize("kind", [NodeKind.NGINX, NodeKind.SQUID, NodeKind.ATS])
def test_a_varnish_shields_x_varnish_is_not_read_on_nodes_that_never_write_it(kind: NodeKind) -> None:
    """A tester's ATS edge without X-Cache behind a Varnish shield passed on the shield's `X-Varnish` (two ids):
    read as the edge's HIT though the edge stored nothing (over its max_doc_size)."""
    passed_on = CIMultiDict({"X-Varnish": "622621 3080233"})
    assert cache_state(passed_on, kind) is None  # nothing of its own: not told
    assert cache_state(passed_on, NodeKind.VARNISH) is CacheState.HIT
    assert cache_state(passed_on, NodeKind.GENERIC) is CacheState.HIT  # any cache may write it
    assert cache_state(passed_on) is CacheState.HIT


def test_a_varnish_node_is_read_in_its_own_x_varnish_before_an_x_cache_it_passes_on() -> None:
    """A Varnish edge whose VCL writes no X-Cache, behind a shield that does, passes the shield's `X-Cache: HIT`
    on: its own X-Varnish (one id: a MISS) decides (before: recorded a HIT, and not verified)."""
    headers = CIMultiDict([("X-Cache", "HIT"), ("X-Varnish", "32771 32769"), ("X-Varnish", "32770")])
    assert cache_state(headers, NodeKind.VARNISH) is CacheState.MISS
    assert cache_state(headers, NodeKind.NGINX) is CacheState.HIT  # others keep X-Cache first
    assert cache_state(CIMultiDict({"X-Cache": "MISS"}), NodeKind.VARNISH) is CacheState.MISS  # no X-Varnish: as before


@pytest.mark.parametrize("kind", [NodeKind.NGINX, NodeKind.GENERIC, None])
def test_nginx_and_others_read_x_cache_status_first(kind: NodeKind | None) -> None:
    """An nginx node (or an unknown kind) keeps X-Cache-Status ahead of an X-Cache its parent sent."""
    headers = CIMultiDict({"X-Cache-Status": "MISS", "X-Cache": "HIT"})
    assert cache_state(headers, kind) is CacheState.MISS


def test_x_cache_without_a_known_word_is_no_answer() -> None:
    """An X-Cache value naming no state tells nothing."""
    assert state(X_Cache="cache-node-7") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("32770", CacheState.MISS), ("32773 32771", CacheState.HIT)],
)
def test_x_varnish(value: str, expected: CacheState) -> None:
    """Varnish's X-Varnish: one transaction id is a MISS, two (request and stored object) a HIT."""
    assert state(X_Varnish=value) is expected


@pytest.mark.parametrize(("value", "expected"), [("0", None), ("120", CacheState.HIT), ("junk", None)])
def test_age(value: str, expected: CacheState | None) -> None:
    """A positive Age means the answer was stored; Age 0 or garbage tells nothing."""
    assert state(Age=value) is expected


def test_no_headers_no_state() -> None:
    """Without any cache header the state is unknown."""
    assert state() is None
    assert state(Content_Type="text/plain", Server="nginx") is None


def test_header_names_are_case_insensitive() -> None:
    """Header names are matched whatever their case (given a case-insensitive mapping)."""
    assert cache_state(CIMultiDict({"x-cache-status": "HIT"})) is CacheState.HIT
    assert cache_state(CIMultiDict({"CACHE-STATUS": "n; fwd=miss"})) is CacheState.MISS


def test_cached_property() -> None:
    """HIT, STALE, UPDATING and REVALIDATED came from the cache; MISS, EXPIRED and BYPASS did not."""
    assert {s for s in CacheState if s.cached} == {
        CacheState.HIT,
        CacheState.STALE,
        CacheState.UPDATING,
        CacheState.REVALIDATED,
    }


def test_several_cache_status_lines_take_the_last() -> None:
    """Cache-Status sent as one field line per cache: the last line (the node we talked to) decides."""
    headers = CIMultiDict([("Cache-Status", "shield; hit"), ("Cache-Status", "edge; fwd=uri-miss")])
    assert cache_state(headers) is CacheState.MISS
    headers = CIMultiDict([("Cache-Status", "shield; fwd=miss"), ("Cache-Status", "edge; hit")])
    assert cache_state(headers) is CacheState.HIT


@pytest.mark.parametrize("name", ["X-Cache", "X-Cache-Status"])
def test_several_x_cache_lines_take_the_last(name: str) -> None:
    """A shield's X-Cache line passed through before the edge's own: the edge's (last) line decides."""
    assert cache_state(CIMultiDict([(name, "HIT from shield"), (name, "MISS from edge")])) is CacheState.MISS
    assert cache_state(CIMultiDict([(name, "MISS"), (name, "HIT")])) is CacheState.HIT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HIT, MISS", CacheState.MISS),
        ("MISS, HIT", CacheState.HIT),
        ("MISS from shield, HIT from edge", CacheState.HIT),
    ],
)
def test_x_cache_list_takes_the_last_member(value: str, expected: CacheState) -> None:
    """X-Cache as one comma list (Fastly-style 'shield, edge'): the last member decides."""
    assert state(X_Cache=value) is expected


def test_a_plain_mapping_is_read_too() -> None:
    """A plain dict (one value per name) is accepted as headers."""
    assert cache_state({"X-Cache": "HIT from squid"}) is CacheState.HIT


NOW = 1_795_900_000.0  # 2026-11-28 21:06 UTC: before the Expires of 29 Nov 2026 below


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Cache-Control": "no-store"}, "Cache-Control: no-store"),
        ({"Cache-Control": "max-age=0, Private"}, "Cache-Control: private"),
        ({"Cache-Control": 'private="Set-Cookie", max-age=60'}, "Cache-Control: private"),
        ({"Set-Cookie": "session=1"}, "Set-Cookie"),
        ({"Vary": "*"}, "Vary: *"),
        ({"Cache-Control": "public, max-age=60"}, None),
        # RFC 9111 lets a cache store it and revalidate; nginx and Varnish do not store it (a verify GET tells)
        ({"Cache-Control": "no-cache"}, "Cache-Control: no-cache"),
        ({"Cache-Control": "public, max-age=0"}, "Cache-Control: max-age=0"),
        ({"Cache-Control": "max-age=60, s-maxage=0"}, "Cache-Control: s-maxage=0"),
        ({"Cache-Control": "max-age=0, s-maxage=60"}, None),  # a shared cache reads s-maxage first
        ({"Expires": "Thu, 01 Jan 1970 00:00:00 GMT"}, "Expires: Thu, 01 Jan 1970 00:00:00 GMT"),
        ({"Expires": "0"}, "Expires: 0"),  # an Expires that does not parse has passed
        ({"Expires": "Sun, 29 Nov 2026 18:00:00 GMT"}, None),  # after NOW
        ({"Expires": "Thu, 01 Jan 1970 00:00:00 GMT", "Cache-Control": "max-age=60"}, None),  # max-age first
        ({"X-Accel-Expires": "0", "Cache-Control": "max-age=60"}, "X-Accel-Expires: 0"),
        ({"X-Accel-Expires": "60", "Cache-Control": "no-store"}, None),  # nginx reads it before the others
        ({"X-Accel-Expires": "60", "Set-Cookie": "a=1"}, "Set-Cookie"),  # but not before these
        ({"X-Accel-Expires": "abc", "Cache-Control": "no-store"}, "Cache-Control: no-store"),  # no number: ignored
        ({"X-Accel-Expires": "@1"}, "X-Accel-Expires: @1"),  # a time passed
        ({"X-Accel-Expires": "@4102444800", "Cache-Control": "max-age=0"}, None),  # a time to come (2100)
        # nginx reads a lifetime that is no number of seconds as "do not store"
        ({"Cache-Control": 'max-age="3600"'}, 'Cache-Control: max-age="3600" (not a number of seconds)'),
        ({"Cache-Control": "max-age=-1"}, "Cache-Control: max-age=-1 (not a number of seconds)"),
        ({"Cache-Control": "s-maxage=1.5, max-age=60"}, "Cache-Control: s-maxage=1.5 (not a number of seconds)"),
        ({"Vary": "X-" + "a" * 127}, "Vary longer than 128 bytes (129)"),
        ({"Vary": "Accept-Encoding"}, None),
        # Varnish's built-in VCL does not store it (nginx does: a verify GET tells)
        ({"Surrogate-Control": "max-age=60, No-Store"}, "Surrogate-Control: no-store"),
        ({"Surrogate-Control": "max-age=60"}, None),
        ({}, None),
    ],
)
def test_an_answer_that_asks_caches_not_to_store_it_says_why(headers: dict[str, str], why: str | None) -> None:
    assert asks_not_to_store(CIMultiDict(headers), now=NOW) == why


def test_several_vary_lines_are_read_as_one() -> None:
    """`Vary: *` on a second field line (only the first was read: reported warmed, never cached)."""
    headers = CIMultiDict([("Vary", "Accept-Encoding"), ("Vary", "*")])
    assert asks_not_to_store(headers, now=NOW) == "Vary: *"


@pytest.mark.parametrize(
    ("headers", "cached", "expected"),
    [
        ({}, False, None),  # the cache's own settings decide (proxy_cache_valid, default_ttl)
        ({"Content-Type": "text/plain"}, True, None),
        ({"Cache-Control": "public, max-age=3"}, False, 3.0),
        ({"Cache-Control": "max-age=600, s-maxage=30"}, False, 30.0),  # s-maxage first, as caches read it
        ({"Cache-Control": 'max-age="60"'}, False, 60.0),
        ({"Cache-Control": "max-age=600", "Age": "590"}, True, 10.0),  # a cached copy has spent its Age
        ({"Cache-Control": "max-age=600", "Age": "900"}, True, 0.0),
        ({"Cache-Control": "max-age=600", "Age": "100"}, False, 500.0),  # a MISS filled from an upstream's copy
        # nginx's HIT: no Age, and its own Date: the copy's age cannot be known (it looked fresh for 600 s)
        ({"Cache-Control": "max-age=600", "Date": "Mon, 12 Jan 1970 13:46:40 GMT"}, True, 0.0),
        ({"Cache-Control": "max-age=600", "Date": "Mon, 12 Jan 1970 12:46:40 GMT"}, False, 600.0),  # Date: no age
        ({"Cache-Control": "max-age=soon"}, False, None),
        # told twice (two field lines): nginx takes the last, Squid the first: the shorter is safe
        ({"Cache-Control": "max-age=600, max-age=10"}, False, 10.0),
        ({"Cache-Control": "public"}, False, None),
        ({"X-Accel-Expires": "5", "Cache-Control": "max-age=600"}, False, 5.0),  # nginx reads it first
        ({"X-Accel-Expires": "5", "Age": "2"}, True, 3.0),
        # A time is the copy's end whatever its age (it was taken off twice: a copy past half its life never shared)
        ({"X-Accel-Expires": "@1000100", "Age": "50"}, True, 100.0),
        ({"Expires": "Mon, 12 Jan 1970 13:48:20 GMT", "Age": "50"}, True, 100.0),  # 1,000,000 + 100
        ({"Expires": "Mon, 12 Jan 1970 13:48:20 GMT", "Date": "Mon, 12 Jan 1970 13:46:10 GMT"}, True, 100.0),
        ({"Expires": "Mon, 12 Jan 1970 13:48:20 GMT", "Cache-Control": "max-age=7"}, False, 7.0),
        ({"Expires": "Mon, 12 Jan 1970 13:45:00 GMT"}, False, 0.0),
        ({"Expires": "whenever"}, False, None),
    ],
)
def test_fresh_for_reads_the_lifetime_an_answer_gives_its_copy(
    headers: dict[str, str], cached: bool, expected: float | None
) -> None:
    """How long the node's copy stays fresh, as the answer tells it (the engine shares a warm no longer)."""
    assert fresh_for(CIMultiDict(headers), cached, now=1_000_000.0) == expected


@pytest.mark.parametrize("number", ["9" * 5000, "²", "\u0661\u0662"])
def test_a_number_that_int_refuses_is_read_as_http_reads_it(number: str) -> None:
    """`Age`, `X-Accel-Expires` and a `max-age` of 5,000 digits, or of digits str.isdigit takes and int does not
    (`²`): an item failed as "internal error: ValueError" with a traceback a try (a reviewer's). Such a number of
    ASCII digits is 2^31 (RFC 9111 1.2.2); other digits are no number."""
    huge = number.isascii()
    headers = CIMultiDict({"X-Cache-Status": "MISS", "Age": number, "Cache-Control": f"max-age={number}"})
    assert age_of(headers) == (DELTA_MOST if huge else None)
    assert asks_not_to_store(headers, now=0) == (
        None if huge else f"Cache-Control: max-age={number[:40]} (not a number of seconds)"
    )
    assert fresh_for(headers, now=0) == (0.0 if huge else None)  # its age, 2^31, is its lifetime's
    accel = CIMultiDict({"X-Accel-Expires": number})
    assert fresh_for(accel, now=0) == (float(DELTA_MOST) if huge else None)
    assert fresh_for(CIMultiDict({"X-Accel-Expires": "@" + number}), now=0) == (float(NUMBER_MOST) if huge else None)
    assert asks_not_to_store(accel, now=0) is None
    assert header_number("60") == 60 and header_number("3000000000") == DELTA_MOST and header_number("-1") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20", 20.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # 100 s after the epoch, read at 40
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),  # passed
        ("soon", None),
        ("-5", None),
        ("", None),
    ],
)
def test_retry_after_is_read_as_seconds_from_now(value: str, expected: float | None) -> None:
    """A 429's or 503's Retry-After, delay-seconds or an HTTP date (RFC 9110, 10.2.3): the retry honours it."""
    assert retry_after_of(CIMultiDict({"Retry-After": value}), now=40.0) == expected
    assert retry_after_of(CIMultiDict(), now=40.0) is None
