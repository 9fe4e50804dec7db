"""Server commands: serve, api, worker, db upgrade, check-config, demo."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from collections.abc import Coroutine
from typing import Any, NoReturn

import click

from ..config import Config, ca_file_cautions, file_cautions, load_config
from ..errors import ConfigError, EdgewarmError
from ..logs import counted, setup_logging
from ..tuning import tune_runtime
from .main import main

CONFIG_HELP = "the TOML config file"


def _setup_logging(config: Config) -> None:
    setup_logging(config.log_level, config.log_format)


def load_or_fail(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:  # a wrong key's error names the key; reading errors name the file themselves
        raise click.ClickException(f"config {path}: {exc}" if exc.key else str(exc)) from None
    except EdgewarmError as exc:
        raise click.ClickException(f"config {path}: {exc}") from None


def said(exc: EdgewarmError, config_path: str) -> str:
    """An error's words for the operator: the upgrade command they may give names the config file used."""
    from ..store import UPGRADE_COMMAND

    return str(exc).replace(UPGRADE_COMMAND, f"edgewarm db upgrade --config {shlex.quote(config_path)}")


def _run(coro: Coroutine[Any, Any, bool], config: Config, config_path: str) -> None:
    """Run a service to its stop; exit 1 when the stop was not clean (its last log line said what it left), or
    when it could not start or run on (`_failed`)."""
    tune_runtime()
    try:
        clean = asyncio.run(coro)
    except EdgewarmError as exc:
        _failed(said(exc, config_path), config)
    if not clean:
        raise SystemExit(1)


def _failed(message: str, config: Config) -> NoReturn:
    """Why a service could not start or run on, exit 1: in a JSON log, a JSON line at error, as the log says the
    rest (click's `Error: …` was the one line a log shipper could not read: a deployer's); else click's line."""
    if config.log_format == "json":
        logging.getLogger("edgewarm").error("%s", message)
        raise SystemExit(1)
    raise click.ClickException(message)


config_option = click.option(
    "--config",
    "config_path",
    envvar="EDGEWARM_CONFIG",
    show_envvar=True,
    required=True,
    type=click.Path(),
    help=CONFIG_HELP,
)


def _serve(config_path: str, *, api: bool, engine: bool) -> None:
    from ..runtime import run

    config = load_or_fail(config_path)
    _setup_logging(config)
    _run(run(config, api=api, engine=engine, config_path=config_path), config, config_path)


@main.command()
@config_option
def serve(config_path: str) -> None:
    """Run the HTTP API and the warming engine in one process."""
    _serve(config_path, api=True, engine=True)


@main.command()
@config_option
def api(config_path: str) -> None:
    """Run the HTTP API only (several may share one PostgreSQL store)."""
    _serve(config_path, api=True, engine=False)


@main.command()
@config_option
def worker(config_path: str) -> None:
    """Run the warming engine only (several may share one PostgreSQL store)."""
    _serve(config_path, api=False, engine=True)


@main.command("check-config")
@click.argument("path", type=click.Path(), required=False)
@click.option(
    "--config",
    "config_paths",
    envvar="EDGEWARM_CONFIG",
    show_envvar=True,
    type=click.Path(),
    multiple=True,
    help=CONFIG_HELP,
)
@click.option("--strict", is_flag=True, help="exit 1 when there are warnings too (for CI and deploy hooks)")
@click.pass_context
def check_config(ctx: click.Context, path: str | None, config_paths: tuple[str, ...], strict: bool) -> None:
    """Validate a config file (PATH, or --config); say exactly which key is wrong, and warn of settings that
    keep a feature from working (exit 0 with warnings, 1 with --strict)."""
    # Each file given once: of two, one was checked and the other ignored, saying nothing (a deploy hook passed).
    # EDGEWARM_CONFIG's (split at ':' as a list) is one file, which PATH overrides.
    if ctx.get_parameter_source("config_paths") is click.core.ParameterSource.COMMANDLINE:
        given = [*config_paths, *([path] if path else [])]
        if len(set(given)) > 1:
            raise click.UsageError(f"give one config file: {', '.join(given)} were given")
        config_path: str | None = config_paths[0]
    else:
        config_path = os.pathsep.join(config_paths) or None
    chosen = path or config_path
    if not chosen:
        raise click.UsageError("give the config file: check-config PATH, --config PATH or EDGEWARM_CONFIG")
    config = load_or_fail(chosen)
    from ..store import database_check, store_cautions

    refused, database_cautions = database_check(config.store)
    warnings = [
        *file_cautions(chosen),
        *config.cautions(),
        *ca_file_cautions(),
        *([f"the store: {said(refused, chosen)}"] if refused else []),
        *store_cautions(config.store),
        *database_cautions,
    ]
    counts = (
        f"{counted(len(config.users), 'user')}, {counted(len(config.nodes), 'node')}, "
        f"{counted(len(config.shields()), 'shield')}, store {config.store.split(':')[0]}"
    )
    if not (strict and warnings):  # (with --strict, warnings fail it: no "OK" for a script reading the output)
        click.echo(f"{chosen}: OK ({counts})")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if strict and warnings:
        raise click.ClickException(f"{chosen}: {counted(len(warnings), 'warning')} (--strict)")


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@config_option
def upgrade(config_path: str) -> None:
    """Create or migrate the store's schema."""
    from ..store import SCHEMA_VERSION, Opening, open_store, redacted

    config = load_or_fail(config_path)

    async def go() -> int:
        async with open_store(config.store, opening=Opening.AS_IS) as store:
            return await store.upgrade()

    try:
        found = asyncio.run(go())
    except EdgewarmError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(upgrade_done(found, SCHEMA_VERSION, redacted(config.store)))


def upgrade_done(found: int, now: int, store: str) -> str:
    """What `db upgrade` did to `store`, from the schema version it found: a new store is named (a store mistyped
    was made without a word of where: a tester's in-place upgrade)."""
    if found == 0:
        return f"created the schema (version {now}) in {store}: a new, empty store (check `store` if one was meant)"
    if found < now:
        return f"upgraded the schema from version {found} to {now}"
    return f"the schema is at version {now} already: nothing to do"


@main.command()
@click.option("--urls", default=200, show_default=True, type=click.IntRange(min=1), help="how many URLs to warm")
@click.option("--keep", is_flag=True, help="keep the fleet and the service running until Ctrl-C")
def demo(urls: int, keep: bool) -> None:
    """Start local nginx caches and edgewarm on SQLite, warm a task and show it."""
    from ..demo import run_demo

    if not run_demo(urls=urls, keep=keep):
        raise SystemExit(1)
