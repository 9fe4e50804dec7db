"""Read a cache's state from response headers, whatever the cache.

Understood, in this order: `Cache-Status` (RFC 9211), nginx `X-Cache-Status`, `X-Cache` (Squid, ATS, many
CDNs: "HIT from host", "TCP_MISS"), Varnish `X-Varnish` (two transaction ids mean a hit) and finally `Age`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


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
    for token in value.replace(",", " ").split():
        word = token.upper().removeprefix("TCP_").removeprefix("REFRESH_")
        if word in _WORDS:
            return _WORDS[word]
        if "HIT" in word:
            return CacheState.HIT
        if "MISS" in word:
            return CacheState.MISS
    return None


def cache_state(headers: Mapping[str, str]) -> CacheState | None:
    """The node's cache state from `headers` (a case-insensitive mapping), or None when it does not say."""
    value = headers.get("Cache-Status")
    if value and (state := _from_rfc9211(value)):
        return state
    for name in ("X-Cache-Status", "X-Cache"):
        value = headers.get(name)
        if value and (state := _from_word(value)):
            return state
    varnish = headers.get("X-Varnish")
    if varnish:
        return CacheState.HIT if len(varnish.split()) >= 2 else CacheState.MISS
    age = headers.get("Age")
    if age and age.strip().isdigit():
        return CacheState.HIT if int(age) > 0 else None
    return None
