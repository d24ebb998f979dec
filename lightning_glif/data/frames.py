"""From event streams to frame tensors: binning into exactly T frames, an atomic disk cache, and
the augmentation that runs on the cached frames.

Pipeline of every event DataModule (the cache sits between the slow and the random part)::

    events (structured array) --EventsToFrames--> frames [T, P, H, W] --AtomicDiskCache-->
    --FrameAugment--> float32 tensor [T, P, H, W]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..io import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

Binning = Literal["time", "events"]


class EventsToFrames:
    """Bin an event array into exactly ``time_steps`` frames with Tonic's ``ToFrame``.

    ``binning="time"`` cuts the recording's duration into T equal windows (``n_time_bins``);
    ``"events"`` cuts its ``n`` events into T runs of ``n // T`` (``n_event_bins``, the
    CIFAR10-DVS recipe), and the last frame also counts the ``n mod T`` events left over, as
    SpikingJelly's ``split_by="number"`` does (the GLIF authors' CIFAR10-DVS frames; Tonic drops
    them). Each frame counts the events per polarity and pixel: ``[T, P, H, W]`` int16, or
    ``[T, P, X]`` for sensors without a y axis (SHD). With ``size`` the frames are resized
    bilinearly (per frame and polarity, antialiased unless ``antialias=False``) to
    ``[T, P, size, size]`` float32.

    Tonic's own edge cases that this class fixes: an empty recording gets zero frames of the right
    shape and dtype (Tonic returns ``[T, P, W, H]`` float64 there), and for ``"time"`` unsorted
    timestamps are sorted first (Tonic's time slicer assumes sorted ones; ``"events"`` takes the
    events in file order, as SpikingJelly). Kept from Tonic: with ``"time"``, the remainder of
    the integer window falls off the end (the last event among it), and a recording shorter than
    T µs gives empty frames.

    Args:
        sensor_size: Tonic's ``(W, H, P)`` (``(700, 1, 1)`` for SHD).
        time_steps: ``T``, the number of frames.
        binning: ``"time"`` or ``"events"``.
        size: side of the square frames after resizing; ``None`` keeps the sensor's size.
        antialias: antialias the bilinear resize (a low-pass filter first when shrinking).
            ``False`` is plain bilinear interpolation, what torchvision's tensor ``Resize`` did
            by default before 0.17 and what the GLIF authors' CIFAR10-DVS frames went through.
    """

    def __init__(
        self,
        sensor_size: tuple[int, int, int],
        time_steps: int,
        binning: Binning = "time",
        size: int | None = None,
        antialias: bool = True,
    ) -> None:
        from .tonic_guard import tonic  # Tonic only where event data is binned

        if binning not in ("time", "events"):
            raise ValueError(f"binning must be 'time' or 'events', got {binning!r}.")
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}.")
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.time_steps = int(time_steps)
        self.binning = binning
        self.size = None if size is None else int(size)
        self.antialias = bool(antialias)
        bins = {"n_time_bins" if binning == "time" else "n_event_bins": self.time_steps}
        self.to_frame = tonic.transforms.ToFrame(sensor_size=self.sensor_size, **bins)

    @property
    def key(self) -> str:
        """Every parameter that changes the frames, as a folder name, e.g. ``T16-events-48x48``."""
        w, h, p = self.sensor_size
        side = f"{self.size}x{self.size}" if self.size else (f"{h}x{w}" if h > 1 else f"{w}")
        plain = "-noaa" if self.size and not self.antialias else ""  # antialias: no suffix
        return f"T{self.time_steps}-{self.binning}-{side}p{p}{plain}"

    def __call__(self, events: np.ndarray) -> np.ndarray:
        w, h, p = self.sensor_size
        image = "y" in events.dtype.names
        if len(events) == 0:
            frames = np.zeros((self.time_steps, p, *((h, w) if image else (w,))), dtype=np.int16)
        else:
            t = events["t"]
            if self.binning == "time" and np.any(t[1:] < t[:-1]):
                events = events[np.argsort(t, kind="stable")]
            frames = self.to_frame(events)  # a one-polarity sensor: Tonic sets every p to 0
            if self.binning == "events":
                rest = events[len(events) // self.time_steps * self.time_steps :]
                where = (rest["y"], rest["x"]) if image else (rest["x"],)
                np.add.at(frames[-1], (rest["p"].astype(int), *where), 1)
        if self.size is None:
            return frames
        resized = F.interpolate(
            torch.from_numpy(frames.astype(np.float32)),
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
            antialias=self.antialias,
        )
        return resized.numpy()


class AtomicDiskCache(Dataset):
    """``dataset``'s ``(frames, label)`` samples, each cached in ``<cache_path>/<index>_0.hdf5``
    (the frames lzf-compressed, the label an attribute) on first read, then read from there.

    A cache file appears atomically: it is written under a temporary name, fsynced and renamed
    (:func:`lightning_glif.io.atomic_path`), so a run killed mid-write leaves no half-written
    file that a later run could serve. Leftover temporary files are removed when the cache is
    opened once their writer is dead; a cache file that cannot be read (e.g. from an older
    version) is logged and rebuilt. The cache does not know what produced its files: callers put
    every parameter applied before the cache, and what identifies the source files, into
    ``cache_path``. ``transform`` runs on the frames after the cache (e.g. augmentation).
    """

    def __init__(self, dataset: Any, cache_path: str, transform: Any = None) -> None:
        self.dataset = dataset
        self.cache_path = Path(cache_path)
        self.transform = transform
        self.cache_path.mkdir(parents=True, exist_ok=True)  # several processes may race here
        remove_stale_temps(self.cache_path)  # what a killed writer left, before writing

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.cache_path / f"{index}_0.hdf5"
        frames = None
        if path.exists():
            try:
                with h5py.File(path, "r") as f:
                    frames, label = f["frames"][()], int(f.attrs["label"])
            except (OSError, KeyError) as err:
                log.warning("unreadable cache file %s (%s): rebuilding it", path, err)
        if frames is None:
            frames, label = self.dataset[index]
            with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("frames", data=frames, compression="lzf")
                f.attrs["label"] = label
        return (frames if self.transform is None else self.transform(frames)), label


class FrameAugment:
    """Cached frames -> float32 tensor, then the training augmentation, if any.

    The same random crop and flip are applied to all T frames and both polarities of a sample
    (torchvision's v2 transforms treat the leading dims ``[T, P]`` as a batch of one image).

    Args:
        size: side of the (square) frames, for the crop.
        crop_padding: zero padding on each side before a random crop back to ``size``
            (0: no crop). The CIFAR10-DVS recipe uses 4.
        hflip: flip horizontally with probability 0.5.
    """

    def __init__(self, size: int | None = None, crop_padding: int = 0, hflip: bool = False) -> None:
        ops = []
        if crop_padding:
            ops.append(v2.RandomCrop(size, padding=crop_padding))
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        self.augment = v2.Compose(ops) if ops else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        return x if self.augment is None else self.augment(x)
