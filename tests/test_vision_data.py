"""The torchvision DataModules on data fabricated in the real on-disk formats, offline.

MNIST and Fashion-MNIST: the four idx files torchvision reads (``<root>/<class>/raw/``, unpacked,
big-endian headers); ImageNet: an ImageFolder of tiny PNGs. The CIFAR pickles and the missing
CIFAR/ImageNet errors are tested in ``test_configs.py``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from lightning_glif.data import (
    DatasetNotFoundError,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
)

MNIST_LIKE = [MNISTDataModule, FashionMNISTDataModule]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as LeCun's MNIST distribution has it: magic ``0x0000 08 <ndim>`` (unsigned
    bytes), one big-endian uint32 per dimension, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images and labels ``i % 10`` under ``<root>/<folder>/raw/``."""
    rng = np.random.default_rng(0)
    written = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / folder / "raw" / f"{part}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{part}-labels-idx1-ubyte", labels)
        written[f"{part}_images"], written[f"{part}_labels"] = images, labels
    return written


@pytest.mark.parametrize("cls", MNIST_LIKE, ids=lambda c: c.dataset)
def test_mnist_like_splits_batches_and_normalisation(cls, tmp_path):
    written = write_mnist(tmp_path, cls.dataset, n_train=12, n_test=5)
    dm = cls(data_dir=str(tmp_path), batch_size=4, val_size=4, split_seed=1, num_workers=0)
    dm.setup("fit")

    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8, "val": 4, "test": 5}
    train, val = dm.datasets["train"].indices, dm.datasets["val"].indices
    assert sorted(train + val) == list(range(12))  # held out of train, nothing lost
    # The fixed split of published configs: the first val_size of torch's seeded permutation.
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1)).tolist()
    assert val == sorted(order[:4]) and train == sorted(order[4:])
    assert all(type(i) is int for i in val)
    again = cls(data_dir=str(tmp_path), val_size=4, split_seed=1)
    again.setup("fit")
    assert again.datasets["val"].indices == val
    other = cls(data_dir=str(tmp_path), val_size=4, split_seed=2)
    other.setup("fit")
    assert other.datasets["val"].indices != val

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64

    # Evaluation images are the written pixels, normalised with the dataset's own mean/std.
    def normalised(pixels: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(pixels).float() / 255 - dm.mean[0]) / dm.std[0]

    image, label = dm.datasets["val"][0]
    assert torch.allclose(image[0], normalised(written["train_images"][val[0]]), atol=1e-6)
    assert label == val[0] % 10
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 1, 28, 28)
    assert torch.allclose(x[:, 0], normalised(written["t10k_images"][:4]), atol=1e-6)
    assert y.tolist() == [0, 1, 2, 3]


def test_mnist_and_fashion_mnist_differ_where_they_should():
    assert (MNISTDataModule.mean, MNISTDataModule.std) == ((0.1307,), (0.3081,))
    assert (FashionMNISTDataModule.mean, FashionMNISTDataModule.std) == ((0.2860,), (0.3530,))

    def steps(cls) -> list[str]:
        return [type(t).__name__ for t in cls().transforms(train=True).transforms]

    # A mirrored digit is another symbol; a mirrored shirt is a shirt.
    assert steps(MNISTDataModule) == ["RandomCrop", "ToTensor", "Normalize"]
    assert steps(FashionMNISTDataModule) == [
        "RandomCrop",
        "RandomHorizontalFlip",
        "ToTensor",
        "Normalize",
    ]
    assert [type(t).__name__ for t in MNISTDataModule().transforms(train=False).transforms] == [
        "ToTensor",
        "Normalize",
    ]


