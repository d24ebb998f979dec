"""Bad input stops with an error that names the problem and the fix, where torch's or
torchvision's raw error (or a silent exit 0) came before: corrupt or non-original torchvision
files in their real on-disk formats, a batch size of 0, images of another size than the model's
image_size, a training split smaller than one dropped batch, ``ablate.py --jobs 0``, and the
NonFiniteGuard's diagnosis of a gradient that overflowed in the backward pass (lr 1e8)."""

from __future__ import annotations

import hashlib
import re
import sys

import numpy as np
import pytest
import torch
from pytorch_lightning import Trainer
from test_configs import write_cifar
from test_vision_data import write_idx, write_mnist
from torch.utils.data import TensorDataset
from torchvision import datasets

from ablate import main as ablate_main
from lightning_glif.callbacks import NonFiniteLossError
from lightning_glif.data import (
    CIFAR10DataModule,
    CorruptFileError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
    RowDigitsDataModule,
    SplitDataModule,
)
from lightning_glif.models.convnet import SpikingConvNet
from lightning_glif.models.sew import WideNet7B
from lightning_glif.neurons import GLIF, LIF
from lightning_glif.training.module import SpikingClassifier

CIFAR10_FILES = {**{f"data_batch_{i}": 4 for i in range(1, 6)}, "test_batch": 4, "batches.meta": 0}


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# -- corrupt or non-original torchvision files ----------------------------------------------------
def test_cifar_files_that_are_not_the_originals_are_named(tmp_path):
    write_cifar(tmp_path, "cifar-10-batches-py", "labels", CIFAR10_FILES)
    with pytest.raises(CorruptFileError) as error:  # was: "Dataset not found or corrupted."
        CIFAR10DataModule(data_dir=str(tmp_path), val_size=4).setup("fit")
    first = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    assert error.value.path == first
    message = str(error.value)
    assert message.startswith(f"cannot read {first}: its md5 is {md5(first)}, the original ")
    assert "CIFAR-10 file's is c99cafc152244af753f735de768cd75f" in message
    assert f"Delete {tmp_path / 'cifar-10-batches-py'}, then download again" in message
    assert "--data.init_args.download true" in message and "tar xzf" in message


def test_a_truncated_cifar_batch_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(tmp_path, folder.name, "labels", CIFAR10_FILES)
    # Take the fabricated files as the originals (their real md5 sums), then truncate one.
    train = [[n, md5(folder / n)] for n, _ in datasets.CIFAR10.train_list]
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    meta = {**datasets.CIFAR10.meta, "md5": md5(folder / "batches.meta")}
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta)
    CIFAR10DataModule(data_dir=str(tmp_path), val_size=4).setup("fit")  # intact: reads
    broken = folder / "data_batch_3"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(CorruptFileError) as error:
        CIFAR10DataModule(data_dir=str(tmp_path), val_size=4).setup("fit")
    assert error.value.path == broken
    assert f"its md5 is {md5(broken)}, the original CIFAR-10 file's is {train[2][1]}" in str(
        error.value
    )


@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule], ids=lambda c: c.name)
def test_a_truncated_mnist_idx_file_is_named(cls, tmp_path):
    write_mnist(tmp_path, cls.dataset, n_train=12, n_test=5)
    images = tmp_path / cls.dataset / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # was: a reshape error of torch.frombuffer
    with pytest.raises(CorruptFileError) as error:
        cls(data_dir=str(tmp_path), val_size=4).setup("fit")
    assert error.value.path == images
    needed = 16 + 12 * 28 * 28
    assert str(error.value).startswith(
        f"cannot read {images}: it is {needed - 100} bytes, its header (shape (12, 28, 28)) "
        f"needs {needed}: truncated. Delete it, then download again: --data.init_args.download true"
    )


def test_mnist_files_of_another_format_are_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(tmp_path, "MNIST", n_train=12, n_test=5)

    def error() -> str:
        with pytest.raises(CorruptFileError) as caught:
            MNISTDataModule(data_dir=str(tmp_path), val_size=4).setup("fit")
        return str(caught.value)

    labels = raw / "t10k-labels-idx1-ubyte"
    write_idx(labels, np.zeros(4, np.uint8))
    assert error() == (
        f"cannot read {labels}: it holds 4 labels for the 5 images of "
        f"{raw / 't10k-images-idx3-ubyte'}. Delete both files, then download again: "
        "--data.init_args.download true (torchvision then fetches what is missing), or by hand: "
        f"download into {raw}: " + " ".join(
            datasets.MNIST.mirrors[0] + n for n, _ in datasets.MNIST.resources
        ) + " and unpack them there (gunzip *.gz)."
    )  # fmt: skip
    write_idx(labels, np.zeros(5, np.uint8))
    images = raw / "train-images-idx3-ubyte"
    write_idx(images, np.zeros((12, 16, 16), np.uint8))  # an MNIST resized to 16x16
    assert error().startswith(
        f"cannot read {images}: its images are 16x16, MNIST's are 28x28 (the image_size the "
        "model is built for): not the original MNIST file."
    )
    images.write_bytes(b"\x1f\x8b" + bytes(30))  # still gzip-compressed under the unpacked name
    assert error() == (
        f"cannot read {images}: it is gzip-compressed (a .gz file). Unpack it: "
        f"mv {images} {images}.gz && gunzip {images}.gz"
    )
    images.write_text("not an idx file")
    assert "not an idx file of unsigned bytes in 3 dimension(s): it starts with 6e6f7420" in error()


