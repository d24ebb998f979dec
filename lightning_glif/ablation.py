"""Neuron ablations: a grid of neuron variants, each (variant, seed) a trial of an Optuna study,
each trial a full ``fit`` run in its own process.

``ablate.py`` is the command line (:func:`main`, :mod:`lightning_glif.sweep.cli`);
:func:`run_grid` is the whole local sweep as a function: enqueue the grid's points in the study
(the embedded ``OUT/study.db`` or ``storage``), run local workers on them
(:mod:`lightning_glif.sweep.worker`) and write the reports
(:mod:`lightning_glif.ablation_report`). The child of a trial is
:mod:`lightning_glif.sweep.child` (:func:`run_one`).

A run directory ``OUT/<variant>/seed<k>/`` holds ``variant.yaml`` (the neuron overlay),
``run.json`` (the ``fit`` arguments and the selection metric and mode), ``train.log`` (the
child's output), the TensorBoard logs and checkpoints (``selected/``: the child's own, on the
selection metric), and ``result.json``. The study is the record of what is done: a point with a
COMPLETE trial is never run again; one whose trials failed is enqueued again by a rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from lightning_glif import tags
from lightning_glif.sweep import devices
from lightning_glif.sweep import grid as _grid
from lightning_glif.sweep import trials as T
from lightning_glif.sweep.child import GATES, end_with_parent, read_scalars, run_one
from lightning_glif.sweep.cli import BASE_CONFIG, REFERENCE, SEEDS, STUDY, USAGE, main
from lightning_glif.sweep.grid import ALL, load_variants, read_grid
from lightning_glif.sweep.processes import STOP_GRACE_S, Children, SweepInterrupted
from lightning_glif.sweep.report import write_grid_report
from lightning_glif.sweep.storage import HEARTBEAT_S, MAX_RETRIES, open_storage, storage_url
from lightning_glif.sweep.worker import run_workers

AblationInterrupted = SweepInterrupted  # the name before the sweeps moved to Optuna

__all__ = [
    "ALL", "BASE_CONFIG", "GATES", "REFERENCE", "SEEDS", "STOP_GRACE_S", "USAGE",
    "AblationInterrupted", "end_with_parent", "load_variants", "main", "read_grid",
    "read_scalars", "run_grid", "run_one",
]  # fmt: skip


def run_grid(
    configs: list[str],
    variants: dict[str, dict],
    seeds: list[int],
    out: Path,
    jobs: int = 1,
    train_args: list[str] | None = None,
    log=print,
    monitor: str = tags.SELECTION,
    mode: str = tags.SELECTION_MODE,
    reference: str = REFERENCE,
    storage: str | None = None,
    study: str = STUDY,
    heartbeat: int = HEARTBEAT_S,
    max_retries: int = MAX_RETRIES,
    gpus: str | None = None,
    gpus_per_trial: int = 1,
) -> list[dict[str, Any]]:
    """Enqueue every (variant, seed) without a finished trial in ``study``, run ``jobs`` local
    workers until none of them is waiting or running (other workers on the same study may take
    some), and write ``results.csv``, ``results.md`` and ``results.png`` into ``out``
    (differences to ``reference``); return the rows, variants first.

    Each run tests its best epoch on ``monitor`` (``mode`` ``"max"`` or ``"min"``), recorded
    in its ``run.json``. A signal stops the workers: :class:`AblationInterrupted`."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1 (runs at once), got {jobs}.")
    slots = devices.slots(jobs, devices.visible_gpus(gpus), gpus_per_trial, devices.usable_cpus())
    out = Path(out).resolve()
    url = storage_url(storage, out)
    the_study = optuna.create_study(
        storage=open_storage(url, heartbeat, max_retries), study_name=study,
        direction="maximize", load_if_exists=True,
    )  # fmt: skip
    T.mark(the_study, T.GRID)
    the_study.set_user_attr("reference", reference)
    points = _grid.specs(configs, variants, seeds, list(train_args or []), monitor, mode)
    _grid.enqueue(the_study, points, log)
    mine = {(p["variant"], p["seed"]) for p in points}
    children = Children()
    with children.handling_signals():
        run_workers(the_study, slots, out, children, log, accept=lambda t: T.key(t) in mine)
    if children.signum is not None:
        raise SweepInterrupted(children.signum, children.interrupted)
    order = [(n, s) for n in variants for s in seeds]
    rows, _ = write_grid_report(the_study, out, reference, order)
    return rows
