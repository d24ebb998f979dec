"""Building blocks every backbone shares: the neuron factory type, per-frame convolutions,
tdBN as the residual nets use it, and the GLIF authors' weight initialisation."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_glif.layers.memory import spike_conv
from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.layers.time_distributed import TimeDistributed

NeuronFactory = Callable[[int, int], nn.Module]

#: tdBN's alpha in the two norms that feed a residual addition (tdBN paper; docs/GLIF_SPEC.md
#: section 4).
RESIDUAL_ALPHA = 2**-0.5


def conv3x3(
    in_channels: int, out_channels: int, stride: int = 1, spike_input: bool = False
) -> TimeDistributed:
    """Bias-free 3x3 convolution (padding 1) applied per frame of ``[T, B, C, H, W]``
    (``spike_input``: of 0/1 spikes, kept as bits, :class:`~lightning_glif.models.SpikeConv2d`)."""
    return TimeDistributed(
        spike_conv(in_channels, out_channels, 3, spike_input, stride=stride, padding=1)
    )


def conv1x1(
    in_channels: int, out_channels: int, stride: int = 1, spike_input: bool = False
) -> TimeDistributed:
    """Bias-free 1x1 convolution applied per frame of ``[T, B, C, H, W]`` (``spike_input``: as
    :func:`conv3x3`)."""
    return TimeDistributed(spike_conv(in_channels, out_channels, 1, spike_input, stride=stride))


def residual_shortcut(
    in_channels: int,
    out_channels: int,
    stride: int,
    tdbn_scale: bool = True,
    spike_input: bool = False,
) -> nn.Module:
    """The shortcut branch of a block: tdBN(1/sqrt2) on the identity, or conv1x1 + tdBN(1/sqrt2).

    The identity carries a norm too (as in the GLIF authors' blocks), so both addends of the
    residual sum are tdBN outputs scaled by ``1/sqrt(2) * V_th``. ``tdbn_scale=False``: a plain
    batch norm instead (see :func:`td_norm`). ``spike_input``: see :func:`conv3x3`.
    """
    if stride == 1 and in_channels == out_channels:
        return td_norm(out_channels, RESIDUAL_ALPHA, tdbn_scale)
    return nn.Sequential(
        conv1x1(in_channels, out_channels, stride, spike_input),
        td_norm(out_channels, RESIDUAL_ALPHA, tdbn_scale),
    )


def td_norm(channels: int, alpha: float = 1.0, tdbn_scale: bool = True) -> TdBatchNorm:
    """tdBN with its ``alpha * V_th`` scale, or (``tdbn_scale=False``) a plain batch norm over
    T*B (scale 1): the model the GLIF authors' SyncBatchNorm conversion actually trained."""
    if tdbn_scale:
        return TdBatchNorm(channels, alpha=alpha)
    return TdBatchNorm(channels, alpha=1.0, v_threshold=1.0)


def init_weights(model: nn.Module) -> None:
    """The GLIF authors' initialisation: Kaiming-normal (fan_out, ReLU) convs, N(0, 0.01) linears.

    Norms keep their defaults (weight 1, bias 0); neurons are left untouched.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
