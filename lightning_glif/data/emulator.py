"""Event digits: an N-MNIST-like event dataset emulated from scikit-learn's 8x8 digits, offline.

Each digit, upsampled 3x, moves on a 34x34 sensor in three saccades of 100 ms (as N-MNIST's
camera); ideal DVS pixels (:func:`dvs_events`) turn it into Tonic event arrays (``x``, ``y``,
``t`` in µs, ``p`` True = ON), with a threshold mismatch and background events drawn from
``seed`` and the sample's index: the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import TensorDataset

from ..io import atomic_open, remove_stale_temps
from .digits import DigitsDataModule, load_digit_images
from .frames import Binning, EventsToFrames
from .tonic_guard import tonic

log = logging.getLogger(__name__)

SENSOR = 34  # pixels per side, as N-MNIST
SCALE = 3  # 8x8 digit -> 24x24 on the sensor
SACCADE_US = 100_000  # duration of one saccade
# Digit displacement (dx, dy) in pixels at the corners of the triangle: the shape of N-MNIST's
# saccades, (0, 0) -> (3.5, 7) -> (7, 0) -> (0, 0), scaled down to keep the digit on the sensor.
TRIANGLE = np.array([(0.0, 0.0), (2.0, 4.0), (4.0, 0.0), (0.0, 0.0)])


def dvs_events(
    log_intensity: np.ndarray, times: np.ndarray, threshold: float | np.ndarray
) -> list[np.ndarray]:
    """The events of ideal DVS pixels (ESIM / v2e without refractory period or noise) watching
    ``N`` videos, as ``N`` Tonic arrays sorted by time: when ``|L - L_ref|`` reaches a pixel's
    threshold ``C`` it emits ``floor(|L - L_ref| / C)`` events (ON for an increase) and moves its
    reference ``L_ref`` by as many thresholds; times are interpolated between steps.

    Args:
        log_intensity: ``[S, N, H, W]`` log intensity of each video at each simulation step.
        times: ``[S]`` increasing step times in µs.
        threshold: contrast threshold ``C`` in log units, a number or per pixel ``[N, H, W]``.
    """
    video = np.asarray(log_intensity, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    c = np.broadcast_to(np.asarray(threshold, dtype=np.float64), video.shape[1:])
    ref = video[0].copy()
    found = []
    for s in range(1, len(times)):
        prev, cur = video[s - 1], video[s]
        diff = cur - ref
        count = np.floor(np.abs(diff) / c).astype(np.int64)
        n, y, x = np.nonzero(count)
        if n.size == 0:
            continue
        k_max, sign, thr = count[n, y, x], np.sign(diff[n, y, x]), c[n, y, x]
        # One entry per event: the k-th crossing (k = 1..k_max) of the levels ref + sign * k * C.
        e = np.repeat(np.arange(n.size), k_max)
        k = np.arange(e.size) - np.repeat(np.cumsum(k_max) - k_max, k_max) + 1
        level = ref[n, y, x][e] + sign[e] * k * thr[e]
        a, b = prev[n, y, x][e], cur[n, y, x][e]
        # A crossing needs a change (|prev - ref| < C after every step), so b != a.
        frac = np.clip((level - a) / np.where(b == a, 1.0, b - a), 0.0, 1.0)
        t = times[s - 1] + frac * (times[s] - times[s - 1])
        found.append((n[e], y[e], x[e], np.round(t).astype(np.int64), sign[e] > 0))
        ref[n, y, x] += sign * k_max * thr
    if not found:
        return [np.zeros(0, dtype=tonic.io.events_struct) for _ in range(video.shape[1])]
    n, y, x, t, p = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.lexsort((t, n))
    n, y, x, t, p = n[order], y[order], x[order], t[order], p[order]
    bounds = np.searchsorted(n, np.arange(video.shape[1] + 1))
    return [
        tonic.io.make_structured_array(x[i:j], y[i:j], t[i:j], p[i:j], dtype=tonic.io.events_struct)
        for i, j in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def saccade_path(steps_per_saccade: int) -> tuple[np.ndarray, np.ndarray]:
    """``(times [S], offsets [S, 2])``: the digit's (dx, dy) along the triangle, three saccades."""
    s = steps_per_saccade
    frac = np.linspace(0.0, 1.0, s + 1)[:-1, None]
    legs = [a + frac * (b - a) for a, b in zip(TRIANGLE[:-1], TRIANGLE[1:], strict=True)]
    offsets = np.concatenate([*legs, TRIANGLE[-1:]])
    times = np.linspace(0.0, 3 * SACCADE_US, 3 * s + 1)
    return times, offsets


