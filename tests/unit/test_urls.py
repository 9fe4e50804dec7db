"""Submitted URL lists and URLs: parsing, refusals with JD code 17, duplicates."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewarm.errors import JdCode, RequestRefused
from edgewarm.urls import (
    IP_HOST,
    TargetUrl,
    escape_cases,
    find_duplicate,
    masked_query,
    parse_url,
    spellings,
    split_list,
)

# --- split_list -----------------------------------------------------------------------------------


def test_split_list_accepts_an_array() -> None:
    """A JSON array of strings comes back in order, each trimmed."""
    assert split_list(["http://a.test/1", " http://a.test/2 "]) == ["http://a.test/1", "http://a.test/2"]


def test_split_list_splits_a_comma_string() -> None:
    """One string is split on commas, each piece trimmed."""
    assert split_list("http://a.test/1, http://a.test/2") == ["http://a.test/1", "http://a.test/2"]


@pytest.mark.parametrize("value", [",,", " , ", "", [], ["", "  "]])
def test_split_list_drops_blanks(value: Any) -> None:
    """Blank entries are dropped, so a list of blanks is empty."""
    assert split_list(value) == []


def test_split_list_drops_blanks_between_urls() -> None:
    """Blank pieces between real URLs are dropped too."""
    assert split_list("http://a.test/1,,http://a.test/2,") == ["http://a.test/1", "http://a.test/2"]
    assert split_list(["http://a.test/1", "", "http://a.test/2"]) == ["http://a.test/1", "http://a.test/2"]


@pytest.mark.parametrize("value", [None, 5, 1.5, True, {"u": "http://a.test/"}, ["http://a.test/", 3], [None]])
def test_split_list_refuses_wrong_types(value: Any) -> None:
    """Anything but a string or an array of strings is refused with code 17."""
    with pytest.raises(RequestRefused) as info:
        split_list(value)
    assert info.value.code == JdCode.ILLEGAL_URL


# --- parse_url: accepted -----------------------------------------------------------------------------


def test_parse_url_splits_a_plain_url() -> None:
    """Scheme, host, authority and path+query are taken apart."""
    target = parse_url("http://www.example.test/a/b.mp4?x=1&y=2")
    assert target == TargetUrl(
        url="http://www.example.test/a/b.mp4?x=1&y=2",
        scheme="http",
        host="www.example.test",
        authority="www.example.test",
        path_query="/a/b.mp4?x=1&y=2",
    )


def test_parse_url_keeps_the_port_in_the_authority() -> None:
    """The Host authority carries the port; the host used for ownership does not."""
    target = parse_url("https://www.example.test:8443/x")
    assert target.scheme == "https"
    assert target.host == "www.example.test"
    assert target.authority == "www.example.test:8443"
    assert target.path_query == "/x"


@pytest.mark.parametrize(
    ("raw", "authority"),
    [
        ("http://a.test:80/x", "a.test"),
        ("HTTP://A.test:80/x", "a.test"),
        ("https://a.test:443/x", "a.test"),
        ("https://a.test:80/x", "a.test:80"),
        ("http://a.test:443/x", "a.test:443"),
    ],
)
def test_parse_url_drops_only_the_schemes_default_port(raw: str, authority: str) -> None:
    """`Host` as a browser sends it, so the warm fills the object visitors ask for; the URL stays as given."""
    target = parse_url(raw)
    assert target.authority == authority
    assert target.url == raw
    assert target.cache_key == f"{target.scheme}://{authority}/x"


def test_parse_url_lowercases_scheme_and_host_only() -> None:
    """Scheme and host are lower-cased; the path keeps its case."""
    target = parse_url("HTTP://WWW.Example.TEST/Path/File.JPG")
    assert target.scheme == "http"
    assert target.host == "www.example.test"
    assert target.path_query == "/Path/File.JPG"


@pytest.mark.parametrize(
    ("raw", "path_query"),
    [
        ("http://www.example.test", "/"),
        ("http://www.example.test/", "/"),
        ("http://www.example.test?a=1", "/?a=1"),
        ("http://www.example.test/p?", "/p?"),
        ("http://www.example.test/a%20b/%E4%B8%AD?q=%2F&q=2", "/a%20b/%E4%B8%AD?q=%2F&q=2"),
        ("http://www.example.test//double//slash/.x/..y", "//double//slash/.x/..y"),
        ("http://www.example.test/a;b=c?z=1&a=2", "/a;b=c?z=1&a=2"),
    ],
)
def test_parse_url_keeps_path_and_query_exactly(raw: str, path_query: str) -> None:
    """Path and query go to the node byte for byte as submitted (no normalisation, no re-encoding; a path with
    `.` or `..` segments is refused: test_a_path_with_dot_segments_is_refused_naming_what_viewers_ask)."""
    assert parse_url(raw).path_query == path_query


def test_parse_url_drops_a_trailing_dot_of_the_host() -> None:
    """A fully qualified host 'a.test.' is the same domain as 'a.test'."""
    assert parse_url("http://www.example.test./x").host == "www.example.test"


# --- parse_url: refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "http://www.example.test/a\r\nX-Injected: 1",
        "http://www.example.test/a\nb",
        "http://www.example.test/a\rb",
        "http://www.example.test/a b",
        "http://www.example.test/a\tb",
        "http://www.example.test/\x00",
        "http://www.example.test/中文",
        "http://user@www.example.test/",
        "http://user:pass@www.example.test/",
        "http://:pass@www.example.test/",
        "http://www.example.test/a#frag",
        "http://www.example.test/a#",
        "http://127.0.0.1/",
        "http://10.0.0.1:8080/x",
        "http://127.0.0.1./",
        "http://[::1]/",
        "http://[2001:db8::1]:8080/",
        "http://[::1/",
        # a host in brackets urlsplit refuses, beside a non-ASCII character: it was an internal error (a re-tester)
        "http://[]/é",
        "http://[::1/é",
        "https://u@::1]/é",
        "ftp://www.example.test/",
        "file:///etc/passwd",
        "gopher://www.example.test/",
        "javascript:alert(1)",
        "www.example.test/a",
        "//www.example.test/a",
        "/a/b",
        "",
        "http://",
        "http:///path",
        "http://www.example.test:99999/",
        "http://www.example.test:port/",
        "http://-bad-.example.test/",
        "http://under_score.example.test/",
        "http://www..example.test/",
        # caches answer these 400 (nginx): refused at the API, where the caller learns why
        "http://a.test/100%.jpg",
        "http://a.test/a%zz",
        "http://a.test/a%",
        "http://a.test/a?q=%G1",
        "http://a.test/x%00y",
        # one object with a plainer spelling, which a directory refresh would not find (it looks for those)
        "http://a.test:080/x",
        "http://a.test:/x",
        "http://a.test../x",
        "https://a.test..:443/x",
    ],
)
def test_parse_url_refuses_illegal_urls(raw: str) -> None:
    """Anything that is not a plain http(s) URL on a domain name is refused with code 17; so is a '%' that
    begins no escape of two hex digits, and an escaped NUL in the path."""
    with pytest.raises(RequestRefused) as info:
        parse_url(raw)
    assert info.value.code == JdCode.ILLEGAL_URL


def test_parse_url_refuses_a_too_long_url() -> None:
    """A URL longer than max_length is refused with code 17, and the message is shortened."""
    base = "http://www.example.test/"
    assert parse_url(base + "a" * (4096 - len(base))).path_query.startswith("/a")
    with pytest.raises(RequestRefused) as info:
        parse_url(base + "a" * (4097 - len(base)))
    assert info.value.code == JdCode.ILLEGAL_URL
    assert len(info.value.message) < 400
    with pytest.raises(RequestRefused):
        parse_url(base + "abc", max_length=10)


# --- find_duplicate ----------------------------------------------------------------------------------


def test_find_duplicate_returns_the_first_repeated_object_as_written() -> None:
    """The first URL that is one object with an earlier one, and that one, as the caller spelled them."""
    urls = ["http://a.test/1", "http://a.test/2", "http://A.test:80/2", "http://a.test/1"]
    first, again = find_duplicate([parse_url(u) for u in urls]) or (None, None)
    assert first is not None and again is not None
    assert (first.url, again.url) == ("http://a.test/2", "http://A.test:80/2")


def test_find_duplicate_returns_none_for_distinct_urls() -> None:
    """Distinct URLs (including ones differing only in the query) have no duplicate."""
    assert find_duplicate([parse_url(u) for u in ["http://a.test/1", "http://a.test/1?x", "http://a.test/2"]]) is None
    assert find_duplicate([]) is None


@pytest.mark.parametrize("url", ["http://a.test/a%20b%2Fc%7e", "http://a.test/a?q=%00", "http://a.test/%25"])
def test_well_formed_escapes_are_taken_as_written(url: str) -> None:
    assert parse_url(url).path_query == url.removeprefix("http://a.test")


@pytest.mark.parametrize(
    ("url", "asked"),
    [
        ("http://a.test/r/x/../dot.txt", "/r/dot.txt"),
        ("http://a.test/./a?q=/../x", "/a?q=/../x"),
        ("http://a.test/../c1/d4.txt", "/c1/d4.txt"),
        ("http://a.test/a/..", "/"),
        ("http://a.test/a/.", "/a/"),
        ("http://a.test//a/./b/", "//a/b/"),
        ("http://a.test/a/b/../../../c", "/c"),
        ("https://A.test:443/a/./b", "/a/b"),
    ],
)
def test_a_path_with_dot_segments_is_refused_naming_what_viewers_ask(url: str, asked: str) -> None:
    """Browsers and curl remove `.` and `..` segments before asking (RFC 3986), and nginx keys a request as
    written: a warm of `/r/x/../dot.txt` filled an object no viewer asks for, and a refresh of it purged
    nothing a viewer gets (a QA tester's refresh said PURGED while viewers kept the old body). Refused with
    code 17, the message naming the path viewers ask instead."""
    assert f"viewers' clients ask {asked!r} instead" in illegal(url)


def illegal(url: str) -> str:
    """Why `url` is refused, with code 17."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(url)
    assert refused.value.code == JdCode.ILLEGAL_URL
    return refused.value.message


@pytest.mark.parametrize("url", ["http://a.test/a/%2e%2E/b", "http://a.test/%2e/b", "http://a.test/a/.%2e"])
def test_an_escaped_dot_segment_is_refused_too(url: str) -> None:
    """Browsers take `%2e` for `.` in a segment (curl does not): no one spelling is what viewers ask."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(url)
    assert refused.value.code == JdCode.ILLEGAL_URL and "'%2e'" in refused.value.message


@pytest.mark.parametrize(
    "url", ["http://a.test/a..b/.c/c.", "http://a.test/.well-known/x", "http://a.test/a/...", "http://a.test/x?p=./."]
)
def test_dots_that_are_not_whole_segments_are_taken_as_written(url: str) -> None:
    assert parse_url(url).path_query == url.removeprefix("http://a.test")


@pytest.mark.parametrize(
    ("url", "asked"),
    [
        ("http://a.test/a\\b.txt", "/a/b.txt"),
        ("http://a.test/a\\..\\c.txt?q=\\", "/c.txt?q=\\"),
        ("https://a.test/\\", "//"),
    ],
)
def test_a_backslash_in_the_path_is_refused_naming_what_browsers_ask(url: str, asked: str) -> None:
    """Browsers take `\\` for `/` in an http(s) path (WHATWG URL), curl sends it as written, and nginx keys the
    request as written (a tester's warm of `/a\\b.txt` reached the origin as `/a%5Cb.txt`): no one spelling is
    what viewers ask, as with `%2e`. Refused with code 17, naming the path browsers ask."""
    assert f"browsers ask {asked!r} instead" in illegal(url)


@pytest.mark.parametrize("url", ["http://a.test:80\\a.js", "http://a.test\\a.js", "https://a.test\\b/c\\d"])
def test_a_backslash_after_the_host_is_refused_saying_browsers_read_a_slash(url: str) -> None:
    """Browsers end the host (and port) at a `\\` as at a '/'; the refusal said urlsplit's "Port could not be cast
    to integer value" (a tester's)."""
    assert "a '\\' after the host: browsers read it as '/'" in illegal(url)


@pytest.mark.parametrize("url", ["http://a.test/a%5Cb.txt", "http://a.test/q?path=a\\b"])
def test_an_escaped_backslash_or_one_in_the_query_is_taken_as_written(url: str) -> None:
    assert parse_url(url).path_query == url.removeprefix("http://a.test")


@pytest.mark.parametrize(
    "value",
    [["http://a.test/1,http://a.test/2"], ["http://a.test/1, HTTPS://a.test/2"], '["http://a.test/1,http://a.test/2"]'],
)
def test_urls_joined_by_commas_in_one_entry_are_refused(value: Any) -> None:
    """An array entry holding `,http://` is a list written into one string (a tester's migrated script): it
    was warmed as one path and failed with the origin's 404. Refused with code 17, saying so (by parse_url, which
    every URL of a call goes through, and the CLI's check of a file's lines too)."""
    with pytest.raises(RequestRefused) as refused:
        for url in split_list(value):
            parse_url(url)
    assert refused.value.code == JdCode.ILLEGAL_URL and "joined by commas" in refused.value.message


@pytest.mark.parametrize("value", ["http://a.test/d?a=1,2", "http://a.test/x, http://a.test/d?a=1, 2 ,http://a.test/y"])
def test_a_comma_in_a_query_in_a_list_separated_by_commas_is_refused_naming_the_url(value: str) -> None:
    """The list is cut at every comma: the URL's piece after it was refused as "illegal URL '2': the scheme
    must be http or https" (a tester's), the URL not named. A string list of URLs without queries, or with
    commas only between URLs, is read as before."""
    with pytest.raises(RequestRefused) as refused:
        split_list(value)
    assert refused.value.code == JdCode.ILLEGAL_URL
    assert refused.value.message.startswith("illegal URL 'http://a.test/d?a=1,")
    assert "give the list as a JSON array" in refused.value.message
    assert split_list("http://a.test/x?y=1, http://a.test/z,") == ["http://a.test/x?y=1", "http://a.test/z"]
    assert split_list('["http://a.test/d?a=1,2"]') == ["http://a.test/d?a=1,2"]


@pytest.mark.parametrize(
    "value", ["http://a.test/img/w_100,h_200/x.jpg", "http://a.test/x, b.test/y", "http://a.test/w_1,h_2,q_8/x.jpg"]
)
def test_a_comma_in_a_path_in_a_list_separated_by_commas_is_refused_naming_the_url(value: str) -> None:
    """As a query's: "illegal URL 'h_200/x.jpg': the scheme must be http or https" named only the piece after
    the comma (a tester's image-resizing path). The piece may also be a URL written without its scheme: the
    message names both readings."""
    with pytest.raises(RequestRefused) as refused:
        split_list(value)
    assert refused.value.code == JdCode.ILLEGAL_URL
    assert refused.value.message.startswith(f"illegal URL {value!r}: a comma in a URL's path, in a list separated")
    assert "give the list as a JSON array" in refused.value.message and "its scheme (http://)" in refused.value.message
    assert split_list([value]) == [value]
    with pytest.raises(RequestRefused) as refused:  # every comma of it (a re-tester's named the first two pieces)
        split_list("http://a.test/d?a=1,2,3, http://a.test/e")
    assert refused.value.message.startswith("illegal URL 'http://a.test/d?a=1,2,3': a comma in a URL's query")


def test_a_python_list_given_as_its_text_is_refused_saying_so() -> None:
    """`urlencode({"publish_urls": [...]})` without doseq=True sends `['http://…']`: the refusal says JSON quotes
    with double quotes (a tester: it said only that it was no JSON array)."""
    with pytest.raises(RequestRefused) as refused:
        split_list("['http://a.test/1', 'http://a.test/2']")
    assert refused.value.message == (
        "the URL list starts with '[' but is no JSON array: "
        'JSON quotes strings with " (a Python list given as its text?)'
    )
    with pytest.raises(RequestRefused) as refused:
        split_list('["http://a.test/1",')
    assert refused.value.message == "the URL list starts with '[' but is no JSON array"


def test_a_comma_not_followed_by_a_scheme_stays_in_its_url() -> None:
    assert split_list(["http://a.test/1,2", "http://a.test/x?l=a,b"]) == ["http://a.test/1,2", "http://a.test/x?l=a,b"]


def test_a_non_ascii_host_is_told_to_use_its_ascii_form() -> None:
    """Named: the message said "(IDNA: xn--…)" and left the converting to the caller (a CLI tester's)."""
    with pytest.raises(RequestRefused) as refused:
        parse_url("http://bücher.example/a")
    assert "its ASCII form (IDNA), as URLs give it: 'xn--bcher-kva.example'" in refused.value.message
    with pytest.raises(RequestRefused) as refused:
        parse_url("http://a.example/bücher")
    assert "percent-encoded" in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:é/",
        "http://a.example:é/x",
        "http://a.example:١٢/x",
        "http://a.example:８０/x",
        "http://a.example:+80/x",
        "http://a.example:-1/x",
        "http://a.example:1_0/x",
        "http://a.example:99999/x",
        "http://a.example:0/x",
    ],
)
def test_a_port_that_is_no_port_is_told_as_the_port(url: str) -> None:
    """It was told to write its host in ASCII (the port is part of the netloc that was looked at), then in
    urlsplit's words ("Port could not be cast to integer value as '+80'", "Port out of range 0-65535")."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(url)
    assert refused.value.code == JdCode.ILLEGAL_URL
    assert refused.value.message.endswith(": the port must be a number from 1 to 65535, in ASCII digits")


# --- property ------------------------------------------------------------------------------------------

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_URL_LIKE = st.builds(
    lambda prefix, host, rest: prefix + host + rest,
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:", "//", ""]),
    st.text(alphabet="abcxyz09-._:[]@", max_size=20),
    st.text(alphabet=_PRINTABLE, max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), _URL_LIKE))
def test_parse_url_accepts_safely_or_refuses_with_code_17(raw: str) -> None:
    """For any text parse_url returns a URL with a printable-ASCII path, or refuses with code 17 only."""
    try:
        target = parse_url(raw)
    except RequestRefused as exc:
        assert exc.code == JdCode.ILLEGAL_URL
        return
    assert target.path_query.startswith("/")
    assert all(0x21 <= ord(ch) <= 0x7E for ch in target.path_query)
    assert all(0x21 <= ord(ch) <= 0x7E for ch in target.authority)
    assert target.scheme in ("http", "https")


_PLAIN_LIKE = st.builds(
    lambda scheme, host, port, slash, rest: scheme + "://" + host + port + slash + rest,
    st.sampled_from(["http", "https", "HTTP", "Https", "ftp"]),
    st.text(alphabet="abAB09-.", min_size=0, max_size=12),
    st.sampled_from(["", ":", ":0", ":080", ":80", ":8080", ":65535", ":65536", ":99999", ":123456"]),
    st.sampled_from(["/", "/", ""]),
    st.text(alphabet=_PRINTABLE, max_size=30),
)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_PLAIN_LIKE, _URL_LIKE))
def test_the_one_match_split_agrees_with_the_full_split(raw: str) -> None:
    """URLs of the usual shape are split by one regex match; for any text the answer is the full split's."""
    from edgewarm.urls import _split, _split_any

    def outcome(split: Any) -> object:
        try:
            return split(raw)
        except RequestRefused as exc:
            return (exc.code, exc.message)

    assert outcome(_split) == outcome(_split_any)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_PLAIN_LIKE, _URL_LIKE))
