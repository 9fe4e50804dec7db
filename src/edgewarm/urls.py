"""Parse and check the URLs a caller submits. Pure functions; refusals carry JD codes."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

import orjson

from .errors import JdCode, RequestRefused

# Printable ASCII without space; CR, LF, other controls and non-ASCII never reach a node.
_SAFE = re.compile(r"^[\x21-\x7e]+$")
_KEPT_AS_SENT = "".join(map(chr, range(0x21, 0x7F)))  # what `_encoded` leaves as it is
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
# The usual shape, split by one match: scheme://host[:port]/path?query with nothing _split would refuse or
# rewrite in the scheme, host or port (a port without leading zeros, at most 5 digits, checked <= 65535 after),
# nor anything _odd_authority refuses (a host ending in "..": left to the full split).
_PLAIN = re.compile(r"(?i:(https?))://([a-zA-Z0-9.-]+)(?<!\.\.)(?::([1-9][0-9]{0,4}))?(/[\x21-\x22\x24-\x7e]*)\Z")


@dataclass(frozen=True, slots=True)
class TargetUrl:
    """A submitted URL, split the way a warm needs it."""

    url: str  # as submitted (trimmed)
    scheme: str
    host: str  # lower case, no port: what domain ownership is checked against and what SNI carries
    authority: str  # host[:port] as sent in `Host`; no port when it is the scheme's default (as browsers send it)
    path_query: str  # exactly as submitted, "/" when empty

    @property
    def cache_key(self) -> str:
        """The URL as a cache keys it: scheme, lower-case authority, path and query."""
        return f"{self.scheme}://{self.authority}{self.path_query}"

    @property
    def is_dir(self) -> bool:
        return self.path_query.endswith("/") and "?" not in self.path_query

    def as_dir(self) -> TargetUrl:
        """This URL as a directory to refresh; RequestRefused(ILLEGAL_URL) unless it is one, written so: a host
        alone (`http://a.test`, the path empty) is refused as `http://a.test/a` is, not taken for the whole site
        (a tester's one-character typo purged a site, another user's URLs on it too)."""
        if not self.is_dir or not self.url.endswith("/"):
            whole = f" (the whole site: {self.url}/)" if self.is_dir else ""
            raise RequestRefused(
                JdCode.ILLEGAL_URL, f"a directory must end with '/' (and have no query): {self.url}{whole}"
            )
        return self

    @property
    def node_key(self) -> str:
        """What a node holds this URL's object under: its authority, path and query, whatever its scheme (a node
        is asked by its own scheme: http://a/x and https://a/x are one object to it)."""
        return f"{self.authority}{self.path_query}"

    def reaches(self, other: TargetUrl, *, whole: bool) -> bool:
        """Whether a purge of this URL on a node reaches `other`'s object there: the same object, or with `whole`
        (a directory's purge) one at or under this one's, its escapes in either case (escape_cases)."""
        mine, theirs = escapes_upper(self.node_key), escapes_upper(other.node_key)
        return theirs.startswith(mine) if whole else theirs == mine


