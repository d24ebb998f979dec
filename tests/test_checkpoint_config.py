"""A checkpoint's stored config: it never replaces the configured model without a word, the
trained model runs at another T only when asked, and its class paths import nothing outside an
allow-list (the project, torch, Lightning, what the user names)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_glif.cli.main import CONF_DIR, cli_main, run_config_classes
from lightning_glif.neurons import LIF
from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.training.allowlist import (
    UntrustedCheckpointClass,
    check_checkpoint_classes,
    dotted_names,
    lookup,
    stored_hyperparameters,
)
from lightning_glif.training.module import SpikingClassifier

ROOT = Path(__file__).resolve().parents[1]
LIF_YAML = str(CONF_DIR / "neuron" / "lif.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])


def small_fit(root: Path, *extra: str) -> list[str]:
    # `extra` first: a --config after a --key value resets it (jsonargparse)
    return [
        "fit", *extra, "--trainer.default_root_dir", str(root),
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--model.backbone.init_args.channels", "[4, 8]",
        *QUIET,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``last.ckpt`` of a two-step CLI run of the default GLIF convnet and of its LIF twin (T=4):
    the first of 2 epochs (max_steps stops it), so a fit resumes with the same schedule."""
    out = {}
    for name, extra in (("GLIF", []), ("LIF", ["--config", LIF_YAML])):
        root = tmp_path_factory.mktemp(name)
        sys.argv = ["train.py"]
        cli_main(small_fit(root, *extra, "--trainer.max_epochs", "2", "--trainer.max_steps", "2"))
        out[name] = root / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    return out


def neurons(model) -> list[SpikingNeuron]:
    return [m for m in model.modules() if isinstance(m, SpikingNeuron)]


def evaluate(tmp_path: Path, command: str, ckpt: Path, *extra: str):
    return cli_main(
        [command, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path), *QUIET,
         "--trainer.limit_test_batches", "2", "--trainer.limit_predict_batches", "2", *extra]
    )  # fmt: skip


# -- the stored config, read and checked without building anything --------------------------------
STORED = {
    "backbone": {
        "class_path": "lightning_glif.models.convnet.SpikingConvNet",
        "init_args": {"neuron": "mypkg.neurons.Neuron", "channels": [4, 8]},
    },
    "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
    "loss": None,
    "note": "a sentence. not a class path",
}


def test_every_dotted_name_of_a_stored_config_is_checked_against_the_allow_list():
    assert dict(dotted_names(STORED)) == {
        "backbone.class_path": "lightning_glif.models.convnet.SpikingConvNet",
        "backbone.init_args.neuron": "mypkg.neurons.Neuron",  # the shorthand form too
        "optimizer.class_path": "torch.optim.SGD",
    }
    with pytest.raises(UntrustedCheckpointClass) as error:
        check_checkpoint_classes(STORED, "a.ckpt", how_to_allow=" (here is how)")
    message = str(error.value)
    assert "the checkpoint a.ckpt names 'mypkg.neurons.Neuron'" in message
    assert "(at hyper_parameters.backbone.init_args.neuron)" in message
    assert "torch.optim" not in message and message.endswith(" (here is how).")
    check_checkpoint_classes(STORED, "a.ckpt", allowed=["mypkg"])  # its package, named
    check_checkpoint_classes(STORED, "a.ckpt", allowed=["mypkg.neurons.Neuron"])  # the class
    with pytest.raises(UntrustedCheckpointClass):  # a name that only starts the same
        check_checkpoint_classes(STORED, "a.ckpt", allowed=["mypkg.neuron"])


def test_lookup_finds_a_leaf_met_on_the_way_but_not_an_unrecorded_key():
    assert lookup(STORED, "optimizer.init_args.lr") == (True, 0.1)
    assert lookup(STORED, "loss.class_path") == (True, None)  # loss: null where a class is named
    assert lookup(STORED, "backbone.init_args.time_steps") == (False, None)


def test_stored_hyperparameters_are_read_from_a_path_or_a_file_object(tmp_path):
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "hyper_parameters": STORED}, path)
    assert stored_hyperparameters(path) == STORED
    with open(path, "rb") as f:
        assert stored_hyperparameters(f) == STORED
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    assert stored_hyperparameters(tmp_path / "bare.ckpt") == {}