def render(images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[S, N, SENSOR, SENSOR]`` intensity in ``[0, 1]``: ``images [N, 8, 8]`` (in ``[0, 1]``)
    upsampled ``SCALE`` times (bilinear), centred, moved by each of ``offsets [S, 2]`` (dx, dy).
    The sub-pixel move is ``scipy.ndimage.shift(order=1)``'s bilinear shift, written as four
    weighted placements that move the whole stack at once."""
    big = np.clip(ndimage.zoom(images, (1, SCALE, SCALE), order=1), 0.0, 1.0)
    side = big.shape[-1]
    margin = (SENSOR - side - int(TRIANGLE.max()) - 1) // 2
    video = np.zeros((len(offsets), len(images), SENSOR, SENSOR))
    for frame, (dx, dy) in zip(video, offsets, strict=True):
        x0, y0 = int(np.floor(dx)), int(np.floor(dy))
        fx, fy = dx - x0, dy - y0
        for ox, wx in ((0, 1 - fx), (1, fx)):
            for oy, wy in ((0, 1 - fy), (1, fy)):
                y, x = margin + y0 + oy, margin + x0 + ox
                frame[:, y : y + side, x : x + side] += wy * wx * big
    return video


def emulate_digits(
    images: np.ndarray,
    seed: int = 0,
    contrast: float = 8.0,
    threshold: float = 0.25,
    threshold_mismatch: float = 0.1,
    noise_rate: float = 0.1,
    steps_per_saccade: int = 25,
    first_index: int = 0,
) -> list[np.ndarray]:
    """The events of an emulated DVS watching each digit move in three saccades (300 ms), as
    ``N`` Tonic arrays sorted by time.

    Args:
        images: ``[N, 8, 8]`` digits, intensity in ``[0, 1]``.
        seed: seed of the per-sample randomness (threshold mismatch, background activity).
        contrast: the brightest stroke's intensity over the background's (>= 1).
        threshold: mean contrast threshold ``C`` in log-intensity units.
        threshold_mismatch: relative pixel-to-pixel spread of ``C`` (clipped to +-50%).
        noise_rate: background-activity events per pixel and second (random polarity).
        steps_per_saccade: simulation steps per saccade (event times are interpolated).
        first_index: index of ``images[0]`` in the dataset: sample ``i`` draws from ``(seed,
            i)``, however the dataset is chunked.
    """
    if contrast < 1:
        raise ValueError(f"contrast must be >= 1 (stroke / background intensity), got {contrast}.")
    times, offsets = saccade_path(steps_per_saccade)
    video = np.log1p((contrast - 1.0) * render(images, offsets))  # log I, background at 0
    rngs = [np.random.default_rng([seed, first_index + i]) for i in range(len(images))]
    spread = [
        np.clip(1 + threshold_mismatch * r.standard_normal((SENSOR, SENSOR)), 0.5, 1.5)
        for r in rngs
    ]
    events = dvs_events(video, times, threshold * np.stack(spread))
    duration_s = times[-1] / 1e6
    for i, rng in enumerate(rngs):
        m = rng.poisson(noise_rate * SENSOR * SENSOR * duration_s)
        noise = tonic.io.make_structured_array(
            rng.integers(0, SENSOR, m),
            rng.integers(0, SENSOR, m),
            rng.integers(0, int(times[-1]), m),
            rng.random(m) < 0.5,
            dtype=tonic.io.events_struct,
        )
        both = np.concatenate([events[i], noise])
        events[i] = both[np.argsort(both["t"], kind="stable")]
    return events


class EventDigits:
    """scikit-learn's 1,797 digits as emulated event recordings: ``dataset[i]`` is ``(events,
    label)`` on a 34x34 sensor. Generated once into ``<save_to>/EventDigits/events-seed<seed>-<hash
    of the settings>.npz``, written atomically; a cache that cannot be read is regenerated.

    Args:
        save_to: data root.
        seed: seed of the emulator's randomness.
        threshold: contrast threshold in log units (lower: more events).
        noise_rate: background-activity events per pixel and second.
    """

    sensor_size = (SENSOR, SENSOR, 2)  # Tonic's (W, H, P)
    _version = 2  # bump when the generator or the file changes: old caches are then never read

    def __init__(
        self,
        save_to: str = "data",
        seed: int = 0,
        threshold: float = 0.25,
        noise_rate: float = 0.1,
    ) -> None:
        images, self.targets = load_digit_images()  # shared, read-only
        # float64: float32 input would change scipy's zoom and so the events
        self.images = images.astype(np.float64)
        self.params = {"seed": seed, "threshold": threshold, "noise_rate": noise_rate}
        blob = json.dumps({**self.params, "version": self._version}, sort_keys=True).encode()
        tag = hashlib.sha1(blob).hexdigest()[:8]
        folder = Path(save_to).expanduser() / type(self).__name__
        self.path = folder / f"events-seed{seed}-{tag}.npz"
        self.events, self.offsets = self._load_or_generate()

    def _load_or_generate(self) -> tuple[np.ndarray, np.ndarray]:
        """``(events, offsets)``: sample ``i``'s events are ``events[offsets[i]:offsets[i+1]]``."""
        if self.path.exists():
            try:
                with np.load(self.path) as f:
                    return f["events"], f["offsets"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                log.warning("unreadable cache %s (%s): regenerating it", self.path, err)
        log.info("emulating events for %d digits into %s", len(self.images), self.path)
        chunks = []
        for start in range(0, len(self.images), 128):
            batch = self.images[start : start + 128]
            chunks += emulate_digits(batch, first_index=start, **self.params)
        events = np.concatenate(chunks)
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent)  # what a killed writer left
        with atomic_open(self.path) as f:
            np.savez_compressed(f, events=events, offsets=offsets)
        return events, offsets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        i, j = self.offsets[index], self.offsets[index + 1]
        return self.events[i:j].copy(), int(self.targets[index])


