"""The Tonic DataModules on fabricated data in each dataset's real on-disk format, offline.

Each test writes a few recordings under ``tmp_path`` in the layout Tonic reads (N-MNIST ``.bin``
with the 5-byte event encoding, DVS Gesture ``.npy``, SHD ``.h5``; for CIFAR10-DVS empty
``.aedat4`` files plus a patched ``read_aedat4``, the one function that decodes them: the
``aedat`` package that reads the real format is not installed here) and runs the real loading
code: Tonic's dataset class, the binning, the disk cache and the DataLoader (in the main process:
``num_workers=0``, except where workers are the point).

Tonic's own existence check (archive present and thousands of files) would fail on so few files
and start a download; the DataModules never let it run (they check for the extracted files
themselves, see ``lightning_glif.data.tonic_guard``), and ``no_network`` below makes any
download attempt fail.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import tonic
import torch

from lightning_glif.data.base import LOADER_WORKERS
from lightning_glif.data.errors import CorruptFileError, DatasetNotFoundError
from lightning_glif.data.frames import EventsToFrames
from lightning_glif.data.neuromorphic import (
    CIFAR10DVSDataModule,
    DVSGestureDataModule,
    NMNISTDataModule,
    SHDDataModule,
)

RNG_SEED = 0


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of Tonic to download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", refuse)


def random_events(rng: np.random.Generator, n: int, width: int, height: int, duration: int):
    """``n`` events (x, y, t µs, p) with sorted times in ``[0, duration)``."""
    return (
        rng.integers(0, width, n),
        rng.integers(0, height, n),
        np.sort(rng.integers(0, duration, n)),
        rng.integers(0, 2, n),
    )


# -- N-MNIST --------------------------------------------------------------------------------
def write_nmnist_bin(path: Path, x, y, t, p) -> None:
    """The inverse of Tonic's N-MNIST decoder: per event x, y, then p (bit 23) | t (23 bits)."""
    x, y, t, p = (np.asarray(a, dtype=np.uint32) for a in (x, y, t, p))
    assert t.max(initial=0) < 2**23, "longer recordings need overflow events (y = 240)"
    word = (p << 23) | t
    raw = np.stack([x, y, word >> 16 & 0xFF, word >> 8 & 0xFF, word & 0xFF], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.astype(np.uint8).tofile(path)


def make_nmnist(root: Path, per_class: int = 5, classes=(3, 7), test_per_class: int = 1):
    rng = np.random.default_rng(RNG_SEED)
    for folder, n in (("Train", per_class), ("Test", test_per_class)):
        for c in classes:
            for i in range(n):
                events = random_events(rng, 200, 34, 34, 300_000)
                write_nmnist_bin(root / "NMNIST" / folder / str(c) / f"{i:05d}.bin", *events)


def test_nmnist_bin_round_trip(tmp_path: Path) -> None:
    """The fabricated file decodes to the events written: the writer matches Tonic's reader."""
    x, y, t, p = [1, 33, 0], [2, 0, 33], [0, 5, 2**23 - 1], [1, 0, 1]
    write_nmnist_bin(tmp_path / "a.bin", x, y, t, p)
    events = tonic.io.read_mnist_file(str(tmp_path / "a.bin"), dtype=tonic.datasets.NMNIST.dtype)
    assert events["x"].tolist() == x and events["y"].tolist() == y
    assert events["t"].tolist() == t and events["p"].tolist() == p


def test_nmnist_batch(tmp_path: Path) -> None:
    make_nmnist(tmp_path)
    dm = NMNISTDataModule(
        data_dir=str(tmp_path), num_workers=0, time_steps=5, batch_size=4, val_fraction=0.2
    )
    dm.setup("fit")
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.shape == (4, 5, 2, 34, 34) and frames.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {3, 7}
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 2
    # the validation recordings come from Train/, one per class; the test set is not touched
    val = dm.split_manifest()["val"]
    assert all(s.startswith("Train/") for s in val)
    assert {Path(s).parent.name for s in val} == {"3", "7"}
    assert "test" not in dm.datasets
    dm.setup("test")
    frames, labels = next(iter(dm.test_dataloader()))
    assert frames.shape == (2, 5, 2, 34, 34) and labels.tolist() == [3, 7]


def test_nmnist_frames_are_exact(tmp_path: Path) -> None:
    """Frames are [T, P, H, W] (y is the row) with Tonic's binning: T equal windows of
    (t_last - t_first) // T, the last event falling off the end."""
    x, y, t, p = [1, 3, 5, 0], [2, 4, 6, 0], [0, 100, 200, 400], [1, 0, 1, 0]
    for digit in (0, 1):
        write_nmnist_bin(tmp_path / "NMNIST" / "Test" / str(digit) / "a.bin", x, y, t, p)
    dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=2, batch_size=2)
    dm.setup("test")
    frames, labels = next(iter(dm.test_dataloader()))
    expected = torch.zeros(2, 2, 34, 34)
    expected[0, 1, 2, 1] = expected[0, 0, 4, 3] = expected[1, 1, 6, 5] = 1
    assert torch.equal(frames[0], expected) and torch.equal(frames[1], expected)
    assert labels.tolist() == [0, 1]


