"""What the backbones share: the neuron factory type, per-frame convolutions, tdBN as the residual
nets use it, and the GLIF authors' weight initialisation."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_glif.layers import TdBatchNorm, TimeDistributed, spike_conv

#: Builds one spiking layer as ``neuron(channels, time_steps)``: a neuron class or a partial.
NeuronFactory = Callable[[int, int], nn.Module]

#: tdBN's alpha in the two norms that feed a residual addition (docs/GLIF_SPEC.md section 4).
RESIDUAL_ALPHA = 2**-0.5


def conv3x3(
    in_channels: int, out_channels: int, stride: int = 1, spike_input: bool = False
) -> TimeDistributed:
    """Bias-free per-frame 3x3 convolution, padding 1; ``spike_input``: a
    :class:`~lightning_glif.layers.SpikeConv2d` (its input kept as bits)."""
    conv = spike_conv(in_channels, out_channels, 3, spike_input, stride=stride, padding=1)
    return TimeDistributed(conv)


def td_norm(channels: int, alpha: float = 1.0, tdbn_scale: bool = True) -> TdBatchNorm:
    """tdBN with its ``alpha * V_th`` scale, or (``tdbn_scale=False``) a plain batch norm over
    T*B (scale 1): the model the GLIF authors' SyncBatchNorm conversion actually trained."""
    if tdbn_scale:
        return TdBatchNorm(channels, alpha=alpha)
    return TdBatchNorm(channels, alpha=1.0, v_threshold=1.0)


def residual_shortcut(
    in_channels: int,
    out_channels: int,
    stride: int,
    tdbn_scale: bool = True,
    spike_input: bool = False,
) -> nn.Module:
    """A block's shortcut: tdBN(1/sqrt2) on the identity, or a per-frame conv1x1 + tdBN(1/sqrt2).
    The identity carries a norm too, as in the GLIF authors' blocks, so both addends of the
    residual sum are scaled by ``V_th / sqrt(2)``."""
    norm = td_norm(out_channels, RESIDUAL_ALPHA, tdbn_scale)
    if stride == 1 and in_channels == out_channels:
        return norm
    conv = spike_conv(in_channels, out_channels, 1, spike_input, stride=stride)
    return nn.Sequential(TimeDistributed(conv), norm)


def init_weights(model: nn.Module) -> None:
    """The GLIF authors' initialisation: Kaiming-normal (fan_out, ReLU) convs, N(0, 0.01) linears,
    zero biases; norms and neurons keep theirs."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