# -- batch_size 0 ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls",
    [DigitsDataModule, RowDigitsDataModule, MNISTDataModule, CIFAR10DataModule, ImageNetDataModule],
    ids=lambda c: c.__name__,
)
def test_batch_size_zero_is_refused(cls):
    # Already refused before issue 16 (torch's own "batch_size should be a positive integer"
    # never shows): kept as a guard for every data module of the project.
    with pytest.raises(ValueError, match=rf"{cls.__name__}: batch_size must be >= 1, got 0\."):
        cls(batch_size=0)


# -- images of another size than the model's image_size -------------------------------------------
class WrongSize(SplitDataModule):
    """A data module whose image_size says 8 while it serves 12x12 images."""

    num_classes, in_channels, image_size = 10, 1, 8

    def setup(self, stage=None):
        x, y = torch.rand(8, 1, 12, 12), torch.arange(8) % 10
        self.datasets = {s: TensorDataset(x, y) for s in ("train", "val", "test")}


def test_images_of_another_size_than_image_size_are_named():
    model = SpikingClassifier(SpikingConvNet(LIF, time_steps=2, channels=(4, 8), image_size=8))
    trainer = Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(ValueError) as error:  # was: mat1 and mat2 shapes cannot be multiplied
        trainer.fit(model, datamodule=WrongSize(batch_size=4, num_workers=0))
    assert (
        "SpikingConvNet was built for image_size=8 (its readout Linear(in_features=128, "
        "out_features=10, bias=True) takes 8x8 inputs), but the data gives 12x12 images (batch "
        "shape (4, 1, 12, 12)). image_size is copied from the data module: its image_size must "
        "be the size of the images it serves (12; height = width)"
    ) in str(error.value)
    # Event frames [B, T, C, H, W] of the right size pass.
    assert model.backbone(torch.rand(3, 2, 1, 8, 8)).shape == (2, 3, 10)


def test_the_dvs_net_names_a_frame_size_it_was_not_built_for():
    net = WideNet7B(LIF, time_steps=1, in_channels=2, image_size=16)
    assert net(torch.rand(1, 1, 2, 16, 16)).shape == (1, 1, 10)
    with pytest.raises(ValueError, match=r"WideNet7B was built for image_size=16 .* the data "
                       r"gives 32x32 images"):  # fmt: skip
        net(torch.rand(1, 1, 2, 32, 32))


# -- fewer training samples than one dropped batch ------------------------------------------------
def test_a_training_split_smaller_than_one_batch_stops_the_fit(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=12, n_test=5)
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=64, val_size=4, num_workers=0)
    model = SpikingClassifier(SpikingConvNet(LIF, time_steps=1, channels=(4,), image_size=28))
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, accelerator="cpu")
    # Not Lightning's "No training batches" warning and a fit that returns normally (exit 0).
    with pytest.raises(ValueError) as error:
        trainer.fit(model, datamodule=dm)
    assert str(error.value) == (
        "MNISTDataModule: the training split has 8 samples, fewer than one batch (batch_size "
        "64), and this data drops the last incomplete training batch (drop_last_train), so no "
        "training batch is left. Lower batch_size (--data.init_args.batch_size 8) or train on "
        "more samples (a smaller val_size, where the data has one)."
    )
    assert trainer.global_step == 0
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=8, val_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1  # exactly one batch is fine


# -- ablate.py --jobs 0 ---------------------------------------------------------------------------
def test_ablate_jobs_zero_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        ablate_main(["--jobs", "0", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--jobs must be at least 1, got 0." in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- NonFiniteGuard: a gradient that overflowed in the backward pass ------------------------------
@pytest.mark.slow
def test_lr_1e8_names_the_parameters_whose_gradient_broke(tmp_path, monkeypatch):
    from lightning_glif.cli.main import cli_main

    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = ["fit", "--model.optimizer.init_args.lr", "1e8", "--trainer.max_epochs", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    with pytest.raises(NonFiniteLossError) as error:
        cli_main(args)
    message = str(error.value)
    first = re.match(r"non-finite gradient \(first: ([\w.]+)\) at global step \d+", message)
    assert first, message
    # Not "no neuron layer saw a non-finite value: ... the head ... overflowed".
    assert "no neuron layer saw a non-finite value" not in message and "the head" not in message
    assert "the loss and the forward pass on this batch are finite" in message
    overflowed = r"the backward pass overflowed, in the (?:only layer|layers) with non-finite "
    listed = re.search(overflowed + r"gradients \((.*)\): lower the learning rate", message)
    assert listed, message
    found = re.findall(r"'([\w.]+)' \((\w+)\): ([\w ,]+)", listed.group(1))
    layers = {name: kind for name, kind, _ in found}
    assert layers and set(layers.values()) <= {"GLIF"}, layers  # only neuron latents broke
    layer, _, param = first.group(1).rpartition(".")
    assert layer in layers
    assert f"'{layer}' (GLIF): " in listed.group(1) and param in listed.group(1)
    model = cli_main(["--model.optimizer.init_args.lr", "1e8"], run=False).model
    glif = model.get_submodule(layer)
    assert isinstance(glif, GLIF)
    gates = {n for n, p in glif.named_parameters() if any(p is g for g in glif.gate_parameters())}
    for name in re.findall(r"gate (\w+)", listed.group(1)):
        assert name in gates
