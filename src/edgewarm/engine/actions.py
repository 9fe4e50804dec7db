"""What one item does on its node: warm (GET), purge a URL, purge a directory. Returns the item's outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any

from ..config import Engine as Settings
from ..config import Node, NodeKind
from ..errors import RequestRefused, StoreError
from ..models import Claim, ItemAction, ItemOutcome
from ..nodes import CacheState, purge
from ..store import TaskStore
from ..urls import TargetUrl, escape_cases, escapes_upper, spellings, stored_target
from .fetcher import FetchResult, NodeClient
from .outcome import purge_outcome, retry_or_give_up, variant_note, warm_outcome

# A directory purge on a node without prefix purge covers at most this many known URLs.
KNOWN_URLS_LIMIT = 100_000
KNOWN_SPELLINGS_LIMIT = 1_000  # URLs starting with a file's, read for its other spellings (_spellings_known)
# What a cache answers when it cannot get the object from upstream: nginx 502 (refused) and 504 (no answer in
# time), Varnish 503 ("Backend fetch failed"), Squid 502/503, ATS 502.
GATEWAY_ERRORS = frozenset({502, 503, 504})
_DONE = (purge.Verdict.PURGED, purge.Verdict.NOT_CACHED)
# A warm's note (it succeeds: without verify, an answer that tells no state counts as warmed) when its node told
# a state in other answers.
NO_STATE_NOTE = (
    "its answer told no cache state, though the node tells one in other answers: it may not have used its cache for "
    "this URL (nginx does not for a cache key longer than its proxy_buffer_size; [engine] verify = true asks again)"
)
AGE_SLACK_SECONDS = 10  # `Age` is whole seconds, counted by the node when it answers


def perform(
    claim: Claim,
    node: Node,
    attempt: int,
    fetcher: NodeClient,
    store: TaskStore,
    settings: Settings,
    now: float,
    *,
    upstream: Sequence[Node] = (),
    purged: float | None = None,
) -> Coroutine[Any, Any, ItemOutcome]:
    """Do `claim` on `node` once (await it); `now` is when the outcome is judged (for a retry's due time).
    `upstream`: the nodes `node` fetches through (an edge's shields), asked after when it cannot get an object
    from them. `purged`: when (time.monotonic()) a warm's URL was purged on the Varnish node, its warm just after
    (a refresh's); a copy the node had from before then is not a warm. Not a coroutine itself: a warm is the
    coroutine of `_warm`, with no frame of this one around it (this is on the path of every item)."""
    target = stored_target(claim.url)
    if claim.action is ItemAction.WARM:
        return _warm(claim, node, target, attempt, fetcher, settings, now, upstream, purged)
    return _purge(claim, node, target, attempt, fetcher, store, settings, now)


async def _purge(
    claim: Claim,
    node: Node,
    target: TargetUrl,
    attempt: int,
    fetcher: NodeClient,
    store: TaskStore,
    settings: Settings,
    now: float,
) -> ItemOutcome:
    try:
        if claim.action is ItemAction.PURGE:
            request = purge.url_purge(node, settings.accept_encoding)
            verdict, result = await _purge_url(node, target, request, fetcher, await _spellings_known(target, store))
            detail = None
        else:
            verdict, result, detail = await _purge_dir(node, target, fetcher, store, settings, attempt)
    except purge.Unsupported as exc:
        return ItemOutcome(claim.item_id, False, attempt, error=str(exc))
    except StoreError as exc:  # the directory's known URLs not read: tried again as a request that failed is
        failed = ItemOutcome(claim.item_id, False, attempt, error=f"the URLs known there: {exc}")
        return retry_or_give_up(failed, FetchResult(None), settings, now, None)
    return purge_outcome(claim.item_id, attempt, verdict, result, settings, now, detail=detail)


async def _warm(
    claim: Claim,
    node: Node,
    target: TargetUrl,
    attempt: int,
    fetcher: NodeClient,
    settings: Settings,
    now: float,
    upstream: Sequence[Node],
    purged: float | None,
) -> ItemOutcome:
    if upstream and (held := await _upstream_down(node, target, upstream, fetcher, settings)) is not None:
        return warm_outcome(claim.item_id, attempt, held, settings, now)
    result = await fetcher.request("GET", node, target)
    if result.status in GATEWAY_ERRORS and upstream:
        result = await _upstream_held(node, target, result, upstream, fetcher)
    since = None if purged is None else time.monotonic() - purged  # at the answer: the node counts Age then
    if since is not None and result.age is not None and result.age > since + AGE_SLACK_SECONDS:
        # A copy older than the purge, served from the cache: the purge answered as done and removed nothing (a
        # Varnish that passes PURGE on to its backend, whose answer was taken for its own), or the node refilled
        # it from an upstream edgewarm did not purge.
        error = (
            f"served from the node's cache {result.age} s old, {since:.0f} s after its purge: the purge did not "
            "remove it, or the node refilled it from an upstream that still had it (does the node itself handle "
            "PURGE? README: How each cache purges)"
        )
        state = None if result.cache_state is None else result.cache_state.value
        return ItemOutcome(claim.item_id, False, attempt, result.status, state, result.bytes, error)
    verified = None
    # Verified when asked to, and when the answer asks caches not to store it: a MISS then is likely for good.
    # Not on a node that tells no cache state: a second answer could not tell either; but one that tells a
    # MISS in other answers and none in this one did not use its cache (nginx, for a cache key longer than
    # its proxy_buffer_size): asked to verify, it is asked again.
    state = result.cache_state
    if (
        result.status is not None
        and 200 <= result.status < 300
        and not result.network_error
        and (
            (state is not None and not state.cached and (settings.verify or result.not_stored))
            or (state is None and settings.verify and fetcher.tells_misses(node))
        )
    ):
        verified = await fetcher.request("GET", node, target)
    note = variant_note(result.varies, node.kind, settings)
    if state is None and verified is None and result.status == 200 and fetcher.tells_misses(node):
        told = NO_STATE_NOTE
        note = told if note is None else f"{note}; {told}"
    varnish = node.kind is NodeKind.VARNISH
    return warm_outcome(claim.item_id, attempt, result, settings, now, verified=verified, note=note, varnish=varnish)


async def _upstream_down(
    node: Node, target: TargetUrl, upstream: Sequence[Node], fetcher: NodeClient, settings: Settings
) -> FetchResult | None:
    """The hold of a node `node` fetches through while it is held down (asked first, `HEAD`: after its cooldown,
    that is the probe) and its items wait for it (node_down_wait), or None: then `node` is asked. An edge's items
    waiting for a shield were each sent to the edge at every end of the shield's cooldown, for a 502 and a request
    to the dead shield each (a tester's: 220 a time, 882 in a minute). Past node_down_wait the edge is asked (an
    attempt each): it may hold the object (a re-tester's 2,292 edge items failed unsent that were HITs there)."""
    health = fetcher.health
    if health is None:
        return None
    for shield in upstream:
        if health.is_down(shield) and (asked := await fetcher.request("HEAD", shield, target)).hold is not None:
            if asked.hold.down_for >= settings.node_down_wait:
                return None
            return replace(asked, error=f"not sent to {node.name}, which fetches through {shield.name}: {asked.error}")
    return None


async def _upstream_held(
    node: Node, target: TargetUrl, result: FetchResult, upstream: Sequence[Node], fetcher: NodeClient
) -> FetchResult:
    """`result`, a gateway error of `node`, with the hold of an upstream node that cannot be reached: the item
    then waits for that node as its own items do (outcome.retry_or_give_up), instead of spending its attempts
    while a shield restarts. Each upstream node is asked the URL with HEAD (a HIT there when it is up), so its
    health is known though its own items are done: one held down is not asked (NodeHealth), and after
    FAILURES_IN_A_ROW such questions that cannot connect it is held down."""
    for shield in upstream:
        asked = await fetcher.request("HEAD", shield, target)
        if asked.hold is not None:
            why = f"HTTP {result.status} from {node.name}, which fetches through {shield.name}: {asked.hold.reason}"
            return replace(result, error=why, hold=asked.hold)
    if node.kind is NodeKind.ATS and result.status == 502:
        # The shields answer, and ATS still answers 502: it counts its parent down for a while after failures.
        names = ", ".join(shield.name for shield in upstream)
        why = (
            f"HTTP 502 from {node.name} though {names} {'answers' if len(upstream) == 1 else 'answer'}: ATS "
            "may still count its parent down after failures (proxy.config.http.parent_proxy.retry_time, 300 s by "
            "default; README: How each cache purges, ATS)"
        )
        return replace(result, error=why)
    return result


def _own_state(node: Node, answer: FetchResult) -> CacheState | None:
    """The cache state a purge's answer is judged by: the node's own. One told with an `Age` may be another
    cache's (an upstream's Age passed on, or read alone: a node that tells nothing else), but on Varnish, whose
    X-Varnish is its own (a re-tester's refetches failed behind a shield that had just refetched), and on ATS and
    Squid, whose X-Cache, read first, is (README's ATS rule sets it; Squid adds its own last): a tester's ATS
    answered a GET purge from its cache (it ignores a client's no-cache), with an Age, said purged."""
    if answer.age is None or node.kind in _OWN_STATE_WITH_AGE:
        return answer.cache_state
    return None


_OWN_STATE_WITH_AGE = frozenset({NodeKind.VARNISH, NodeKind.ATS, NodeKind.SQUID})


async def _spellings_known(target: TargetUrl, store: TaskStore) -> list[str]:
    """The paths (and queries) to purge for a URL: each case of its escapes (escape_cases: the URL as given
    last), and any other spelling of its escapes edgewarm knows (warmed or refreshed: `%C3%bc`, which cannot be
    guessed)."""
    cases = escape_cases(target.path_query)
    if len(cases) == 1:  # no letter in an escape: one spelling
        return cases
    known = [stored_target(url) for url in await store.known_urls(target.url, KNOWN_SPELLINGS_LIMIT)]
    others = [k.path_query for k in known if target.reaches(k, whole=False) and k.path_query not in cases]
    return [*dict.fromkeys(others), *cases]


async def _purge_url(
    node: Node, target: TargetUrl, request: purge.PurgeRequest, fetcher: NodeClient, spelled: Sequence[str] = ()
) -> tuple[purge.Verdict, FetchResult]:
    """Send `request` for `target` with each of its other encodings, then as it is, while the purges work:
    PURGED when one of them removed a copy, else the first that did not work, else NOT_CACHED. The same for
    each of its paths `spelled` (its escapes in other cases: other keys to the node; the URL as given last).

    The other encodings first: nginx's purge module finds a copy of another `Accept-Encoding` through the copy
    stored first (under the URL's own key, whose `Vary` it reads), which is edgewarm's own when edgewarm warmed
    the node first (shields are warmed before their edges). Purged first, that one would leave the others
    unreachable by a purge and served again once the key is stored anew."""
    verdict, result = purge.Verdict.NOT_CACHED, FetchResult(None)
    spelled = spelled or [target.path_query]
    for path, encoding in ((p, e) for p in spelled for e in (*request.encodings, None)):
        headers = request.headers if encoding is None else {**request.headers, "Accept-Encoding": encoding}
        asked = target if path == target.path_query else replace(target, path_query=path)
        answer = await fetcher.request(request.method, node, asked, headers)
        found = purge.verdict(request, answer.status, answer.network_error, _own_state(node, answer))
        if found not in _DONE:
            return found, answer
        if found is purge.Verdict.PURGED or (encoding is None and verdict is purge.Verdict.NOT_CACHED):
            verdict, result = found, answer
    return verdict, result


async def _purge_dir(
    node: Node, target: TargetUrl, fetcher: NodeClient, store: TaskStore, settings: Settings, attempt: int = 1
) -> tuple[purge.Verdict, FetchResult, str | None]:
    directory = target.path_query
    if purge.prefix_purge(node, directory) is not None:
        # A prefix purge of each case of the directory's escapes (escape_cases; as given last), and of each other
        # spelling of them in the URLs edgewarm knows under it (`%C3%bc`, which cannot be guessed), while they work.
        prefixes = escape_cases(directory)
        if len(prefixes) > 1:
            known, _ = await _known_under(target, store)
            spelled = (path[: len(directory)] for _, paths in known for path in paths)  # an escape: 3 characters
            prefixes = [*dict.fromkeys(p for p in spelled if p not in prefixes), *prefixes]
        for place, prefix in enumerate(prefixes, 1):
            request = purge.prefix_purge(node, prefix)
            assert request is not None  # as for the directory's own spelling
            result = await fetcher.request(request.method, node, replace(target, path_query="/"), request.headers)
            verdict = purge.verdict(request, result.status, result.network_error, _own_state(node, result))
            if verdict is not purge.Verdict.PURGED or place == len(prefixes):
                return verdict, result, None
    # No prefix purge on this node: purge every URL at or under the directory that edgewarm has seen (its own
    # URL too, if it was warmed), in any spelling of the directory.
    request = purge.url_purge(node, settings.accept_encoding)
    known, found = await _known_under(target, store)
    failures: list[tuple[purge.Verdict, FetchResult]] = []
    purged = 0
    for start in range(0, len(known), 16):
        chunk = known[start : start + 16]
        results = await asyncio.gather(*(_purge_url(node, t, request, fetcher, paths) for t, paths in chunk))
        for verdict, result in results:
            if verdict not in _DONE:
                failures.append((verdict, result))
            purged += verdict is purge.Verdict.PURGED
    # A URL the node cannot read (nginx: 400 for a malformed escape accepted before, 414 for one too long) it
    # cannot have cached either, once other purges on it worked: it does not hold the directory's purge back.
    unreadable = [f for f in failures if f[1].status in purge.UNREADABLE]
    if unreadable and len(unreadable) < len(known):
        failures = [f for f in failures if f[1].status not in purge.UNREADABLE]
    not_cached = len(known) - len(failures) - purged  # the node held no copy (or could not have: unreadable)
    # After an attempt cut short (a network error, the fetch process killed), what it purged is not cached now:
    # "purged 0 … (1500 not cached there)" of a directory the first attempt had purged whole (a tester's).
    earlier = " or purged by an earlier attempt" if attempt > 1 else ""
    limited = any(len(urls) >= KNOWN_URLS_LIMIT for urls in found)  # there may be more: not all purged
    summary = (
        f"purged {purged} of the {'first ' if limited else ''}{len(known)} URLs known at or under the directory"
        + (f" ({not_cached} not cached there{earlier})" if not_cached else "")
        if known
        else "no URL at or under the directory is known to edgewarm (this node has no prefix purge: the URLs "
        "edgewarm warmed or refreshed are purged one by one)"
    )
    if limited:  # not a success (a bulk tester's 150,000 were said "purged 100000 of the 100000 known")
        raise purge.Unsupported(
            f"{summary}: a directory refresh reaches {KNOWN_URLS_LIMIT:,} in one spelling, and more may be known "
            "there: refresh its subdirectories, or its files by their URLs (edgewarm refresh -f FILE; or give this "
            'node a prefix purge: dir_purge = "ban" on Varnish)'
        )
    if not failures:  # no single answer stands for them all: no HTTP status
        done = purge.Verdict.PURGED if purged else purge.Verdict.NOT_CACHED if known else purge.Verdict.NONE_KNOWN
        return done, FetchResult(None), summary
    retry = [f for f in failures if f[0] is purge.Verdict.RETRY]
    verdict, result = (retry or failures)[0]
    return verdict, result, f"{summary}; the first failure: {result.error or f'HTTP {result.status}'}"


async def _known_under(
    directory: TargetUrl, store: TaskStore
) -> tuple[list[tuple[TargetUrl, list[str]]], list[list[str]]]:
    """The objects edgewarm knows at or under `directory` (_under), and the URLs found for each of its spellings.
    Of the site's root, also those written without the `/` (`http://a.test?x`, `http://a.test`): one object with
    `http://a.test/?x` to a node, which a root's refresh left cached (a tester's); the host's prefix reads URLs of
    longer hosts too (`a.test.b`), which _under leaves out."""
    prefixes = spellings(directory)
    if directory.path_query == "/":
        prefixes = [prefix.removesuffix("/") for prefix in prefixes]
    found = [await store.known_urls(prefix, KNOWN_URLS_LIMIT) for prefix in prefixes]
    return _under(directory, [url for urls in found for url in urls]), found


def _under(directory: TargetUrl, urls: list[str]) -> list[tuple[TargetUrl, list[str]]]:
    """Of `urls`, the objects at or under `directory` a purge of it must reach, one per object (a cache keys the
    host in any case as one; the origin its escapes in any case), each with the paths to purge it by: each
    spelling of its escapes known, and their cases (escape_cases), each once."""
    found: dict[str, tuple[TargetUrl, dict[str, None]]] = {}
    for url in urls:
        try:
            target = stored_target(url)  # accepted once, under the [api] max_url_length of that time
        except RequestRefused:
            continue
        if directory.reaches(target, whole=True):
            _, paths = found.setdefault(escapes_upper(target.node_key), (target, {}))
            paths.update(dict.fromkeys(escape_cases(target.path_query)))
    return [(target, list(paths)) for target, paths in found.values()]
