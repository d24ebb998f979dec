"""Time-first building blocks of the backbones, ``[T, B, C, ...]`` in and out: tdBN, the
per-frame wrapper, the direct encoding of static images, and the memory saving (spikes kept as
bits, tdBN + neuron recomputed in the backward)."""

from .encoding import to_time_first
from .memory import SpikeConv2d, SpikeLinear, SpikingSequential
from .tdbn import TdBatchNorm
from .time_distributed import TimeDistributed

__all__ = [
    "SpikeConv2d",
    "SpikeLinear",
    "SpikingSequential",
    "TdBatchNorm",
    "TimeDistributed",
    "to_time_first",
]
