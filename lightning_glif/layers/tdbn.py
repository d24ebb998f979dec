"""Threshold-dependent batch normalisation (tdBN, Zheng et al., AAAI 2021) for time-first input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TdBatchNorm(nn.Module):
    r"""Batch norm over the time-flattened batch, scaled by ``alpha * v_threshold`` before the
    affine.

    For input ``x`` of shape ``[T, B, C, ...]`` (any trailing rank: ``[T, B, C]`` after a linear
    layer, ``[T, B, C, H, W]`` after a convolution) the statistics are taken per channel over
    ``(T * B, ...)``, and

    .. math:: y = w \cdot \alpha V_{th} \cdot \hat{x} + b

    ``alpha`` is 1, or ``1/sqrt(2)`` in the two norms that feed a residual addition. With
    ``alpha=1, v_threshold=1`` this is a plain batch norm over time and batch (SEW-style nets).

    In training the normalisation is an inner ``nn.BatchNorm1d(affine=False)`` with the scale
    and the affine outside it, so that ``nn.SyncBatchNorm.convert_sync_batchnorm`` swaps the inner
    norm and keeps the tdBN scaling (the GLIF authors' subclass of BatchNorm lost it there).

    In eval the running statistics are applied in the GLIF authors' order of operations, so that
    their checkpoints give their outputs bit for bit: ``alpha * V_th * (x - mean) /
    sqrt(var + eps)``, then ``* w + b``. A plain norm (scale 1) evaluates as torch's batch norm
    on ``[T * B, C, ...]``, as their ``nn.BatchNorm2d`` and ``nn.SyncBatchNorm`` do.

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        alpha: tdBN's alpha (1, or ``2 ** -0.5`` before a residual addition).
        v_threshold: the threshold the output is scaled to (tdBN's ``V_th``, fixed at 0.5).
        eps: numerical stability term of the batch norm.
        momentum: running-statistics momentum of the batch norm.
    """

    def __init__(
        self,
        num_features: int,
        alpha: float = 1.0,
        v_threshold: float = 0.5,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
        self.register_buffer("scale", torch.tensor(float(alpha) * float(v_threshold)))
        self.plain = float(alpha) * float(v_threshold) == 1.0
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(
                f"TdBatchNorm(num_features={self.num_features}) expects time-first input "
                f"[T, B, C={self.num_features}, ...], got shape {tuple(x.shape)}."
            )
        t, b, c = x.shape[:3]
        view = (c,) + (1,) * (x.dim() - 3)
        if not self.training:
            mean, var, eps = self.bn.running_mean, self.bn.running_var, self.bn.eps
            if self.plain:
                y = F.batch_norm(x.flatten(0, 1), mean, var, self.weight, self.bias, eps=eps)
                return y.reshape(x.shape)
            y = self.scale * (x - mean.view(view)) / torch.sqrt(var.view(view) + eps)
            return y * self.weight.view(view) + self.bias.view(view)
        # [T, B, C, ...] -> [T*B, C, L]: BatchNorm1d (and SyncBatchNorm) take this for any rank.
        normed = self.bn(x.reshape(t * b, c, -1)).reshape(x.shape)
        return self.weight.view(view) * (self.scale * normed) + self.bias.view(view)

    def extra_repr(self) -> str:
        return f"{self.num_features}, scale={self.scale.item():.4g}"
