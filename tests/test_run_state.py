"""RunState: the RNG states a checkpoint carries (restored only when a fit resumes) and the check,
before any weight is copied, that a checkpoint fits the model it is loaded into."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_glif.callbacks import RunState
from lightning_glif.callbacks.run_state import describe_checkpoint
from lightning_glif.cli.main import cli_main
from lightning_glif.data.digits import DigitsDataModule
from lightning_glif.models.convnet import SpikingConvNet
from lightning_glif.neurons import GLIF, LIF
from lightning_glif.training.module import SpikingClassifier

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}
SHARED = "backbone.features.0.0.module.weight"  # the first conv: in GLIF and LIF convnets alike


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when it gets args while sys.argv holds pytest's own arguments.
    monkeypatch.setattr(sys, "argv", ["train.py"])


def small(neuron=GLIF, channels=(4, 8)) -> SpikingClassifier:
    return SpikingClassifier(SpikingConvNet(neuron, time_steps=2, channels=channels))


def draws() -> tuple:
    """One number from each RNG RunState restores."""
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()


@pytest.fixture(scope="module")
def glif_run(tmp_path_factory) -> Path:
    """One epoch of 3 steps of a small GLIF convnet with RunState; its ``last.ckpt``."""
    root = tmp_path_factory.mktemp("glif")
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        callbacks=[RunState(), ModelCheckpoint(dirpath=root, filename="last")],
        **QUIET,
    )
    trainer.fit(small(), datamodule=DigitsDataModule(batch_size=16))
    return root / "last.ckpt"


# -- the RNG states --------------------------------------------------------------------------------
def test_the_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    state = RunState()
    saved = state.state_dict()
    expected = draws()
    torch.save({"callbacks": {state.state_key: saved}}, tmp_path / "states.ckpt")
    loaded = torch.load(tmp_path / "states.ckpt", weights_only=True)["callbacks"]["RunState"]

    resuming = RunState()
    resuming.setup(Trainer(logger=False, **QUIET), small(), stage="fit")
    resuming.load_state_dict(loaded)
    assert draws() == expected  # torch, numpy and Python draw again what they drew

    # Loading weights to evaluate leaves the RNGs where they are: no rewind to the saved draws.
    evaluating = RunState()
    evaluating.setup(Trainer(logger=False, **QUIET), small(), stage="test")
    evaluating.load_state_dict(loaded)
    assert draws() != expected


class RecordRNG(Callback):
    """Test-only: the RNG states when the fit starts (after the checkpoint's restore, before the
    loops draw anything)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.states = (torch.get_rng_state(), np.random.get_state(), random.getstate())


def test_a_resumed_fit_starts_from_the_checkpoints_rng_states(glif_run):
    checkpoint = torch.load(glif_run, weights_only=True)
    saved = checkpoint["callbacks"]["RunState"]
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # elsewhere entirely
    record = RecordRNG()
    trainer = Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[RunState(), record],
        **QUIET,
    )
    trainer.fit(small(), datamodule=DigitsDataModule(batch_size=16), ckpt_path=glif_run)
    torch_state, (name, keys, *rest), python_state = record.states
    assert torch.equal(torch_state, saved["torch"])
    assert name == saved["numpy"][0] and rest == saved["numpy"][2:]
    assert np.array_equal(keys, saved["numpy"][1].numpy())
    assert python_state == (saved["python"][0], tuple(saved["python"][1]), saved["python"][2])


# -- the model's description and the fit check ----------------------------------------------------
def test_a_checkpoint_names_its_model(glif_run):
    checkpoint = torch.load(glif_run, weights_only=True)
    assert checkpoint["model_description"] == "backbone SpikingConvNet with neuron GLIF"
    assert describe_checkpoint(checkpoint) == "backbone SpikingConvNet with neuron GLIF"
    # Without the line (a weights-only save), the CLI's saved config names the model.
    config = {"backbone": {"class_path": "a.b.Net", "init_args": {"neuron": "a.n.LIF"}}}
    assert describe_checkpoint({"hyper_parameters": config}) == "backbone Net with neuron LIF"


