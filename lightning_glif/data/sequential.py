"""Row digits: a temporal task where the neuron's dynamics matter. At step t the network sees only
one pixel row, so it must carry what it saw in its membrane (leak, gates, reset)."""

from __future__ import annotations

import numpy as np
import torch

from .digits import DigitsDataModule, load_digit_images


class RowDigitsDataModule(DigitsDataModule):
    """Digits as sequences ``[B, T, 8]`` float32 in ``[0, 1]``, int64 labels: each pixel row
    (top to bottom) occupies ``T // 8`` steps, of which the last ``blank_steps`` are zeros. With
    ``time_steps=32, blank_steps=3`` row ``r`` shows at step ``4 r`` and three zero steps follow,
    so the first row must be kept across 31 steps. The split is ``DigitsDataModule``'s. Made for
    :class:`~lightning_glif.models.mlp.SpikingMLP` (``in_features=8``).

    Args:
        time_steps: sequence length ``T``, a multiple of 8 (the image height).
        blank_steps: zero steps after each shown row, ``0 <= blank_steps < T // 8`` (0: every
            step shows a row).
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
