"""How each node purges: the request to send for a URL or a directory, and how to read the answer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..config import Node, NodeKind
from ..models import Tier
from .signals import CacheState


class Verdict(enum.Enum):
    PURGED = "PURGED"
    NOT_CACHED = "NOT_CACHED"  # nothing to purge: as good as purged
    NONE_KNOWN = "NONE_KNOWN"  # a directory purged URL by URL of which edgewarm knows none: nothing was asked
    RETRY = "RETRY"
    REFUSED = "REFUSED"
    UNREADABLE = "UNREADABLE"  # the node cannot read a request for the URL (400, 414): it cannot have cached it
    NOT_REFETCHED = "NOT_REFETCHED"  # a bypass refetch (purge_method GET/HEAD) answered 4xx: the copy stays
    NOT_BYPASSED = "NOT_BYPASSED"  # a bypass refetch answered from the node's cache: the header was not taken


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    method: str
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # None: the URL's own path and query
    encodings: tuple[str, ...] = ()  # the same purge again with each of these as Accept-Encoding


# What edgewarm's own edges ask their shield with, besides [engine] accept_encoding (which nginx edges pass on):
# Varnish asks its backend with "gzip", and so does ATS (normalize_ae, on in Debian). An nginx or Squid shield keeps
# one copy per value when the origin's answer varies on it (Vary: Accept-Encoding), and its purge removes the copy
# of the purge's own header only: a Varnish edge refilled the old object from the copy its own warm had left on an
# nginx shield, an ATS edge from a Squid shield's (testers'), every item "purged". (Varnish and ATS purge them all.)
EDGES_ASK_WITH = ("gzip",)
_COPY_PER_ENCODING = frozenset({NodeKind.NGINX, NodeKind.SQUID})


class Unsupported(Exception):
    """The node cannot do this kind of purge; the message says why and what to configure."""


def url_purge(node: Node, accept_encoding: str = "") -> PurgeRequest:
    """The purge of a URL on `node`; on an nginx or Squid shield, also of the copies edgewarm's edges' requests made
    (EDGES_ASK_WITH), besides the one of `accept_encoding` (the Fetcher's header, [engine] accept_encoding)."""
    if not node.purge_method:
        raise Unsupported(f"node {node.name} has no purge method (purge_method is empty in its config)")
    encodings: tuple[str, ...] = ()
    chosen = any(name.lower() == "accept-encoding" for name in node.purge_headers)  # the operator's, kept
    if node.kind in _COPY_PER_ENCODING and node.tier is Tier.SHIELD and node.purge_method == "PURGE" and not chosen:
        encodings = tuple(e for e in EDGES_ASK_WITH if e != accept_encoding)
    return PurgeRequest(node.purge_method, dict(node.purge_headers), encodings=encodings)


def prefix_purge(node: Node, prefix: str) -> PurgeRequest | None:
    """The one request that purges everything under `prefix`, or None: purge each known URL instead."""
    mode = node.dir_purge_mode
    if mode == "none":
        raise Unsupported(f'node {node.name} cannot purge a directory (dir_purge = "none")')
    if mode == "ban":
        return PurgeRequest("BAN", {**node.purge_headers, node.ban_header: prefix}, path="/")
    url_purge(node)  # "urls" needs the URL purge to work
    return None


# The statuses of a node that cannot read a request for the URL (nginx: a malformed escape, a URL too long).
UNREADABLE = frozenset({400, 414})


# What a bypass refetch may not be answered with: the node's copy, as it was (REVALIDATED: the origin said it is
# current, which is what the refetch was for).
_OLD_COPY = frozenset({CacheState.HIT, CacheState.STALE, CacheState.UPDATING})


def verdict(
    request: PurgeRequest, status: int | None, network_error: bool, cache_state: CacheState | None = None
) -> Verdict:
    """How the answer (`status`, and the `cache_state` the node told) to a purge `request` reads."""
    if status == 501 and not network_error and request.method not in ("GET", "HEAD"):
        return Verdict.REFUSED  # the node does not implement the method: asking again cannot help (a tester's
        # directory of 310 URLs purged 4 times over, 90 s, for "HTTP 501; gave up after 4 attempts")
    if network_error or status is None or status >= 500 or status in (408, 429):
        return Verdict.RETRY
    if 200 <= status < 300:
        if request.method in ("GET", "HEAD") and cache_state in _OLD_COPY:
            # A node whose proxy_cache_bypass does not take the header served its old copy: not a purge (a tester's
            # refresh "succeeded" while viewers kept the old object).
            return Verdict.NOT_BYPASSED
        return Verdict.PURGED
    if status == 404 and request.method == "PURGE":
        return Verdict.NOT_CACHED  # the cache-purge module's answer for a key it does not hold
    if request.method in ("GET", "HEAD") and status != 405:
        return Verdict.NOT_REFETCHED  # the node passed on the origin's refusal (405: the node's own, for a method)
    if status in UNREADABLE and request.path is None:  # for the URL itself (a BAN's 400 is its VCL refusing it)
        return Verdict.UNREADABLE
    return Verdict.REFUSED