@pytest.mark.parametrize("fn", ["fit", "validate", "test", "predict"])
def test_a_mismatch_is_raised_before_any_weight_is_loaded(glif_run, fn):
    lif = small(LIF)
    before = {k: v.clone() for k, v in lif.state_dict().items()}
    saved = torch.load(glif_run, weights_only=True)["state_dict"]
    # The first conv is in both models with one shape: torch alone would copy it and then fail.
    assert saved[SHARED].shape == before[SHARED].shape
    assert not torch.equal(saved[SHARED], before[SHARED])
    trainer = Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[RunState()], **QUIET
    )
    with pytest.raises(RuntimeError) as error:
        getattr(trainer, fn)(lif, datamodule=DigitsDataModule(batch_size=16), ckpt_path=glif_run)
    message = str(error.value)
    assert message.startswith("the checkpoint does not fit this model: it was made with backbone")
    assert "made with backbone SpikingConvNet with neuron GLIF" in message
    assert "this model is backbone SpikingConvNet with neuron LIF" in message
    assert "weights in the checkpoint that this model lacks (e.g. backbone." in message
    assert len(message) < 1200  # a summary, not a wall of keys
    after = lif.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not one tensor copied
    # The check is gone with the failed run: a load by hand gets torch's own error.
    with pytest.raises(RuntimeError, match=r"Error\(s\) in loading state_dict"):
        lif.load_state_dict(saved)


def test_the_check_follows_strict_loading(glif_run):
    # strict_loading=False: a checkpoint with extra keys loads what matches ...
    lif = small(LIF)
    lif.strict_loading = False
    trainer = Trainer(logger=False, enable_checkpointing=False, callbacks=[RunState()], **QUIET)
    trainer.test(lif, datamodule=DigitsDataModule(), ckpt_path=glif_run, verbose=False)
    saved = torch.load(glif_run, weights_only=True)["state_dict"]
    assert torch.equal(lif.state_dict()[SHARED], saved[SHARED])
    # ... but weights of another shape are refused whatever strict says.
    wider = small(GLIF, channels=(4, 16))
    wider.strict_loading = False
    with pytest.raises(RuntimeError, match=r"\d+ weights of another shape, checkpoint vs model"):
        trainer.test(wider, datamodule=DigitsDataModule(), ckpt_path=glif_run)


def test_a_matching_checkpoint_loads_and_user_loads_are_not_checked(glif_run):
    model = small()
    trainer = Trainer(logger=False, enable_checkpointing=False, callbacks=[RunState()], **QUIET)
    trainer.validate(model, datamodule=DigitsDataModule(), ckpt_path=glif_run, verbose=False)
    saved = torch.load(glif_run, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # Without ckpt_path the run loads nothing, and its teardown removes the check: a load by
    # hand afterwards is torch's alone.
    trainer.validate(model, datamodule=DigitsDataModule(), verbose=False)
    with pytest.raises(RuntimeError, match=r"Error\(s\) in loading state_dict"):
        model.load_state_dict(small(LIF).state_dict())


@pytest.mark.slow
def test_cli_test_with_a_checkpoint_of_another_neuron_is_a_clear_mismatch(
    glif_run, tmp_path, capsys
):
    """``test --ckpt_path`` of a GLIF checkpoint into a LIF model stops once the model is built,
    before the trainer runs (RunState's check, which the CLI adds to every run, would stop it
    only after the logger wrote its first file), naming both (a checkpoint built in Python holds
    no backbone, so the CLI builds the one the options say)."""
    args = [
        "test",
        "--ckpt_path", str(glif_run),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--model.backbone.init_args.neuron", "lightning_glif.neurons.LIF",
        "--model.backbone.init_args.time_steps", "2",
        "--model.backbone.init_args.channels", "[4, 8]",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as error:
        cli_main(args)
    assert error.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "made with backbone SpikingConvNet with neuron GLIF" in message
    assert "this model is backbone SpikingConvNet with neuron LIF" in message
    assert list(tmp_path.iterdir()) == []  # nothing written
