"""From one fetch to one item outcome: success, retry with backoff, or final failure."""

from __future__ import annotations

import random

import pytest

from edgewarm.config import Engine, NodeKind
from edgewarm.engine.fetcher import FetchResult, certificate_refusal
from edgewarm.engine.node_health import Hold
from edgewarm.engine.outcome import (
    HOLD_JITTER,
    VARNISH_ERROR_KEPT,
    backoff_delay,
    is_retryable,
    purge_outcome,
    retry_or_give_up,
    variant_note,
    warm_outcome,
)
from edgewarm.models import ItemOutcome
from edgewarm.nodes import CacheState
from edgewarm.nodes.purge import PurgeRequest, Verdict, verdict

NOW = 1_000_000.0
SETTINGS = Engine(max_attempts=3, backoff_base=0.5, backoff_max=4.0)


@pytest.mark.parametrize("status", [200, 204, 299])
def test_2xx_is_a_success(status: int) -> None:
    """A 2xx answer read to the end is a success, with status, bytes and no retry."""
    outcome = warm_outcome(7, 1, FetchResult(status, bytes=1234), SETTINGS, NOW)
    assert outcome.succeeded
    assert (outcome.item_id, outcome.attempts, outcome.http_status, outcome.bytes) == (7, 1, status, 1234)
    assert outcome.error is None
    assert outcome.retry_at is None


@pytest.mark.parametrize("state", [None, CacheState.MISS, CacheState.HIT])
def test_a_206_to_a_request_for_the_whole_object_is_not_a_warm(state: CacheState | None) -> None:
    """A node answering 206 (100 bytes of a million) to a GET that asked for no range did not get the object:
    a tester's node was reported warmed so. It fails, not retried (the node would answer the same)."""
    outcome = warm_outcome(7, 1, FetchResult(206, 100, state), SETTINGS, NOW)
    assert not outcome.succeeded and outcome.retry_at is None
    assert outcome.http_status == 206 and outcome.error is not None and "206 (a part of the object)" in outcome.error


def test_a_warm_tells_how_long_the_nodes_copy_stays_fresh() -> None:
    """The answer's lifetime goes into a success (the engine shares it no longer); not into a failure."""
    fresh = FetchResult(200, 10, CacheState.MISS, fresh_for=3.0)
    assert warm_outcome(7, 1, fresh, SETTINGS, NOW).fresh_for == 3.0
    assert warm_outcome(7, 1, FetchResult(200, 10, CacheState.MISS), SETTINGS, NOW).fresh_for is None
    assert warm_outcome(7, 1, FetchResult(503, 10, CacheState.MISS, fresh_for=3.0), SETTINGS, NOW).fresh_for is None


def test_cache_state_is_recorded() -> None:
    """The node's cache state goes into the outcome."""
    outcome = warm_outcome(7, 1, FetchResult(200, 10, CacheState.MISS), SETTINGS, NOW)
    assert outcome.succeeded
    assert outcome.cache_state == "MISS"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_other_4xx_fails_at_once(status: int) -> None:
    """A 4xx other than 408/429 fails on the first attempt, with no retry."""
    outcome = warm_outcome(7, 1, FetchResult(status), SETTINGS, NOW)
    assert not outcome.succeeded
    assert outcome.retry_at is None
    assert outcome.http_status == status
    assert outcome.error is not None and f"HTTP {status}" in outcome.error


@pytest.mark.parametrize(("state", "who"), [(CacheState.MISS, "the origin"), (None, "the node or the origin")])
def test_a_refusal_is_told_as_the_origins_only_when_it_came_through_the_cache(
    state: CacheState | None, who: str
) -> None:
    """nginx answers 400 or 414 itself to a URL it cannot take, telling no cache state: not blamed on the origin."""
    outcome = warm_outcome(7, 1, FetchResult(400, cache_state=state), SETTINGS, NOW)
    assert outcome.error == f"HTTP 400 (not retried: {who} refused it)"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_fails_at_once_saying_so(status: int) -> None:
    """A 3xx is not the object (success is a 2xx): it fails at once, saying it is a redirect to warm the target
    of, not that the origin refused it."""
    outcome = warm_outcome(7, 1, FetchResult(status), SETTINGS, NOW)
    assert (outcome.succeeded, outcome.retry_at, outcome.http_status) == (False, None, status)
    assert outcome.error == f"HTTP {status}: a redirect, not the object (not followed: warm its target)"


