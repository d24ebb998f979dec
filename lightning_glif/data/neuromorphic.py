"""LightningDataModules for the neuromorphic benchmarks, read with Tonic: N-MNIST, CIFAR10-DVS,
DVS128 Gesture and the Spiking Heidelberg Digits (SHD).

Every module serves ``(frames, label)`` batches: ``frames`` float32 ``[B, T, P, H, W]`` (event
counts per time bin, polarity and pixel; ``[B, T, 1, 700]`` for SHD) and ``label`` int64.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

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
    """Shared machinery and options of the Tonic DataModules; use one of its subclasses.

    ``setup`` checks that the files of the needed splits are there (else one
    :class:`~lightning_glif.data.errors.DatasetNotFoundError`), opens them with Tonic (in sorted
    path order, never downloading: :mod:`~lightning_glif.data.tonic_guard`), bins each sample
    into exactly ``time_steps`` frames and caches the frames
    (:class:`~lightning_glif.data.frames.AtomicDiskCache`) in::

        <data_dir>/cache/<Tonic name>/<T..-binning-size>/<split>-<sources hash>/<index>_0.hdf5

    The folder names every parameter applied before the cache, and the hash covers each source
    file's name, size, modification time and label: a changed ``time_steps``, ``binning`` or
    ``resize``, or a recording added, removed or rewritten, reads a new cache, never stale
    frames. Old caches stay until deleted. The training augmentation runs after the cache.

    **A new event dataset** is a subclass that sets the class attributes ``name`` (display
    name), ``tonic_class`` (the ``tonic.datasets`` class that reads it), ``num_classes``,
    ``splits`` (``{"train": Split(...), "test": Split(...)}``: Tonic's arguments and a glob of
    the extracted files) and ``layout`` (the expected files, for the not-found error), and
    writes :meth:`manual` (how to get the files). :class:`NMNISTDataModule` is the model to copy.

    The options common to all Tonic modules are declared here, once; a subclass's ``__init__``
    lists its own and those whose default differs, and passes the rest on with ``**kwargs``
    (which jsonargparse follows, so ``--help`` shows them all). An option passed explicitly in its
    ``super().__init__`` call is removed from the subclass's options.

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
        # in_channels and image_size only for image-like frames (see shared_values).
        self.in_channels = p if image else None
        self.image_size = (resize or h) if image else None
        self.train_augment = FrameAugment(self.image_size, crop_padding, hflip)
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

    # -- opening and splitting --------------------------------------------------------------
    def _stage_splits(self, stage: str | None) -> list[str]:
        if stage in ("fit", "validate"):
            return ["train"]
        if stage in ("test", "predict"):
            return ["test"]
        return list(self.splits)

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
            log.info(
                "%s %s: %d recordings, frames cached in %s",
                self.name,
                name,
                len(source) if index is None else len(index),
                cache_path,
            )
            cache = AtomicDiskCache(
                source, str(cache_path), self.train_augment if name == "train" else plain
            )
            self.datasets[name] = cache if index is None else Subset(cache, index.tolist())

    def split_manifest(self) -> dict[str, list[str]]:
        """``{split: [source, ...]}``: the file (for one-file datasets, file and sample) behind
        each sample of every split set up so far, in loader order without shuffling, relative to
        :attr:`folder` (two machines with the data in different places compare equal).
        :class:`~lightning_glif.callbacks.splits.SplitFiles` writes it into the run directory."""
        manifest = {}
        for name, dataset in self.datasets.items():
            cache = dataset.dataset if isinstance(dataset, Subset) else dataset
            index = dataset.indices if isinstance(dataset, Subset) else range(len(cache))
            sources = [cache.dataset.source(i) for i in index]
            manifest[name] = [os.path.relpath(s, self.folder) for s in sources]
        return manifest


class NMNISTDataModule(EventDataModule):
    """N-MNIST (Orchard et al. 2015): MNIST digits seen by an ATIS camera in three saccades.

    Frames ``[B, T, 2, 34, 34]``, 10 classes. 60,000 training recordings (a stratified
    ``val_fraction`` of them, drawn with ``split_seed``, is the validation set) and 10,000 test
    recordings (only for testing), expected in ``<data_dir>/NMNIST/`` (``layout``). The options
    are those of :class:`EventDataModule` (``resize`` ``None``: 34), with:

    Args:
        time_steps: frames per recording ``T``.
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

    The original recordings are jAER AEDAT 2.0 files of a DVS128: a 32-bit address per event,
    x in bits 7-1 and y in bits 14-8 with (0, 0) at the lower left, bit 0 the polarity (1 = ON).
    Tonic reads AEDAT 4 copies converted with iniVation's DV, whose origin is the upper left:
    ``x = x_raw, y = 127 - y_raw, p = p_raw``. The authors read the originals with SpikingJelly
    (``CIFAR10DVS.load_origin_data``): ``x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw``, and
    its frames put polarity ``p`` in channel ``p`` and the event in row ``y``, column ``x``.
    So, from Tonic's events: ``x = y_tonic, y = 127 - x_tonic, p = not p_tonic`` (the image
    turned 90 degrees counter-clockwise, OFF events in channel 1).
    """
    out = events.copy()
    out["x"], out["y"], out["p"] = events["y"], 127 - events["x"], ~events["p"]
    return out


