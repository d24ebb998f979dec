"""``ablate.py``: the command line of the sweeps (grid ablations and searches on Optuna).

``python ablate.py [options]`` enqueues the grid, runs local workers and writes the reports;
``enqueue``, ``worker``, ``report`` and ``search`` are the steps on their own (USAGE)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from lightning_glif import tags
from lightning_glif.sweep import devices, grid, search
from lightning_glif.sweep import report as reports
from lightning_glif.sweep import trials as T
from lightning_glif.sweep.processes import Children, SweepInterrupted
from lightning_glif.sweep.storage import (
    EMBEDDED,
    HEARTBEAT_S,
    MAX_RETRIES,
    StorageError,
    load_study,
    open_storage,
    redact,
    storage_url,
)
from lightning_glif.sweep.worker import run_workers

SUBCOMMANDS = ("enqueue", "worker", "report", "search")
REFERENCE = "glif_soft"
SEEDS = "0,1,2,3,4"
STUDY = "ablation"
#: The default base: a task where memory over tens of steps matters, so the choice of gates
#: changes the result (README, "Ablating the bio-features"; on plain row digits it does not).
BASE_CONFIG = "experiment/delayed_row_digits.yaml"  # under the shipped conf/

USAGE = """Neuron ablations and searches, each an Optuna study: train a grid of neuron variants on
one base config and compare them, or search train.py options with a sampler.

    python ablate.py                                  # default variants x 5 seeds, delayed rows
    python ablate.py --variants all                   # every variant of the grid (or --full)
    python ablate.py --variants glif_soft,lif,a1b0g1 --seeds 0,1,2
    python ablate.py --reference lif                  # differences to LIF instead of glif_soft
    python ablate.py --config conf/experiment/row_digits.yaml --out runs/ablation_rows
    python ablate.py --out runs/tiny -- --trainer.max_epochs 2   # extra fit arguments
    python ablate.py --list                           # the grid's variants, * = default subset
    python ablate.py --workers 4 --gpus-per-trial 1   # 4 local workers, a GPU each

  The steps on their own (any number of workers, on any number of machines, one storage):
    python ablate.py enqueue --storage URL --study NAME [grid options] [-- fit arguments]
    python ablate.py worker  --storage URL --study NAME [--workers N] [--out DIR]
    python ablate.py report  --storage URL --study NAME [--out DIR]
    python ablate.py search  --space conf/search/gate_lr.yaml --trials 20 [-- fit arguments]

The variants are conf/ablation/default.yaml (name -> neuron class_path/init_args; --grid for
another file). Without --variants the grid's `default:` list runs (glif_soft, glif_hard,
glif_static, gliff, a1b0g1, lif, plif; 35 runs with the 5 default seeds, about 14 minutes on a
2-core CPU with the default 2 workers); --variants all runs them all. The default base is
conf/experiment/delayed_row_digits.yaml: digits row by row with blank steps between rows.
Each (variant, seed) is one trial of the study: one `fit` run in its own process
(conf/default.yaml, each --config, the variant's neuron, --seed_everything <seed>, then the
arguments after --), followed by a test of its checkpoint selected on --monitor.

Storage: without --storage the study lives in OUT/study.db (SQLite); --storage takes any URL of
Optuna's RDB storage (postgresql://user:password@host:5432/db for several machines). Outputs in
--out: <variant>/seed<k>/ (TensorBoard logs, checkpoints, variant.yaml, train.log, result.json),
results.csv, results.md and results.png. Resumable: a rerun skips finished trials and redoes the
others; a failed run is a "failed" row and does not stop the grid. A worker killed mid-trial
stops its trial's heartbeat: after 3 x --heartbeat seconds another worker retries it (at most
--max-retries times). Ctrl-C or SIGTERM stops the runs in progress (waited for; exit code 130
or 143) and queues them again. Two commands on the same study share its trials.

