"""Shared test options and fixtures.

``pytest`` runs the quick tests (every module is covered); ``pytest --all`` adds the tests marked
``slow``: end-to-end CLI runs, child processes killed for real, the PostgreSQL sweeps (what
``.ci/run`` runs). An explicit ``-m`` expression selects as usual.
"""

from __future__ import annotations

import pytest
from postgres import postgres_server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        help="also run the tests marked slow (end-to-end runs, kill tests, PostgreSQL sweeps)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--all") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.stash[SLOW_LEFT_OUT] = len(slow)


SLOW_LEFT_OUT = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    left_out = config.stash.get(SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow tests not run: `pytest --all` runs them too.")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session; ``postgres.database(name)`` -> URL."""
    yield from postgres_server()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, which it may stop and start again."""
    yield from postgres_server()