class CIFAR10DVSDataModule(EventDataModule):
    """CIFAR10-DVS (Li et al. 2017): 10,000 CIFAR-10 images recorded by a DVS, 1,000 per class.

    The dataset has no train/test split. The split here is the GLIF authors': the files of each
    class sorted by name (lexicographically, as SpikingJelly lists them: ``..._0, ..._1, ..._10,
    ..._100, ...``), the first ``ceil(train_fraction * n)`` (900) train, the rest (100) test.
    Results are only comparable between papers with the same split. A stratified
    ``val_fraction`` of the training set (drawn with ``split_seed``) validates, so training sees
    8,100 recordings by default (the authors trained on all 9,000 and reported test accuracy).

    The GLIF recipe (the defaults): ``T=16`` frames split by event count, resized to 48x48,
    random crop 48 with padding 4: frames ``[B, 16, 2, 48, 48]``, in the layout the authors'
    frames had (:func:`authors_layout`), so their checkpoint sees its images the right way round.
    Reading the ``.aedat4`` files in ``<data_dir>/CIFAR10DVS/`` (``layout``) needs the ``aedat``
    package (``pip install aedat``). The options are those of :class:`EventDataModule`
    (``hflip`` is not in the GLIF recipe), with the recipe's defaults and these:

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
        event_layout: ``"authors"``: x, y and polarity as the GLIF authors' frames had them
            (:func:`authors_layout`); ``"tonic"``: as Tonic's files hold them (the layout of
            this project before; for models trained on it).
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
        event_layout: Literal["authors", "tonic"] = "authors",
        **kwargs: Any,
    ) -> None:
        if not 0 < train_fraction < 1:
            raise ValueError("CIFAR10DVSDataModule: train_fraction must be in (0, 1).")
        if event_layout not in ("authors", "tonic"):
            raise ValueError(
                f"CIFAR10DVSDataModule: event_layout must be 'authors' or 'tonic', got "
                f"{event_layout!r}."
            )
        self.train_fraction = train_fraction
        self.drop_last_train = bool(drop_last)
        self.event_layout = event_layout
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

    def event_transform(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return authors_layout if self.event_layout == "authors" else None

    def _partition(self) -> dict[str, tuple[str, np.ndarray | None]]:
        labels = self._sources["all"].labels
        head, tail = per_class_head_split(labels, self.train_fraction)
        kept, held = stratified_holdout(labels[head], self.val_fraction, self.split_seed)
        return {"train": ("all", head[kept]), "val": ("all", head[held]), "test": ("all", tail)}


class DVSGestureDataModule(EventDataModule):
    """DVS128 Gesture (Amir et al. 2017), in Tonic's preprocessed ``.npy`` form (one recording
    per gesture, timestamps in ms): 11 classes (10 gestures and "other"), frames
    ``[B, T, 2, 128, 128]`` (or ``resize``). Users 1-23 train (a stratified ``val_fraction``
    of their recordings, drawn with ``split_seed``, is the validation set), users 24-29 test;
    expected in ``<data_dir>/DVSGesture/`` (``layout``). The options are those of
    :class:`EventDataModule` except ``hflip`` (left- and right-hand gestures are different
    classes; ``resize`` ``None``: 128, e.g. 64 or 32), with:

    Args:
        time_steps: frames per recording ``T``.
        batch_size: recordings per batch.
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

    Frames ``[B, T, 1, 700]`` (spike counts per time bin and channel; flatten to ``[B, T, 700]``
    for a :class:`~lightning_glif.models.mlp.SpikingMLP`, which does it itself). With
    ``binning="time"`` each recording is cut into T equal windows of its own duration. 8,156
    training recordings (a stratified ``val_fraction``, drawn with ``split_seed``, validates;
    the speakers overlap with training) and 2,264 test recordings, partly by unseen speakers,
    expected in ``<data_dir>/SHD/`` (``layout``). The options are those of
    :class:`EventDataModule` except ``resize``, ``crop_padding`` and ``hflip`` (the 700 channels
    are not an image), with:

    Args:
        time_steps: frames per recording ``T``.
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

    def read_labels(self, dataset: Any) -> np.ndarray:
        with h5py.File(os.path.join(dataset.location_on_system, dataset.data_filename), "r") as f:
            return f["labels"][()]