@pytest.mark.parametrize(
    "result",
    [
        FetchResult(500),
        FetchResult(502),
        FetchResult(503),
        FetchResult(408),
        FetchResult(429),
        FetchResult(None, error="connection refused"),
        FetchResult(200, bytes=10, error="short body: 10 of 100 bytes"),
    ],
)
def test_retryable_failures_get_a_future_retry(result: FetchResult) -> None:
    """5xx, 408, 429, network errors and short bodies are retried later, before max_attempts."""
    assert is_retryable(result)
    for attempt in range(1, SETTINGS.max_attempts):
        outcome = warm_outcome(7, attempt, result, SETTINGS, NOW, rng=random.Random(attempt))
        assert not outcome.succeeded
        assert outcome.retry_at is not None and outcome.retry_at > NOW
        assert outcome.attempts == attempt
        assert outcome.error


@pytest.mark.parametrize("result", [FetchResult(503), FetchResult(None, error="timeout")])
def test_retryable_failure_gives_up_at_max_attempts(result: FetchResult) -> None:
    """At max_attempts a retryable failure is final and says how many attempts were made."""
    outcome = warm_outcome(7, SETTINGS.max_attempts, result, SETTINGS, NOW)
    assert not outcome.succeeded
    assert outcome.retry_at is None
    assert outcome.error is not None and f"after {SETTINGS.max_attempts} attempts" in outcome.error


def test_network_error_message_is_kept() -> None:
    """A network error's own text is what the outcome reports."""
    outcome = warm_outcome(7, 1, FetchResult(None, error="connection refused"), SETTINGS, NOW)
    assert outcome.error == "connection refused"
    assert outcome.http_status is None


def test_a_final_network_error_fails_at_once_for_a_warm_and_a_purge() -> None:
    """A network error marked final (the node's certificate did not verify) is not retried, on the first
    attempt as on any: the item fails with the error and says why it was not tried again."""
    refused = FetchResult(None, error="cannot connect to n: certificate verify failed: x", final=True)
    for outcome in (
        warm_outcome(7, 1, refused, SETTINGS, NOW),
        purge_outcome(7, 1, Verdict.RETRY, refused, SETTINGS, NOW),
    ):
        assert not outcome.succeeded and outcome.retry_at is None and outcome.attempts == 1
        assert outcome.error == f"{refused.error} (not retried: it would fail the same way)"
    retried = purge_outcome(7, 1, Verdict.RETRY, FetchResult(None, error="reset"), SETTINGS, NOW)
    assert retried.retry_at is not None  # the same failure, not final: tried again


