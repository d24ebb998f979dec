"""A small spiking convnet for tiny images: the default model, on the embedded 8x8 digits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_glif.layers import (
    SpikingSequential,
    TdBatchNorm,
    TimeDistributed,
    binary_spikes,
    check_image_size,
    spike_conv,
    to_time_first,
)
from lightning_glif.models.common import NeuronFactory


class SpikingConvNet(nn.Module):
    """Conv-tdBN-neuron stages, an average pool after every stage but the first, a linear readout.

    With the defaults on ``[B, 1, 8, 8]`` digits::

        conv3x3(1->32)  + tdBN + neuron    [T, B, 32, 8, 8]
        conv3x3(32->64) + tdBN + neuron    [T, B, 64, 8, 8] -> avgpool 2 -> [T, B, 64, 4, 4]
        flatten -> Linear(64 * 4 * 4, num_classes)          -> [T, B, num_classes]

    The input is a static batch ``[B, C, H, W]`` (repeated over ``time_steps``: direct encoding)
    or a sequence batch ``[B, T, C, H, W]``. The output is the per-step logits
    ``[T, B, num_classes]``; the classifier averages them over T.

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` after every tdBN (e.g. a GLIF
            class, or ``functools.partial(GLIF, tau=0.5)``).
        time_steps: simulation steps ``T``.
        num_classes: outputs of the readout.
        in_channels: channels of the input images.
        image_size: height (= width) of the input images; sets the readout's input size.
        channels: output channels of each conv stage. Stages after the first halve the
            resolution with a 2x2 average pool after their neuron.
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`). Off by default: this net keeps a few MB.
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int = 4,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        channels: Sequence[int] = (32, 64),
        memory_saving: bool = False,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("SpikingConvNet needs at least one conv stage: channels is empty.")
        size = image_size // 2 ** (len(channels) - 1)
        if size < 1:
            raise ValueError(
                f"SpikingConvNet: {len(channels)} stages pool {image_size}x{image_size} images "
                f"{len(channels) - 1} times, which leaves nothing; use fewer channels entries."
            )
        self.time_steps = time_steps
        self.image_size = image_size
        stages = []
        c_in = in_channels
        bits = False  # the neurons' spikes are 0/1 (known once the first is built)
        for i, c_out in enumerate(channels):
            layers = [  # the second stage takes the first's spikes unpooled
                TimeDistributed(spike_conv(c_in, c_out, 3, bits and i == 1, padding=1)),
                TdBatchNorm(c_out),
                neuron(c_out, time_steps),
            ]
            if i > 0:
                layers.append(TimeDistributed(nn.AvgPool2d(2)))
            stages.append(SpikingSequential(*layers, memory_saving=memory_saving))
            bits = memory_saving and binary_spikes(layers[2])
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(c_in * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        check_image_size(x, self.image_size, "SpikingConvNet", self.classifier)
        x = self.features(to_time_first(x, self.time_steps))
        return self.classifier(x.flatten(2))
