"""Nodes that cannot be reached: held down for a while instead of being asked by every item in turn.

A node that drops connection attempts costs each item `connect_timeout` per attempt: thousands of items on a
dead node would keep the task open for an hour while each one found out again. After `FAILURES_IN_A_ROW`
requests in a row could not connect (refused, no answer within `connect_timeout`, name not found), the node is
held down for `COOLDOWN` seconds (doubling while it stays down, up to `COOLDOWN_MAX`, and cut to end when
`[engine] node_down_wait` does; past it, `COOLDOWN` again: its items then spend attempts, and one back must be
found before they are spent): its items are not sent but answered at once with the reason (a `Hold`). When the
cooldown ends, one request is let through: if it connects, the node is up again; if not, it is held down
again. What the items do meanwhile is the outcome's rule (outcome.py): they wait for the node, without spending
attempts (nor do those whose request failed to connect while it was held down: the probe, those in flight),
while it has been down for less than `[engine] node_down_wait`; after that each such answer counts as a failed
attempt.

One `NodeHealth` per process (the runtime's), kept across reloads that replace the fetcher; whichever fetcher
sends the requests consults it (with `[engine] fetch_process`, the parent: its child sends everything it is
given). `/metrics` shows it as `edgewarm_node_held_down{node}`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import Node

log = logging.getLogger("edgewarm.engine")

FAILURES_IN_A_ROW = 5
COOLDOWN = 2.0  # seconds
COOLDOWN_MAX = 60.0
PROBE_WAIT = 1.0  # seconds: while the probe is out, the others come back after this long
LOG_EVERY = 60.0  # seconds: a node held down again and again is logged once in this long
BACK_KEPT = 1_000  # nodes back after a hold not yet taken (came_back), at most


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a node is not asked now."""

    reason: str
    down_for: float  # seconds since it was held down (this time: an answer ends it)
    retry_in: float  # seconds until it is asked again (PROBE_WAIT while the probe is out)
    asked_at: float  # monotonic: when this cooldown ends (the same for every Hold of one cooldown)
    probe_out: bool  # the cooldown is over and the one request let through has not answered yet
    wait: str = ""  # what `reason` says of when it is asked again, " (asked again in 2 s)": not said once given up


@dataclass(slots=True)
class _State:
    failures: int = 0  # connection failures in a row
    last_error: str = ""
    down_until: float = 0.0  # monotonic; 0: up
    since: float = 0.0  # monotonic: when it was held down (the first cooldown of this spell)
    cooldown: float = COOLDOWN
    probing: float = 0.0  # monotonic start of the one request let through after a cooldown; 0: none
    logged: float = 0.0  # monotonic: when its hold was last logged


