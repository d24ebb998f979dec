"""EpochStats against torchmetrics' MulticlassAccuracy and a hand-weighted mean of the losses."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_glif.metrics import EpochStats


def test_epoch_stats_equal_torchmetrics_accuracies_and_the_weighted_mean_loss():
    g = torch.Generator().manual_seed(0)
    stats = EpochStats(10)
    top1 = MulticlassAccuracy(10, top_k=1, average="micro")
    top5 = MulticlassAccuracy(10, top_k=5, average="micro")
    losses, sizes = [], []
    for n in (7, 16, 3):  # unequal batches
        logits = torch.randn(n, 10, generator=g)
        logits[0] = 0.0  # a tie over all classes: argmax and topk decide it as torchmetrics does
        y = torch.randint(0, 10, (n,), generator=g)
        loss = torch.rand((), generator=g)
        stats.update(loss, logits, y)
        top1.update(logits, y)
        top5.update(logits, y)
        losses.append(loss.item())
        sizes.append(n)
    out = stats.compute()
    assert out["acc"].item() == pytest.approx(top1.compute().item(), abs=1e-7)
    assert out["acc_top5"].item() == pytest.approx(top5.compute().item(), abs=1e-7)
    mean = sum(v * n for v, n in zip(losses, sizes, strict=True)) / sum(sizes)
    assert out["loss"].item() == pytest.approx(mean, rel=1e-6)
    stats.reset()
    assert not stats.update_called and stats.samples.item() == 0


def test_few_classes_have_no_top5():
    stats = EpochStats(4)
    stats.update(torch.tensor(0.5), torch.eye(4), torch.tensor([0, 1, 3, 3]))
    out = stats.compute()
    assert set(out) == {"loss", "acc"} and out["acc"].item() == 0.75