def test_an_item_waits_for_a_node_held_down_without_spending_an_attempt() -> None:
    """A request not sent (the node held down for less than node_down_wait) is no attempt: the item keeps
    its count, comes back when the node is asked again (plus up to HOLD_JITTER), and says why it waits; on
    its last attempt too. Held down for longer, the answer counts as a failed attempt (and the last one gives up),
    tried again no sooner than the node is asked (it was after the backoff: 4 attempts spent unsent in seconds)."""
    settings = Engine(max_attempts=3, node_down_wait=120.0)
    reason = "not tried: e1 is held down after 5 connections in a row failed (asked again in 4 s); the last: x"
    waiting = FetchResult(
        None, error=reason, unreachable=True, hold=Hold(reason, 119.0, 4.0, asked_at=5.0, probe_out=False)
    )
    for attempt in (1, 3):
        for outcome in (
            warm_outcome(7, attempt, waiting, settings, NOW, rng=random.Random(attempt)),
            purge_outcome(7, attempt, Verdict.RETRY, waiting, settings, NOW, rng=random.Random(attempt)),
        ):
            assert outcome.attempts == attempt - 1 and not outcome.succeeded
            assert outcome.retry_at is not None and NOW + 4.0 <= outcome.retry_at <= NOW + 4.0 + HOLD_JITTER
            assert outcome.error == f"{reason}; its items wait for it (node_down_wait: 120 s)"
    hold = Hold(reason, 120.0, 4.0, asked_at=5.0, probe_out=False, wait=" (asked again in 4 s)")
    too_long = FetchResult(None, error=reason, unreachable=True, hold=hold)
    counted = warm_outcome(7, 1, too_long, settings, NOW)
    assert counted.attempts == 1 and counted.retry_at is not None
    assert NOW + 4.0 <= counted.retry_at <= NOW + 4.0 + HOLD_JITTER
    assert counted.error == f"{reason}; down for longer than node_down_wait (120 s)"
    last = warm_outcome(7, 3, too_long, settings, NOW)
    assert last.retry_at is None and last.error == (  # not "asked again in 4 s" once given up (a tester's)
        "not tried: e1 is held down after 5 connections in a row failed; the last: x; down for longer than "
        "node_down_wait (120 s); gave up after 3 attempts"
    )
    impatient = warm_outcome(7, 3, waiting, Engine(max_attempts=3, node_down_wait=0), NOW)
    assert impatient.retry_at is None and impatient.error == f"{reason}; gave up after 3 attempts"


@pytest.mark.parametrize(
    ("reason", "told"),
    [
        ("invalid peer certificate: UnknownIssuer", "unable to get local issuer certificate"),
        (
            "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
            "a CA certificate served as the node's own (self-signed certificate?)",
        ),
        (
            'invalid peer certificate: NotValidForNameContext { expected: DnsName("a.test"), presented: [] }',
            "certificate is not valid for the site's name",
        ),
        ("invalid peer certificate: ExpiredContext { time: 1, not_after: 0 }", "certificate has expired"),
        (  # the Display form some rustls versions give
            'invalid peer certificate: certificate not valid for name "b.test"; certificate is only valid for '
            'DnsName("a.test")',
            "certificate is not valid for the site's name",
        ),
        (
            "invalid peer certificate: certificate expired: verification time 2 (UNIX), but certificate is not "
            "valid after 1 (1 seconds ago)",
            "certificate has expired",
        ),
        ("invalid peer certificate: SomethingNew", "invalid peer certificate: SomethingNew"),
        ("tls handshake eof", None),
        ("received fatal alert: HandshakeFailure", None),
    ],
)
def test_rustls_certificate_refusals_are_told_in_openssls_words(reason: str, told: str | None) -> None:
    """rustls' reasons (some in Rust's debug form) read as OpenSSL's for the common ones, as they are; other
    TLS failures are no certificate refusal."""
    assert certificate_refusal(reason) == told


def test_bypass_is_a_failure() -> None:
    """A 200 the cache bypassed did not warm anything: failure, not retried."""
    outcome = warm_outcome(7, 1, FetchResult(200, 10, CacheState.BYPASS), SETTINGS, NOW)
    assert not outcome.succeeded
    assert outcome.retry_at is None
    assert outcome.cache_state == "BYPASS"
    assert outcome.error is not None and "bypass" in outcome.error


def test_verify_miss_then_hit_is_a_success() -> None:
    """With verification, a MISS followed by a HIT is a success recorded as HIT."""
    first = FetchResult(200, 10, CacheState.MISS)
    outcome = warm_outcome(7, 1, first, SETTINGS, NOW, verified=FetchResult(200, 10, CacheState.HIT))
    assert outcome.succeeded
    assert outcome.cache_state == "HIT"


