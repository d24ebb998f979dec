"""Shared by the monitors: where their values go (every logger's ``log_metrics``; histograms and
images to a TensorBoardLogger), and the base of the monitors that count what passes through
modules: forward hooks active only inside the batches of chosen stages, per-epoch accumulators
on the device, one all-reduce and one read per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
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
    """Send scalars to every logger of the trainer (TensorBoard, CSV, ...) through its public
    ``log_metrics``. Call it on global rank 0 only, as loggers write there."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step)


def summary_writer(trainer: Trainer, owner: str) -> SummaryWriter | None:
    """The SummaryWriter of the trainer's first TensorBoardLogger, for histograms and images;
    ``None`` where there is none: say once what is skipped (the scalars still reach the other
    loggers; with no logger at all, nothing is written). Call it on global rank 0 only: other
    ranks hold a dummy experiment."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    if trainer.fast_dev_run:  # fast_dev_run mutes the loggers on purpose
        return None
    if trainer.loggers:
        names = ", ".join(type(logger).__name__ for logger in trainer.loggers)
        message = (
            f"{owner}: the trainer has no TensorBoardLogger, so its histograms and images are "
            f"skipped; its scalars still go to {names}. Add "
            "pytorch_lightning.loggers.TensorBoardLogger to trainer.logger to get them."
        )
    else:
        message = (
            f"{owner}: the trainer has no logger, so nothing it measures is written (its latest "
            "scalars stay in its .last). Set trainer.logger to get them."
        )
    if (id(trainer), message) not in _WARNED:  # once a run (Python's filter would repeat it)
        _WARNED.add((id(trainer), message))
        rank_zero_warn(message)
    return None


class ForwardHookMonitor(Callback):
    """Base of the monitors that observe module outputs with forward hooks.

    The hooks are registered when fitting, validation or testing starts and removed in
    ``teardown``. They do nothing outside the batches of ``stages`` (and during the sanity
    check), so a forward pass a user runs by hand, or a stage that is not monitored, is not
    counted. Each monitored epoch starts from zeroed
    accumulators (:meth:`reset`) and ends with :meth:`report`, where subclasses sum their
    accumulators over the DDP ranks with :meth:`all_sum` and, on global rank 0, hand the
    scalars to :meth:`publish`, which logs them and keeps them in :attr:`last`. Hooks run under
    ``torch.no_grad`` and should only add to accumulators that live on the device: no host
    synchronisation per step (tests/test_host_reads.py checks the shipped monitors).

    Subclasses implement :meth:`select`, :meth:`reset`, :meth:`observe` and :meth:`report`.

    Args:
        stages: the loops to monitor, any of ``"train"``, ``"val"``, ``"test"``.
        train_every_n_batches: observe one training batch in this many (those whose
            ``batch_idx`` is a multiple of it, the first of each epoch included); validation and
            test batches are always all observed. :attr:`samples` counts the observed batches
            only, so per-sample figures stay unbiased estimates.

    Attributes:
        last: per stage, the scalars of its latest report, ``{tag: value}`` (tags from
            :mod:`lightning_glif.training.tags`), so callers read them without parsing event files.
            Filled on global rank 0 only; replaced, not merged, at each report of the stage.
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
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.samples: dict[str, int] = {}
        self.last: dict[str, dict[str, float]] = {}

    # -- what subclasses define ------------------------------------------------------------------
    def select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        """The modules to hook, keyed by their name in ``pl_module.named_modules()``."""
        raise NotImplementedError

    def reset(self, stage: str, pl_module: LightningModule) -> None:
        """Zero the accumulators of ``stage`` (on ``pl_module.device``)."""
        raise NotImplementedError

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        """Add what one forward call of module ``name`` did to the accumulators of ``stage``."""
        raise NotImplementedError

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Reduce the accumulators of ``stage`` over the ranks and log them (rank 0)."""
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------------------------
    def publish(self, trainer: Trainer, stage: str, scalars: dict[str, float]) -> None:
        """Log ``scalars`` at the global step and keep them as ``last[stage]`` (rank 0)."""
        self.last[stage] = dict(scalars)
        log_scalars(trainer, scalars, trainer.global_step)

    @staticmethod
    def all_sum(trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes (every rank must call this, in the same order)."""
        if trainer.world_size > 1:
            tensor = trainer.strategy.reduce(tensor, reduce_op="sum")
        return tensor

    def _hook(self, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if self._stage is None:
            return
        with torch.no_grad():
            self.observe(self._stage, name, module, inputs, output)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _attach(self, pl_module: LightningModule) -> None:
        """Hook the selected modules once per run (after ``configure_model`` and the move to the
        device, so late-built layers are found and the accumulators live where the model is)."""
        if self._handles:
            return
        for name, module in self.select(pl_module).items():
            self._handles.append(module.register_forward_hook(partial(self._hook, name)))
        for s in self.stages:
            self._reset(s, pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._attach(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._attach(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._attach(pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._stage = None

    def _reset(self, stage: str, pl_module: LightningModule) -> None:
        self.samples[stage] = 0
        self.reset(stage, pl_module)

    def _batch_start(self, trainer: Trainer, stage: str, batch: Any, batch_idx: int) -> None:
        sampled = stage != "train" or batch_idx % self.train_every_n_batches == 0
        if sampled and stage in self.stages and not trainer.sanity_checking:
            self._stage = stage
            self.samples[stage] += extract_batch_size(batch)
        else:
            self._stage = None

    def _epoch_start(self, pl_module: LightningModule, stage: str) -> None:
        if stage in self.stages:
            self._reset(stage, pl_module)

    def _epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stage = None
        if stage in self.stages and not trainer.sanity_checking:
            self.report(trainer, pl_module, stage)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start(trainer, "train", batch, batch_idx)

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batch_start(trainer, "val", batch, batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start(trainer, "test", batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stage = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._stage = None

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._stage = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start(pl_module, "train")

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start(pl_module, "test")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end(trainer, pl_module, "test")
