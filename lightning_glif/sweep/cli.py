"""``ablate.py``: the sweeps' command line (docs/sweeps.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna
import sqlalchemy.exc

from lightning_glif.sweep import grid, report, search
from lightning_glif.sweep.worker import EMBEDDED, StorageError, Workers, open_study, storage_url

STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
USAGE = """Neuron ablations (variants x seeds) and searches of train.py options, each an Optuna
study in OUT/study.db or --storage URL (docs/sweeps.md):
  python ablate.py [--variants a,b] [--seeds 0,1] [--config FILE] [-- fit arguments]
  python ablate.py enqueue --storage URL [grid options] [-- fit arguments]
  python ablate.py worker --storage URL [--workers N]      # on any number of machines
  python ablate.py report --storage URL                    # from any machine
  python ablate.py search --space conf/search/gate_lr.yaml --trials 20 [-- fit arguments]"""


def parser(command: str) -> argparse.ArgumentParser:
    """The options of ``command`` (``run``: ``ablate.py`` without a subcommand)."""
    prog, fmt = "ablate.py" + f" {command}" * (command != "run"), argparse.RawTextHelpFormatter
    p = argparse.ArgumentParser(prog, description=USAGE, formatter_class=fmt)
    add, d = p.add_argument, grid.DEFAULTS
    if command in ("run", "enqueue", "search"):
        add("--config", action="append", help="base configs (default: delayed row digits)")
    if command in ("run", "enqueue"):
        add("--grid", default=grid.CONF / "ablation" / "default.yaml", help="variants YAML file")
        add("--variants", default="", help="comma-separated, or all (default: the grid's default)")
        add("--seeds", default="0,1,2,3,4", help="comma-separated (default: %(default)s)")
        add("--monitor", default=d["monitor"], help="metric the tested checkpoint is best on")
        add("--mode", choices=("max", "min"), default=d["mode"])
        add("--list", action="store_true", help="print the variants (*: default) and exit")
    if command in ("run", "enqueue", "report"):
        ref = d["reference"] if command != "report" else None  # report: the enqueued one
        add("--reference", default=ref, help="the variant the Δ columns compare with")
    if command == "search":
        add("--space", required=True, help="search space YAML (conf/search/)")
        add("--trials", type=int, required=True, help="trials that run to their end")
        add("--sampler", choices=sorted(search.SAMPLERS), default="tpe")
    add("--out", default="runs/ablation", help="runs, reports, the default storage OUT/study.db")
    add("--storage", help="an Optuna RDB storage URL, e.g. postgresql://user:password@host/db")
    add("--study", default=d["study"] * (command != "search"), help="(search: search-<space>)")
    add("--heartbeat", type=int, default=d["heartbeat"], help="s; lost when silent 3x as long")
    add("--max-retries", type=int, default=d["max_retries"], help="of a lost worker's trial")
    if command in ("run", "worker", "search"):
        add("--workers", "--jobs", type=int, help="runs at once (default: 1 per GPU, else 2)")
        add("--gpus-per-trial", type=int, default=d["gpus_per_trial"], help="0: on the CPU")
    return p


def main(argv: list[str] | None = None) -> int:
    """``ablate.py [enqueue|worker|report|search] [options] [-- fit arguments]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    argv, train_args = argv[:cut], argv[cut + 1 :]
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    p = parser(command)
    args = p.parse_args(argv)
    args.train_args, args.url = train_args, storage_url(args.storage, args.out)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        flag = "--jobs" if "--jobs" in argv else "--workers"
        p.error(f"{flag} must be at least 1, got {args.workers}.")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the [ablate] lines say what ran
    try:
        return COMMANDS[command](args, p)
    except StorageError as e:
        print(f"ablate.py: error: {e}", file=sys.stderr)
    except Exception as e:  # the storage's, wherever Optuna raised it from: say what to do
        lost = e
        while lost is not None and not isinstance(lost, STORAGE_ERRORS):
            lost = lost.__cause__ or lost.__context__
        if lost is None:
            raise
        cause = str(lost.__cause__ or lost).strip().splitlines()[0]
        print(
            f"ablate.py: error: the study's storage {args.url} failed ({cause}). Check the URL "
            "(e.g. postgresql://USER:PASSWORD@HOST:5432/DB) and that its server runs and is "
            "reachable, then rerun the command: finished trials are kept, the others run again.",
            file=sys.stderr,
        )
    except KeyboardInterrupt:
        print("[ablate] interrupted: the runs stopped keep no result, a rerun redoes them.")
        return 130  # the shell's code for Ctrl-C
    finally:
        optuna.logging.set_verbosity(verbosity)
    return 1


