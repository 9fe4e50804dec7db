"""SIGHUP outside the event loop's handler (runtime.run's reload): its default action ends the process. A
`systemctl reload` just after a start (while Python imports, the config is read, the store opens) killed the
service without a word, and one during a stop's last steps made a clean stop exit -1. So a service holds them
from its first step: one that came before the reload handler was installed is a reload at once then (the file
may have changed after it was read), and one after the handler is removed is ignored (the process ends)."""

from __future__ import annotations

import signal
from types import FrameType

_held = False  # a SIGHUP came while held


def _note(signum: int, frame: FrameType | None) -> None:
    global _held
    _held = True


def hold() -> None:
    """From now on a SIGHUP is noted, not fatal, until the event loop takes it (`take` says whether one came)."""
    signal.signal(signal.SIGHUP, _note)


def take() -> bool:
    """Whether a SIGHUP came while held (and forget it)."""
    global _held
    came, _held = _held, False
    return came


def ignore() -> None:
    """From now on a SIGHUP does nothing (the service is stopping: a reload would not be used)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
