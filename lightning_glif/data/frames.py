"""From event streams to frame tensors: binning into exactly T frames, an atomic disk cache, and
the augmentation that runs on the cached frames.

Pipeline of every event DataModule (the cache sits between the slow and the random part)::

    events (Tonic structured array) --EventsToFrames--> frames [T, P, H, W] --AtomicDiskCache-->
    --FrameAugment--> float32 tensor [T, P, H, W]
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tonic import DiskCachedDataset
from tonic.cached_dataset import load_from_disk_cache, save_to_disk_cache
from tonic.transforms import ToFrame
from torchvision.transforms import v2

from ..io import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

Binning = Literal["time", "events"]


class EventsToFrames:
    """Bin an event array into exactly ``time_steps`` frames with Tonic's ``ToFrame``.

    ``binning="time"`` cuts the recording's duration into T equal windows (``n_time_bins``);
    ``"events"`` cuts its events into T equal counts (``n_event_bins``, the CIFAR10-DVS recipe).
    Each frame counts the events per polarity and pixel: ``[T, P, H, W]`` int16, or
    ``[T, P, X]`` for sensors without a y axis (SHD). With ``size`` the frames are resized
    bilinearly (per frame and polarity, antialiased unless ``antialias=False``) to
    ``[T, P, size, size]`` float32.

    Tonic's own edge cases that this class fixes: an empty recording gets zero frames of the right
    shape and dtype (Tonic returns ``[T, P, W, H]`` float64 there), and unsorted timestamps are
    sorted first (Tonic's time slicer assumes sorted ones). Kept from Tonic: the remainder of
    ``n // T`` events (``"events"``) or of the integer window (``"time"``) falls off the end, and
    a recording shorter than T µs or with fewer than T events gives empty frames.

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
        self.to_frame = ToFrame(sensor_size=self.sensor_size, **bins)

    @property
    def key(self) -> str:
        """Every parameter that changes the frames, as a folder name, e.g. ``T16-events-48x48``."""
        w, h, p = self.sensor_size
        side = f"{self.size}x{self.size}" if self.size else (f"{h}x{w}" if h > 1 else f"{w}")
        plain = "-noaa" if self.size and not self.antialias else ""  # antialias: no suffix
        return f"T{self.time_steps}-{self.binning}-{side}p{p}{plain}"

    def __call__(self, events: np.ndarray) -> np.ndarray:
        w, h, p = self.sensor_size
        if len(events) == 0:
            shape = (p, h, w) if "y" in events.dtype.names else (p, w)
            frames = np.zeros((self.time_steps, *shape), dtype=np.int16)
        else:
            t = events["t"]
            if np.any(t[1:] < t[:-1]):
                events = events[np.argsort(t, kind="stable")]
            frames = self.to_frame(events)
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


class AtomicDiskCache(DiskCachedDataset):
    """``tonic.DiskCachedDataset`` (one HDF5 file per sample, ``<index>_0.hdf5``) whose files
    appear atomically.

    Tonic writes a cache file in place, so a run killed mid-write leaves a truncated file that a
    later run may serve. Here each file is written under a unique temporary name
    (``<index>_0.hdf5.tmp-<pid>-<random>``), fsynced and renamed with ``os.replace``
    (:mod:`lightning_glif.io`), so a cache file is either complete or absent. A leftover
    temporary file is never read, and is removed when the cache is next opened once its writer is
    dead; a cache file that cannot be read (e.g. written by an older, non-atomic run) is logged
    and rebuilt. One copy per sample (``num_copies`` is ignored): randomness belongs in
    ``transform``, after the cache.

    The cache does not know the transform that produced its files: callers put every pre-cache
    parameter into ``cache_path``.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        remove_stale_temps(self.cache_path)  # what a killed writer left, before writing

    def __getitem__(self, item: int) -> tuple[object, object]:
        path = os.path.join(self.cache_path, f"{item}_0.hdf5")
        data = target = None
        if os.path.exists(path):
            try:
                data, target = load_from_disk_cache(path)
            except (OSError, KeyError, ValueError) as err:
                log.warning("unreadable cache file %s (%s): rebuilding it", path, err)
                data = None
        if data is None:
            data, target = self._build(item, path)
        if self.transform is not None:
            data = self.transform(data)
        if self.target_transform is not None:
            target = self.target_transform(target)
        if self.transforms is not None:
            data, target = self.transforms(data, target)
        return data, target

    def _build(self, item: int, path: str) -> tuple[object, object]:
        data, target = self.dataset[item]
        with atomic_path(path) as tmp:
            save_to_disk_cache(data, target, file_path=str(tmp), compress=self.compress)
        # Read back, as Tonic does, so the first epoch returns the same types as later ones.
        return load_from_disk_cache(path)


class FrameAugment:
    """Cached frames -> float32 tensor, then the training augmentation, if any.

    The same random crop and flip are applied to all T frames and both polarities of a sample
    (torchvision's v2 transforms treat the leading dims ``[T, P]`` as a batch of one image).

    Args:
        size: side of the (square) frames; needed by the crop.
        crop_padding: zero padding on each side before a random crop back to ``size``
            (0: no crop). The CIFAR10-DVS recipe uses 4.
        hflip: flip horizontally with probability 0.5.
    """

    def __init__(self, size: int | None = None, crop_padding: int = 0, hflip: bool = False) -> None:
        ops = []
        if crop_padding:
            if size is None:
                raise ValueError("FrameAugment: a random crop needs the frame size.")
            ops.append(v2.RandomCrop(size, padding=crop_padding))
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        self.augment = v2.Compose(ops) if ops else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        return x if self.augment is None else self.augment(x)
