"""Sweep the neuron parameters' learning-rate factors of an embedded config, over seeds.

    python experiments/neuron_lr_sweep.py --config conf/default.yaml --gate 0.1,1,10,30,100
    python experiments/neuron_lr_sweep.py --config conf/experiment/row_digits.yaml \
        --gate 1,10,30 --neuron 1,10 --seeds 0,1,2

Each (gate factor, neuron factor, seed) is one ``train.py fit`` in its own process
(``--model.gate_lr_factor``, ``--model.neuron_lr_factor``, ``--seed_everything``), ``--jobs`` at a
time. The table (stdout and ``OUT/sweep.md``): per setting, best validation top-1 over the seeds
(mean ± 95% Student-t interval) and the gates' spread at the end of training: for each gate the
largest across-channel standard deviation over the layers (``gates/<layer>/<gate>_std``,
averaged over the seeds) and the largest move of a layer's mean gate from its start. Runs that
finished (their event file has ``val/acc_best``) are not run again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_glif.sweep.report import mean_ci  # noqa: E402
from lightning_glif.sweep.worker import read_scalars  # noqa: E402
from lightning_glif.training import tags  # noqa: E402

GATES = ("alpha", "beta", "gamma")


def run(config: str, gate: float, neuron: float, seed: int, out: Path, threads: int, extra):
    run_dir = out / f"gate{gate:g}-neuron{neuron:g}" / f"seed{seed}"
    if "val/acc_best" in read_scalars(run_dir):
        return run_dir
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", config,
            "--model.gate_lr_factor", str(gate), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.version", "0", *extra]  # fmt: skip
    if neuron != 1.0:
        args += ["--model.neuron_lr_factor", str(neuron)]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    return run_dir


def summarise(run_dirs: list[Path]) -> dict:
    accs, spread, moved = [], {g: [] for g in GATES}, {g: [] for g in GATES}
    for run_dir in run_dirs:
        scalars = read_scalars(run_dir)
        accs.append(scalars["val/acc_best"][-1][1])
        for g in GATES:
            layers = [
                layer for layer in tags.layers(scalars, "gates")
                if tags.observable("gates", layer, g, "std") in scalars
            ]  # fmt: skip
            if not layers:
                continue
            stds = [scalars[tags.observable("gates", layer, g, "std")][-1][1] for layer in layers]
            means = [scalars[tags.observable("gates", layer, g, "mean")] for layer in layers]
            spread[g].append(max(stds))
            moved[g].append(max(abs(m[-1][1] - m[0][1]) for m in means))
    return {"acc": mean_ci(accs), "spread": spread, "moved": moved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--gate", default="0.1,1,10,30,100", help="gate_lr_factor values")
    parser.add_argument("--neuron", default="1", help="neuron_lr_factor values")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: runs/sweep_<config name>")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    gates = [float(v) for v in args.gate.split(",")]
    neurons = [float(v) for v in args.neuron.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    out = Path(args.out or f"runs/sweep_{Path(args.config).stem}").resolve()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    grid = list(product(gates, neurons, seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = list(pool.map(lambda p: run(args.config, *p, out, threads, extra), grid))
    lines = [
        f"Sweep of `{args.config}`: best val top-1 over seeds {args.seeds} (mean ± 95% t-interval);"
        " per gate, the largest across-channel std over the layers at the end (mean over seeds)"
        " and the largest move of a layer's mean gate from its start.",
        "",
        "| gate_lr_factor | neuron_lr_factor | val top-1 (%) | "
        + " | ".join(f"{g} std" for g in GATES)
        + " | "
        + " | ".join(f"{g} moved" for g in GATES)
        + " |",
        "|" + "---|" * (3 + 2 * len(GATES)),
    ]
    for gate, neuron in product(gates, neurons):
        picked = [d for (g, n, _), d in zip(grid, dirs, strict=True) if (g, n) == (gate, neuron)]
        s = summarise(picked)
        cells = [f"{mean(s['spread'][g]):.3f}" if s["spread"][g] else "–" for g in GATES]
        cells += [f"{mean(s['moved'][g]):.3f}" if s["moved"][g] else "–" for g in GATES]
        acc = s["acc"]
        half = "n/a" if acc.n < 2 else f"{50 * (acc.hi - acc.lo):.2f}"
        row = f"| {gate:g} | {neuron:g} | {100 * acc.mean:.2f} ± {half} | " + " | ".join(cells)
        lines.append(row + " |")
    table = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
