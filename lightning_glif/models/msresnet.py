"""Membrane-shortcut spiking ResNet-18 for ImageNet (MS-ResNet style; docs/GLIF_SPEC.md section 5).

The residual stream carries real-valued membrane input, not spikes: each block is
pre-activation (neuron -> conv -> tdBN -> neuron -> conv -> tdBN) and its output is added to the
shortcut without a neuron after the sum.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from lightning_glif.layers import (
    SpikingSequential,
    TimeDistributed,
    binary_spikes,
    norm_spike,
    to_time_first,
)
from lightning_glif.models.common import (
    RESIDUAL_ALPHA,
    NeuronFactory,
    conv3x3,
    init_weights,
    residual_shortcut,
    td_norm,
)


class MSBlock(nn.Module):
    """Pre-activation membrane-shortcut block, ``[T, B, C_in, H, W]`` -> ``[T, B, C_out, H', W']``:
    ``tdBN_a(conv3x3(SN(tdBN(conv3x3_s(SN(x)))))) + shortcut(x)`` with ``a = 1/sqrt(2)`` and
    ``H' = H / s``; input and output are real-valued. The shortcut carries a norm as in the GLIF
    authors' ``BasicBlock_CW_MS`` (MS-ResNet's own code leaves the identity without one).
    ``tdbn_scale``: see :class:`ResNet18MS`; ``spike_bits``: the neurons' spikes are 0/1, so the
    convolutions keep them as bits."""

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        tdbn_scale: bool = True,
        memory_saving: bool = False,
        spike_bits: bool = False,
    ) -> None:
        super().__init__()
        self.memory_saving = bool(memory_saving)
        self.sn1 = neuron(in_channels, time_steps)
        self.conv1 = conv3x3(in_channels, out_channels, stride, spike_bits)
        self.bn1 = td_norm(out_channels, 1.0, tdbn_scale)
        self.sn2 = neuron(out_channels, time_steps)
        self.conv2 = conv3x3(out_channels, out_channels, 1, spike_bits)
        self.bn2 = td_norm(out_channels, RESIDUAL_ALPHA, tdbn_scale)
        self.shortcut = residual_shortcut(in_channels, out_channels, stride, tdbn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.sn1(x))
        out = self.conv2(norm_spike(self.bn1, self.sn2, out, enabled=self.memory_saving))
        return self.bn2(out) + self.shortcut(x)


class ResNet18MS(nn.Module):
    """MS-ResNet-18 for ImageNet: ``[B, 3, 224, 224]`` (or ``[B, T, 3, H, W]``) -> per-step
    logits ``[T, B, num_classes]``.

    Stem conv7x7(in->64, stride 2)+tdBN+SN, no max-pool (neither MS-ResNet nor the GLIF authors
    apply one); four stages of :class:`MSBlock` at 64, 128, 256, 512 channels, each stage's first
    block with stride 2 (224 -> 112 -> 56 -> 28 -> 14 -> 7); global average pool of the last
    block's real-valued output (no neuron after it: the GLIF authors' head); bias-free
    Linear(512, K). 17 neurons. Initialisation as the GLIF authors. A subclass that sets
    ``STAGE_BLOCKS = (3, 4, 6, 3)`` is MS-ResNet-34.

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits.
        in_channels: channels of the input image.
        stem_padding: padding of the 7x7 stem convolution: 3 keeps a standard ResNet's grid (as
            MS-ResNet); the GLIF authors' code uses 1 (224 -> 110).
        tdbn_scale: scale every norm by tdBN's ``alpha * V_th`` (the paper). ``False``: plain
            batch norms (scale 1), the model the GLIF authors trained and evaluated for their
            ImageNet 68.10% (their SyncBatchNorm conversion dropped the scale).
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`).
    """

    #: Blocks in each of the four stages.
    STAGE_BLOCKS: tuple[int, int, int, int] = (2, 2, 2, 2)

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem_padding: int = 3,
        tdbn_scale: bool = True,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        self.time_steps = int(time_steps)
        self.num_classes = int(num_classes)
        self.stem = SpikingSequential(
            TimeDistributed(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=stem_padding, bias=False)
            ),
            td_norm(64, 1.0, tdbn_scale),
            neuron(64, time_steps),
            memory_saving=memory_saving,
        )
        bits = memory_saving and binary_spikes(self.stem[2])
        block = partial(MSBlock, neuron, time_steps, tdbn_scale=tdbn_scale, spike_bits=bits)
        blocks: list[nn.Module] = []
        channels = 64
        for out_channels, n_blocks in zip((64, 128, 256, 512), self.STAGE_BLOCKS, strict=True):
            for i in range(n_blocks):
                stride = 2 if i == 0 else 1
                blocks.append(block(channels, out_channels, stride, memory_saving=memory_saving))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = TimeDistributed(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
        self.head = TimeDistributed(nn.Linear(channels, num_classes, bias=False))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        x = to_time_first(x, self.time_steps)
        return self.head(self.pool(self.blocks(self.stem(x))))
