"""MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100 and ImageNet, offline unless ``download`` is set.

The validation split (model selection) is held out of the training images with a fixed seed;
the official test images serve only ``test`` (the authors selected on the test set:
docs/GLIF_SPEC.md section 8).
"""

from __future__ import annotations

import copy
import hashlib
import math
import struct
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision import transforms as T

from .base import CPUS, LOADER_WORKERS, SplitDataModule
from .errors import CorruptFileError, DatasetNotFoundError
from .splits import random_holdout


class _TorchvisionDataModule(SplitDataModule):
    """A torchvision dataset's train split, the val split held out of it, and its test split.

    A subclass sets the class attributes below and writes :meth:`expected` (what lies on disk),
    or overrides :meth:`check`, :meth:`read` and :meth:`transforms` (:class:`ImageNetDataModule`).
    The last, smaller training batch is dropped: a few images give batch norm noisy statistics.

    Args:
        data_dir: data root, the folder that holds the dataset's folder.
        download: fetch and unpack the dataset into ``data_dir`` if it is missing.
        batch_size: images per batch.
        val_size: training images held out for validation (model selection), without
            augmentation: a whole number is a count, a float in (0, 1) a share (rounded up, as
            scikit-learn's ``test_size``).
        split_seed: seed of the held-out split.
        num_workers: DataLoader worker processes; the default is the number of CPUs this
            process may use, at most 4.
    """

    drop_last_train = True
    name: ClassVar[str]  # display name, e.g. "CIFAR-10"
    dataset: ClassVar[str]  # the torchvision.datasets class that reads it
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    crop_padding: ClassVar[int]  # training RandomCrop(image_size, padding); 0: no crop
    hflip: ClassVar[bool]  # training horizontal flips

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 64,
        val_size: int | float = 0.1,
        split_seed: int = 0,
        num_workers: int = LOADER_WORKERS,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if isinstance(val_size, float) and not 0 < val_size < 1:
            raise ValueError(
                f"{type(self).__name__}: val_size {val_size} is a float, a share of the training "
                "images, and must be in (0, 1); give a whole number (e.g. 5000) for a count."
            )
        self.data_dir = Path(data_dir)
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.check()
        train_aug = self.read(train=True, transform=self.transforms(train=True))
        test = self.read(train=False, transform=self.transforms(train=False))
        # val_size as a share: ceil(val_size * n), scikit-learn's rounding of test_size
        n, size = len(train_aug), self.val_size
        size = max(1, math.ceil(size * n)) if isinstance(size, float) else size
        train, val = random_holdout(n, size, self.split_seed, name="val_size")
        train_eval = copy.copy(train_aug)  # the same images, loaded or scanned once
        train_eval.transform = self.transforms(train=False)
        self.datasets = {
            "train": Subset(train_aug, train.tolist()),
            "val": Subset(train_eval, val.tolist()),
            "test": test,
        }

    def _dataset_class(self):
        return getattr(datasets, self.dataset)

    def expected(self) -> tuple[Path, list[str], str, str]:
        """``(folder torchvision reads, files needed there, a layout note, the manual steps)``."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise a clear error for missing (or, in a subclass, unreadable) files."""
        folder, files, layout, manual = self.expected()
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DatasetNotFoundError(
                self.name, folder, missing, layout="\n".join([*files, layout]), manual=manual
            )

    def _refetch(self, what: str) -> str:
        """The fix of a :class:`CorruptFileError`: delete ``what`` and get it again."""
        *_, manual = self.expected()
        return (
            f"Delete {what}, then download again: --data.init_args.download true (torchvision "
            f"then fetches what is missing), or by hand: {manual.replace(chr(10), ' ')}"
        )

    def prepare_data(self) -> None:
        if self.download:
            cls = self._dataset_class()
            cls(str(self.data_dir), train=True, download=True)
            cls(str(self.data_dir), train=False, download=True)

    def transforms(self, train: bool):
        """The training (augmenting) or evaluation transform."""
        augment = []
        if train and self.crop_padding:
            augment.append(T.RandomCrop(self.image_size, padding=self.crop_padding))
        if train and self.hflip:
            augment.append(T.RandomHorizontalFlip())
        return T.Compose([*augment, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def read(self, train: bool, transform: Any) -> Dataset:
        """The training or test images under ``transform``."""
        return self._dataset_class()(str(self.data_dir), train=train, transform=transform)


def idx_shape(path: Path, ndim: int, fix: str | None = None) -> tuple[int, ...]:
    """The shape in the header of the idx file ``path`` (magic ``00 00 08 <ndim>``, one
    big-endian uint32 per dimension, then the bytes), checked against the file's size, else a
    :class:`CorruptFileError` (torchvision reads a truncated file into a bare reshape error)."""
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if header[:2] == b"\x1f\x8b":
        fix = f"Unpack it: mv {path} {path}.gz && gunzip {path}.gz"
        raise CorruptFileError(path, "it is gzip-compressed (a .gz file)", fix)
    if len(header) < 4 + 4 * ndim or header[:4] != bytes([0, 0, 8, ndim]):
        raise CorruptFileError(
            path,
            f"not an idx file of unsigned bytes in {ndim} dimension(s): it starts with "
            f"{header[:4].hex() or 'nothing'}, not {bytes([0, 0, 8, ndim]).hex()}",
            fix,
        )
    shape = struct.unpack(f">{ndim}I", header[4:])
    size, needed = path.stat().st_size, len(header) + math.prod(shape)
    if size != needed:
        state = "truncated" if size < needed else "longer than its header says"
        raise CorruptFileError(
            path, f"it is {size} bytes, its header (shape {shape}) needs {needed}: {state}", fix
        )
    return shape


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST through torchvision: ``[B, 1, 28, 28]`` normalised images, labels ``0..9``.

    Reads the four unpacked idx files in ``<data_dir>/MNIST/raw/`` (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-...``; files of your own in this format, of any size,
    too); ``download`` fetches them (11 MB). Training augmentation: RandomCrop(28, padding 2), no
    flips (a mirrored digit is another symbol).
    """

    name = "MNIST"
    dataset = "MNIST"
    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)
    crop_padding = 2
    hflip = False

    def expected(self) -> tuple[Path, list[str], str, str]:
        folder = self.data_dir / self.dataset  # torchvision reads <root>/<class name>/raw/
        # What torchvision checks (existence only) and where it downloads from.
        source = self._dataset_class()
        files = [f"raw/{name.removesuffix('.gz')}" for name, _ in source.resources]
        urls = [source.mirrors[0] + name for name, _ in source.resources]
        manual = "\n".join(
            [f"download into {folder / 'raw'}:", *urls, "and unpack them there (gunzip *.gz)."]
        )
        return folder, files, "(the idx files unpacked, without .gz)", manual

    def check(self) -> None:
        super().check()
        raw = self.data_dir / self.dataset / "raw"
        side = self.image_size
        for part in ("train", "t10k"):
            images_file = raw / f"{part}-images-idx3-ubyte"
            images = idx_shape(images_file, 3, self._refetch("it"))
            if images[1:] != (side, side):
                raise CorruptFileError(
                    images_file,
                    f"its images are {images[1]}x{images[2]}, {self.name}'s are {side}x{side} "
                    f"(the image_size the model is built for): not the original {self.name} file",
                    self._refetch("it"),
                )
            labels = idx_shape(raw / f"{part}-labels-idx1-ubyte", 1, self._refetch("it"))
            if labels[0] != images[0]:
                raise CorruptFileError(
                    raw / f"{part}-labels-idx1-ubyte",
                    f"it holds {labels[0]} labels for the {images[0]} images of {images_file}",
                    self._refetch("both files"),
                )


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST through torchvision: ``[B, 1, 28, 28]``, labels ``0..9`` (T-shirt/top ..
    ankle boot), in ``<data_dir>/FashionMNIST/raw/`` under MNIST's file names (download: 30 MB).
    As :class:`MNISTDataModule`, with horizontal flips (a mirrored shirt is a shirt)."""

    name = "Fashion-MNIST"
    dataset = "FashionMNIST"
    mean = (0.2860,)
    std = (0.3530,)
    hflip = True


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 through torchvision: ``[B, 3, 32, 32]`` normalised images, labels ``0..9``.

    Reads ``<data_dir>/cifar-10-batches-py/`` (the python version; ``download``: 170 MB). The GLIF
    recipe (docs/GLIF_SPEC.md section 6): RandomCrop(32, padding 4), flips, the authors'
    normalisation. A file whose md5 is not the original's is named.

    Args:
        verify_md5: check every file against the original's md5 before reading it (``False``
            reads a copy that differs on purpose, e.g. repacked, as it is).
        drop_last: drop the last, smaller training batch of each epoch. Off by default, as the
            GLIF authors' single-GPU loader (their multi-GPU loader drops it).
    """

    name = "CIFAR-10"
    dataset = "CIFAR10"
    num_classes = 10
    in_channels = 3
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.247, 0.243, 0.261)
    crop_padding = 4
    hflip = True

    def __init__(self, *, verify_md5: bool = True, drop_last: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verify_md5 = verify_md5
        self.drop_last_train = drop_last

    def expected(self) -> tuple[Path, list[str], str, str]:
        source = self._dataset_class()  # what torchvision reads and downloads
        files = [name for name, _ in (*source.train_list, *source.test_list)]
        manual = (
            f"download {source.url} and unpack it in {self.data_dir} (tar xzf {source.filename})."
        )
        folder = self.data_dir / source.base_folder
        return folder, [*files, source.meta["filename"]], "(the python version, unpacked)", manual

    def read(self, train: bool, transform: Any) -> Dataset:
        if not self.verify_md5:
            unverified = {"CIFAR10": UnverifiedCIFAR10, "CIFAR100": UnverifiedCIFAR100}
            return unverified[self.dataset](str(self.data_dir), train=train, transform=transform)
        try:
            return super().read(train, transform)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted."
            raise self._corrupt(e) from e

    def _corrupt(self, error: RuntimeError) -> Exception:
        """A :class:`CorruptFileError` naming the file whose md5 differs (torchvision names
        none), else torchvision's ``error``."""
        source = self._dataset_class()
        folder = self.data_dir / source.base_folder
        meta = (source.meta["filename"], source.meta["md5"])
        sums = [*source.train_list, *source.test_list, meta]
        found = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name, _ in sums}
        bad = [(name, md5) for name, md5 in sums if found[name] != md5]
        if not bad:
            return error
        (name, md5), others = bad[0], [other for other, _ in bad[1:]]
        also = f" (and so do {', '.join(others)})" if others else ""
        return CorruptFileError(
            folder / name,
            f"its md5 is {found[name]}, the original {self.name} file's is {md5}{also}: it is "
            "truncated, corrupt or not the original file",
            self._refetch(f"{folder}")
            + " Files that differ on purpose (a repacked copy you trust) are read as they are "
            "with verify_md5: false (--data.init_args.verify_md5 false).",
        )


