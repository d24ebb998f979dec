"""Spiking backbones. Each takes the neuron as a factory ``neuron(channels, time_steps)``, accepts
a static batch ``[B, C, H, W]`` (repeated T times) or a sequence ``[B, T, ...]`` and returns
per-step logits ``[T, B, num_classes]``. A new backbone imports only :mod:`lightning_glif.layers`
and :mod:`.common`."""

from .convnet import SpikingConvNet
from .mlp import SpikingMLP
from .msresnet import ResNet18MS
from .resnet import ResNet18, ResNet19
from .sew import WideNet7B

__all__ = ["SpikingConvNet", "SpikingMLP", "ResNet18", "ResNet19", "ResNet18MS", "WideNet7B"]
