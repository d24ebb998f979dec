"""Trials on the storage: take a waiting one, find duplicates, queue one again.

Optuna's ``Study.ask`` takes a waiting trial too, but when none is left it samples a new one;
a grid worker must instead stop (or wait for the running ones), so :func:`pop_waiting` takes a
waiting trial the way ``Study.ask`` does (the storage's atomic WAITING -> RUNNING update, which
only one worker wins), with a filter on which trials this worker runs.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # what Study.optimize checks
from optuna.trial import FrozenTrial, TrialState

GRID, SEARCH = "grid", "search"  # the "kind" user attribute of a study and of its trials
ACTIVE = (TrialState.WAITING, TrialState.RUNNING)


def key(trial: FrozenTrial) -> tuple | None:
    """A grid trial's (variant, seed); None for a search trial (each is its own run)."""
    attrs = trial.user_attrs
    if attrs.get("kind") != GRID:
        return None
    return attrs["variant"], attrs["seed"]


def is_duplicate(trial: FrozenTrial) -> bool:
    """A trial skipped because another one runs or ran the same grid point."""
    return "duplicate_of" in trial.system_attrs


def mark(study: optuna.Study, kind: str) -> None:
    """Record the study's kind (grid or search); a study of the other kind is refused."""
    have = study.user_attrs.get("kind")
    if have not in (None, kind):
        from lightning_glif.sweep.storage import StorageError

        raise StorageError(
            f"study {study.study_name!r} is a {have} study, not a {kind} one: pass another --study."
        )
    if have is None:
        study.set_user_attr("kind", kind)


def study_id(study: optuna.Study) -> int:
    return study._storage.get_study_id_from_name(study.study_name)


def pop_waiting(
    study: optuna.Study, accept: Callable[[FrozenTrial], bool] = lambda t: True
) -> FrozenTrial | None:
    """Take (set RUNNING) the oldest waiting trial ``accept`` admits; None if there is none.

    A grid trial whose point another trial has finished, or holds with a lower number, is
    marked a duplicate (PRUNED, system attribute ``duplicate_of``) instead: two commands that
    enqueued the same grid at once then run each point once."""
    storage = study._storage
    for trial in storage.get_all_trials(study_id(study), states=(TrialState.WAITING,)):
        if not accept(trial):
            continue
        try:  # FrozenTrial has no public id; the storage's API is by id
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                continue  # another worker took it
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        # A first heartbeat at once: a worker killed before its heartbeat thread starts would
        # otherwise leave a RUNNING trial with no heartbeat, which Optuna never finds stale.
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial._trial_id)
        taken = storage.get_trial(trial._trial_id)
        other = _holder(study, taken)
        if other is None:
            return taken
        storage.set_trial_system_attr(taken._trial_id, "duplicate_of", other.number)
        storage.set_trial_state_values(taken._trial_id, state=TrialState.PRUNED)
    return None


def _holder(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """Another trial of ``trial``'s grid point that is finished (COMPLETE) or active with a
    lower number; None if ``trial`` is the one to run."""
    k = key(trial)
    if k is None:
        return None
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or key(other) != k or is_duplicate(other):
            continue
        if other.state == TrialState.COMPLETE:
            return other
        if other.state in ACTIVE and other.number < trial.number:
            return other
    return None


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a copy of ``trial`` (its parameters and user attributes), as
    :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` does for a stale trial, for an
    interrupted one: it does not count as a retry."""
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k in SPEC_KEYS},
            system_attrs={"requeued_from": trial.number},
        )
    )


#: The user attributes a trial is enqueued with (what it runs); the others are its outcome.
SPEC_KEYS = ("kind", "variant", "seed", "neuron", "configs", "train_args", "monitor", "mode")


def tries(trial: FrozenTrial) -> int:
    """How many times ``trial``'s run was started before (its stale predecessors)."""
    from lightning_glif.sweep.storage import quiet

    with quiet():
        return len(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial))