def test_a_url_split_by_the_one_match_has_no_odd_authority(raw: str) -> None:
    """parse_url skips _odd_authority for a URL the one match splits: for any text, that check would find
    nothing to refuse in it."""
    from edgewarm.urls import _odd_authority, _split_plain

    if _split_plain(raw) is not None:
        assert _odd_authority(raw) is None


def test_the_spellings_of_a_directory_are_those_a_node_holds_as_one() -> None:
    """A final dot on the host and the scheme's default port given or not; another port is kept; either scheme
    (a node is asked by its own: an https URL warmed through an http node is the object a refresh of the http
    directory must reach, and it was missed: "NOT_CACHED" while the node served it)."""
    assert spellings(parse_url("http://A.test/d/")) == [
        "http://a.test/d/",
        "http://a.test:80/d/",
        "http://a.test./d/",
        "http://a.test.:80/d/",
        "https://a.test/d/",
        "https://a.test:443/d/",
        "https://a.test./d/",
        "https://a.test.:443/d/",
    ]
    assert spellings(parse_url("https://a.test:8443/d/")) == [
        "http://a.test:8443/d/",
        "http://a.test.:8443/d/",
        "https://a.test:8443/d/",
        "https://a.test.:8443/d/",
    ]
    https, http = parse_url("https://a.test/d/x"), parse_url("http://a.test/d/x")
    assert parse_url("http://a.test/d/").reaches(https, whole=True) and http.reaches(https, whole=False)


