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


@pytest.mark.parametrize("every", [1, 2, 16])
def test_batches_counted_in_groups_give_the_per_batch_counts(every):
    """``every`` batches are counted at a time, the rest before compute: the same hits and
    samples as counting each batch at once (every=1), the same loss to float64 rounding."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for n in (5, 8, 1, 8, 3):
        batches.append((torch.rand((), generator=g), torch.randn(n, 10, generator=g),
                        torch.randint(0, 10, (n,), generator=g)))  # fmt: skip
    stats = EpochStats(10, every=every)
    hand_top1 = hand_samples = 0
    for loss, logits, y in batches:
        stats.update(loss, logits, y)
        hand_top1 += int((logits.argmax(1) == y).sum())
        hand_samples += y.shape[0]
    assert len(stats._pending) == len(batches) % every  # counted in whole groups so far
    out = stats.compute()
    assert stats.samples.item() == hand_samples == 25
    assert stats.hits[0].item() == hand_top1
    assert out["acc"].item() == pytest.approx(hand_top1 / 25, abs=1e-7)
    mean = sum(loss.double().item() * y.shape[0] for loss, _, y in batches) / 25
    assert out["loss"].item() == pytest.approx(mean, rel=1e-6)
    stats.reset()
    assert stats._pending == [] and stats.samples.item() == 0


def test_every_below_one_is_refused():
    with pytest.raises(ValueError, match="every must be >= 1"):
        EpochStats(10, every=0)
