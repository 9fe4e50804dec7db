"""What a directory purge made of single URLs covers (engine/actions.py `_under`)."""

from __future__ import annotations

from edgewarm.engine.actions import _under
from edgewarm.urls import parse_url


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
        "not a url",
    ]
    assert [t.url for t in _under(directory, known)] == [
        "http://www.example.test/d/",
        "http://WWW.example.test/d/b.bin",
        long_url,
    ]
