"""Small building blocks shared by the spiking backbones."""

from __future__ import annotations

import torch
from torch import nn

from lightning_glif.models import saving


class TimeDistributed(nn.Module):
    """Apply a per-frame module (conv, linear, pooling) to every step of ``[T, B, ...]``.

    Time and batch are folded into one batch dimension, so one kernel call serves all steps.
    When the input is a broadcast repeat over time (stride 0 in dim 0, as produced by the direct
    encoding of :func:`lightning_glif.models.encoding.to_time_first`) every frame is the same, so
    the module runs once and its output is broadcast again: the first layer of a network on static
    images costs one frame instead of T. Only stateless per-frame modules may be wrapped (not batch
    norm, whose statistics depend on the folded batch).

    When the input is a neuron's spikes (marked binary, :func:`~lightning_glif.models.saving.
    mark_binary`), what the module saves of it for its backward (a convolution's or linear
    layer's weight gradient) is kept as 1 bit per element (:mod:`lightning_glif.models.saving`),
    gradients unchanged. ``memory_saving=False`` (or the attribute) keeps the full tensor.
    """

    def __init__(self, module: nn.Module, memory_saving: bool = True) -> None:
        super().__init__()
        self.module = module
        self.memory_saving = bool(memory_saving)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[:2]
        broadcast = t > 1 and x.stride(0) == 0
        frames = x[0] if broadcast else x.flatten(0, 1)
        if self.memory_saving and saving.active() and saving.is_binary(x):
            with saving.saved_as_bits(frames):
                y = self.module(frames)
        else:
            y = self.module(frames)
        if broadcast:
            return y.unsqueeze(0).expand(t, *y.shape)
        return y.reshape(t, b, *y.shape[1:])
