"""From one fetch to one item outcome: success, retry (with backoff) or failure. Pure functions."""

from __future__ import annotations

import random
from dataclasses import replace

from ..config import Engine, NodeKind
from ..models import ItemOutcome
from ..nodes.purge import Verdict
from .fetcher import RETRYABLE_STATUS, FetchResult

# Gateway errors: a proxy (the node, its shield, or one before the origin) got no valid or timely answer from
# its upstream. Said so: the node itself is up.
GATEWAY_ERRORS = {
    502: " (a gateway error: the node, a shield or a proxy before the origin got no valid answer from upstream)",
    504: " (a gateway error: the node, a shield or a proxy before the origin got no answer from upstream in time)",
}
NO_STATE_TOLD = (
    "the node tells one for other URLs: it did not use its cache for this one"
    " (nginx does not for a cache key longer than its proxy_buffer_size)"
)
HOLD_JITTER = 1.0  # seconds spread over the items that wait for a node held down, so they do not come back at once


_ONE_GZIP_COPY = frozenset({NodeKind.VARNISH, NodeKind.ATS})


def variant_note(varies: str | None, kind: NodeKind, settings: Engine) -> str | None:
    """What a warm whose answer varies on request headers (`Vary`) filled: the copy for edgewarm's own values of
    them, which other viewers may not share; None when nothing varies (or only what the node reads as one copy:
    Varnish keeps one gzipped copy for every Accept-Encoding, and unzips it for those without gzip; ATS, its
    `normalize_ae` 1 by default, one for every viewer that accepts gzip: a tester's Safari and curl --compressed
    were HITs of the copy warmed, which the note said they would not share)."""
    if not varies:
        return None
    names = []
    for member in varies.split(","):
        name = member.strip().lower()
        if not name or name in ("*", "host") or (name == "accept-encoding" and kind in _ONE_GZIP_COPY) or name in names:
            continue  # (Host: the URL's own, as its viewers send it)
        names.append(name)
    if not names:
        return None
    sent = {"accept-encoding": settings.accept_encoding, "user-agent": settings.user_agent, "accept": "*/*"}
    shown = [f"{n.title()} {sent[n]!r}" if sent.get(n) else f"no {n.title()}" for n in names]
    chosen = (
        " ([engine] accept_encoding and user_agent choose the copy warmed)"
        if {"accept-encoding", "user-agent"} & set(names)
        else ""
    )
    return (
        f"its answer varies on {', '.join(n.title() for n in names)} (Vary): warmed the copy for {', '.join(shown)}; "
        "viewers who send other values get their own copy: none until one is stored, or one stored before, which a "
        f"refresh does not remove{chosen}"
    )