def test_cache_path_holds_binning_parameters(tmp_path: Path) -> None:
    """A changed T or binning reads a new cache, never the frames of the old one."""
    make_nmnist(tmp_path, per_class=0, test_per_class=2)
    shapes = {}
    for t, binning in ((2, "time"), (3, "time"), (3, "events")):
        dm = NMNISTDataModule(
            data_dir=str(tmp_path), num_workers=0, time_steps=t, binning=binning, batch_size=4
        )
        dm.setup("test")
        shapes[t, binning] = next(iter(dm.test_dataloader()))[0].shape[1]
    assert shapes == {(2, "time"): 2, (3, "time"): 3, (3, "events"): 3}
    keys = sorted(p.name for p in (tmp_path / "cache" / "NMNIST").iterdir())
    assert keys == ["T2-time-34x34p2", "T3-events-34x34p2", "T3-time-34x34p2"]


def test_interrupted_cache_is_rebuilt(tmp_path: Path) -> None:
    """A leftover temporary file is ignored and a truncated cache file is rebuilt, so the
    frames served are the same as from a clean cache."""
    make_nmnist(tmp_path, per_class=0, test_per_class=3)

    def test_frames() -> torch.Tensor:
        dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=4, batch_size=8)
        dm.setup("test")
        return next(iter(dm.test_dataloader()))[0]

    clean = test_frames()
    (cache,) = (tmp_path / "cache" / "NMNIST" / "T4-time-34x34p2").iterdir()
    files = sorted(cache.glob("*.hdf5"))
    assert [f.name for f in files] == [f"{i}_0.hdf5" for i in range(6)]
    half = files[1].read_bytes()[: files[1].stat().st_size // 2]
    files[1].write_bytes(half)  # what a run killed mid-write leaves with a non-atomic cache
    files[2].unlink()
    (cache / "2_0.hdf5.tmp-12345-deadbeef").write_bytes(half)  # an atomic write cut short
    assert torch.equal(test_frames(), clean)
    assert files[1].stat().st_size > len(half) and files[2].exists()


def test_a_rewritten_recording_gets_new_frames(tmp_path: Path) -> None:
    """The cache is keyed by each file's name, size and modification time: a recording
    rewritten under the same name is binned again, whether its size or only its time changed."""
    make_nmnist(tmp_path, per_class=0, test_per_class=1)
    path = tmp_path / "NMNIST" / "Test" / "3" / "00000.bin"

    def first_frames() -> torch.Tensor:
        dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=1, binning="events")
        dm.setup("test")
        return dm.datasets["test"][0][0]

    write_nmnist_bin(path, [1], [2], [0], [1])
    stat = path.stat()
    assert first_frames()[0, 1, 2, 1] == 1
    write_nmnist_bin(path, [5], [6], [0], [0])  # the same size: 5 bytes, one event
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # written a second later
    frames = first_frames()
    assert frames[0, 0, 6, 5] == 1 and frames.sum() == 1
    write_nmnist_bin(path, [7, 7], [8, 8], [0, 1], [1, 1])  # another size, the old time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    frames = first_frames()
    assert frames[0, 1, 8, 7] == 2 and frames.sum() == 2


