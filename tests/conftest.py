"""Fixtures shared by every suite: a throwaway PostgreSQL server for the tests that need one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edgewarm.testing import DEFAULT_HOST, self_signed
from edgewarm.testing.postgres import PostgresCluster, PostgresUnavailable


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio only (asyncpg and the store target it)."""
    return "asyncio"


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for DEFAULT_HOST (www.example.test) and its key, by openssl: (cert, key)."""
    return self_signed(tmp_path_factory.mktemp("tls"), DEFAULT_HOST)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the session (skipped without the binaries, except under CI where it fails)."""
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test PostgreSQL: {exc}")
        pytest.skip(str(exc))
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """`postgresql://USER@127.0.0.1:PORT/postgres` of the session's throwaway server."""
    return postgres_cluster.url()


@pytest.fixture
async def postgres_db_url(postgres_cluster: PostgresCluster) -> AsyncIterator[str]:
    """The URL of a fresh, empty database for one test, dropped after it."""
    url = await postgres_cluster.create_database()
    yield url
    await postgres_cluster.drop_database(url.rsplit("/", 1)[1])