def backoff_delay(attempt: int, settings: Engine, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c] where c = min(max, base * 2**(attempt-1))."""
    ceiling = min(settings.backoff_max, settings.backoff_base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


# Varnish (7) keeps a failed fetch's 503 for the requests that waited for it (1 s, and 5 s of grace), served as a
# HIT (two X-Varnish ids) to them and to those that follow: a tester's shield warm, raced by a viewer's request
# during an origin hiccup, failed at once "it keeps this answer", then (Age 0 retried) at Age 1. Such a HIT younger
# than this is asked again once this old: a 5xx its VCL keeps longer is then older, and fails as kept.
VARNISH_ERROR_KEPT = 8.0


def _young_error_kept(result: FetchResult) -> int | None:
    """The age of a 5xx answered from the cache younger than VARNISH_ERROR_KEPT, or None."""
    if result.network_error or result.status is None or result.status < 500 or result.age is None:
        return None
    cached = result.cache_state is not None and result.cache_state.cached
    return result.age if cached and result.age < VARNISH_ERROR_KEPT else None


def is_retryable(result: FetchResult) -> bool:
    if result.network_error:
        return True
    assert result.status is not None
    if result.cache_state is not None and result.cache_state.cached:
        return False  # an error the node keeps in its cache: it answers the same until it expires or is purged
    return 500 <= result.status < 600 or result.status in RETRYABLE_STATUS


def warm_outcome(
    item_id: int,
    attempt: int,
    result: FetchResult,
    settings: Engine,
    now: float,
    *,
    verified: FetchResult | None = None,
    note: str | None = None,
    rng: random.Random | None = None,
    varnish: bool = False,
) -> ItemOutcome:
    """Judge a warm. `verified` is the second fetch made when verification is on and the first was not a HIT;
    `note` is a success's (variant_note); `varnish`: the node is Varnish (VARNISH_ERROR_KEPT)."""
    final = verified or result
    # `_value_`: the member's value, as `.value` gives it without its descriptor (on the path of every warm).
    state: str | None = final.cache_state._value_ if final.cache_state else None

    def done(ok: bool, error: str | None = None) -> ItemOutcome:
        fresh = final.fresh_for if ok else None
        return ItemOutcome(item_id, ok, attempt, result.status, state, result.bytes, error, fresh_for=fresh)

    if result.status is not None and not result.network_error and 200 <= result.status < 300:
        if state == "BYPASS":  # final.cache_state is CacheState.BYPASS
            return done(False, "the node bypassed its cache for this URL: it cannot be warmed")
        if result.status == 206:  # to a GET that asked for no range: a part, which caches do not keep as the object
            return done(
                False, "HTTP 206 (a part of the object) to a request for the whole: not the object (not retried)"
            )
        if verified is not None and (
            verified.network_error or not (verified.cache_state and verified.cache_state.cached)
        ):
            why = verified.error or f"{verified.cache_state or 'no cache state'} again"
            told = f" (its answer said {result.not_stored})" if result.not_stored else ""
            if verified.cache_state is None and not verified.network_error:
                told = f" ({NO_STATE_TOLD})"
            return done(False, f"not cached after the warm: {why}{told}")
        return done(True, note)
    if varnish and (age := _young_error_kept(result)) is not None:
        failed = done(
            False,
            f"HTTP {result.status} from the node's cache ({result.cache_state}, {age} s old): Varnish keeps a "
            "failed fetch's error a few seconds for the requests that waited for it",
        )
        again = retry_or_give_up(failed, result, settings, now, rng)
        if again.retry_at is None:
            return again
        return replace(again, retry_at=max(again.retry_at, now + VARNISH_ERROR_KEPT - age))
    if result.status is not None and not result.network_error and not is_retryable(result):
        if result.cache_state is not None and result.cache_state.cached:
            return done(
                False,
                f"HTTP {result.status} from the node's cache ({result.cache_state}): it keeps this answer of the "
                "origin's (not retried; \"refresh\": true, the CLI's --refresh-first, purges it first)",
            )
        if result.status == 304:
            return done(False, "HTTP 304 (not modified) to a plain GET: not the object")
        if 300 <= result.status < 400:
            return done(False, f"HTTP {result.status}: a redirect, not the object (not followed: warm its target)")
        if not 100 <= result.status < 600:
            return done(False, f"HTTP {result.status}: not an HTTP status (not retried)")
        # An answer that tells a cache state came through the cache; one that tells none may be the node's own
        # (nginx answers 400 or 414 itself to a request line it cannot take).
        who = "the origin" if result.cache_state is not None else "the node or the origin"
        return done(False, f"HTTP {result.status} (not retried: {who} refused it)")
    asked = "" if result.retry_after is None else f" (Retry-After: {result.retry_after:g} s)"
    failed = done(False, result.error or f"HTTP {result.status}{GATEWAY_ERRORS.get(result.status or 0, '')}{asked}")
    return retry_or_give_up(failed, result, settings, now, rng)


