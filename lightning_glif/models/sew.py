"""7B-wideNet for CIFAR10-DVS: a spike-element-wise (SEW) ResNet, docs/GLIF_SPEC.md section 5."""

from __future__ import annotations

from functools import partial

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


def conv_bn_neuron(
    neuron: NeuronFactory,
    time_steps: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    memory_saving: bool = False,
    spike_input: bool = False,
) -> SpikingSequential:
    """Bias-free per-frame conv (stride 1, same padding) + plain batch norm over T*B + neuron
    (``spike_input``: the input is 0/1 spikes, kept as bits)."""
    conv = spike_conv(in_channels, out_channels, kernel_size, spike_input, padding=kernel_size // 2)
    return SpikingSequential(
        TimeDistributed(conv),
        # alpha = 1, V_th = 1: an ordinary BatchNorm2d over the folded T*B batch, as in SEW-ResNet.
        TdBatchNorm(out_channels, alpha=1.0, v_threshold=1.0),
        neuron(out_channels, time_steps),
        memory_saving=memory_saving,
    )


class SEWBlock(nn.Module):
    """SEW basic block with the ADD connection, ``[T, B, C, H, W]`` -> same shape:
    ``x + SN(BN(conv3x3(SN(BN(conv3x3(x))))))``. The stream between blocks is a sum of spikes,
    not binary. ``bits``: the first neuron's spikes are 0/1, so the second conv keeps them as
    bits."""

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        channels: int,
        memory_saving: bool = False,
        bits: bool = False,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_neuron(neuron, time_steps, channels, channels, 3, memory_saving),
            conv_bn_neuron(neuron, time_steps, channels, channels, 3, memory_saving, bits),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class WideNet7B(nn.Module):
    """7B-wideNet (SEW-ResNet, ADD connection) for CIFAR10-DVS event frames.

    ``[B, T, 2, 48, 48]`` polarity frames (a static ``[B, 2, H, W]`` is repeated T times) ->
    per-step logits ``[T, B, num_classes]``. The GLIF authors' ``SEWResNet_GLIF_dsr``::

        conv1x1(2->64)+BN+SN
        SEW(64), SEW(64), SEW(64), SEW(64), AvgPool2   48 -> 24
        conv1x1(64->128)+BN+SN
        SEW(128), AvgPool2                             24 -> 12
        SEW(128), AvgPool2                             12 -> 6
        SEW(128), AvgPool2                              6 -> 3
        flatten (128*3*3 = 1152), Linear(1152, num_classes) with bias

    BN is a plain batch norm over T*B. The authors average the features over T before the linear
    layer; a linear map commutes with the mean, so applying it per step gives the same time-mean.
    16 neurons. Weights keep PyTorch's default initialisation, as in the authors' code.

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of event frames (16 in the paper).
        num_classes: K, the number of output logits.
        in_channels: channels of a frame (2 polarities).
        image_size: height = width of the frames; sets the classifier's input width
            ``128 * (image_size // 16) ** 2``.
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`).
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int = 4,
        num_classes: int = 10,
        in_channels: int = 2,
        image_size: int = 48,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 (four 2x2 pools), got {image_size}.")
        self.time_steps = int(time_steps)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        first = conv_bn_neuron(neuron, time_steps, in_channels, 64, 1, memory_saving)
        bits = memory_saving and binary_spikes(first[2])
        block = partial(SEWBlock, neuron, time_steps, memory_saving=memory_saving, bits=bits)

        def pool() -> TimeDistributed:
            return TimeDistributed(nn.AvgPool2d(2, 2))

        self.features = nn.Sequential(
            first,
            *(block(64) for _ in range(4)),
            pool(),
            conv_bn_neuron(neuron, time_steps, 64, 128, 1, memory_saving),
            block(128),
            pool(),
            block(128),
            pool(),
            block(128),
            pool(),
        )
        side = image_size // 16
        self.head = TimeDistributed(nn.Linear(128 * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C, H, W]`` or ``[B, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        check_image_size(x, self.image_size, type(self).__name__, self.head.module)
        x = to_time_first(x, self.time_steps)
        return self.head(self.features(x).flatten(2))
