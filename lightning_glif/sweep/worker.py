"""A sweep's storage and workers. ``Study.optimize`` runs each trial as a child process (``fit``,
then a test of the checkpoint it selected) and keeps its heartbeat: a dead worker's trial is
stale after 3 heartbeats, and the next worker retries it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from functools import partial
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.trial import TrialState

EMBEDDED, HEARTBEAT_S, MAX_RETRIES = "study.db", 10, 2  # --out's storage file; defaults
ROOT = Path(__file__).resolve().parents[2]


def storage_url(storage: str | None, out: str | Path) -> str:
    """``storage`` (``postgres[ql]://`` through psycopg 3), else the SQLite ``OUT/study.db``."""
    if not storage:
        return f"sqlite:///{Path(out).resolve() / EMBEDDED}"
    scheme, _, rest = storage.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else storage


def lock(url: str):
    """A lock beside an embedded study (none for a server's): commands on one --out take turns."""
    path = url.removeprefix("sqlite:///")
    return FileLock(f"{path}.lock") if path != url else contextlib.nullcontext()


class SQLiteStorage(optuna.storages.RDBStorage):
    """The embedded storage. SQLite has no ``SELECT ... FOR UPDATE``, so two workers could take
    the same waiting trial (Optuna's FAQ, "SQLite concurrency"): a file lock makes it atomic."""

    def __init__(self, url: str, **kwargs) -> None:
        super().__init__(url, **kwargs)
        self.state_lock = FileLock(url.removeprefix("sqlite:///") + ".state.lock")

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        with self.state_lock:
            return super().set_trial_state_values(trial_id, state, values)


def open_study(url, name, heartbeat=HEARTBEAT_S, retries=MAX_RETRIES, create=None):
    """The study ``name`` at ``url`` (created with ``create``, create_study's keywords, if given);
    an embedded file that is not a sound SQLite database is moved aside, a new study started.
    ValueError for a study that is not there."""
    if heartbeat < 1 or retries < 0:
        raise ValueError(f"need --heartbeat >= 1 and --max-retries >= 0: {heartbeat}, {retries}")
    sqlite, path = url.startswith("sqlite:///"), Path(url.removeprefix("sqlite:///"))
    if sqlite and create is None and not path.is_file():
        raise ValueError(
            f"no study in {path.parent} (no {path.name}): pass the --out of an earlier "
            "ablate.py, or --storage URL."
        )
    if sqlite:
        path.parent.mkdir(parents=True, exist_ok=True)
    with lock(url):
        if sqlite and path.is_file() and (problem := damage(path)):
            print(
                f"[ablate] {path} is not a sound SQLite database ({problem}): moved it to "
                f"{set_aside(path, 'damaged')}. A new study starts; a run with a result.json "
                "is not trained again."
            )
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)
        storage = (SQLiteStorage if sqlite else optuna.storages.RDBStorage)(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {},  # busy: wait
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=retry,
        )
        if create is not None:
            return optuna.create_study(
                storage=storage, study_name=name, load_if_exists=True, **create
            )
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise ValueError(
            f"no study {name!r} in {url} (it has: {names}): create it with `ablate.py enqueue` "
            "or `ablate.py search`, or pass --study with one of those names."
        ) from None


def set_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<path>.<why>-<time>``: kept, under a name of its own."""
    return path.rename(f"{path}.{why}-{datetime.now():%Y%m%d-%H%M%S-%f}")


def damage(path: Path) -> str | None:
    """What is wrong with a SQLite database file; None if it is sound."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            answer = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if answer == "ok" else answer


def left(study: optuna.Study, trials: int | None = None) -> tuple[int, int]:
    """(Trials to run: those waiting, and a search's new ones up to ``trials``; trials running).
    A search does not count a lost try (failed without an ``error``)."""
    every = study.get_trials(deepcopy=False)
    have = Counter(t.state for t in every if t.state != TrialState.FAIL or "error" in t.user_attrs)
    todo, running = have[TrialState.WAITING], have[TrialState.RUNNING]
    if trials is not None:
        todo += max(0, trials - have[TrialState.COMPLETE] - have[TrialState.FAIL] - running - todo)
    return todo, running


