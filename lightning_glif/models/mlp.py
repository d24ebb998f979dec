"""A small spiking MLP for sequences: row digits, SHD, flattened event frames."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_glif.layers import (
    SpikeLinear,
    SpikingSequential,
    TdBatchNorm,
    TimeDistributed,
    binary_spikes,
    to_time_first,
)
from lightning_glif.models.common import NeuronFactory


class SpikingMLP(nn.Module):
    """Linear-tdBN-neuron layers and a linear readout, applied at every time step.

    With the defaults on row digits ``[B, 8, 8]``::

        Linear(8 -> 128)   + tdBN + neuron    [T, B, 128]
        Linear(128 -> 128) + tdBN + neuron    [T, B, 128]
        Linear(128 -> num_classes)            [T, B, num_classes]

    The layers have no recurrent weights: what the network remembers from earlier steps lives
    in its neurons' membranes, which makes it a probe of the neuron's dynamics.

    The input is a batch of sequences ``[B, T, F]``, or ``[B, T, ...]`` whose trailing dims are
    flattened into ``F`` (SHD frames ``[B, T, 1, 700]``, event frames ``[B, T, 2, H, W]``). The
    output is the per-step logits ``[T, B, num_classes]``; the classifier averages them over T.

    Args:
        neuron: factory called as ``neuron(features, time_steps)`` after every tdBN (e.g. a
            GLIF class, or ``functools.partial(LIF, decay=0.5)``).
        time_steps: simulation steps ``T``; must equal the input's T.
        num_classes: outputs of the readout.
        in_features: ``F``, features per time step after flattening.
        hidden: width of each hidden layer.
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`). Off by default: this net keeps a few MB.
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int = 4,
        num_classes: int = 10,
        in_features: int = 8,
        hidden: Sequence[int] = (128, 128),
        memory_saving: bool = False,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("SpikingMLP needs at least one hidden layer: hidden is empty.")
        self.time_steps = time_steps
        self.in_features = in_features
        layers: list[nn.Module] = []
        f_in = in_features
        linear = nn.Linear  # SpikeLinear after a neuron whose spikes are 0/1
        for f_out in hidden:
            layers += [
                TimeDistributed(linear(f_in, f_out, bias=False)),
                TdBatchNorm(f_out),
                neuron(f_out, time_steps),
            ]
            if memory_saving and binary_spikes(layers[-1]):
                linear = SpikeLinear
            f_in = f_out
        self.features = SpikingSequential(*layers, memory_saving=memory_saving)
        self.classifier = TimeDistributed(linear(f_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` (or ``[B, T, ...]``) -> per-step logits ``[T, B, num_classes]``."""
        if x.dim() < 3:
            raise ValueError(
                f"SpikingMLP expects a batch of sequences [B, T, F] (or [B, T, ...]), got shape "
                f"{tuple(x.shape)}."
            )
        x = x.flatten(2)
        if x.shape[2] != self.in_features:
            raise ValueError(
                f"SpikingMLP(in_features={self.in_features}) got {x.shape[2]} features per step "
                f"(input shape [B, T, ...] flattened to {tuple(x.shape)}); set in_features to "
                f"{x.shape[2]}."
            )
        return self.classifier(self.features(to_time_first(x, self.time_steps, static_rank=2)))
