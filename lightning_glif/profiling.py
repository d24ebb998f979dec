"""Lightning's fixed cost per hook call, taken off the loop: the trainer's profiler when the user
asks for none (Lightning's pass-through one, without its cost per call), and the per-batch hooks
a callback does not define, not called at all.

Lightning wraps every hook call (each callback's, the module's, the strategy's) in
``trainer.profiler.profile(name)``. Its default ``PassThroughProfiler`` does nothing there, but
``profile`` is a ``contextlib.contextmanager``: a generator built, entered and closed per call,
about 1.5 us on a CPU core. A training step calls it about 6 times per callback plus 15 times for
the module and strategy: with the shipped callbacks about 90 calls, 0.15 ms a step, which is 3% of
a row-digits step (benchmarks/loop_overhead.py). :class:`NoOpProfiler` returns one shared no-op
context instead. A profiler the user configures (``--trainer.profiler simple``) is kept as is.

Lightning also calls each of the ten per-batch hooks (``on_train_batch_start``, ...,
``on_before_zero_grad``) of every callback at every step, the base class's empty ones included:
with the 13 callbacks of a shipped run, about 100 calls a step, of which a dozen do something,
each a few microseconds of dispatch (``getattr``, the profiler's name built from the callback's
``state_key``, the call). Its dispatcher skips a hook that is not callable
(``pytorch_lightning.trainer.call._call_callback_hooks``): :func:`skip_empty_batch_hooks` sets
the empty ones to ``None`` on each callback instance, so they are never dispatched. It does the
same with ``ModelCheckpoint.on_train_batch_end`` (``LastCheckpoint`` included) where the
checkpoint saves per epoch only (no ``every_n_train_steps``, no ``train_time_interval``): there
that hook returns without doing anything, after Lightning has built the profiler name from the
checkpoint's ``state_key`` (a repr of its settings) and the hook has checked the trainer state.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
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


# The hooks Lightning calls once or more per batch (the others run once per epoch or stage).
BATCH_HOOKS = (
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
)  # fmt: skip


def skip_empty_batch_hooks(trainer: Trainer) -> Trainer:
    """Set each per-batch hook of ``trainer.callbacks`` that its class inherits unchanged from
    ``Callback`` (an empty method) to ``None`` on the instance, which Lightning's dispatcher
    skips; a hook the class or one of its bases defines is kept, but for a ``ModelCheckpoint``'s
    ``on_train_batch_end`` where it does nothing (:func:`saves_per_epoch_only`). Returns
    ``trainer``."""
    for callback in trainer.callbacks:
        for name in BATCH_HOOKS:
            if getattr(type(callback), name, None) is getattr(Callback, name):
                setattr(callback, name, None)
        if saves_per_epoch_only(callback):
            callback.on_train_batch_end = None
    return trainer


def saves_per_epoch_only(callback: Callback) -> bool:
    """Whether ``callback`` is a ``ModelCheckpoint`` whose ``on_train_batch_end`` is Lightning's
    and returns at once: no ``every_n_train_steps`` and no ``train_time_interval`` (read from
    the attributes its constructor sets; where they are missing, as in another Lightning
    version, False, so the hook is kept)."""
    hook = getattr(type(callback), "on_train_batch_end", None)
    if not isinstance(callback, ModelCheckpoint) or hook is not ModelCheckpoint.on_train_batch_end:
        return False
    steps = getattr(callback, "_every_n_train_steps", None)
    interval = getattr(callback, "_train_time_interval", True)
    return isinstance(steps, int) and steps < 1 and interval is None
