"""Shared by the monitors: where their values go (scalars to every logger, histograms and images
to a TensorBoardLogger), and the base of the monitors that count what passes through modules."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial, partialmethod
from typing import Any, Literal

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.data import extract_batch_size
from torch import nn
from torch.utils.tensorboard import SummaryWriter

Stage = Literal["train", "val", "test"]
STAGES: tuple[str, ...] = ("train", "val", "test")
_WARNED: set[tuple[int, str]] = set()  # (trainer id, message) of summary_writer's warnings


def log_scalars(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
    """Send scalars to every logger of the trainer through ``log_metrics`` (on global rank 0)."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step)


def summary_writer(trainer: Trainer, owner: str) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's first TensorBoardLogger (on global rank 0), or
    ``None``, saying once per run what ``owner`` then skips."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    if trainer.fast_dev_run:  # fast_dev_run mutes the loggers on purpose
        return None
    names = ", ".join(type(logger).__name__ for logger in trainer.loggers)
    scalars = f"its scalars still go to {names}" if names else "with no logger, so are its scalars"
    message = (
        f"{owner}: the trainer has no TensorBoardLogger, so its histograms and images are "
        f"skipped; {scalars}. Add pytorch_lightning.loggers.TensorBoardLogger to trainer.logger "
        "to get them."
    )
    if (id(trainer), message) not in _WARNED:  # once a run (Python's filter would repeat it)
        _WARNED.add((id(trainer), message))
        rank_zero_warn(message)
    return None


class ForwardHookMonitor(Callback):
    """Base of the monitors that observe modules with forward hooks.

    The hooks count only inside the batches of ``stages`` (not in the sanity check, not in a
    forward run by hand). Each monitored epoch starts from zeroed accumulators (:meth:`reset`);
    :meth:`observe` adds to them on the device, under ``torch.no_grad``, with no host read per
    step (tests/test_host_reads.py); :meth:`report` sums them over the DDP ranks
    (``trainer.strategy.reduce``) and, on global rank 0, logs them (:meth:`publish`).

    Args:
        stages: the loops to monitor, any of ``"train"``, ``"val"``, ``"test"``.
        train_every_n_batches: observe the training batches whose ``batch_idx`` is a multiple
            of this (validation and test batches: all). :attr:`samples` counts observed samples.

    Attributes:
        last: per stage, the scalars of its latest report, ``{tag: value}`` (global rank 0).
    """

    def __init__(self, stages: Sequence[Stage], train_every_n_batches: int = 1) -> None:
        stages = tuple(stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(
                f"{type(self).__name__}: stages must be a non-empty subset of {STAGES}, "
                f"got {list(stages)}."
            )
        if type(train_every_n_batches) is not int or train_every_n_batches < 1:
            raise ValueError(
                f"{type(self).__name__}: train_every_n_batches must be an integer >= 1 (1: every "
                f"training batch), got {train_every_n_batches!r}."
            )
        self.stages = stages
        self.train_every_n_batches = train_every_n_batches
        self._stage: str | None = None
        self._open: set[str] = set()  # the stages whose accumulators this epoch has reset
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.samples: dict[str, int] = {}
        self.last: dict[str, dict[str, float]] = {}

    def select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        """The modules to hook, keyed by their name in ``pl_module.named_modules()``."""
        raise NotImplementedError

    def reset(self, stage: str, pl_module: LightningModule) -> None:
        """Zero the accumulators of ``stage`` (on ``pl_module.device``)."""
        raise NotImplementedError

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        """Add one forward call of module ``name`` to the accumulators of ``stage``."""
        raise NotImplementedError

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Reduce the accumulators of ``stage`` over the ranks and log them (rank 0)."""
        raise NotImplementedError

    def publish(self, trainer: Trainer, stage: str, scalars: dict[str, float]) -> None:
        """Log ``scalars`` at the global step and keep them as ``last[stage]`` (rank 0)."""
        self.last[stage] = dict(scalars)
        log_scalars(trainer, scalars, trainer.global_step)

    def _hook(self, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if self._stage is not None:
            with torch.no_grad():
                self.observe(self._stage, name, module, inputs, output)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Once per run, after configure_model and the move to the device.
        if not self._handles:
            for name, module in self.select(pl_module).items():
                self._handles.append(module.register_forward_hook(partial(self._hook, name)))

    on_validation_start = on_test_start = on_fit_start

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stage = None
        self._open.clear()

    def _batch_start(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, batch: Any, batch_idx: int
    ) -> None:
        if stage in self.stages and stage not in self._open:
            # A run resumed mid-epoch gets no on_train_epoch_start: its epoch opens here.
            self._epoch_start(stage, trainer, pl_module)
        sampled = stage != "train" or batch_idx % self.train_every_n_batches == 0
        if sampled and stage in self.stages and not trainer.sanity_checking:
            self._stage = stage
            self.samples[stage] += extract_batch_size(batch)
        else:
            self._stage = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start(trainer, pl_module, "train", batch, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        self._batch_start(trainer, pl_module, "val", batch, batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, *_) -> None:
        self._batch_start(trainer, pl_module, "test", batch, batch_idx)

    def on_train_batch_end(self, *_: Any) -> None:
        self._stage = None  # a forward between batches is not counted

    on_validation_batch_end = on_test_batch_end = on_train_batch_end

    def _epoch_start(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if stage in self.stages:
            self._open.add(stage)
            self.samples[stage] = 0
            self.reset(stage, pl_module)

    def _epoch_end(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stage = None
        if stage in self._open and not trainer.sanity_checking:
            self.report(trainer, pl_module, stage)
        self._open.discard(stage)

    # Lightning calls the hooks by name: one function each for the three loops.
    on_train_epoch_start = partialmethod(_epoch_start, "train")
    on_validation_epoch_start = partialmethod(_epoch_start, "val")
    on_test_epoch_start = partialmethod(_epoch_start, "test")
    on_train_epoch_end = partialmethod(_epoch_end, "train")
    on_validation_epoch_end = partialmethod(_epoch_end, "val")
    on_test_epoch_end = partialmethod(_epoch_end, "test")
