"""A running `edgewarm serve` on SQLite in front of a real nginx fleet, shared by the acceptance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewarm.client import Client
from edgewarm.testing import Lab
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), edges=2, shield=True) as lab:
        yield lab


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, lab: Lab) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("service")
    port = free_port()
    extra = (
        "[engine]\nmax_attempts = 2\nbackoff_base = 0.05\nbackoff_max = 0.1\n"
        '[webhooks]\nallowed_hosts = ["127.0.0.1"]\nmax_attempts = 3\nbackoff_base = 0.1\n'
    )
    config = write_config(
        folder / "edgewarm.toml",
        store=f"sqlite:///{folder}/edgewarm.db",
        nodes_toml=lab.nodes_toml(),
        port=port,
        extra=extra,
    )
    with ServiceProcess(config, port=port) as service:
        yield service


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[Client]:
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        yield client


def credentials_env(service: ServiceProcess, tmp: Path) -> dict[str, str]:
    """The environment a CLI user would set (and an empty client config, so that the user's own is not read)."""
    return server_env(service.url, tmp)


def server_env(server: str, tmp: Path) -> dict[str, str]:
    """credentials_env for the server at `server` (a proxy in front, say, or a fake)."""
    empty = tmp / "empty-client.toml"
    empty.touch()
    return {
        "EDGEWARM_SERVER": server,
        "EDGEWARM_USERNAME": DEMO_USER,
        "EDGEWARM_SECRET": DEMO_SECRET,
        "EDGEWARM_CLIENT_CONFIG": str(empty),
    }