@pytest.mark.parametrize(
    ("query", "every", "passwords"),
    [
        ("", "", ""),
        ("token=abc&x=1", "token=***&x=***", "token=abc&x=1"),
        ("password=s3&sslmode=require", "password=***&sslmode=***", "password=***&sslmode=require"),
        ("s3cr3t", "***", "s3cr3t"),
        ("passphrase&a=1", "***&a=***", "***&a=1"),
        ("a=1&&b=", "a=***&&b=***", "a=1&&b="),
        ("SSLPASSWORD=x=y", "SSLPASSWORD=***", "SSLPASSWORD=***"),
    ],
)
def test_masked_query_hides_the_values_of_the_names_it_is_given(query: str, every: str, passwords: str) -> None:
    """One masker for both uses: every value of a callback URL, the `pass…` parameters of a store URL."""
    assert masked_query(query) == every
    assert masked_query(query, lambda name: "pass" in name.lower()) == passwords


def test_escape_cases_give_the_other_cases_of_the_escapes_first_and_the_url_as_given_last() -> None:
    """A refresh purges each case of a URL's escapes: another key to a cache, one resource to the origin."""
    assert escape_cases("/a/%c3%bc/x?q=%2f") == ["/a/%C3%BC/x?q=%2F", "/a/%c3%bc/x?q=%2f"]
    assert escape_cases("/a/%C3%bc/") == ["/a/%C3%BC/", "/a/%c3%bc/", "/a/%C3%bc/"]
    assert escape_cases("/a/%20/%7E") == ["/a/%20/%7e", "/a/%20/%7E"]
    assert escape_cases("/a/%20/b") == ["/a/%20/b"]  # digits only: one spelling
    assert escape_cases("/plain/ABC") == ["/plain/ABC"]  # letters outside escapes are the path's own


