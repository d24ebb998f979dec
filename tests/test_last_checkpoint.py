"""LastCheckpoint: the epochs that make last.ckpt current (first, kept, last, within the budget),
by a hard link to the checkpoint written at the same step or by a write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.callbacks import LastCheckpoint
from lightning_glif.io import atomic_link

SCORES = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]  # a new best at epochs 0 and 5


class Scored(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("score", SCORES[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Recording(LastCheckpoint):
    """The epochs whose last.ckpt was made current (linked or written)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.epochs = []

    def _save_checkpoint(self, trainer, filepath):
        self.epochs.append(trainer.current_epoch)
        super()._save_checkpoint(trainer, filepath)


class FakeClock:
    """0.05 s per reading (a write costs 0.05 s) plus 1 s at each epoch's start."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 0.05
        return self.now


class Epochs(Callback):
    def __init__(self, clock):
        self.clock = clock

    def on_train_epoch_start(self, trainer, pl_module):
        self.clock.now += 1.0


def fit(tmp_path, last, epochs=8):
    clock = FakeClock()
    last.timer.clock = clock
    best = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", filename="best")
    trainer = Trainer(
        max_epochs=epochs, callbacks=[Epochs(clock), best, last], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    trainer.fit(Scored(), data, data)
    return trainer


def test_last_ckpt_is_current_when_kept_first_written_last_and_within_the_budget(tmp_path):
    """By hand (0.05 s per clock reading, 1 s at each epoch's start; budget 0.02): epoch 0, a new
    best: linked to best.ckpt (no write, so no cost measured); 1: the first write (0.05 s, ends
    at 2.15 s); 2 to 4: the first paced write needs (1 + 1 reserved) x 0.05 / 0.02 = 5 s since
    then, and 5.30 - 2.15 s is less; 5: a new best, linked; 6: 1.05 s since the link; 7: the
    last epoch, written. Never older than the best."""
    last = Recording(dirpath=tmp_path, budget=0.02)
    fit(tmp_path, last)
    assert last.epochs == [0, 1, 5, 7]
    assert last.linked == [0, 5]
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (7, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


class SameFileAtLinks(Callback):
    """After every epoch: whether last.ckpt is the very file best.ckpt is, and its epoch."""

    def __init__(self, tmp_path):
        self.tmp_path, self.same = tmp_path, []

    def on_train_epoch_start(self, trainer, pl_module):  # checkpoints are the last to run
        self._look(trainer)

    def on_train_end(self, trainer, pl_module):
        self._look(trainer)

    def _look(self, trainer):
        last, best = self.tmp_path / "last.ckpt", self.tmp_path / "best.ckpt"
        if last.exists():
            epoch = torch.load(last, weights_only=True)["epoch"]
            self.same.append((epoch, os.path.samefile(last, best)))


def test_a_linked_last_ckpt_is_the_best_file_and_a_later_write_leaves_the_best_alone(tmp_path):
    last = Recording(dirpath=tmp_path, budget=0.02)
    look = SameFileAtLinks(tmp_path)
    clock = FakeClock()
    last.timer.clock = clock
    best = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", filename="best")
    trainer = Trainer(
        max_epochs=8, callbacks=[Epochs(clock), look, best, last], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    model = Scored()
    trainer.fit(model, data, data)
    # Seen at the start of epochs 1..7 and at the end: linked at 0 and 5, written at 1 and 7.
    assert look.same == [(0, True), (1, False), (1, False), (1, False), (1, False), (5, True),
                         (5, True), (7, False)]  # fmt: skip
    best_saved = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert (best_saved["epoch"], best_saved["global_step"]) == (5, 12)
    last_saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(last_saved["state_dict"][name], value)


def test_a_link_across_filesystems_falls_back_to_nothing_done(tmp_path):
    """atomic_link from a tmpfs (/dev/shm) to the disk: the OS refuses (EXDEV); False, target
    untouched (LastCheckpoint then writes)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary directory")
    with tempfile.NamedTemporaryFile(dir=shm) as source:
        source.write(b"new")
        source.flush()
        target = tmp_path / "last.ckpt"
        target.write_bytes(b"old")
        assert atomic_link(source.name, target) is False
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left
        same = tmp_path / "copy"
        same.write_bytes(b"kept")
        assert atomic_link(same, target) is True
        assert target.read_bytes() == b"kept" and os.path.samefile(same, target)


def test_no_budget_writes_every_epoch(tmp_path):
    last = Recording(dirpath=tmp_path, budget=None)
    fit(tmp_path, last, epochs=4)
    assert last.epochs == [0, 1, 2, 3]


def test_a_stop_requested_mid_run_writes_its_epoch(tmp_path):
    class StopAt2(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                trainer.should_stop = True

    last = Recording(dirpath=tmp_path, budget=0.02)
    clock = FakeClock()
    last.timer.clock = clock
    trainer = Trainer(
        max_epochs=8, callbacks=[Epochs(clock), StopAt2(), last], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)
    trainer.fit(Scored(), data, data)
    assert last.epochs == [0, 2]
