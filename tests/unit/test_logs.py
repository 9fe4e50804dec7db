"""The log's shape: a step failing over and over is logged as it starts, then once a minute, and as it ends; a
task's end line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgewarm.errors import StoreError
from edgewarm.logs import CALLERS_KEPT, RefusalDigest, RepeatedFailure, TextFormatter, counted, item_count
from edgewarm.metrics import Metrics
from edgewarm.models import Task, TaskKind, TaskStatus
from edgewarm.views import task_summary


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_a_step_failing_alike_is_logged_at_once_then_once_a_minute_then_when_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    step = RepeatedFailure(logging.getLogger("test.repeated"), "claiming items", every=60.0, clock=clock)
    down = StoreError("the store is down")
    with caplog.at_level(logging.INFO, logger="test.repeated"):
        step.worked()  # nothing to say while it works
        for _ in range(120):  # a failure every 0.5 s for a minute
            step.failed(down)
            clock.now += 0.5
        step.failed(down)  # 60 s after the first: logged, with the count of those not logged
        step.failed(StoreError("the store is damaged"))  # another kind: at once
        clock.now += 1.5
        step.worked()
        step.worked()
        step.failed(down)  # a new run of failures: at once again
        step.failed(down)
        step.worked()  # the failure since the last line is counted
        step.failed(down)
        clock.now += 5.0
        step.worked()  # one failure: not "0.0 s of failures" (read as no outage at all)
    assert messages(caplog) == [
        ("ERROR", "claiming items failed: the store is down"),
        ("ERROR", "claiming items failed: the store is down (119 more failures alike not logged)"),
        ("ERROR", "claiming items failed: the store is damaged"),
        ("INFO", "claiming items works again, after 122 failures over 60.0 s, the last 1.5 s ago"),
        ("ERROR", "claiming items failed: the store is down"),
        ("INFO", "claiming items works again, after 2 failures over 0.0 s (1 more failures alike not logged)"),
        ("ERROR", "claiming items failed: the store is down"),
        ("INFO", "claiming items works again, after 1 failure, 5.0 s ago"),
    ]


def test_refusals_are_told_with_the_addresses_they_came_from(caplog: pytest.LogCaptureFixture) -> None:
    """Before, an operator could not tell from edgewarm's log where a flood of bad signatures came from (behind a
    proxy, only the proxy's log had it). A line names three addresses and how many more (a bounded count)."""
    clock = Clock()
    digest = RefusalDigest(logging.getLogger("test.refusals"), "calls refused", every=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        digest.refused("wrong_signature", "10.0.0.1")
        for i in range(5):
            digest.refused("wrong_signature", f"10.0.1.{i}")
        digest.refused("unknown_user", "10.0.1.0")  # seen already
        digest.refused("unknown_user")  # not known
        clock.now += 60
        digest.refused("no_signature", "10.0.2.1")
        clock.now += 60
        digest.refused("no_signature")  # none known since the last line: no "from"
        clock.now += 60
        for i in range(CALLERS_KEPT + 5):
            digest.refused("wrong_signature", f"10.1.{i // 256}.{i % 256}")
        clock.now += 60
        digest.refused("wrong_signature", "10.9.9.9")
        clock.now += 60
        digest.refused("wrong_signature", "A" * 7000)  # what a spoofed X-Forwarded-For may say (a re-tester's)
        clock.now += 60
        digest.refused("wrong_signature", "evil\tcafé")
    assert [m for _, m in messages(caplog)] == [
        "calls refused: 1 wrong_signature; from 10.0.0.1",
        "calls refused in the last 60 s: 1 no_signature; 2 unknown_user; 5 wrong_signature; from 10.0.1.0, 10.0.1.1, "
        "10.0.1.2 and 3 more",
        "calls refused in the last 60 s: 1 no_signature",
        "calls refused in the last 60 s: 1 wrong_signature; from 10.1.0.0",
        "calls refused in the last 60 s: 1005 wrong_signature; from 10.1.0.1, 10.1.0.2, 10.1.0.3 and at least 997 more",
        "calls refused in the last 60 s: 1 wrong_signature; from " + "A" * 63 + "…",
        "calls refused in the last 60 s: 1 wrong_signature; from evil?caf?",
    ]


@pytest.mark.anyio
async def test_refusals_held_are_logged_when_their_minute_has_passed(caplog: pytest.LogCaptureFixture) -> None:
    """The refusals after a line were told only with a refusal a minute or more later: a burst's last ones
    waited for the next burst (or a stop). Now a timer writes them when the minute has passed; a line written
    meanwhile takes them and stops the timer."""
    digest = RefusalDigest(logging.getLogger("test.refusals"), "calls refused", every=0.2)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        digest.refused("wrong_signature")
        digest.refused("wrong_signature")
        digest.refused("unknown_user")
        assert len(messages(caplog)) == 1
        await asyncio.sleep(0.5)
        assert [m for _, m in messages(caplog)][1:] == [
            "calls refused in the last 0 s: 1 unknown_user; 1 wrong_signature"
        ]
        digest.flush()  # nothing held: no line
        assert len(messages(caplog)) == 2


def test_failures_that_differ_only_in_a_name_or_a_number_are_alike(caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL's full disk names the file it could not extend, another one each time: 40 refused calls made
    14 lines in 2 s (each message new to the comparison). Quoted names and numbers do not make a failure new."""
    clock = Clock()
    step = RepeatedFailure(logging.getLogger("test.alike"), "answering calls", every=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.alike"):
        for file in ("16405", "16400", "16392", "16405"):
            step.failed(f'postgresql: DiskFullError: could not extend file "base/16384/{file}": No space left')
            clock.now += 0.1
        step.failed("postgresql: ConnectionRefusedError: [Errno 111] Connection refused")  # another kind
    assert [m for _, m in messages(caplog)] == [
        'answering calls failed: postgresql: DiskFullError: could not extend file "base/16384/16405": No space left',
        "answering calls failed: postgresql: ConnectionRefusedError: [Errno 111] Connection refused"
        " (3 more failures alike not logged)",
    ]


def test_a_task_that_ended_before_it_began_by_the_clock_lasted_0_s_not_less(caplog: pytest.LogCaptureFixture) -> None:
    """The wall clock stepped back an hour during the task (or the API's clock is ahead of the worker's): its
    duration is 0 in its view, its log line and /metrics (before: -3585.8 s in all three; the histogram's sum
    went down)."""
    task = Task("t1", "u", TaskKind.PREFETCH, 10_000.0, TaskStatus.SUCCEEDED, 3, 3, 0, finished_at=6_414.2)
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="test.ended"):
        metrics.task_ended(task, logging.getLogger("test.ended"))
    assert task_summary(task, "en")["duration_seconds"] == 0.0
    assert caplog.records[0].getMessage() == "task ended: status 0 (3 succeeded, 0 failed) in 0.000 s"
    assert metrics.registry.get_sample_value("edgewarm_task_duration_seconds_sum") == 0.0


def test_a_text_line_carries_the_fields_a_json_line_does() -> None:
    """`log_format = "text"` dropped every field: no task id on "task submitted" or "task ended" lines."""
    record = logging.LogRecord("edgewarm.engine", logging.INFO, __file__, 1, "task ended: status %d", (0,), None)
    record.task_id, record.user, record.status = "t-1", "alice", 0
    line = TextFormatter().format(record)
    assert line.endswith("INFO edgewarm.engine: task ended: status 0 [task_id=t-1 user=alice status=0]"), line


def test_counts_in_lines_are_singular_for_one() -> None:
    """A stop said "1 webhook deliveries cut short": a count's noun follows it, with the plural given where "s"
    does not make it."""
    assert (
        counted(1, "webhook delivery", "webhook deliveries"),
        counted(2, "webhook delivery", "webhook deliveries"),
    ) == (
        "1 webhook delivery",
        "2 webhook deliveries",
    )
    assert [counted(n, "webhook") for n in (0, 1, 3)] == ["0 webhooks", "1 webhook", "3 webhooks"]
    assert (item_count(1), item_count(2)) == ("1 item", "2 items")
