"""The embedded dataset: scikit-learn's 8x8 handwritten digits (shipped with it, no download)."""

from __future__ import annotations

from functools import cache
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import SplitDataModule
from .splits import stratified_split


@cache
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits, read once per process for the static, row and event digits:
    images float32 ``[N, 8, 8]`` in ``[0, 1]`` (pixel counts / 16, exact), labels int64, in
    ``load_digits()`` order. Both arrays are shared and read-only: copy to change them."""
    from sklearn.datasets import load_digits  # on first use: slow to import

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


class DigitsDataModule(SplitDataModule):
    """scikit-learn's 1,797 handwritten digits as ``[B, 1, 8, 8]`` float images in ``[0, 1]``,
    int64 labels, split by class and ``split_seed`` (:func:`~.splits.stratified_split`): 1,257 /
    270 / 270 by default on every machine (``indices``: the rows of ``load_digits()``).

    Args:
        batch_size: samples per batch (all splits).
        val_fraction: share of the digits held out for validation (model selection).
        test_fraction: share of the digits held out for the final test.
        split_seed: seed of the stratified split; independent of the training seed.
        num_workers: DataLoader worker processes (0: the data lives in memory).
    """

    num_classes = 10
    in_channels = 1
    image_size = 8
    dataset_class: ClassVar[type[TensorDataset]] = TensorDataset  # of each split

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                f"{type(self).__name__}: val_fraction and test_fraction must be in (0, 1) and sum "
                f"to less than 1, got {val_fraction} and {test_fraction}."
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.indices: dict[str, np.ndarray] = {}  # rows of load_digits() in each split

    def inputs(self) -> tuple[torch.Tensor, np.ndarray]:
        """``(inputs [N, ...], labels [N])`` in ``load_digits()`` order: here ``[N, 1, 8, 8]``."""
        pixels, targets = load_digit_images()
        return torch.tensor(pixels).unsqueeze(1), targets  # a copy: the shared arrays are read-only

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        inputs, targets = self.inputs()
        labels = torch.tensor(targets)
        self.indices = stratified_split(
            targets, self.val_fraction, self.test_fraction, self.split_seed
        )
        for name, idx in self.indices.items():
            rows = torch.from_numpy(idx)
            self.datasets[name] = self.dataset_class(inputs[rows], labels[rows])