def test_missing_dataset_gives_one_clear_error(tmp_path: Path) -> None:
    dm = NMNISTDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "NMNIST") in message
    assert "Train/*/*.bin" in message and "--data.init_args.download true" in message
    assert "download: true" in message and tonic.datasets.NMNIST.train_url in message
    assert isinstance(err.value, FileNotFoundError)
    assert not (tmp_path / "nowhere").exists()  # nothing created, nothing downloaded


def test_download_flag_lets_tonic_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With download=True the missing split goes through Tonic's own download (faked here)."""
    calls = []

    def fake_download(url, location, filename, md5):
        calls.append(filename)
        rng = np.random.default_rng(1)
        for c in (0, 1):
            path = Path(location) / "Test" / str(c) / "x.bin"
            write_nmnist_bin(path, *random_events(rng, 50, 34, 34, 1000))
        (Path(location) / filename).write_bytes(b"")

    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", fake_download)
    dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=2, download=True)
    dm.setup("test")
    assert calls == ["test.zip"]
    assert next(iter(dm.test_dataloader()))[0].shape == (2, 2, 2, 34, 34)


def test_truncated_bin_names_the_file(tmp_path: Path) -> None:
    make_nmnist(tmp_path, per_class=0, test_per_class=1)
    bad = tmp_path / "NMNIST" / "Test" / "7" / "00000.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=2)
    dm.setup("test")
    with pytest.raises(CorruptFileError, match="ValueError: .* truncated or corrupt") as err:
        next(iter(dm.test_dataloader()))
    assert str(bad) in str(err.value)


def test_datasets_pickle_for_worker_processes(tmp_path: Path) -> None:
    """Spawned DataLoader workers receive the dataset pickled (Tonic subclass included)."""
    make_nmnist(tmp_path, per_class=0, test_per_class=1)
    dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=2)
    dm.setup("test")
    copy = pickle.loads(pickle.dumps(dm.datasets["test"]))
    assert torch.equal(copy[0][0], dm.datasets["test"][0][0])
    assert type(copy.dataset.dataset.events).__name__ == "NMNIST"


@pytest.mark.slow
def test_a_spawned_worker_reads_the_dataset(tmp_path: Path) -> None:
    """A real spawned DataLoader worker unpickles the dataset (the never-downloading Tonic
    class included) and reads the same frames as the main process."""
    make_nmnist(tmp_path, per_class=0, test_per_class=1)
    dm = NMNISTDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=2)
    dm.setup("test")
    here = torch.stack([dm.datasets["test"][i][0] for i in range(2)])
    loader = torch.utils.data.DataLoader(
        dm.datasets["test"], batch_size=2, num_workers=1, multiprocessing_context="spawn"
    )
    frames, labels = next(iter(loader))
    assert torch.equal(frames, here) and labels.tolist() == [3, 7]


# -- DVS Gesture ----------------------------------------------------------------------------
def make_gesture(root: Path, users=(1, 2, 3, 4, 5), test_users=(24,), labels=(0, 10)):
    """Tonic's preprocessed layout: user folders of ``<label>.npy``, rows x, y, p, t in ms."""
    rng = np.random.default_rng(RNG_SEED)
    for folder, us in (("ibmGestureTrain", users), ("ibmGestureTest", test_users)):
        for u in us:
            for label in labels:
                x, y, t, p = random_events(rng, 300, 128, 128, 6000)
                path = root / "DVSGesture" / folder / f"user{u:02d}_fluorescent" / f"{label}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, np.stack([x, y, p, t], axis=1).astype(np.float64))


