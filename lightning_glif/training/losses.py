"""Classification losses of spiking networks: per-step logits ``[T, B, K]`` and labels ``[B]``
to a scalar, the ``loss`` of :class:`~lightning_glif.training.module.SpikingClassifier`.

- :class:`MeanCrossEntropy` (the default, the GLIF paper's): the cross-entropy of the
  time-averaged logits.
- :class:`TETLoss` (Deng et al., ICLR 2022): the mean over time of the per-step cross-entropy,
  with an MSE regulariser pulling every step's output towards a constant.

Both take ``label_smoothing`` (``F.cross_entropy``'s). In a config::

    model:
      loss:
        class_path: lightning_glif.training.losses.TETLoss
        init_args: {lam: 0.001, target: 1.0, label_smoothing: 0.1}

A new loss subclasses :class:`TemporalLoss` and implements ``forward(logits, y)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(logits: torch.Tensor, y: torch.Tensor) -> None:
    if logits.dim() != 3 or y.dim() != 1 or logits.shape[1] != y.shape[0]:
        raise ValueError(
            f"a temporal loss takes per-step logits [T, B, K] and labels [B], got "
            f"{tuple(logits.shape)} and {tuple(y.shape)}."
        )


class TemporalLoss(nn.Module):
    """Base of the losses: ``forward(logits [T, B, K], y [B]) -> scalar``.

    Args:
        label_smoothing: eps of the cross-entropy's smoothed targets, in ``[0, 1)``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = label_smoothing

    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits [B, K]``, averaged over the batch, with the smoothing."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class MeanCrossEntropy(TemporalLoss):
    """The GLIF paper's loss: ``CE(mean_t logits[t], y)``, the cross-entropy of the logits
    averaged over the T steps (the average is also what the classifier predicts)."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check(logits, y)
        return self.cross_entropy(logits.mean(0), y)


class TETLoss(TemporalLoss):
    """Temporal Efficient Training (Deng et al., ICLR 2022, eq. 8-10):
    ``(1 - lam) * mean_t CE(logits[t], y) + lam * mean_t MSE(logits[t], target)``, the MSE
    averaged over the batch and the classes. The weighting and the defaults are the paper's and
    its code's (``target`` is the output layer's threshold, 1 there); ``lam = 0`` is the plain
    per-step cross-entropy.

    Args:
        lam: weight of the MSE regulariser, in ``[0, 1]``.
        target: the constant phi every step's output is pulled towards.
        label_smoothing: eps of the per-step cross-entropy's smoothed targets.
    """

    def __init__(self, lam: float = 1e-3, target: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}.")
        self.lam = lam
        self.target = target

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check(logits, y)
        # One cross-entropy over the T*B rows: the mean over t of the per-step batch means.
        per_step = self.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]))
        regulariser = F.mse_loss(logits, torch.full_like(logits, self.target))
        return (1.0 - self.lam) * per_step + self.lam * regulariser

    def extra_repr(self) -> str:
        return f"lam={self.lam}, target={self.target}, " + super().extra_repr()
