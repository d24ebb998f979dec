"""What every DataModule shares: the base's batch options and loaders, the values it tells the
model (``shared_values``), the one digits reader and the fixed-size hold-out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from lightning_glif import data
from lightning_glif.data.base import SplitDataModule
from lightning_glif.data.digits import load_digit_images
from lightning_glif.data.splits import random_holdout

ROOT = Path(__file__).resolve().parents[1]

# (class, constructor arguments, the values it determines), written out by hand from each
# dataset's documentation; nothing is read from disk (setup is never called).
SHARED = [
    ("DigitsDataModule", {}, {"num_classes": 10, "in_channels": 1, "image_size": 8}),
    ("RowDigitsDataModule", {}, {"num_classes": 10, "time_steps": 8, "in_features": 8}),
    (
        "RowDigitsDataModule",
        {"time_steps": 16},
        {"num_classes": 10, "time_steps": 16, "in_features": 8},
    ),
    (
        "EventDigitsDataModule",
        {"time_steps": 5},
        {"num_classes": 10, "time_steps": 5, "in_channels": 2, "image_size": 34},
    ),
    ("MNISTDataModule", {}, {"num_classes": 10, "in_channels": 1, "image_size": 28}),
    ("FashionMNISTDataModule", {}, {"num_classes": 10, "in_channels": 1, "image_size": 28}),
    ("CIFAR10DataModule", {}, {"num_classes": 10, "in_channels": 3, "image_size": 32}),
    ("CIFAR100DataModule", {}, {"num_classes": 100, "in_channels": 3, "image_size": 32}),
    ("ImageNetDataModule", {}, {"num_classes": 1000, "in_channels": 3, "image_size": 224}),
    (
        "NMNISTDataModule",
        {},
        {"num_classes": 10, "time_steps": 10, "in_channels": 2, "image_size": 34},
    ),
    (
        "NMNISTDataModule",
        {"time_steps": 4, "resize": 16},
        {"num_classes": 10, "time_steps": 4, "in_channels": 2, "image_size": 16},
    ),
    (
        "CIFAR10DVSDataModule",
        {},
        {"num_classes": 10, "time_steps": 16, "in_channels": 2, "image_size": 48},
    ),
    (
        "CIFAR10DVSDataModule",
        {"resize": None, "crop_padding": 0},
        {"num_classes": 10, "time_steps": 16, "in_channels": 2, "image_size": 128},
    ),
    (
        "DVSGestureDataModule",
        {},
        {"num_classes": 11, "time_steps": 16, "in_channels": 2, "image_size": 128},
    ),
    (
        "DVSGestureDataModule",
        {"time_steps": 8, "resize": 32},
        {"num_classes": 11, "time_steps": 8, "in_channels": 2, "image_size": 32},
    ),
    ("SHDDataModule", {}, {"num_classes": 20, "time_steps": 100, "in_features": 700}),
]


@pytest.mark.parametrize(
    "name, kwargs, expected", SHARED, ids=[f"{name}{kwargs or ''}" for name, kwargs, _ in SHARED]
)
def test_shared_values_are_what_each_dataset_determines(name, kwargs, expected):
    values = getattr(data, name)(**kwargs).shared_values()
    assert values == expected
    assert all(type(v) is int for v in values.values())  # plain ints, ready for a config


def test_every_exported_data_module_shares_num_classes():
    modules = [n for n in data.__all__ if n.endswith("DataModule") and n != "SplitDataModule"]
    assert sorted(modules) == sorted({name for name, _, _ in SHARED})  # none left untested


class Tiny(SplitDataModule):
    """Ten samples in every split, to see what the base's loaders do."""

    num_classes = 2

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        x = torch.arange(10.0)
        self.datasets = {s: TensorDataset(x, x.long() % 2) for s in ("train", "val", "test")}


