"""Shared fixtures: throwaway PostgreSQL servers for the sweep tests (tests/postgres.py)."""

from __future__ import annotations

import pytest
from postgres import postgres_server


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session; ``postgres.database(name)`` -> URL."""
    yield from postgres_server()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, which it may stop and start again."""
    yield from postgres_server()
