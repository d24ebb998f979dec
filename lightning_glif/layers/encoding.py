"""Turning a batch from a DataLoader into a time-first sequence ``[T, B, ...]``."""

from __future__ import annotations

import torch
from torch import nn


def to_time_first(x: torch.Tensor, time_steps: int, *, static_rank: int = 4) -> torch.Tensor:
    """Return ``x`` as a time-first sequence of ``time_steps`` steps.

    - A static batch of rank ``static_rank`` (``[B, C, H, W]`` images by default) is repeated
      ``time_steps`` times: the direct encoding (docs/GLIF_SPEC.md section 5), ``[T, B, C, H, W]``.
    - A batch of rank ``static_rank + 1`` is a batch of sequences ``[B, T, ...]`` (event frames
      ``[B, T, P, H, W]``) and is transposed to ``[T, B, ...]``; its T must equal ``time_steps``.

    The repeat is a broadcast view (``expand``), so it costs no memory.
    """
    if x.dim() == static_rank:
        return x.unsqueeze(0).expand(time_steps, *x.shape)
    if x.dim() == static_rank + 1:
        if x.shape[1] != time_steps:
            raise ValueError(
                f"input sequence has {x.shape[1]} time steps (shape {tuple(x.shape)}, read as "
                f"[B, T, ...]) but the model was built for time_steps={time_steps}: set the data's "
                "and the model's time steps to the same value."
            )
        return x.transpose(0, 1)
    raise ValueError(
        f"expected a static batch of rank {static_rank} or a sequence batch [B, T, ...] of rank "
        f"{static_rank + 1}, got shape {tuple(x.shape)}."
    )


def check_image_size(x: torch.Tensor, image_size: int, owner: str, readout: nn.Module) -> None:
    """Raise a ``ValueError`` naming both sizes unless ``x`` (``[..., H, W]``) holds
    ``image_size`` x ``image_size`` images: for a backbone whose ``readout`` is sized from
    ``image_size``, which would otherwise fail with a bare matmul shape error."""
    h, w = x.shape[-2:]
    if (h, w) == (image_size, image_size):
        return
    raise ValueError(
        f"{owner} was built for image_size={image_size} (its readout {readout!r} takes "
        f"{image_size}x{image_size} inputs), but the data gives {h}x{w} images (batch shape "
        f"{tuple(x.shape)}). image_size is copied from the data module: its image_size must be "
        f"the size of the images it serves ({h}; height = width), so fix the data module's "
        "image_size or its resize, or the files if they are not the dataset's originals."
    )
