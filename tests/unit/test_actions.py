"""engine/actions.py: what a directory purge made of single URLs covers (`_under`); an edge's gateway error
while its shield is held down (`_upstream_held`)."""

from __future__ import annotations

import asyncio

from edgewarm.config import Engine, Node, NodeKind
from edgewarm.engine.actions import NO_STATE_NOTE, _under, perform
from edgewarm.engine.fetcher import FetchResult
from edgewarm.engine.node_health import FAILURES_IN_A_ROW, Hold, NodeHealth
from edgewarm.engine.outcome import GATEWAY_ERRORS
from edgewarm.errors import StoreError
from edgewarm.models import Claim, ItemAction, ItemOutcome, Tier
from edgewarm.nodes import CacheState
from edgewarm.urls import TargetUrl, parse_url


def test_the_urls_at_or_under_a_directory_one_per_object_whatever_their_length() -> None:
    """The directory's own URL if it was warmed, every URL under it once per cache key (any host case), none
    outside; a URL longer than the default max_url_length (accepted under a larger one) is covered too (before:
    it raised "illegal URL", failing every later refresh of the directory); text that is no URL is skipped."""
    directory = parse_url("http://www.example.test/d/")
    long_url = "http://www.example.test/d/a.bin?q=" + "x" * 6000
    known = [
        "http://www.example.test/d/",
        "http://WWW.example.test/d/b.bin",
        "http://www.example.test/d/b.bin",
        long_url,
        "http://www.example.test/dd/c.bin",
        "https://www.example.test/d/e.bin",  # through the same (http) node: the same object as http://…
        "http://www.example.test/d/e.bin",
        "not a url",
    ]
    assert [t.url for t, _ in _under(directory, known)] == [
        "http://www.example.test/d/",
        "http://WWW.example.test/d/b.bin",
        long_url,
        "https://www.example.test/d/e.bin",
    ]
    # Spellings of an object's escapes are one object, purged by each spelling known and by their cases.
    escaped = ["http://www.example.test/d/%C3%bc", "http://www.example.test/d/%c3%bc", "http://www.example.test/d/%20"]
    assert [(t.url, paths) for t, paths in _under(directory, escaped)] == [
        ("http://www.example.test/d/%C3%bc", ["/d/%C3%BC", "/d/%c3%bc", "/d/%C3%bc"]),
        ("http://www.example.test/d/%20", ["/d/%20"]),
    ]


class _Fleet:
    """A NodeClient: the edge answers 502; the shield answers 200, or is held down."""

    def __init__(self, shield_held: bool) -> None:
        self.health = None
        self.asked: list[tuple[str, str]] = []
        self._held = Hold("not tried: shield-1 is held down after 5 connections in a row failed", 3.0, 2.0, 0.0, False)
        self._shield_held = shield_held

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        self.asked.append((method, node.name))
        if node.name == "edge-1":
            return FetchResult(502)
        if self._shield_held:
            return FetchResult(None, error=self._held.reason, unreachable=True, hold=self._held)
        return FetchResult(200, cache_state=CacheState.HIT)

    def tells_misses(self, node: Node) -> bool:
        return False


def _warm_on_the_edge(fleet: _Fleet, upstream: tuple[Node, ...]) -> ItemOutcome:
    claim = Claim(1, "t", "http://www.example.test/a", "edge-1", ItemAction.WARM, 0)
    edge = Node(name="edge-1", url="http://127.0.0.1:1")
    return asyncio.run(perform(claim, edge, 1, fleet, None, Engine(), 100.0, upstream=upstream))  # type: ignore[arg-type]


SHIELD = Node(name="shield-1", url="http://127.0.0.1:2", tier=Tier.SHIELD)


def test_an_edges_gateway_error_waits_for_a_shield_held_down_and_spends_no_attempt() -> None:
    """The edge's 502 while the shield it fetches through is held down: the item waits, saying why."""
    fleet = _Fleet(shield_held=True)
    outcome = _warm_on_the_edge(fleet, (SHIELD,))
    assert fleet.asked == [("GET", "edge-1"), ("HEAD", "shield-1")]
    assert outcome.attempts == 0 and outcome.retry_at is not None  # waits, its attempt not spent
    assert outcome.error is not None and outcome.error.startswith(
        "HTTP 502 from edge-1, which fetches through shield-1: not tried: shield-1 is held down"
    )


