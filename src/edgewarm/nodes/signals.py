"""Read a cache's state from response headers, whatever the cache.

Understood, in this order: `Cache-Status` (RFC 9211), nginx `X-Cache-Status`, `X-Cache` (Squid, ATS, many
CDNs: "HIT from host", "TCP_MISS"), Varnish `X-Varnish` (two transaction ids mean a hit) and finally `Age`.

Behind a shield, a header may name several caches, as one comma-separated list or as several field lines
(each cache appends its own): the first is the cache nearest the origin, the last one is the node we talked to,
and only that one is read. A header a cache does not write itself is passed on as its parent (or the origin)
sent it: a Squid, ATS or Varnish node hands on a shield's `X-Cache-Status` and an upstream's `Cache-Status`
(Squid 5.7 and ATS 9.2 append no member of their own: a tester's Squid MISS read as the upstream's hit), so
for those kinds their own `X-Cache` is read before both, and for nginx its `X-Cache-Status` (nginx passes an
upstream's `Cache-Status` on too: a re-tester's); a Varnish node, which always writes `X-Varnish` itself
(its last field line) but `X-Cache` only if its VCL does, hands on a shield's `X-Cache`: its `X-Varnish` is
read first; and nginx, Squid and ATS never write `X-Varnish`: one in their answer is a Varnish shield's, not
read.
"""

from __future__ import annotations

import email.utils
import enum
import time
from collections.abc import Callable, Mapping

from ..config import NodeKind
from ..urls import ascii_digits


class CacheState(enum.StrEnum):
    HIT = "HIT"  # served from cache
    MISS = "MISS"  # fetched upstream now (and stored, unless the cache declined)
    EXPIRED = "EXPIRED"  # was stale, fetched upstream now
    STALE = "STALE"  # served stale
    UPDATING = "UPDATING"
    REVALIDATED = "REVALIDATED"
    BYPASS = "BYPASS"  # the cache did not take part: warming is pointless

    @property
    def cached(self) -> bool:
        """True when the answer came out of the cache."""
        return self in (CacheState.HIT, CacheState.STALE, CacheState.UPDATING, CacheState.REVALIDATED)


_WORDS = {state.value: state for state in CacheState}


def _from_rfc9211(value: str) -> CacheState | None:
    # The first member is the cache nearest the origin; the last one is the node we talked to.
    member = value.split(",")[-1]
    params = [p.strip().lower() for p in member.split(";")[1:]]
    if "hit" in params:
        return CacheState.HIT
    for param in params:
        if param.startswith("fwd="):
            fwd = param[4:].strip('"')
            if fwd == "bypass":
                return CacheState.BYPASS
            if fwd == "stale":
                return CacheState.EXPIRED
            return CacheState.MISS
    return None


def _from_word(value: str) -> CacheState | None:
    if (state := _WORDS.get(value)) is not None:
        return state  # nginx's `X-Cache-Status: MISS`, the usual answer: read at once
    # "HIT from shield, MISS from edge": only the last member is the node we talked to.
    members = [m for m in value.split(",") if m.strip()]
    for token in members[-1].split() if members else ():
        word = token.upper().removeprefix("TCP_").removeprefix("REFRESH_")
        if word in _WORDS:
            return _WORDS[word]
        if "HIT" in word:
            return CacheState.HIT
        if "MISS" in word:
            return CacheState.MISS
    return None


def _field(headers: Mapping[str, str], name: str) -> str | None:
    """Every field line of `name` joined with ", " (RFC 9110); a multi-valued map's `get` gives only the first.

    The clients' response headers (aiohttp's multidict, pyreqwest's HeaderMap) keep one value per field line
    and have `getall`: aiohttp's raises KeyError for an absent field, pyreqwest's answers []. pyreqwest gives
    no text for a field with a byte outside ASCII (ValueError): such a field is not read, as if absent
    (`_present` still sees it).
    """
    getall = getattr(headers, "getall", None)
    try:
        if getall is None:
            return headers.get(name)
        lines: list[str] = getall(name)
    except (KeyError, ValueError):
        return None
    return ", ".join(lines) if lines else None


def _present(headers: Mapping[str, str], name: str) -> bool:
    """Whether the answer has a field `name`, readable or not."""
    return name in headers


_Reader = tuple[str, Callable[[str], CacheState | None]]
_CACHE_STATUS: _Reader = ("Cache-Status", _from_rfc9211)
_X_CACHE: _Reader = ("X-Cache", _from_word)
_X_CACHE_STATUS: _Reader = ("X-Cache-Status", _from_word)
# The headers read, in their order, for each kind (see the module's docstring); None: any kind.
_READERS: dict[NodeKind | None, tuple[_Reader, ...]] = {
    NodeKind.SQUID: (_X_CACHE, _CACHE_STATUS, _X_CACHE_STATUS),
    NodeKind.ATS: (_X_CACHE, _CACHE_STATUS, _X_CACHE_STATUS),
    NodeKind.VARNISH: (_X_CACHE, _CACHE_STATUS, _X_CACHE_STATUS),
    NodeKind.NGINX: (_X_CACHE_STATUS, _CACHE_STATUS, _X_CACHE),  # its own, as README's example configures it
    NodeKind.GENERIC: (_CACHE_STATUS, _X_CACHE_STATUS, _X_CACHE),
    None: (_CACHE_STATUS, _X_CACHE_STATUS, _X_CACHE),
}
_NO_X_VARNISH = frozenset({NodeKind.NGINX, NodeKind.SQUID, NodeKind.ATS})  # kinds that never write it