def test_a_purge_reaches_its_object_with_the_escapes_in_either_case_and_nothing_else() -> None:
    directory = parse_url("http://www.a.test/d/%c3%bc/")
    assert directory.reaches(parse_url("http://WWW.a.test/d/%C3%BC/f.txt"), whole=True)
    assert not directory.reaches(parse_url("http://www.a.test/d/%C3%BD/f.txt"), whole=True)
    assert not directory.reaches(parse_url("http://www.a.test/D/%C3%BC/f.txt"), whole=True)  # the path's case is kept
    assert parse_url("http://www.a.test/%e9?x=%2f").reaches(parse_url("http://www.a.test/%E9?x=%2F"), whole=False)
    assert not parse_url("http://www.a.test/%e9").reaches(parse_url("http://www.a.test/%E9x"), whole=False)


@pytest.mark.parametrize(
    ("raw", "separator"),
    [
        ("http://www.a.test/x.js;http://www.a.test/c.txt", "';'"),
        ("http://www.a.test/x.js\nhttp://www.a.test/c.txt", "a line break"),
        ("http://www.a.test/x.js\r\nhttps://www.a.test/c.txt", "a line break"),
        ("http://www.a.test/x.js | http://www.a.test/c.txt", "'|'"),
        ("http://www.a.test/x.js HTTP://www.a.test/c.txt", "a space"),
        ("http://www.a.test/x.js，http://www.a.test/c.txt", "'，'"),  # a Chinese input method's comma
        ("http://www.a.test/x.js、http://www.a.test/c.txt", "'、'"),
    ],
)
def test_urls_joined_by_another_separator_than_a_comma_are_refused_saying_so(raw: str, separator: str) -> None:
    """A list joined by ';' was one URL, warmed as a 404; by a line break, "control characters must be
    percent-encoded"."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(raw)
    assert refused.value.code is JdCode.ILLEGAL_URL
    assert f"URLs joined by {separator}: separate a list's URLs by ','" in refused.value.message


def test_a_url_in_a_query_value_is_no_list() -> None:
    assert parse_url("http://www.a.test/go?to=http://www.b.test/x;y").path_query == "/go?to=http://www.b.test/x;y"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("http://a_b.www.a.test/x", "the host must be a domain name: '_' in it (letters, digits, '-' and '.' only)"),
        (f"http://{'a' * 64}.a.test/x", f"a label of 64 characters ({'a' * 20}…), over 63"),
        ("http://[::1]/x", "the host must be a domain name, not an IP address"),
        # What URL parsers (the HTTP client's among them) read as IPv4: a last label of digits or of 0x and hex
        # digits. A warm of https://0x7f000001/x through an https node connected to 127.0.0.1: a security tester's.
        *(
            (f"http://{host}/x", f"the host must be a domain name, {IP_HOST}")
            for host in ("0x7f000001", "1.1.0x7f", "0X7F.1", "www.a.0x", "127.1", "2130706433", "www.a.test.1", "a.017")
        ),
        ("http://-a.test/x", "the host must be a domain name: '-a' begins or ends with '-'"),
        (f"http://{'ab.' * 90}test/x", "the host must be a domain name: 274 characters, over 253"),
    ],
)
def test_a_host_that_is_no_domain_name_is_refused_saying_why(raw: str, why: str) -> None:
    """It was "the host must be a domain name" for each, whatever was wrong (a wire tester's)."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(raw)
    assert refused.value.message.endswith(why), refused.value.message


@pytest.mark.parametrize("host", ["www.0x7f.test", "0x.a.test", "a1.b2", "www.a.x1", "www.a.0xg", "1.2.3.test"])
def test_a_host_with_numbers_in_it_but_not_last_is_a_domain_name(host: str) -> None:
    assert parse_url(f"http://{host}/x").host == host


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ("not a url", "a URL begins with http:// or https://"),
        ("www.example.test/a b", "a URL begins with http:// or https://"),
        ("http:/www.example.test/a b", "a URL begins with http:// or https://"),
        ("HTTP://www.example.test/a b", "must be percent-encoded"),
        ("http://www.example.test/é", "must be percent-encoded"),
    ],
)
def test_text_that_is_no_url_says_so_before_its_spaces(raw: str, said: str) -> None:
    """`not a url` was told that its spaces must be percent-encoded, as in a form body (a newcomer's)."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(raw)
    assert refused.value.code is JdCode.ILLEGAL_URL and said in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    ("raw", "given"),
    [
        (
            "http://a.test/中文/文件.bin?q=中文",
            "'http://a.test/%E4%B8%AD%E6%96%87/%E6%96%87%E4%BB%B6.bin?q=%E4%B8%AD%E6%96%87'",
        ),
        ("http://a.test/plus sign.bin?a=1&b=%41", "'http://a.test/plus%20sign.bin?a=1&b=%41'"),
        ("http://a.test/x\ny", None),
        ("http://a.test/x%zz y", None),  # its encoded form refused too (a re-tester's)
        ("http://a.test/x#frag ment", None),
    ],
)
def test_a_url_to_percent_encode_is_told_as_browsers_send_it(raw: str, given: str | None) -> None:
    """`/中文/文件.bin` was told "must be percent-encoded" alone (a tester's): the message gives the URL encoded in
    UTF-8, what is ASCII left as it is; not for control characters, which no viewer's URL holds. A form's '+' (a
    space) is named."""
    with pytest.raises(RequestRefused) as refused:
        parse_url(raw)
    message = refused.value.message
    assert "'+' as '%2B'" in message and "a '+' is a space" in message
    if given is None:
        assert "as browsers send it" not in message, message
    else:
        assert f"as browsers send it, {given}" in message, message
