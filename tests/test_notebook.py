"""notebooks/inspect_run.ipynb runs to the end on a tiny run's event files, and finds a run given
by a path relative to the folder Jupyter was started in."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from monitoring import tiny_fit
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_run.ipynb"


@pytest.mark.slow
def test_inspect_run_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # not pytest's arguments, for LightningCLI
    cli, run_dir = tiny_fit(tmp_path)
    monkeypatch.setenv("LIGHTNING_GLIF_RUN_DIR", str(run_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "GLIF layers: ['backbone.features.0.2', 'backbone.features.1.2']" in text
    assert "energy/val/uJ" in text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # gate evolution, distributions per layer, firing rates


def execute_first_cells(n: int) -> str:
    """Run the notebook's first ``n`` cells as Jupyter does (working directory: the notebook's
    folder, the environment of this process); their printed text."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells = notebook.cells[:n]
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )  # fmt: skip
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


@pytest.mark.slow
def test_a_run_dir_relative_to_where_jupyter_started(tmp_path, monkeypatch):
    """`LIGHTNING_GLIF_RUN_DIR=runs/digits/version_0 jupyter lab notebooks/inspect_run.ipynb`:
    the shell's $PWD is the folder the user launched from; the kernel runs in notebooks/."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    run_dir = Path(tiny_fit(tmp_path)[1])
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("LIGHTNING_GLIF_RUN_DIR", str(run_dir.relative_to(tmp_path)))
    text = execute_first_cells(3)
    assert f"{run_dir.resolve()}: " in text
    assert "GLIF layers: ['backbone.features.0.2', 'backbone.features.1.2']" in text

    monkeypatch.setenv("LIGHTNING_GLIF_RUN_DIR", "runs/no_such_run/version_9")
    with pytest.raises(CellExecutionError) as error:
        execute_first_cells(2)
    assert error.value.ename == "FileNotFoundError"
    message = error.value.evalue
    assert message.startswith("no run directory 'runs/no_such_run/version_9': looked at ")
    assert str(tmp_path / "runs/no_such_run/version_9") in message