def test_verify_miss_then_miss_is_a_failure() -> None:
    """With verification, a second MISS means the node does not keep the object: failure."""
    first = FetchResult(200, 10, CacheState.MISS)
    outcome = warm_outcome(7, 1, first, SETTINGS, NOW, verified=FetchResult(200, 10, CacheState.MISS))
    assert not outcome.succeeded
    assert outcome.cache_state == "MISS"
    assert outcome.error is not None and "MISS again" in outcome.error


def test_a_second_miss_of_an_answer_that_asked_not_to_be_stored_says_what_it_asked() -> None:
    """The warm's answer said `Cache-Control: no-store` (so it was looked at again): the failure says so."""
    first = FetchResult(200, 10, CacheState.MISS, not_stored="Cache-Control: no-store")
    outcome = warm_outcome(7, 1, first, SETTINGS, NOW, verified=FetchResult(200, 10, CacheState.MISS))
    assert not outcome.succeeded and outcome.retry_at is None
    assert outcome.error == "not cached after the warm: MISS again (its answer said Cache-Control: no-store)"


def test_verify_without_cache_state_is_a_failure() -> None:
    """A verification fetch that reports no cache state cannot confirm the warm."""
    first = FetchResult(200, 10, CacheState.MISS)
    outcome = warm_outcome(7, 1, first, SETTINGS, NOW, verified=FetchResult(200, 10))
    assert not outcome.succeeded


def test_verify_network_error_is_a_failure() -> None:
    """A verification fetch that failed on the network cannot confirm the warm."""
    first = FetchResult(200, 10, CacheState.MISS)
    outcome = warm_outcome(7, 1, first, SETTINGS, NOW, verified=FetchResult(None, error="reset"))
    assert not outcome.succeeded
    assert outcome.error is not None and "reset" in outcome.error


def test_verify_broken_off_is_a_failure_even_if_it_said_hit() -> None:
    """A verification fetch cut short does not confirm the warm, whatever cache state it announced."""
    first = FetchResult(200, 10, CacheState.MISS)
    broken = FetchResult(200, 5, CacheState.HIT, error="short body: 5 of 10 bytes")
    outcome = warm_outcome(7, 1, first, SETTINGS, NOW, verified=broken)
    assert not outcome.succeeded
    assert outcome.error is not None and "short body" in outcome.error


