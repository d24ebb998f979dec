"""Spiking backbones. Each takes the neuron as a factory ``neuron(channels, time_steps)``, accepts
a static batch ``[B, C, H, W]`` (repeated T times) or a sequence ``[B, T, ...]`` and returns
per-step logits ``[T, B, num_classes]``."""

from .convnet import SpikingConvNet
from .encoding import to_time_first
from .layers import TimeDistributed
from .mlp import SpikingMLP
from .msresnet import ResNet18MS, ResNet34MS
from .resnet import ResNet18, ResNet19
from .saving import SpikeConv2d, SpikeLinear, SpikingSequential
from .sew import WideNet7B
from .tdbn import TdBatchNorm
from .vgg import SpikingVGG

__all__ = [
    "SpikingConvNet",
    "SpikingMLP",
    "ResNet18",
    "ResNet19",
    "ResNet18MS",
    "ResNet34MS",
    "WideNet7B",
    "SpikingVGG",
    "SpikeConv2d",
    "SpikeLinear",
    "SpikingSequential",
    "TdBatchNorm",
    "TimeDistributed",
    "to_time_first",
]
