"""The DataLoaders every DataModule of the project serves from its in-memory splits."""

from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(LightningDataModule):
    """A DataModule whose ``setup`` fills ``self.datasets`` with ``"train"``, ``"val"`` and
    ``"test"`` splits; this class serves them. ``predict`` runs on the test split.

    Subclasses set ``batch_size`` and ``num_workers`` (and optionally ``eval_batch_size``);
    ``drop_last_train`` drops the last, smaller training batch (the paper's CIFAR/ImageNet loaders).
    """

    drop_last_train: ClassVar[bool] = False
    batch_size: int
    num_workers: int
    eval_batch_size: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else (self.eval_batch_size or self.batch_size),
            shuffle=train,
            drop_last=train and self.drop_last_train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
