"""The trainer's profiler when the user asks for none: Lightning's pass-through one, without its
cost per call.

Lightning wraps every hook call (each callback's, the module's, the strategy's) in
``trainer.profiler.profile(name)``. Its default ``PassThroughProfiler`` does nothing there, but
``profile`` is a ``contextlib.contextmanager``: a generator built, entered and closed per call,
about 1.5 us on a CPU core. A training step calls it about 6 times per callback plus 15 times for
the module and strategy: with the shipped callbacks about 90 calls, 0.15 ms a step, which is 3% of
a row-digits step (benchmarks/loop_overhead.py). :class:`NoOpProfiler` returns one shared no-op
context instead. A profiler the user configures (``--trainer.profiler simple``) is kept as is.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from pytorch_lightning import Trainer
from pytorch_lightning.profilers import PassThroughProfiler

_NOTHING = nullcontext()


class NoOpProfiler(PassThroughProfiler):
    """``PassThroughProfiler`` whose :meth:`profile` returns a shared ``nullcontext``."""

    def profile(self, action_name: str) -> AbstractContextManager:
        return _NOTHING


def with_no_op_profiler(trainer: Trainer) -> Trainer:
    """Give ``trainer`` a :class:`NoOpProfiler` if it has Lightning's default profiler (exactly a
    ``PassThroughProfiler``, which ``profiler=None`` gives); return it."""
    if type(trainer.profiler) is PassThroughProfiler:
        trainer.profiler = NoOpProfiler()
    return trainer