results.md and results.png report each variant's test accuracy as the mean over its seeds with
the half-width of the Student-t 95% confidence interval, and its paired difference to
--reference in percentage points over the seeds both have an ok run for (paired t-test: the
t-interval of the per-seed differences; * where it excludes 0). An interval needs two seeds:
with one it is n/a.
"""


def _storage_options(p: argparse.ArgumentParser, study: str | None = STUDY) -> None:
    p.add_argument("--out", default="runs/ablation",
                   help="output directory: run directories, reports, the embedded storage "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna RDB storage URL, e.g. postgresql://user:pw@host:5432/db "
                   "(default: sqlite in OUT/study.db)")  # fmt: skip
    p.add_argument("--study", default=study, help="study name (default: %(default)s)")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 3x "
                   "that is retried (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-retries", type=int, default=MAX_RETRIES,
                   help="retries of a trial whose worker was lost (default: %(default)s)")


def _worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", "--jobs", dest="workers", type=int, default=None,
                   help="local workers, each running one trial at a time on its own devices "
                   "(default: one per --gpus-per-trial GPUs on CUDA, else 2, 1 on one core)")
    p.add_argument("--gpus", default=None, metavar="IDS",
                   help="GPU ids to share among the workers (default: CUDA_VISIBLE_DEVICES or "
                   "every GPU torch sees)")  # fmt: skip
    p.add_argument("--gpus-per-trial", type=int, default=1, metavar="K",
                   help="GPUs each worker's runs see (CUDA_VISIBLE_DEVICES; default: 1; 0: CPU)")


def _grid_options(p: argparse.ArgumentParser) -> None:
    from lightning_glif.cli import CONF_DIR

    p.add_argument("--config", action="append", default=None, metavar="FILE",
                   help="base config(s), read after conf/default.yaml in order "
                   "(default: conf/experiment/delayed_row_digits.yaml)")  # fmt: skip
    p.add_argument("--grid", default=str(CONF_DIR / "ablation" / "default.yaml"),
                   help="YAML file with a 'variants:' mapping and an optional 'default:' list "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--variants", default="", help=f"comma-separated variants of the grid, or "
                   f"'{grid.ALL}' (default: the grid's 'default:')")  # fmt: skip
    p.add_argument("--full", action="store_true", help=f"same as --variants {grid.ALL}")
    p.add_argument("--seeds", default=SEEDS, help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--reference", default=REFERENCE, help="variant the others are compared "
                   "with, seed by seed (default: %(default)s)")  # fmt: skip
    p.add_argument("--monitor", default=tags.SELECTION,
                   help="metric the tested checkpoint is selected on")
    p.add_argument("--mode", choices=("max", "min"), default=tags.SELECTION_MODE,
                   help="best --monitor is")
    p.add_argument("--list", action="store_true",
                   help="print the variants (* = default subset) and exit")


def _parser(command: str) -> argparse.ArgumentParser:
    prog = "ablate.py" if command == "run" else f"ablate.py {command}"
    p = argparse.ArgumentParser(
        prog=prog, description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after `--` go to every fit run, e.g. `-- --trainer.max_epochs 5`.",
    )  # fmt: skip
    if command in ("run", "enqueue"):
        _grid_options(p)
    if command == "search":
        p.add_argument("--space", required=True, metavar="FILE",
                       help="search space YAML (conf/search/*.yaml)")
        p.add_argument("--trials", type=int, required=True, help="trials in the study")
        p.add_argument("--sampler", choices=sorted(search.SAMPLERS), default="tpe")
        p.add_argument("--config", action="append", default=None, metavar="FILE",
                       help="base config(s) instead of the space's `config:`")
    if command == "report":
        p.add_argument("--reference", default=None,
                       help="grid: the variant to compare with (default: the enqueued one)")
    _storage_options(p, None if command == "search" else STUDY)
    if command in ("run", "worker", "search"):
        _worker_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``ablate.py``: dispatch to the subcommand (none: enqueue, work and report locally)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1 :]
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    parser = _parser(command)
    args = parser.parse_args(argv)
    args.train_args = train_args
    args.jobs_flag = "--jobs" if "--jobs" in argv else "--workers"
    try:
        return COMMANDS[command](args, parser)
    except StorageError as e:
        print(f"ablate.py: error: {e}", file=sys.stderr)
        return 1
    except SweepInterrupted as e:
        print(f"[ablate] {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's code for a command ended by that signal


# -- the grid's options ---------------------------------------------------------------------------
def _grid_choice(args, parser):
    """(variants, seeds, configs) of the grid options, or a parser error naming the problem."""
    from lightning_glif.cli import CONF_DIR, resolve_config_paths

    names = [n for n in args.variants.split(",") if n]
    if args.full:
        if names and names != [grid.ALL]:
            parser.error("--full runs every variant: drop --variants, or drop --full.")
        names = [grid.ALL]
    try:
        whole, default = grid.read_grid(args.grid)
        variants = grid.load_variants(args.grid, names or None)
    except ValueError as e:
        parser.error(str(e))
    if args.list:
        for name, neuron in (variants if names else whole).items():
            mark = "*" if name in default else " "
            print(f"{mark} {name}: {neuron['class_path']} {neuron.get('init_args', {})}")
        print(f"(*: the default subset, run without --variants; --variants {grid.ALL}: "
              f"all {len(whole)})")  # fmt: skip
        return None
    if args.reference not in variants:
        parser.error(f"--reference {args.reference!r} is not among the chosen variants: "
                     f"{', '.join(variants)}.")  # fmt: skip
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}.")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds must be distinct integers, got {args.seeds!r}.")
    configs = args.config or [str(CONF_DIR / BASE_CONFIG)]
    configs = resolve_config_paths([a for c in configs for a in ("--config", c)])[1::2]
    return variants, seeds, configs


def _slots(args, parser) -> list[devices.Slot]:
    if args.workers is not None and args.workers < 1:
        parser.error(f"{args.jobs_flag} must be at least 1, got {args.workers}.")
    gpus = devices.visible_gpus(args.gpus)
    cpus = devices.usable_cpus()
    workers = args.workers or devices.default_workers(gpus, args.gpus_per_trial, cpus)
    try:
        return devices.slots(workers, gpus, args.gpus_per_trial, cpus)
    except ValueError as e:
        parser.error(str(e))


def open_study(args, create: dict | None = None, sampler=None) -> optuna.Study:
    """The study of ``--storage``/``--study``: created with ``create`` (keyword arguments of
    :func:`optuna.create_study`) if given and missing, else it must exist."""
    if create is None and not args.storage and not (Path(args.out) / EMBEDDED).is_file():
        raise StorageError(
            f"no study in {args.out}: it has no {EMBEDDED} (the embedded storage). Pass the "
            "--out of an earlier `ablate.py` (or `ablate.py enqueue`), or --storage URL."
        )
    url = storage_url(args.storage, args.out)
    storage = open_storage(url, args.heartbeat, args.max_retries)
    if create is None:
        return load_study(storage, args.study, url) if sampler is None else optuna.load_study(
            study_name=args.study, storage=storage, sampler=sampler)  # fmt: skip
    return optuna.create_study(storage=storage, study_name=args.study, load_if_exists=True,
                               sampler=sampler, **create)  # fmt: skip


# -- the commands ---------------------------------------------------------------------------------
def cmd_run(args, parser) -> int:
    """Enqueue the grid, work on it locally, write and print the reports."""
    from lightning_glif import ablation  # run_grid looked up here: the tests replace it

    choice = _grid_choice(args, parser)
    if choice is None:
        return 0
    variants, seeds, configs = choice
    slots = _slots(args, parser)
    out = Path(args.out)
    rows = ablation.run_grid(
        configs, variants, seeds, out, len(slots), args.train_args,
        monitor=args.monitor, mode=args.mode, reference=args.reference, storage=args.storage,
        study=args.study, heartbeat=args.heartbeat, max_retries=args.max_retries,
        gpus=args.gpus, gpus_per_trial=args.gpus_per_trial,
    )  # fmt: skip
    print((out / "results.md").read_text())
    print(f"[ablate] wrote {out}/results.csv, results.md, results.png")
    return int(any(r["status"] != "ok" for r in rows))


def cmd_enqueue(args, parser) -> int:
    choice = _grid_choice(args, parser)
    if choice is None:
        return 0
    variants, seeds, configs = choice
    study = open_study(args, create={"direction": "maximize"})
    T.mark(study, T.GRID)
    study.set_user_attr("reference", args.reference)
    points = grid.specs(configs, variants, seeds, args.train_args, args.monitor, args.mode)
    added = grid.enqueue(study, points)
    where = _where(args)
    print(f"[ablate] enqueued {added} of {len(points)} trials in study {args.study!r}; run "
          f"workers with: python ablate.py worker {where} --study {args.study}")  # fmt: skip
    return 0


def _where(args) -> str:
    """The option that names this study's storage, for the next command to type."""
    return f"--storage {redact(args.storage)}" if args.storage else f"--out {args.out}"


