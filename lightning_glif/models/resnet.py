"""Spiking ResNet-19 and ResNet-18 for CIFAR (docs/GLIF_SPEC.md section 5): direct encoding, a
conv3x3 stem, post-activation spiking basic blocks, global average pooling and a bias-free linear
head applied at every time step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_glif.layers import (
    SpikingSequential,
    TdBatchNorm,
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
)


class BasicBlock(nn.Module):
    """Post-activation spiking basic block, spikes ``[T, B, C_in, H, W]`` -> ``[T, B, C, H', W']``:
    ``SN(tdBN_a(conv3x3(SN(tdBN(conv3x3_s(x))))) + shortcut(x))`` with ``a = 1/sqrt(2)``, the
    shortcut of :func:`~lightning_glif.models.common.residual_shortcut` and ``H' = H / s``.
    ``spike_bits``: the neurons' spikes are 0/1, so the convolutions keep them as bits."""

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        memory_saving: bool = False,
        spike_bits: bool = False,
    ) -> None:
        super().__init__()
        self.memory_saving, self.spike_bits = bool(memory_saving), bool(spike_bits)
        self.conv1 = conv3x3(in_channels, out_channels, stride, self.spike_bits)
        self.bn1 = TdBatchNorm(out_channels)
        self.sn1 = neuron(out_channels, time_steps)
        self.conv2 = conv3x3(out_channels, out_channels, 1, self.spike_bits)
        self.bn2 = TdBatchNorm(out_channels, alpha=RESIDUAL_ALPHA)
        self.shortcut = residual_shortcut(in_channels, out_channels, stride, True, self.spike_bits)
        self.sn2 = neuron(out_channels, time_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = norm_spike(self.bn1, self.sn1, self.conv1(x), enabled=self.memory_saving)
        out = self.conv2(out)
        if isinstance(self.shortcut, TdBatchNorm):  # identity: x itself (spikes) is kept
            skip = (self.shortcut, x, self.spike_bits)
        else:  # conv1x1 + tdBN: the convolution's output is kept
            skip = (self.shortcut[1], self.shortcut[0](x), False)
        return norm_spike(self.bn2, self.sn2, out, skip, enabled=self.memory_saving)


class SpikingResNet(nn.Module):
    """A CIFAR spiking ResNet of :class:`BasicBlock` stages; :class:`ResNet19` and
    :class:`ResNet18` fix its layout.

    ``[B, C, H, W]`` (repeated T times) or ``[B, T, C, H, W]`` -> per-step logits
    ``[T, B, num_classes]``. Layout: conv3x3(in->stem)+tdBN+SN, stages of basic blocks (the first
    block of each stage has the stage's stride), global average pool, bias-free head: the GLIF
    authors' ``Linear(C_last, head_hidden) -> Linear(head_hidden, num_classes)`` with nothing in
    between (a factorised linear map), or one ``Linear(C_last, num_classes)`` when ``head_hidden``
    is 0. Initialisation as the GLIF authors (:func:`~lightning_glif.models.common.init_weights`).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits.
        in_channels: channels of the input image.
        stem_channels: output channels of the stem convolution.
        stage_channels: output channels of each stage.
        stage_blocks: number of blocks in each stage.
        stage_strides: stride of the first block of each stage.
        head_hidden: width of the head's hidden linear layer; 0 for none, None for the authors'
            rule (256 when num_classes <= 50, else 0).
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`).
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        num_classes: int,
        in_channels: int,
        stem_channels: int,
        stage_channels: Sequence[int],
        stage_blocks: Sequence[int],
        stage_strides: Sequence[int],
        head_hidden: int | None = None,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        if not len(stage_channels) == len(stage_blocks) == len(stage_strides):
            raise ValueError(
                "stage_channels, stage_blocks and stage_strides need one entry per stage, got "
                f"{list(stage_channels)}, {list(stage_blocks)}, {list(stage_strides)}."
            )
        self.time_steps = int(time_steps)
        self.num_classes = int(num_classes)
        self.stem = SpikingSequential(
            conv3x3(in_channels, stem_channels),
            TdBatchNorm(stem_channels),
            neuron(stem_channels, time_steps),
            memory_saving=memory_saving,
        )
        bits = memory_saving and binary_spikes(self.stem[2])
        blocks: list[nn.Module] = []
        channels = stem_channels
        for out_channels, n_blocks, stride in zip(
            stage_channels, stage_blocks, stage_strides, strict=True
        ):
            for i in range(n_blocks):
                s = stride if i == 0 else 1
                blocks.append(
                    BasicBlock(neuron, time_steps, channels, out_channels, s, memory_saving, bits)
                )
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = TimeDistributed(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
        if head_hidden is None:
            head_hidden = 256 if num_classes <= 50 else 0
        if head_hidden:
            head = nn.Sequential(
                nn.Linear(channels, head_hidden, bias=False),
                nn.Linear(head_hidden, num_classes, bias=False),
            )
        else:
            head = nn.Linear(channels, num_classes, bias=False)
        self.head = TimeDistributed(head)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        x = to_time_first(x, self.time_steps)
        return self.head(self.pool(self.blocks(self.stem(x))))


class ResNet19(SpikingResNet):
    """Spiking ResNet-19 for CIFAR (the tdBN paper's layout): stem conv3x3(3->128); stages of 128,
    256, 512 channels with 3, 3, 2 basic blocks and first strides 1, 2, 2 (32x32 -> 8x8); head
    512->256->10 on CIFAR-10, 512->100 on CIFAR-100. 17 neurons (stem 1 + 8 blocks x 2).

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits (10 for CIFAR-10, 100 for CIFAR-100).
        in_channels: channels of the input image.
        head_hidden: width of the head's hidden linear layer; 0 for a single linear layer, None
            for the authors' rule (256 when num_classes <= 50, else 0).
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`).
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        num_classes: int = 10,
        in_channels: int = 3,
        head_hidden: int | None = None,
        memory_saving: bool = True,
    ) -> None:
        super().__init__(
            neuron,
            time_steps,
            num_classes,
            in_channels,
            stem_channels=128,
            stage_channels=(128, 256, 512),
            stage_blocks=(3, 3, 2),
            stage_strides=(1, 2, 2),
            head_hidden=head_hidden,
            memory_saving=memory_saving,
        )


class ResNet18(SpikingResNet):
    """Spiking ResNet-18 for CIFAR: stem conv3x3(3->64), no max-pool; stages of 64, 128, 256, 512
    channels with 2 basic blocks each; head as :class:`ResNet19`. 17 neurons.

    Args:
        neuron: factory called as ``neuron(channels, time_steps)`` once per spiking layer, e.g.
            ``lightning_glif.neurons.GLIF``.
        time_steps: T, the number of simulation steps.
        num_classes: K, the number of output logits (10 for CIFAR-10, 100 for CIFAR-100).
        in_channels: channels of the input image.
        stage_strides: stride of the first block of each stage: the spec's ``(1, 2, 2, 2)``
            (32x32 -> 4x4), or the GLIF authors' ``(1, 1, 2, 2)`` (32x32 -> 8x8, four times the
            compute in stages 2-4; their ``ResNet_18_stand_CW``).
        head_hidden: width of the head's hidden linear layer; 0 for a single linear layer, None
            for the authors' rule (256 when num_classes <= 50, else 0).
        memory_saving: keep less for the backward, with the same gradients
            (:mod:`lightning_glif.layers.memory`).
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        time_steps: int,
        num_classes: int = 10,
        in_channels: int = 3,
        stage_strides: Sequence[int] = (1, 2, 2, 2),
        head_hidden: int | None = None,
        memory_saving: bool = True,
    ) -> None:
        super().__init__(
            neuron,
            time_steps,
            num_classes,
            in_channels,
            stem_channels=64,
            stage_channels=(64, 128, 256, 512),
            stage_blocks=(2, 2, 2, 2),
            stage_strides=tuple(stage_strides),
            head_hidden=head_hidden,
            memory_saving=memory_saving,
        )
