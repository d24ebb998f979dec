"""Spiking VGG-11/13/16 for CIFAR-sized images, time-first throughout."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_glif.layers.encoding import to_time_first
from lightning_glif.layers.memory import SpikingSequential, binary_spikes
from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.layers.time_distributed import TimeDistributed
from lightning_glif.models.common import NeuronFactory, conv3x3, init_weights

#: Output channels of each 3x3 convolution, "P" a 2x2 average pool (the VGG paper's A, B, D).
VGG_LAYOUTS: dict[int, tuple[int | str, ...]] = {
    11: (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"),
    13: (64, 64, "P", 128, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"),
    16: (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"),
}


class SpikingVGG(nn.Module):
    """Spiking VGG with tdBN, for CIFAR-sized images.

    ``[B, C, 32, 32]`` (repeated T times) or ``[B, T, C, H, W]`` -> per-step logits
    ``[T, B, num_classes]``. Every 3x3 convolution (bias-free, padding 1) is followed by tdBN and
    a neuron; the channel plan is the VGG paper's configuration A (11), B (13) or D (16), see
    :data:`VGG_LAYOUTS`. Layout choices, for a CIFAR-style net:

    - the five max-pools are 2x2 average pools (as in tdBN-era SNN VGGs and the GLIF authors'
      ``CIFARNet``; a max-pool of binary spikes is a logical OR);
    - the three-layer 4096-wide classifier is replaced by a global average pool (a no-op at
      32x32, where five pools leave 1x1; it lets other input sizes work) and one bias-free
      ``Linear(512, num_classes)``.

    One neuron per convolution: 8 (VGG-11), 10 (VGG-13), 13 (VGG-16). Initialisation as the GLIF
    authors (Kaiming-normal convs, N(0, 0.01) linear).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per convolution, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of simulation steps.
        depth: number of weight layers, 11, 13 or 16.
        num_classes: K, the number of output logits.
        in_channels: channels of the input (3 for RGB, 2 for DVS polarity frames).
        memory_saving: keep less for the backward, with the same gradients: each tdBN + neuron
            keeps only the tdBN's input, and the convolutions taking spikes (not pooled ones)
            keep them as bits (:mod:`lightning_glif.layers.memory`).
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        depth: Literal[11, 13, 16] = 11,
        num_classes: int = 10,
        in_channels: int = 3,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        if depth not in VGG_LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(VGG_LAYOUTS)}, got {depth}.")
        self.time_steps = int(time_steps)
        self.num_classes = int(num_classes)
        self.depth = depth
        layers: list[nn.Module] = []
        channels = in_channels
        bits = False  # the neurons' spikes are 0/1 (known once the first is built)
        for item in VGG_LAYOUTS[depth]:
            if item == "P":
                layers.append(TimeDistributed(nn.AvgPool2d(2, 2)))
            else:
                out_channels = int(item)
                spikes = bool(layers) and not isinstance(layers[-1], TimeDistributed)  # unpooled
                layers += [
                    conv3x3(channels, out_channels, 1, bits and spikes),
                    TdBatchNorm(out_channels),
                    neuron(out_channels, time_steps),
                ]
                bits = memory_saving and binary_spikes(layers[-1])
                channels = out_channels
        self.features = SpikingSequential(*layers, memory_saving=memory_saving)
        self.pool = TimeDistributed(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
        self.head = TimeDistributed(nn.Linear(channels, num_classes, bias=False))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        x = to_time_first(x, self.time_steps)
        return self.head(self.pool(self.features(x)))