def split_list(value: Any, entry: str = "URL", code: JdCode = JdCode.ILLEGAL_URL) -> list[str]:
    """JD lists (of URLs, or of what `entry` names; refused with `code`): a JSON array of strings, or one string
    separated by commas (in a form body, the array comes as its JSON text: `["http://…","http://…"]`, read as
    the array). Blank entries are dropped."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            quoted = "'" in value and '"' not in value  # Python's str(list): urlencode without doseq=True
            hint = ': JSON quotes strings with " (a Python list given as its text?)' if quoted else ""
            raise RequestRefused(code, f"the {entry} list starts with '[' but is no JSON array{hint}") from None
    if isinstance(value, str):
        pieces = value.split(",")
        if code is JdCode.ILLEGAL_URL and len(pieces) > 1:
            _no_comma_cut(pieces)
    elif isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise RequestRefused(code, f"every {entry} must be a string")
        pieces = value
    else:
        raise RequestRefused(code, f"the {entry} list must be an array of strings or a string")
    return [p.strip() for p in pieces if p.strip()]


# URLs joined into one entry (parse_url): by a comma (a URL may hold one, but not followed by a scheme), or by
# another separator than a list's ',' (a line break, ';', '|', a space; and the full-width ones of Chinese
# input methods: '，', '、', '；'): read as one URL.
_JOINED = re.compile(r"[,;|\s，、；]\s*https?://", re.IGNORECASE)


def _no_comma_cut(pieces: list[str]) -> None:
    """Refuse a list of URLs separated by commas where a comma cut a URL (`…?a=1,2`, `/w_100,h_200/x.jpg`): its
    piece after the comma is no URL (it was refused as "illegal URL '2'" or "'h_200/x.jpg'", the URL not named).
    A piece after a URL that is no URL may also be a URL written without its scheme: the message says both."""
    for at, (before, piece) in enumerate(itertools.pairwise(pieces), 1):
        if piece.strip() and "://" not in piece and ("?" in before or "://" in before):
            where = "query" if "?" in before else "path"  # (where its first comma is)
            cut = itertools.takewhile(lambda p: "://" not in p, pieces[at:])  # the URL whole, each comma of it
            raise _illegal(
                ",".join([before.strip(), *cut]).rstrip(),
                f"a comma in a URL's {where}, in a list separated by commas (the list is cut at every comma): give "
                'the list as a JSON array (in a form field, its JSON text: ["http://…"])'
                + ("" if where == "query" else "; or, if a URL begins after the comma, its scheme (http://)"),
            )


def _illegal(raw: str, reason: str) -> RequestRefused:
    return RequestRefused(JdCode.ILLEGAL_URL, f"illegal URL {shortened(raw)!r}: {reason}")


def shortened(text: str, most: int = 200) -> str:
    """`text` as an error message quotes it: its first `most` characters, and "…" when it goes on."""
    return text if len(text) <= most else text[:most] + "…"


def parse_url(raw: str, max_length: int = 4096) -> TargetUrl:
    """Check one URL a caller gives; raise RequestRefused(ILLEGAL_URL) with the reason. Not cached: a call
    refused for another reason (a domain not the caller's, say) leaves nothing behind but its hosts, in the
    bounded cache of _is_domain_name."""
    if len(raw) > max_length:
        raise _illegal(raw, f"longer than {max_length} characters")
    if "://" in raw[8:] and (joined := _JOINED.search(raw)) is not None:
        # (Else a line break was "control characters must be percent-encoded", and ';' one URL warmed as a 404.)
        mark = joined[0][0]
        if mark == ",":  # the CLI's check of a file's lines too (it sent the lines before such a one: a tester's)
            raise _illegal(raw, "several URLs in one entry, joined by commas: give each URL as an entry of its own")
        separator = {"\n": "a line break", "\r": "a line break"}.get(mark, "a space" if mark.isspace() else f"'{mark}'")
        raise _illegal(
            raw,
            f"URLs joined by {separator}: separate a list's URLs by ',' or give them as a JSON array (in a form "
            'field, its JSON text: ["http://…"])',
        )
    target = _split_plain(raw)
    if target is None:  # not the usual shape, whose host and port are spelled plainly (_PLAIN)
        target = _split_any(raw)
        odd = _odd_authority(raw)
        if odd is not None:  # one object with a plainer spelling, which a directory refresh looks for (spellings)
            raise _illegal(raw, odd)
    if (dots := _dot_segments(target.path_query)) is not None:
        raise _illegal(raw, dots)
    if "\\" in target.path_query and "\\" in target.path_query.partition("?")[0]:
        raise _illegal(raw, _backslash(target))
    if "%" in target.path_query:
        if _BAD_ESCAPE.search(target.path_query):
            raise _illegal(raw, "a '%' must begin an escape of two hex digits (write '%25' for '%' itself)")
        if "%00" in target.path_query.partition("?")[0]:
            raise _illegal(raw, "an escaped NUL (%00) in the path: caches refuse such a request (nginx answers 400)")
    return target


DOT_SEGMENT = r"/(?:\.|%2[eE]){1,2}(?=/|\Z)"  # a path's `.` or `..` segment, spelled or escaped (`%2e`)
_DOTS = re.compile(DOT_SEGMENT)


def _dot_segments(path_query: str) -> str | None:
    """Why a path with `.` or `..` segments is refused, or None. A viewer's browser or curl removes them before
    asking (RFC 3986; browsers also those spelled `%2e`), so a warm of the path as written fills an object no
    one asks for, and a refresh of it purges nothing a viewer gets (nginx keys the request as written)."""
    if "/." not in path_query and "/%2" not in path_query:
        return None  # where _DOTS could match none starts: the usual answer, without the search
    path, mark, query = path_query.partition("?")
    if _DOTS.search(path) is None:
        return None
    if "%" in path:
        return "a '.' or '..' segment in the path (or '%2e'): write the path as a viewer's client asks it, without them"
    asked = _without_dots(path) + mark + query
    return f"a '.' or '..' segment in the path: viewers' clients ask {asked!r} instead: write that"


def _backslash(target: TargetUrl) -> str:
    """Why a path with a backslash is refused: browsers ask for the path with '/' in its place (the WHATWG URL
    standard, for http and https), so a warm as written (curl's way) fills an object no browser asks for."""
    path, mark, query = target.path_query.partition("?")
    asked = _without_dots(path.replace("\\", "/")) + mark + query
    return f"a '\\' in the path: browsers ask {asked!r} instead (write that, or '%5C' for a backslash itself)"


def _without_dots(path: str) -> str:
    """`path` (from its first "/") with its `.` and `..` segments removed as RFC 3986 (5.2.4) does."""
    kept: list[str] = []
    segments = path.split("/")[1:]
    for number, segment in enumerate(segments, 1):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
            continue
        if number == len(segments):  # a final `.` or `..` leaves the path ending in "/"
            kept.append("")
    return "/" + "/".join(kept)


def _odd_authority(raw: str) -> str | None:
    """Why the host and port are spelled as no one spells them (`a.test..`, `a.test:080`, `a.test:`), or None."""
    authority = raw.partition("://")[2]
    for end in "/?#":
        authority = authority.partition(end)[0]
    host, colon, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if host.endswith(".."):
        return "the host ends in more than one '.'"
    if colon and (not port or port.startswith("0")):
        return "write the port without leading zeros, or leave out an empty one and its ':'"
    return None


@functools.lru_cache(maxsize=16_384)
def stored_target(url: str) -> TargetUrl:
    """A URL of a stored task (checked when it was submitted), split for a warm: cached, since the engine
    splits each URL again on every node it warms it on."""
    return _split(url)


def _split(raw: str) -> TargetUrl:
    return _split_plain(raw) or _split_any(raw)  # anything else, or a refusal with its reason


def _split_plain(raw: str) -> TargetUrl | None:
    """`raw` split by one match when it has the usual shape (_PLAIN) and a host and port _split_any takes; else
    None."""
    plain = _PLAIN.match(raw)
    if plain is None:
        return None
    scheme, host, port, path_query = plain.groups()
    host = host.lower().rstrip(".")
    if _is_domain_name(host) and (port is None or int(port) <= 65535):
        scheme = scheme.lower()
        authority = _authority(scheme, host, None if port is None else int(port))
        return TargetUrl(url=raw, scheme=scheme, host=host, authority=authority, path_query=path_query)
    return None


@functools.lru_cache(maxsize=1024)
def _is_domain_name(host: str) -> bool:
    """Whether `host` (lower case, no final dot) is a domain name, not an IP address. Cached: the hosts of a
    call are mostly one or a few, and the match cost more than the rest of a plain URL's split."""
    return _HOST.match(host) is not None and not reads_as_ip(host)


IP_HOST = "not an IP address (a last label of digits, or of 0x and hex digits, makes the host one)"
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)


def reads_as_ip(host: str) -> bool:
    """Whether URL parsers read `host` (no final dot) as an IPv4 address: when its last label is a number, in
    decimal, octal or hex (the WHATWG URL standard's rule, which the HTTP client follows): `2130706433`,
    `127.1`, `0x7f000001`, `1.1.0x7f`. Such a host is no domain name: a warm of one through an https node
    connected to that address, not the node's (a security tester's `0x7f000001`)."""
    return _NUMBER_LABEL.fullmatch(host.rpartition(".")[2]) is not None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _authority(scheme: str, host: str, port: int | None) -> str:
    """`Host` as a browser sends it: `http://a.test:80/` and `http://a.test/` are one object to a cache."""
    return host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (\x85 is a line break to some, \x9b an escape)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def escapes_upper(text: str) -> str:
    """`text` with its escapes' hex digits in upper case."""
    return _ESCAPE.sub(lambda m: m.group().upper(), text) if "%" in text else text


def escape_cases(path_query: str) -> list[str]:
    """`path_query` with its escapes' hex digits in upper case, in lower case, and as given (last), each once:
    one resource to the origin (RFC 3986, 6.2.2.1), but another key to a cache, which keys the path as it was
    asked. Browsers ask in upper case, some clients in lower (.NET's UrlEncode): a refresh purges each (a
    tester's refresh of `%c3%bc` "succeeded" on every node and every cache kept its `%C3%BC` copy)."""
    if "%" not in path_query or not any(c.isalpha() for m in _ESCAPE.finditer(path_query) for c in m.group()):
        return [path_query]
    folded = [escapes_upper(path_query), _ESCAPE.sub(lambda m: m.group().lower(), path_query)]
    return [*(p for p in dict.fromkeys(folded) if p != path_query), path_query]


def spellings(target: TargetUrl) -> list[str]:
    """The ways `target` may have been written that are one object to a node (besides letter case): either
    scheme (a node is asked by its own), the host with or without its final dot, the scheme's default port
    given or not."""
    found = []
    hosts = [target.host, target.host + "."]
    for scheme, port in _DEFAULT_PORTS.items():
        authorities = (
            [a for h in hosts for a in (h, f"{h}:{port}")]
            if target.authority == target.host
            else [target.authority, target.host + "." + target.authority[len(target.host) :]]
        )
        found += [f"{scheme}://{a}{target.path_query}" for a in authorities]
    return found


def has_controls(text: str) -> bool:
    """Whether `text` holds a control character (NUL, CR, LF, …): refused in any text a caller gives."""
    return _CONTROLS.search(text) is not None


def is_plain(text: str) -> bool:
    """Printable ASCII without space: what a URL sent on the wire may hold as it is."""
    return _SAFE.match(text) is not None


def idna_form(name: str) -> str:
    """How a name of non-ASCII letters is written in ASCII, for a message: `(IDNA), as URLs give it:
    'xn--bcher-kva.example'`, or `(IDNA: xn--…)` when it has none (the CLI's user was told only the latter)."""
    try:
        return f"(IDNA), as URLs give it: {name.encode('idna').decode('ascii')!r}"
    except UnicodeError:
        return "(IDNA: xn--…)"


def _encoded(raw: str) -> str:
    """`raw` with its spaces and non-ASCII characters percent-encoded in UTF-8, as browsers send such a URL, for a
    message (a tester's `/中文/文件.bin` was told "must be percent-encoded" alone); "" when it holds control
    characters, which no URL a viewer asks holds, or when that form would be refused too (`x%zz y`, `#a b`: a
    re-tester's)."""
    if any(c < " " or c == "\x7f" for c in raw):
        return ""
    encoded = as_browsers_send(raw)
    try:
        parse_url(encoded)
    except RequestRefused:
        return ""
    return f": as browsers send it, {shortened(encoded)!r}"


def as_browsers_send(text: str) -> str:
    """`text` with its spaces and non-ASCII characters percent-encoded in UTF-8 (upper-case hex), as browsers
    send them and as a task's URLs hold them; printable ASCII as it is."""
    return quote(text, safe=_KEPT_AS_SENT)


def has_user_info(parts: SplitResult) -> bool:
    """Whether a split URL carries user information (`user:password@`, `:password@`, a bare `@`)."""
    return parts.username is not None or parts.password is not None or "@" in parts.netloc


def _split_any(raw: str) -> TargetUrl:
    def illegal(reason: str) -> RequestRefused:
        return _illegal(raw, reason)

    if not is_plain(raw):
        try:  # urlsplit refuses some hosts in brackets ("http://[]/é"): a refusal too, not an internal error
            parts = urlsplit(raw)
        except ValueError as exc:
            raise illegal(str(exc)) from None
        if not (host := parts.hostname or "").isascii():
            raise illegal(f"a host of non-ASCII letters is written in its ASCII form {idna_form(host)}")
        _port(parts, illegal)  # a port of non-ASCII digits
        if parts.scheme.lower() not in ("http", "https") or not raw[len(parts.scheme) :].startswith("://"):
            raise illegal("a URL begins with http:// or https://")  # `not a url` was told of its spaces alone
        raise illegal(
            "spaces, control characters (CR, LF) and non-ASCII characters must be percent-encoded"
            f"{_encoded(raw)} (in a form body, decoded once before the URLs are read, a '+' is a space: write a "
            "URL's '+' as '%2B' and its '%' as '%25', as curl --data-urlencode does)"
        )
    if "\\" in raw.partition("://")[2].partition("/")[0].partition("?")[0]:
        # In the authority (`http://a.test:80\\x`): browsers end it there, as at a '/'; urlsplit reads on.
        raise illegal("a '\\' after the host: browsers read it as '/' (write that)")
    try:
        parts = urlsplit(raw)
    except ValueError as exc:
        raise illegal(str(exc)) from None
    port = _port(parts, illegal)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise illegal("the scheme must be http or https")
    if has_user_info(parts):
        raise illegal("user information is not allowed")
    if parts.fragment or "#" in raw:
        raise illegal("a fragment (#…) never reaches a cache")
    host = (parts.hostname or "").rstrip(".")
    if not _HOST.match(host):
        raise illegal(f"the host must be a domain name{_not_a_domain(host, parts.netloc)}")
    if reads_as_ip(host):
        raise illegal(f"the host must be a domain name, {IP_HOST}")
    authority = _authority(scheme, host, port)
    path = parts.path or "/"
    if not path.startswith("/"):
        raise illegal("the path must start with '/'")
    path_query = path + (f"?{parts.query}" if parts.query or raw.endswith("?") else "")
    return TargetUrl(url=raw, scheme=scheme, host=host, authority=authority, path_query=path_query)


def _not_a_domain(host: str, netloc: str) -> str:
    """Why `host` is no domain name, for the refusal (after a ': '), or ''."""
    if "[" in netloc:
        return ", not an IP address"
    if not host:
        return ": the URL has none"
    if len(host) > 253:
        return f": {len(host)} characters, over 253"
    for label in host.split("."):
        if len(label) > 63:
            return f": a label of {len(label)} characters ({label[:20]}…), over 63"
        if not label:
            return ": an empty label (two dots in a row)"
        if label[0] == "-" or label[-1] == "-":
            return f": {label!r} begins or ends with '-'"
    odd = sorted({c for c in host if not (c.isascii() and (c.isalnum() or c in ".-"))})
    return f": {', '.join(repr(c) for c in odd)} in it (letters, digits, '-' and '.' only)" if odd else ""


def _port(parts: SplitResult, illegal: Callable[[str], RequestRefused]) -> int | None:
    """The port of `parts`, or None; refused unless it is a number from 1 to 65535 (urlsplit's own words were
    "Port could not be cast to integer value as '+80'")."""
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise illegal("the port must be a number from 1 to 65535, in ASCII digits")
    return port


def find_duplicate(targets: Sequence[TargetUrl]) -> tuple[TargetUrl, TargetUrl] | None:
    """The first URL that is one object to a cache with an earlier one (two spellings of a host, say), and
    that earlier one, as the caller wrote them; None when every URL is its own object."""
    seen: dict[str, TargetUrl] = {}
    for target in targets:
        first = seen.setdefault(target.cache_key, target)
        if first is not target:
            return first, target
    return None


def masked_query(query: str, secret: Callable[[str], bool] = lambda name: True) -> str:
    """A query string with the value of each parameter whose name is `secret` as `***` (a bare word whose
    name is `secret` too: it may be a token itself); names and the other values stay as written."""

    def shown(pair: str) -> str:
        name, sep, _ = pair.partition("=")
        if not secret(name) or not pair:
            return pair
        return f"{name}=***" if sep else "***"

    return "&".join(shown(pair) for pair in query.split("&")) if query else ""


def ascii_digits(text: str) -> bool:
    """Whether `text` is a number of ASCII digits: str.isdigit takes `²` and other scripts' digits too, which
    int refuses or reads (a re-tester's `listen = "127.0.0.1:٤٥٨٤٠"` listened on 45840, said OK)."""
    return text.isascii() and text.isdigit()


def password_masked(url: str) -> str:
    """`url` with the password of its user information as `***` (for a message or a log line), with a scheme
    or without one (`user:password@host:port`, as a server address may be mistyped), however it parses: read up
    to the last `@`, so that a password with an unencoded `/`, `?` or `#` is hidden too (a re-tester's node URL
    was shown whole: "bad port"); more is hidden when a later `@` follows, never less."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at <= 0 or rest.startswith("/") or ":" not in rest[:at]:
        return url
    return f"{scheme}{sep}{rest[:at].partition(':')[0]}:***{rest[at:]}"