def _grid(args, p) -> tuple | None:
    """(configs, variants, seeds) of the options (None after --list), or an error naming them."""
    try:
        names = args.variants.split(",") if args.variants else []
        chosen, variants, default = grid.read_grid(args.grid, names)
        seeds = [int(s) for s in args.seeds.split(",")]
        if args.list:
            return print(
                "\n".join(f"{'*' if n in default else ' '} {n}: {variants[n]}" for n in variants)
            )
        if len(set(seeds)) != len(seeds) or args.reference not in chosen:
            raise ValueError(
                f"--seeds must be distinct, got {args.seeds}, and --reference "
                f"{args.reference!r} among the variants: {', '.join(chosen)}."
            )
        return [grid.config_path(c) for c in args.config or [grid.BASE_CONFIG]], chosen, seeds
    except ValueError as e:
        p.error(str(e))


def _open(args, create=None, sampler=None) -> optuna.Study:
    if create is None and not args.storage and not (Path(args.out) / EMBEDDED).is_file():
        raise StorageError(
            f"no study in {args.out} (no {EMBEDDED}): pass the --out of an "
            "earlier ablate.py, or --storage URL."
        )
    return open_study(args.url, args.study, args.heartbeat, args.max_retries, create, sampler)


def _workers(args, p) -> Workers:
    try:
        return Workers(args.out, args.workers, args.gpus_per_trial)
    except ValueError as e:  # an error names the options
        p.error(str(e))


def cmd_run(args, p) -> int:
    """Enqueue the grid, run it here, write and print the reports."""
    if (chosen := _grid(args, p)) is None:
        return 0
    options = {k: getattr(args, k) for k in grid.DEFAULTS}
    rows = grid.run_grid(*chosen, args.out, _workers(args, p).workers, args.train_args, **options)
    print((Path(args.out) / "results.md").read_text())
    return int(any(r["status"] != "ok" for r in rows))


def cmd_enqueue(args, p) -> int:
    if (chosen := _grid(args, p)) is None:
        return 0
    specs = grid.points(*chosen, args.train_args, args.monitor, args.mode)
    added = grid.enqueue(args.url, _open(args, {"direction": "maximize"}), specs, args.reference)
    print(f"[ablate] enqueued {added} of {len(specs)} trials in study {args.study!r}")
    return 0


def cmd_worker(args, p) -> int:
    study, workers = _open(args), _workers(args, p)
    workers.work(study, grid.objective(workers))
    print(f"[ablate] no trial left in study {args.study!r}: `ablate.py report` reports it")
    return 0


def cmd_report(args, p) -> int:
    study, out = _open(args), Path(args.out)
    if study.user_attrs.get("kind") == "search":
        ok = search.write_report(study, out)
    else:
        rows, pending = report.grid_rows(study, study.user_attrs["grid"])
        report.write_reports(rows, out, args.reference or study.user_attrs["reference"], pending)
        ok = all(r["status"] == "ok" for r in rows)
    print((out / "results.md").read_text())
    return int(not ok)


def cmd_search(args, p) -> int:
    """Check the space against train.py, run its trials here, write the report."""
    try:
        if args.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {args.trials}.")
        space = search.read_space(args.space, args.config)
        search.check_options(space, args.train_args)
    except ValueError as e:
        p.error(f"{args.space}: {e}")
    args.study, workers = args.study or f"search-{Path(args.space).stem}", _workers(args, p)
    study = _open(args, {"direction": f"{space['mode']}imize"}, search.SAMPLERS[args.sampler]())
    search.start(study, space, args.train_args, args.sampler, args.trials)
    workers.work(study, search.objective(workers, study), args.trials)
    ok = search.write_report(study, args.out)
    print((Path(args.out) / "results.md").read_text())
    return int(not ok)


COMMANDS = {"run": cmd_run, "enqueue": cmd_enqueue, "worker": cmd_worker, "report": cmd_report}
COMMANDS["search"] = cmd_search