# -- the configured model against the checkpoint's -------------------------------------------------
@pytest.mark.slow
def test_fit_from_a_checkpoint_of_another_model_is_refused(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(small_fit(tmp_path, "--config", LIF_YAML, "--ckpt_path", str(checkpoints["GLIF"]),
                           "--trainer.max_epochs", "1"))  # fmt: skip
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert (
        "the checkpoint holds backbone SpikingConvNet with neuron GLIF, and the configured " in err
    )
    assert "model.backbone.init_args.neuron.class_path = 'lightning_glif.neurons.LIF'" in err
    assert "--model_from_checkpoint true" in err
    assert not (tmp_path / "digits").exists()  # nothing was run


@pytest.mark.slow
def test_model_from_checkpoint_takes_the_checkpoints_model(checkpoints, tmp_path):
    with pytest.warns(UserWarning, match=r"--model_from_checkpoint: .* ignored model\.backbone"):
        cli = cli_main(small_fit(
            tmp_path, "--config", LIF_YAML, "--ckpt_path", str(checkpoints["GLIF"]),
            "--model_from_checkpoint", "true", "--trainer.max_epochs", "2",
        ))  # fmt: skip
    assert {type(n).__name__ for n in neurons(cli.model)} == {"GLIF"}
    assert cli.trainer.global_step == 4  # the checkpoint's 2 steps, and 2 more


@pytest.mark.slow
def test_compile_is_how_a_model_runs_not_another_model(checkpoints, tmp_path):
    """``--model.compile`` differs from the checkpoint's (False) without a mismatch error, and
    the command's value is the one built (the limit 0 keeps the compile itself out of the test:
    it happens at the first batch)."""
    cli = evaluate(tmp_path, "test", checkpoints["GLIF"], "--model.compile", "true",
                   "--trainer.limit_test_batches", "0")  # fmt: skip
    assert cli.model.compile_backbone is True
    assert cli.model.hparams["compile"] is True


@pytest.mark.slow
def test_test_at_another_time_steps_is_an_error_unless_asked(checkpoints, tmp_path, capsys):
    ckpt = checkpoints["LIF"]
    with pytest.raises(SystemExit):
        evaluate(tmp_path, "test", ckpt, "--model.backbone.init_args.time_steps", "6")
    err = capsys.readouterr().err
    assert "model.backbone.init_args.time_steps = 6 (the checkpoint's: 4)" in err
    assert "--eval_time_steps" in err

    # Asked for: the trained weights, run at T=6.
    cli = evaluate(tmp_path, "test", ckpt, "--eval_time_steps", "6")
    assert {n.time_steps for n in neurons(cli.model)} == {6}
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in cli.model.state_dict().items())
    assert "test/acc" in cli.trainer.callback_metrics
    # The same T given both ways agrees.
    cli = evaluate(tmp_path, "test", ckpt, "--eval_time_steps", "6",
                   "--model.backbone.init_args.time_steps", "6")  # fmt: skip
    assert {n.time_steps for n in neurons(cli.model)} == {6}


@pytest.mark.slow
def test_test_without_model_options_rebuilds_the_checkpoints_model(checkpoints, tmp_path):
    cli = evaluate(tmp_path, "test", checkpoints["LIF"])  # default.yaml names GLIF: not given
    assert {type(n).__name__ for n in neurons(cli.model)} == {"LIF"}
    assert {n.time_steps for n in neurons(cli.model)} == {4}