class Workers:
    """``workers`` runs at a time here (default: one per ``gpus_per_trial`` GPUs, else 2), each on
    GPUs of its own (``CUDA_VISIBLE_DEVICES``; none: the CPU) and an equal share of the cores."""

    def __init__(self, out, workers: int | None = None, gpus_per_trial: int = 1):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None and gpus_per_trial > 0:
            import torch

            visible = ",".join(map(str, range(torch.cuda.device_count())))
        ids = [g.strip() for g in (visible or "").split(",") if g.strip()] * (gpus_per_trial > 0)
        k = gpus_per_trial if ids else 0
        workers = workers or (len(ids) // k if k else min(2, os.cpu_count() or 1))
        if workers < 1 or gpus_per_trial < 0 or workers * k > len(ids):
            raise ValueError(
                f"--workers {workers} x --gpus-per-trial {gpus_per_trial} needs {workers * k} of "
                f"the {len(ids)} GPUs visible ({','.join(ids)}): lower either (--gpus-per-trial 0 "
                "trains on the CPU)."
            )
        self.slots: queue.SimpleQueue[str] = queue.SimpleQueue()
        for i in range(workers):
            self.slots.put(",".join(ids[i * k : (i + 1) * k]))
        self.out, self.workers = Path(out).resolve(), workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)

    def work(self, study: optuna.Study, objective, trials: int | None = None) -> None:
        """Run ``objective(self, study, trial)`` on the waiting trials (a search: ``trials`` in
        all) until none waits or runs here or elsewhere (a stale one is queued again meanwhile)."""
        run = partial(objective, self, study)

        def enough(study: optuna.Study, trial) -> None:  # others took the waiting trials
            if left(study, trials)[0] == 0:
                study.stop()

        said = 0
        while True:
            optuna.storages.fail_stale_trials(study)
            todo, running = left(study, trials)
            if todo:
                study.optimize(run, todo, n_jobs=min(todo, self.workers), callbacks=[enough])
            elif not running:
                return
            else:  # a lost worker's trial is retried once its heartbeat is stale
                if running != said:
                    print(f"[ablate] waiting for {running} trial(s) running elsewhere")
                said = running
                time.sleep(2.0)

    def run(self, trial: optuna.Trial, spec: dict, label: str, value: str) -> float:
        """Run ``spec`` (configs, params, seed, train_args, monitor, mode, identity, dir)
        as ``trial``: its value is the result's ``value``; a failed run leaves its log's end."""
        run_dir = self.out / spec["dir"]
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()} pid {os.getpid()}")
        if (result := adopt(run_dir, spec["identity"])) is not None:
            print(f"[ablate] adopt {label}: {run_dir}/result.json of an earlier run")
        else:
            print(f"[ablate] run {label} -> {run_dir}")
            code = self.launch(trial, run_dir, spec)
            if code or (result := adopt(run_dir, spec["identity"])) is None:
                log = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
                trial.set_user_attr("error", "\n".join(log[-15:]))
                print(f"[ablate] FAILED {label} (exit {code}); see {run_dir}/train.log")
                return float("nan")  # Optuna fails the trial
        trial.set_user_attr("result", result)
        print(f"[ablate] done {label}: test acc {result['test_acc']:.4f}")
        return result[value]

    def launch(self, trial: optuna.Trial, run_dir: Path, spec: dict) -> int:
        """Write ``run.json``, run the child on free GPUs: its exit code."""
        run_dir.mkdir(parents=True, exist_ok=True)
        args = [a for c in spec["configs"] for a in ("--config", c)] + option_args(spec["params"])
        args += ["--seed_everything", str(spec["seed"])]
        args += ["--trainer.default_root_dir", str(run_dir), *spec["train_args"]]
        run = {k: spec[k] for k in ("identity", "monitor", "mode")} | {"args": args}
        (run_dir / "run.json").write_text(json.dumps(run, indent=1))
        gpus = self.slots.get()
        env = child_env(OMP_NUM_THREADS=str(self.threads), CUDA_VISIBLE_DEVICES=gpus)
        try:
            trial.set_user_attr("gpus", gpus)
            with open(run_dir / "train.log", "a") as log:  # appended: each try's log is kept
                log.write(f"=== trial #{trial.number}, {socket.gethostname()}, {time.ctime()}\n")
                log.flush()
                command = [sys.executable, "-m", "lightning_glif.sweep.worker", str(run_dir)]
                child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                try:
                    return child.wait()
                except KeyboardInterrupt:  # Ctrl-C reached the child too: it saves last.ckpt
                    child.wait()
                    raise
        finally:
            self.slots.put(gpus)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, ``extra``, and this checkout importable from anywhere."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def option_args(params: dict) -> list[str]:
    """``--name value`` for each train.py option (JSON for what is not a string)."""
    pairs = [(f"--{k}", v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    return [a for pair in pairs for a in pair]


def adopt(run_dir: Path, identity: str) -> dict | None:
    """``run_dir/result.json`` if it is the result of run ``identity``; another is moved aside
    (``result.json.unreadable-<time>``) and None returned: the run trains again."""
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        if result["identity"] == identity and isinstance(result["test_acc"], float):
            return result
        problem = "is the result of another run"
    except (ValueError, KeyError, TypeError) as e:
        problem = f"is unreadable ({type(e).__name__}: {e})"
    print(f"[ablate] {path} {problem}: moved to {set_aside(path, 'unreadable').name}")
    return None


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every TensorBoard event file under ``run_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for events in sorted(Path(run_dir).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] += [(e.step, e.value) for e in acc.Scalars(tag)]
    return dict(scalars)


def run_child(run_dir: Path) -> dict:
    """The child: ``fit`` with ``run.json``'s arguments, test the checkpoint best on its monitor,
    write ``result.json`` atomically; the monitors' figures are read from the run's events."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_glif.callbacks import FiringRateMonitor
    from lightning_glif.cli.main import cli_main
    from lightning_glif.io import write_bytes
    from lightning_glif.training import tags

    class SelectionCheckpoint(ModelCheckpoint):
        """Its own class: a config's checkpoint on the metric would share its state key."""

    spec, start = json.loads((run_dir / "run.json").read_text()), time.perf_counter()
    best = SelectionCheckpoint(monitor=spec["monitor"], mode=spec["mode"], filename="selected")
    firing = FiringRateMonitor(stages=("test",), histograms=False)  # the test split's rate
    cli = cli_main(["fit", *spec["args"]], callbacks=[best, firing])
    if not best.best_model_path:
        raise RuntimeError(f"no checkpoint was selected: the fit never logged {spec['monitor']!r}")
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best.best_model_path)
    cli.trainer.logger.finalize("success")  # flush the events before reading them back
    scalars = {tag: values[-1][1] for tag, values in read_scalars(cli.trainer.log_dir).items()}
    result = {
        "identity": spec["identity"],
        "test_acc": float(tested[0][tags.metric("test", "acc")]),
        "val_acc_best": scalars.get(tags.best("val", "acc")),
        "firing_rate": scalars.get(tags.firing("test")),
        "synops_ac": scalars.get(tags.synops("test", "ac")),
        "energy_uJ": scalars.get(tags.energy("test")),
        "wall_s": time.perf_counter() - start,
        "selected_score": float(best.best_model_score),
        "best_ckpt": str(Path(best.best_model_path).relative_to(run_dir)),
    }
    for gate in ("alpha", "beta", "gamma"):  # each gate's last mean, averaged over the layers
        found = [tags.observable("gates", n, gate, "mean") for n in tags.layers(scalars, "gates")]
        means = [scalars[t] for t in found if t in scalars]
        result[f"{gate}_mean"] = sum(means) / len(means) if means else None
    write_bytes(run_dir / "result.json", json.dumps(result, indent=1).encode())
    return result


def end_with_parent(parent: int) -> None:
    """SIGTERM to this child once its worker ``parent`` is gone (even killed): no orphan trains
    on. The standard library has no parent-death signal, so a thread runs this."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":  # python -m lightning_glif.sweep.worker RUN_DIR
    threading.Thread(target=end_with_parent, args=(os.getppid(),), daemon=True).start()
    run_child(Path(sys.argv[1]).resolve())
