"""Fixed, seeded index splits, as sorted index arrays: every split of the data modules."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.model_selection import train_test_split


def _split(
    index: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's stratified ``train_test_split`` of ``index``, in its (shuffled) order."""
    try:
        return train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as err:
        raise ValueError(
            f"cannot hold out a stratified {fraction:.0%} of {len(labels)} samples with "
            f"{len(np.unique(labels))} classes ({err}); use a larger dataset or another fraction."
        ) from err


# Two hold-out algorithms, neither replaceable by the other without moving published splits: a
# stratified fraction (the digits and event data, via scikit-learn) and a count drawn from
# torch's permutation (the torchvision modules, whose indices reproduction runs rely on).
def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(kept, held_out)``, stratified by label: ``held_out``
    holds ``ceil(fraction * n)`` indices drawn with ``seed``, the same on every machine."""
    labels = np.asarray(labels)
    kept, held_out = _split(np.arange(len(labels)), labels, fraction, seed)
    return np.sort(kept), np.sort(held_out)


def random_holdout(
    n: int, size: int, seed: int, name: str = "size"
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into ``(kept, held_out)``, not stratified: ``held_out`` is the first
    ``size`` entries of ``torch.randperm(n)`` under ``torch.Generator().manual_seed(seed)``, the
    same on every machine. ``name`` is the option that set ``size``, for the error message."""
    if not 0 < size < n:
        raise ValueError(
            f"{name} must be in (0, {n}) for {n} samples, got {size}: hold out at least one "
            f"sample and keep at least one (a {name} between 1 and {n - 1})."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[size:]), np.sort(order[:size])


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Train / val / test indices, stratified by label (``DigitsDataModule``'s): first
    ``val_fraction + test_fraction`` is held out, then that part, in the order scikit-learn
    returned it, is divided into val and test, both with ``seed``."""
    labels = np.asarray(labels)
    held_out = val_fraction + test_fraction
    train, rest = _split(np.arange(len(labels)), labels, held_out, seed)
    val, test = _split(rest, labels[rest], test_fraction / held_out, seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def per_class_head_split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(head, tail)``: the first ``ceil(fraction * n_c)`` indices of each class ``c`` in index
    order, and the rest. No randomness: the CIFAR10-DVS split of the GLIF authors (0.9, their
    ``split_to_train_test_set`` rounds up)."""
    labels = np.asarray(labels)
    head = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        head[members[: math.ceil(fraction * len(members))]] = True
    return np.flatnonzero(head), np.flatnonzero(~head)
