"""Neuron ablations: a grid of neuron variants, each a full ``fit`` run in its own process.

``ablate.py`` is the command line (:func:`main`); this module holds the parent (:func:`run_grid`,
whose reports are :mod:`lightning_glif.ablation_report`'s) and the child
(``python -m lightning_glif.ablation RUN_DIR``), which trains one variant through
:func:`lightning_glif.cli.cli_main` with the arguments stored in ``RUN_DIR/run.json``, tests the
checkpoint selected on ``run.json``'s metric and writes ``RUN_DIR/result.json`` (atomically) when
it succeeds.

A run directory ``OUT/<variant>/seed<k>/`` holds ``variant.yaml`` (the neuron overlay),
``run.json`` (the ``fit`` arguments and the selection metric and mode), ``train.log`` (the
child's output), the TensorBoard logs and checkpoints (``selected/``: the child's own, on the
selection metric), and ``result.json``, the completion marker: a run with one is never touched
again, a run without one is cleared and redone.

One ``ablate.py`` per ``OUT``: the parent holds ``OUT/.lock``
(:class:`~lightning_glif.locks.DirectoryLock`) while it runs, so a second one on the same
``OUT`` stops naming the first's pid instead of clearing its live runs. SIGTERM or SIGINT
(Ctrl-C) to the parent stops the grid: each child runs in its own process group, gets the
signal forwarded (SIGKILL after :data:`STOP_GRACE_S` seconds, or at a second signal), is waited
for, and its run keeps no ``result.json`` (a rerun redoes it); the parent then exits with
``128 + signal number`` (:class:`AblationInterrupted`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

from lightning_glif import tags
from lightning_glif.ablation_report import write_reports
from lightning_glif.io import write_bytes
from lightning_glif.locks import DirectoryLock, DirectoryLocked

ROOT = Path(__file__).resolve().parent.parent
GATES = ("alpha", "beta", "gamma")
ALL = "all"  # --variants all: every variant of the grid
REFERENCE = "glif_soft"
SEEDS = "0,1,2,3,4"
#: The default base: a task where memory over tens of steps matters, so the choice of gates
#: changes the result (README, "Ablating the bio-features"; on plain row digits it does not).
BASE_CONFIG = "experiment/delayed_row_digits.yaml"  # under the shipped conf/


def read_grid(grid: str | Path) -> tuple[dict[str, dict], list[str]]:
    """A grid YAML file's ``variants`` mapping (name -> neuron class_path/init_args) and its
    ``default`` subset (the variant names a run without ``--variants`` trains; every variant
    when the file has no ``default:``)."""
    data = yaml.safe_load(Path(grid).read_text()) or {}
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{grid}: expected a top-level 'variants:' mapping name -> neuron.")
    for name, neuron in variants.items():
        if not isinstance(neuron, dict) or "class_path" not in neuron:
            raise ValueError(f"{grid}: variant {name!r} needs a class_path (and init_args).")
    if ALL in variants:
        raise ValueError(f"{grid}: {ALL!r} is reserved (--variants {ALL}), rename that variant.")
    default = data.get("default", list(variants))
    if not isinstance(default, list) or not default:
        raise ValueError(f"{grid}: 'default:' must be a non-empty list of variant names.")
    unknown = [n for n in default if n not in variants]
    if unknown:
        raise ValueError(f"{grid}: 'default:' names unknown variants {unknown}.")
    return variants, default


def load_variants(grid: str | Path, names: list[str] | None = None) -> dict[str, dict]:
    """The variants of a grid YAML file to run: ``names`` (in that order), every variant for
    ``["all"]``, the file's ``default:`` subset when ``names`` is None or empty."""
    variants, default = read_grid(grid)
    if names == [ALL]:
        return variants
    names = names or default
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; {grid} has: {', '.join(variants)}.")
    return {n: variants[n] for n in names}


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


