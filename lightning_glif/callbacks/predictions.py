"""``predict`` writes what it predicted into the run directory: ``predictions.pt``."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from lightning_glif.io import atomic_open

FILENAME = "predictions.pt"


class PredictionWriter(BasePredictionWriter):
    """Saves what ``trainer.predict`` returns as ``<trainer.log_dir>/predictions.pt`` (under DDP,
    ``predictions.rank<r>.pt`` per rank), once at the epoch's end (batches stay on the device).

    A dict of tensors (``torch.load(path, weights_only=True)``), one row per sample in the
    predict dataloader's order (the test split, unshuffled): ``logits`` ``[N, num_classes]``
    (time-averaged), ``predicted`` ``[N]`` (``logits.argmax(1)``) and, when the batches carry
    labels, ``target`` ``[N]``. The CLI adds it to every run.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.path: Path | None = None  # where the last predict wrote

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._logits, self._targets = [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, *_) -> None:
        self._logits.append(torch.as_tensor(prediction).detach().float())
        if isinstance(batch, list | tuple) and len(batch) > 1 and torch.is_tensor(batch[1]):
            self._targets.append(batch[1].detach())

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        if not self._logits:
            return
        logits = torch.cat(self._logits).cpu()
        out = {"logits": logits, "predicted": logits.argmax(1)}
        if len(self._targets) == len(self._logits):
            out["target"] = torch.cat(self._targets).cpu()
        name = FILENAME if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.pt"
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / name
        with atomic_open(self.path) as f:
            torch.save(out, f)
        rank_zero_info(f"predict: {len(logits)} predictions written to {self.path}")
        self._logits, self._targets = [], []
