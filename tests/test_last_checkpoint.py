"""``last.ckpt`` from conf/default.yaml: a stock ModelCheckpoint (no monitor, every epoch) beside
the best-``val/acc`` one. What it holds at the end of every epoch, what ``ckpt_path="last"``
resumes from, what Lightning 2.6 keeps and says about the pair, the documented
``train_time_interval`` entry for epochs that take hours, and the ``last.ckpt`` that Ctrl-C and
SIGTERM write (InterruptCheckpoint, in this process; tests/test_reliability.py resumes such a
run in child processes)."""

from __future__ import annotations

import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.callbacks.interrupt import InterruptCheckpoint
from lightning_glif.cli.main import CONF_DIR, cli_main

SCORES = [0.5, 0.25, 0.75, 0.5, 0.5]  # val/acc per epoch: a new best at epochs 0 and 2


class Scored(LightningModule):
    """Two steps an epoch; logs ``val/acc`` from SCORES."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", SCORES[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LastOnDisk(Callback):
    """``(epoch, global_step)`` of last.ckpt at the start of every training epoch but the first
    and at the end of training (Lightning runs the checkpoints' hooks after all others', so
    their end-of-epoch saves come after this callback's ``on_train_epoch_end``), with the
    trainer's global step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[tuple[int, int, int]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.on_train_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        saved = torch.load(self.path, weights_only=True)
        self.seen.append((saved["epoch"], saved["global_step"], trainer.global_step))


def shipped_checkpoints(dirpath: Path) -> list[ModelCheckpoint]:
    """The ModelCheckpoint entries of conf/default.yaml, in their order, writing to ``dirpath``."""
    entries = yaml.safe_load((CONF_DIR / "default.yaml").read_text())["trainer"]["callbacks"]
    return [
        ModelCheckpoint(dirpath=dirpath, **entry.get("init_args", {}))
        for entry in entries
        if entry["class_path"] == "pytorch_lightning.callbacks.ModelCheckpoint"
    ]


def fit(dirpath: Path, epochs: int, *extra: Callback, ckpt_path: str | None = None):
    """Fit Scored for ``epochs`` with the shipped checkpoints; the trainer, the two checkpoint
    callbacks and the warnings raised."""
    best, last = shipped_checkpoints(dirpath)
    trainer = Trainer(
        max_epochs=epochs, callbacks=[best, last, *extra], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1,
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Scored(), data, data, ckpt_path=ckpt_path)
    return trainer, best, last, [str(w.message) for w in caught]


def about_checkpoints(messages: list[str]) -> list[str]:
    return [m for m in messages if "checkpoint" in m.lower()]


def test_last_ckpt_holds_the_end_of_every_epoch(tmp_path):
    on_disk = LastOnDisk(tmp_path / "last.ckpt")
    trainer, best, last, messages = fit(tmp_path, 4, on_disk)
    assert on_disk.seen == [(0, 2, 2), (1, 4, 4), (2, 6, 6), (3, 8, 8)]
    assert about_checkpoints(messages) == []  # the pair raises no warning
    # The best one stays the trainer's checkpoint_callback (what ckpt_path="best" loads); the
    # last one's "best" is its one file. save_last is off in both (last_model_path empty).
    assert trainer.checkpoint_callback is best and best.monitor == "val/acc"
    assert best.best_model_path == str(tmp_path / "epoch002-val_acc0.7500.ckpt")
    assert best.best_model_score == 0.75
    assert last.monitor is None and last.best_model_path == str(tmp_path / "last.ckpt")
    assert best.last_model_path == last.last_model_path == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch002-val_acc0.7500.ckpt",
        "last.ckpt",
    ]
    final = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    model = trainer.lightning_module
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


def test_ckpt_path_last_resumes_in_the_same_directory(tmp_path):
    fit(tmp_path, 2)
    trainer, best, last, messages = fit(tmp_path, 4, ckpt_path="last")
    assert trainer.ckpt_path == str(tmp_path / "last.ckpt")
    assert trainer.global_step == 8
    # Both callbacks' states came back (their state keys differ): the best so far is kept.
    assert best.best_model_path == str(tmp_path / "epoch002-val_acc0.7500.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch002-val_acc0.7500.ckpt",
        "last.ckpt",
    ]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8
    # What Lightning says on a resume in place: one line per ModelCheckpoint, nothing else.
    assert (
        about_checkpoints(messages)
        == [f"Checkpoint directory {tmp_path} exists and is not empty."] * 2
    )


