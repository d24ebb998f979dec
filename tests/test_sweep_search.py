"""ablate.py search: the space is checked (its entries, and its options against train.py's)
before any trial runs; TPE over the shipped space on the embedded temporal task, two tiny trials
in real child processes, writes a best.yaml that train.py reads; a search whose every trial
fails says so and writes none."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from ablate import main
from lightning_glif.sweep.grid import CONF
from lightning_glif.sweep.search import read_space, suggest, write_report
from tests.cli_runs import ONE_EPOCH

SPACE = CONF / "search" / "gate_lr.yaml"
TINY = [*ONE_EPOCH, "--model.backbone.init_args.hidden", "[16, 16]"]


def test_the_shipped_space():
    space = read_space(SPACE)
    assert [Path(c).name for c in space["config"]] == ["delayed_row_digits.yaml"]
    assert (space["monitor"], space["mode"], space["seed"]) == ("val/acc", "max", 0)
    trial = optuna.create_study().ask()
    values = suggest(trial, space["params"])
    assert 1.0 <= values["model.gate_lr_factor"] <= 1000.0
    assert trial.distributions["model.gate_lr_factor"].log


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model.x": 3}, "model.x: TypeError: .* A range is {low: 0.1"),
        ({"model.x": {"low": 1}}, "model.x: TypeError"),
        ({"model.x": {"low": 0, "high": 1, "log": True}}, "model.x: ValueError: .*log"),
        ({"model.x": {"low": 0, "high": 1, "lg": True}}, r"unknown keys \['lg'\]"),
        ({"model.x": {"choices": []}}, r"unknown keys \['choices'\]"),
    ],
)
def test_a_bad_space_names_the_entry(tmp_path, params, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    with pytest.raises(ValueError, match=message):
        read_space(path)
    path.write_text(yaml.safe_dump({"params": {"model.x": {"low": 1, "high": 2}}, "mod": "max"}))
    with pytest.raises(ValueError, match=r"a space has .*; it has \['config', 'mod', "):
        read_space(path)


def test_the_best_options_come_back_as_they_were_written(tmp_path):
    """A list choice is a trial parameter as its YAML text, and a list again in best.yaml."""
    hidden = "model.backbone.init_args.hidden"
    params = {
        hidden: {"choices": [[8, 8], [16, 16]]},
        "model.gate_lr_factor": {"low": 1, "high": 9},
    }
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    values = suggest(trial, params)
    assert values[hidden] in ([8, 8], [16, 16]) and trial.params[hidden] in ("[8, 8]", "[16, 16]")
    trial.set_user_attr("options", values)  # as the objective records them
    trial.set_user_attr("result", {"test_acc": 0.5})
    trial.set_user_attr("run_dir", "runs/x")
    study.tell(trial, 0.7)
    attrs = {
        "space": {"params": params, "config": ["base.yaml"], "monitor": "val/acc", "mode": "max"}
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    assert write_report(study, tmp_path)
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best == values and best[hidden] == json.loads(trial.params[hidden])
    assert "| 0 | 0.7 |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_a_misspelt_option_stops_the_search_before_any_trial(tmp_path, capsys):
    """A misspelt option stops the search before any trial runs, and no best.yaml is claimed."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"model.gate_lr_factr": {"low": 1, "high": 10}}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--space", str(space), "--trials", "2", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.py refuses a trial's options: error: " in err
    assert "did you mean 'model.gate_lr_factor'" in err
    assert not (tmp_path / "o" / "study.db").exists()


@pytest.mark.slow
def test_a_search_writes_the_best_options_and_a_rerun_runs_nothing(tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["search", "--space", str(SPACE), "--trials", "2", "--workers", "2", "--out", str(out)]
    assert main([*argv, "--", *TINY]) == 0
    study = optuna.load_study(study_name="search-gate_lr", storage=f"sqlite:///{out}/study.db")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert set(t.params) == {"model.gate_lr_factor", "model.neuron_lr_factor"}
        result = t.user_attrs["result"]
        assert t.value == result["selected_score"] == pytest.approx(result["val_acc_best"])
        args = yaml.safe_load((out / t.user_attrs["run_dir"] / "run.json").read_text())["args"]
        assert (
            float(args[args.index("--model.gate_lr_factor") + 1])
            == t.params["model.gate_lr_factor"]
        )
    best = study.best_trial
    assert yaml.safe_load((out / "best.yaml").read_text()) == best.params
    assert f"trial #{best.number}:" in (out / "best.yaml").read_text().splitlines()[0]
    assert "The best trial's options" in (out / "results.md").read_text()
    capsys.readouterr()
    assert main([*argv, "--", *TINY]) == 0  # the budget is spent: nothing runs again
    assert len(study.get_trials()) == 2 and "[ablate] run" not in capsys.readouterr().out
    with pytest.raises(SystemExit):  # other fit arguments: another search, refused
        main([*argv, "--", *TINY, "--trainer.max_epochs", "2"])
    assert "holds another search" in capsys.readouterr().err
    from lightning_glif.cli.main import cli_main  # the overlay is a config train.py reads

    base = str(CONF / "experiment" / "delayed_row_digits.yaml")
    cli = cli_main(
        [
            "--config",
            base,
            "--config",
            str(out / "best.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path / "check"),
        ],
        run=False,
    )
    assert cli.model.gate_lr_factor == best.params["model.gate_lr_factor"]
    assert cli.model.neuron_lr_factor == best.params["model.neuron_lr_factor"]


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_says_so(tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["search", "--space", str(SPACE), "--trials", "1", "--workers", "1", "--out", str(out)]
    # no validation: no checkpoint can be selected on val/acc, the trial fails
    assert main([*argv, "--", *TINY[:4], "--trainer.limit_val_batches", "0"]) == 1
    md = (out / "results.md").read_text()
    assert "0 of 1 trials complete" in md and "No trial succeeded, so there is no best.yaml" in md
    assert "failed trial #0" in md and not (out / "best.yaml").exists()