# -- child: one variant, one seed ----------------------------------------------------------------
def run_one(run_dir: Path) -> dict[str, Any]:
    """Train (``fit``) with ``run.json``'s arguments, test the checkpoint that is best on
    ``run.json``'s ``monitor`` and ``mode``, return and write ``result.json``.

    The child adds its own callbacks and reads its figures from them, whatever the configs hold:
    a checkpoint on the selection metric (in ``RUN_DIR/selected/``) and a firing-rate monitor
    of the test stage (the rate reported is the test split's at the selected checkpoint, like
    the accuracy). The synaptic operations, the energy and the gates are read back from the
    run's event files (the configs' ``SynapticOpsMonitor`` and ``GateMonitor``).
    """
    import torch

    from lightning_glif.callbacks import FiringRateMonitor
    from lightning_glif.cli import cli_main

    spec = json.loads((run_dir / "run.json").read_text())
    if "ABLATION_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["ABLATION_THREADS"]))
    selected = _selection_checkpoint(run_dir / "selected", spec["monitor"], spec["mode"])
    firing = FiringRateMonitor(stages=("test",), histograms=False)
    start = time.perf_counter()
    cli = cli_main(["fit", *spec["args"]], callbacks=[selected, firing])
    trainer = cli.trainer
    # Before the test run, which starts its metrics afresh.
    val_acc_best = trainer.callback_metrics.get(tags.best("val", "acc"))
    if not selected.best_model_path:
        raise RuntimeError(
            f"no checkpoint was selected on {spec['monitor']!r}: the fit never logged it. Check "
            "the ablation's --monitor against the metrics the model logs, and that validation "
            "runs (trainer.limit_val_batches > 0)."
        )
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=selected.best_model_path)
    wall = time.perf_counter() - start
    trainer.logger.finalize("success")  # flush the events before reading them back

    scalars = read_scalars(run_dir)

    def last(tag: str) -> float | None:
        return scalars[tag][-1][1] if tag in scalars else None

    result: dict[str, Any] = {
        "variant": spec["variant"],
        "seed": spec["seed"],
        "status": "ok",
        "val_acc_best": None if val_acc_best is None else float(val_acc_best),
        "test_acc": float(tested[0][tags.metric("test", "acc")]),
        "firing_rate": firing.last.get("test", {}).get(tags.firing("test")),
        "synops_ac": last(tags.synops("test", "ac")),
        "energy_uJ": last(tags.energy("test")),
        "wall_s": wall,
        "selected_on": spec["monitor"],
        "selected_score": float(selected.best_model_score),
        "best_ckpt": str(Path(selected.best_model_path).relative_to(run_dir)),
    }
    gate_layers = tags.layers(scalars, "gates")
    for g in GATES:  # final value of each layer's mean gate, averaged over the layers
        means = [last(tags.observable("gates", layer, g, "mean")) for layer in gate_layers]
        means = [m for m in means if m is not None]
        result[f"{g}_mean"] = mean(means) if means else None
    write_bytes(run_dir / "result.json", json.dumps(result, indent=2).encode())
    return result


