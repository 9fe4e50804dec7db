"""The command group; the commands register themselves from server.py, admin.py and tools.py."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click
from rich.console import Console

PREFIX = "EDGEWARM"  # of every option's environment variable


class Terminated(BaseException):
    """SIGTERM, taken as Ctrl-C is: the command's cleanup runs and it says so (commands that run a service
    handle the signal themselves)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


_SERVICES = ("serve", "api", "worker")  # they log to stderr: they run with standard output closed
STDOUT_CLOSED = 141  # the exit status of a command whose output's reader went away (128 + SIGPIPE, as shells see)


def stdout_closed() -> None:
    """Standard output's reader went away (`edgewarm tasks | head -1`): what is left to print goes nowhere (else
    Python's exit tried once more and said "Exception ignored … BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


_OUTPUT_WRITES = (click.utils.echo.__code__, Console._write_buffer.__code__)  # where a command's output is written


def _writing_output(exc: OSError) -> bool:
    """Whether `exc` was raised writing the command's output (click's or rich's write), not reading a file."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code in _OUTPUT_WRITES


class _Commands(click.Group):
    """Ctrl-C ends any command with status 130 and SIGTERM with 143, as shells expect, saying "interrupted"
    (click said "Aborted!" and exited 1, which a script reads as a task that failed; SIGTERM said nothing).
    A command that can say more (where a sending stopped) catches them first. Output whose reader went away
    ends the command quietly, status STDOUT_CLOSED (a sending says what it had made, `send_in_calls`); output that
    cannot be written (`> /dev/full`, a full disk) ends it with status 1, saying so (a traceback before)."""

    def invoke(self, ctx: click.Context) -> object:
        before = signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, Terminated) as stop:
            click.echo("interrupted", err=True)
            raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else 143) from None
        except BrokenPipeError:
            stdout_closed()
            raise SystemExit(STDOUT_CLOSED) from None
        finally:
            signal.signal(signal.SIGTERM, before)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """The command, refused when standard output is closed (`>&-`) and it is not a service (which logs to
        stderr): its output would go nowhere (a traceback, or exit 0 and nothing said: a re-tester's)."""
        name, command, rest = super().resolve_command(ctx, args)
        if sys.stdout is None and name not in _SERVICES:
            raise click.ClickException(
                "standard output is closed (>&-): what the command says would go nowhere; nothing was done"
            )
        return name, command, rest

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:  # here, not in invoke(): --help's and --version's output too
            if not _writing_output(exc):
                raise
            stdout_closed()  # what is left in its buffer goes nowhere (else Python's exit says "Exception ignored")
            click.echo(f"Error: the output could not be written ({exc.strerror})", err=True)
            raise SystemExit(1) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": PREFIX})
@click.version_option(package_name="edgewarm")
def main() -> None:
    """edgewarm: CDN cache prewarm and refresh, wire-compatible with JD Cloud CDN."""


from . import admin, server, tools  # noqa: E402,F401  (register the commands)


def _envvar_name(prefix: str, option: click.Option) -> str:
    """PREFIX_<OPTION> from the option's long flag (`--wait` gives ..._WAIT, `--date` ..._DATE), not from its
    Python name (`wait_`, `day`), which is what click's auto_envvar_prefix would use."""
    flags = [opt for opt in option.opts if opt.startswith("--")]
    name = flags[0][2:] if flags else str(option.name)
    return f"{prefix}_{name.replace('-', '_').upper()}"


def _show_envvars(group: click.Group, prefix: str = PREFIX) -> None:
    """Every option's --help names its environment variable (EDGEWARM_<COMMAND>_<OPTION> unless set)."""
    for name, command in group.commands.items():
        command_prefix = f"{prefix}_{name.replace('-', '_').upper()}"
        for param in command.params:
            if isinstance(param, click.Option):
                param.show_envvar = True
                if param.envvar is None:
                    param.envvar = _envvar_name(command_prefix, param)
        if isinstance(command, click.Group):
            _show_envvars(command, command_prefix)


_show_envvars(main)