@pytest.mark.parametrize("cls", MNIST_LIKE, ids=lambda c: c.dataset)
def test_missing_mnist_like_is_one_clear_error(cls, tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        cls(data_dir=str(tmp_path)).setup("fit")
    message = str(error.value)
    assert message.startswith(f"{cls.name} was not found in {tmp_path / cls.dataset}.")
    assert "raw/train-images-idx3-ubyte" in message and "raw/t10k-labels-idx1-ubyte" in message
    assert "--data.init_args.download true" in message and "gunzip" in message
    assert error.value.missing == [
        "raw/train-images-idx3-ubyte",
        "raw/train-labels-idx1-ubyte",
        "raw/t10k-images-idx3-ubyte",
        "raw/t10k-labels-idx1-ubyte",
    ]

    # Half there: only what is missing is listed.
    raw = tmp_path / cls.dataset / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DatasetNotFoundError) as error:
        cls(data_dir=str(tmp_path)).setup("fit")
    assert error.value.missing == ["raw/t10k-images-idx3-ubyte", "raw/t10k-labels-idx1-ubyte"]


def test_mnist_downloads_only_when_asked(tmp_path, monkeypatch):
    calls = []

    def fake_download(dataset):  # stands in for the network: writes what the mirror would
        calls.append(dataset.train)
        write_mnist(Path(dataset.root), "MNIST", n_train=12, n_test=3)

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    assert calls == []
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True, val_size=2, num_workers=0)
    dm.prepare_data()
    assert calls == [True, False]
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 10, "val": 2, "test": 3}


def write_image_folder(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    """``root/<class>/<i>.png``: ``counts[class]`` random RGB PNGs of ``size`` (W, H)."""
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_imagenet_image_folder_batches(tmp_path):
    root = tmp_path / "imagenet"
    write_image_folder(root / "train", {"n01440764": 4, "n01443537": 3}, size=(20, 12))
    write_image_folder(root / "val", {"n01440764": 1, "n01443537": 2}, size=(16, 16))
    dm = ImageNetDataModule(data_dir=str(tmp_path), batch_size=2, val_size=3, num_workers=0)
    dm.setup("fit")

    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 4, "val": 3, "test": 3}
    assert sorted(dm.datasets["train"].indices + dm.datasets["val"].indices) == list(range(7))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0)).tolist()  # split_seed
    assert dm.datasets["val"].indices == sorted(order[:3])
    assert dm.datasets["test"].classes == ["n01440764", "n01443537"]

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]
    # Evaluation (resize 256, centre crop 224) is deterministic; its output is normalised.
    assert torch.equal(dm.datasets["val"][0][0], dm.datasets["val"][0][0])
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    pixels = dm.datasets["test"][0][0] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_val_size_beyond_the_training_images_names_it(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=12, n_test=5)
    with pytest.raises(ValueError, match=r"val_size must be in \(0, 12\) for 12 samples, got 12"):
        MNISTDataModule(data_dir=str(tmp_path), val_size=12).setup("fit")


def test_imagenet_names_the_missing_part(tmp_path):
    write_image_folder(tmp_path / "imagenet" / "train", {"a": 2}, size=(8, 8))
    with pytest.raises(FileNotFoundError, match=r"val/ missing") as error:
        ImageNetDataModule(data_dir=str(tmp_path)).setup("fit")
    assert "train/ and" not in str(error.value)


def test_imagenet_under_another_case_is_pointed_out(tmp_path):
    """The folder is imagenet/ (lowercase), as the code reads it; ImageNet/ is another folder on
    a case-sensitive filesystem, and the error says so."""
    write_image_folder(tmp_path / "ImageNet" / "train", {"a": 1}, size=(8, 8))
    write_image_folder(tmp_path / "ImageNet" / "val", {"a": 1}, size=(8, 8))
    if (tmp_path / "imagenet").is_dir():
        pytest.skip("case-insensitive filesystem: ImageNet/ is imagenet/")
    with pytest.raises(FileNotFoundError) as error:
        ImageNetDataModule(data_dir=str(tmp_path)).setup("fit")
    message = str(error.value)
    assert f"ImageNet was not found in {tmp_path / 'imagenet'}: train/ and val/ missing" in message
    assert message.endswith(f"({tmp_path} has ImageNet/: rename it to imagenet/.)")
