"""The monitors' scalars reach every logger of the trainer through its public ``log_metrics``:
TensorBoard (with or without a prefix) and CSV alike."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from monitoring import read_events
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lightning_glif.callbacks.hooks import log_scalars


def test_scalars_reach_every_logger_as_its_log_metrics_writes_them(tmp_path):
    prefixed = TensorBoardLogger(tmp_path, name="prefixed", version=0, prefix="run1")
    plain = TensorBoardLogger(tmp_path, name="plain", version=0)
    csv = CSVLogger(tmp_path, name="csv", version=0)
    trainer = SimpleNamespace(loggers=[prefixed, plain, csv])  # what log_scalars reads
    log_scalars(trainer, {"spikes/val/rate": 0.123456789, "energy/val/uJ": 3.5}, step=4)
    log_scalars(trainer, {"spikes/val/rate": 0.25}, step=9)
    for logger in (prefixed, plain, csv):
        logger.save()
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()

    def scalars(log_dir, tag):
        return [(e.step, e.value) for e in read_events(log_dir).Scalars(tag)]

    assert scalars(plain.log_dir, "spikes/val/rate") == [(4, np.float32(0.123456789)), (9, 0.25)]
    assert scalars(plain.log_dir, "energy/val/uJ") == [(4, 3.5)]
    assert scalars(prefixed.log_dir, "run1-energy/val/uJ") == [(4, 3.5)]  # its prefix
    rows = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()
    assert rows == ["energy/val/uJ,spikes/val/rate,step", "3.5,0.123456789,4", ",0.25,9"]
