"""store/base.py's matching of claimed warms to open purges (PURGE_FIRST), apart from any store."""

from __future__ import annotations

from edgewarm.models import WARMED_AGAIN, Claim, ItemAction
from edgewarm.store.base import OpenPurge, blocking_purges, hand_backs, purge_keys, waits_note

HOST = "http://www.example.test"


def warm(item_id: int, url: str, node: str = "edge-1") -> Claim:
    return Claim(item_id, "later", url, node, ItemAction.WARM, 0)


def purge(item_id: int, url: str, action: ItemAction = ItemAction.PURGE_DIR, node: str = "edge-1") -> OpenPurge:
    return OpenPurge(item_id, f"task-{item_id}", node, url, action, "alice")


def test_a_warm_is_held_by_the_earliest_purge_of_its_object_or_a_directory_over_it() -> None:
    purges = [
        purge(5, f"{HOST}/a/b/"),
        purge(3, f"{HOST}/a/"),
        purge(4, f"{HOST}/a/b/c.bin", ItemAction.PURGE),
        purge(6, f"{HOST}/b/"),
        purge(7, f"{HOST}/a/", node="edge-2"),
        purge(200, f"{HOST}/z/"),  # submitted after the warms
    ]
    claims = [
        warm(100, f"{HOST}/a/b/c.bin"),  # under /a/ (3), /a/b/ (5), and the file (4): the earliest
        warm(101, f"{HOST}/bb/x"),  # /b/ is not over /bb/
        warm(102, "https://WWW.Example.test:443/b/y?q=/a/"),  # another spelling, under /b/
        warm(103, f"{HOST}/z/late"),  # the purge of /z/ came later
        warm(104, f"{HOST}/c/d", node="edge-3"),  # no purge open on its node
        warm(105, f"{HOST}/a/"),  # the directory's own URL
    ]
    held = {item: found.item_id for item, found in blocking_purges(claims, purges).items()}
    assert held == {100: 3, 102: 6, 105: 3}


def test_a_url_written_into_the_store_past_the_api_holds_back_nothing_and_raises_nothing() -> None:
    """A CRLF URL planted in the store (the engine fails its item without a request): the claim's look for the
    purges that hold it back raised the API's refusal and stopped the engine (a CI run)."""
    claims = [warm(100, f"{HOST}/a\r\nX-Injected: yes"), warm(101, f"{HOST}/a/x")]
    purges = [purge(3, f"{HOST}/a/"), purge(4, f"{HOST}/a\r\nX: y", ItemAction.PURGE)]
    assert {item: found.item_id for item, found in blocking_purges(claims, purges).items()} == {101: 3}
    assert purge_keys(claims) == [("edge-1", "www.example.test/a/x")]


def test_a_purge_holds_back_a_warm_of_its_object_with_the_escapes_in_another_case() -> None:
    """A purge reaches each case of its escapes (`%c3%a9` and `%C3%A9`), so a warm in another case waits for it
    (a tester's warm went first, then was purged); purge_keys looks a warm up by its key in each case (an open
    purge an earlier edgewarm stored keeps its key as its URL was written)."""
    purges = [
        purge(3, f"{HOST}/q/%c3%a9.txt?k=%c3%a9", ItemAction.PURGE),
        purge(4, f"{HOST}/d/%C3%a9/"),
    ]
    claims = [
        warm(100, f"{HOST}/q/%C3%A9.txt?k=%C3%A9"),
        warm(101, f"{HOST}/d/%c3%a9/x.txt"),
        warm(102, f"{HOST}/q/%C3%A9.txt?k=%C3%A8"),  # another object
    ]
    assert {item: found.item_id for item, found in blocking_purges(claims, purges).items()} == {100: 3, 101: 4}
    assert purge_keys([warm(105, f"{HOST}/q/%c3%a9?x=%2f")]) == [
        ("edge-1", "www.example.test/q/%C3%A9?x=%2F"),
        ("edge-1", "www.example.test/q/%c3%a9?x=%2f"),
    ]
    assert purge_keys([warm(106, f"{HOST}/q/%C3%A9")]) == [
        ("edge-1", "www.example.test/q/%C3%A9"),
        ("edge-1", "www.example.test/q/%c3%a9"),  # a re-tester's upgrade: an open purge keyed as written
    ]
    assert purge_keys([warm(107, f"{HOST}/q/a.bin")]) == [("edge-1", "www.example.test/q/a.bin")]


def test_a_warm_done_again_held_back_by_a_purge_keeps_saying_so() -> None:
    """A warm done again (after a node's move, say) held back for an earlier task's purge was handed back with
    the purge's note alone: its claim's `rewarm` is read from `warmed again:`, so its success was counted as
    another item finished (a re-tester's 500 for 400 items). The note keeps it; a first warm's does not get it."""
    purge = OpenPurge(9, "t-1", "n", "http://www.example.test/a", ItemAction.PURGE, "alice")
    again = Claim(1, "t-2", purge.url, "n", ItemAction.WARM, 1, user="alice", rewarm=True)
    first = Claim(2, "t-3", purge.url, "n", ItemAction.WARM, 0, user="alice")
    notes = {item: note for item, note, _ in hand_backs([again, first], {1: purge, 2: purge})}
    assert notes[1] == f"{WARMED_AGAIN} {waits_note(purge, 'alice')}"
    assert notes[2] == waits_note(purge, "alice") and not notes[2].startswith(WARMED_AGAIN)
