"""Time-first building blocks ``[T, B, C, ...]``: tdBN, the per-frame wrapper, the direct
encoding, and the memory saving (:mod:`.memory`). A backbone imports what it needs from here and
from :mod:`lightning_glif.models.common`."""

from .encoding import check_image_size, to_time_first
from .memory import (
    SpikeConv2d,
    SpikeLinear,
    SpikingSequential,
    binary_spikes,
    norm_spike,
    spike_conv,
)
from .tdbn import TdBatchNorm
from .time_distributed import TimeDistributed

__all__ = [
    "SpikeConv2d",
    "SpikeLinear",
    "SpikingSequential",
    "TdBatchNorm",
    "TimeDistributed",
    "binary_spikes",
    "check_image_size",
    "norm_spike",
    "spike_conv",
    "to_time_first",
]