def cmd_worker(args, parser) -> int:
    study = open_study(args)
    asker = None
    if study.user_attrs.get("kind") == T.SEARCH:
        sampler = search.SAMPLERS[study.user_attrs.get("sampler", "tpe")]()
        study = open_study(args, sampler=sampler)
        asker = search.Asker(study)
    children = Children()
    with children.handling_signals():
        run_workers(study, _slots(args, parser), Path(args.out), children, asker=asker)
    if children.signum is not None:
        raise SweepInterrupted(children.signum, children.interrupted)
    where = _where(args)
    print(f"[ablate] worker: no trial left in study {args.study!r}; the reports: "
          f"python ablate.py report {where} --study {args.study}")  # fmt: skip
    return 0


def cmd_report(args, parser) -> int:
    study = open_study(args)
    out = Path(args.out)
    if study.user_attrs.get("kind") == T.SEARCH:
        reports.write_search_report(study, out)
        print((out / "results.md").read_text())
        return 0
    reference = args.reference or study.user_attrs.get("reference", REFERENCE)
    rows, pending = reports.write_grid_report(study, out, reference)
    print((out / "results.md").read_text())
    print(f"[ablate] wrote {out}/results.csv, results.md, results.png ({len(rows)} rows, "
          f"{len(pending)} not finished)")  # fmt: skip
    return int(any(r["status"] != "ok" for r in rows))


