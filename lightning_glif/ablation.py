"""Neuron ablations: a grid of neuron variants, each a full ``train.py`` run in its own process.

``ablate.py`` is the command line; this module holds the parent (:func:`run_grid`, the tables and
the plot) and the child (``python -m lightning_glif.ablation RUN_DIR``), which trains one
variant through :func:`train.cli_main` with the arguments stored in ``RUN_DIR/run.json``, tests
the best-val checkpoint and writes ``RUN_DIR/result.json`` (atomically) when it succeeds.

A run directory ``OUT/<variant>/seed<k>/`` holds ``variant.yaml`` (the neuron overlay),
``run.json`` (the ``train.py fit`` arguments), ``train.log`` (the child's output), the
TensorBoard logs and checkpoints, and ``result.json``, the completion marker: a run with one is
never touched again, a run without one is cleared and redone.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
GATES = ("alpha", "beta", "gamma")
COLUMNS = [
    "variant", "seed", "status", "val_acc_best", "test_acc", "alpha_mean", "beta_mean",
    "gamma_mean", "firing_rate", "synops_ac", "energy_uJ", "wall_s", "error",
]  # fmt: skip


def load_variants(grid: str | Path, names: list[str] | None = None) -> dict[str, dict]:
    """The ``variants`` mapping (name -> neuron class_path/init_args) of a grid YAML file,
    restricted to ``names`` (in that order) when given."""
    data = yaml.safe_load(Path(grid).read_text()) or {}
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{grid}: expected a top-level 'variants:' mapping name -> neuron.")
    for name, neuron in variants.items():
        if not isinstance(neuron, dict) or "class_path" not in neuron:
            raise ValueError(f"{grid}: variant {name!r} needs a class_path (and init_args).")
    if names:
        unknown = [n for n in names if n not in variants]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; {grid} has: {', '.join(variants)}.")
        variants = {n: variants[n] for n in names}
    return variants


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- child: one variant, one seed ----------------------------------------------------------------
def run_one(run_dir: Path) -> dict[str, Any]:
    """Train (``fit``) with ``run.json``'s arguments, test the best-val checkpoint, return and
    write ``result.json``."""
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_glif.callbacks import FiringRateMonitor
    from lightning_glif.cli import cli_main

    spec = json.loads((run_dir / "run.json").read_text())
    if "ABLATION_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["ABLATION_THREADS"]))
    start = time.perf_counter()
    cli = cli_main(["fit", *spec["args"]])
    trainer = cli.trainer
    best = next(
        c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val/acc"
    )
    # The firing rate reported is the test split's at the best checkpoint, like the accuracy.
    for c in trainer.callbacks:
        if isinstance(c, FiringRateMonitor) and "test" not in c.stages:
            c.stages = (*c.stages, "test")
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best.best_model_path)
    wall = time.perf_counter() - start
    trainer.logger.finalize("success")  # flush the events before reading them back

    scalars = read_scalars(run_dir)

    def last(tag: str) -> float | None:
        return scalars[tag][-1][1] if tag in scalars else None

    result: dict[str, Any] = {
        "variant": spec["variant"],
        "seed": spec["seed"],
        "status": "ok",
        "val_acc_best": float(best.best_model_score),
        "test_acc": float(tested[0]["test/acc"]),
        "firing_rate": last("spikes/test/rate"),
        "synops_ac": last("synops/test/ac"),
        "energy_uJ": last("energy/test/uJ"),
        "wall_s": wall,
        "best_ckpt": str(Path(best.best_model_path).relative_to(run_dir)),
    }
    for g in GATES:  # final value of each layer's mean gate, averaged over the layers
        tags = [t for t in scalars if t.startswith("gates/") and t.endswith(f"/{g}_mean")]
        result[f"{g}_mean"] = mean(last(t) for t in tags) if tags else None
    _atomic_write(run_dir / "result.json", json.dumps(result, indent=2))
    return result


# -- parent: the grid ----------------------------------------------------------------------------
def _launch(run_dir: Path, threads: int) -> tuple[int, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["ABLATION_THREADS"] = str(threads)
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "lightning_glif.ablation", str(run_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
        )  # fmt: skip
    tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-15:]
    return proc.returncode, "\n".join(tail)


def run_grid(
    configs: list[str],
    variants: dict[str, dict],
    seeds: list[int],
    out: Path,
    jobs: int = 1,
    train_args: list[str] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Run every (variant, seed) without a ``result.json`` (``jobs`` at a time) and write
    ``results.csv``, ``results.md`` and ``results.png`` into ``out``; return the rows."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
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
            spec = {"variant": name, "seed": seed, "args": args}
            (run_dir / "run.json").write_text(json.dumps(spec, indent=2))
            todo.append((name, seed, run_dir))

    def work(item):
        name, seed, run_dir = item
        log(f"[ablate] run {name} seed {seed} -> {run_dir}")
        t0 = time.perf_counter()
        code, tail = _launch(run_dir, threads)
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
    ordered = [rows[n, s] for n in variants for s in seeds]
    write_reports(ordered, out)
    return ordered


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{mean(values):.{digits}f} ± {stdev(values):.{digits}f}"


def write_reports(rows: list[dict[str, Any]], out: Path) -> None:
    """``results.csv`` (one row per run), ``results.md`` (mean ± std over seeds per variant,
    best test accuracy first; failed runs listed below) and ``results.png``."""
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") if r.get(k) is not None else "" for k in COLUMNS})

    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_variant[r["variant"]].append(r)
    ok = {v: [r for r in rs if r["status"] == "ok"] for v, rs in by_variant.items()}
    ranked = sorted((v for v in ok if ok[v]), key=lambda v: -mean(r["test_acc"] for r in ok[v]))
    lines = [
        "| variant | seeds | test acc (%) | best val acc (%) | alpha | beta | gamma "
        "| firing rate | SOPs/sample (k) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in ranked:
        rs = ok[v]

        def col(k: str, scale: float = 1.0, d: int = 2, rs: list[dict] = rs) -> str:
            return _fmt([r.get(k) for r in rs], scale, d)

        lines.append(
            f"| {v} | {len(rs)} | {col('test_acc', 100)} | {col('val_acc_best', 100)} "
            f"| {col('alpha_mean')} | {col('beta_mean')} | {col('gamma_mean')} "
            f"| {col('firing_rate', 1, 3)} | {col('synops_ac', 1e-3, 1)} | {col('wall_s', 1, 0)} |"
        )
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs (see `<variant>/seed<k>/train.log`; rerun to retry):", ""]
        for r in failed:
            last = (r.get("error") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {r['variant']} seed {r['seed']}: {last[0]}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(ranked, ok, out / "results.png")


def _plot(ranked: list[str], ok: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accs = [[100 * r["test_acc"] for r in ok[v]] for v in ranked]
    means = [mean(a) for a in accs]
    errs = [stdev(a) if len(a) > 1 else 0.0 for a in accs]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(ranked), 1) + 1.2))
    y = list(range(len(ranked)))[::-1]
    ax.barh(y, means, xerr=errs, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_yticks(y, ranked)
    if means:
        lo = min(m - e for m, e in zip(means, errs, strict=True))
        ax.set_xlim(max(0.0, math.floor(lo - 2)), 100)
    ax.set_xlabel("test accuracy at the best-val checkpoint (%), mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_one(Path(sys.argv[1]))
