"""The entries (URLs or directories) `submit` and `refresh` send: read, checked and made distinct before any call,
so that a list that cannot go whole is refused whole, not half sent. Each entry keeps where it was given (an
argument's number, a file's line), so that what is refused, and where a sending stopped, is said in the places
the user can find."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import click

from ..config import domain_owned
from ..errors import RequestRefused
from ..urls import parse_url, shortened

_BOM = b"\xef\xbb\xbf"  # what Windows editors put before UTF-8 text
_ANY_LENGTH = 1 << 30  # the server checks the length against its own [api] max_url_length
SHOWN = 3  # entries named in a refusal; the others are counted
ARGUMENT = ""  # Entry.source of the command line's arguments


class FileRefused(click.ClickException):
    """A file named that cannot be used (a URL list, a client config: missing, unreadable or wrong): a usage error
    (exit status 2), as no credentials are (a tester's script read 1 for a URL file mistyped, 2 for a client
    config)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """A URL or directory as given, and where: the command line's argument `number`, or line `number` of the
    file `source` ("stdin" for standard input)."""

    text: str
    source: str
    number: int

    def __str__(self) -> str:
        return f"argument {self.number}" if self.source == ARGUMENT else f"{self.source} line {self.number}"


def span(first: Entry, last: Entry) -> str:
    """Where a run of entries was given: `argument 3`, `urls.txt lines 3-250`, `argument 2 to urls.txt line 9`."""
    if first == last:
        return str(first)
    if first.source != last.source:
        return f"{first} to {last}"
    if first.source == ARGUMENT:
        return f"arguments {first.number}-{last.number}"
    return f"{first.source} lines {first.number}-{last.number}"


class NothingToSend(Exception):
    """`--file -` read no URL: the command before it in a pipe had none to give (`edgewarm failed … | edgewarm
    submit -f -` when nothing failed exited 2, a deploy's `set -o pipefail` step failing): said, exit 0."""


def read_entries(args: Iterable[str], file: str | None) -> list[Entry]:
    """URLs from the arguments, then from --file (- for stdin), or from stdin when neither is given: one per
    line, blank lines and lines starting with '#' left out, a UTF-8 byte order mark too. Text that is not
    UTF-8 is refused, naming its line; so is an empty argument (an unset variable in quotes: it read stdin, and
    in a `while read` loop took the loop's other lines, a tester's). NothingToSend when `--file -` read none."""
    given = list(args)
    entries = []
    for number, arg in enumerate(given, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # the shell passed bytes that are not UTF-8 (the OS's surrogate escapes)
            raise click.UsageError(f"argument {number} is not UTF-8 text") from None
        if not arg.strip():
            raise click.UsageError(f"argument {number} is empty (an unset variable?): nothing was sent")
        entries.append(Entry(arg.strip(), ARGUMENT, number))
    if file == "-" or (file is None and not given and not sys.stdin.isatty()):
        read = _lines(sys.stdin.buffer, "stdin")
        if file == "-" and not read and not entries:
            raise NothingToSend("no URLs on stdin: nothing was sent")
        entries += read
    elif file is not None:
        try:
            with open(file, "rb") as stream:
                entries += _lines(stream, file)
        except OSError as exc:
            raise FileRefused(f"cannot read {file}: {exc.strerror}") from None
        if not entries:
            raise FileRefused(f"no URLs in {file} (blank lines and comments only): nothing was sent")
    if not entries:
        raise click.UsageError("no URLs: give them as arguments, with --file, or on stdin")
    return entries


def _lines(stream: BinaryIO, name: str) -> list[Entry]:
    found = []
    for number, raw in enumerate(stream.read().removeprefix(_BOM).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise click.ClickException(f"{name}, line {number}: not UTF-8 text (nothing was sent)") from None
        if line and not line.startswith("#"):
            found.append(Entry(line, name, number))
    return found


def _in_a_line(entry: Entry, refusal: str) -> str:
    """The server's refusal of an entry, told for a line or an argument: a CR or a space inside one had the API's
    advice, a form body's or a list's (a tester followed "separate a list's URLs by ','" and was refused again)."""
    said = f"illegal URL {shortened(entry.text)!r}"
    if "\r" in entry.text:
        return (
            f"{said}: a CR inside the {'argument' if entry.source == ARGUMENT else 'line'} (a file of CR-only line "
            "ends, as old Mac editors write? give it LF or CRLF line ends)"
        )
    if any(c.isspace() for c in entry.text):
        return (
            f"{said}: a space or tab inside it: one URL an entry, a space in a URL written %20 (a comment is a line "
            "of its own, starting with #)"
        )
    return refusal


def checked(entries: Sequence[Entry], directories: bool = False) -> list[Entry]:
    """`entries`, each object once, in its first place; the whole list refused when an entry is not a URL (its
    syntax: the server's own check, done here first) or, with `directories`, not a directory: nothing is sent.
    The first few refused are named with where they were given; the domains are checked by `owned`, the length
    is the server's to check, at its call. An object given twice, in any spelling the server takes for one (a
    host's case, a default port), is left out (said, with a count): it would be warmed and charged twice, or, in
    one call, refuse it."""
    bad: list[str] = []
    seen: dict[str, Entry] = {}
    for entry in entries:
        try:
            target = parse_url(entry.text, _ANY_LENGTH)
            if directories:
                target.as_dir()
        except RequestRefused as exc:
            bad.append(f"{entry}: {_in_a_line(entry, exc.message)}")
            continue
        seen.setdefault(target.cache_key, entry)
    if bad:
        raise click.ClickException(f"{len(bad)} of the entries cannot be sent, nothing was{first_few(bad)}")
    if len(seen) < len(entries):
        left = len(entries) - len(seen)
        click.echo(f"{left} duplicate entr{'y' if left == 1 else 'ies'} left out", err=True)
    return list(seen.values())


def owned(entries: Sequence[Entry], domains: Sequence[str]) -> None:
    """The whole list refused when an entry's domain is not one of the user's `domains` (as the server states
    them): nothing is sent (the server refused the call holding it, mid-run in a long list, by its domain alone).
    The first few are named with where they were given, as `checked` names its."""
    bad = [
        f"{entry}: the domain {host} is not yours"
        for entry in entries
        if not domain_owned(host := parse_url(entry.text, _ANY_LENGTH).host, domains)
    ]
    if bad:
        yours = ", ".join(domains) or "none"
        raise click.ClickException(
            f"{len(bad)} of the entries {'is' if len(bad) == 1 else 'are'} not in your domains ({yours}), nothing "
            f"was sent{first_few(bad)}"
        )


def first_few(bad: Sequence[str]) -> str:
    """The end of a refusal of a whole list: its first SHOWN entries refused, each named where it was given ("250
    of the entries cannot be sent (and 247 more)" read as 497 entries: a tester's)."""
    first = f", the first {SHOWN}" if len(bad) > SHOWN else ""
    return f"{first}: " + "; ".join(bad[:SHOWN])
