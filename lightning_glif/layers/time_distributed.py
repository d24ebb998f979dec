"""Small building blocks shared by the spiking backbones."""

from __future__ import annotations

import torch
from torch import nn


class TimeDistributed(nn.Module):
    """Apply a per-frame module (conv, linear, pooling) to every step of ``[T, B, ...]``.

    Time and batch are folded into one batch dimension, so one kernel call serves all steps.
    When the input is a broadcast repeat over time (stride 0 in dim 0, as produced by the direct
    encoding of :func:`lightning_glif.layers.encoding.to_time_first`) every frame is the same, so
    the module runs once and its output is broadcast again: the first layer of a network on static
    images costs one frame instead of T. Only stateless per-frame modules may be wrapped (not batch
    norm, whose statistics depend on the folded batch).
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
