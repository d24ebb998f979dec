"""``last.ckpt``, the run's resume point, written at the end of the epochs that need it."""

from __future__ import annotations

import os
from typing import Any
from weakref import proxy

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_glif.callbacks.budget import TimeBudget
from lightning_glif.io import atomic_link


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for ``<run dir>/checkpoints/last.ckpt`` (no monitor, one
    file, replaced atomically), current at the end of a training epoch when one of these holds:

    - it has not been written yet in this process (the first write measures what one costs);
    - another checkpoint was written at this step (an epoch that is kept, e.g. a new best on
      ``val/acc``): ``last.ckpt`` is then never older than the best checkpoint;
    - it is the last epoch of the run (``max_epochs``, ``max_steps`` or a requested stop);
    - the wall time since the last write is at least its cost divided by ``budget``, the first
      time twice that, so that the write of the last epoch is within the budget too
      (:class:`~lightning_glif.callbacks.budget.TimeBudget`).

    When another ``ModelCheckpoint`` wrote at this step, at the end of this epoch, with the same
    ``save_weights_only``, ``last.ckpt`` becomes a hard link to its file instead of a second
    write of the same state (:func:`lightning_glif.io.atomic_link`; a write where the filesystem
    cannot link). Its state, this callback's own bookkeeping included (the path of
    ``last.ckpt``, also before the first write), is what a write would have stored, so resuming
    from either file is the same.

    With ``budget=0.01`` writing takes at most about 1% of the run: an epoch of a second or more
    gets a write every epoch for checkpoints that take 10 ms or less, and a ``kill -9`` loses at
    most ``cost / budget`` seconds of training more than a write every epoch would (a fraction
    of a second on the embedded runs, whose writes take a few milliseconds). Ctrl-C and SIGTERM
    still write the current state (``InterruptCheckpoint``, which the CLI adds).
    ``budget=None``: every epoch, as a plain ``ModelCheckpoint(filename="last")``.

    Args:
        budget: the largest share of the wall time spent writing ``last.ckpt``, or ``None``.
        filename: the file's name without ``.ckpt``.
        **kwargs: ``ModelCheckpoint``'s other arguments (``dirpath``, ``every_n_epochs``, ...).

    Attributes:
        linked: the epochs whose ``last.ckpt`` is a link to another checkpoint (this process).
    """

    def __init__(self, budget: float | None = 0.01, filename: str = "last", **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(filename=filename, **kwargs)
        self.budget = budget
        # A test sets its clock. reserve=1: the last epoch's write is within the budget.
        self.timer = TimeBudget(1.0 if budget is None else budget, reserve=1)
        self.linked: list[int] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.budget is None or self._due(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        source = self._written_here(trainer)
        if source is None or not self._link(trainer, source, filepath):
            with self.timer.spend():
                super()._save_checkpoint(trainer, filepath)
            return
        self.timer.restart()  # current now; a link is no measure of what a write costs
        self.linked.append(trainer.current_epoch)
        # What ModelCheckpoint._save_checkpoint does after its write (Lightning 2.6).
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def state_dict(self) -> dict[str, Any]:
        # Its path as it is after any write (the name is fixed), also before the first: the
        # state stored by another checkpoint that last.ckpt is then linked to must not say
        # "never written" (a resume would then take last.ckpt for another run's file and write
        # last-v1.ckpt).
        state = super().state_dict()
        if not state.get("best_model_path") and self.dirpath is not None:
            state["best_model_path"] = self.format_checkpoint_name({})
        return state

    def _saved_here(self, trainer: Trainer) -> list[ModelCheckpoint]:
        """The other ModelCheckpoints that wrote at this step (an epoch that is kept)."""
        return [
            cb
            for cb in trainer.checkpoint_callbacks
            if cb is not self
            and isinstance(cb, ModelCheckpoint)
            and cb._last_global_step_saved == trainer.global_step
        ]

    def _written_here(self, trainer: Trainer) -> str | None:
        """The local path another ModelCheckpoint wrote at this step at the end of this epoch
        (the same state as this callback's would be), or ``None``."""
        for cb in self._saved_here(trainer):
            path = str(getattr(cb, "_last_checkpoint_saved", "") or "")
            if (
                path
                and "://" not in path
                and cb.save_weights_only == self.save_weights_only
                and cb._should_save_on_train_epoch_end(trainer)
            ):
                return path
        return None

    @staticmethod
    def _link(trainer: Trainer, source: str, filepath: str) -> bool:
        """Link on global rank 0 (the one that writes files); every rank learns whether it did,
        so that all of them write otherwise (a write is collective)."""
        done = trainer.is_global_zero and os.path.isfile(source) and atomic_link(source, filepath)
        return bool(trainer.strategy.broadcast(done))

    def _due(self, trainer: Trainer) -> bool:
        kept = bool(self._saved_here(trainer))
        return kept or self._final_epoch(trainer) or self.timer.due()

    @staticmethod
    def _final_epoch(trainer: Trainer) -> bool:
        epochs, steps = trainer.max_epochs, trainer.max_steps
        return (
            trainer.should_stop
            or (epochs is not None and epochs >= 0 and trainer.current_epoch + 1 >= epochs)
            or (steps is not None and steps > 0 and trainer.global_step >= steps)
        )
