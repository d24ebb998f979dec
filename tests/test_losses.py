"""The losses of lightning_glif.training.losses against values computed by hand, and their use by
the classifier (from Python and from the CLI)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from pytorch_lightning import Callback, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.training.losses import MeanCrossEntropy, TemporalLoss, TETLoss
from lightning_glif.training.module import SpikingClassifier

# Per-step logits [T=2, B=2, K=3] and labels [B].
LOGITS = [
    [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]],  # t = 0
    [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # t = 1
]
LABELS = [0, 1]


def tensors(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS, dtype=dtype), torch.tensor(LABELS)


def ce(row: list[float], label: int, eps: float = 0.0) -> float:
    """Cross-entropy of one logit row, written out: -sum_k q_k log softmax(row)_k with the
    smoothed target q = (1 - eps) one_hot(label) + eps / K."""
    k = len(row)
    log_z = math.log(sum(math.exp(v) for v in row))
    q = [(1 - eps) * (j == label) + eps / k for j in range(k)]
    return -sum(q[j] * (row[j] - log_z) for j in range(k))


def hand_mean_ce(logits, labels, eps: float = 0.0) -> float:
    steps = len(logits)
    means = [
        [sum(logits[t][b][j] for t in range(steps)) / steps for j in range(len(logits[0][b]))]
        for b in range(len(labels))
    ]
    return sum(ce(means[b], labels[b], eps) for b in range(len(labels))) / len(labels)


def hand_tet(logits, labels, lam: float, target: float, eps: float = 0.0) -> float:
    rows = [(logits[t][b], labels[b]) for t in range(len(logits)) for b in range(len(labels))]
    per_step = sum(ce(row, y, eps) for row, y in rows) / len(rows)
    values = [v for row, _ in rows for v in row]
    mse = sum((v - target) ** 2 for v in values) / len(values)
    return (1 - lam) * per_step + lam * mse


# -- the numbers by hand ----------------------------------------------------------------------
def test_mean_cross_entropy_by_hand():
    logits, y = tensors()
    e = math.e
    # Time averages: [0.5, 0.5, 0] (label 0) and [0, 1, 0.5] (label 1).
    first = math.log(2 * math.exp(0.5) + 1) - 0.5
    second = math.log(1 + e + math.exp(0.5)) - 1
    expected = (first + second) / 2
    assert hand_mean_ce(LOGITS, LABELS) == pytest.approx(expected, rel=1e-12)
    assert MeanCrossEntropy()(logits, y).item() == pytest.approx(expected, rel=1e-6)


def test_tet_by_hand():
    logits, y = tensors()
    e = math.e
    # Per-step CE: (t0, b0) log(e + 2) - 1, (t0, b1) log(e^2 + 2) - 2, (t1, b0) and (t1, b1)
    # log(e + 2) (the label's logit is 0).
    per_step = (3 * math.log(e + 2) - 1 + math.log(e * e + 2) - 2) / 4
    # Squared distances to 1 over the 12 values: 9 ones -> 9/12; to 0: the squares 7 -> 7/12.
    assert TETLoss(lam=0.0)(logits, y).item() == pytest.approx(per_step, rel=1e-6)
    default = TETLoss()
    assert (default.lam, default.target) == (1e-3, 1.0)
    expected = (1 - 1e-3) * per_step + 1e-3 * 0.75
    assert default(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert hand_tet(LOGITS, LABELS, 1e-3, 1.0) == pytest.approx(expected, rel=1e-12)
    strong = TETLoss(lam=0.5, target=0.0)(logits, y).item()
    assert strong == pytest.approx(0.5 * per_step + 0.5 * 7 / 12, rel=1e-6)
    assert TETLoss(lam=1.0)(logits, y).item() == pytest.approx(0.75, rel=1e-6)


def test_label_smoothing_by_hand():
    logits, y = tensors()
    eps = 0.2
    # (t0, b0): row [1, 0, 0], label 0, q = [0.8 + 0.2/3, 0.2/3, 0.2/3] = [13/15, 1/15, 1/15]:
    # -(13/15 (1 - log Z) + 2/15 (0 - log Z)) = log Z - 13/15 with Z = e + 2.
    assert ce([1.0, 0.0, 0.0], 0, eps) == pytest.approx(math.log(math.e + 2) - 13 / 15)
    smoothed_mean = MeanCrossEntropy(label_smoothing=eps)(logits, y).item()
    assert smoothed_mean == pytest.approx(hand_mean_ce(LOGITS, LABELS, eps), rel=1e-6)
    assert smoothed_mean != pytest.approx(hand_mean_ce(LOGITS, LABELS), rel=1e-3)
    smoothed_tet = TETLoss(lam=0.1, target=0.5, label_smoothing=eps)(logits, y).item()
    assert smoothed_tet == pytest.approx(hand_tet(LOGITS, LABELS, 0.1, 0.5, eps), rel=1e-6)


def test_tet_gradients_pass_gradcheck():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2])
    for loss in (TETLoss(), TETLoss(lam=0.3, target=0.5, label_smoothing=0.1), TETLoss(lam=0)):
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, y), (logits,))
    assert torch.autograd.gradcheck(lambda x: MeanCrossEntropy(0.1)(x, y), (logits,))


def test_losses_check_their_arguments():
    logits, y = tensors()
    with pytest.raises(ValueError, match=r"per-step logits \[T, B, K\]"):
        TETLoss()(logits.mean(0), y)
    with pytest.raises(ValueError, match=r"per-step logits \[T, B, K\]"):
        MeanCrossEntropy()(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing"):
        MeanCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="lam"):
        TETLoss(lam=-0.1)
    assert issubclass(TETLoss, TemporalLoss) and issubclass(MeanCrossEntropy, TemporalLoss)


# -- the classifier ---------------------------------------------------------------------------
class Fixed(nn.Module):
    """A backbone returning given per-step logits, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + self.dummy


