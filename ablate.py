"""Neuron ablation: train a grid of neuron variants on one base config and compare them.

    python ablate.py                                  # 19 variants x seed 0 on row digits
    python ablate.py --variants glif_soft,lif,a1b0g1 --seeds 0,1,2 --jobs 2
    python ablate.py --config conf/experiment/event_digits.yaml --out runs/ablation_events
    python ablate.py --out runs/tiny -- --trainer.max_epochs 2   # extra train.py fit arguments

The variants are ``conf/ablation/default.yaml`` (name -> neuron class_path/init_args; ``--grid``
for another file). Each (variant, seed) is one ``train.py fit`` run in its own process
(``conf/default.yaml``, each ``--config``, the variant's neuron, ``--seed_everything <seed>``,
then the arguments after ``--``), followed by a test of its best-val checkpoint. Outputs in
``--out``: ``<variant>/seed<k>/`` (TensorBoard logs, checkpoints, ``variant.yaml``,
``train.log``, ``result.json``; ``tensorboard --logdir OUT`` compares them all), ``results.csv``
(one row per run), ``results.md`` (mean ± std per variant) and ``results.png``.

Resumable: a rerun skips runs with a ``result.json`` and redoes the others. A failed run is a
"failed" row and does not stop the grid. The default grid (19 runs, one seed) took 7 min 20 s with
``--jobs 2`` on a 2-core CPU (results in README.md, "Neuron ablation").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_glif.ablation import load_variants, run_grid

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` go to every `train.py fit` run, e.g. "
        "`-- --trainer.max_epochs 5`.",
    )
    parser.add_argument(
        "--config", action="append", default=None, metavar="FILE",
        help="base config(s), read after conf/default.yaml in order "
        "(default: conf/experiment/row_digits.yaml)",
    )  # fmt: skip
    parser.add_argument(
        "--grid",
        default=str(ROOT / "conf/ablation/default.yaml"),
        help="YAML file with a 'variants:' mapping (default: %(default)s)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of the grid's variants (default: all)",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--out", default="runs/ablation", help="output directory")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)

    names = [n for n in args.variants.split(",") if n]
    variants = load_variants(args.grid, names or None)
    if args.list:
        for name, neuron in variants.items():
            print(f"{name}: {neuron['class_path']} {neuron.get('init_args', {})}")
        return 0
    configs = args.config or [str(ROOT / "conf/experiment/row_digits.yaml")]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = run_grid(configs, variants, seeds, Path(args.out), args.jobs, train_args)
    out = Path(args.out)
    print((out / "results.md").read_text())
    print(f"[ablate] wrote {out}/results.csv, results.md, results.png")
    return int(any(r["status"] != "ok" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
