"""Row digits: scikit-learn's 8x8 digits shown one pixel row per time step.

A temporal task where the neuron's dynamics matter: at step t the network sees only row t, so it
must carry what it saw earlier in its membrane (leak, gates, reset) to tell the digits apart.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .base import SplitDataModule
from .digits import load_digit_images
from .splits import check_fractions, stratified_split


class RowDigitsDataModule(SplitDataModule):
    """Digits as sequences ``[B, T, 8]`` float32 in ``[0, 1]``: step ``t`` is pixel row
    ``t * 8 // T`` (top to bottom) of the 8x8 image, so ``T = 8`` shows one row per step and
    ``T = 16`` holds each row for two steps. Labels are int64 in ``0..9``; no download.

    The split is that of ``DigitsDataModule`` with the same fractions and ``split_seed`` (1,257 /
    270 / 270 digits by default). Made for :class:`~lightning_glif.models.mlp.SpikingMLP`
    (``in_features=8``).

    Args:
        time_steps: sequence length ``T``, a multiple of 8 (the image height).
        batch_size: sequences per batch.
        val_fraction: share of the digits held out for validation.
        test_fraction: share of the digits held out for the final test.
        split_seed: seed of the stratified split.
        num_workers: DataLoader worker processes (0: the data lives in memory).
    """

    num_classes = 10
    in_features = 8

    def __init__(
        self,
        time_steps: int = 8,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if time_steps < 8 or time_steps % 8:
            raise ValueError(
                f"RowDigitsDataModule: time_steps must be a multiple of 8 (one or more steps per "
                f"row of the 8x8 digits), got {time_steps}."
            )
        check_fractions(type(self).__name__, val_fraction, test_fraction)
        self.time_steps = time_steps
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pixels, targets = load_digit_images()
        rows = torch.tensor(pixels)  # [N, 8 rows, 8 pixels], a copy of the read-only arrays
        rows = rows.repeat_interleave(self.time_steps // 8, dim=1)  # [N, T, 8]
        labels = torch.tensor(targets)
        splits = stratified_split(targets, self.val_fraction, self.test_fraction, self.split_seed)
        for name, index in splits.items():
            index = torch.from_numpy(index)
            self.datasets[name] = TensorDataset(rows[index], labels[index])