def test_backoff_grows_and_stays_within_bounds() -> None:
    """Delay for attempt n is in [c/2, c], c = min(max, base*2**(n-1)); the ceiling doubles up to max."""
    settings = Engine(backoff_base=0.5, backoff_max=10.0)
    rng = random.Random(42)
    ceilings = [min(10.0, 0.5 * 2 ** (n - 1)) for n in range(1, 10)]
    assert ceilings[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        for _ in range(50):
            delay = backoff_delay(attempt, settings, rng)
            assert ceiling / 2 <= delay <= ceiling
            assert delay <= settings.backoff_max


def test_backoff_is_jittered_and_seeded() -> None:
    """Delays vary (jitter), and the same seed gives the same delays."""
    settings = Engine(backoff_base=1.0, backoff_max=100.0)
    first = [backoff_delay(4, settings, random.Random(5)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = random.Random(5)
    varied = {backoff_delay(4, settings, rng) for _ in range(20)}
    assert len(varied) > 1


def test_retry_at_uses_the_backoff() -> None:
    """retry_at is now plus the backoff of that attempt, drawn from the given rng."""
    outcome = warm_outcome(7, 2, FetchResult(503), SETTINGS, NOW, rng=random.Random(9))
    expected = NOW + backoff_delay(2, SETTINGS, random.Random(9))
    assert outcome.retry_at == pytest.approx(expected)
    assert NOW + 0.5 <= (outcome.retry_at or 0) <= NOW + 1.0


@pytest.mark.parametrize(("status", "asked", "waits"), [(429, 3.0, 3.0), (503, 1.0, None), (429, 3600.0, 4.0)])
def test_a_retry_waits_as_long_as_the_node_asked_up_to_backoff_max(
    status: int, asked: float, waits: float | None
) -> None:
    """A 429 or 503 with Retry-After was asked again after the backoff alone (0.25-0.5 s against a tester's 20 s):
    the retry waits as asked, up to backoff_max (4 s here); a shorter one leaves the backoff; the error says it."""
    outcome = warm_outcome(7, 1, FetchResult(status, retry_after=asked), SETTINGS, NOW, rng=random.Random(9))
    backoff = backoff_delay(1, SETTINGS, random.Random(9))
    assert outcome.retry_at == pytest.approx(NOW + (waits if waits is not None else backoff))
    assert outcome.error is not None and f"(Retry-After: {asked:g} s)" in outcome.error, outcome.error


def test_an_item_not_sent_while_the_probe_is_out_waits_for_its_answer_past_node_down_wait() -> None:
    """Past node_down_wait an item not sent to a node held down spends an attempt, but not while the one
    request let through is out: its answer decides (the node may be back); with node_down_wait 0 it does."""
    settings = Engine(max_attempts=2, node_down_wait=5.0)
    probing = Hold("not tried: p is held down (being asked again now)", 6.0, 0.5, 0.0, True)
    resting = Hold("not tried: p is held down (asked again in 4 s)", 6.0, 4.0, 0.0, False)
    failed = ItemOutcome(1, False, 2, error="not tried")
    waits = retry_or_give_up(failed, FetchResult(None, hold=probing), settings, 100.0, random.Random(1))
    assert waits.attempts == 1 and waits.retry_at is not None
    spent = retry_or_give_up(failed, FetchResult(None, hold=resting), settings, 100.0, random.Random(1))
    assert spent.retry_at is None and "gave up after 2 attempts" in (spent.error or "")
    off = Engine(max_attempts=2, node_down_wait=0.0)
    assert retry_or_give_up(failed, FetchResult(None, hold=probing), off, 100.0, random.Random(1)).retry_at is None


def test_a_bypass_refetch_refused_by_the_origin_says_so() -> None:
    """purge_method GET (a bypass refetch) answered 404: a failure saying the refetch was refused and the copy
    stays (before: "the node refused the purge (is purging enabled there…?)", which sent operators to the node's
    purge permissions); a 405 to a method is still the node's refusal."""
    settings = Engine()
    get = PurgeRequest("GET", {"X-Refresh": "1"})
    refetch = purge_outcome(1, 1, verdict(get, 404, False), FetchResult(404), settings, NOW)
    assert not refetch.succeeded and refetch.retry_at is None
    assert refetch.error == (
        "HTTP 404: the refetch that replaces the node's copy was refused (the origin's answer, passed on?): it stays"
    )
    assert verdict(get, 405, False) is Verdict.REFUSED
    assert verdict(PurgeRequest("PURGE", {}), 404, False) is Verdict.NOT_CACHED
    # 501 to PURGE or BAN: the node does not implement the method (a tester's directory purged 4 times over, for
    # "HTTP 501; gave up after 4 attempts"); to a refetch GET, the origin's 501 passed on: tried again
    for method in ("PURGE", "BAN"):
        assert verdict(PurgeRequest(method, {}), 501, False) is Verdict.REFUSED
    said = purge_outcome(1, 1, Verdict.REFUSED, FetchResult(501), SETTINGS, NOW).error
    assert said == "HTTP 501: the node does not implement the purge's method (its kind and purge_method in the config?)"
    assert verdict(get, 501, False) is Verdict.RETRY


@pytest.mark.parametrize("state", [CacheState.HIT, CacheState.STALE, CacheState.UPDATING])
def test_a_bypass_refetch_answered_from_the_nodes_cache_fails(state: CacheState) -> None:
    """purge_method GET answered 200 from the node's cache (its proxy_cache_bypass does not take the header): the
    old copy stays. It was PURGED (a tester's refresh succeeded while viewers kept the old object)."""
    get = PurgeRequest("GET", {"X-Refresh": "1"})
    found = verdict(get, 200, False, state)
    outcome = purge_outcome(1, 1, found, FetchResult(200, 10, state), SETTINGS, NOW)
    assert (outcome.succeeded, outcome.retry_at, outcome.cache_state) == (False, None, state)
    assert outcome.error == (
        f"HTTP 200: the node answered the refetch from its cache ({state}): it did not take the purge's headers as a "
        "bypass (nginx: proxy_cache_bypass on that header; ATS takes none unless its "
        "proxy.config.http.cache.ignore_client_no_cache is 0: use PURGE), so its old copy stays"
    )
    # A refetch that went upstream, one the origin confirmed, a node that tells no state, a PURGE: purged.
    for other in (CacheState.BYPASS, CacheState.MISS, CacheState.EXPIRED, CacheState.REVALIDATED, None):
        assert verdict(get, 200, False, other) is Verdict.PURGED
    assert verdict(PurgeRequest("PURGE", {}), 200, False, state) is Verdict.PURGED


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (403, "the node refused the purge (is purging enabled there, and allowed from this host?)"),
        (400, "the node cannot read a request for this URL (nor could it cache it)"),
        (414, "the node cannot read a request for this URL (nor could it cache it)"),
    ],
)
def test_a_refused_purge_says_whether_the_node_could_not_read_the_url(status: int, why: str) -> None:
    """nginx answers 400 to a malformed escape and 414 to a URL too long: not a purge set up wrong."""
    purge = PurgeRequest("PURGE")
    outcome = purge_outcome(7, 1, verdict(purge, status, False), FetchResult(status), SETTINGS, NOW)
    assert (outcome.succeeded, outcome.error) == (False, f"HTTP {status}: {why}")


def test_a_ban_refused_400_is_the_nodes_refusal_not_an_unread_url() -> None:
    """A Varnish VCL refusing a BAN (a ban_header it does not read) answers 400: that was told as "the node cannot
    read a request for this URL", which sent a tester to the URL, not to the ban's header."""
    ban = PurgeRequest("BAN", {"X-Other": "/dir/"}, path="/")
    outcome = purge_outcome(7, 1, verdict(ban, 400, False), FetchResult(400), SETTINGS, NOW)
    assert (outcome.succeeded, outcome.error) == (
        False,
        "HTTP 400: the node refused the purge (is purging enabled there, and allowed from this host?)",
    )


@pytest.mark.parametrize("status", [404, 500, 503, 429])
@pytest.mark.parametrize("state", [CacheState.HIT, CacheState.STALE])
def test_an_error_answer_from_the_nodes_cache_is_told_so_and_not_retried(status: int, state: CacheState) -> None:
    """A 404 or 5xx the node serves from its cache: before, "the origin refused it" (the origin was not asked)
    or retried to get the same cached answer each time. Now it fails at once, saying where it came from and
    what clears it."""
    outcome = warm_outcome(7, 1, FetchResult(status, cache_state=state), SETTINGS, NOW)
    assert (outcome.succeeded, outcome.retry_at) == (False, None)
    assert outcome.error == (
        f"HTTP {status} from the node's cache ({state}): it keeps this answer of the origin's "
        '(not retried; "refresh": true, the CLI\'s --refresh-first, purges it first)'
    )


@pytest.mark.parametrize("age", [0, 1, 5])
def test_a_young_5xx_from_a_varnish_nodes_cache_is_asked_again_once_varnish_has_dropped_it(age: int) -> None:
    """Varnish keeps a failed fetch's 503 for the requests that waited for it (1 s, and 5 s of grace), a HIT to
    them and to those that follow: a tester's warm raced by a viewer failed at once "it keeps this answer", then,
    with Age 0 retried, at Age 1 (a re-tester's). Asked again once VARNISH_ERROR_KEPT old; older, it is kept (its
    VCL's), and fails at once; on other kinds (nginx passes an upstream's Age on) it fails at once."""
    young = FetchResult(503, cache_state=CacheState.HIT, age=age)
    outcome = warm_outcome(7, 1, young, SETTINGS, NOW, varnish=True)
    assert not outcome.succeeded and outcome.retry_at is not None and outcome.attempts == 1
    assert outcome.retry_at >= NOW + VARNISH_ERROR_KEPT - age
    assert outcome.error == (
        f"HTTP 503 from the node's cache (HIT, {age} s old): Varnish keeps a failed fetch's error a few seconds for "
        "the requests that waited for it"
    )
    last = warm_outcome(7, SETTINGS.max_attempts, young, SETTINGS, NOW, varnish=True)
    assert last.retry_at is None and (last.error or "").endswith(f"; gave up after {SETTINGS.max_attempts} attempts")
    old = FetchResult(503, cache_state=CacheState.HIT, age=int(VARNISH_ERROR_KEPT))
    for kept in (warm_outcome(7, 2, old, SETTINGS, NOW, varnish=True), warm_outcome(7, 1, young, SETTINGS, NOW)):
        assert (kept.succeeded, kept.retry_at) == (False, None) and "it keeps this answer" in (kept.error or "")
    assert not warm_outcome(7, 1, FetchResult(404, cache_state=CacheState.HIT, age=0), SETTINGS, NOW).retry_at


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (304, "HTTP 304 (not modified) to a plain GET: not the object"),
        (999, "HTTP 999: not an HTTP status (not retried)"),
    ],
)
def test_a_304_or_a_status_out_of_range_is_named_for_what_it_is(status: int, error: str) -> None:
    outcome = warm_outcome(7, 1, FetchResult(status), SETTINGS, NOW)
    assert (outcome.succeeded, outcome.retry_at, outcome.error) == (False, None, error)


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_error_says_it_is_one(status: int) -> None:
    """A 502 read as a plain "HTTP 502": a gateway error, the node itself up (it may pass on its shield's or an
    origin-side proxy's)."""
    outcome = warm_outcome(7, SETTINGS.max_attempts, FetchResult(status, cache_state=CacheState.MISS), SETTINGS, NOW)
    assert outcome.error is not None and outcome.error.startswith(f"HTTP {status} (a gateway error: the node, a shield")
    assert outcome.error.endswith(f"; gave up after {SETTINGS.max_attempts} attempts")


