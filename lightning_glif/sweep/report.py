"""A grid's reports from its study: ``results.csv`` (a row per run), ``results.md`` and
``results.png`` (per variant: mean test accuracy over seeds with its Student-t 95% interval, and
the paired difference to the reference over the seeds both have: a seed fixes the initialisation
and the data order, so pairing removes their share of the spread)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict, namedtuple
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy import stats

COLUMNS = (
    "variant seed status val_acc_best test_acc alpha_mean beta_mean gamma_mean firing_rate "
    "synops_ac energy_uJ wall_s run_dir error"
).split()
#: results.md's columns of means over the seeds: header -> (row key, scale, digits)
MEANS = {
    "best val acc (%)": ("val_acc_best", 100, 2),
    "alpha": ("alpha_mean", 1, 2),
    "beta": ("beta_mean", 1, 2),
    "gamma": ("gamma_mean", 1, 2),
    "firing rate": ("firing_rate", 1, 3),
    "SOPs/sample (k)": ("synops_ac", 1e-3, 1),
    "wall (s)": ("wall_s", 1, 0),
}
#: A mean and its confidence interval ``[lo, hi]`` over ``n`` values (nan: undefined).
Interval = namedtuple("Interval", "mean lo hi n")


def mean_ci(values, confidence: float = 0.95) -> Interval:
    """The Student-t interval of the mean of ``values`` (``scipy.stats.ttest_1samp``): undefined
    (nan) for one value, of zero width for equal ones."""
    x = np.asarray(values, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:  # no spread to estimate, or none at all
        edge = math.nan if x.size < 2 else float(x[0])
        return Interval(float(x.mean()), edge, edge, x.size)
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return Interval(float(x.mean()), float(ci.low), float(ci.high), x.size)


def paired_difference(values, reference, confidence: float = 0.95) -> Interval:
    """The paired t-test's interval of the mean of ``values[i] - reference[i]`` (``ttest_rel``
    is ``ttest_1samp`` of the differences)."""
    if len(values) != len(reference):
        raise ValueError(f"paired lengths differ: {len(values)} values, {len(reference)} reference")
    return mean_ci(np.subtract(values, reference), confidence)


def grid_rows(study: optuna.Study, identities: list[str]) -> tuple[list[dict], list[str]]:
    """A row per grid point (``identities`` in order) and the points not finished: its first
    COMPLETE trial's result (a race that ran it twice counts once), else its last try's error."""
    trials = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.PRUNED:
            trials[t.user_attrs.get("identity")].append(t)
    rows, pending = [], []
    for have in map(trials.get, identities):
        attrs, done = have[-1].user_attrs, [t for t in have if t.state == TrialState.COMPLETE]
        row = {k: attrs.get(k) for k in ("variant", "seed", "run_dir")}
        if done:
            rows.append({**row, **done[0].user_attrs["result"], "status": "ok"})
        elif any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in have):
            pending.append(f"{row['variant']} seed {row['seed']}")
        else:
            error = attrs.get("error") or f"worker lost on {len(have)} tries (no heartbeat)"
            rows.append({**row, "status": "failed", "error": error})
    return rows, pending


def pp(x: float, sign: str = "") -> str:
    """A fraction in percent (points); n/a for nan."""
    return "n/a" if math.isnan(x) else f"{100 * x:{sign}.2f}"


def write_reports(rows: list[dict], out, reference: str, pending=()) -> None:
    """``results.csv``, ``results.md`` and ``results.png`` of a grid's rows, in ``out``."""
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")  # None: empty
        writer.writeheader()
        writer.writerows(rows)
    ok: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if r["status"] == "ok":
            ok[r["variant"]][r["seed"]] = r
    ref, variants = ok.get(reference, {}), []
    for name, runs in ok.items():
        seeds, delta = sorted(runs), None
        if common := [s for s in seeds if s in ref] * (name != reference):
            delta = paired_difference(*[[x[s]["test_acc"] for s in common] for x in (runs, ref)])
        acc = mean_ci([runs[s]["test_acc"] for s in seeds])
        variants.append((name, [runs[s] for s in seeds], acc, delta))
    variants.sort(key=lambda v: -v[2].mean)
    note = None if ref else f"reference variant {reference!r} has no ok run in this grid"
    lines = [
        f"Test accuracy: mean ± half-width of the Student-t 95% CI over seeds. Δ vs {reference}: "
        "paired difference in percentage points over the seeds both variants have, mean [95% "
        "CI], paired t-test; * marks an interval that excludes 0. An interval needs two seeds "
        "(n/a with one). Other columns: means over the seeds.",
        "",
    ]
    lines += [f"Note: {note}; the Δ columns are n/a.", ""] * bool(note)
    lines += [
        f"| variant | seeds | test acc (%) mean ± 95% CI | Δ vs {reference} (pp) mean [lo, hi] "
        f"| excl. 0 | {' | '.join(MEANS)} |",
        "|---" * (5 + len(MEANS)) + "|",
    ]
    for name, runs, acc, d in variants:
        delta, excl = ("—", "—") if name == reference else ("n/a", "n/a")
        if d is not None:
            ci = "n/a" if math.isnan(d.lo) else f"{pp(d.lo, '+')}, {pp(d.hi, '+')}"
            delta = f"{pp(d.mean, '+')} [{ci}]" + f" (n={d.n})" * (d.n != len(runs))
            excl = "n/a" if math.isnan(d.lo) else "*" * (d.lo > 0 or d.hi < 0)
        cells = [name, len(runs), f"{pp(acc.mean)} ± {pp((acc.hi - acc.lo) / 2)}", delta, excl]
        for key, scale, digits in MEANS.values():
            values = [r[key] * scale for r in runs if r.get(key) is not None]
            cells.append(f"{sum(values) / len(values):.{digits}f}" if values else "–")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if failed := [r for r in rows if r["status"] != "ok"]:
        lines += ["", "Failed runs (see `<run_dir>/train.log`; rerun to retry):", ""]
        for r in failed:
            last = (r.get("error") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {r['variant']} seed {r['seed']}: {last[0]}")
    if pending:
        lines += ["", f"Not finished yet (waiting or running): {', '.join(pending)}."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(variants, reference, note, out / "results.png")


def plot(variants, reference: str, note: str | None, path: Path) -> None:
    """Each variant's mean test accuracy and paired difference, with intervals (red: not 0)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure list

    fig = Figure(figsize=(11, 0.35 * len(variants) + 1.6))
    ax, ax_d = fig.subplots(1, 2, sharey=True)
    for y, (_, _, acc, d) in enumerate(variants[::-1]):
        ax.barh(y, 100 * acc.mean, xerr=np.nan_to_num(50 * (acc.hi - acc.lo)), color="tab:blue")
        if d is not None:
            color = "tab:red" if d.lo > 0 or d.hi < 0 else "gray"
            ax_d.errorbar(
                100 * d.mean, y, xerr=np.nan_to_num(50 * (d.hi - d.lo)), fmt="o", color=color
            )
    ax.set_yticks(range(len(variants)), [v[0] for v in variants[::-1]])
    ax.set_xlabel("test accuracy (%), mean ± 95% CI over seeds")
    ax_d.axvline(0.0, color="k", lw=1)
    ax_d.set_xlabel(f"Δ vs {reference} (pp), paired mean ± 95% CI (red: excludes 0)")
    if note:
        ax_d.text(0.5, 0.5, note, transform=ax_d.transAxes, ha="center", wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
