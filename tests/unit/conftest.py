"""Shared fixtures for the unit suite: no sockets, no servers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio only (the store and the app target it)."""
    return "asyncio"
