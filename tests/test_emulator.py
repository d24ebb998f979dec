"""The embedded temporal tasks: emulated event digits (the DVS pixel model, its determinism, its
cache) and row digits with the spiking MLP made for them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tonic
import torch
from sklearn.datasets import load_digits

from lightning_glif.data import emulator
from lightning_glif.data.digits import DigitsDataModule
from lightning_glif.data.emulator import (
    EventDigits,
    EventDigitsDataModule,
    dvs_events,
    emulate_digits,
)
from lightning_glif.data.sequential import RowDigitsDataModule
from lightning_glif.models.mlp import SpikingMLP
from lightning_glif.neurons import GLIF, LIF

DIGITS = load_digits()


def ramp(start: float, stop: float, steps: int = 11) -> np.ndarray:
    """A 1x1-pixel video ``[S, 1, 1, 1]`` whose log intensity goes linearly start -> stop."""
    return np.linspace(start, stop, steps).reshape(steps, 1, 1, 1)


# -- the pixel model ------------------------------------------------------------------------
@pytest.mark.parametrize("change, on", [(1.0, True), (-1.0, False)])
def test_polarity_of_brightening_and_darkening_pixel(change: float, on: bool) -> None:
    times = np.linspace(0, 1000, 11)
    (events,) = dvs_events(ramp(0.0, change), times, threshold=0.3)
    assert len(events) == 3  # floor(1.0 / 0.3) crossings
    assert events["p"].tolist() == [on] * 3
    # crossings at 0.3, 0.6, 0.9 of a linear ramp over 1000 µs
    assert events["t"].tolist() == [300, 600, 900]
    assert events.dtype == tonic.io.events_struct


@pytest.mark.parametrize("contrast", [0.5, 1.0, 2.0, 4.0])
def test_event_count_is_log_contrast_over_threshold(contrast: float) -> None:
    (events,) = dvs_events(ramp(0.0, contrast), np.linspace(0, 1000, 11), threshold=0.25)
    assert len(events) == math.floor(contrast / 0.25 + 1e-9)


def test_event_counts_grow_with_digit_contrast() -> None:
    images = DIGITS.images[:4] / 16.0
    counts = [
        sum(len(e) for e in emulate_digits(images, contrast=c, noise_rate=0.0))
        for c in (1.0, 2.0, 4.0, 8.0)
    ]
    assert counts[0] == 0 and counts[1] < counts[2] < counts[3]


def test_same_seed_same_events_other_seed_differs() -> None:
    images = DIGITS.images[:3] / 16.0
    a = emulate_digits(images, seed=1)
    b = emulate_digits(images, seed=1)
    c = emulate_digits(images, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    # a sample's events do not depend on the chunk it is generated in
    alone = emulate_digits(images[2:], seed=1, first_index=2)
    assert np.array_equal(alone[0], a[2])


def test_events_are_sorted_on_sensor_and_bin_with_tonic() -> None:
    (events,) = emulate_digits(DIGITS.images[:1] / 16.0)
    assert np.all(np.diff(events["t"]) >= 0) and events["t"].max() <= 300_000
    assert events["x"].max() < 34 and events["y"].max() < 34 and 1000 < len(events) < 20000
    frames = tonic.transforms.ToFrame(EventDigits.sensor_size, n_time_bins=6)(events)
    assert frames.shape == (6, 2, 34, 34)
    assert frames[:, 0].sum() > 0 and frames[:, 1].sum() > 0  # both polarities occur


# -- the cached dataset ---------------------------------------------------------------------
def fast_emulator(images: np.ndarray, first_index: int = 0, **params) -> list[np.ndarray]:
    """One event per digit, so cache tests do not wait for the emulator."""
    return [
        tonic.io.make_structured_array(
            np.array([1]),
            np.array([2]),
            np.array([first_index + i]),
            np.array([True]),
            dtype=tonic.io.events_struct,
        )
        for i in range(len(images))
    ]


def test_cache_is_atomic_and_rebuilt_when_broken(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(emulator, "emulate_digits", fast_emulator)
    first = EventDigits(str(tmp_path))
    folder = tmp_path / "EventDigits"
    assert [p.name for p in folder.iterdir()] == [first.path.name]  # no temporary left
    assert first[5][0]["t"].tolist() == [5] and first[5][1] == DIGITS.target[5]

    calls = []
    monkeypatch.setattr(
        emulator, "emulate_digits", lambda *a, **k: calls.append(1) or fast_emulator(*a, **k)
    )
    EventDigits(str(tmp_path))
    assert calls == []  # read from the cache
    (folder / f"{first.path.name}.tmp-999-0a1b2c3d").write_bytes(b"half a zip")  # interrupted
    first.path.write_bytes(first.path.read_bytes()[:100])  # a truncated cache
    again = EventDigits(str(tmp_path))
    assert calls and again[5][0]["t"].tolist() == [5]
    assert len(np.load(first.path)["offsets"]) == len(DIGITS.target) + 1
    other = EventDigits(str(tmp_path), seed=1)
    assert other.path != first.path  # emulator settings are part of the cache name


def test_event_digits_datamodule_serves_the_binned_events_in_the_digits_split(
    tmp_path: Path, monkeypatch
) -> None:
    """With one event per digit (x=1, y=2, ON, at t = its index): frames [T=1, 2, 34, 34] float32
    with that one count, held as int16, in DigitsDataModule's split of the same rows."""
    monkeypatch.setattr(emulator, "emulate_digits", fast_emulator)
    dm = EventDigitsDataModule(str(tmp_path), time_steps=1, binning="events")
    dm.setup("fit")
    digits = DigitsDataModule()
    digits.setup("fit")
    for name in ("train", "val", "test"):
        assert np.array_equal(dm.indices[name], digits.indices[name])
        frames, labels = dm.datasets[name].tensors
        assert frames.dtype == torch.int16 and frames.shape[1:] == (1, 2, 34, 34)
        assert torch.equal(labels, digits.datasets[name].tensors[1])
    frames, label = dm.datasets["val"][0]
    assert frames.dtype == torch.float32 and frames.sum() == 1 and frames[0, 1, 2, 1] == 1


