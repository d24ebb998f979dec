"""LightningDataModules for the neuromorphic benchmarks, read with Tonic: N-MNIST, CIFAR10-DVS,
DVS128 Gesture and the Spiking Heidelberg Digits (SHD).

Every module serves ``(frames, label)`` batches: ``frames`` float32 ``[B, T, P, H, W]`` (event
counts per time bin, polarity and pixel; ``[B, T, 1, 700]`` for SHD) and ``label`` int64.
The data are looked for in ``<data_dir>/<Tonic class name>/`` (e.g. ``data/NMNIST/``) and nothing
is downloaded unless ``download=True``. Binned frames are cached under
``<data_dir>/cache/<name>/<binning>/<split>-<sources>/`` (see :class:`EventDataModule`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import h5py
import numpy as np
import tonic
from torch.utils.data import Dataset, Subset

from .base import SplitDataModule
from .errors import CorruptFileError, DatasetNotFoundError
from .frames import AtomicDiskCache, Binning, EventsToFrames, FrameAugment
from .splits import per_class_head_split, stratified_holdout

log = logging.getLogger(__name__)


class _NeverDownload:
    """Mixin for a Tonic dataset class: trust the DataModule's presence check, never download.

    Tonic's constructor downloads unless its archive file and a minimum number of extracted files
    are there. The DataModule checks for the extracted files itself before constructing it (so a
    hand-extracted copy without its archive, or a subset, is used as it is) and downloads only on
    ``download=True``, through Tonic's own class.
    """

    def _check_exists(self) -> bool:
        return True

    def download(self) -> None:  # pragma: no cover - unreachable while _check_exists is True
        raise RuntimeError("lightning-glif never downloads unless download=True is set.")


def _offline(tonic_class: type) -> type:
    # Tonic puts a dataset under save_to/<class name>, so the subclass keeps Tonic's name; its
    # qualname points at _Offline below, where pickle (spawned DataLoader workers) finds it.
    cls = type(tonic_class.__name__, (_NeverDownload, tonic_class), {"__module__": __name__})
    cls.__qualname__ = f"_Offline.{tonic_class.__name__}"
    return cls


class _Offline:
    NMNIST = _offline(tonic.datasets.NMNIST)
    CIFAR10DVS = _offline(tonic.datasets.CIFAR10DVS)
    DVSGesture = _offline(tonic.datasets.DVSGesture)
    SHD = _offline(tonic.datasets.SHD)


def _check_nmnist_file(path: str) -> None:
    size = os.path.getsize(path)
    if size % 5:
        raise ValueError(f"its size, {size} bytes, is not a multiple of N-MNIST's 5-byte events")


class SourceFrames(Dataset):
    """A Tonic dataset's samples binned into frames; a sample that cannot be read names its file.

    Args:
        events: the Tonic dataset (returns ``(events, label)``; built without a transform).
        to_frames: the binning.
        labels: the label of every sample (read once, without loading the events).
        check: optional quick test of a file before Tonic reads it (raises ``ValueError``).
    """

    def __init__(
        self,
        events: Any,
        to_frames: EventsToFrames,
        labels: np.ndarray,
        check: Callable[[str], None] | None = None,
    ) -> None:
        self.events = events
        self.to_frames = to_frames
        self.labels = np.asarray(labels, dtype=np.int64)
        self.check = check

    def __len__(self) -> int:
        return len(self.labels)

    def source(self, index: int) -> str:
        """The file (and for one-file datasets the sample) that ``index`` is read from."""
        if self.events.data:
            return self.events.data[index]
        path = os.path.join(self.events.location_on_system, self.events.data_filename)
        return f"{path} (sample {index})"

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            if self.check is not None:
                self.check(self.events.data[index])
            events, _ = self.events[index]
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                f"reading {self.source(index)} needs the `{err.name}` package: "
                f"pip install {err.name}"
            ) from err
        except Exception as err:
            raise CorruptFileError(self.source(index), f"{type(err).__name__}: {err}") from err
        try:
            frames = self.to_frames(events)
        except Exception as err:
            raise ValueError(
                f"binning the events of {self.source(index)} into frames failed: {err}"
            ) from err
        return frames, int(self.labels[index])


class _Split(NamedTuple):
    kwargs: dict[str, Any]  # Tonic constructor arguments
    pattern: str  # a glob under <data_dir>/<Tonic name>/ that matches only when the data is there
    archive: str  # the archive Tonic downloads for it


class EventDataModule(SplitDataModule):
    """Shared machinery and options of the Tonic DataModules; use one of its subclasses.

    ``setup`` checks that the files of the needed splits are there (else one
    :class:`~lightning_glif.data.errors.DatasetNotFoundError`), opens them with Tonic, bins each
    sample into exactly ``time_steps`` frames and caches the frames (see
    :class:`~lightning_glif.data.frames.AtomicDiskCache`) in::

        <data_dir>/cache/<Tonic name>/<T..-binning-size>/<split>-<sources hash>/<index>_0.hdf5

    e.g. ``data/cache/CIFAR10DVS/T16-events-48x48p2/all-1a2b3c4d/``. Every parameter applied
    before the cache is in that path, so changing ``time_steps``, ``binning`` or ``resize`` (or
    the set of source files) never reads a stale cache; old caches stay until deleted.
    The training augmentation runs after the cache. Files are read in sorted path order.

    The options common to all Tonic modules are declared here, once. A subclass's ``__init__``
    lists only its own options and those whose default differs, and passes the rest on with
    ``**kwargs`` (jsonargparse follows it here, so ``--help`` and configs show all of them with
    the subclass's defaults). An option that makes no sense for a dataset is passed explicitly
    in the subclass's ``super().__init__`` call, which removes it from its options.

    Args:
        time_steps: frames per recording ``T``.
        data_dir: data root; the dataset lives in ``<data_dir>/<Tonic name>``, the frame cache
            in ``<data_dir>/cache/<Tonic name>``.
        batch_size: recordings per batch.
        binning: ``"time"`` (T equal time windows) or ``"events"`` (T equal event counts).
        resize: side of the frames after a bilinear resize (before the cache); ``None``: the
            sensor's size.
        resize_antialias: antialias that resize (``False``: plain bilinear, as the GLIF
            authors' CIFAR10-DVS frames; part of the cache path).
        crop_padding: training augmentation: zero-pad by this many pixels and crop back at a
            random position (0: off).
        hflip: training augmentation: random horizontal flips.
        val_fraction: share of the training recordings held out for validation (stratified).
        split_seed: seed of that held-out split.
        num_workers: DataLoader worker processes.
        download: download and extract the dataset if it is missing.
    """

    name: ClassVar[str]  # display name
    tonic_class: ClassVar[type]
    offline_class: ClassVar[type]
    splits: ClassVar[dict[str, _Split]]
    layout: ClassVar[str]
    num_classes: ClassVar[int]
    # a quick test of a file before Tonic reads it: raises ValueError on a broken one
    file_check: ClassVar[Callable[[str], None] | None] = None

    def __init__(
        self,
        *,
        time_steps: int,
        data_dir: str = "data",
        batch_size: int = 64,
        binning: Binning = "time",
        resize: int | None = None,
        resize_antialias: bool = True,
        crop_padding: int = 0,
        hflip: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not 0 < val_fraction < 1:
            raise ValueError(f"{type(self).__name__}: val_fraction must be in (0, 1).")
        self.data_dir = data_dir
        self.time_steps = time_steps
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.download = download
        w, h, p = self.tonic_class.sensor_size
        image = h > 1  # SHD's sensor is a row of 700 channels, not an image
        self.to_frames = EventsToFrames(
            self.tonic_class.sensor_size, time_steps, binning, resize, resize_antialias
        )
        # in_channels and image_size only for image-like frames (see shared_values).
        self.in_channels = p if image else None
        self.image_size = (resize or h) if image else None
        self.train_augment = FrameAugment(self.image_size, crop_padding, hflip)
        self.frame_shape: tuple[int, ...] = (time_steps, p) + (
            (self.image_size, resize or w) if image else (w,)
        )
        self._sources: dict[str, SourceFrames] = {}

    def _refuse(self, kwargs: dict[str, Any], names: tuple[str, ...], why: str) -> None:
        """A clear TypeError for an option the subclass removed (Python would only say
        "multiple values for keyword argument")."""
        given = [name for name in names if name in kwargs]
        if given:
            raise TypeError(
                f"{type(self).__name__} has no option {', '.join(given)}: {why}. Remove it from "
                "the data's init_args."
            )

    # -- where the data is ------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """``<data_dir>/<Tonic class name>``: where Tonic keeps this dataset."""
        return Path(self.data_dir).expanduser().resolve() / self.tonic_class.__name__

    def manual(self) -> str:
        """The manual download steps (shown in the not-found error)."""
        raise NotImplementedError

    def _missing(self, split: str) -> str | None:
        spec = self.splits[split]
        if any(self.folder.glob(spec.pattern)):
            return None
        what = str(self.folder / spec.pattern)
        if (self.folder / spec.archive).is_file():
            what += f" (found {spec.archive}, but not its extracted files: extract it there)"
        return what

    def _ensure(self, splits: list[str]) -> None:
        missing = [split for split in splits if self._missing(split)]
        if missing and self.download:
            for split in missing:
                log.info("downloading %s (%s) into %s", self.name, split, self.folder)
                self.tonic_class(str(self.folder.parent), **self.splits[split].kwargs)
        still = [m for m in (self._missing(split) for split in missing) if m]
        if still:
            raise DatasetNotFoundError(self.name, self.folder, still, self.layout, self.manual())

    def prepare_data(self) -> None:
        """Download what is missing when ``download=True`` (one process); else nothing."""
        if self.download:
            self._ensure(list(self.splits))

    # -- opening and splitting --------------------------------------------------------------
    def _stage_splits(self, stage: str | None) -> list[str]:
        if stage in ("fit", "validate"):
            return ["train"]
        if stage in ("test", "predict"):
            return ["test"]
        return list(self.splits)

    def _labels(self, dataset: Any) -> np.ndarray:
        return np.asarray(dataset.targets)

    def _open(self, split: str) -> SourceFrames:
        kwargs = self.splits[split].kwargs
        dataset = self.offline_class(str(self.folder.parent), **kwargs)
        if dataset.data:  # Tonic lists some folders in file-system order: make it reproducible
            order = np.argsort(dataset.data, kind="stable")
            for attr in ("data", "targets", "users", "lighting"):
                values = getattr(dataset, attr, None)
                if values is not None and len(values) == len(order):
                    setattr(dataset, attr, [values[i] for i in order])
        return SourceFrames(dataset, self.to_frames, self._labels(dataset), type(self).file_check)

    def _cache_path(self, split: str, source: SourceFrames) -> Path:
        events = source.events
        if events.data:
            names = [os.path.relpath(p, events.location_on_system) for p in events.data]
        else:
            path = os.path.join(events.location_on_system, events.data_filename)
            names = [events.data_filename, str(os.path.getsize(path))]
        digest = hashlib.sha1("\n".join(names + list(map(str, source.labels))).encode())
        key = f"{split}-{digest.hexdigest()[:8]}"
        return self.folder.parent / "cache" / self.tonic_class.__name__ / self.to_frames.key / key

    def _partition(self) -> dict[str, tuple[str, np.ndarray | None]]:
        """``{name: (source split, indices or None for all)}`` for train / val / test."""
        parts: dict[str, tuple[str, np.ndarray | None]] = {}
        if "train" in self._sources:
            labels = self._sources["train"].labels
            kept, held = stratified_holdout(labels, self.val_fraction, self.split_seed)
            parts.update(train=("train", kept), val=("train", held))
        if "test" in self._sources:
            parts["test"] = ("test", None)
        return parts

    def setup(self, stage: str | None = None) -> None:
        splits = self._stage_splits(stage)
        self._ensure(splits)
        for split in splits:
            if split not in self._sources:
                self._sources[split] = self._open(split)
        plain = FrameAugment()
        for name, (split, index) in self._partition().items():
            source = self._sources[split]
            cache_path = self._cache_path(split, source)
            # exist_ok: Tonic's own makedirs races when several processes start at once
            cache_path.mkdir(parents=True, exist_ok=True)
            log.info(
                "%s %s: %d recordings, frames cached in %s",
                self.name,
                name,
                len(source) if index is None else len(index),
                cache_path,
            )
            cache = AtomicDiskCache(
                source,
                cache_path=str(cache_path),
                transform=self.train_augment if name == "train" else plain,
            )
            self.datasets[name] = cache if index is None else Subset(cache, index.tolist())

    def split_sources(self, name: str) -> list[str]:
        """The file (or file and sample) behind each sample of split ``name`` (``"train"``,
        ``"val"`` or ``"test"``), in loader order without shuffling: for auditing a split."""
        dataset = self.datasets[name]
        index = dataset.indices if isinstance(dataset, Subset) else None
        cache = dataset.dataset if isinstance(dataset, Subset) else dataset
        return [cache.dataset.source(i) for i in (range(len(cache)) if index is None else index)]

    def split_manifest(self) -> dict[str, list[str]]:
        """``{split: [source, ...]}`` for every split set up so far, each source relative to
        :attr:`folder` (so two machines with the data in different places compare equal), in
        loader order without shuffling. :class:`~lightning_glif.callbacks.splits.SplitFiles`
        writes it into the run directory."""
        root = str(self.folder) + os.sep
        return {
            name: [s[len(root) :] if s.startswith(root) else s for s in self.split_sources(name)]
            for name in ("train", "val", "test")
            if name in self.datasets
        }


class NMNISTDataModule(EventDataModule):
    """N-MNIST (Orchard et al. 2015): MNIST digits seen by an ATIS camera in three saccades.

    Frames ``[B, T, 2, 34, 34]``, 10 classes. 60,000 training recordings (a stratified
    ``val_fraction`` of them, drawn with ``split_seed``, is the validation set) and 10,000 test
    recordings (only for testing). Expected in ``<data_dir>/NMNIST/``::

        Train/0/*.bin ... Train/9/*.bin
        Test/0/*.bin  ... Test/9/*.bin

    The options are those of :class:`EventDataModule` (``resize`` ``None``: 34), with:

    Args:
        time_steps: frames per recording ``T``.
    """

    name = "N-MNIST"
    tonic_class = tonic.datasets.NMNIST
    offline_class = _Offline.NMNIST
    num_classes = 10
    file_check = staticmethod(_check_nmnist_file)
    splits = {
        "train": _Split({"train": True}, "Train/*/*.bin", "train.zip"),
        "test": _Split({"train": False}, "Test/*/*.bin", "test.zip"),
    }
    layout = """
Train/0/*.bin ... Train/9/*.bin    (60,000 recordings; the folder name is the label)
Test/0/*.bin  ... Test/9/*.bin     (10,000 recordings)
"""

    def __init__(self, *, time_steps: int = 10, **kwargs: Any) -> None:
        super().__init__(time_steps=time_steps, **kwargs)

    def manual(self) -> str:
        c = self.tonic_class
        return f"""
download train.zip ({c.train_url})
     and test.zip  ({c.test_url})
into {self.folder}, then unzip both there (they hold Train/ and Test/).
"""


class CIFAR10DVSDataModule(EventDataModule):
    """CIFAR10-DVS (Li et al. 2017): 10,000 CIFAR-10 images recorded by a DVS, 1,000 per class.

    The dataset has no train/test split. The split here is fixed and documented: the files of
    each class are sorted by name (lexicographically, as torchvision's and SpikingJelly's folder
    datasets list them: ``..._0, ..._1, ..._10, ..._100, ...``) and the first ``train_fraction``
    (90%: 900 per class) are the training set, the rest (100 per class) the test set, as the
    GLIF authors split it. Results are only comparable between papers with the same split. A
    stratified ``val_fraction`` of the training set (drawn with ``split_seed``) is held out for
    validation, so training sees 8,100 recordings by default (the GLIF authors trained on all
    9,000 and reported test accuracy).

    The GLIF recipe (the defaults): ``T=16`` frames split by event count, resized to 48x48,
    random crop 48 with padding 4: frames ``[B, 16, 2, 48, 48]``. Reading the ``.aedat4`` files
    needs the ``aedat`` package (``pip install aedat``). Expected in ``<data_dir>/CIFAR10DVS/``::

        airplane/*.aedat4  automobile/*.aedat4  ...  truck/*.aedat4

    The options are those of :class:`EventDataModule` (``hflip`` is not in the GLIF recipe),
    with the recipe's defaults and one more:

    Args:
        time_steps: frames per recording ``T``.
        batch_size: recordings per batch.
        binning: ``"events"`` (T equal event counts, the recipe) or ``"time"``.
        resize: side of the frames after a bilinear resize (before the cache); ``None``: 128.
        crop_padding: training augmentation: zero-pad by this many pixels and crop back at a
            random position (0: off).
        train_fraction: share of each class (in sorted file order) in the training set.
        drop_last: drop the last, smaller training batch of each epoch (the GLIF authors' loader
            does; the recipe's text does not say).
    """

    name = "CIFAR10-DVS"
    tonic_class = tonic.datasets.CIFAR10DVS
    offline_class = _Offline.CIFAR10DVS
    num_classes = 10
    splits = {"all": _Split({}, "*/*.aedat4", "CIFAR10DVS.zip")}
    layout = """
airplane/*.aedat4  automobile/*.aedat4  bird/*.aedat4  cat/*.aedat4  deer/*.aedat4
dog/*.aedat4  frog/*.aedat4  horse/*.aedat4  ship/*.aedat4  truck/*.aedat4
(1,000 recordings per class; the folder name is the label)
"""

    def __init__(
        self,
        *,
        time_steps: int = 16,
        batch_size: int = 32,
        binning: Binning = "events",
        resize: int | None = 48,
        crop_padding: int = 4,
        train_fraction: float = 0.9,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0 < train_fraction < 1:
            raise ValueError("CIFAR10DVSDataModule: train_fraction must be in (0, 1).")
        self.train_fraction = train_fraction
        self.drop_last_train = bool(drop_last)
        super().__init__(
            time_steps=time_steps,
            batch_size=batch_size,
            binning=binning,
            resize=resize,
            crop_padding=crop_padding,
            **kwargs,
        )

    def manual(self) -> str:
        classes = " ".join(f"{c}.zip" for c in self.tonic_class.classes)
        return f"""
download CIFAR10DVS.zip ({self.tonic_class.url}) into {self.folder},
unzip it there, then unzip each class archive in place: {classes}
"""

    def _stage_splits(self, stage: str | None) -> list[str]:
        return ["all"]

    def _partition(self) -> dict[str, tuple[str, np.ndarray | None]]:
        labels = self._sources["all"].labels
        head, tail = per_class_head_split(labels, self.train_fraction)
        kept, held = stratified_holdout(labels[head], self.val_fraction, self.split_seed)
        return {"train": ("all", head[kept]), "val": ("all", head[held]), "test": ("all", tail)}


class DVSGestureDataModule(EventDataModule):
    """DVS128 Gesture (Amir et al. 2017), in Tonic's preprocessed ``.npy`` form (one recording
    per gesture, timestamps in ms): 11 classes (10 gestures and "other"), frames
    ``[B, T, 2, 128, 128]`` (or ``resize``). Users 1-23 train (a stratified ``val_fraction``
    of their recordings, drawn with ``split_seed``, is the validation set), users 24-29 test.
    Do not flip horizontally: left- and right-hand gestures are different classes.
    Expected in ``<data_dir>/DVSGesture/``::

        ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy    (file name = label)
        ibmGestureTest/user24_fluorescent/0.npy ...

    The options are those of :class:`EventDataModule` except ``hflip`` (``resize`` ``None``:
    128; e.g. 64 or 32), with:

    Args:
        time_steps: frames per recording ``T``.
        batch_size: recordings per batch.
    """

    name = "DVS128 Gesture"
    tonic_class = tonic.datasets.DVSGesture
    offline_class = _Offline.DVSGesture
    num_classes = 11
    splits = {
        "train": _Split({"train": True}, "ibmGestureTrain/*/*.npy", "ibmGestureTrain.tar.gz"),
        "test": _Split({"train": False}, "ibmGestureTest/*/*.npy", "ibmGestureTest.tar.gz"),
    }
    layout = """
ibmGestureTrain/user<NN>_<lighting>/<label>.npy   (users 01-23; label 0-10)
ibmGestureTest/user<NN>_<lighting>/<label>.npy    (users 24-29)
"""

    def __init__(self, *, time_steps: int = 16, batch_size: int = 16, **kwargs: Any) -> None:
        self._refuse(kwargs, ("hflip",), "left- and right-hand gestures are different classes")
        super().__init__(time_steps=time_steps, batch_size=batch_size, hflip=False, **kwargs)

    def manual(self) -> str:
        c = self.tonic_class
        return f"""
download ibmGestureTrain.tar.gz ({c.train_url})
     and ibmGestureTest.tar.gz  ({c.test_url})
into {self.folder}, then extract both there (tar xzf <archive>).
"""


class SHDDataModule(EventDataModule):
    """Spiking Heidelberg Digits (Cramer et al. 2020): spoken digits 0-9 in English and German
    as spikes of 700 cochlear channels; 20 classes.

    Frames ``[B, T, 1, 700]`` (spike counts per time bin and channel; flatten to ``[B, T, 700]``
    for a :class:`~lightning_glif.models.mlp.SpikingMLP`, which does it itself). With
    ``binning="time"`` each recording is cut into T equal windows of its own duration. 8,156
    training recordings (a stratified ``val_fraction``, drawn with ``split_seed``, validates;
    the speakers overlap with training) and 2,264 test recordings, partly by unseen speakers.
    Expected in ``<data_dir>/SHD/``::

        shd_train.h5  shd_test.h5

    The options are those of :class:`EventDataModule` except ``resize``, ``crop_padding`` and
    ``hflip`` (the 700 channels are not an image), with:

    Args:
        time_steps: frames per recording ``T``.
    """

    name = "SHD"
    tonic_class = tonic.datasets.SHD
    offline_class = _Offline.SHD
    num_classes = 20
    in_features = 700
    splits = {
        "train": _Split({"train": True}, "shd_train.h5", "shd_train.h5.zip"),
        "test": _Split({"train": False}, "shd_test.h5", "shd_test.h5.zip"),
    }
    layout = """
shd_train.h5   (HDF5: spikes/times, spikes/units, labels, extra/speaker, extra/keys)
shd_test.h5
"""

    def __init__(self, *, time_steps: int = 100, **kwargs: Any) -> None:
        self._refuse(
            kwargs,
            ("resize", "resize_antialias", "crop_padding", "hflip"),
            "its 700 channels are not an image",
        )
        super().__init__(
            time_steps=time_steps,
            resize=None,
            resize_antialias=True,
            crop_padding=0,
            hflip=False,
            **kwargs,
        )

    def manual(self) -> str:
        c = self.tonic_class
        return f"""
download {c.base_url}{c.train_zip}
     and {c.base_url}{c.test_zip}
into {self.folder} and extract them there, leaving shd_train.h5 and shd_test.h5.
"""

    def _open(self, split: str) -> SourceFrames:
        path = self.folder / f"shd_{split}.h5"
        try:
            return super()._open(split)
        except (OSError, KeyError) as err:
            raise CorruptFileError(path, f"{type(err).__name__}: {err}") from err

    def _labels(self, dataset: Any) -> np.ndarray:
        with h5py.File(os.path.join(dataset.location_on_system, dataset.data_filename), "r") as f:
            return f["labels"][()]
