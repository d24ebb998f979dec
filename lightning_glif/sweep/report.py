"""Reports from a study, on any machine that reaches its storage: a grid's rows for
:func:`lightning_glif.ablation_report.write_reports` (results.csv/.md/.png with the intervals and
paired differences), a search's trials table, plot and best overlay."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_glif.ablation_report import write_reports
from lightning_glif.sweep import search
from lightning_glif.sweep import trials as T


def grid_rows(
    study: optuna.Study, points: list[tuple[str, int]] | None = None
) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """One row per grid point (``points`` in order, else every point of the study: variants in
    the order first enqueued, seeds sorted) and the points still waiting or running.

    A point's row is its COMPLETE trial's result; else, when none of its trials is active, its
    last failed try: ``error`` is the run's log tail, or says the worker was lost on every
    try."""
    by_key: dict[tuple, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if T.key(t) is not None and not T.is_duplicate(t):
            by_key.setdefault(T.key(t), []).append(t)
    if points is None:
        variants = list(dict.fromkeys(k[0] for k in by_key))
        points = [(v, s) for v in variants for s in sorted(s for w, s in by_key if w == v)]
    rows, pending = [], []
    grace = study._storage.get_heartbeat_interval()
    for variant, seed in points:
        have = by_key.get((variant, seed), [])
        done = [t for t in have if t.state == TrialState.COMPLETE]
        if done:
            rows.append({**done[0].user_attrs["result"], "variant": variant, "seed": seed,
                         "status": "ok"})  # fmt: skip
            continue
        if not have or any(t.state in T.ACTIVE for t in have):
            pending.append((variant, seed))
            continue
        last = max(have, key=lambda t: t.number)
        error = last.user_attrs.get("error")
        if error is None:
            tries, run_dir = T.tries(last) + 1, last.user_attrs.get("run_dir")
            error = (
                f"worker lost on {tries} tries (no heartbeat for {3 * (grace or 0)} s); "
                f"see {run_dir}/train.log"
            )
        rows.append({"variant": variant, "seed": seed, "status": "failed", "error": error,
                     "wall_s": last.user_attrs.get("wall_s"), "trial": last.number})  # fmt: skip
    return rows, pending


def write_grid_report(
    study: optuna.Study, out: Path, reference: str, points=None
) -> tuple[list[dict[str, Any]], list]:
    rows, pending = grid_rows(study, points)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_reports(rows, out, reference=reference)
    if pending:
        md = Path(out) / "results.md"
        names = ", ".join(f"{v} seed {s}" for v, s in pending)
        md.write_text(md.read_text() + f"\nNot finished yet (waiting or running): {names}.\n")
    return rows, pending


SEARCH_COLUMNS = ["trial", "status", "value", "val_acc_best", "test_acc", "wall_s", "run_dir",
                  "error"]  # fmt: skip


def search_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per search trial (a retried one too: its state says it was failed)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        result = t.user_attrs.get("result", {})
        error = (t.user_attrs.get("error") or "").strip().splitlines()[-1:]
        rows.append({"trial": t.number, "status": t.state.name.lower(), "value": t.value,
                     **t.params, "val_acc_best": result.get("val_acc_best"),
                     "test_acc": result.get("test_acc"), "wall_s": result.get("wall_s"),
                     "run_dir": t.user_attrs.get("run_dir"),
                     "error": error[0] if error else ""})  # fmt: skip
    return rows


def write_search_report(study: optuna.Study, out: Path) -> list[dict[str, Any]]:
    """``results.csv`` (a row per trial), ``results.md`` (the trials, best first, and the best
    overlay), ``results.png`` (Optuna's optimisation history) and ``best.yaml``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = search_rows(study)
    params = list(study.user_attrs["space"]["params"])
    columns = SEARCH_COLUMNS[:3] + params + SEARCH_COLUMNS[3:]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    attrs = study.user_attrs
    sign = -1 if attrs["mode"] == "max" else 1
    done = sorted((r for r in rows if r["value"] is not None), key=lambda r: sign * r["value"])
    lines = [f"Search {study.study_name!r}: {len(done)} of {attrs['trials']} trials complete, "
             f"value = best {attrs['monitor']} ({attrs['mode']}) on validation; best first.", "",
             "| trial | value | " + " | ".join(params) + " | test acc |",
             "|---" * (len(params) + 3) + "|"]  # fmt: skip
    for r in done:
        cells = [f"{r[p]:.4g}" if isinstance(r[p], float) else str(r[p]) for p in params]
        acc = "–" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}"
        lines.append(f"| {r['trial']} | {r['value']:.4f} | " + " | ".join(cells) + f" | {acc} |")
    best = search.write_best(study, out / "best.yaml")
    if best is not None:
        lines += ["", f"Best trial's overlay: `{best}`:", "", "```yaml",
                  best.read_text().strip(), "```"]  # fmt: skip
    failed = [r for r in rows if r["status"] == "fail"]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- #{r['trial']}: {r['error']}" for r in failed]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if done:
        _plot_history(study, out / "results.png")
    return rows


def _plot_history(study: optuna.Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    from lightning_glif.sweep.storage import quiet

    with quiet():
        ax = plot_optimization_history(study)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
