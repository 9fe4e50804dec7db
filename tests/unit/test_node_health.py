"""NodeHealth: a node whose connections keep failing is held down for a cooldown, then probed once."""

from __future__ import annotations

import logging

import pytest

from edgewarm.config import Node, NodeKind
from edgewarm.engine.node_health import COOLDOWN, COOLDOWN_MAX, FAILURES_IN_A_ROW, PROBE_WAIT, NodeHealth

NODE = Node(name="edge-1", url="http://127.0.0.1:1")
LONG = lambda: 10_000.0  # noqa: E731 (node_down_wait: its items wait for it through every cooldown here)
OTHER = Node(name="edge-2", url="http://127.0.0.1:2")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(health: NodeHealth, node: Node, times: int) -> None:
    for _ in range(times):
        health.observe(node, False, "cannot connect to edge-1 (http://127.0.0.1:1): Connection refused")


def test_a_node_is_held_down_after_failures_in_a_row_only() -> None:
    """Fewer failures than the threshold, or failures broken by an answer, hold nothing down; the threshold in a
    row does, for that node alone, with a reason naming the count, the wait and the last error."""
    clock = Clock()
    health = NodeHealth(clock)
    fail(health, NODE, FAILURES_IN_A_ROW - 1)
    health.observe(NODE, True, None)
    fail(health, NODE, FAILURES_IN_A_ROW - 1)
    assert health.held_down(NODE) is None
    fail(health, NODE, 1)
    hold = health.held_down(NODE)
    assert hold is not None and hold.reason == (
        f"not tried: edge-1 is held down after {FAILURES_IN_A_ROW} connections in a row failed "
        f"(asked again in {COOLDOWN:.0f} s); the last: cannot connect to edge-1 (http://127.0.0.1:1): "
        "Connection refused"
    )
    assert health.held_down(OTHER) is None


def test_after_the_cooldown_one_probe_goes_and_its_answer_decides() -> None:
    """When the cooldown ends one request is let through and the others still wait; a failed probe holds the
    node down for twice as long (up to COOLDOWN_MAX); a probe that connects makes it up again at once."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    fail(health, NODE, FAILURES_IN_A_ROW)
    cooldown = COOLDOWN
    for _ in range(8):
        clock.now += cooldown - 0.01
        assert health.held_down(NODE) is not None
        clock.now += 0.01
        assert health.held_down(NODE) is None  # the probe
        hold = health.held_down(NODE)
        assert hold is not None and "being asked again now" in hold.reason
        fail(health, NODE, 1)
        cooldown = min(cooldown * 2, COOLDOWN_MAX)
    assert cooldown == COOLDOWN_MAX
    clock.now += cooldown
    assert health.held_down(NODE) is None
    health.observe(NODE, True, None)
    assert health.held_down(NODE) is None and health.held_down(NODE) is None


def test_a_probe_that_never_reports_is_replaced() -> None:
    """A probe whose request was dropped without a result does not hold the node down for ever."""
    clock = Clock()
    health = NodeHealth(clock)
    fail(health, NODE, FAILURES_IN_A_ROW)
    clock.now += COOLDOWN
    assert health.held_down(NODE) is None  # the probe, never reported
    assert health.held_down(NODE) is not None
    clock.now += COOLDOWN_MAX + 1
    assert health.held_down(NODE) is None  # another probe


def test_an_answer_from_a_request_in_flight_ends_the_hold() -> None:
    """Requests sent before the node was held down may still connect: the first that does makes it up again."""
    clock = Clock()
    health = NodeHealth(clock)
    fail(health, NODE, FAILURES_IN_A_ROW + 3)
    assert health.held_down(NODE) is not None
    health.observe(NODE, True, None)
    assert health.held_down(NODE) is None


def test_a_hold_tells_how_long_the_node_is_down_and_when_to_come_back() -> None:
    """`down_for` runs from the first hold of a spell through the cooldowns that follow (an answer starts a new
    spell); `retry_in` is the cooldown left, or PROBE_WAIT while the probe is out."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    fail(health, NODE, FAILURES_IN_A_ROW)
    clock.now += 0.5
    hold = health.held_down(NODE)
    assert hold is not None and (hold.down_for, hold.retry_in) == (0.5, COOLDOWN - 0.5)
    clock.now += COOLDOWN - 0.5
    assert health.held_down(NODE) is None  # the probe
    hold = health.held_down(NODE)
    assert hold is not None and (hold.down_for, hold.retry_in) == (COOLDOWN, PROBE_WAIT)
    fail(health, NODE, 1)  # the probe failed: held down again, the spell goes on
    clock.now += 1.0
    hold = health.held_down(NODE)
    assert hold is not None and (hold.down_for, hold.retry_in) == (COOLDOWN + 1.0, 2 * COOLDOWN - 1.0)
    health.observe(NODE, True, None)
    fail(health, NODE, FAILURES_IN_A_ROW)
    hold = health.held_down(NODE)
    assert hold is not None and hold.down_for == 0.0


