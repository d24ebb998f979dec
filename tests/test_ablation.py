"""ablate.py: a tiny grid writes the three reports, reruns resume, pinned gates stay pinned."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from ablate import main
from lightning_glif.ablation import load_variants, read_scalars
from lightning_glif.cli import CONF_DIR

TINY = [
    "--",
    "--trainer.max_epochs", "2",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
]  # fmt: skip
GRID = {
    "variants": {
        "pinned": {
            "class_path": "lightning_glif.neurons.GLIF",
            "init_args": {"alpha": 0, "beta": 1, "gamma": 1},
        },
        "lif": {"class_path": "lightning_glif.neurons.LIF", "init_args": {"decay": 0.25}},
        "broken": {"class_path": "lightning_glif.neurons.GLIF", "init_args": {"alpha": 2}},
    }
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Run 'pinned' alone (as if the grid was killed after it), leave a half-written 'lif' run,
    then rerun the whole two-variant grid; returns (out, grid file, log lines of the rerun,
    mtime of pinned's result.json after the first run)."""
    tmp = tmp_path_factory.mktemp("ablation")
    grid_file = tmp / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(GRID))
    out = tmp / "out"
    args = ["--grid", str(grid_file), "--out", str(out)]
    assert main([*args, "--variants", "pinned", *TINY]) == 0
    first = (out / "pinned" / "seed0" / "result.json").stat().st_mtime_ns
    interrupted = out / "lif" / "seed0"
    interrupted.mkdir(parents=True)
    (interrupted / "stale.txt").write_text("killed mid-run")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*args, "--variants", "pinned,lif", *TINY]) == 0
    logged = stdout.getvalue().splitlines()
    return out, grid_file, logged, first


@pytest.mark.slow
def test_tiny_grid_writes_reports(grid):
    out, _, _, _ = grid
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [
        ("pinned", "0", "ok"),
        ("lif", "0", "ok"),
    ]
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and 0.0 <= float(r["val_acc_best"]) <= 1.0
        assert float(r["firing_rate"]) >= 0.0 and float(r["synops_ac"]) >= 0.0
    assert rows[1]["alpha_mean"] == ""  # LIF has no gates
    table = (out / "results.md").read_text()
    assert "| pinned | 1 |" in table and "| lif | 1 |" in table
    assert (out / "results.png").stat().st_size > 0
    for v in ("pinned", "lif"):
        run = out / v / "seed0"
        assert {"variant.yaml", "run.json", "train.log", "result.json"} <= {
            p.name for p in run.iterdir()
        }
        assert list(run.rglob("events.out.tfevents*")) and list(run.rglob("*.ckpt"))
        # The selection is explicit: recorded in run.json, done by the child's own checkpoint.
        spec = json.loads((run / "run.json").read_text())
        assert (spec["monitor"], spec["mode"]) == ("val/acc", "max")
        result = json.loads((run / "result.json").read_text())
        assert result["selected_on"] == "val/acc" and result["best_ckpt"].startswith("selected/")
        assert [p.name for p in (run / "selected").iterdir()] == [Path(result["best_ckpt"]).name]
        # selected on val/acc (max): its score is the run's best validation accuracy
        assert result["selected_score"] == pytest.approx(result["val_acc_best"])
        # the firing rate is the child's test-stage monitor's, the one logged at the test
        scalars = read_scalars(run)
        assert [v for _, v in scalars["spikes/test/rate"]] == [
            pytest.approx(result["firing_rate"], rel=1e-6)
        ]


@pytest.mark.slow
def test_rerun_skips_finished_and_redoes_interrupted(grid):
    out, _, logged, first = grid
    assert (out / "pinned" / "seed0" / "result.json").stat().st_mtime_ns == first
    assert any(line.startswith("[ablate] skip pinned seed 0") for line in logged)
    assert [line for line in logged if line.startswith("[ablate] run ")] == [
        f"[ablate] run lif seed 0 -> {out / 'lif' / 'seed0'}"
    ]
    assert not (out / "lif" / "seed0" / "stale.txt").exists()


@pytest.mark.slow
def test_pinned_gates_stay_pinned(grid):
    out, _, _, _ = grid
    scalars = read_scalars(out / "pinned" / "seed0")
    for gate, pinned in {"alpha": 0.0, "beta": 1.0, "gamma": 1.0}.items():
        tags = [t for t in scalars if t.startswith("gates/") and t.endswith(f"/{gate}_mean")]
        assert len(tags) == 2  # both hidden layers of the MLP
        for tag in tags:
            values = [v for _, v in scalars[tag]]
            assert len(values) >= 2 and all(v == pinned for v in values), (tag, values)
    result = json.loads((out / "pinned" / "seed0" / "result.json").read_text())
    assert (result["alpha_mean"], result["beta_mean"], result["gamma_mean"]) == (0.0, 1.0, 1.0)


@pytest.mark.slow
def test_failed_variant_is_reported_and_does_not_stop_the_grid(grid):
    out, grid_file, _, _ = grid
    code = main(["--grid", str(grid_file), "--out", str(out), "--variants", "broken,pinned", *TINY])
    assert code == 1
    rows = {r["variant"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["broken"]["status"] == "failed" and "alpha" in rows["broken"]["error"]
    assert rows["pinned"]["status"] == "ok"
    assert "broken seed 0" in (out / "results.md").read_text()
    assert not (out / "broken" / "seed0" / "result.json").exists()


def test_default_grid_has_the_issue_variants():
    variants = load_variants(CONF_DIR / "ablation" / "default.yaml")
    corners = {f"a{a}b{b}g{g}" for a in (0, 1) for b in (0, 1) for g in (0, 1)}
    expected = {"glif_soft", "glif_hard", "glif_static", "gliff", "alpha_only", "beta_only"}
    expected |= {"gamma_only", "glif_layer", "glif_frozen_membrane", "lif", "plif"} | corners
    assert set(variants) == expected
    for name, neuron in variants.items():  # every variant builds its neuron
        module, cls = neuron["class_path"].rsplit(".", 1)
        layer = getattr(importlib.import_module(module), cls)(4, 2, **neuron.get("init_args", {}))
        spikes = layer(torch.randn(2, 3, 4))
        assert spikes.shape == (2, 3, 4), name
    with pytest.raises(ValueError, match="unknown variants"):
        load_variants(CONF_DIR / "ablation" / "default.yaml", ["nope"])
