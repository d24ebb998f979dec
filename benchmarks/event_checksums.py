"""TensorBoard's event checksum: its pure-Python masked CRC32C against the C one the project
installs (``lightning_glif.callbacks.tensorboard.masked_crc32c``), per call and per KB.

    python benchmarks/event_checksums.py

Each record TensorBoard writes is checksummed twice: its 8-byte length header and its payload
(a scalar event is about 50 bytes, a histogram a few hundred, an image tens of KB). Both
functions are checked to agree first; the calls are timed round-robin (medians of 5 rounds).
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

import torch
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleaved_times, machine_note, markdown_table  # noqa: E402
from lightning_glif.callbacks.tensorboard import (  # noqa: E402
    masked_crc32c,
    use_fast_event_checksums,
)


def main() -> None:
    if not use_fast_event_checksums():
        sys.exit("google_crc32c's C extension is not installed: pip install google-crc32c")
    rng = random.Random(0)
    rows = []
    for size in (8, 1024, 16 * 1024):
        data = rng.randbytes(size)
        assert masked_crc32c(data) == tensorboard_crc(data)
        calls = max(1, 200_000 // size)

        def repeat(fn, data=data, calls=calls):
            return lambda: [fn(data) for _ in range(calls)]

        fns = {"tensorboard": repeat(tensorboard_crc), "c": repeat(masked_crc32c)}
        times = interleaved_times(fns, rounds=5, device=torch.device("cpu"))
        py, c = (statistics.median(times[k]) / calls * 1e6 for k in ("tensorboard", "c"))
        per_kb = (f"{py / size * 1024:.1f}", f"{c / size * 1024:.3f}") if size >= 1024 else ("", "")
        rows.append([f"{size} B", f"{py:.2f}", f"{c:.3f}", *per_kb, f"{py / c:.0f}x"])
    print(f"# {machine_note(torch.device('cpu'))}")
    header = ["payload", "TensorBoard us/call", "C us/call", "TensorBoard us/KB", "C us/KB"]
    print(markdown_table([*header, "ratio"], rows))


if __name__ == "__main__":
    main()
