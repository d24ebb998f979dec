"""``predict`` writes what it predicted into the run directory: ``predictions.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from lightning_glif.io import atomic_open

FILENAME = "predictions.pt"


class PredictionWriter(BasePredictionWriter):
    """Saves the predictions of ``trainer.predict`` as ``<run dir>/predictions.pt`` (the run
    directory is ``trainer.log_dir``; under DDP each rank writes ``predictions.rank<r>.pt`` with
    its share of the samples).

    The file is a dict of tensors (``torch.load(path, weights_only=True)``), one row per sample
    in the predict dataloader's order (the data modules' test split, unshuffled):

    - ``logits`` ``[N, num_classes]``: the time-averaged logits (``SpikingClassifier.forward``);
    - ``predicted`` ``[N]``: the predicted class, ``logits.argmax(1)``;
    - ``target`` ``[N]``: the label, when the batches carry one (``(x, y)``).

    Lightning's writer, written per batch (only the batch's logits and labels are kept, on the
    device, so no batch waits for a copy to the host) and saved once at the end of the epoch,
    with a line saying where (Lightning's info log). The CLI adds it to every run; it does
    nothing outside ``predict``.
    """

    def __init__(self, filename: str = FILENAME) -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.path: Path | None = None  # where the last predict wrote

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._logits, self._targets = [], []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
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
        name = self.filename
        if trainer.world_size > 1:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}.rank{trainer.global_rank}{dot}{ext}" if dot else f"{name}.rank"
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / name
        with atomic_open(self.path) as f:
            torch.save(out, f)
        rank_zero_info(f"predict: {len(logits)} predictions written to {self.path}")
        self._logits, self._targets = [], []