@pytest.fixture(scope="module")
def event_digits_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real emulated dataset, generated once for this module (a few seconds)."""
    root = tmp_path_factory.mktemp("event_digits")
    EventDigitsDataModule(str(root)).prepare_data()
    return str(root)


@pytest.mark.slow  # the real emulated dataset, generated once
def test_event_digits_datamodule(event_digits_root: str) -> None:
    dm = EventDigitsDataModule(event_digits_root, time_steps=5, batch_size=16)
    dm.setup("fit")
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.shape == (16, 5, 2, 34, 34) and frames.dtype == torch.float32
    assert labels.dtype == torch.int64 and frames.sum() > 0
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}  # DigitsDataModule's split
    frames, labels = next(iter(dm.test_dataloader()))
    assert frames.shape[1:] == (5, 2, 34, 34)


@pytest.mark.slow  # the real emulated dataset, generated once
def test_event_digits_emulate_the_digits_as_before(event_digits_root: str) -> None:
    """The shared float32 digits reach the emulator as the float64 ``images / 16`` it always
    computed with (exact in both), so the events of a sample are unchanged."""
    dataset = EventDigits(event_digits_root)
    assert dataset.images.dtype == np.float64
    assert np.array_equal(dataset.images, DIGITS.images / 16.0)
    assert dataset.targets.tolist() == DIGITS.target.tolist()
    for i in (0, 130, 1796):  # in the first, second and last chunk of 128
        (expected,) = emulate_digits(DIGITS.images[i : i + 1] / 16.0, first_index=i)
        events, label = dataset[i]
        assert np.array_equal(events, expected) and label == DIGITS.target[i]


# -- row digits and the spiking MLP ---------------------------------------------------------
def test_row_digits_sequences() -> None:
    dm = RowDigitsDataModule(batch_size=32)
    dm.setup()
    rows, labels = next(iter(dm.test_dataloader()))
    assert rows.shape == (32, 8, 8) and rows.dtype == torch.float32 and labels.dtype == torch.int64
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 1257, "val": 270, "test": 270}
    first = torch.from_numpy(DIGITS.images.astype(np.float32) / 16.0)
    match = (first == rows[0]).flatten(1).all(1)  # step t of a sequence is row t of its digit
    assert match.any()
    held = RowDigitsDataModule(time_steps=16)
    held.setup()
    twice = held.datasets["test"].tensors[0][0]
    assert twice.shape == (16, 8) and torch.equal(twice[0], twice[1])
    with pytest.raises(ValueError, match="multiple of 8"):
        RowDigitsDataModule(time_steps=12)


@pytest.mark.parametrize("neuron", [GLIF, LIF])
def test_spiking_mlp_shapes_and_gradients(neuron) -> None:
    net = SpikingMLP(neuron, time_steps=8, num_classes=10, in_features=8, hidden=(16, 12))
    x = torch.rand(4, 8, 8)
    out = net(x)
    assert out.shape == (8, 4, 10)
    out.mean(0).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    # trailing dims are flattened: SHD frames [B, T, 1, 700]
    shd = SpikingMLP(neuron, time_steps=3, num_classes=20, in_features=700, hidden=(8,))
    assert shd(torch.rand(2, 3, 1, 700)).shape == (3, 2, 20)
    with pytest.raises(ValueError, match="in_features"):
        net(torch.rand(4, 8, 9))


def test_spiking_mlp_learns_row_digits() -> None:
    """Four epochs of a GLIF MLP on row digits beat chance (10%) by far: the task is learnable.
    (Seeds 0-3 give 62-67% here; 10 epochs of the default MLP reach about 95%.)"""
    torch.manual_seed(0)
    dm = RowDigitsDataModule(batch_size=64)
    dm.setup()
    net = SpikingMLP(GLIF, time_steps=8, hidden=(64,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        for rows, labels in dm.train_dataloader():
            loss = torch.nn.functional.cross_entropy(net(rows).mean(0), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    rows, labels = dm.datasets["val"].tensors
    with torch.no_grad():
        accuracy = (net(rows).mean(0).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.4


@pytest.mark.parametrize(
    "cls", ["DigitsDataModule", "RowDigitsDataModule", "EventDigitsDataModule"]
)
@pytest.mark.parametrize("fractions", [(0.0, 0.15), (0.15, 1.0), (0.6, 0.5)])
def test_bad_split_fractions_fail_at_construction(cls, fractions):
    import lightning_glif.data as data

    with pytest.raises(ValueError, match=rf"{cls}: val_fraction and test_fraction must be in"):
        getattr(data, cls)(val_fraction=fractions[0], test_fraction=fractions[1])
