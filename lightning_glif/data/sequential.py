"""Row digits: scikit-learn's 8x8 digits shown one pixel row per time step.

A temporal task where the neuron's dynamics matter: at step t the network sees only row t, so it
must carry what it saw earlier in its membrane (leak, gates, reset) to tell the digits apart.
``blank_steps`` inserts zero steps after each row, so that memory must last tens of steps.
"""

from __future__ import annotations

import numpy as np
import torch

from .digits import DigitsDataModule, load_digit_images


class RowDigitsDataModule(DigitsDataModule):
    """Digits as sequences ``[B, T, 8]`` float32 in ``[0, 1]``: each pixel row of the 8x8 image
    (top to bottom) occupies ``T // 8`` consecutive steps, of which the first
    ``T // 8 - blank_steps`` show the row and the last ``blank_steps`` are zeros. Without blank
    steps, step ``t`` is row ``t * 8 // T``: ``T = 8`` shows one row per step and ``T = 16`` holds
    each row for two steps. Labels are int64 in ``0..9``; no download.

    Blank steps make memory matter over longer spans: with ``time_steps=32, blank_steps=3`` each
    row is shown for 1 step, then 3 blank steps follow (row ``r`` is step ``4 r``, counting from
    0); the last row ends at step 29 (counting from 1; index 28) and 3 blank steps follow, so
    every row must be kept across at least 3 zero steps, the first one across 31.

    The split is that of ``DigitsDataModule`` with the same fractions and ``split_seed`` (1,257 /
    270 / 270 digits by default; ``indices`` holds the rows of ``load_digits()`` in each split),
    whatever ``time_steps`` and ``blank_steps``. Made for
    :class:`~lightning_glif.models.mlp.SpikingMLP` (``in_features=8``).

    Args:
        time_steps: sequence length ``T``, a multiple of 8 (the image height).
        blank_steps: zero steps after each shown row, ``0 <= blank_steps < T // 8`` (0: every
            step shows a row, the layout without blanks).
        batch_size: sequences per batch.
        val_fraction: share of the digits held out for validation.
        test_fraction: share of the digits held out for the final test.
        split_seed: seed of the stratified split.
        num_workers: DataLoader worker processes (0: the data lives in memory).
    """

    in_channels = image_size = None  # sequences, not images
    in_features = 8

    def __init__(
        self,
        time_steps: int = 8,
        blank_steps: int = 0,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, num_workers)
        if time_steps < 8 or time_steps % 8:
            raise ValueError(
                f"RowDigitsDataModule: time_steps must be a multiple of 8 (one or more steps per "
                f"row of the 8x8 digits), got {time_steps}."
            )
        per_row = time_steps // 8
        if not 0 <= blank_steps < per_row:
            fix = (
                "blank_steps counts zero steps: use 0 or more"
                if blank_steps < 0
                else f"lower blank_steps to at most {per_row - 1}, or raise time_steps to "
                f"{8 * (blank_steps + 1)} or more"
            )
            raise ValueError(
                f"RowDigitsDataModule: blank_steps must be in 0..{per_row - 1} (each of the 8 rows "
                f"occupies time_steps // 8 = {per_row} steps, of which at least one shows the "
                f"row), got blank_steps={blank_steps} with time_steps={time_steps}: {fix}."
            )
        self.time_steps = time_steps
        self.blank_steps = blank_steps

    def inputs(self) -> tuple[torch.Tensor, np.ndarray]:
        pixels, targets = load_digit_images()
        pixels = torch.tensor(pixels)  # [N, 8 rows, 8 pixels], a copy of the read-only arrays
        per_row, shown = self.time_steps // 8, self.time_steps // 8 - self.blank_steps
        rows = pixels.new_zeros(len(pixels), 8, per_row, 8)  # [N, row, step within row, pixel]
        rows[:, :, :shown] = pixels.unsqueeze(2)  # the row, then blank_steps zero steps
        return rows.flatten(1, 2), targets  # [N, T, 8]
