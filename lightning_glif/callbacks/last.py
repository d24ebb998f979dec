"""``last.ckpt``, the run's resume point, written at the end of the epochs that need it."""

from __future__ import annotations

from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_glif.callbacks.budget import TimeBudget


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for ``<run dir>/checkpoints/last.ckpt`` (no monitor, one
    file, replaced atomically), written at the end of a training epoch when one of these holds:

    - it is the first epoch of this process (which also measures what a write costs);
    - another checkpoint was written at this step (an epoch that is kept, e.g. a new best on
      ``val/acc``): ``last.ckpt`` is then never older than the best checkpoint;
    - it is the last epoch of the run (``max_epochs``, ``max_steps`` or a requested stop);
    - the wall time since the last write is at least its cost divided by ``budget``
      (:class:`~lightning_glif.callbacks.budget.TimeBudget`).

    With ``budget=0.02`` writing takes at most about 2% of the run: an epoch of a second or more
    gets a write every epoch for checkpoints that take 20 ms or less, and a ``kill -9`` loses at
    most ``cost / budget`` seconds of training more than a write every epoch would (a fraction
    of a second on the embedded runs, whose writes take a few milliseconds). Ctrl-C and SIGTERM
    still write the current state (``InterruptCheckpoint``, which the CLI adds).
    ``budget=None``: every epoch, as a plain ``ModelCheckpoint(filename="last")``.

    Args:
        budget: the largest share of the wall time spent writing ``last.ckpt``, or ``None``.
        filename: the file's name without ``.ckpt``.
        **kwargs: ``ModelCheckpoint``'s other arguments (``dirpath``, ``every_n_epochs``, ...).
    """

    def __init__(self, budget: float | None = 0.02, filename: str = "last", **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(filename=filename, **kwargs)
        self.budget = budget
        self.timer = TimeBudget(1.0 if budget is None else budget)  # a test sets its clock

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.budget is None or self._due(trainer):
            with self.timer.spend():
                super().on_train_epoch_end(trainer, pl_module)

    def _due(self, trainer: Trainer) -> bool:
        kept = any(
            cb is not self and cb._last_global_step_saved == trainer.global_step
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint)
        )
        return kept or self._final_epoch(trainer) or self.timer.due()

    @staticmethod
    def _final_epoch(trainer: Trainer) -> bool:
        epochs, steps = trainer.max_epochs, trainer.max_steps
        return (
            trainer.should_stop
            or (epochs is not None and epochs >= 0 and trainer.current_epoch + 1 >= epochs)
            or (steps is not None and steps > 0 and trainer.global_step >= steps)
        )