def retry_or_give_up(
    failed: ItemOutcome, result: FetchResult, settings: Engine, now: float, rng: random.Random | None
) -> ItemOutcome:
    """A failure worth another try: due again after a backoff, or final once max_attempts are spent, or at
    once when `result` is final (the next try would fail the same way). A request to a node held down (not sent,
    or failed to connect meanwhile) spends no attempt: the item waits for the node, while it has been down for
    less than `node_down_wait`."""
    if result.final:
        return replace(failed, error=f"{failed.error} (not retried: it would fail the same way)")
    hold = result.hold
    if hold is not None:
        patience = settings.node_down_wait
        # While the request let through is out, its answer decides: the node may be back (asked at the end of
        # node_down_wait at the latest, see NodeHealth), and no request was made for this item.
        if hold.down_for < patience or (patience and hold.probe_out):
            wait = hold.retry_in + (rng or random).uniform(0, HOLD_JITTER)
            error = waiting_for_node(failed.error or "", settings)
            return replace(failed, attempts=failed.attempts - 1, error=error, retry_at=now + wait)
        if patience:
            failed = replace(failed, error=f"{failed.error}; down for longer than node_down_wait ({patience:g} s)")
    if failed.attempts >= settings.max_attempts:
        said = failed.error or ""
        if hold is not None and hold.wait:  # (a tester's final error said the node was "asked again in 1 s")
            said = said.replace(hold.wait, "", 1)
        return replace(failed, error=f"{said}; gave up after {failed.attempts} attempts")
    delay = backoff_delay(failed.attempts, settings, rng)
    if result.retry_after is not None:  # the node's Retry-After (a 429's, a 503's), up to backoff_max
        delay = max(delay, min(result.retry_after, settings.backoff_max))
    if hold is not None and settings.node_down_wait:  # past it: not before the node is asked again (an attempt
        # each time it is, not several unsent); without it (0), the items are to end at once
        delay = max(delay, hold.retry_in + (rng or random).uniform(0, HOLD_JITTER))
    return replace(failed, retry_at=now + delay)


def waiting_for_node(error: str, settings: Engine) -> str:
    """The error of an item that waits for its node, held down (`error` says why)."""
    return f"{error}; its items wait for it (node_down_wait: {settings.node_down_wait:g} s)"


def purge_outcome(
    item_id: int,
    attempt: int,
    verdict: Verdict,
    result: FetchResult,
    settings: Engine,
    now: float,
    *,
    detail: str | None = None,
    rng: random.Random | None = None,
) -> ItemOutcome:
    """Judge a purge (or a directory purge made of several, summed up in `result` and `detail`: kept as the
    item's note when it succeeded, the error's start when not)."""
    if verdict in (Verdict.PURGED, Verdict.NOT_CACHED):
        return ItemOutcome(item_id, True, attempt, result.status, verdict.value, result.bytes, detail)
    if verdict is Verdict.NONE_KNOWN:  # no cache state: the node was not asked (a tester read NOT_CACHED as its word)
        return ItemOutcome(item_id, True, attempt, None, None, 0, detail)
    error = detail or result.error or f"HTTP {result.status}"
    if verdict in (Verdict.REFUSED, Verdict.UNREADABLE):
        why = (
            "the node cannot read a request for this URL (nor could it cache it)"
            if verdict is Verdict.UNREADABLE
            else "the node does not implement the purge's method (its kind and purge_method in the config?)"
            if result.status == 501
            else "the node refused the purge (is purging enabled there, and allowed from this host?)"
        )
        return ItemOutcome(item_id, False, attempt, result.status, None, result.bytes, f"{error}: {why}")
    if verdict is Verdict.NOT_REFETCHED:
        why = "the refetch that replaces the node's copy was refused (the origin's answer, passed on?): it stays"
        return ItemOutcome(item_id, False, attempt, result.status, None, result.bytes, f"{error}: {why}")
    if verdict is Verdict.NOT_BYPASSED:
        state = result.cache_state
        why = (
            f"the node answered the refetch from its cache ({state}): it did not take the purge's headers as a bypass "
            "(nginx: proxy_cache_bypass on that header; ATS takes none unless its "
            "proxy.config.http.cache.ignore_client_no_cache is 0: use PURGE), so its old copy stays"
        )
        return ItemOutcome(item_id, False, attempt, result.status, state, result.bytes, f"{error}: {why}")
    failed = ItemOutcome(item_id, False, attempt, result.status, None, result.bytes, error)
    return retry_or_give_up(failed, result, settings, now, rng)
