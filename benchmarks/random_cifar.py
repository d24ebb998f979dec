"""CIFAR-10's shapes and classes, with random images and labels made in memory: the data of the GPU
check's ``precision`` part (``benchmarks/gpu_check.py``), which checks the mixed-precision plumbing
of ``train.py fit``, not learning. No files, nothing to download:

    python train.py fit --config conf/experiment/cifar10_resnet19_t6.yaml \\
        --data benchmarks.random_cifar.RandomCIFAR10 --trainer.max_epochs 1

A module of its own (not inside ``gpu_check.py``) so that importing ``gpu_check`` stays free of
Lightning, which imports Triton: the CPU correctness part must set ``TRITON_INTERPRET=1`` first.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from lightning_glif.data.base import SplitDataModule


class RandomCIFAR10(SplitDataModule):
    """``[B, 3, 32, 32]`` standard-normal images (what CIFAR-10 is after its normalisation) with
    uniform labels ``0..9``; ``val_size`` of the ``samples`` are held out for validation and also
    serve as the test split.

    Args:
        samples: images in all, ``val_size`` included.
        val_size: images held out for validation.
        batch_size: training batch size.
        num_workers: DataLoader worker processes.
        seed: seed of the images and labels.
    """

    num_classes = 10
    in_channels = 3
    image_size = 32

    def __init__(
        self,
        samples: int = 640,
        val_size: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not 0 < val_size < samples:
            raise ValueError(
                f"RandomCIFAR10 needs 0 < val_size < samples, got val_size={val_size} and "
                f"samples={samples}: hold out fewer images, or make more."
            )
        self.samples = samples
        self.val_size = val_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        g = torch.Generator().manual_seed(self.seed)
        images = torch.randn(self.samples, 3, 32, 32, generator=g)
        labels = torch.randint(0, self.num_classes, (self.samples,), generator=g)
        held_out = TensorDataset(images[: self.val_size], labels[: self.val_size])
        train = TensorDataset(images[self.val_size :], labels[self.val_size :])
        self.datasets = {"train": train, "val": held_out, "test": held_out}
