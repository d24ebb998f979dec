"""TensorBoard's event checksums in C (``use_fast_event_checksums`` of
lightning_glif.callbacks.tensorboard): the same values as TensorBoard's pure-Python masked CRC32C,
installed where the event writer looks it up, and event files that TensorBoard's reader, which
checks every record's two checksums with its own function, reads back whole and refuses once a
byte is flipped."""

from __future__ import annotations

import random
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import (
    EventFileLoader,
    LegacyEventFileLoader,
)
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tb_masked_crc32c
from tensorboard.summary.writer import record_writer
from tensorboard.util.tensor_util import make_ndarray
from torch.utils.tensorboard import SummaryWriter

from lightning_glif.callbacks import tensorboard as tb_callbacks
from lightning_glif.callbacks.tensorboard import use_fast_event_checksums

# CRC32C test vectors of RFC 3720 (B.4) and of the usual "123456789" check: data -> (CRC32C,
# TensorFlow's masked CRC32C).
VECTORS = {
    b"": (0x00000000, 0xA282EAD8),
    b"123456789": (0xE3069283, 0xC78AB0E5),
    bytes(32): (0x8A9136AA, 0x0FD7FFFA),
    b"\xff" * 32: (0x62A8AB43, 0xF909B029),
    bytes(range(32)): (0x46DD794E, 0x951F7892),
    bytes(range(31, -1, -1)): (0x113FDB5C, 0x593B0D57),
}


def _fast_available() -> str | None:
    """Why the C checksum cannot be installed here, or None where it can."""
    try:
        import google_crc32c
    except ImportError:
        return "google_crc32c is not installed"
    if google_crc32c.implementation == "python":
        return "google_crc32c is its pure-Python fallback (no C extension)"
    return None


needs_fast = pytest.mark.skipif(_fast_available() is not None, reason=str(_fast_available()))


@pytest.fixture
def fast():
    """The masked CRC32C the project installs (it is, once the module is imported)."""
    assert use_fast_event_checksums()
    return record_writer.masked_crc32c


@needs_fast
def test_importing_the_module_installs_the_c_checksum():
    installed = record_writer.masked_crc32c
    assert installed is not tb_masked_crc32c
    assert installed.__module__ == tb_callbacks.__name__
    # The reader keeps TensorBoard's own function: it checks what the fast one wrote.
    assert pywrap_tensorflow.masked_crc32c is tb_masked_crc32c
    assert use_fast_event_checksums() is True  # idempotent: the same function stays
    assert use_fast_event_checksums() is True
    assert record_writer.masked_crc32c is installed


@needs_fast
def test_known_vectors(fast):
    import google_crc32c

    for data, (crc, masked) in VECTORS.items():
        assert google_crc32c.value(data) == crc
        assert pywrap_tensorflow.crc32c(data) == crc
        assert tb_masked_crc32c(data) == masked
        assert fast(data) == masked


@needs_fast
def test_same_values_as_tensorboards_function_on_random_bytes(fast):
    rng = random.Random(20240517)
    lengths = [*range(65), *(rng.randrange(65, 5001) for _ in range(150)), 4096, 5000]
    for n in lengths:
        data = rng.randbytes(n)
        assert fast(data) == tb_masked_crc32c(data), n
    for n in (0, 1, 255, 256, 2**32 - 1, 2**32, 2**63 + 12345):  # record headers: <Q length
        header = struct.pack("<Q", n)
        assert fast(header) == tb_masked_crc32c(header), n


def test_without_the_c_package_tensorboards_function_stays(monkeypatch):
    monkeypatch.setattr(record_writer, "masked_crc32c", tb_masked_crc32c)
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import raises ImportError
    assert use_fast_event_checksums() is False
    assert record_writer.masked_crc32c is tb_masked_crc32c

    fallback = types.ModuleType("google_crc32c")  # the package's pure-Python fallback
    fallback.implementation = "python"
    fallback.value = lambda data: 0
    monkeypatch.setitem(sys.modules, "google_crc32c", fallback)
    assert use_fast_event_checksums() is False
    assert record_writer.masked_crc32c is tb_masked_crc32c


@needs_fast
def test_it_is_installed_again_over_tensorboards(monkeypatch):
    monkeypatch.setattr(record_writer, "masked_crc32c", tb_masked_crc32c)
    assert use_fast_event_checksums() is True
    assert record_writer.masked_crc32c is not tb_masked_crc32c
    assert record_writer.masked_crc32c(b"123456789") == 0xC78AB0E5