def test_an_edges_gateway_error_with_its_shield_up_is_the_edges_own_and_spends_an_attempt() -> None:
    """The shield answers: the 502 is the edge's own, retried as before; without shields nothing is asked."""
    fleet = _Fleet(shield_held=False)
    outcome = _warm_on_the_edge(fleet, (SHIELD,))
    assert fleet.asked == [("GET", "edge-1"), ("HEAD", "shield-1")]
    assert (outcome.attempts, outcome.error) == (1, "HTTP 502" + GATEWAY_ERRORS[502])
    without = _Fleet(shield_held=True)
    assert _warm_on_the_edge(without, ()).attempts == 1 and without.asked == [("GET", "edge-1")]  # no shields


def test_an_edges_item_is_not_sent_while_its_shield_is_held_down() -> None:
    """While the shield is held down, the edge's item asks the shield first (held: not sent; after its cooldown,
    the probe) and is not sent to the edge: a tester's 220 waiting edge items were each sent to the edge at
    every end of the shield's cooldown, each a 502 and a request of the edge to the dead shield."""
    fleet = _Fleet(shield_held=True)
    fleet.health = NodeHealth(lambda: 100.0)  # type: ignore[assignment]
    for _ in range(FAILURES_IN_A_ROW):
        fleet.health.observe(SHIELD, False, "Connection refused")  # type: ignore[attr-defined]
    outcome = _warm_on_the_edge(fleet, (SHIELD,))
    assert fleet.asked == [("HEAD", "shield-1")]
    assert outcome.attempts == 0 and outcome.retry_at is not None  # waits, its attempt not spent
    assert outcome.error is not None and outcome.error.startswith(
        "not sent to edge-1, which fetches through shield-1: not tried: shield-1 is held down"
    )
    up = _Fleet(shield_held=False)
    up.health = NodeHealth(lambda: 100.0)  # type: ignore[assignment]
    assert _warm_on_the_edge(up, (SHIELD,)).attempts == 1 and up.asked == [("GET", "edge-1"), ("HEAD", "shield-1")]
    # Held down past node_down_wait (3 s here): the edge is asked, an attempt spent (it may hold the object: a
    # re-tester's 2,292 edge items failed unsent that were HITs there).
    fleet.asked.clear()
    claim = Claim(1, "t", "http://www.example.test/a", "edge-1", ItemAction.WARM, 0)
    edge = Node(name="edge-1", url="http://127.0.0.1:1")
    impatient = Engine(node_down_wait=2.0)
    outcome = asyncio.run(perform(claim, edge, 1, fleet, None, impatient, 100.0, upstream=(SHIELD,)))  # type: ignore[arg-type]
    assert fleet.asked == [("HEAD", "shield-1"), ("GET", "edge-1"), ("HEAD", "shield-1")] and outcome.attempts == 1


def test_an_ats_edges_502_with_its_shield_up_says_ats_may_still_count_its_parent_down() -> None:
    """ATS answers 502 for a while after its parent failed, though the parent is back (a tester's ATS edge
    failed 66 items with a bare "HTTP 502 (a gateway error …)"): the error says why and what to set."""
    fleet = _Fleet(shield_held=False)
    claim = Claim(1, "t", "http://www.example.test/a", "edge-1", ItemAction.WARM, 0)
    edge = Node(name="edge-1", url="http://127.0.0.1:1", kind=NodeKind.ATS)
    outcome = asyncio.run(perform(claim, edge, 1, fleet, None, Engine(), 100.0, upstream=(SHIELD,)))  # type: ignore[arg-type]
    assert outcome.attempts == 1 and outcome.retry_at is not None  # retried as before
    assert outcome.error == (
        "HTTP 502 from edge-1 though shield-1 answers: ATS may still count its parent down after failures "
        "(proxy.config.http.parent_proxy.retry_time, 300 s by default; README: How each cache purges, ATS)"
    )


