"""A cost of a run taken off the loop: the monitors' scalars written as one TensorBoard event
per call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from lightning_glif.ablation import read_scalars
from lightning_glif.callbacks.hooks import log_scalars
from lightning_glif.callbacks.tensorboard import add_scalars_event


def scalar_events(log_dir) -> list[tuple[int, dict[str, float]]]:
    """Each event of the run's event files that holds values, as written (not migrated to tensors
    as TensorBoard's reader does): its step and its tag -> value."""
    events = []
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            if event.HasField("summary"):
                values = {v.tag: v.simple_value for v in event.summary.value}
                events.append((event.step, values))
    return events


class Loggers:
    """What ``log_scalars`` reads of a trainer: its loggers."""

    def __init__(self, *loggers):
        self.loggers = list(loggers)


def test_scalars_are_one_event_read_back_as_add_scalar_writes_them(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="merged", version=0)
    metrics = {"firing/conv1": 0.123456789, "synops/total": 3.5e9, "gate/alpha": -1.0}
    assert add_scalars_event(logger, metrics, step=7)
    assert add_scalars_event(logger, {"firing/conv1": 0.25}, step=9)
    logger.experiment.add_scalar("by_torch", 0.123456789, 7)  # torch's own path, for comparison
    logger.experiment.flush()

    events = scalar_events(logger.log_dir)
    assert [(step, sorted(values)) for step, values in events] == [
        (7, sorted(metrics)), (9, ["firing/conv1"]), (7, ["by_torch"])
    ]  # fmt: skip
    for tag, value in metrics.items():  # float32, as add_scalar stores them
        assert events[0][1][tag] == np.float32(value)
    assert events[0][1]["firing/conv1"] == events[2][1]["by_torch"]
    scalars = read_scalars(logger.log_dir)  # TensorBoard's reader, as the sweeps read runs
    assert scalars["firing/conv1"] == [(7, np.float32(0.123456789)), (9, 0.25)]
    assert scalars["synops/total"] == [(7, np.float32(3.5e9))]


def test_nothing_is_written_for_no_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="empty", version=0)
    assert add_scalars_event(logger, {}, step=3)
    logger.experiment.flush()
    assert scalar_events(logger.log_dir) == []


def test_a_prefixed_logger_and_other_loggers_keep_lightnings_path(tmp_path):
    """A prefix is the logger's to apply: such a logger, and a CSV logger beside it, get the
    values through ``log_metrics``, with the tags they would have had before."""
    prefixed = TensorBoardLogger(tmp_path, name="prefixed", version=0, prefix="run1")
    assert not add_scalars_event(prefixed, {"a": 1.0}, step=0)
    csv = CSVLogger(tmp_path, name="csv", version=0)
    plain = TensorBoardLogger(tmp_path, name="plain", version=0)
    log_scalars(Loggers(prefixed, csv, plain), {"a": 1.0, "b": 2.0}, step=4)
    for logger in (prefixed, csv, plain):
        logger.save()

    assert scalar_events(prefixed.log_dir) == [(4, {"run1-a": 1.0}), (4, {"run1-b": 2.0})]
    assert scalar_events(plain.log_dir) == [(4, {"a": 1.0, "b": 2.0})]
    rows = (Path(csv.log_dir) / "metrics.csv").read_text()
    assert rows.splitlines() == ["a,b,step", "1.0,2.0,4"]
