"""Sweeps (``ablate.py``) on Optuna's public API: a sweep is a study, each run a trial.

:mod:`~.grid` (ablation grids), :mod:`~.search` (samplers over train.py options), :mod:`~.worker`
(the storage, the workers and each trial's child process), :mod:`~.report` (results.csv/.md/.png
of a grid), :mod:`~.cli` (the command line). How it works: docs/sweeps.md.
"""