def _selection_checkpoint(dirpath: Path, monitor: str, mode: str):
    """A ``ModelCheckpoint`` keeping the best epoch on ``monitor``, under a class of its own:
    Lightning refuses two stateful callbacks with one state key, and ``ModelCheckpoint``'s is its
    class name with the monitor and mode, which a config's checkpoint on the same metric shares."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class SelectionCheckpoint(ModelCheckpoint):
        pass

    return SelectionCheckpoint(dirpath=dirpath, monitor=monitor, mode=mode, save_top_k=1)


# -- parent: the grid ----------------------------------------------------------------------------
STOP_GRACE_S = 30.0  # seconds a signalled child has to exit before it is killed
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class AblationInterrupted(Exception):
    """The grid was stopped by a signal; ``runs`` are the interrupted run directories."""

    def __init__(self, signum: int, runs: list[Path]) -> None:
        self.signum, self.runs = signum, runs
        super().__init__(
            f"stopped by {signal.Signals(signum).name}: {len(runs)} run(s) interrupted "
            f"({', '.join(str(r) for r in runs) or 'none'}); they keep no result.json, so the "
            "same command redoes them and skips the finished ones."
        )


class _Children:
    """The grid's live child processes and the signal handler that stops them.

    Each child is started in its own session (so its own process group): a terminal's Ctrl-C
    or a ``kill`` of the parent does not reach it directly, and :meth:`stop` signals the whole
    group (the child and any DataLoader workers it forked). Starting a child and stopping take
    one lock, so no child starts after a stop and none is missed by it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[Path, subprocess.Popen] = {}
        self.signum: int | None = None
        self.stopped_at = 0.0
        self.interrupted: list[Path] = []

    def start(self, run_dir: Path, command: list[str], **kwargs) -> subprocess.Popen | None:
        """``Popen(command)`` in a new session, or ``None`` once the grid is stopping."""
        with self._lock:
            if self.signum is not None:
                return None
            proc = subprocess.Popen(command, start_new_session=True, **kwargs)
            self._live[run_dir] = proc
            return proc

    def wait(self, run_dir: Path, proc: subprocess.Popen) -> int:
        """Wait for ``proc``; kill its group if it outlives a stop by :data:`STOP_GRACE_S`."""
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.signum is not None and time.monotonic() - self.stopped_at > STOP_GRACE_S:
                    self._signal(proc, signal.SIGKILL)
        with self._lock:
            self._live.pop(run_dir, None)
        return code

    def stop(self, signum: int, frame=None) -> None:
        """The SIGTERM/SIGINT handler: forward the signal to every child's group (SIGKILL at
        a second signal); :func:`run_grid` then waits for them and raises
        :class:`AblationInterrupted`."""
        again = self.signum is not None
        self.signum, self.stopped_at = signum, time.monotonic()
        with self._lock:
            for run_dir, proc in self._live.items():
                if run_dir not in self.interrupted:
                    self.interrupted.append(run_dir)
                self._signal(proc, signal.SIGKILL if again else signum)

    @staticmethod
    def _signal(proc: subprocess.Popen, signum: int) -> None:
        if proc.returncode is not None:  # reaped: its pid may be reused
            return
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signum)
            else:  # Windows: no process groups
                proc.send_signal(signum)
        except ProcessLookupError:
            pass

    @contextlib.contextmanager
    def handling_signals(self):
        """Install :meth:`stop` for SIGTERM and SIGINT while the block runs (only in the main
        thread, the one Python delivers signals to), then restore the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.stop) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _launch(run_dir: Path, threads: int, children: _Children) -> tuple[int | None, str]:
    """Run the child of ``run_dir``: its exit code (``None`` if the grid stopped before it
    started) and the last lines of its ``train.log``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["ABLATION_THREADS"] = str(threads)
    env["ABLATION_PARENT"] = str(os.getpid())
    with open(run_dir / "train.log", "w") as log:
        command = [sys.executable, "-m", "lightning_glif.ablation", str(run_dir)]
        proc = children.start(run_dir, command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc is None:
            return None, ""
        code = children.wait(run_dir, proc)
    tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-15:]
    return code, "\n".join(tail)


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
) -> list[dict[str, Any]]:
    """Run every (variant, seed) without a ``result.json`` (``jobs`` at a time) and write
    ``results.csv``, ``results.md`` and ``results.png`` into ``out``
    (:func:`lightning_glif.ablation_report.write_reports`, differences to ``reference``);
    return the rows.

    Each run tests its best epoch on ``monitor`` (``mode`` ``"max"`` or ``"min"``), recorded
    in its ``run.json``."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1 (runs at once), got {jobs}.")
    out = Path(out).resolve()
    children = _Children()
    # The lock before anything in OUT is cleared: a second grid on OUT stops here.
    with DirectoryLock(out, what="sweep directory"), children.handling_signals():
        rows = _run_locked(configs, variants, seeds, out, jobs, train_args, log, monitor, mode,
                           children)  # fmt: skip
    if children.signum is not None:
        for run_dir in children.interrupted:  # it may have finished while stopping: redo it
            (run_dir / "result.json").unlink(missing_ok=True)
        raise AblationInterrupted(children.signum, children.interrupted)
    ordered = [rows[n, s] for n in variants for s in seeds]
    write_reports(ordered, out, reference=reference)
    return ordered


def _run_locked(
    configs, variants, seeds, out, jobs, train_args, log, monitor, mode, children: _Children
) -> dict[tuple[str, int], dict[str, Any]]:
    """:func:`run_grid`'s work once it holds ``out``: prepare and run the runs, return the
    rows by (variant, seed)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for name, neuron in variants.items():
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            if (run_dir / "result.json").exists():
                log(f"[ablate] skip {name} seed {seed}: finished ({run_dir}/result.json)")
                rows[name, seed] = json.loads((run_dir / "result.json").read_text())
                continue
            if run_dir.exists():  # interrupted or failed before: start it again from scratch
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            overlay = {"model": {"backbone": {"init_args": {"neuron": neuron}}}}
            (run_dir / "variant.yaml").write_text(
                f"# ablation variant {name!r}\n" + yaml.safe_dump(overlay, sort_keys=False)
            )
            args = [a for c in configs for a in ("--config", str(Path(c).resolve()))]
            args += ["--config", str(run_dir / "variant.yaml")]
            args += ["--trainer.default_root_dir", str(run_dir), "--seed_everything", str(seed)]
            args += list(train_args or [])
            spec = {"variant": name, "seed": seed, "args": args, "monitor": monitor, "mode": mode}
            (run_dir / "run.json").write_text(json.dumps(spec, indent=2))
            todo.append((name, seed, run_dir))

    def work(item):
        name, seed, run_dir = item
        if children.signum is not None:
            return
        log(f"[ablate] run {name} seed {seed} -> {run_dir}")
        t0 = time.perf_counter()
        code, tail = _launch(run_dir, threads, children)
        if code is None or run_dir in children.interrupted:
            log(f"[ablate] interrupted {name} seed {seed}: a rerun redoes it")
            return
        if code == 0 and (run_dir / "result.json").exists():
            row = json.loads((run_dir / "result.json").read_text())
            log(f"[ablate] done {name} seed {seed}: test acc {row['test_acc']:.4f}")
        else:
            row = {"variant": name, "seed": seed, "status": "failed", "error": tail,
                   "wall_s": time.perf_counter() - t0}  # fmt: skip
            log(f"[ablate] FAILED {name} seed {seed} (exit {code}); see {run_dir}/train.log")
        rows[name, seed] = row

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(work, todo))
    return rows


