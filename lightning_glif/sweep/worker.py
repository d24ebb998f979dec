"""A worker: take a trial from the study, run its child (``train.py fit`` and the test of its
best-validation checkpoint, :mod:`lightning_glif.sweep.child`), put the result into the trial.

Each local worker is a thread with its own :class:`~lightning_glif.sweep.devices.Slot`; workers
on other machines are other ``ablate.py worker`` processes on the same storage. While a trial
runs, Optuna's heartbeat thread marks it alive; a worker that is killed stops the heartbeat, and
after the grace period any worker's :func:`optuna.storages.fail_stale_trials` fails the trial and
the storage's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues a retry (up to
``--max-retries``). A worker returns when no trial it may run is waiting or running.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize runs
from optuna.trial import FrozenTrial, TrialState

from lightning_glif.locks import DirectoryLock, DirectoryLocked
from lightning_glif.sweep import trials as T
from lightning_glif.sweep.devices import Slot
from lightning_glif.sweep.processes import Children, launch
from lightning_glif.sweep.storage import fail_stale_trials

POLL_S = 1.0  # seconds between looks at the storage while other workers' trials run
_take = threading.Lock()  # this process's workers take trials one at a time


def run_workers(
    study: optuna.Study,
    slots: list[Slot],
    out: Path,
    children: Children,
    log=print,
    accept: Callable[[FrozenTrial], bool] = lambda t: True,
    asker=None,
) -> None:
    """Run one worker per slot (threads) until none has a trial left; ``asker`` (a
    :class:`~lightning_glif.sweep.search.Asker`) samples new trials once none waits."""
    threads = [
        threading.Thread(
            target=work, args=(study, slot, Path(out), children, log, accept, asker),
            name=f"sweep-worker-{slot.index}", daemon=True,
        )
        for slot in slots
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # join with a timeout: the main thread keeps receiving signals
            t.join(timeout=0.5)


def _retrying(fn, *args):
    """``fn(*args)``, again after a pause while the storage answers that it is busy (SQLite's
    lock held by another process past its timeout, a dropped connection)."""
    for attempt in range(5):
        try:
            return fn(*args)
        except optuna.exceptions.StorageInternalError:
            if attempt == 4:
                raise
            time.sleep(1.0 + attempt)


def _next(study, accept, asker) -> FrozenTrial | None:
    with _take:
        _retrying(fail_stale_trials, study)
        trial = _retrying(T.pop_waiting, study, accept)
        if trial is None and asker is not None:
            trial = asker.ask()
        return trial


def _running(study: optuna.Study, accept) -> list[FrozenTrial]:
    states = (TrialState.RUNNING,)
    return [t for t in study.get_trials(deepcopy=False, states=states) if accept(t)]


def work(study, slot: Slot, out: Path, children: Children, log, accept, asker=None) -> None:
    """One worker's loop: take a trial, run it, until none is waiting or running (or a stop)."""
    waiting_logged = False
    while children.signum is None:
        trial = _next(study, accept, asker)
        if trial is not None:
            waiting_logged = False
            try:
                run_trial(study, trial, slot, out, children, log)
            except Exception as error:  # a fault of the worker, not of the run: fail the trial
                _fail_by_worker(study, trial, error, log)  # so that no one waits for it
            continue
        running = _retrying(_running, study, accept)
        if not running:
            return
        if not waiting_logged:
            grace = study._storage.get_heartbeat_interval() * 3
            log(f"[ablate] worker {slot.index}: waiting for {len(running)} running trial(s) "
                f"(#{', #'.join(str(t.number) for t in running)}); the trial of a lost worker "
                f"is retried once its heartbeat is {grace} s old")  # fmt: skip
            waiting_logged = True
        _sleep(POLL_S, children)


def _sleep(seconds: float, children: Children) -> None:
    end = time.monotonic() + seconds
    while children.signum is None and time.monotonic() < end:
        time.sleep(0.1)


def label(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if attrs.get("kind") == T.GRID:
        return f"{attrs['variant']} seed {attrs['seed']}"
    return f"trial #{trial.number}"


def run_dir_of(trial: FrozenTrial, out: Path) -> Path:
    attrs = trial.user_attrs
    if attrs.get("kind") == T.GRID:
        return out / attrs["variant"] / f"seed{attrs['seed']}"
    # a retry runs in the directory of the trial it retries
    first = (trial.system_attrs.get("retry_history") or [trial.number])[0]
    first = trial.system_attrs.get("requeued_from", first)
    return out / f"trial{first:04d}"


def fit_args(trial: FrozenTrial, run_dir: Path) -> list[str]:
    """The ``fit`` arguments of ``trial``'s run: its configs, the grid variant's neuron overlay
    or the search trial's parameters, the run directory and seed, the extra arguments."""
    attrs = trial.user_attrs
    args = [a for c in attrs["configs"] for a in ("--config", c)]
    if attrs.get("kind") == T.GRID:
        args += ["--config", str(run_dir / "variant.yaml")]
    for name, value in sorted(trial.params.items()):
        args += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    args += ["--trainer.default_root_dir", str(run_dir), "--seed_everything", str(attrs["seed"])]
    return args + list(attrs["train_args"])


def _prepare(trial: FrozenTrial, run_dir: Path, args: list[str]) -> bool:
    """Lay out ``run_dir`` for ``trial``; True if it already holds the result of a run with the
    same arguments (a worker lost after its child finished): that result is taken, not redone."""
    attrs = trial.user_attrs
    try:
        same = json.loads((run_dir / "run.json").read_text())["args"] == args
    except (OSError, ValueError, KeyError):
        same = False
    if same and (run_dir / "result.json").is_file():
        return True
    if run_dir.exists():  # interrupted or failed before: start it again from scratch
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if attrs.get("kind") == T.GRID:
        overlay = {"model": {"backbone": {"init_args": {"neuron": attrs["neuron"]}}}}
        (run_dir / "variant.yaml").write_text(
            f"# ablation variant {attrs['variant']!r}\n" + yaml.safe_dump(overlay, sort_keys=False)
        )
    spec = {"variant": attrs.get("variant"), "seed": attrs["seed"], "args": args,
            "monitor": attrs["monitor"], "mode": attrs["mode"]}  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(spec, indent=2))
    return False