def test_gesture_batch_resized(tmp_path: Path) -> None:
    make_gesture(tmp_path)
    dm = DVSGestureDataModule(
        data_dir=str(tmp_path),
        num_workers=0,
        time_steps=4,
        batch_size=3,
        resize=32,
        crop_padding=2,
        val_fraction=0.2,
    )
    dm.setup()
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.shape == (3, 4, 2, 32, 32) and frames.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 10}
    sizes = {name: len(dataset) for name, dataset in dm.datasets.items()}
    assert sizes == {"train": 8, "val": 2, "test": 2}
    assert dm.num_classes == 11 and dm.image_size == 32


def test_gesture_truncated_npy_names_the_file(tmp_path: Path) -> None:
    make_gesture(tmp_path, users=(), test_users=(24,))
    bad = tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_fluorescent" / "10.npy"
    bad.write_bytes(bad.read_bytes()[:1000])
    dm = DVSGestureDataModule(data_dir=str(tmp_path), num_workers=0, time_steps=2)
    dm.setup("test")
    with pytest.raises(CorruptFileError) as err:
        list(dm.test_dataloader())
    assert str(bad) in str(err.value)


# -- SHD ------------------------------------------------------------------------------------
def write_shd(path: Path, labels: list[int], rng: np.random.Generator) -> None:
    """The Heidelberg layout: ragged spike times (s) and units per recording, plus labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(labels),), dtype=h5py.vlen_dtype("f4"))
        units = f.create_dataset("spikes/units", (len(labels),), dtype=h5py.vlen_dtype("u2"))
        for i in range(len(labels)):
            n = int(rng.integers(50, 150))
            times[i] = np.sort(rng.uniform(0, 0.8, n)).astype(np.float32)
            units[i] = rng.integers(0, 700, n).astype(np.uint16)
        f["labels"] = np.asarray(labels, dtype=np.uint16)
        f["extra/speaker"] = np.zeros(len(labels), dtype=np.uint16)
        f["extra/keys"] = np.array([f"digit-{k}".encode() for k in range(20)])


def test_shd_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(RNG_SEED)
    write_shd(tmp_path / "SHD" / "shd_train.h5", [0, 19] * 5, rng)
    write_shd(tmp_path / "SHD" / "shd_test.h5", [5, 6, 7], rng)
    dm = SHDDataModule(
        data_dir=str(tmp_path), num_workers=0, time_steps=20, batch_size=4, val_fraction=0.2
    )
    dm.setup()
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.shape == (4, 20, 1, 700) and frames.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 19}
    frames, labels = next(iter(dm.test_dataloader()))
    assert labels.tolist() == [5, 6, 7]
    assert dm.split_manifest()["test"][1] == "shd_test.h5 (sample 1)"


def test_shd_truncated_h5_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "SHD" / "shd_test.h5"
    write_shd(path, [1, 2], np.random.default_rng(0))
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(CorruptFileError) as err:
        SHDDataModule(data_dir=str(tmp_path)).setup("test")
    assert str(path) in str(err.value)


# -- CIFAR10-DVS ----------------------------------------------------------------------------
def fake_read_aedat4(path: str) -> np.ndarray:
    """Stands in for the aedat decoder: events in its dtype, the file's number in x."""
    number = int(Path(path).stem.rsplit("_", 1)[1])
    rng = np.random.default_rng(number)
    # A new dtype per call: Tonic renames the fields of the returned array's dtype in place.
    dtype = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])
    events = np.zeros(400, dtype=dtype)
    events["t"] = np.sort(rng.integers(0, 1_000_000, 400))
    events["x"] = number
    events["y"] = rng.integers(0, 128, 400)
    events["on"] = rng.random(400) < 0.5
    return events


def make_cifar10dvs(root: Path, classes=("airplane", "truck"), per_class: int = 12) -> None:
    """Empty .aedat4 files in the class folders; their content comes from the fake reader."""
    for name in classes:
        folder = root / "CIFAR10DVS" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"cifar10_{name}_{i}.aedat4").touch()