def cache_state(headers: Mapping[str, str], kind: NodeKind | None = None) -> CacheState | None:
    """The node's cache state from `headers` (a case-insensitive mapping), or None when it does not say.

    `kind` is the node's kind, when known: Squid, ATS and Varnish have `X-Cache` read first, Varnish its
    `X-Varnish` before all, nginx its `X-Cache-Status`; nginx, Squid and ATS have no `X-Varnish` read.
    """
    if kind is NodeKind.VARNISH and (varnish := _last_x_varnish(headers)):
        return _from_x_varnish(varnish)
    for name, read in _READERS[kind]:
        value = _field(headers, name)
        if value and (state := read(value)):
            return state
    if kind not in _NO_X_VARNISH and (varnish := _last_x_varnish(headers)):
        return _from_x_varnish(varnish)
    age = age_of(headers)
    return None if age is None or age == 0 else CacheState.HIT


def _last_x_varnish(headers: Mapping[str, str]) -> str:
    """The last field line of `X-Varnish` (the node we talked to), or ""."""
    return (_field(headers, "X-Varnish") or "").split(",")[-1]


def _from_x_varnish(value: str) -> CacheState:
    """Varnish's transaction ids: the request's alone is a MISS; with the stored object's, a HIT."""
    return CacheState.HIT if len(value.split()) >= 2 else CacheState.MISS


DELTA_MOST = 2**31  # RFC 9111 1.2.2: delta-seconds beyond what a cache can count are read as this
NUMBER_MOST = 2**62  # a time (`@` seconds since the epoch) or a length beyond any


def header_number(text: str, most: int = DELTA_MOST) -> int | None:
    """A header's number of ASCII digits, `most` when it is larger; None when it is none. (str.isdigit takes `²`
    and the Arabic-Indic digits, which int refuses, as it refuses more than 4,300 digits: an item failed as an
    internal error, a traceback a try: a reviewer's.)"""
    if not ascii_digits(text):
        return None
    return most if len(text) > 18 else min(int(text), most)  # (19 digits or more: past any length or time)


def age_of(headers: Mapping[str, str]) -> int | None:
    """The answer's `Age` (seconds it spent in caches), the last field line's (the node we talked to), or None."""
    return header_number((_field(headers, "Age") or "").split(",")[-1].strip())


