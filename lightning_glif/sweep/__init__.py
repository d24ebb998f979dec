"""Sweeps (``ablate.py``) on Optuna's public API, a study each: :mod:`~.grid` (ablations),
:mod:`~.search` (samplers), :mod:`~.worker` (storage, workers, a trial's child process),
:mod:`~.report` (a grid's statistics), :mod:`~.cli`. How it works: docs/sweeps.md."""
