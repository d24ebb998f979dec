"""A per-frame module run over every step of a time-first sequence."""

from __future__ import annotations

import torch
from torch import nn


class TimeDistributed(nn.Module):
    """Apply a per-frame module (conv, linear, pooling, dropout) to every step of ``[T, B, ...]``,
    time and batch folded into one batch dimension.

    Direct-encoded input (a broadcast repeat over time, stride 0 in dim 0, from
    :func:`~lightning_glif.layers.to_time_first`) has the same frame at every step, so the module
    runs once and its output is broadcast again: a wrapped ``Dropout`` then draws one mask for all
    steps. Wrap only stateless modules (not a batch norm: its statistics see the folded batch).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[:2]
        if t > 1 and x.stride(0) == 0:
            y = self.module(x[0])
            return y.unsqueeze(0).expand(t, *y.shape)
        y = self.module(x.flatten(0, 1))
        return y.reshape(t, b, *y.shape[1:])