@pytest.mark.slow
def test_eval_time_steps_is_for_evaluating_a_checkpoint(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(small_fit(tmp_path, "--ckpt_path", str(checkpoints["LIF"]),
                           "--eval_time_steps", "6", "--trainer.max_epochs", "1"))  # fmt: skip
    assert "it takes validate, test or predict with --ckpt_path FILE" in capsys.readouterr().err


# -- predictions -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_writes_predictions_into_the_run_directory(checkpoints, tmp_path, capsys):
    ckpt = checkpoints["GLIF"]
    predicted = evaluate(tmp_path, "predict", ckpt, "--trainer.limit_predict_batches", "2")
    run = Path(predicted.trainer.log_dir)
    assert run == tmp_path / "digits" / "version_0"
    saved = torch.load(run / "predictions.pt", weights_only=True)
    assert set(saved) == {"logits", "predicted", "target"}
    assert saved["logits"].shape == (128, 10)  # two batches of the test split (batch size 64)
    assert torch.equal(saved["predicted"], saved["logits"].argmax(1))
    dm = predicted.datamodule
    x, y = dm.datasets["test"].tensors
    assert torch.equal(saved["target"], y[:128])
    with torch.no_grad():
        assert torch.allclose(saved["logits"], predicted.model.eval()(x[:128]), atol=1e-6)
    # --help says where they go.
    for help_ in (["--help"], ["predict", "--help"]):
        with pytest.raises(SystemExit):
            cli_main(help_)
        assert "predictions.pt" in " ".join(capsys.readouterr().out.split())


# -- class paths from a checkpoint: an allow-list, checked before any import -----------------------
MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")  # import-time code: must never run unasked
from lightning_glif.models.convnet import SpikingConvNet


class Net(SpikingConvNet):
    pass
"""


def hostile_checkpoint(tmp_path: Path, source: Path, module: str) -> tuple[Path, Path]:
    """A copy of ``source`` (weights-only clean) whose stored config names ``<module>.Net`` as the
    backbone; the module, in ``tmp_path``, writes a marker file when imported."""
    marker = tmp_path / f"{module}.imported"
    (tmp_path / f"{module}.py").write_text(MODULE.format(marker=str(marker)))
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["hyper_parameters"]["backbone"]["class_path"] = f"{module}.Net"
    path = tmp_path / "hostile.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)  # loads under weights_only: only the config is hostile
    return path, marker


def train_py(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, "--trainer.default_root_dir",
         str(tmp_path / "runs"), *QUIET, "--trainer.limit_test_batches", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_refuses_a_checkpoint_class_outside_the_allow_list(checkpoints, tmp_path):
    path, marker = hostile_checkpoint(tmp_path, checkpoints["GLIF"], "hostile_cli_mod")
    done = train_py(tmp_path, "test", "--ckpt_path", str(path))
    assert done.returncode == 2, done.stderr[-3000:]
    assert not marker.exists()  # its module was never imported
    err = done.stderr
    assert f"the checkpoint {path} names 'hostile_cli_mod.Net'" in err
    assert "at hyper_parameters.backbone.class_path" in err
    assert "--model.backbone <class path>" in err

    # Named by the user, it is theirs: imported, built and tested.
    done = train_py(tmp_path, "test", "--ckpt_path", str(path),
                    "--model.backbone", "hostile_cli_mod.Net")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists()


@pytest.mark.slow
def test_load_from_checkpoint_refuses_a_class_outside_the_allow_list(
    checkpoints, tmp_path, monkeypatch
):
    path, marker = hostile_checkpoint(tmp_path, checkpoints["GLIF"], "hostile_py_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UntrustedCheckpointClass) as error:
        SpikingClassifier.load_from_checkpoint(path)
    assert not marker.exists() and "hostile_py_mod" not in sys.modules
    message = str(error.value)
    assert "'hostile_py_mod.Net' (at hyper_parameters.backbone.class_path)" in message
    assert str(path) in message and "trusted_classes=" in message
    # A binary file object is checked the same way.
    with open(path, "rb") as f, pytest.raises(UntrustedCheckpointClass):
        SpikingClassifier.load_from_checkpoint(f)
    assert not marker.exists()

    model = SpikingClassifier.load_from_checkpoint(path, trusted_classes=["hostile_py_mod"])
    assert type(model.backbone).__module__ == "hostile_py_mod" and marker.exists()
    # The project's own checkpoints need nothing named.
    own = SpikingClassifier.load_from_checkpoint(checkpoints["GLIF"])
    assert {type(n).__name__ for n in neurons(own)} == {"GLIF"}


@pytest.mark.slow
def test_a_shorthand_class_path_is_checked_too(checkpoints, tmp_path, monkeypatch):
    """``neuron: pkg.Neuron`` (a string, not a class_path mapping) is resolved by jsonargparse
    just the same."""
    marker = tmp_path / "hostile_neuron_mod.imported"
    (tmp_path / "hostile_neuron_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
    )
    checkpoint = torch.load(checkpoints["GLIF"], weights_only=True)
    checkpoint["hyper_parameters"]["backbone"]["init_args"]["neuron"] = "hostile_neuron_mod.N"
    torch.save(checkpoint, tmp_path / "neuron.ckpt")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UntrustedCheckpointClass, match=r"at hyper_parameters\.backbone\.init_args"):
        SpikingClassifier.load_from_checkpoint(tmp_path / "neuron.ckpt")
    assert not marker.exists()


@pytest.mark.slow
def test_weights_only_false_warns_naming_the_risk(checkpoints, tmp_path):
    with pytest.warns(UserWarning, match="runs any code the file holds"):
        SpikingClassifier.load_from_checkpoint(checkpoints["GLIF"], weights_only=False)
    with pytest.warns(UserWarning, match="--weights_only false: .* runs any code the file holds"):
        evaluate(tmp_path, "test", checkpoints["GLIF"], "--weights_only", "false")


@pytest.mark.slow
def test_sequence_data_at_another_t_than_the_checkpoints_is_refused_unless_asked(tmp_path, capsys):
    """Row digits: the data sets T; a checkpoint trained at T=8 meets data at T=16."""
    rows = str(CONF_DIR / "experiment" / "row_digits.yaml")
    root = tmp_path / "fit"
    cli_main(
        ["fit", "--config", rows, "--config", LIF_YAML, "--trainer.default_root_dir", str(root),
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0", *QUIET]
    )  # fmt: skip
    ckpt = root / "row_digits" / "version_0" / "checkpoints" / "last.ckpt"

    def test_at_16(where: str, *extra: str):
        return cli_main(
            ["test", "--config", rows, "--data.init_args.time_steps", "16", "--ckpt_path",
             str(ckpt), "--trainer.default_root_dir", str(tmp_path / where),
             "--trainer.limit_test_batches", "2", *QUIET, *extra]
        )  # fmt: skip

    with pytest.raises(SystemExit) as exit_:
        test_at_16("refused")
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert (
        "the checkpoint was trained on RowDigitsDataModule (num_classes 10, time_steps 8, "
        "in_features 8), but this command's data, RowDigitsDataModule, has num_classes 10, "
        "time_steps 16, in_features 8. To evaluate it at T = 16, add --eval_time_steps 16."
    ) in " ".join(err.split())
    assert not (tmp_path / "refused").exists()

    cli = test_at_16("asked", "--eval_time_steps", "16")
    assert cli.model.backbone.time_steps == 16
    assert cli.datamodule.time_steps == 16
    assert 0.0 <= float(cli.trainer.callback_metrics["test/acc"]) <= 1.0
    # The same weights as trained at T=8 (LIF's parameters do not depend on T).
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in cli.model.state_dict().items():
        if key in trained:
            assert torch.equal(value, trained[key]), key


# -- a run's own checkpoints trust the classes of its config.yaml --------------------------------
class OwnLIF(LIF):
    """A neuron of the user's own, in a module outside the allow-list's packages."""


def test_the_classes_of_a_runs_config_are_trusted_only_for_its_checkpoints_folder(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "model:\n"
        "  backbone:\n"
        "    class_path: mypkg.Net\n"
        "    init_args: {neuron: mypkg.neurons.N, channels: [4, 8]}\n"
        "data: other.Data\n"  # the checkpoint stores the model only
    )
    assert run_config_classes(tmp_path / "checkpoints" / "last.ckpt") == [
        "mypkg.Net",
        "mypkg.neurons.N",
    ]
    assert run_config_classes(tmp_path / "last.ckpt") == []  # not in the run's checkpoints/
    (tmp_path / "config.yaml").write_text("- a list, not a run's config\n")
    assert run_config_classes(tmp_path / "checkpoints" / "last.ckpt") == []


@pytest.mark.slow
def test_a_runs_own_checkpoint_is_read_back_without_naming_its_classes(
    checkpoints, tmp_path, capsys
):
    """After fit with a neuron of the user's, test --ckpt_path <that run's last.ckpt> needs no
    option naming the class again."""
    neuron = f"{OwnLIF.__module__}.OwnLIF"
    cli_main(small_fit(tmp_path / "fit", "--model.backbone.init_args.neuron", neuron,
                       "--trainer.max_epochs", "1"))  # fmt: skip
    last = tmp_path / "fit" / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    cli = evaluate(tmp_path / "test", "test", last)
    assert {type(n) for n in neurons(cli.model)} == {OwnLIF}
    assert "test/acc" in cli.trainer.callback_metrics

    # The same file outside its run, or inside a run whose config names another neuron: refused.
    elsewhere = tmp_path / "elsewhere" / "last.ckpt"
    elsewhere.parent.mkdir()
    shutil.copyfile(last, elsewhere)
    glif_run = shutil.copytree(checkpoints["GLIF"].parents[1], tmp_path / "glif_run")
    in_another_run = glif_run / "checkpoints" / "own.ckpt"
    shutil.copyfile(last, in_another_run)
    for path in (elsewhere, in_another_run):
        with pytest.raises(SystemExit) as exit_:
            evaluate(tmp_path / "refused", "test", path)
        assert exit_.value.code == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"the checkpoint {path} names '{neuron}'" in err
        assert "may also name the classes of that run's config.yaml" in err
    assert not (tmp_path / "refused").exists()
