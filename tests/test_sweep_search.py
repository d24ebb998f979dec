"""ablate.py search: TPE over the shipped search space (conf/search/gate_lr.yaml) on the
embedded temporal task, two tiny trials in real child processes, two local workers; the best
trial's options come back as a YAML overlay that train.py reads."""

from __future__ import annotations

import csv
import sys

import optuna
import pytest
import yaml

from ablate import main
from lightning_glif.cli import CONF_DIR

SPACE = CONF_DIR / "search" / "gate_lr.yaml"
TINY = [
    "--",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--model.backbone.init_args.hidden", "[16, 16]",
]  # fmt: skip


@pytest.mark.slow
def test_search_two_trials_writes_the_best_overlay(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ablate.py"])  # cli_main below: no pytest arguments
    out = tmp_path / "search"
    code = main(["search", "--space", str(SPACE), "--trials", "2", "--workers", "2",
                 "--out", str(out), *TINY])  # fmt: skip
    assert code == 0
    study = optuna.load_study(study_name="search-gate_lr", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    for t in trials:
        assert set(t.params) == {"model.gate_lr_factor", "model.neuron_lr_factor"}
        assert 1.0 <= t.params["model.gate_lr_factor"] <= 1000.0
        assert 0.1 <= t.params["model.neuron_lr_factor"] <= 10.0
        result = t.user_attrs["result"]
        assert t.value == result["selected_score"] == pytest.approx(result["val_acc_best"])
        # the trial's run trained with the sampled factors (its run.json's arguments)
        args = yaml.safe_load((out / f"trial{t.number:04d}" / "run.json").read_text())["args"]
        i = args.index("--model.gate_lr_factor")
        assert float(args[i + 1]) == t.params["model.gate_lr_factor"]
    best = study.best_trial
    overlay = yaml.safe_load((out / "best.yaml").read_text())
    factors = {k.split(".")[1]: v for k, v in best.params.items()}
    assert overlay == {"model": factors}
    assert f"# best trial #{best.number} " in (out / "best.yaml").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1] and {r["status"] for r in rows} == {"complete"}
    assert "Best trial's overlay" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0
    # a rerun of the same search: the budget is spent, nothing runs again
    assert main(["search", "--space", str(SPACE), "--trials", "2", "--out", str(out), *TINY]) == 0
    assert len(study.get_trials()) == 2
    # the overlay is a config train.py accepts: the model gets the best factors
    from lightning_glif.cli import cli_main

    base = str(CONF_DIR / "experiment" / "delayed_row_digits.yaml")
    cli = cli_main(["--config", base, "--config", str(out / "best.yaml"),
                    "--trainer.default_root_dir", str(tmp_path / "check")], run=False)  # fmt: skip
    assert cli.model.gate_lr_factor == best.params["model.gate_lr_factor"]
    assert cli.model.neuron_lr_factor == best.params["model.neuron_lr_factor"]
