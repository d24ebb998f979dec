"""LastCheckpoint: the epochs that write last.ckpt (first, kept, last, within the budget)."""

from __future__ import annotations

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.callbacks import LastCheckpoint

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


def test_last_ckpt_is_written_first_when_kept_last_and_within_the_budget(tmp_path):
    """By hand: epoch 0 (the first; also kept), 3 (3.15 s since the write that ended at 1.10 s:
    x 0.02 >= its 0.05 s cost), 5 (a new best), 7 (the last). Never older than the best."""
    last = Recording(dirpath=tmp_path, budget=0.02)
    fit(tmp_path, last)
    assert last.epochs == [0, 3, 5, 7]
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (7, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


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