class _NoState:
    """A NodeClient whose node answers 200 telling no cache state; `telling`: it told a MISS before."""

    def __init__(self, telling: bool) -> None:
        self.health = None
        self.telling = telling

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        return FetchResult(200, 10)

    def tells_misses(self, node: Node) -> bool:
        return self.telling


def test_a_warm_told_no_cache_state_by_a_node_that_tells_one_succeeds_with_a_note() -> None:
    """Without verify such an answer counts as warmed (README), but nginx sends no state for a URL it does not
    cache (a cache key longer than proxy_buffer_size: a tester's JD client was told "Succeeded" for a URL no
    cache held): the item says so. A node that never tells a state gets no note."""
    claim = Claim(1, "t", "http://www.example.test/a", "edge-1", ItemAction.WARM, 0)
    edge = Node(name="edge-1", url="http://127.0.0.1:1")
    for telling, note in ((True, NO_STATE_NOTE), (False, None)):
        outcome = asyncio.run(perform(claim, edge, 1, _NoState(telling), None, Engine(), 100.0))  # type: ignore[arg-type]
        assert (outcome.succeeded, outcome.error) == (True, note)


def test_an_nginx_shields_purge_also_asks_with_what_a_varnish_edge_asks_it_with() -> None:
    """nginx keeps a copy per Accept-Encoding when answers vary on it, and a Varnish edge asks its shield with
    "gzip": an nginx shield's purge is sent with "gzip" too (first), unless that is edgewarm's own header or the
    node's purge headers set one. Edges, and other kinds of node, purge once."""
    from edgewarm.nodes import purge

    def node(tier: Tier, kind: NodeKind, **more: object) -> Node:
        return Node.model_validate({"name": "n", "url": "http://127.0.0.1:1", "tier": tier, "kind": kind, **more})

    assert purge.url_purge(node(Tier.SHIELD, NodeKind.NGINX), "gzip, deflate, br").encodings == ("gzip",)
    assert purge.url_purge(node(Tier.SHIELD, NodeKind.NGINX), "gzip").encodings == ()
    assert purge.url_purge(node(Tier.EDGE, NodeKind.NGINX), "gzip, deflate, br").encodings == ()
    assert purge.url_purge(node(Tier.SHIELD, NodeKind.VARNISH), "gzip, deflate, br").encodings == ()
    assert purge.url_purge(node(Tier.SHIELD, NodeKind.ATS), "gzip, deflate, br").encodings == ()
    # Squid keeps a copy per value too, and an ATS edge asks with "gzip" (a tester's refilled the old object)
    assert purge.url_purge(node(Tier.SHIELD, NodeKind.SQUID), "gzip, deflate, br").encodings == ("gzip",)
    chosen = node(Tier.SHIELD, NodeKind.NGINX, purge_headers={"accept-encoding": "br"})
    assert purge.url_purge(chosen, "gzip, deflate, br").encodings == ()


class _Answers:
    """A NodeClient answering every request with one FetchResult."""

    def __init__(self, answer: FetchResult) -> None:
        self.health = None
        self.answer = answer

    async def request(
        self, method: str, node: Node, target: TargetUrl, headers: dict[str, str] | None = None
    ) -> FetchResult:
        return self.answer

    def tells_misses(self, node: Node) -> bool:
        return True


def _refetch(kind: NodeKind, answer: FetchResult) -> ItemOutcome:
    claim = Claim(1, "t", "http://www.example.test/a", "edge-1", ItemAction.PURGE, 0)
    node = Node.model_validate(
        {"name": "edge-1", "url": "http://127.0.0.1:1", "kind": kind, "purge_method": "GET",
         "purge_headers": {"X-Refresh": "1"}}
    )  # fmt: skip
    return asyncio.run(perform(claim, node, 1, _Answers(answer), None, Engine(), 100.0))  # type: ignore[arg-type]


