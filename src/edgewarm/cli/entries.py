"""The entries (URLs or directories) `submit` and `refresh` send: read, checked and made distinct before any call,
so that a list that cannot go whole is refused whole, not half sent."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import BinaryIO

import click

from ..errors import RequestRefused
from ..urls import parse_url

_BOM = b"\xef\xbb\xbf"  # what Windows editors put before UTF-8 text
_ANY_LENGTH = 1 << 30  # the server checks the length against its own [api] max_url_length
SHOWN = 3  # entries named in a refusal; the others are counted


def read_entries(args: Iterable[str], file: str | None) -> list[str]:
    """URLs from the arguments, then from --file (- for stdin), or from stdin when neither is given: one per
    line, blank lines and lines starting with '#' left out, a UTF-8 byte order mark too. Text that is not
    UTF-8 is refused, naming its line."""
    entries = []
    for number, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # the shell passed bytes that are not UTF-8 (the OS's surrogate escapes)
            raise click.UsageError(f"argument {number} is not UTF-8 text") from None
        if arg.strip():
            entries.append(arg.strip())
    if file == "-" or (file is None and not entries and not sys.stdin.isatty()):
        entries += _lines(sys.stdin.buffer, "stdin")
    elif file is not None:
        try:
            with open(file, "rb") as stream:
                entries += _lines(stream, file)
        except OSError as exc:
            raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    if not entries:
        raise click.UsageError("no URLs: give them as arguments, with --file, or on stdin")
    return entries


def _lines(stream: BinaryIO, name: str) -> list[str]:
    found = []
    for number, raw in enumerate(stream.read().removeprefix(_BOM).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise click.ClickException(f"{name}, line {number}: not UTF-8 text (nothing was sent)") from None
        if line and not line.startswith("#"):
            found.append(line)
    return found


def checked(entries: list[str], directories: bool = False) -> list[str]:
    """`entries`, each object once, in its first place; the whole list refused when an entry is not a URL (its
    syntax: the server's own check, done here first) or, with `directories`, not a directory: nothing is sent.
    The first few refused are named with their place in the list; the domains and the length are the server's
    to check, at its call. An object given twice, in any spelling the server takes for one (a host's case, a
    default port), is left out (said, with a count): it would be warmed and charged twice, or, in one call,
    refuse it."""
    bad: list[str] = []
    seen: dict[str, str] = {}
    for place, entry in enumerate(entries, 1):
        try:
            target = parse_url(entry, _ANY_LENGTH)
        except RequestRefused as exc:
            bad.append(f"#{place}: {exc.message}")
            continue
        if directories and not target.is_dir:
            bad.append(f"#{place}: a directory must end with '/' (and have no query): {entry}")
        seen.setdefault(target.cache_key, entry)
    if bad:
        more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise click.ClickException(
            f"{len(bad)} of the entries cannot be sent{more}, nothing was: " + "; ".join(bad[:SHOWN])
        )
    if len(seen) < len(entries):
        left = len(entries) - len(seen)
        click.echo(f"{left} duplicate entr{'y' if left == 1 else 'ies'} left out", err=True)
    return list(seen.values())