# -- the command line (ablate.py, the lightning-glif-ablate console script) ----------------------
USAGE = """Neuron ablation: train a grid of neuron variants on one base config and compare them.

    python ablate.py                                  # default variants x 5 seeds, delayed rows
    python ablate.py --variants all                   # every variant of the grid (or --full)
    python ablate.py --variants glif_soft,lif,a1b0g1 --seeds 0,1,2
    python ablate.py --reference lif                  # differences to LIF instead of glif_soft
    python ablate.py --config conf/experiment/row_digits.yaml --out runs/ablation_rows
    python ablate.py --out runs/tiny -- --trainer.max_epochs 2   # extra fit arguments
    python ablate.py --list                           # the grid's variants, * = default subset

The variants are conf/ablation/default.yaml (name -> neuron class_path/init_args; --grid for
another file). Without --variants the grid's `default:` list runs (conf/ablation/default.yaml:
glif_soft, glif_hard, glif_static, gliff, a1b0g1, lif, plif; 35 runs with the 5 default seeds,
about 14 minutes on a 2-core CPU with the default --jobs 2); --variants all runs them all.
The default base is conf/experiment/delayed_row_digits.yaml: digits row by row with blank
steps between rows, where memory over tens of steps matters.
Each (variant, seed) is one `fit` run in its own process (conf/default.yaml, each --config, the
variant's neuron, --seed_everything <seed>, then the arguments after --), followed by a test of
its checkpoint selected on --monitor. Outputs in --out: <variant>/seed<k>/ (TensorBoard logs,
checkpoints, variant.yaml, train.log, result.json; `tensorboard --logdir OUT` compares them all),
results.csv (one row per run), results.md and results.png. Resumable: a rerun skips runs with a
result.json and redoes the others; a failed run is a "failed" row and does not stop the grid.
Ctrl-C or SIGTERM stops the runs in progress (waited for; exit code 130 or 143) and keeps the
finished ones; the same command resumes. One ablate.py per --out (OUT/.lock): a second one on
the same --out stops with the first's pid.

results.md and results.png report each variant's test accuracy as the mean over its seeds with
the half-width of the Student-t 95% confidence interval, and its paired difference to
--reference in percentage points over the seeds both have an ok run for (paired t-test: the
t-interval of the per-seed differences; * where it excludes 0). An interval needs two seeds:
with one it is n/a.
"""