def raw_records(path: Path) -> list[tuple[int, bytes, int, bytes, int]]:
    """Each record of a TFRecord file: (offset, 8-byte length header, its masked CRC, payload,
    its masked CRC), split by hand (uint64 length, uint32 crc, data, uint32 crc; little-endian)."""
    blob = path.read_bytes()
    records, offset = [], 0
    while offset < len(blob):
        header = blob[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[offset + 8 : offset + 12])
        payload = blob[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", blob[offset + 12 + length : offset + 16 + length])
        records.append((offset, header, header_crc, payload, payload_crc))
        offset += 16 + length
    assert offset == len(blob)
    return records


SCALARS = [(step, 1.0 / (step + 3)) for step in range(5)]  # (step, loss); not exact in float32


@pytest.fixture
def event_file(tmp_path, monkeypatch) -> Path:
    """An event file of torch's SummaryWriter: its file_version event, five scalars and one
    histogram; every checksum of it computed by the function the project installs (counted)."""
    installed = record_writer.masked_crc32c
    calls = []

    def counting(data):
        calls.append(len(data))
        return installed(data)

    monkeypatch.setattr(record_writer, "masked_crc32c", counting)
    writer = SummaryWriter(log_dir=str(tmp_path))
    for step, loss in SCALARS:
        writer.add_scalar("train/loss", loss, step)
    writer.add_histogram(
        "weights", np.array([0.0, 1.0, 1.0, 2.0, 3.0]), 5, bins=np.array([0.0, 1, 2, 3, 4])
    )
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert len(calls) == 2 * 7  # a header and a payload for each of the 7 records
    assert calls[0::2] == [8] * 7
    return path


def test_the_written_checksums_are_tensorboards(event_file):
    records = raw_records(event_file)
    assert len(records) == 7
    for _, header, header_crc, payload, payload_crc in records:
        assert header_crc == tb_masked_crc32c(header)
        assert payload_crc == tb_masked_crc32c(payload)


def test_tensorboards_reader_reads_every_record_back(event_file):
    """The reader checks both checksums of each record; its loader stops quietly at a failed one,
    so every event read back, with its values, is the proof that none failed."""
    events = list(LegacyEventFileLoader(str(event_file)).Load())
    assert len(events) == 7
    assert events[0].file_version == "brain.Event:2"
    scalars = [
        (e.step, e.summary.value[0].tag, e.summary.value[0].simple_value) for e in events[1:6]
    ]
    assert scalars == [(step, "train/loss", np.float32(loss)) for step, loss in SCALARS]
    histogram = events[6]
    assert histogram.step == 5
    assert histogram.summary.value[0].tag == "weights"
    histo = histogram.summary.value[0].histo
    assert (histo.min, histo.max, histo.num, histo.sum, histo.sum_squares) == (0, 3, 5, 7, 15)
    assert list(histo.bucket_limit) == [0, 1, 2, 3, 4]
    assert list(histo.bucket) == [0, 1, 2, 1, 1]

    # As TensorBoard's UI loads them (the same record reader; scalars migrated to tensors).
    events = list(EventFileLoader(str(event_file)).Load())
    assert len(events) == 7
    scalars = [(e.step, make_ndarray(e.summary.value[0].tensor)) for e in events[1:6]]
    assert scalars == [(step, np.float32(loss)) for step, loss in SCALARS]


def _flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("where", "message"),
    [("payload", "failed event crc32 check"), ("header", "failed header crc32 check")],
)
def test_a_flipped_byte_fails_the_readers_check(event_file, where, message):
    records = raw_records(event_file)
    offset, _, _, payload, _ = records[3]  # the third scalar
    _flip(event_file, offset + 12 + len(payload) // 2 if where == "payload" else offset)

    reader = pywrap_tensorflow.PyRecordReader_New(str(event_file))  # what the loader reads with
    for _ in range(3):
        reader.GetNext()
    with pytest.raises(errors.DataLossError, match=message):
        reader.GetNext()
    # TensorBoard's loader takes the failure for a record still being written: it stops there.
    assert len(list(LegacyEventFileLoader(str(event_file)).Load())) == 3
