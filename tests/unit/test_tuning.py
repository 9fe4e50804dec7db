"""What a process's open-files limit leaves its requests and its API (tuning.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgewarm import tuning


@pytest.fixture(autouse=True)
def _rooms_computed_afresh() -> Iterator[None]:
    """The rooms are cached: none of this test's limits is left for the tests after it."""
    yield
    tuning.requests_room.cache_clear()
    tuning.api_connections_room.cache_clear()


@pytest.mark.parametrize("concurrency", [64, 256, 1000])
def test_the_rooms_grow_with_the_open_files_limit_and_stay_within_it(
    monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    """For limits from 64 to 4,096: requests and API connections together leave the process's own files room,
    and neither room shrinks as the limit grows (a re-tester's: 127 API connections at 511 files, 64 at 512)."""
    before = (0, 0)
    for soft in range(64, 4097):
        monkeypatch.setattr(tuning, "_raised_open_files", lambda soft=soft: soft)
        tuning.requests_room.cache_clear()
        tuning.api_connections_room.cache_clear()
        requests, api = tuning.requests_room(concurrency), tuning.api_connections_room(concurrency)
        assert api is not None and requests <= concurrency
        assert requests + api <= soft - min(tuning.FILES_OF_THE_PROCESS, soft // 4), (soft, requests, api)
        assert requests >= before[0] and api >= before[1], (soft, before, requests, api)
        if tuning.open_files_room(concurrency) is None:  # a caution whenever either room is cut
            assert requests == concurrency and api == soft - concurrency - tuning.FILES_OF_THE_PROCESS, soft
        before = (requests, api)