# torchvision has no switch for its md5 check; a file listed without an md5 is only checked to
# exist (check_integrity(path, None)), so these copies of its classes read any CIFAR files.
class UnverifiedCIFAR10(datasets.CIFAR10):
    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


class UnverifiedCIFAR100(datasets.CIFAR100):
    train_list = [[name, None] for name, _ in datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR100.test_list]
    meta = {**datasets.CIFAR100.meta, "md5": None}


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 through torchvision: ``[B, 3, 32, 32]``, labels ``0..99``, from
    ``<data_dir>/cifar-100-python/``. As :class:`CIFAR10DataModule` (same options), with the GLIF
    authors' CIFAR-100 mean and std."""

    name = "CIFAR-100"
    dataset = "CIFAR100"
    num_classes = 100
    # as data_builder.py computes them: 8-bit channel means and deviations / 255
    mean = tuple(v / 255 for v in (129.3, 124.1, 112.4))
    std = tuple(v / 255 for v in (68.2, 65.4, 70.4))


class ImageNetDataModule(_TorchvisionDataModule):
    """ImageNet-1k from ImageFolders: ``[B, 3, 224, 224]`` normalised images.

    Reads ``<data_dir>/imagenet/train/<class>/*.JPEG`` and ``.../imagenet/val/<class>/`` (the
    validation images sorted into the training classes' folders), which ``test`` uses; nothing
    is downloaded (a licence is needed). The GLIF recipe: RandomResizedCrop(224, scale (0.2, 1))
    and flips; evaluation: resize 256, centre crop 224.

    Args:
        data_dir: data root, the folder that holds ``imagenet/train/`` and ``imagenet/val/``.
        batch_size: images per batch (50 per GPU in the paper).
        num_workers: DataLoader worker processes; the default is the number of CPUs this
            process may use, at most 8 (decoding JPEGs is the slow part).
    """

    name = "ImageNet"
    num_classes = 1000
    in_channels = 3
    image_size = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 50,
        val_size: int | float = 10000,
        split_seed: int = 0,
        num_workers: int = min(8, CPUS or 1),
    ) -> None:
        super().__init__(data_dir, False, batch_size, val_size, split_seed, num_workers)

    def transforms(self, train: bool):
        normalise = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if train:
            crop = [T.RandomResizedCrop(224, scale=(0.2, 1.0)), T.RandomHorizontalFlip()]
        else:
            crop = [T.Resize(256), T.CenterCrop(224)]
        return T.Compose([*crop, *normalise])

    def check(self) -> None:
        root = self.data_dir / "imagenet"
        missing = [f"{s}/" for s in ("train", "val") if not (root / s).is_dir()]
        if missing:
            # Not a DatasetNotFoundError: that one offers a download, and ImageNet has none.
            raise FileNotFoundError(
                f"ImageNet was not found in {root}: {' and '.join(missing)} missing. Expected "
                "layout: train/<class>/*.JPEG and val/<class>/*.JPEG under it (the validation "
                "images sorted into the same class folders). ImageNet cannot be downloaded "
                "automatically: get ILSVRC2012 from https://image-net.org, arrange it so, and "
                "point --data.init_args.data_dir at the folder that holds imagenet/ (lowercase)."
            )

    def read(self, train: bool, transform: Any) -> Dataset:
        part = "train" if train else "val"
        return datasets.ImageFolder(str(self.data_dir / "imagenet" / part), transform=transform)
