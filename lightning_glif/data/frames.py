"""From events to frames, every event DataModule's pipeline: :class:`EventsToFrames`, then
:class:`AtomicDiskCache` (after the slow part), then :class:`FrameAugment` (the random part)."""

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
    """Bin an event array into exactly ``time_steps`` frames with Tonic's ``ToFrame``: event
    counts per polarity and pixel, ``[T, P, H, W]`` int16 (``[T, P, X]`` for SHD).

    ``binning="time"``: T equal windows of the recording's duration (unsorted timestamps are
    sorted first; as Tonic, the remainder of the integer window falls off the end). ``"events"``:
    T runs of ``n // T`` events in file order, the last frame also counting the ``n mod T`` left
    over, as SpikingJelly (the GLIF authors' CIFAR10-DVS frames; Tonic drops them). An empty
    recording gives zero frames of the right shape and dtype (Tonic's are ``[T, P, W, H]``).

    Args:
        sensor_size: Tonic's ``(W, H, P)`` (``(700, 1, 1)`` for SHD).
        time_steps: ``T``, the number of frames.
        binning: ``"time"`` or ``"events"``.
        size: resize bilinearly to ``[T, P, size, size]`` float32; ``None`` keeps the sensor's.
        antialias: antialias that resize; ``False`` is plain bilinear interpolation, as the
            GLIF authors' CIFAR10-DVS frames (torchvision's tensor ``Resize`` before 0.17).
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
    """``dataset``'s ``(frames, label)`` samples, cached in ``<cache_path>/<index>_0.hdf5`` on
    first read (atomically, :mod:`lightning_glif.io`; an unreadable file is rebuilt), then read
    from there; ``transform`` runs after the cache. Callers put every parameter applied before the
    cache, and what identifies the sources, into ``cache_path``.
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
    """Cached frames -> float32 tensor, then the training augmentation: a random crop back to
    ``size`` after ``crop_padding`` zeros per side (0: none) and flips (``hflip``), the same for
    all T frames and polarities of a sample (v2 transforms take ``[T, P]`` as one image's)."""

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
