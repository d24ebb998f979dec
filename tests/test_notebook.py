"""notebooks/inspect_run.ipynb runs to the end on a tiny run's event files."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_callbacks import tiny_fit

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