def test_a_failure_that_finds_the_node_held_down_returns_its_hold() -> None:
    """`observe` returns the hold for the failure that starts it, for those of requests in flight meanwhile and
    for a failed probe (their items wait for the node too), and nothing for the failures before the threshold."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    for _ in range(FAILURES_IN_A_ROW - 1):
        assert health.observe(NODE, False, "refused") is None
    assert health.observe(NODE, False, "refused") is not None
    hold = health.observe(NODE, False, "refused")
    assert (
        hold is not None
        and hold.retry_in == COOLDOWN
        and hold.reason.startswith(
            f"not tried: edge-1 is held down after {FAILURES_IN_A_ROW + 1} connections in a row failed"
        )
    )
    clock.now += COOLDOWN
    assert health.held_down(NODE) is None  # the probe
    hold = health.observe(NODE, False, "refused")
    assert hold is not None and (hold.down_for, hold.retry_in) == (COOLDOWN, 2 * COOLDOWN)
    assert health.observe(NODE, True, None) is None


def test_a_node_rests_through_its_cooldown_and_its_probe() -> None:
    """`resting` (the engine claims none of the node's items meanwhile) gives how long the node has been down
    while its cooldown runs and while the probe is out; None once the probe may go, and once it is up."""
    clock = Clock()
    health = NodeHealth(clock)
    assert health.resting(NODE) is None
    fail(health, NODE, FAILURES_IN_A_ROW)
    clock.now += 1.0
    hold = health.resting(NODE)
    assert hold is not None and (hold.down_for, hold.retry_in, hold.probe_out) == (1.0, COOLDOWN - 1.0, False)
    assert hold.asked_at == clock.now + COOLDOWN - 1.0
    clock.now += COOLDOWN - 1.0
    assert health.resting(NODE) is None  # the probe may go: claim
    assert health.held_down(NODE) is None  # it goes
    hold = health.resting(NODE)
    assert hold is not None and (hold.down_for, hold.retry_in, hold.probe_out) == (COOLDOWN, PROBE_WAIT, True)
    health.observe(NODE, True, None)
    assert health.resting(NODE) is None


def test_is_down_tells_the_hold_without_starting_a_probe() -> None:
    """`is_down` (read by /metrics) is true from the hold until the node connects again, during the probe too,
    and asking it never lets a probe through in `held_down`'s place."""
    clock = Clock()
    health = NodeHealth(clock)
    fail(health, NODE, FAILURES_IN_A_ROW - 1)
    assert not health.is_down(NODE)
    fail(health, NODE, 1)
    assert health.is_down(NODE) and not health.is_down(OTHER)
    clock.now += COOLDOWN
    assert health.is_down(NODE) and health.is_down(NODE)
    assert health.held_down(NODE) is None  # the probe is still there to take
    assert health.is_down(NODE)
    health.observe(NODE, True, None)
    assert not health.is_down(NODE)


def test_a_cooldown_ends_by_node_down_wait_so_a_node_back_in_time_is_asked_in_time() -> None:
    """node_down_wait 5 s: the cooldowns (2 s, then 4 s) are cut so that the node is asked again at 5 s, when
    its items' patience ends (before, at 6 s: items tried meanwhile were failed though the node was back)."""
    clock = Clock()
    health = NodeHealth(clock, patience=lambda: 5.0)
    fail(health, NODE, FAILURES_IN_A_ROW)
    clock.now += COOLDOWN
    assert health.held_down(NODE) is None  # the probe at 2 s
    fail(health, NODE, 1)  # down again: 4 s more would be 6 s
    clock.now += 5.0 - COOLDOWN - 0.01
    assert health.held_down(NODE) is not None
    clock.now += 0.01
    assert health.held_down(NODE) is None  # asked at 5 s
    hold = health.held_down(NODE)
    assert hold is not None and hold.probe_out and hold.down_for == 5.0


def test_past_node_down_wait_a_node_is_asked_every_cooldown_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its items spend attempts then: the cooldown grown to COOLDOWN_MAX kept a node that was back held down for
    up to a minute, and the items submitted meanwhile failed unsent (a tester: 249 items of 43 tasks, "gave up
    after 4 attempts" with no request made). Past node_down_wait it is asked every COOLDOWN; its "held down"
    warning, once a minute. (Without node_down_wait, 0, its cooldown grows: its items are to end at once.)"""
    for patience in (lambda: 5.0,):
        clock = Clock()
        health = NodeHealth(clock, patience=patience)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgewarm.engine"):
            fail(health, NODE, FAILURES_IN_A_ROW)
            for _ in range(40):  # 80 s and more of failed probes
                clock.now += 6.0
                assert health.held_down(NODE) is None  # asked: within COOLDOWN past its patience
                hold = health.observe(NODE, False, "refused")
                assert hold is not None and hold.retry_in == COOLDOWN
        held = [r for r in caplog.records if "held down for" in r.getMessage()]
        assert 4 <= len(held) <= 6, [r.getMessage() for r in held]  # 240 s of it: at 0 s and once a minute


def test_an_address_no_node_has_after_a_reload_is_forgotten() -> None:
    """A reload pointed a node held down at another address, then back: it started from the failures in a row
    counted there before, held down for 60 s at the first failure (the QA pass: "42 connections in a row",
    though the node had answered at its other address meanwhile). Now an address left is forgotten."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    moved = Node(name=NODE.name, url="http://127.0.0.1:3")
    fail(health, NODE, FAILURES_IN_A_ROW)
    fail(health, OTHER, FAILURES_IN_A_ROW)
    health.reconfigured([moved, OTHER])
    assert health.held_down(moved) is None and health.is_down(OTHER)
    health.reconfigured([NODE, OTHER])  # back at the old address
    assert not health.is_down(NODE)
    fail(health, NODE, FAILURES_IN_A_ROW - 1)
    assert health.held_down(NODE) is None
    fail(health, NODE, 1)
    hold = health.held_down(NODE)
    assert hold is not None and f"after {FAILURES_IN_A_ROW} connections in a row" in hold.reason, hold
    assert hold.retry_in == COOLDOWN


def test_a_hold_ends_by_the_end_of_a_node_down_wait_cut_by_a_reload() -> None:
    """A node down for 30 s, held for 32 s more (node_down_wait 300): a reload cuts node_down_wait to 10 s,
    past already. The hold kept its end (its items, brought forward, were held again until then: 39 s after
    the reload); it ends now. One cut to 40 s ends the hold at 40 s; a longer one changes nothing."""
    clock, patience = Clock(), [300.0]
    health = NodeHealth(clock, patience=lambda: patience[0])
    fail(health, NODE, FAILURES_IN_A_ROW)
    for _ in range(4):  # cooldowns of 2, 4, 8, 16 s, each probe failing: down for 30 s, then 32 s more
        hold = health.held_down(NODE)
        assert hold is not None
        clock.now = hold.asked_at
        assert health.held_down(NODE) is None  # the probe
        fail(health, NODE, 1)
    hold = health.resting(NODE)
    assert hold is not None and hold.down_for == 30 and hold.retry_in == 32, hold
    for cut, ends_in in ((1000.0, 32), (40.0, 10), (10.0, 0)):
        patience[0] = cut
        health.reconfigured([NODE])
        rest = health.resting(NODE)
        assert (rest is None) if ends_in == 0 else (rest is not None and rest.asked_at == clock.now + ends_in), rest


def test_a_node_back_after_a_hold_is_told_once_with_when_its_hold_began() -> None:
    """`came_back`: a node whose probe connects after a hold is told once, with how long it was held down (since
    the first of its cooldowns, not the last), for the engine to warm again what it had warmed before (it may
    have restarted empty); an answer without a hold before it, or failures that held nothing down, tell
    nothing."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    fail(health, NODE, FAILURES_IN_A_ROW - 1)
    health.observe(NODE, True, None)
    assert health.came_back() == []
    fail(health, NODE, FAILURES_IN_A_ROW)
    clock.now += COOLDOWN
    assert health.held_down(NODE) is None  # the probe
    fail(health, NODE, 1)  # held down again, for longer
    clock.now += 2 * COOLDOWN
    assert health.held_down(NODE) is None
    assert health.came_back() == []
    health.observe(NODE, True, None)
    health.observe(OTHER, True, None)
    assert health.came_back() == [(NODE.url, 3 * COOLDOWN)]
    assert health.came_back() == []


@pytest.mark.parametrize(
    ("kind", "setting", "rewarms"),
    [
        ("varnish", None, True),
        ("squid", None, True),
        ("nginx", None, False),
        ("ats", None, True),
        ("generic", None, False),
        ("nginx", True, True),
        ("varnish", False, False),
    ],
)
def test_whether_a_node_back_is_warmed_again_goes_by_its_kind_unless_it_says(
    kind: str, setting: bool | None, rewarms: bool
) -> None:
    """By default the caches whose restart loses what they stored (Varnish; Squid with memory only, Debian's
    default; ATS, its last minute's) are warmed again when back after a hold; `rewarm_after_down` says otherwise
    for any node."""
    node = Node(name="n", url="http://127.0.0.1:1", kind=NodeKind(kind), rewarm_after_down=setting)
    assert node.rewarms_after_down is rewarms


def test_a_late_answer_to_a_request_sent_before_the_hold_does_not_end_it() -> None:
    """An answer to a request sent before the node was held down came over a connection made before: it says
    nothing of the node now (a tester: such an answer ended a hold in the millisecond it began, and the node,
    dead for 8 s more, was said to be back and its warms done again). One sent after the hold began (the probe)
    ends it; without `asked_at`, an answer ends it as before."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    asked_before = health.now()
    clock.now += 0.5
    fail(health, NODE, FAILURES_IN_A_ROW)
    health.observe(NODE, True, None, asked_before)
    assert health.held_down(NODE) is not None and health.came_back() == []
    clock.now += COOLDOWN
    assert health.held_down(NODE) is None  # the probe, sent now
    health.observe(NODE, True, None, health.now())
    assert health.came_back() == [(NODE.url, COOLDOWN)]
    assert not health.is_down(NODE)
    fail(health, NODE, FAILURES_IN_A_ROW)
    health.observe(NODE, True, None)
    assert not health.is_down(NODE)


def test_a_late_failure_of_a_request_sent_before_the_probe_is_not_the_probe_s() -> None:
    """A request sent before the probe that fails while the probe is out (a connect timeout of 5 s outlasts the
    first cooldown of 2 s) says nothing of the node now: the probe stays out, no second one goes, the cooldown
    does not double; the failure finds the node held down (its item waits). The probe's own failure doubles it
    (a reviewer: the late failure was taken for the probe's, and a second probe let through beside the first)."""
    clock = Clock()
    health = NodeHealth(clock, patience=LONG)
    asked_before = health.now()
    fail(health, NODE, FAILURES_IN_A_ROW)
    clock.now += COOLDOWN
    assert health.held_down(NODE) is None  # the probe
    probe_asked = health.now()
    clock.now += 1.0
    hold = health.observe(NODE, False, "connect timeout", asked_before)
    assert hold is not None and hold.probe_out
    clock.now += PROBE_WAIT + COOLDOWN * 2
    hold = health.held_down(NODE)
    assert hold is not None and hold.probe_out  # no second probe while the first is out
    health.observe(NODE, False, "connect timeout", probe_asked)
    hold = health.held_down(NODE)
    assert hold is not None and not hold.probe_out and hold.retry_in == COOLDOWN * 2
