"""The package metadata declares what the package imports, with lower bounds a fork can satisfy
with its own torch build; requirements.txt installs all of it for the tests."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_name(line: str) -> str:
    """``"psycopg[binary]>=3.1"`` -> ``"psycopg"`` (normalised as pip does)."""
    name = re.match(r"\s*([A-Za-z0-9_.\-]+)", line).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> dict[str, set[str]]:
    """Distribution name -> the package's modules that import it (outside the standard library)."""
    to_dist = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "lightning_glif").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "lightning_glif":
                    continue
                for dist in to_dist.get(top, [top]):
                    found.setdefault(requirement_name(dist), set()).add(path.name)
    return found


def test_every_imported_package_is_declared():
    declared = {requirement_name(r) for r in PROJECT["dependencies"]}
    for extra in PROJECT["optional-dependencies"].values():
        declared |= {requirement_name(r) for r in extra}
    missing = {d: sorted(m) for d, m in imported_distributions().items() if d not in declared}
    assert not missing, f"imported but not in pyproject.toml: {missing}"


def test_dependencies_are_lower_bounds_and_postgres_is_an_extra():
    pinned = [r for r in PROJECT["dependencies"] if "==" in r]
    assert not pinned, f"exact pins belong in requirements.txt, not the package: {pinned}"
    names = {requirement_name(r) for r in PROJECT["dependencies"]}
    assert "psycopg" not in names
    assert {requirement_name(r) for r in PROJECT["optional-dependencies"]["postgres"]} == {
        "psycopg"
    }


def test_requirements_install_everything_the_package_and_its_tests_need():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    required = {requirement_name(r) for r in lines if r.strip() and not r.startswith("#")}
    runtime = {requirement_name(r) for r in PROJECT["dependencies"]}
    # numpy, pyyaml and sqlalchemy come with torch, pytorch-lightning and optuna.
    assert runtime - required <= {"numpy", "pyyaml", "sqlalchemy"}
    assert {"psycopg", "pytest"} <= required
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines
