"""What the CLI does with commands that cannot run as asked: a resume (``--ckpt_path last``) gets
every check a checkpoint file gets and continues only a run of the configured logger, another
``max_epochs`` or other data is refused before anything runs, a refused command writes nothing,
a run without a logger works, a logger's ``save_dir`` is honoured, a bad value is one message
(exit status 2, no traceback), and ``--print_config`` prints what the run saves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_runs import CHILD_PYTHONPATH, ROOT, fit_small, small_args
from pytorch_lightning import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.callbacks.predictions import PredictionWriter
from lightning_glif.cli.main import CONF_DIR, cli_main
from lightning_glif.models.convnet import SpikingConvNet
from lightning_glif.neurons import GLIF
from lightning_glif.training.module import SpikingClassifier


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])


def files(directory: Path) -> dict[Path, bytes]:
    """Every file under ``directory`` with its bytes: what a refused command must leave as is."""
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(args: list[str], capsys, untouched: Path) -> str:
    """Run ``args``: it must stop with exit status 2, one message and no traceback, and leave
    every file under ``untouched`` as it was; return the message, its whitespace joined."""
    before = files(untouched)
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert files(untouched) == before
    return " ".join(err.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The default config made small, trained 2 epochs of 2 steps (a finished run)."""
    return fit_small(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def run_root(trained, tmp_path) -> Path:
    """A copy of the trained run's root, ``<root>/digits/version_0``."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def resume(root: Path, *extra: str) -> list[str]:
    return ["fit", *small_args(root, epochs=2, batches=2), "--ckpt_path", "last", *extra]


# -- resuming: the run asked for, with every check ------------------------------------------------
@pytest.mark.slow
def test_ckpt_path_last_gets_the_model_check_of_a_file(run_root, capsys):
    """Not a silent resume with hard gates and another gate learning rate."""
    message = refused(
        resume(run_root, "--model.backbone.init_args.neuron.init_args.alpha", "hard",
               "--model.gate_lr_factor", "1"),
        capsys, run_root,
    )  # fmt: skip
    last = run_root / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"--ckpt_path {last}: the checkpoint holds backbone SpikingConvNet" in message
    assert "model.backbone.init_args.neuron.init_args.alpha = 'hard' (the checkpoint's: " in message
    assert "model.gate_lr_factor = 1.0 (the checkpoint's: 1000.0)" in message
    assert "--model_from_checkpoint true" in message


@pytest.mark.slow
def test_ckpt_path_last_resumes_only_a_run_of_the_configured_logger(run_root, capsys):
    """A CSVLogger resume never continues a TensorBoard run (nor writes its CSV log there)."""
    csv = ["--trainer.logger", "pytorch_lightning.loggers.CSVLogger"]
    message = refused(resume(run_root, *csv), capsys, run_root)
    assert f"no run to resume in {run_root / 'digits'}" in message
    assert "version_0 was written with another logger (TensorBoardLogger)" in message
    # A CSV run beside it is the one a CSV resume finds.
    cli_main(["fit", *small_args(run_root, epochs=2, batches=2), *csv])
    assert (run_root / "digits" / "version_1" / "metrics.csv").is_file()
    resumed = cli_main(resume(run_root, *csv))
    assert resumed.trainer.log_dir == str(run_root / "digits" / "version_1")
    assert resumed.trainer.global_step == 4  # restored, the run was finished: nothing to train


@pytest.mark.slow
def test_a_resume_with_another_max_epochs_is_refused_naming_the_choices(run_root, capsys):
    """Not the 2-epoch cosine schedule restored as it was, epoch 2 training at lr 0."""
    message = refused(resume(run_root, "--trainer.max_epochs", "3"), capsys, run_root)
    assert "with --trainer.max_epochs 3: the checkpoint's cosine learning-rate schedule runs " in (
        message
    )
    assert "over 2 epochs and is restored as it is (not stretched)" in message
    assert "Resume with --trainer.max_epochs 2, or train 3 epochs in a new run" in message


@pytest.mark.slow
def test_a_checkpoint_whose_weights_do_not_fit_is_refused_before_the_run_writes(run_root, capsys):
    """Weights of another shape under the same stored config (a file edited by hand): refused
    before the trainer runs (was: after the logger and the resumed config were written)."""
    last = run_root / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    key = "backbone.classifier.weight"
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key][:, :3]
    torch.save(checkpoint, last)
    message = refused(resume(run_root), capsys, run_root)
    assert "the checkpoint does not fit this model" in message
    assert f"{key} {tuple(checkpoint['state_dict'][key].shape)}" in message


# -- data of another kind than the checkpoint's ---------------------------------------------------
@pytest.mark.slow
def test_a_checkpoint_on_other_data_is_refused_naming_both(tmp_path, capsys):
    """A row-digits checkpoint tested on the static digits: was a failure at the first batch,
    advising to set in_features."""
    row = str(CONF_DIR / "experiment" / "row_digits.yaml")
    cli_main(["fit", "--config", row, "--trainer.default_root_dir", str(tmp_path),
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
              "--model.backbone.init_args.hidden", "[8]"])  # fmt: skip
    run = tmp_path / "row_digits" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    message = refused(["test", "--ckpt_path", str(last), "--trainer.default_root_dir",
                       str(tmp_path)], capsys, tmp_path)  # fmt: skip
    assert (
        f"--ckpt_path {last}: the checkpoint was trained on RowDigitsDataModule (num_classes 10, "
        "time_steps 8, in_features 8), but this command's data, DigitsDataModule, has "
        "num_classes 10, in_channels 1, image_size 8. Pass the data the checkpoint was trained "
        f"on (its run's config: --config {run / 'config.yaml'})."
    ) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["row_digits"]  # no new run


# -- no logger -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_without_a_logger_works_and_is_its_root_directory(tmp_path, capsys):
    """LearningRateMonitor does not stop the run, nothing is left in the root, and the next run
    there is not refused with advice about a logger version."""
    args = ["fit", *small_args(tmp_path, epochs=1, batches=2), "--trainer.logger", "false"]
    with pytest.warns(UserWarning, match="no logger .*LearningRateMonitor is left out"):
        cli_main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.yaml"]
    message = refused(args, capsys, tmp_path)
    assert f"{tmp_path} already holds a run (its config.yaml exists)" in message
    assert "pass another --trainer.default_root_dir" in message and "version" not in message
    assert "continue that run with `fit --ckpt_path last --trainer.logger false`" in message
    resumed = cli_main([*args, "--ckpt_path", "last"])
    assert resumed.trainer.ckpt_path == str(tmp_path / "checkpoints" / "last.ckpt")


# -- the loggers' save_dir -------------------------------------------------------------------------
def test_a_given_save_dir_is_kept_and_one_left_out_is_the_root(tmp_path, capsys):
    def built(*args: str):
        return cli_main(["--trainer.default_root_dir", str(tmp_path / "root"), *args], run=False)

    assert built().trainer.logger.save_dir == str(tmp_path / "root")
    given = built("--trainer.logger.init_args.save_dir", str(tmp_path / "logs"))
    assert given.trainer.logger.save_dir == str(tmp_path / "logs")  # was: replaced by the root
    config = tmp_path / "two.yaml"

    def loggers(*save_dirs: str | None) -> list[str]:
        names = ("CSVLogger", "TensorBoardLogger")
        config.write_text(yaml.safe_dump({"trainer": {"logger": [
            {"class_path": f"pytorch_lightning.loggers.{name}",
             "init_args": {"name": "n", **({"save_dir": d} if d else {})}}
            for name, d in zip(names, save_dirs, strict=True)
        ]}}))  # fmt: skip
        return [logger.save_dir for logger in built("--config", str(config)).trainer.loggers]

    # Loggers in a list write one run directory: one save_dir for all.
    assert loggers("a", None) == ["a", "a"]
    assert loggers(None, None) == [str(tmp_path / "root")] * 2
    with pytest.raises(SystemExit):
        loggers("a", "b")
    assert "its loggers write one run directory, but their save_dir differ (a, b)" in (
        capsys.readouterr().err
    )


# -- bad values: one message, exit status 2, nothing written ---------------------------------------
BAD_VALUES = {
    "batch_size 0": (
        ["--data.init_args.batch_size", "0"],
        "error: DigitsDataModule: batch_size must be >= 1, got 0.",
    ),
    "time_steps 0": (["--model.backbone.init_args.time_steps", "0"], "time_steps >= 1, got"),
    "val_fraction 1.5": (
        ["--data.init_args.val_fraction", "1.5"],
        "DigitsDataModule: val_fraction and test_fraction must be in (0, 1)",
    ),
    "gate_lr_factor -5": (
        ["--model.gate_lr_factor", "-5"],
        "SpikingClassifier: gate_lr_factor must be >= 0 (0: freezes the gates), got -5.0.",
    ),
    "ckpt_path lst": (["--ckpt_path", "lst"], "--ckpt_path lst: the file does not exist."),
    "ckpt_path best": (
        ["--ckpt_path", "best"],
        "--ckpt_path best: Lightning's 'best' is the best checkpoint of a fit run earlier in the "
        "same Python process; a command has none. Pass the checkpoint file",
    ),
    "a missing checkpoint": (
        ["--ckpt_path", "{tmp}/gone.ckpt"],
        "--ckpt_path {tmp}/gone.ckpt: the file does not exist.",
    ),
    "a root under a file": (
        ["--trainer.default_root_dir", "{tmp}/a_file/runs"],
        "--trainer.default_root_dir {tmp}/a_file/runs: {tmp}/a_file is a file, not a directory.",
    ),
    "a config that is no YAML": (
        ["--config", "{tmp}/broken.yaml"],
        "error: --config {tmp}/broken.yaml is not valid YAML: while parsing a flow sequence",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_is_one_message_and_writes_nothing(case, tmp_path, capsys):
    args, says = BAD_VALUES[case]
    (tmp_path / "a_file").write_text("")
    (tmp_path / "broken.yaml").write_text("model:\n  gate_lr_factor: [1\n")
    args = [a.format(tmp=tmp_path) for a in args]
    root = (
        []
        if "--trainer.default_root_dir" in args
        else ["--trainer.default_root_dir", str(tmp_path)]
    )
    message = refused(["fit", *root, *args], capsys, tmp_path)
    assert says.format(tmp=tmp_path) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "broken.yaml"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_an_unwritable_root_is_one_message(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        message = refused(["fit", "--trainer.default_root_dir", str(tmp_path / "runs")], capsys,
                          tmp_path)  # fmt: skip
    finally:
        tmp_path.chmod(0o700)
    assert f"{tmp_path} is not writable by this user" in message


@pytest.mark.slow
def test_the_command_line_shows_the_traceback_only_when_asked(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--data.init_args.batch_size", "0",
               "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": CHILD_PYTHONPATH}
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == (
        "error: DigitsDataModule: batch_size must be >= 1, got 0."
    )
    debug = subprocess.run(command, env={**env, "JSONARGPARSE_DEBUG": "1"}, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_negative_learning_rate_factor_is_refused_in_python():
    backbone = SpikingConvNet(GLIF, time_steps=2, channels=(4, 8))
    for name in ("gate_lr_factor", "neuron_lr_factor", "neuron_weight_decay"):
        with pytest.raises(ValueError, match=rf"SpikingClassifier: {name} must be >= 0"):
            SpikingClassifier(backbone, **{name: -1.0})
    with pytest.raises(ValueError, match="gate_lr_factor must be >= 0"):
        SpikingClassifier(backbone, gate_lr_factor=float("nan"))
    assert SpikingClassifier(backbone, gate_lr_factor=0.0).gate_lr_factor == 0.0  # frozen gates


# -- predict says where its file went --------------------------------------------------------------
class Mean(nn.Module):
    def forward(self, x):
        return x.expand(2, *x.shape)  # [T=2, B, 3]


def test_predict_says_where_it_wrote(tmp_path, caplog):
    data = DataLoader(TensorDataset(torch.rand(4, 3), torch.arange(4) % 3), batch_size=2)
    trainer = Trainer(default_root_dir=tmp_path, logger=False, callbacks=[PredictionWriter()],
                      enable_progress_bar=False, accelerator="cpu")  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.predict(SpikingClassifier(Mean(), num_classes=3), data)
    assert f"predict: 4 predictions written to {tmp_path / 'predictions.pt'}" in caplog.text


# -- --print_config shows what runs ----------------------------------------------------------------
@pytest.mark.slow
def test_print_config_prints_what_the_run_saves(tmp_path, monkeypatch, capsys):
    """The CIFAR10-DVS experiment on fabricated recordings: jsonargparse printed the digits'
    batch 64 and val_fraction 0.15 (carried over) and T=4, in_channels 1, image_size 8 (before
    the data's values are linked), while the run built 32, 0.1, 16, 2, 48."""
    import tonic
    from test_neuromorphic import fake_read_aedat4, make_cifar10dvs

    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", fake_read_aedat4)
    make_cifar10dvs(tmp_path / "data", per_class=24)  # 39 training recordings: one batch of 32
    args = ["fit", "--config", str(CONF_DIR / "experiment" / "cifar10dvs_widenet7b_t16.yaml"),
            "--data.init_args.data_dir", str(tmp_path / "data"),
            "--data.init_args.num_workers", "0", "--trainer.precision", "32-true",
            "--trainer.accelerator", "cpu", "--trainer.max_steps", "0",
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        cli_main([*args, "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    data, backbone = config["data"]["init_args"], config["model"]["backbone"]["init_args"]
    assert (data["batch_size"], data["val_fraction"], data["time_steps"]) == (32, 0.1, 16)
    assert (backbone["time_steps"], backbone["in_channels"], backbone["image_size"]) == (16, 2, 48)
    cli = cli_main(args)
    assert (Path(cli.trainer.log_dir) / "config.yaml").read_text() == printed