class LastEveryStep(Callback):
    """At the start of every training batch (the checkpoints' batch hook runs after all others'
    ``on_train_batch_end``): last.ckpt's global step, or None, and the trainer's."""

    def __init__(self) -> None:
        self.seen: list[tuple[int | None, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        path = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        saved = torch.load(path, weights_only=True)["global_step"] if path.is_file() else None
        self.seen.append((saved, trainer.global_step))


@pytest.mark.slow
def test_a_train_time_interval_entry_also_writes_inside_epochs(tmp_path, monkeypatch):
    """The entry conf/default.yaml documents for long epochs, appended from a config file with an
    interval of 1 us: last.ckpt is then written after every batch, not only every epoch."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = tmp_path / "interval.yaml"
    config.write_text(
        "trainer:\n  callbacks+:\n"
        "    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
        "      init_args: {filename: last, train_time_interval: '0:00:00.000001', "
        "enable_version_counter: false}\n"
    )
    every_step = LastEveryStep()
    cli_main(
        ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
         "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
         "--model.backbone.init_args.channels", "[4, 8]"],
        callbacks=[every_step],
    )  # fmt: skip
    assert every_step.seen == [(None, 0)] + [(step, step) for step in range(1, 6)]


class Signal(Callback):
    """Sends this process ``signum`` at the start of training batch 1 of epoch 0, or, with
    ``in_validation``, at the first of the two validation batches of epoch 0."""

    def __init__(self, signum: int, in_validation: bool = False) -> None:
        self.signum, self.in_validation = signum, in_validation
        self.validated: list[int] = []  # validation batches run after the sanity check

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.in_validation and trainer.current_epoch == 0 and batch_idx == 1:
            signal.raise_signal(self.signum)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_):
        if trainer.sanity_checking:
            return
        self.validated.append(batch_idx)
        if self.in_validation and trainer.current_epoch == 0 and batch_idx == 0:
            signal.raise_signal(self.signum)


def interrupted_fit(dirpath: Path, stop: Signal) -> tuple[int, dict, list[str]]:
    """Fit Scored for 3 epochs with the shipped checkpoints and InterruptCheckpoint until
    ``stop`` stops it: the exit status, the saved last.ckpt and the checkpoint files."""
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    best, last = shipped_checkpoints(dirpath)
    trainer = Trainer(
        max_epochs=3, callbacks=[best, last, InterruptCheckpoint(), stop], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    with pytest.raises(SystemExit) as exit_:
        trainer.fit(Scored(), data, data)
    # the process's own handlers are back
    assert signal.getsignal(signal.SIGINT) == sigint
    assert signal.getsignal(signal.SIGTERM) == sigterm
    saved = torch.load(dirpath / "last.ckpt", weights_only=True)
    return exit_.value.code, saved, sorted(p.name for p in dirpath.iterdir())


def test_ctrl_c_finishes_the_batch_and_writes_last_ckpt(tmp_path):
    code, saved, files = interrupted_fit(tmp_path, Signal(signal.SIGINT))
    assert code == 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C
    # batch 1 ran to its end (2 steps an epoch): the state of global step 2, mid-epoch 0
    assert (saved["epoch"], saved["global_step"]) == (0, 2)
    assert files == ["last.ckpt"]  # epoch 0 never validated: no best checkpoint


def test_sigterm_during_validation_waits_for_its_end_and_the_checkpoints(tmp_path):
    stop = Signal(signal.SIGTERM, in_validation=True)
    code, saved, files = interrupted_fit(tmp_path, stop)
    assert code == 143  # 128 + SIGTERM
    assert stop.validated == [0, 1]  # the validation of epoch 0 ran both batches, then stopped
    # the state after epoch 0 (2 steps): a resume starts epoch 1, as the uninterrupted run
    assert (saved["epoch"], saved["global_step"]) == (1, 2)
    # epoch 0's val/acc reached the best checkpoint (Lightning alone stops mid-validation)
    assert files == ["epoch000-val_acc0.5000.ckpt", "last.ckpt"]
