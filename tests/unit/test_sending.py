"""How `submit` and `refresh` say where a sending stopped, and when a call without an answer may have made a task."""

from __future__ import annotations

import httpx
import pytest

from edgewarm.cli.tools import _where
from edgewarm.client import _transport_error

CALLS = [["a1", "a2"], ["b1", "b2"], ["c1"]]


def test_a_refused_call_made_no_task_and_the_entries_from_it_on_are_named() -> None:
    assert _where(CALLS, 1, under_way=False) == (
        "1 of 3 calls made tasks (ids above): entries #1-#2; call 2 was refused; no task made: #3-#5, from b1 on"
    )


def test_a_call_without_an_answer_may_have_made_its_task_and_the_rest_were_not_sent() -> None:
    """Before: "call 2 was refused: the entries from #3 on were not sent", though the server had made its task."""
    assert _where(CALLS, 1, under_way=True) == (
        "1 of 3 calls made tasks (ids above): entries #1-#2; call 2 (#3-#4) may have made one: `edgewarm tasks` "
        "lists it; not sent: #5, from c1 on"
    )
    assert _where(CALLS, 0, under_way=True).startswith("no call made a task; call 1 (#1-#2) may have made one")
    assert _where(CALLS, 2, under_way=True).endswith("call 3 (#5) may have made one: `edgewarm tasks` lists it")
    assert _where(CALLS, 3, under_way=True) == "3 of 3 calls made tasks (ids above): entries #1-#5"


@pytest.mark.parametrize(
    ("error", "maybe"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("no connection"), False),
        (httpx.ReadTimeout("timed out"), True),
        (httpx.RemoteProtocolError("closed without an answer"), True),
        (httpx.ReadError("reset"), True),
    ],
)
def test_a_call_may_have_made_its_task_unless_no_connection_was_made(error: httpx.HTTPError, maybe: bool) -> None:
    assert _transport_error(error, "http://127.0.0.1:1").maybe_done is maybe
