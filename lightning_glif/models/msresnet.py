"""Membrane-shortcut spiking ResNet-18/34 for ImageNet (MS-ResNet style; docs/GLIF_SPEC.md
section 5).

The residual stream carries real-valued membrane input, not spikes: each block is
pre-activation (neuron -> conv -> tdBN -> neuron -> conv -> tdBN) and its output is added to the
shortcut without a neuron after the sum. ``forward`` returns per-step logits ``[T, B, K]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from lightning_glif.layers.encoding import to_time_first
from lightning_glif.layers.memory import SpikingSequential, binary_spikes, norm_spike
from lightning_glif.layers.time_distributed import TimeDistributed
from lightning_glif.models.common import (
    RESIDUAL_ALPHA,
    NeuronFactory,
    conv3x3,
    init_weights,
    residual_shortcut,
    td_norm,
)


class MSBlock(nn.Module):
    """Pre-activation membrane-shortcut block: ``[T, B, C_in, H, W]`` -> ``[T, B, C_out, H', W']``.

    ``tdBN_a(conv3x3(SN(tdBN(conv3x3_s(SN(x)))))) + shortcut(x)`` with ``a = 1/sqrt(2)`` and
    ``H' = H / s``; input and output are real-valued. Two neurons (``C_in`` then ``C_out``
    channels). The shortcut is tdBN(1/sqrt2) on the identity, or conv1x1(stride s) +
    tdBN(1/sqrt2), as in the GLIF authors' ``BasicBlock_CW_MS`` (MS-ResNet's own code leaves the
    identity without a norm).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)``.
        time_steps: T.
        in_channels: C_in.
        out_channels: C_out.
        stride: stride s of the first convolution and of the projection shortcut.
        tdbn_scale: tdBN's ``alpha * V_th`` scale on every norm (False: plain batch norms).
        memory_saving: see :class:`MSResNet`.
        spike_bits: the neurons' spikes are 0/1: the convolutions keep them as bits.
    """

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


class MSResNet(nn.Module):
    """An ImageNet membrane-shortcut spiking ResNet; :class:`ResNet18MS` and :class:`ResNet34MS`
    fix its depth.

    ``[B, 3, 224, 224]`` (or ``[B, T, 3, H, W]``) -> per-step logits ``[T, B, num_classes]``.
    Stem conv7x7(in->64, stride 2)+tdBN+SN, no max-pool (neither MS-ResNet nor the GLIF authors
    apply one: the first stage has stride 2 instead); four stages of :class:`MSBlock` at 64, 128,
    256, 512 channels, every stage's first block with stride 2 (224 -> 112 -> 56 -> 28 -> 14 -> 7);
    global average pool of the last block's real-valued output; bias-free Linear(512, K).
    No neuron after the last block (the GLIF authors' head; MS-ResNet's own code puts one there).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits.
        in_channels: channels of the input image.
        stage_blocks: number of blocks in each of the four stages.
        stem_padding: padding of the 7x7 stem convolution. 3 keeps the spatial grid of a
            standard ResNet (as MS-ResNet); the GLIF authors' code uses 1 (224 -> 110), which
            changes no parameter shape but every feature map's size.
        tdbn_scale: scale every norm by tdBN's ``alpha * V_th`` (the paper). ``False``: plain
            batch norms (scale 1), the model the GLIF authors trained and evaluated for their
            ImageNet 68.10% (their SyncBatchNorm conversion dropped the scale).
        memory_saving: keep less for the backward, with the same gradients: each tdBN +
            neuron keeps only the tdBN's input, and the convolutions taking spikes keep them
            as bits (:mod:`lightning_glif.layers.memory`).
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        num_classes: int,
        in_channels: int,
        stage_blocks: Sequence[int],
        stem_padding: int = 3,
        tdbn_scale: bool = True,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        if len(stage_blocks) != 4:
            raise ValueError(f"stage_blocks needs four entries, got {list(stage_blocks)}.")
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
        for out_channels, n_blocks in zip((64, 128, 256, 512), stage_blocks, strict=True):
            for i in range(n_blocks):
                blocks.append(
                    block(channels, out_channels, 2 if i == 0 else 1, memory_saving=memory_saving)
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = TimeDistributed(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
        self.head = TimeDistributed(nn.Linear(channels, num_classes, bias=False))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        x = to_time_first(x, self.time_steps)
        return self.head(self.pool(self.blocks(self.stem(x))))


class ResNet18MS(MSResNet):
    """MS-ResNet-18 for ImageNet: stages of 2, 2, 2, 2 :class:`MSBlock` (see :class:`MSResNet`).

    ``[B, 3, 224, 224]`` -> per-step logits ``[T, B, num_classes]``. 17 neurons: stem 1 + 8
    blocks x 2. Initialisation as the GLIF authors (Kaiming-normal convs, N(0, 0.01) linear).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits.
        in_channels: channels of the input image.
        stem_padding: padding of the 7x7 stem convolution (3: standard grid; the GLIF authors'
            code uses 1).
        tdbn_scale: scale every norm by tdBN's ``alpha * V_th`` (the paper). ``False``: plain
            batch norms (scale 1), the model the GLIF authors trained and evaluated for their
            ImageNet 68.10% (their SyncBatchNorm conversion dropped the scale).
        memory_saving: keep less for the backward, same gradients (see :class:`MSResNet`).
    """

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
        super().__init__(
            neuron,
            time_steps,
            num_classes,
            in_channels,
            (2, 2, 2, 2),
            stem_padding,
            tdbn_scale,
            memory_saving,
        )


class ResNet34MS(MSResNet):
    """MS-ResNet-34 for ImageNet: stages of 3, 4, 6, 3 :class:`MSBlock` (see :class:`MSResNet`).

    ``[B, 3, 224, 224]`` -> per-step logits ``[T, B, num_classes]``. 33 neurons: stem 1 + 16
    blocks x 2. Initialisation as the GLIF authors (Kaiming-normal convs, N(0, 0.01) linear).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits.
        in_channels: channels of the input image.
        stem_padding: padding of the 7x7 stem convolution (3: standard grid; the GLIF authors'
            code uses 1).
        tdbn_scale: scale every norm by tdBN's ``alpha * V_th`` (the paper). ``False``: plain
            batch norms (scale 1), the model the GLIF authors trained and evaluated for their
            ImageNet 68.10% (their SyncBatchNorm conversion dropped the scale).
        memory_saving: keep less for the backward, same gradients (see :class:`MSResNet`).
    """

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
        super().__init__(
            neuron,
            time_steps,
            num_classes,
            in_channels,
            (3, 4, 6, 3),
            stem_padding,
            tdbn_scale,
            memory_saving,
        )