def main(argv: list[str] | None = None) -> int:
    """``ablate.py``: parse the command line, run the grid, print ``results.md``."""
    import argparse

    from lightning_glif.cli import CONF_DIR, resolve_config_paths

    argv = sys.argv[1:] if argv is None else list(argv)
    train_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after `--` go to every fit run, e.g. `-- --trainer.max_epochs 5`.",
    )
    parser.add_argument(
        "--config", action="append", default=None, metavar="FILE",
        help="base config(s), read after conf/default.yaml in order "
        "(default: conf/experiment/delayed_row_digits.yaml)",
    )  # fmt: skip
    parser.add_argument(
        "--grid",
        default=str(CONF_DIR / "ablation" / "default.yaml"),
        help="YAML file with a 'variants:' mapping and an optional 'default:' list "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help=f"comma-separated variants of the grid, or '{ALL}' (default: the grid's 'default:')",
    )
    parser.add_argument("--full", action="store_true", help=f"same as --variants {ALL}")
    parser.add_argument(
        "--seeds", default=SEEDS, help="comma-separated seeds (default: %(default)s)"
    )
    parser.add_argument(
        "--reference",
        default=REFERENCE,
        help="variant the others are compared with, seed by seed (default: %(default)s)",
    )
    parser.add_argument("--out", default="runs/ablation", help="output directory")
    cpus = os.cpu_count() or 1
    parser.add_argument(
        "--jobs", type=int, default=2 if cpus >= 2 else 1,
        help="runs at once, one process each with cpu_count // jobs threads "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--monitor", default=tags.SELECTION, help="metric the tested checkpoint is selected on"
    )
    parser.add_argument(
        "--mode", choices=("max", "min"), default=tags.SELECTION_MODE, help="best --monitor is"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the variants (* = default subset) and exit"
    )
    args = parser.parse_args(argv)

    names = [n for n in args.variants.split(",") if n]
    if args.full:
        if names and names != [ALL]:
            parser.error("--full runs every variant: drop --variants, or drop --full.")
        names = [ALL]
    try:
        grid, default = read_grid(args.grid)
        variants = load_variants(args.grid, names or None)
    except ValueError as e:
        parser.error(str(e))
    if args.list:
        for name, neuron in (variants if names else grid).items():
            mark = "*" if name in default else " "
            print(f"{mark} {name}: {neuron['class_path']} {neuron.get('init_args', {})}")
        print(f"(*: the default subset, run without --variants; --variants {ALL}: all {len(grid)})")
        return 0
    if args.reference not in variants:
        parser.error(
            f"--reference {args.reference!r} is not among the chosen variants: "
            f"{', '.join(variants)}."
        )
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}.")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds must be distinct integers, got {args.seeds!r}.")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}.")
    configs = args.config or [str(CONF_DIR / BASE_CONFIG)]
    configs = resolve_config_paths([a for c in configs for a in ("--config", c)])[1::2]
    out = Path(args.out)
    try:
        rows = run_grid(
            configs, variants, seeds, out, args.jobs, train_args,
            monitor=args.monitor, mode=args.mode, reference=args.reference,
        )  # fmt: skip
    except DirectoryLocked as e:
        print(f"ablate.py: error: {e}", file=sys.stderr)
        return 1
    except AblationInterrupted as e:
        print(f"[ablate] {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's code for a command ended by that signal
    print((out / "results.md").read_text())
    print(f"[ablate] wrote {out}/results.csv, results.md, results.png")
    return int(any(r["status"] != "ok" for r in rows))


def end_with_parent(parent: int) -> None:
    """Linux: have the kernel send this child SIGTERM when ``parent`` (ablate.py) dies, also by
    SIGKILL, when it cannot forward a signal (``prctl(PR_SET_PDEATHSIG)``; the standard library
    does not wrap it, hence ctypes). SIGTERM then stops the run as a forwarded one would
    (InterruptCheckpoint: last.ckpt, no result.json, so a rerun redoes it). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":  # the child of run_grid: python -m lightning_glif.ablation RUN_DIR
    end_with_parent(int(os.environ.get("ABLATION_PARENT", os.getppid())))
    run_one(Path(sys.argv[1]))