def retry_after_of(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The answer's `Retry-After` as seconds from now (delay-seconds or an HTTP date; 0 for a date passed), or
    None: absent or neither."""
    text = (_field(headers, "Retry-After") or "").split(",")[-1].strip()
    if not text:
        return None
    seconds = header_number(text)
    if seconds is not None:
        return float(seconds)
    when = _http_date(text)
    return None if when is None else max(0.0, when - (time.time() if now is None else now))


def vary_of(headers: Mapping[str, str]) -> str | None:
    """The answer's `Vary` (every field line), or None: the request headers a cache keeps a copy for each value of."""
    return _field(headers, "Vary") if "Vary" in headers else None  # a quick way out: most answers have none


_NOT_STORED = frozenset({"no-store", "private", "no-cache"})
# The fields asks_not_to_store reads: an answer with none of them does not ask.
_STORE_FIELDS = ("X-Accel-Expires", "Cache-Control", "Expires", "Set-Cookie", "Surrogate-Control", "Vary")
VARY_MAX_BYTES = 128  # nginx does not store an answer whose Vary is longer (NGX_HTTP_CACHE_VARY_LEN)


def asks_not_to_store(headers: Mapping[str, str], now: float | None = None) -> str | None:
    """Why the answer asks caches not to store it, as its headers say, or None. What nginx and Varnish then
    do not store (unless told to ignore it): `X-Accel-Expires: 0` or a time passed (`@epoch`) (nginx's; any
    other number it reads before `Cache-Control` and `Expires`, which it then ignores; a value that is no
    number is ignored); `Cache-Control: no-store`, `private` or `no-cache`; a lifetime (`s-maxage`, else
    `max-age`) of 0 or that is no number of seconds (nginx reads `"60"`, `-1` and `1.5` so); without either,
    an `Expires` that has passed (or does not parse, as RFC 9111 reads it) by `now` (the time of the clock);
    `Set-Cookie`; `Vary: *`, or a `Vary` longer than nginx stores; `Surrogate-Control: no-store` (Varnish's,
    which reads it before `Cache-Control`; nginx stores such an answer: verified, it is a HIT). Several field
    lines of a name are read as one; a field that is not ASCII is not read (`Set-Cookie` counts all the same)."""
    for name in _STORE_FIELDS:
        if name in headers:
            break
    else:
        return None  # the usual answer: none of the fields read below (a quick way out: 1 µs against 5)
    now = time.time() if now is None else now
    accel = (_field(headers, "X-Accel-Expires") or "").strip()
    at = header_number(accel.removeprefix("@"), NUMBER_MOST)
    if accel == "0" or (accel.startswith("@") and at is not None and at <= now):
        return f"X-Accel-Expires: {accel[:40]}"
    if at is None and (why := _lifetime_refused(headers, now)) is not None:
        return why
    if _present(headers, "Set-Cookie"):
        return "Set-Cookie"
    surrogate = _field(headers, "Surrogate-Control") or ""
    if any(d.strip().lower() == "no-store" for d in surrogate.split(",")):
        return "Surrogate-Control: no-store"
    vary = _field(headers, "Vary") or ""
    if any(member.strip() == "*" for member in vary.split(",")):
        return "Vary: *"
    if len(vary) > VARY_MAX_BYTES:
        return f"Vary longer than {VARY_MAX_BYTES} bytes ({len(vary)})"
    return None


def _lifetime_refused(headers: Mapping[str, str], now: float) -> str | None:
    """What of `Cache-Control` or `Expires` asks caches not to store the answer (see asks_not_to_store)."""
    lifetimes: dict[str, str] = {}
    for name, value in _cache_control(headers):
        if name in _NOT_STORED:
            return f"Cache-Control: {name}"
        if name in ("s-maxage", "max-age"):
            lifetimes.setdefault(name, value)
    which = "s-maxage" if "s-maxage" in lifetimes else "max-age"
    lifetime = lifetimes.get(which)
    if lifetime is not None:
        if (seconds := header_number(lifetime)) is None:
            return f"Cache-Control: {which}={lifetime[:40]} (not a number of seconds)"
        if seconds == 0:
            return f"Cache-Control: {which}=0"
    elif (expires := _field(headers, "Expires")) is not None:
        when = _http_date(expires)
        if when is None or when <= now:
            return f"Expires: {expires.strip()[:40]}"
    return None


_LIFETIME_FIELDS = ("X-Accel-Expires", "Cache-Control", "Expires")


def fresh_for(headers: Mapping[str, str], cached: bool = False, now: float | None = None) -> float | None:
    """Seconds the node's copy stays fresh, as the answer tells its lifetime, or None when it does not (the
    cache's own settings decide then: nginx's proxy_cache_valid, Varnish's default_ttl). The lifetime is read as
    nginx reads it: `X-Accel-Expires` (seconds, or `@` a time) before `Cache-Control`'s `s-maxage`, then
    `max-age`, then `Expires`. A time (`@`, `Expires`) is the copy's end as it is (by `now`); seconds are
    counted from when the copy was stored: less its `Age`, and 0 for an answer from the cache (`cached`) that
    tells none, whose age cannot be known (nginx sends no `Age`, and its own `Date`: a HIT of a copy near its
    end looked fresh for its whole lifetime). An answer that asks caches not to store it is not looked at here
    (asks_not_to_store)."""
    for name in _LIFETIME_FIELDS:
        if name in headers:
            break
    else:
        return None  # the usual answer of a static file: its cache's settings decide
    now = time.time() if now is None else now
    accel = (_field(headers, "X-Accel-Expires") or "").strip()
    seconds = header_number(accel)  # a lifetime counted from the copy's storing
    if seconds is None and accel.startswith("@") and (at := header_number(accel[1:], NUMBER_MOST)) is not None:
        return max(0.0, at - now)
    if seconds is None:
        found: dict[str, list[str]] = {}
        for name, value in _cache_control(headers):
            if name in ("s-maxage", "max-age"):
                found.setdefault(name, []).append(value.strip('"'))
        told = found.get("s-maxage", found.get("max-age"))
        if told is not None:  # told twice (two field lines: nginx takes the last, Squid the first): the shorter
            numbers = [n for t in told if (n := header_number(t)) is not None]
            if len(numbers) < len(told):
                return None
            seconds = min(numbers)
        elif (expires := _field(headers, "Expires")) is not None and (when := _http_date(expires)) is not None:
            return max(0.0, when - now)
    if seconds is None:
        return None
    age = age_of(headers)  # a MISS's too: an upstream cache's copy it was filled from, as Varnish and Squid count
    if age is None:
        return 0.0 if cached else float(seconds)
    return max(0.0, float(seconds - age))


def _cache_control(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """`Cache-Control`'s directives (every field line), each as (lower-case name, value or "")."""
    directives = []
    for directive in (_field(headers, "Cache-Control") or "").split(","):
        name, _, value = directive.partition("=")
        directives.append((name.strip().lower(), value.strip()))
    return directives


def _http_date(text: str) -> float | None:
    """An HTTP date as epoch seconds, or None when it does not parse."""
    try:
        return email.utils.parsedate_to_datetime(text.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
