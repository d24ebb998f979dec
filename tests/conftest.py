"""Shared fixtures: a throwaway PostgreSQL server for the sweep tests (tests/postgres.py)."""

from __future__ import annotations

import pytest
from postgres import postgres_server


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session; ``postgres.database(name)`` -> URL."""
    yield from postgres_server()