def test_cifar10dvs_recipe_and_fixed_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", fake_read_aedat4)
    make_cifar10dvs(tmp_path)
    dm = CIFAR10DVSDataModule(
        data_dir=str(tmp_path), num_workers=0, batch_size=4, val_fraction=0.25
    )
    dm.setup("fit")
    frames, labels = next(iter(dm.train_dataloader()))
    assert frames.shape == (4, 16, 2, 48, 48) and frames.dtype == torch.float32
    assert set(labels.tolist()) <= {0, 9}  # airplane, truck
    # per class, sorted file names 0, 1, 10, 11, 2, ..., 9: the first ceil(0.9 * 12) = 11 train
    # (the authors' split_to_train_test_set rounds up), the last one tests
    manifest = dm.split_manifest()
    assert manifest["test"] == [f"{c}/cifar10_{c}_9.aedat4" for c in ("airplane", "truck")]
    train_val = manifest["train"] + manifest["val"]
    assert len(train_val) == 22 and not set(train_val) & set(manifest["test"])
    assert len(manifest["val"]) == 6  # ceil(25% of the 22), three per class


def test_cifar10dvs_without_aedat_package_says_so(tmp_path: Path, monkeypatch):
    def missing_package(path):
        raise ModuleNotFoundError("No module named 'aedat'", name="aedat")

    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", missing_package)
    make_cifar10dvs(tmp_path, per_class=10)
    dm = CIFAR10DVSDataModule(data_dir=str(tmp_path), num_workers=0, val_fraction=0.2)
    dm.setup("test")
    with pytest.raises(ModuleNotFoundError, match="pip install aedat"):
        dm.datasets["test"][0]


def test_cifar10dvs_missing_names_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        CIFAR10DVSDataModule(data_dir=str(tmp_path)).setup("fit")
    assert "airplane/*.aedat4" in str(err.value) and str(tmp_path / "CIFAR10DVS") in str(err.value)


# The GLIF authors' CIFAR10-DVS frames, written here from the file formats and SpikingJelly's
# code (not from the module under test). An original recording is a jAER AEDAT 2.0 file: one
# 32-bit address per event, for the DVS128 x in bits 7-1 and y in bits 14-8 with (0, 0) at the
# lower left, polarity in bit 0 (1 = ON). Tonic reads AEDAT 4 copies made with iniVation's DV,
# whose (0, 0) is the upper left: x, 127 - y, the same polarity. SpikingJelly (the authors'
# reader) decodes the address with masks 0xFE, 0x7F00 and 1 and returns x = 127 - y_raw,
# y = 127 - x_raw, p = 1 - p_raw; its frames count event i in [channel p, row y, column x], each
# of the T frames takes n // T events in order, the last one also the n mod T left over.
def dvs128_address(x: np.ndarray, y: np.ndarray, on: np.ndarray) -> np.ndarray:
    return (y.astype(np.uint32) << 8) | (x.astype(np.uint32) << 1) | on.astype(np.uint32)


