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
    """scikit-learn's 1,797 digits, read once per process: ``(images, labels)``, images float32
    ``[N, 8, 8]`` in ``[0, 1]`` (the 0..16 pixel counts / 16, exact in float32), labels int64
    ``0..9``, in ``load_digits()`` row order.

    The one reader of the digits for the static, row and event digits, so all three see the same
    data. Both arrays are shared by every caller and read-only (writing raises): copy to change.
    """
    from sklearn.datasets import load_digits  # on first use: slow to import

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


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
        if not (
            0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1
        ):
            raise ValueError(  # at construction, so a bad config fails early
                f"{type(self).__name__}: val_fraction and test_fraction must be in (0, 1) and sum "
                f"to less than 1, got {val_fraction} and {test_fraction}."
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.indices: dict[str, np.ndarray] = {}  # rows of load_digits() in each split

    def inputs(self) -> tuple[torch.Tensor, np.ndarray]:
        """``(inputs [N, ...], labels [N])`` of all the digits in ``load_digits()`` order: the
        images ``[N, 1, 8, 8]``. The row and event digits serve other inputs, the same split."""
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