@pytest.mark.parametrize(
    ("varies", "kind", "said"),
    [
        (None, NodeKind.NGINX, None),
        ("*", NodeKind.NGINX, None),  # not stored at all: asks_not_to_store's
        ("Accept-Encoding", NodeKind.VARNISH, None),  # one gzipped copy serves every viewer
        ("Accept-Encoding", NodeKind.ATS, None),  # normalize_ae: one copy for every viewer accepting gzip
        ("Accept-Encoding", NodeKind.NGINX, "Accept-Encoding 'gzip'"),
        ("accept-encoding, User-Agent", NodeKind.SQUID, "Accept-Encoding 'gzip', User-Agent 'ua/1'"),
        ("Cookie, Accept-Encoding", NodeKind.VARNISH, "no Cookie"),
        ("Accept, Host", NodeKind.NGINX, "Accept '*/*'"),  # what the clients send; Host is the URL's own
        ("Host", NodeKind.NGINX, None),
    ],
)
def test_a_warm_of_an_answer_that_varies_tells_the_copy_it_filled(
    varies: str | None, kind: NodeKind, said: str
) -> None:
    """The note names edgewarm's own values of what the answer varies on: viewers sending others do not share
    that copy on nginx or Squid."""
    settings = Engine(accept_encoding="gzip", user_agent="ua/1")
    note = variant_note(varies, kind, settings)
    if said is None:
        assert note is None
    else:
        assert note is not None and f"warmed the copy for {said};" in note, note
        outcome = warm_outcome(7, 1, FetchResult(200, 10, CacheState.MISS, varies=varies), settings, NOW, note=note)
        assert outcome.succeeded and outcome.error == note
