"""The command group; the commands register themselves from server.py and tools.py."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EDGEWARM"})
@click.version_option(package_name="edgewarm")
def main() -> None:
    """edgewarm: CDN cache prewarm and refresh, wire-compatible with JD Cloud CDN."""


from . import server, tools  # noqa: E402,F401  (register the commands)


def _show_envvars(group: click.Group) -> None:
    """Every option's --help names its environment variable (EDGEWARM_<COMMAND>_<OPTION> unless set)."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option):
                param.show_envvar = True
        if isinstance(command, click.Group):
            _show_envvars(command)


_show_envvars(main)
