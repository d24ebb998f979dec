"""LightningDataModules: embedded (no download), torchvision and Tonic datasets.

Every module yields ``(inputs, labels int64)``: static images ``[B, C, H, W]`` or sequences
``[B, T, ...]`` float32. Nothing downloads unless ``download=True`` is passed.
"""

from .base import SplitDataModule
from .digits import DigitsDataModule
from .emulator import EventDigits, EventDigitsDataModule
from .errors import CorruptFileError, DatasetNotFoundError
from .neuromorphic import (
    CIFAR10DVSDataModule,
    DVSGestureDataModule,
    NMNISTDataModule,
    SHDDataModule,
)
from .sequential import RowDigitsDataModule
from .vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
)

__all__ = [
    "SplitDataModule",
    "DigitsDataModule",
    "RowDigitsDataModule",
    "EventDigits",
    "EventDigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageNetDataModule",
    "NMNISTDataModule",
    "CIFAR10DVSDataModule",
    "DVSGestureDataModule",
    "SHDDataModule",
    "DatasetNotFoundError",
    "CorruptFileError",
]