class NodeHealth:
    """Per node address (its URL: a reload may point a name elsewhere): connection failures in a row, and
    whether it is held down now."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        patience: Callable[[], float] = float,
        attempts: Callable[[], int] = lambda: FAILURES_IN_A_ROW,
    ) -> None:
        """`patience`: `[engine] node_down_wait` (read at each hold: a reload may change it); a cooldown ends by
        then, so that a node back in time is asked before its items' patience runs out. 0: no such bound.
        `attempts`: `[engine] max_attempts`: a node is held down after FAILURES_IN_A_ROW failures in a row, or
        that many if fewer, so that one item's attempts are enough to find a node down (a task of one URL on a
        node restarting would otherwise spend them all in seconds, and fail)."""
        self._clock = clock
        self._patience = patience
        self._attempts = attempts
        self._nodes: dict[str, _State] = {}
        self._back: deque[tuple[str, float]] = deque(maxlen=BACK_KEPT)  # (node URL, seconds held down): came_back
        self._cut: set[str] = set()  # names of the nodes a connection to was closed under a request: were_cut

    def now(self) -> float:
        """This record's clock: a request's `asked_at` for `observe`."""
        return self._clock()

    def came_back(self) -> list[tuple[str, float]]:
        """The nodes (by URL) that answered again after a hold since the last call, each with how long it had been
        held down then (seconds since the first cooldown of that spell began); each told once."""
        back = list(self._back)
        self._back.clear()
        return back

    def cut(self, node: Node) -> None:
        """A connection to `node` was closed or reset under a request, before any answer (the request was sent
        again, and may have been answered): the node may have restarted, its cache with it."""
        self._cut.add(node.name)

    def were_cut(self) -> set[str]:
        """The names of the nodes `cut` since the last call; each told once."""
        cut, self._cut = self._cut, set()
        return cut

    def held_down(self, node: Node) -> Hold | None:
        """Why `node` is not to be asked now, or None: ask it (the first request after a cooldown is the probe,
        and the others wait for its answer)."""
        state = self._nodes.get(node.url)
        if state is None or not state.down_until:
            return None
        now = self._clock()
        left = state.down_until - now
        if left <= 0 and not _probe_out(state, now):
            state.probing = now
            return None
        return _hold(node, state, now)

    def resting(self, node: Node) -> Hold | None:
        """The hold of `node` if no request may go to it now (held down and its cooldown not over, or the probe
        after it still out); else None. While its items wait for it, the engine claims none of them (they
        would only come back unsent), and puts off those due during the cooldown to its end."""
        state = self._nodes.get(node.url)
        if state is None or not state.down_until:
            return None
        now = self._clock()
        if now < state.down_until or _probe_out(state, now):
            return _hold(node, state, now)
        return None

    def is_down(self, node: Node) -> bool:
        """Whether `node` is held down now (or being probed after its cooldown), without starting a probe."""
        state = self._nodes.get(node.url)
        return state is not None and bool(state.down_until)

    def reconfigured(self, nodes: Sequence[Node]) -> None:
        """A reload: forget the addresses no node of `nodes` has now (a node moved or removed; one pointed back
        at such an address later starts afresh, not from the failures in a row counted there before), and end
        each hold by node_down_wait's end if the reload cut it (now, if that has passed): a hold is set when it
        begins, and would otherwise keep its node's items waiting past the new patience."""
        kept = {node.url for node in nodes}
        for url in [url for url in self._nodes if url not in kept]:
            del self._nodes[url]
        patience, now = self._patience(), self._clock()
        for state in self._nodes.values():
            if patience and state.down_until > state.since + patience:
                state.down_until = max(state.since + patience, min(now, state.down_until))

    def lost(self, node: Node) -> None:
        """A request to `node` ended with no word from it (its sender died): nothing is learnt, but if it was
        the one let through after a cooldown, the next request is."""
        state = self._nodes.get(node.url)
        if state is not None:
            state.probing = 0.0

    def observe(self, node: Node, connected: bool, error: str | None, asked_at: float | None = None) -> Hold | None:
        """One request's fate: `connected` when the node answered (whatever it said), else the failure. Returns
        the node's hold when this failure finds it held down (or holds it down, or was the probe): the item
        then waits for the node as those not sent do, rather than spend an attempt on a node known down.
        `asked_at` (`now()` when it was sent): an answer to a request sent before the node's hold began came
        over a connection made before, and says nothing of the node now: it does not end the hold (a tester saw
        one end it in the millisecond it began, 8 s before the node was back)."""
        state = self._nodes.get(node.url)
        if connected:
            if state is not None and state.down_until and asked_at is not None and asked_at < state.since:
                return None
            if state is not None:
                del self._nodes[node.url]
                if state.down_until:
                    log.info("node %s answers again: no longer held down", node.name, extra={"node": node.name})
                    self._back.append((node.url, self._clock() - state.since))
            return None
        if state is None:
            state = self._nodes[node.url] = _State()
        state.failures += 1
        state.last_error = error or "cannot connect"
        now = self._clock()
        if state.probing and (asked_at is None or asked_at >= state.probing):  # the probe failed: down again, longer
            state.probing = 0.0
            state.cooldown = min(state.cooldown * 2, COOLDOWN_MAX)
        elif state.down_until:
            return _hold(node, state, now)
        elif state.failures < min(FAILURES_IN_A_ROW, self._attempts()):
            return None
        state.since = state.since or now
        patience = self._patience()
        if patience and now < state.since + patience:
            # Its items wait for it: asked again after the cooldown, or when their patience ends.
            state.down_until = min(now + state.cooldown, state.since + patience)
        elif patience:
            # Past it, its items spend attempts (outcome.py), each no faster than it is asked: a node back is
            # found within COOLDOWN, not after a cooldown grown to COOLDOWN_MAX (items submitted after it came
            # back failed unsent for up to a minute). Without patience (0), its items are to end at once.
            state.down_until = now + COOLDOWN
        else:
            state.down_until = now + state.cooldown
        if now - state.logged >= LOG_EVERY or not state.logged:
            state.logged = now
            log.warning(
                "node %s held down for %.0f s: %d connections in a row failed, the last: %s",
                node.name,
                state.down_until - now,
                state.failures,
                state.last_error,
                extra={"node": node.name},
            )
        return _hold(node, state, now)


def _probe_out(state: _State, now: float) -> bool:
    """Whether the request let through after the cooldown has not answered yet. One that never reports (its item
    was dropped: the engine stopping, say) counts as out for COOLDOWN_MAX only, then another is let through."""
    return bool(state.probing) and now - state.probing <= COOLDOWN_MAX


def _hold(node: Node, state: _State, now: float) -> Hold:
    left = state.down_until - now
    wait = f" (asked again in {left:.0f} s)" if left > 0 else " (being asked again now)"
    reason = (
        f"not tried: {node.name} is held down after {state.failures} connections in a row failed"
        f"{wait}; the last: {state.last_error}"
    )
    return Hold(reason, now - state.since, max(left, PROBE_WAIT), state.down_until, left <= 0, wait)
