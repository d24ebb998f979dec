"""The base of every DataModule: batch options, loaders over its splits, values for the model."""

from __future__ import annotations

import math
import os
from typing import ClassVar

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

# What a DataModule may know about its inputs, in the names the model and the backbones use.
SHARED_NAMES = ("num_classes", "time_steps", "in_channels", "image_size", "in_features")

# The default workers of the modules that read files: the CPUs this process may use, at most 4
# (more workers than CPUs only compete for them, and DataLoader warns every epoch).
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
LOADER_WORKERS = min(4, CPUS or 1)


class SplitDataModule(LightningDataModule):
    """A DataModule whose ``setup`` fills ``self.datasets`` with ``"train"``, ``"val"`` and
    ``"test"`` splits; this class serves them (``predict`` runs on the test split).
    ``drop_last_train`` drops the last, smaller training batch.

    The CLI builds the DataModule while it parses (``__init__`` must stay cheap: read files in
    ``setup``) and copies its :meth:`shared_values` into ``model.num_classes`` and the backbone's
    arguments of the same names, so each is set once, by the data. A subclass sets those it
    determines as class or instance attributes (absent or ``None``: not shared):
    ``num_classes`` always; ``time_steps`` where T is a data argument; ``in_channels`` and
    ``image_size`` (height = width) for image-like inputs; ``in_features`` for sequences.

    Args:
        batch_size: samples per batch, in every split (>= 1).
        num_workers: DataLoader worker processes (>= 0; 0 loads in the main process).
    """

    drop_last_train: ClassVar[bool] = False
    num_classes: ClassVar[int]

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        owner = type(self).__name__
        if batch_size < 1:
            raise ValueError(f"{owner}: batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(
                f"{owner}: num_workers must be >= 0 (0 loads in the main process), "
                f"got {num_workers}."
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}

    def shared_values(self) -> dict[str, int]:
        """The values among :data:`SHARED_NAMES` this data determines, e.g. ``{"num_classes":
        10, "in_channels": 1, "image_size": 8}`` for the digits."""
        if getattr(self, "num_classes", None) is None:
            raise TypeError(
                f"{type(self).__name__} must set the class attribute num_classes (the number of "
                "labels it serves), which the model's classifier is built for."
            )
        values = {name: getattr(self, name, None) for name in SHARED_NAMES}
        return {name: int(value) for name, value in values.items() if value is not None}

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and self.drop_last_train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        # With drop_last_train, a split smaller than one batch per device has no batch at all:
        # Lightning would skip training with a warning and exit 0.
        trainer = getattr(self, "trainer", None)
        devices = trainer.world_size if trainer is not None else 1
        n = len(self.datasets["train"])
        per_device = math.ceil(n / devices)  # what a DistributedSampler gives each device
        if self.drop_last_train and per_device < self.batch_size:
            on = f" ({per_device} on each of {devices} devices)" if devices > 1 else ""
            raise ValueError(
                f"{type(self).__name__}: the training split has {n} samples{on}, fewer than one "
                f"batch (batch_size {self.batch_size}), and this data drops the last incomplete "
                "training batch (drop_last_train), so no training batch is left. Lower "
                f"batch_size (--data.init_args.batch_size {max(1, per_device)}) or train on more "
                "samples (a smaller val_size, where the data has one)."
            )
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