def as_dv_converts(address: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The AEDAT 4 events of the original addresses, in the aedat decoder's dtype."""
    x, y, on = (address >> 1) & 0x7F, (address >> 8) & 0x7F, address & 1
    events = np.zeros(len(t), np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")]))
    events["t"], events["x"], events["y"], events["on"] = t, x, 127 - y, on.astype(bool)
    return events


def as_spikingjelly_frames(address: np.ndarray, time_steps: int) -> np.ndarray:
    x_raw, y_raw, p_raw = (address & 0xFE) >> 1, (address & 0x7F00) >> 8, address & 1
    x, y, p = 127 - y_raw, 127 - x_raw, 1 - p_raw
    n, frames = len(address), np.zeros((time_steps, 2, 128, 128))
    for j in range(time_steps):
        stop = (j + 1) * (n // time_steps) if j < time_steps - 1 else n
        for i in range(j * (n // time_steps), stop):
            frames[j, p[i], y[i], x[i]] += 1
    return frames


def one_recording(tmp_path: Path, monkeypatch, events: np.ndarray, **options):
    """The frames of a fabricated airplane recording holding ``events``, not resized (ten such
    recordings: nine train, one tests)."""
    make_cifar10dvs(tmp_path, classes=("airplane",), per_class=10)
    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", lambda path: events.copy())
    dm = CIFAR10DVSDataModule(
        data_dir=str(tmp_path), num_workers=0, resize=None, crop_padding=0, **options
    )
    dm.setup("test")
    return dm.datasets["test"][0][0].numpy()


def test_cifar10dvs_one_event_lights_the_authors_pixel(tmp_path, monkeypatch) -> None:
    """An ON event at x=3, y=40 of Tonic's file is, in the original file, x=3, y=87, ON; the
    authors' reader put it at row 124, column 40, channel 0 (OFF)."""
    t = np.array([5])
    address = dvs128_address(np.array([3]), np.array([87]), np.array([1]))
    events = as_dv_converts(address, t)
    assert (events["x"][0], events["y"][0], events["on"][0]) == (3, 40, True)
    frames = one_recording(tmp_path, monkeypatch, events, time_steps=1)
    lit = [tuple(int(i) for i in index) for index in np.argwhere(frames)]
    assert lit == [(0, 0, 124, 40)]  # Tonic's layout would light (0, 1, 40, 3)
    assert np.array_equal(frames, as_spikingjelly_frames(address, 1))


def test_cifar10dvs_frames_equal_the_authors_frames(tmp_path, monkeypatch) -> None:
    """A recording of 1,000 random events (1000 = 16 * 62 + 8: the last frame takes 70): the
    served frames equal the ones SpikingJelly's formulas give from the original addresses."""
    rng = np.random.default_rng(3)
    address = dvs128_address(*(rng.integers(0, hi, 1000) for hi in (128, 128, 2)))
    events = as_dv_converts(address, np.sort(rng.integers(0, 10**6, 1000)))
    frames = one_recording(tmp_path, monkeypatch, events, time_steps=16)
    want = as_spikingjelly_frames(address, 16)
    assert want[-1].sum() == 70 and np.array_equal(frames, want)


# -- binning edge cases ---------------------------------------------------------------------
def test_empty_and_unsorted_recordings_bin_to_the_right_shape() -> None:
    to_frames = EventsToFrames((34, 34, 2), time_steps=3)
    empty = np.zeros(0, dtype=tonic.io.events_struct)
    frames = to_frames(empty)
    assert frames.shape == (3, 2, 34, 34) and frames.dtype == np.int16 and not frames.any()
    events = tonic.io.make_structured_array(
        np.array([1, 2, 3]), np.array([0, 0, 0]), np.array([300, 0, 150]), np.array([1, 1, 1])
    )
    frames = to_frames(events)
    assert frames[0, 1, 0, 2] == 1 and frames[1, 1, 0, 3] == 1  # sorted before slicing
    audio = np.zeros(0, dtype=tonic.datasets.SHD.dtype)
    assert EventsToFrames((700, 1, 1), time_steps=4)(audio).shape == (4, 1, 700)


def test_event_count_bins_put_the_remainder_in_the_last_frame() -> None:
    """10 events into 3 frames: 3, 3 and 4 (SpikingJelly's rule; Tonic alone drops the 10th)."""
    events = tonic.io.make_structured_array(
        np.arange(10), np.zeros(10, int), np.arange(10) * 100, np.ones(10, int)
    )
    frames = EventsToFrames((10, 1, 2), time_steps=3, binning="events")(events)
    assert frames[:, 1, 0].tolist() == [
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
    ]
    few = EventsToFrames((10, 1, 2), time_steps=12, binning="events")(events)
    assert few[:-1].sum() == 0 and few[-1].sum() == 10  # fewer events than frames: all last
    backwards = EventsToFrames((10, 1, 2), time_steps=3, binning="events")(events[::-1].copy())
    assert backwards[0, 1, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]  # file order, not time


# -- the options, as the CLI reads them -----------------------------------------------------
COMMON = {
    "data_dir": "data",
    "binning": "time",
    "val_fraction": 0.1,
    "split_seed": 0,
    "num_workers": LOADER_WORKERS,
    "download": False,
}
IMAGE = {"resize": None, "resize_antialias": True, "crop_padding": 0, "hflip": False}
OPTIONS = {
    NMNISTDataModule: {**COMMON, **IMAGE, "time_steps": 10, "batch_size": 64},
    CIFAR10DVSDataModule: {
        **COMMON,
        **IMAGE,
        "time_steps": 16,
        "batch_size": 32,
        "binning": "events",
        "resize": 48,
        "crop_padding": 4,
        "train_fraction": 0.9,
        "drop_last": False,
    },
    # no hflip: left- and right-hand gestures are different classes
    DVSGestureDataModule: {
        **COMMON,
        "time_steps": 16,
        "batch_size": 16,
        "resize": None,
        "resize_antialias": True,
        "crop_padding": 0,
    },
    SHDDataModule: {**COMMON, "time_steps": 100, "batch_size": 64},  # no image options
}


@pytest.mark.parametrize("cls", list(OPTIONS), ids=lambda c: c.__name__)
def test_cli_shows_every_option_with_its_dataset_default_and_doc(cls) -> None:
    """The common options are declared once (EventDataModule); jsonargparse, which builds the
    CLI, follows each subclass's ``**kwargs`` there and must show the subclass's defaults."""
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    assert parser.get_defaults().data.as_dict() == OPTIONS[cls]
    helps = {a.dest: a.help for a in parser._actions if a.dest.startswith("data.")}
    assert set(helps) == {f"data.{name}" for name in OPTIONS[cls]}
    assert all(text and len(text) > 10 for text in helps.values()), helps
    # the options the class removed are refused by the parser, not silently ignored
    for name in {"hflip", *IMAGE} - set(OPTIONS[cls]):
        with pytest.raises(ArgumentError, match=f"unrecognized arguments: --data.{name}"):
            parser.parse_args([f"--data.{name}", "1"])
    built = parser.instantiate(parser.parse_args([])).data
    assert type(built) is cls and built.time_steps == OPTIONS[cls]["time_steps"]
    assert built.batch_size == OPTIONS[cls]["batch_size"]


@pytest.mark.parametrize(
    "cls, option, reason",
    [
        (SHDDataModule, "resize", "its 700 channels are not an image"),
        (SHDDataModule, "hflip", "its 700 channels are not an image"),
        (DVSGestureDataModule, "hflip", "left- and right-hand gestures are different classes"),
    ],
)
def test_removed_option_is_one_clear_error(cls, option, reason) -> None:
    with pytest.raises(TypeError, match=f"{cls.__name__} has no option {option}: {reason}"):
        cls(**{option: 1})


# -- the authors' CIFAR10-DVS choices: plain resize, dropped last batch, the split on disk -------
def test_resize_without_antialiasing_is_plain_bilinear() -> None:
    """``resize_antialias=False`` is plain bilinear interpolation: halving a frame averages each
    2x2 block (by hand below); antialiased shrinking filters wider, so the two differ."""
    frame = np.zeros((1, 1, 4, 4), dtype=np.int16)
    frame[0, 0] = [[4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 8, 8], [0, 0, 8, 8]]
    plain = EventsToFrames((4, 4, 1), 1, size=2, antialias=False)
    plain.to_frame = lambda events: frame  # the binning is tested above; this is the resize
    one = np.zeros(1, dtype=tonic.io.events_struct)
    assert plain(one).tolist() == [[[[1.0, 0.0], [0.0, 8.0]]]]
    smooth = EventsToFrames((4, 4, 1), 1, size=2)
    smooth.to_frame = plain.to_frame
    assert not np.array_equal(smooth(one), plain(one))
    assert plain.key.endswith("-noaa") and not smooth.key.endswith("-noaa")


def test_cifar10dvs_drop_last_drops_the_smaller_batch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", fake_read_aedat4)
    make_cifar10dvs(tmp_path)  # 22 training recordings, 6 of them validate: 16 train
    for drop_last, sizes in ((True, [3] * 5), (False, [3] * 5 + [1])):
        dm = CIFAR10DVSDataModule(
            data_dir=str(tmp_path), num_workers=0, time_steps=2, batch_size=3, val_fraction=0.25,
            drop_last=drop_last,
        )  # fmt: skip
        dm.setup("fit")
        assert [len(y) for _, y in dm.train_dataloader()] == sizes


def _fit_cifar10dvs(root: Path, data: Path) -> Path:
    from lightning_glif.cli.main import cli_main

    cli = cli_main(
        [
            "fit",
            "--config", "conf/experiment/cifar10dvs_widenet7b_t16.yaml",
            "--data.init_args.data_dir", str(data),
            "--data.init_args.time_steps", "2",
            "--data.init_args.batch_size", "4",
            "--data.init_args.val_fraction", "0.25",
            "--data.init_args.num_workers", "0",
            "--trainer.default_root_dir", str(root),
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.precision", "32-true",
            "--trainer.accelerator", "cpu",
            "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    return Path(cli.trainer.log_dir)


@pytest.mark.slow
def test_cifar10dvs_split_is_written_to_the_run_directory(tmp_path: Path, monkeypatch) -> None:
    """Two runs prove they used the same split: each writes its file lists and their digests."""
    import hashlib
    import json

    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", fake_read_aedat4)
    monkeypatch.setattr("sys.argv", ["train.py"])
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    data = tmp_path / "data"
    make_cifar10dvs(data)
    first = _fit_cifar10dvs(tmp_path / "a", data)
    splits = first / "splits"
    test = (splits / "test.txt").read_text().splitlines()
    # per class, sorted names 0, 1, 10, 11, 2, ..., 9: the last of the 12 tests
    assert test == [f"{c}/cifar10_{c}_9.aedat4" for c in ("airplane", "truck")]
    train = (splits / "train.txt").read_text().splitlines()
    val = (splits / "val.txt").read_text().splitlines()
    assert len(train) == 16 and len(val) == 6 and not set(train) & set(val) | set(test) & set(val)
    summary = json.loads((splits / "splits.json").read_text())
    for name in ("train", "val", "test"):
        text = (splits / f"{name}.txt").read_bytes()
        assert summary[name]["sha256"] == hashlib.sha256(text).hexdigest()
        assert summary[name]["count"] == len(text.splitlines())
    # the data moved elsewhere: the same relative lists, the same digests
    moved = tmp_path / "moved"
    data.rename(moved)
    second = _fit_cifar10dvs(tmp_path / "b", moved)
    assert json.loads((second / "splits" / "splits.json").read_text()) == summary


def test_another_split_in_the_same_run_directory_is_written_beside_it(tmp_path: Path) -> None:
    """A run directory keeps the split it has; a different one goes to ``splits-2/``."""
    from types import SimpleNamespace

    from lightning_glif.callbacks.splits import SplitFiles

    def setup(manifest: dict[str, list[str]]) -> Path:
        data = SimpleNamespace(split_manifest=lambda: manifest)
        trainer = SimpleNamespace(datamodule=data, is_global_zero=True, log_dir=str(tmp_path))
        callback = SplitFiles()
        callback.setup(trainer, None, "fit")
        return callback.path

    first = {"train": ["a/1", "a/2"], "test": ["a/3"]}
    assert setup(first) == tmp_path / "splits"
    assert setup({"test": ["a/3"]}) == tmp_path / "splits"  # a subset, the same digests
    assert setup({"train": ["a/2", "a/1"], "test": ["a/3"]}) == tmp_path / "splits-2"  # order
    assert (tmp_path / "splits" / "train.txt").read_text() == "a/1\na/2\n"
    assert (tmp_path / "splits-2" / "train.txt").read_text() == "a/2\na/1\n"