class _Frames(TensorDataset):
    """Frames binned once, held as int16 (half the memory); served as float32."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, label = super().__getitem__(index)
        return frames.float(), label


class EventDigitsDataModule(DigitsDataModule):
    """Emulated event digits (:class:`EventDigits`) as frames ``[B, T, 2, 34, 34]`` float32 (event
    counts; channel 0 = OFF, 1 = ON) and int64 labels; no download. The split is
    ``DigitsDataModule``'s (the same digits for the same fractions and ``split_seed``).

    Args:
        data_dir: data root; the generated events are cached in ``<data_dir>/EventDigits``.
        time_steps: frames per recording ``T``.
        binning: ``"time"`` (T equal time windows) or ``"events"`` (T equal event counts).
    """

    in_channels = 2
    image_size = SENSOR
    dataset_class = _Frames

    def __init__(
        self,
        data_dir: str = "data",
        time_steps: int = 8,
        batch_size: int = 64,
        binning: Binning = "time",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, split_seed, num_workers)
        self.data_dir = data_dir
        self.time_steps = time_steps
        self.to_frames = EventsToFrames(EventDigits.sensor_size, time_steps, binning)

    def prepare_data(self) -> None:
        """Generate and cache the events (once per data root)."""
        EventDigits(self.data_dir)

    def inputs(self) -> tuple[torch.Tensor, np.ndarray]:
        dataset = EventDigits(self.data_dir)
        frames = np.stack([self.to_frames(dataset[i][0]) for i in range(len(dataset))])
        return torch.from_numpy(frames), dataset.targets