def test_the_classifier_uses_its_loss_and_averages_for_the_metrics():
    logits, y = tensors()
    batch = (torch.zeros(2, 1), y)
    default = SpikingClassifier(Fixed(logits), num_classes=3)
    assert isinstance(default.loss, MeanCrossEntropy) and default.loss.label_smoothing == 0.0
    loss, averaged, _ = default._step(batch)
    assert loss.item() == pytest.approx(hand_mean_ce(LOGITS, LABELS), rel=1e-6)
    assert torch.equal(averaged, logits.mean(0))

    tet = SpikingClassifier(Fixed(logits), num_classes=3, loss=TETLoss(label_smoothing=0.1))
    loss, averaged, _ = tet._step(batch)
    assert loss.item() == pytest.approx(hand_tet(LOGITS, LABELS, 1e-3, 1.0, 0.1), rel=1e-6)
    assert torch.equal(averaged, logits.mean(0))  # the accuracies' input
    assert torch.equal(tet(torch.zeros(2, 1)), logits.mean(0))  # forward: the prediction
    # A live object: not a hyperparameter of a module built in Python; and no state.
    assert "loss" not in tet.hparams
    assert not [k for k in tet.state_dict() if k.startswith("loss")]


class Linear(nn.Module):
    """A tiny trainable backbone: one linear map per step, [B, T, F] -> [T, B, K]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).transpose(0, 1)


class RecordLoss(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.losses.append(loss.item())


def test_a_fit_step_with_tet_is_the_hand_formula(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(6, 2, 4), torch.tensor([0, 1, 2, 0, 1, 2])  # [B, T, F]
    model = SpikingClassifier(Linear(), num_classes=3, loss=TETLoss(lam=0.2, target=0.5))
    with torch.no_grad():
        per_step = model.backbone(x).tolist()  # before the step changes the weights
    record = RecordLoss()
    trainer = Trainer(
        fast_dev_run=1, default_root_dir=tmp_path, accelerator="cpu", callbacks=[record],
        enable_progress_bar=False, enable_model_summary=False, logger=False,
    )  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=6))
    assert record.losses == [pytest.approx(hand_tet(per_step, y.tolist(), 0.2, 0.5), rel=1e-5)]
    assert record.losses[0] != pytest.approx(hand_mean_ce(per_step, y.tolist()), rel=1e-3)


def test_the_loss_is_chosen_in_the_config_and_saved_in_checkpoints(tmp_path, monkeypatch):
    from lightning_glif.cli.main import cli_main

    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = [
        "--model.loss", "TETLoss", "--model.loss.lam", "0.01",
        "--model.loss.label_smoothing", "0.1",
        "--model.backbone.init_args.channels", "[4, 8]", "--trainer.logger", "false",
    ]  # fmt: skip
    cli = cli_main(args, run=False)
    loss = cli.model.loss
    assert isinstance(loss, TETLoss)
    assert (loss.lam, loss.target, loss.label_smoothing) == (0.01, 1.0, 0.1)
    assert cli.model.hparams["loss"] == {
        "class_path": "lightning_glif.training.losses.TETLoss",
        "init_args": {"lam": 0.01, "target": 1.0, "label_smoothing": 0.1},
    }

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(cli.model)
    trainer.save_checkpoint(tmp_path / "tet.ckpt")
    reloaded = SpikingClassifier.load_from_checkpoint(tmp_path / "tet.ckpt", weights_only=True)
    assert isinstance(reloaded.loss, TETLoss) and reloaded.loss.lam == 0.01

    # Without model.loss: the paper's mean cross-entropy.
    default = cli_main(["--model.backbone.init_args.channels", "[4, 8]"], run=False).model
    assert type(default.loss) is MeanCrossEntropy and default.hparams["loss"] is None
