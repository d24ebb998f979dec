"""Sweeps (``ablate.py``) on Optuna: a sweep is an Optuna study in a storage, each run a trial.

- :mod:`~lightning_glif.sweep.storage`: the study's storage (an embedded SQLite file in ``--out``
  by default, or ``--storage URL``, e.g. PostgreSQL) with Optuna's heartbeat and retry of the
  trials of a lost worker.
- :mod:`~lightning_glif.sweep.grid`: the ablation grid (variants x seeds) as enqueued trials.
- :mod:`~lightning_glif.sweep.search`: a YAML search space of ``train.py`` options for a sampler.
- :mod:`~lightning_glif.sweep.devices`: which GPUs and cores each local worker's runs get.
- :mod:`~lightning_glif.sweep.processes`: the child processes and the signals that stop them.
- :mod:`~lightning_glif.sweep.worker`: a worker: take a trial, run its child, record the result.
- :mod:`~lightning_glif.sweep.child`: the child, ``python -m lightning_glif.sweep.child RUN_DIR``.
- :mod:`~lightning_glif.sweep.report`: results.csv/.md/.png from a study.
- :mod:`~lightning_glif.sweep.cli`: the command line (``ablate.py`` and its subcommands).
"""