def test_a_refetch_answered_with_an_age_is_judged_only_by_a_state_the_node_tells_as_its_own() -> None:
    """A refetch answered HIT fails (its header was not taken), but a HIT told with an `Age` may be another
    cache's: a node that tells only `Age`, or passes on its shield's just refetched (a re-tester's false failures
    behind a shield), is not judged by it. Varnish's own X-Varnish is, and ATS's and Squid's X-Cache (a tester's
    ATS answered a GET purge from its cache, with an Age: said purged)."""
    assert not _refetch(NodeKind.NGINX, FetchResult(200, 10, CacheState.HIT)).succeeded
    assert _refetch(NodeKind.NGINX, FetchResult(200, 10, CacheState.HIT, age=3)).succeeded
    assert _refetch(NodeKind.GENERIC, FetchResult(200, 10, CacheState.HIT, age=3)).succeeded
    assert not _refetch(NodeKind.VARNISH, FetchResult(200, 10, CacheState.HIT, age=3)).succeeded
    assert not _refetch(NodeKind.ATS, FetchResult(200, 10, CacheState.HIT, age=3)).succeeded
    assert not _refetch(NodeKind.SQUID, FetchResult(200, 10, CacheState.HIT, age=3)).succeeded
    assert _refetch(NodeKind.NGINX, FetchResult(200, 10, CacheState.BYPASS)).succeeded


class _StoreDown:
    """A store whose read of a directory's known URLs fails (its session ended by the server, say)."""

    async def known_urls(self, prefix: str, limit: int) -> list[str]:
        raise StoreError("postgresql: InternalClientError: cannot switch to state 12")


def test_a_directory_purge_whose_known_urls_the_store_did_not_answer_is_retried_as_a_failed_request() -> None:
    """Before, the StoreError left `perform` as an unexpected error: a traceback in the log and the item due
    again only after backoff_max (a tester's PostgreSQL soak: 52 of them, tasks of 3 items taking 30-65 s).
    Now a failed attempt like a request's: retried after the usual backoff, or given up after max_attempts."""
    claim = Claim(1, "t", "http://www.example.test/dir/", "edge-1", ItemAction.PURGE_DIR, 0)
    node = Node(name="edge-1", url="http://127.0.0.1:1")  # nginx: the directory's URLs purged one by one
    fleet = _Answers(FetchResult(200))
    settings = Engine(max_attempts=3, backoff_base=0.5, backoff_max=30.0)
    first = asyncio.run(perform(claim, node, 1, fleet, _StoreDown(), settings, 100.0))  # type: ignore[arg-type]
    assert not first.succeeded and first.attempts == 1
    assert first.error is not None and first.error.startswith("the URLs known there: postgresql:")
    assert first.retry_at is not None and 100.0 < first.retry_at <= 100.0 + 2.0
    last = asyncio.run(perform(claim, node, 3, fleet, _StoreDown(), settings, 100.0))  # type: ignore[arg-type]
    assert last.retry_at is None and last.error is not None and last.error.endswith("gave up after 3 attempts")


class _Known:
    """A store that knows two URLs under /dir/."""

    async def known_urls(self, prefix: str, limit: int) -> list[str]:
        found = ["http://www.example.test/dir/a", "http://www.example.test/dir/b"]
        return [url for url in found if url.startswith(prefix)]


def test_a_directory_purges_note_after_an_attempt_cut_short_says_an_earlier_one_may_have_purged() -> None:
    """A retry's purges find nothing (the attempt cut short had purged it all) and said "purged 0 of the 1500
    URLs known … (1500 not cached there)" (a tester's child killed mid-refresh); a first attempt says it as before."""
    claim = Claim(1, "t", "http://www.example.test/dir/", "edge-1", ItemAction.PURGE_DIR, 0)
    node = Node(name="edge-1", url="http://127.0.0.1:1")  # nginx: the directory's URLs purged one by one
    gone = _Answers(FetchResult(404))
    notes = [
        asyncio.run(perform(claim, node, attempt, gone, _Known(), Engine(), 100.0)).error  # type: ignore[arg-type]
        for attempt in (1, 2)
    ]
    said = "purged 0 of the 2 URLs known at or under the directory (2 not cached there"
    assert notes == [f"{said})", f"{said} or purged by an earlier attempt)"], notes
