"""The embedded dataset: scikit-learn's 8x8 handwritten digits (shipped with it, no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .loaders import SplitDataModule
from .splits import check_fractions, stratified_split


class DigitsDataModule(SplitDataModule):
    """scikit-learn's 1,797 handwritten digits as ``[B, 1, 8, 8]`` float images in ``[0, 1]``.

    The split is stratified by class and fixed by ``split_seed``
    (:func:`~lightning_glif.data.splits.stratified_split`, shared with the row and event digits):
    with the default fractions it is 1,257 train / 270 validation / 270 test images, the same on
    every machine (``indices`` holds the rows of ``load_digits()`` in each split). Labels are
    ``int64`` in ``0..9``. ``predict`` runs on the test split.

    Args:
        batch_size: images per batch (all splits).
        val_fraction: share of the images held out for validation (model selection).
        test_fraction: share of the images held out for the final test.
        split_seed: seed of the stratified split; independent of the training seed.
        num_workers: DataLoader worker processes (0 loads in the main process: the data lives
            in memory, so workers only pay off for heavy augmentation).
    """

    num_classes = 10
    in_channels = 1
    image_size = 8

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_fractions(type(self).__name__, val_fraction, test_fraction)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.indices: dict[str, np.ndarray] = {}  # rows of load_digits() in each split

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        self.indices = stratified_split(
            digits.target, self.val_fraction, self.test_fraction, self.split_seed
        )
        for name, idx in self.indices.items():
            rows = torch.from_numpy(idx)
            self.datasets[name] = TensorDataset(images[rows], labels[rows])
