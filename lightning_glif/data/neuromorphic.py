"""The neuromorphic benchmarks read with Tonic: N-MNIST, CIFAR10-DVS, DVS128 Gesture and SHD.

Each serves ``(frames, label)``: float32 ``[B, T, P, H, W]`` event counts per time bin, polarity
and pixel (``[B, T, 1, 700]`` for SHD), int64 labels.
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
from torch.utils.data import Dataset, Subset

from .base import LOADER_WORKERS, SplitDataModule
from .errors import CorruptFileError, DatasetNotFoundError
from .frames import AtomicDiskCache, Binning, EventsToFrames, FrameAugment
from .splits import per_class_head_split, stratified_holdout
from .tonic_guard import offline, tonic

log = logging.getLogger(__name__)


class SourceFrames(Dataset):
    """The Tonic dataset ``events``' samples binned by ``to_frames``, with their ``labels`` (read
    once, without the events); a sample that cannot be read names its file."""

    def __init__(self, events: Any, to_frames: EventsToFrames, labels: np.ndarray) -> None:
        self.events = events
        self.to_frames = to_frames
        self.labels = np.asarray(labels, dtype=np.int64)

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
            events, _ = self.events[index]
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                f"reading {self.source(index)} needs the `{err.name}` package: "
                f"pip install {err.name}"
            ) from err
        except Exception as err:
            raise CorruptFileError(self.source(index), f"{type(err).__name__}: {err}") from err
        return self.to_frames(events), int(self.labels[index])


class Split(NamedTuple):
    """Where one split of a Tonic dataset lies on disk (see :class:`EventDataModule`)."""

    kwargs: dict[str, Any]  # Tonic constructor arguments, e.g. {"train": True}
    pattern: str  # a glob under <data_dir>/<Tonic name>/ that matches only when the data is there


class EventDataModule(SplitDataModule):
    """The options and machinery shared by the Tonic DataModules; use one of its subclasses.

    ``setup`` opens the needed splits with Tonic in sorted path order, never downloading
    (:mod:`~.tonic_guard`), and caches each sample's frames in
    ``<data_dir>/cache/<Tonic name>/<T..-binning-size>/<split>-<hash>/``: the folder names every
    parameter applied before the cache, the hash each file's name, size, mtime and label, so
    other frames or recordings never read stale ones (old caches stay until deleted).

    **A new event dataset** is a subclass that sets ``name`` (display name), ``tonic_class``
    (the ``tonic.datasets`` class), ``num_classes``, ``splits`` (``{"train": Split(...), "test":
    Split(...)}``: Tonic's arguments and a glob of the extracted files) and ``layout`` (the
    files, for the not-found error), and writes :meth:`manual`; copy :class:`NMNISTDataModule`.
    Its ``__init__`` lists its own options and the defaults that differ and passes the rest on
    with ``**kwargs`` (jsonargparse follows it: ``--help`` shows them all); an option it passes
    explicitly to ``super().__init__`` is removed from its options.

    Args:
        time_steps: frames per recording ``T``.
        data_dir: data root, holding ``<Tonic name>/`` (the dataset) and ``cache/`` (frames).
        batch_size: recordings per batch.
        binning: ``"time"`` (T equal time windows) or ``"events"`` (T equal event counts).
        resize: side of the frames after a bilinear resize; ``None``: the sensor's size.
        resize_antialias: antialias that resize (``False``: plain bilinear, as the GLIF authors').
        crop_padding: training augmentation: zero-pad by this much, crop back randomly (0: off).
        hflip: training augmentation: random horizontal flips.
        val_fraction: share of the training recordings held out for validation (stratified).
        split_seed: seed of that held-out split.
        num_workers: DataLoader worker processes; the default is the number of CPUs this
            process may use, at most 4 (reading and binning recordings is the slow part).
        download: download and extract the dataset if it is missing.
    """

    name: ClassVar[str]
    tonic_class: ClassVar[type]
    num_classes: ClassVar[int]
    splits: ClassVar[dict[str, Split]]
    layout: ClassVar[str]

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
        num_workers: int = LOADER_WORKERS,
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
        _, h, p = self.tonic_class.sensor_size
        image = h > 1  # SHD's sensor is a row of 700 channels, not an image
        self.to_frames = EventsToFrames(
            self.tonic_class.sensor_size, time_steps, binning, resize, resize_antialias
        )
        self.in_channels = p if image else None
        self.image_size = (resize or h) if image else None
        self.train_augment = FrameAugment(self.image_size, crop_padding, hflip)
        self._sources: dict[str, SourceFrames] = {}

    def _refuse(self, kwargs: dict[str, Any], names: tuple[str, ...], why: str) -> None:
        """A clear TypeError for an option the subclass removed (not "multiple values")."""
        given = [name for name in names if name in kwargs]
        if given:
            raise TypeError(
                f"{type(self).__name__} has no option {', '.join(given)}: {why}. Remove it from "
                "the data's init_args."
            )

    @property
    def folder(self) -> Path:
        """``<data_dir>/<Tonic class name>``: where Tonic keeps this dataset."""
        return Path(self.data_dir).expanduser().resolve() / self.tonic_class.__name__

    def manual(self) -> str:
        """The manual download steps (shown in the not-found error)."""
        raise NotImplementedError

    def _ensure(self, splits: list[str]) -> None:
        def missing() -> list[str]:
            return [s for s in splits if not any(self.folder.glob(self.splits[s].pattern))]

        for split in missing() if self.download else []:
            log.info("downloading %s (%s) into %s", self.name, split, self.folder)
            self.tonic_class(str(self.folder.parent), **self.splits[split].kwargs)
        if still := [str(self.folder / self.splits[s].pattern) for s in missing()]:
            raise DatasetNotFoundError(self.name, self.folder, still, self.layout, self.manual())

    def prepare_data(self) -> None:
        """Download what is missing when ``download=True`` (one process); else nothing."""
        if self.download:
            self._ensure(list(self.splits))

    def event_transform(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """A function applied to each recording's events before binning (e.g. a change of
        coordinates), or ``None``. Its ``__name__`` is part of the cache path."""
        return None

    def read_labels(self, dataset: Any) -> np.ndarray:
        """The label of every recording of the Tonic ``dataset``, without reading events."""
        return np.asarray(dataset.targets)

    def _open(self, split: str) -> SourceFrames:
        spec = self.splits[split]
        try:
            dataset = offline(self.tonic_class)(
                str(self.folder.parent), transform=self.event_transform(), **spec.kwargs
            )
            labels = self.read_labels(dataset)
        except (OSError, KeyError) as err:  # e.g. SHD's truncated .h5, read by Tonic here
            path = self.folder / spec.pattern
            raise CorruptFileError(path, f"{type(err).__name__}: {err}") from err
        if dataset.data:  # Tonic lists some folders in file-system order: make it reproducible
            order = np.argsort(dataset.data, kind="stable")
            for attr in ("data", "targets", "users", "lighting"):  # DVSGesture: users, lighting
                if hasattr(dataset, attr):
                    setattr(dataset, attr, [getattr(dataset, attr)[i] for i in order])
            labels = labels[order]
        return SourceFrames(dataset, self.to_frames, labels)

    def _cache_path(self, split: str, source: SourceFrames) -> Path:
        events = source.events
        root = events.location_on_system
        files = events.data or [os.path.join(root, events.data_filename)]
        # the format (bump it when the same key starts to give other frames), the event transform
        lines = [f"cache 2 {getattr(self.event_transform(), '__name__', '')}"]
        for path, label in zip(files, source.labels if events.data else [""], strict=True):
            stat = os.stat(path)
            lines.append(f"{os.path.relpath(path, root)} {stat.st_size} {stat.st_mtime_ns} {label}")
        digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:8]
        folder = self.folder.parent / "cache" / self.tonic_class.__name__ / self.to_frames.key
        return folder / f"{split}-{digest}"

    def _partition(self) -> dict[str, tuple[str, np.ndarray]]:
        """``{name: (source split, indices)}`` for train / val / test."""
        parts = {}
        if "train" in self._sources:
            labels = self._sources["train"].labels
            kept, held = stratified_holdout(labels, self.val_fraction, self.split_seed)
            parts.update(train=("train", kept), val=("train", held))
        if "test" in self._sources:
            parts["test"] = ("test", np.arange(len(self._sources["test"])))
        return parts

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": "train", "validate": "train", "test": "test", "predict": "test"}.get(stage)
        splits = [wanted] if wanted in self.splits else list(self.splits)
        self._ensure(splits)
        for split in splits:
            if split not in self._sources:
                self._sources[split] = self._open(split)
        for name, (split, index) in self._partition().items():
            path = self._cache_path(split, self._sources[split])
            log.info("%s %s: %d recordings, frames cached in %s", self.name, name, len(index), path)
            augment = self.train_augment if name == "train" else FrameAugment()
            cache = AtomicDiskCache(self._sources[split], str(path), augment)
            self.datasets[name] = Subset(cache, index.tolist())

    def split_manifest(self) -> dict[str, list[str]]:
        """``{split: [source, ...]}``: the file (and sample, in one-file datasets) behind each
        sample of every split set up so far, in unshuffled loader order, relative to
        :attr:`folder`; :class:`~lightning_glif.callbacks.splits.SplitFiles` writes it."""
        return {
            name: [
                os.path.relpath(split.dataset.dataset.source(i), self.folder) for i in split.indices
            ]
            for name, split in self.datasets.items()
        }


class NMNISTDataModule(EventDataModule):
    """N-MNIST (Orchard et al. 2015): MNIST digits seen by an ATIS camera in three saccades.

    Frames ``[B, T, 2, 34, 34]``, 10 classes; 60,000 training recordings (a stratified
    ``val_fraction`` validates) and 10,000 test recordings in ``<data_dir>/NMNIST/``. The options
    of :class:`EventDataModule`.
    """

    name = "N-MNIST"
    tonic_class = tonic.datasets.NMNIST
    num_classes = 10
    splits = {
        "train": Split({"train": True}, "Train/*/*.bin"),
        "test": Split({"train": False}, "Test/*/*.bin"),
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


def authors_layout(events: np.ndarray) -> np.ndarray:
    """CIFAR10-DVS events as Tonic reads them -> as the GLIF authors' frames saw them.

    The originals are AEDAT 2.0 files of a DVS128 (x in address bits 7-1, y in bits 14-8, origin
    at the lower left, bit 0 the polarity). Tonic reads AEDAT 4 copies (origin at the upper
    left): ``x = x_raw, y = 127 - y_raw, p = p_raw``. The authors read the originals with
    SpikingJelly: ``x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw``, channel ``p``, row ``y``.
    So ``x = y_tonic, y = 127 - x_tonic, p = not p_tonic`` (docs/reproducing.md).
    """
    out = events.copy()
    out["x"], out["y"], out["p"] = events["y"], 127 - events["x"], ~events["p"]
    return out


class CIFAR10DVSDataModule(EventDataModule):
    """CIFAR10-DVS (Li et al. 2017): 10,000 CIFAR-10 images recorded by a DVS, 1,000 per class.

    The split is the GLIF authors': each class's files sorted by name (``..._0, ..._1, ..._10,
    ...``, as SpikingJelly), the first ``ceil(train_fraction * n)`` train, the rest test; a
    stratified ``val_fraction`` of the training files validates (the authors trained on all).
    The defaults are the GLIF recipe: frames ``[B, 16, 2, 48, 48]`` by event count, crop padding
    4, in the authors' layout (:func:`authors_layout`). The ``.aedat4`` files in
    ``<data_dir>/CIFAR10DVS/`` need the ``aedat`` package. The options of
    :class:`EventDataModule` (``hflip`` is not in the recipe), and:

    Args:
        train_fraction: share of each class (in sorted file order) in the training set.
        drop_last: drop the last, smaller training batch of each epoch (the GLIF authors' loader
            does; the recipe's text does not say).
    """

    name = "CIFAR10-DVS"
    tonic_class = tonic.datasets.CIFAR10DVS
    num_classes = 10
    splits = {"all": Split({}, "*/*.aedat4")}
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

    def event_transform(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return authors_layout

    def _partition(self) -> dict[str, tuple[str, np.ndarray]]:
        labels = self._sources["all"].labels
        head, tail = per_class_head_split(labels, self.train_fraction)
        kept, held = stratified_holdout(labels[head], self.val_fraction, self.split_seed)
        return {"train": ("all", head[kept]), "val": ("all", head[held]), "test": ("all", tail)}


class DVSGestureDataModule(EventDataModule):
    """DVS128 Gesture (Amir et al. 2017) in Tonic's ``.npy`` form: 11 classes (10 gestures and
    "other"), frames ``[B, T, 2, 128, 128]`` (or ``resize``). Users 1-23 train (a stratified
    ``val_fraction`` validates), users 24-29 test; in ``<data_dir>/DVSGesture/``. The options of
    :class:`EventDataModule` except ``hflip`` (left- and right-hand gestures are different
    classes).
    """

    name = "DVS128 Gesture"
    tonic_class = tonic.datasets.DVSGesture
    num_classes = 11
    splits = {
        "train": Split({"train": True}, "ibmGestureTrain/*/*.npy"),
        "test": Split({"train": False}, "ibmGestureTest/*/*.npy"),
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

    Frames ``[B, T, 1, 700]``, spike counts per bin and channel. 8,156 training recordings (a
    stratified ``val_fraction`` validates; same speakers) and 2,264 test recordings, partly by
    unseen speakers, in ``<data_dir>/SHD/``. The options of :class:`EventDataModule` except the
    image ones (``resize``, ``crop_padding``, ``hflip``).
    """

    name = "SHD"
    tonic_class = tonic.datasets.SHD
    num_classes = 20
    in_features = 700
    splits = {
        "train": Split({"train": True}, "shd_train.h5"),
        "test": Split({"train": False}, "shd_test.h5"),
    }
    layout = """
shd_train.h5   (HDF5: spikes/times, spikes/units, labels, extra/speaker, extra/keys)
shd_test.h5
"""

    def __init__(self, *, time_steps: int = 100, **kwargs: Any) -> None:
        image_options = ("resize", "resize_antialias", "crop_padding", "hflip")
        self._refuse(kwargs, image_options, "its 700 channels are not an image")
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

    def read_labels(self, dataset: Any) -> np.ndarray:
        with h5py.File(os.path.join(dataset.location_on_system, dataset.data_filename), "r") as f:
            return f["labels"][()]
