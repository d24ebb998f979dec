"""The torchvision DataModules on data fabricated in the real on-disk formats, offline.

MNIST and Fashion-MNIST: the four idx files torchvision reads (``<root>/<class>/raw/``, unpacked,
big-endian headers); CIFAR-10: the pickled batches of its python version; ImageNet: an
ImageFolder of tiny PNGs. The missing CIFAR/ImageNet errors are tested in ``test_configs.py``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from lightning_glif.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptFileError,
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


# -- defaults that fit the user's own files and machine -------------------------------------------
def test_a_small_mnist_of_your_own_trains_with_the_defaults(tmp_path):
    """4,000 training images (below the 5,000 a fixed default once held out): the default
    holds out 10%, rounded up, and the loaders use at most the CPUs this process may use."""
    write_mnist(tmp_path, "MNIST", n_train=4000, n_test=10)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 3600, "val": 400, "test": 10}
    order = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).tolist()
    assert dm.datasets["val"].indices == sorted(order[:400])  # the same rule as a count of 400
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert dm.num_workers == min(4, cpus) == dm.train_dataloader().num_workers


def test_val_size_as_a_share_rounds_up_and_a_bad_share_is_named(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=12, n_test=5)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=0.3, num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 4  # ceil(0.3 * 12) = ceil(3.6)
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"val_size {share} is a float, a share of the "):
            MNISTDataModule(data_dir=str(tmp_path), val_size=share)


# -- CIFAR: the authors' normalisation, the md5 check and its switch, the last batch --------------
CIFAR10_FILES = {**{f"data_batch_{i}": 8 for i in range(1, 6)}, "test_batch": 6, "batches.meta": 0}


def write_cifar10(root: Path) -> Path:
    """A tiny CIFAR-10 in its python format: pickled dicts, ``data`` uint8 rows ``[N, 3072]``
    (the red, green and blue planes of a 32x32 image), ``labels``; ``batches.meta`` the names."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in CIFAR10_FILES.items():
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        entry = {"data": rows, "labels": [(3 * i) % 10 for i in range(n)]} if n else {}
        (folder / name).write_bytes(pickle.dumps(entry or {"label_names": list("abcdefghij")}))
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_the_fabricated_files(folder: Path, monkeypatch, meta: bool = True) -> None:
    """torchvision's table of the originals' md5 sums, pointed at the fabricated files."""
    names = [name for name, _ in torchvision.datasets.CIFAR10.train_list]
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "train_list", [[n, md5(folder / n)] for n in names]
    )
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]]
    )
    if meta:
        meta_md5 = {**torchvision.datasets.CIFAR10.meta, "md5": md5(folder / "batches.meta")}
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", meta_md5)


def test_cifar_normalisation_is_the_authors():
    """GLIF_SPEC.md section 6, from the authors' data_builder.py: CIFAR-10 as written there,
    CIFAR-100 computed there as 8-bit values / 255 (the spec rounds them to 5 digits)."""
    assert CIFAR10DataModule.mean == (0.4914, 0.4822, 0.4465)
    assert CIFAR10DataModule.std == (0.247, 0.243, 0.261)
    assert CIFAR100DataModule.mean == (129.3 / 255, 124.1 / 255, 112.4 / 255)
    assert CIFAR100DataModule.std == (68.2 / 255, 65.4 / 255, 70.4 / 255)
    assert [round(v, 5) for v in CIFAR100DataModule.mean] == [0.50706, 0.48667, 0.44078]
    assert [round(v, 5) for v in CIFAR100DataModule.std] == [0.26745, 0.25647, 0.27608]


def test_cifar_eval_images_are_normalised_with_the_authors_constants(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path)
    trust_the_fabricated_files(folder, monkeypatch)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), num_workers=0)
    dm.setup("test")
    with open(folder / "test_batch", "rb") as f:
        pixels = pickle.load(f)["data"][2].reshape(3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(3, 1, 1)
    image, label = dm.datasets["test"][2]
    assert label == 6
    torch.testing.assert_close(image, (torch.from_numpy(pixels) / 255 - mean) / std)


def test_only_a_changed_batches_meta_is_named(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path)
    trust_the_fabricated_files(folder, monkeypatch, meta=False)  # the data batches match
    with pytest.raises(CorruptFileError) as error:
        CIFAR10DataModule(data_dir=str(tmp_path), num_workers=0).setup("fit")
    assert error.value.path == folder / "batches.meta"
    message = str(error.value)
    assert message.startswith(f"cannot read {folder / 'batches.meta'}: its md5 is ")
    assert "and so do" not in message and "verify_md5: false" in message


def test_repacked_cifar_is_named_then_read_as_it_is_with_verify_md5_false(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path)
    with pytest.raises(CorruptFileError) as error:
        CIFAR10DataModule(data_dir=str(tmp_path), num_workers=0).setup("fit")
    assert error.value.path == folder / "data_batch_1"
    others = ", ".join([*(f"data_batch_{i}" for i in range(2, 6)), "test_batch", "batches.meta"])
    assert f"(and so do {others})" in str(error.value)
    assert "--data.init_args.verify_md5 false" in str(error.value)

    unverified = CIFAR10DataModule(data_dir=str(tmp_path), num_workers=0, verify_md5=False)
    unverified.setup("fit")
    unverified.setup("test")
    trust_the_fabricated_files(folder, monkeypatch)  # torchvision's own reader, for reference
    verified = CIFAR10DataModule(data_dir=str(tmp_path), num_workers=0)
    verified.setup("fit")
    for split in ("val", "test"):
        ours, theirs = unverified.datasets[split], verified.datasets[split]
        assert len(ours) == len(theirs) > 0
        for i in range(len(ours)):
            assert torch.equal(ours[i][0], theirs[i][0]) and ours[i][1] == theirs[i][1]
    assert unverified.datasets["train"].indices == verified.datasets["train"].indices


@pytest.mark.parametrize("drop_last, sizes", [(False, [8, 8, 8, 8, 4]), (True, [8, 8, 8, 8])])
def test_cifar_keeps_the_last_training_batch_unless_asked(tmp_path, drop_last, sizes):
    """40 training images, 4 validate: 36 train in batches of 8. Kept by default, as the GLIF
    authors' single-GPU loader."""
    write_cifar10(tmp_path)
    options = {"drop_last": drop_last} if drop_last else {}
    dm = CIFAR10DataModule(
        data_dir=str(tmp_path), batch_size=8, num_workers=0, verify_md5=False, **options
    )
    dm.setup("fit")
    assert [len(y) for _, y in dm.train_dataloader()] == sizes


def test_cifar100_without_the_md5_check_reads_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072)
    for name, labels in (("train", [5, 97, 42]), ("test", [7, 8, 9])):
        entry = {"data": rows, "fine_labels": labels, "coarse_labels": [0, 1, 2]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": list(range(100))}))
    dm = CIFAR100DataModule(data_dir=str(tmp_path), val_size=1, verify_md5=False, num_workers=0)
    dm.setup("fit")
    train = dm.datasets["train"].dataset
    assert train.targets == [5, 97, 42] and train.data.shape == (3, 32, 32, 3)
    assert train.data[1, 0, 1].tolist() == [
        (3072 + 1) % 256,
        (3072 + 1025) % 256,
        (3072 + 2049) % 256,
    ]