def _wait_unlocked(run_dir: Path, children: Children, log, what: str) -> bool:
    """Wait while a live process (the child of a trial failed as stale while it still ran)
    holds ``run_dir``'s lock; False if the sweep was stopped meanwhile."""
    said = False
    while children.signum is None:
        try:
            with DirectoryLock(run_dir, what="run directory"):
                return True
        except DirectoryLocked as e:
            if not said:
                log(f"[ablate] {what}: waiting for {run_dir}, still in use ({e.holder})")
                said = True
            _sleep(2.0, children)
    return False


def _set(study: optuna.Study, trial: FrozenTrial, **attrs: Any) -> bool:
    """Set user attributes of a running trial; False if it was finished meanwhile (failed as
    stale by another worker)."""
    try:
        for k, v in attrs.items():
            _retrying(study._storage.set_trial_user_attr, trial._trial_id, k, v)
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def run_trial(study, trial: FrozenTrial, slot: Slot, out: Path, children: Children, log) -> None:
    """Run ``trial``'s child in ``slot`` and finish the trial: COMPLETE with the result in its
    ``result`` user attribute (value: the test accuracy of a grid run, the selection metric of a
    search run), FAIL with the log tail in ``error``, or (stopped by a signal) FAIL and queued
    again."""
    run_dir = run_dir_of(trial, out).resolve()
    what = label(trial)
    _set(study, trial, run_dir=str(run_dir),
         worker=f"{socket.gethostname()} pid {os.getpid()} slot {slot.index}")  # fmt: skip
    t0 = time.perf_counter()
    with get_heartbeat_thread(trial._trial_id, study._storage):
        code, tail = None, ""
        if _wait_unlocked(run_dir, children, log, what):
            args = fit_args(trial, run_dir)
            if _prepare(trial, run_dir, args):
                log(f"[ablate] adopt {what}: {run_dir}/result.json of an earlier try")
                code = 0
            else:
                log(f"[ablate] run {what} -> {run_dir}")
                code, tail = launch(run_dir, slot.env(), children)
        _finish(study, trial, run_dir, code, tail, time.perf_counter() - t0, children, log)


def _fail_by_worker(study, trial: FrozenTrial, error: Exception, log) -> None:
    """An exception in the worker itself (the storage, the run directory): the trial is failed
    with the traceback in ``error`` (a rerun enqueues it again) and the worker goes on."""
    import traceback

    tail = "".join(traceback.format_exception(error))[-4000:]
    try:
        _set(study, trial, status="failed", error=f"worker error: {tail}")
        _retrying(lambda: study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True))
    except Exception as again:  # the storage itself is gone: its heartbeat will go stale
        log(f"[ablate] could not fail trial #{trial.number} ({again}): it is retried once stale")
    log(f"[ablate] FAILED {label(trial)}: the worker raised {type(error).__name__}: {error}")


def _finish(study, trial, run_dir, code, tail, wall, children: Children, log) -> None:
    what = label(trial)
    tell = study.tell
    if code is None or run_dir in children.interrupted:
        (run_dir / "result.json").unlink(missing_ok=True)  # it may have finished while stopping
        _set(study, trial, interrupted=True)
        _retrying(lambda: tell(trial.number, state=TrialState.FAIL, skip_if_finished=True))
        T.requeue(study, trial)
        log(f"[ablate] interrupted {what}: queued again, a rerun redoes it")
        return
    if code == 0 and (run_dir / "result.json").exists():
        row = json.loads((run_dir / "result.json").read_text())
        live = _set(study, trial, result=row, status="ok")
        grid = trial.user_attrs.get("kind") == T.GRID
        value = row["test_acc"] if grid else row["selected_score"]
        _retrying(lambda: tell(trial.number, value, skip_if_finished=True))
        log(f"[ablate] done {what}: test acc {row['test_acc']:.4f}")
    else:
        live = _set(study, trial, status="failed", error=tail, wall_s=wall)
        _retrying(lambda: tell(trial.number, state=TrialState.FAIL, skip_if_finished=True))
        log(f"[ablate] FAILED {what} (exit {code}); see {run_dir}/train.log")
    if not live:
        log(f"[ablate] {what}: trial #{trial.number} was failed as stale meanwhile (its "
            "heartbeat was late); its retry takes this result")  # fmt: skip
