"""LightningDataModules yielding ``(inputs float32, labels int64)``: images ``[B, C, H, W]`` or
sequences ``[B, T, ...]``. Nothing downloads unless ``download=True`` is passed. The event
modules are imported on first use: they need Tonic (GPL-3.0), which this package does not load.
"""

from importlib import import_module
from typing import Any

from .base import SplitDataModule
from .digits import DigitsDataModule
from .errors import CorruptFileError, DatasetNotFoundError
from .sequential import RowDigitsDataModule
from .vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
)

# name -> the module that defines it, imported when the name is first used (PEP 562)
EVENT_DATA = {
    "EventDigits": "emulator",
    "EventDigitsDataModule": "emulator",
    "NMNISTDataModule": "neuromorphic",
    "CIFAR10DVSDataModule": "neuromorphic",
    "DVSGestureDataModule": "neuromorphic",
    "SHDDataModule": "neuromorphic",
}


def __getattr__(name: str) -> Any:
    if name in EVENT_DATA:
        return getattr(import_module(f".{EVENT_DATA[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SplitDataModule",
    "DigitsDataModule",
    "RowDigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageNetDataModule",
    *EVENT_DATA,
    "DatasetNotFoundError",
    "CorruptFileError",
]
