"""The classifier's epoch metrics (torchmetrics, logged once per epoch) against values computed by
hand: the batch-size-weighted mean loss, top-1 and top-5 accuracy, reset between epochs."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.training.module import SpikingClassifier

# Six classes; each row is a sample's logits, chosen so that top-1 and top-5 are unambiguous.
LOGITS = [
    [5.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1 hit
    [0.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # label 2: top-1 miss, in the top 5
    [0.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # label 0: the smallest logit, not in the top 5
    [1.0, 1.0, 1.0, 1.0, 1.0, 2.0],  # label 5: top-1 hit
    [3.0, 0.0, 1.0, 1.5, 2.0, 2.5],  # label 1: the smallest logit, not in the top 5
]
LABELS = [0, 2, 0, 5, 1]


def cross_entropy(row: list[float], label: int) -> float:
    """-log softmax(row)[label], by hand."""
    return math.log(sum(math.exp(v) for v in row)) - row[label]


class Echo(nn.Module):
    """A backbone whose per-step logits ``[1, B, K]`` are its input ``[B, K]``."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0 * self.unused).unsqueeze(0)


def loader(rows: list[int], batch_size: int = 3) -> DataLoader:
    x = torch.tensor([LOGITS[i] for i in rows])
    y = torch.tensor([LABELS[i] for i in rows])
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def trainer(**kwargs) -> Trainer:
    return Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", **kwargs,
    )  # fmt: skip


def test_validation_metrics_equal_the_hand_computed_values():
    # batches of 3 and 2: the mean of the batch means would be another number than the mean
    # over the 5 samples, which is what val/loss is
    model = SpikingClassifier(Echo(), num_classes=6)
    metrics = trainer().validate(model, loader(range(5)), verbose=False)[0]
    losses = [cross_entropy(LOGITS[i], LABELS[i]) for i in range(5)]
    assert metrics["val/loss"] == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert (sum(losses[:3]) / 3 + sum(losses[3:]) / 2) / 2 != pytest.approx(sum(losses) / 5)
    assert metrics["val/acc"] == pytest.approx(2 / 5)  # samples 0 and 3
    assert metrics["val/acc_top5"] == pytest.approx(3 / 5)  # and sample 1
    # each validation is its own epoch: the counts start again from zero
    again = trainer().validate(model, loader([1, 2]), verbose=False)[0]
    assert again["val/acc"] == 0.0 and again["val/acc_top5"] == pytest.approx(1 / 2)


def test_training_metrics_per_epoch_and_the_best_validation_accuracy():
    model = SpikingClassifier(Echo(), num_classes=6, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    fit = trainer(max_epochs=2, num_sanity_val_steps=0)
    fit.fit(model, loader(range(5)), loader([0, 1]))
    metrics = fit.callback_metrics
    losses = [cross_entropy(LOGITS[i], LABELS[i]) for i in range(5)]
    # the second epoch's figures alone (reset after the first: the same values again)
    assert metrics["train/loss"] == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert metrics["train/acc"] == pytest.approx(2 / 5)
    assert metrics["train/acc_top5"] == pytest.approx(3 / 5)
    assert metrics["val/acc"] == pytest.approx(1 / 2) == metrics["val/acc_best"]


def test_five_classes_or_fewer_log_no_top5():
    model = SpikingClassifier(Echo(), num_classes=5)
    x = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]])
    data = DataLoader(TensorDataset(x, torch.tensor([0, 1])), batch_size=2)
    metrics = trainer().validate(model, data, verbose=False)[0]
    assert set(metrics) == {"val/loss", "val/acc"} and metrics["val/acc"] == 0.5