def test_base_owns_batch_options_and_serves_the_splits():
    dm = Tiny(batch_size=4, num_workers=0)
    assert (dm.batch_size, dm.num_workers) == (4, 0)
    assert [len(x) for x, _ in dm.train_dataloader()] == [4, 4, 2]
    assert [len(x) for x, _ in dm.val_dataloader()] == [4, 4, 2]
    tested = torch.cat([x for x, _ in dm.test_dataloader()])
    assert tested.tolist() == list(range(10))  # evaluation in order, not shuffled
    assert [len(x) for x, _ in dm.predict_dataloader()] == [4, 4, 2]  # predict: the test split

    class Dropping(Tiny):
        drop_last_train = True  # as the CIFAR/ImageNet modules

    dropping = Dropping(batch_size=4, num_workers=0)
    assert [len(x) for x, _ in dropping.train_dataloader()] == [4, 4]
    assert [len(x) for x, _ in dropping.val_dataloader()] == [4, 4, 2]  # only training drops


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0, "num_workers": 0}, "Tiny: batch_size must be >= 1, got 0"),
        ({"batch_size": 2, "num_workers": -1}, "Tiny: num_workers must be >= 0"),
    ],
)
def test_bad_batch_options_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Tiny(**kwargs)


def test_bad_batch_size_of_a_real_module_names_it():
    with pytest.raises(ValueError, match="NMNISTDataModule: batch_size must be >= 1, got 0"):
        data.NMNISTDataModule(batch_size=0)
    with pytest.raises(ValueError, match="DigitsDataModule: num_workers must be >= 0"):
        data.DigitsDataModule(num_workers=-2)


def test_shared_values_without_num_classes_says_what_to_set():
    class Unlabelled(SplitDataModule):
        pass

    with pytest.raises(TypeError, match="Unlabelled must set the class attribute num_classes"):
        Unlabelled(batch_size=1, num_workers=0).shared_values()


def test_digit_images_are_read_once_and_read_only():
    images, labels = load_digit_images()
    assert load_digit_images()[0] is images  # cached: one read per process
    digits = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == digits.target.tolist()
    assert np.array_equal(images, digits.images / 16.0)  # k / 16 is exact in float32
    assert images.min() == 0.0 and images.max() == 1.0
    with pytest.raises(ValueError, match="read-only"):
        images[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        labels[0] = 3


def test_static_digits_serve_the_shared_images():
    dm = data.DigitsDataModule()
    dm.setup()
    images, labels = load_digit_images()
    x, y = dm.datasets["test"].tensors
    rows = dm.indices["test"]
    assert torch.equal(x[:, 0], torch.from_numpy(images[rows].copy()))
    assert y.tolist() == labels[rows].tolist()


def old_vision_holdout(n: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """The torchvision modules' hold-out before it moved into splits.py, verbatim."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[val_size:]), sorted(order[:val_size])


@pytest.mark.parametrize("n, size, seed", [(12, 4, 1), (60000, 5000, 0), (50000, 5000, 3)])
def test_random_holdout_is_the_old_vision_split(n, size, seed):
    kept, held = random_holdout(n, size, seed)
    old_kept, old_held = old_vision_holdout(n, size, seed)
    assert held.tolist() == old_held and kept.tolist() == old_kept
    assert len(held) == size and len(np.union1d(kept, held)) == n


@pytest.mark.parametrize("size", [0, 12, 13])
def test_random_holdout_out_of_range_names_the_option(size):
    message = rf"val_size must be in \(0, 12\) for 12 samples, got {size}: hold out at least one"
    with pytest.raises(ValueError, match=message):
        random_holdout(12, size, 0, name="val_size")


@pytest.mark.slow
def test_importing_the_package_or_the_digits_does_not_import_tonic():
    """Tonic (GPL-3.0) is imported where event data is used, not by the package: checked in a
    fresh interpreter, whose sys.modules nothing else has filled."""
    code = (
        "import sys, lightning_glif.data, lightning_glif.data.digits\n"
        "assert 'tonic' not in sys.modules, 'imported Tonic'\n"
        "from lightning_glif.data import NMNISTDataModule, EventDigitsDataModule\n"
        "assert 'tonic' in sys.modules and NMNISTDataModule.tonic_class.__module__.startswith("
        "'tonic')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.slow
def test_without_tonic_the_event_modules_say_how_to_get_it(tmp_path):
    """A Tonic that cannot be imported (a module of that name that raises, first on the path)."""
    (tmp_path / "tonic").mkdir()
    (tmp_path / "tonic" / "__init__.py").write_text(
        "raise ModuleNotFoundError('gone', name='tonic')"
    )
    code = (
        "import lightning_glif.data\n"
        "try:\n"
        "    lightning_glif.data.NMNISTDataModule\n"
        "except ModuleNotFoundError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "read their recordings with Tonic" in run.stdout
    assert "pip install 'tonic>=1.7,<1.8'" in run.stdout
