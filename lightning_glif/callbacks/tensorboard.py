"""Writing to TensorBoard from a callback: the run's SummaryWriter and figures as images; and
TensorBoard's event checksums in C (:func:`use_fast_event_checksums`, installed at import)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn

_crc32c: Any = None  # google_crc32c.value, once use_fast_event_checksums has installed it


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C of ``data`` (what ``tensorflow_stub.pywrap_tensorflow.
    masked_crc32c`` returns), the CRC computed in C: rotated right by 15 bits, plus 0xA282EAD8,
    modulo 2**32."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def use_fast_event_checksums() -> bool:
    """Make TensorBoard's event writer checksum records with :func:`masked_crc32c` (the C
    CRC32C of ``google_crc32c``); return whether it does. Idempotent; where that package is
    missing or is its pure-Python fallback (slower still), TensorBoard's own function stays and
    this returns False.

    Why: without TensorFlow, every record TensorBoard writes (``RecordWriter.write``, in the
    writer thread of torch's ``SummaryWriter`` and so of Lightning's ``TensorBoardLogger``) is
    checksummed twice (length header, payload) by a pure-Python, byte-at-a-time CRC32C, holding
    the GIL against the training loop; a row-digits run writes about 465 KB of events.
    ``python benchmarks/event_checksums.py`` times both functions. Reading is untouched:
    TensorBoard's reader keeps checking with its own function.

    Why by hand: no TensorBoard or Lightning option chooses the checksum, and ``RecordWriter
    .write`` looks ``masked_crc32c`` up in its module's globals at each call, so rebinding that
    global switches every writer, including those already open.
    """
    global _crc32c
    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:  # no tensorboard: nothing writes events through it
        return False
    if record_writer.masked_crc32c is masked_crc32c:
        return True
    try:
        import google_crc32c
    except ImportError:
        return False
    if google_crc32c.implementation == "python":
        return False
    _crc32c = google_crc32c.value
    record_writer.masked_crc32c = masked_crc32c
    return True


# At import, not in a callback hook: every process that uses the project's callbacks or its CLI
# imports this module (lightning_glif.callbacks imports it) before it writes an event.
use_fast_event_checksums()


def summary_writer(trainer: Trainer, owner: str) -> Any | None:
    """The SummaryWriter of the trainer's first TensorBoardLogger, or ``None`` (warned once).

    Only call it on global rank 0: other ranks hold a dummy experiment.

    Args:
        trainer: the running trainer.
        owner: the callback's name, for the warning.
    """
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    if trainer.fast_dev_run:  # it replaces the loggers on purpose
        return None
    rank_zero_warn(
        f"{owner} writes TensorBoard histograms and images but the trainer has no "
        "TensorBoardLogger (trainer.logger): nothing is logged. Add "
        "pytorch_lightning.loggers.TensorBoardLogger or remove the callback."
    )
    return None


def add_scalars_event(logger: TensorBoardLogger, metrics: dict[str, float], step: int) -> bool:
    """Write ``metrics`` as one TensorBoard event at ``step`` (one ``Summary`` holding every
    value, as TensorFlow's merged summaries are) and return True; False, writing nothing, where
    the logger is not one this applies to (a prefix, or a writer other than torch's).

    Why by hand: ``TensorBoardLogger.log_metrics`` calls ``add_scalar`` once per value, and each
    builds its own event, queue item, record and checksum (pure Python without TensorFlow):
    about 70 us a value against 6 for one event of 60 values. The monitors log 50 scalars an
    epoch, which made this a few percent of a row-digits run (benchmarks/loop_overhead.py).
    TensorBoard reads the values as it reads ``add_scalar``'s (float32 ``simple_value``).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    writer = logger.experiment
    if getattr(logger, "_prefix", "") or not isinstance(writer, SummaryWriter):
        return False
    if not metrics:
        return True
    values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in metrics.items()]
    writer._get_file_writer().add_summary(Summary(value=values), step)
    return True


def figure_to_image(figure: Any) -> np.ndarray:
    """Render a matplotlib ``Figure`` off-screen to an RGB image ``[H, W, 3]`` (uint8).

    Uses the Agg canvas directly, so no pyplot state or display backend is involved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def add_figure(writer: Any, tag: str, figure: Any, step: int) -> None:
    """Log ``figure`` as image ``tag`` at ``step`` (the Images tab of TensorBoard)."""
    writer.add_image(tag, figure_to_image(figure), step, dataformats="HWC")
