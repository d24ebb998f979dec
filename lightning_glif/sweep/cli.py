"""Neuron ablations (variants x seeds) and searches of train.py options, each an Optuna
study in OUT/study.db or --storage URL (docs/sweeps.md):
  python ablate.py [--variants a,b] [--seeds 0,1] [--config FILE] [-- fit arguments]
  python ablate.py enqueue --storage URL [grid options] [-- fit arguments]
  python ablate.py worker --storage URL [--workers N]      # on any number of machines
  python ablate.py report --storage URL                    # from any machine
  python ablate.py search --space conf/search/gate_lr.yaml --trials 20 [-- fit arguments]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna
import sqlalchemy.exc

from lightning_glif.sweep import grid, report, search, worker

STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def parser(command: str) -> argparse.ArgumentParser:
    """The options of ``command`` (``run``: ``ablate.py`` without a subcommand)."""
    prog, fmt = "ablate.py" + f" {command}" * (command != "run"), argparse.RawTextHelpFormatter
    p = argparse.ArgumentParser(prog, description=__doc__, formatter_class=fmt)
    add = p.add_argument
    if command in ("run", "enqueue"):
        add("--config", action="append", help="base configs (default: delayed row digits)")
        add("--grid", default=grid.CONF / "ablation" / "default.yaml", help="variants YAML file")
        add("--variants", default="", help="comma-separated, or all (default: the grid's default)")
        add("--seeds", default="0,1,2,3,4", help="comma-separated (default: %(default)s)")
        add("--reference", default="glif_soft", help="the variant the Δ columns compare with")
    if command == "search":
        add("--space", required=True, help="search space YAML (conf/search/)")
        add("--trials", type=int, required=True, help="trials that run to their end")
    add("--out", default="runs/ablation", help="runs, reports, the default storage OUT/study.db")
    add("--storage", help="an Optuna RDB storage URL, e.g. postgresql://user:password@host/db")
    add("--study", default="ablation" * (command != "search"), help="(search: search-<space>)")
    add("--heartbeat", type=int, default=worker.HEARTBEAT_S, help="s; lost when silent 3x as long")
    add("--max-retries", type=int, default=worker.MAX_RETRIES, help="of a lost worker's trial")
    if command in ("run", "worker", "search"):
        add("--workers", "--jobs", type=int, help="runs at once (default: 1 per GPU, else 2)")
        add("--gpus-per-trial", type=int, default=1, help="0: on the CPU")
    return p


def main(argv: list[str] | None = None) -> int:
    """``ablate.py [enqueue|worker|report|search] [options] [-- fit arguments]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    argv, train_args = argv[:cut], argv[cut + 1 :]
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    p = parser(command)
    args = p.parse_args(argv)
    args.train_args, args.url = train_args, worker.storage_url(args.storage, args.out)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        flag = "--jobs" if "--jobs" in argv else "--workers"
        p.error(f"{flag} must be at least 1, got {args.workers}.")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the [ablate] lines say what ran
    try:
        if "workers" in args:  # the GPUs' error before anything is written
            args.pool = worker.Workers(args.out, args.workers, args.gpus_per_trial)
        return COMMANDS[command](args)
    except ValueError as e:  # bad input: ours name the option, file or study and the fix
        p.error(str(e))
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


def study_of(args, create=None) -> optuna.Study:
    """The options' study (created with ``create``, create_study's keywords, if given)."""
    return worker.open_study(args.url, args.study, args.heartbeat, args.max_retries, create)


def cmd_run(args) -> int:
    """``enqueue``, ``worker`` and ``report`` in one."""
    cmd_enqueue(args)
    cmd_worker(args)
    return cmd_report(args)


def cmd_enqueue(args) -> int:
    variants = grid.read_grid(args.grid, args.variants.split(",") if args.variants else [])
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(set(seeds)) != len(seeds) or args.reference not in variants:
        raise ValueError(
            f"--seeds must be distinct, got {args.seeds}, and --reference {args.reference!r} "
            f"among the variants: {', '.join(variants)}."
        )
    specs = grid.points(args.config or [grid.BASE_CONFIG], variants, seeds, args.train_args)
    added = grid.enqueue(args.url, study_of(args, {"direction": "maximize"}), specs, args.reference)
    print(f"[ablate] enqueued {added} of {len(specs)} trials in study {args.study!r}")
    return 0


def cmd_worker(args) -> int:
    args.pool.work(study_of(args), grid.objective)
    print(f"[ablate] no trial left in study {args.study!r}: `ablate.py report` reports it")
    return 0


def cmd_report(args) -> int:
    study, out = study_of(args), Path(args.out)
    if study.user_attrs.get("kind") == "search":
        ok = search.write_report(study, out)
    else:
        rows, pending = report.grid_rows(study, study.user_attrs["grid"])
        report.write_reports(rows, out, study.user_attrs["reference"], pending)
        ok = all(r["status"] == "ok" for r in rows)
    print((out / "results.md").read_text())
    return int(not ok)


def cmd_search(args) -> int:
    """Check the space against train.py, run its trials here, write the report."""
    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1, got {args.trials}.")
    space = search.read_space(args.space)
    search.check_options(space, args.train_args)
    args.study = args.study or f"search-{Path(args.space).stem}"
    study = study_of(args, {"direction": f"{space['mode']}imize"})
    search.start(study, space, args.train_args)
    args.pool.work(study, search.objective, args.trials)
    return cmd_report(args)


COMMANDS = {"run": cmd_run, "enqueue": cmd_enqueue, "worker": cmd_worker, "report": cmd_report}
COMMANDS["search"] = cmd_search