def cmd_search(args, parser) -> int:
    from lightning_glif.cli import resolve_config_paths

    try:
        space = search.read_space(args.space)
    except ValueError as e:
        parser.error(str(e))
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}.")
    from lightning_glif.cli import CONF_DIR

    configs = args.config or [c if Path(c).exists() or not (CONF_DIR / c).is_file()
                              else str(CONF_DIR / c) for c in space["config"]]  # fmt: skip
    configs = resolve_config_paths([a for c in configs for a in ("--config", c)])[1::2]
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        parser.error(f"config {missing[0]} (of {args.space} or --config) does not exist: name a "
                     "file, or a shipped config as experiment/<name>.yaml.")  # fmt: skip
    configs = [str(Path(c).resolve()) for c in configs]
    args.study = args.study or f"search-{Path(args.space).stem}"
    slots = _slots(args, parser)
    direction = "maximize" if space["mode"] == "max" else "minimize"
    study = open_study(args, create={"direction": direction},
                       sampler=search.SAMPLERS[args.sampler]())  # fmt: skip
    T.mark(study, T.SEARCH)
    spec = {"space": {"params": space["params"]}, "configs": configs,
            "train_args": args.train_args, "monitor": space["monitor"], "mode": space["mode"],
            "seed": space["seed"]}  # fmt: skip
    old = {k: study.user_attrs[k] for k in spec if k in study.user_attrs}
    if old and old != {k: spec[k] for k in old}:
        raise StorageError(
            f"study {args.study!r} was started with another space, configs or fit arguments: "
            "pass another --study (or the same options)."
        )
    for k, v in {**spec, "trials": args.trials, "sampler": args.sampler}.items():
        study.set_user_attr(k, v)
    children = Children()
    with children.handling_signals():
        run_workers(study, slots, Path(args.out), children, asker=search.Asker(study))
    if children.signum is not None:
        raise SweepInterrupted(children.signum, children.interrupted)
    out = Path(args.out)
    rows = reports.write_search_report(study, out)
    print((out / "results.md").read_text())
    print(f"[ablate] wrote {out}/results.csv, results.md, results.png, best.yaml")
    return int(not any(r["status"] == "complete" for r in rows))


COMMANDS = {"run": cmd_run, "enqueue": cmd_enqueue, "worker": cmd_worker, "report": cmd_report,
            "search": cmd_search}  # fmt: skip
