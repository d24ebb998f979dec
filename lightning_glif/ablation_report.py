"""The ablation's reports: ``results.csv``, ``results.md`` and ``results.png`` from the grid's
rows (one dict per (variant, seed) run, as :func:`lightning_glif.ablation.run_grid` returns them).

Each variant's test accuracy is its mean over seeds with the Student-t confidence interval
(:func:`lightning_glif.stats.mean_ci`); each variant is compared with a reference variant by the
paired difference over the seeds both have with an ``ok`` run
(:func:`lightning_glif.stats.paired_difference`, :data:`lightning_glif.stats.PAIRED_METHOD`):
the seed fixes the initialisation and the data order, so pairing removes their share of the
spread. An interval needs two values: with one, it is "n/a".
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from lightning_glif.stats import PAIRED_METHOD, Interval, mean_ci, paired_difference

COLUMNS = [
    "variant", "seed", "status", "val_acc_best", "test_acc", "alpha_mean", "beta_mean",
    "gamma_mean", "firing_rate", "synops_ac", "energy_uJ", "wall_s", "error",
]  # fmt: skip
NA = "n/a"
DASH = "—"  # the reference's own Δ cells


@dataclass(frozen=True)
class Summary:
    """One variant's ``ok`` runs (in seed order), its test accuracy interval and its paired
    difference to the reference (None: it is the reference, or the difference is undefined)."""

    variant: str
    runs: list[dict[str, Any]]
    acc: Interval
    delta: Interval | None


def summarize(
    rows: list[dict[str, Any]], reference: str, confidence: float = 0.95
) -> tuple[list[Summary], str | None]:
    """The variants with at least one ``ok`` run, best mean test accuracy first, and a note
    when the reference is missing or has no ``ok`` run (then every ``delta`` is None)."""
    ok: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("status") == "ok":
            ok[r["variant"]][r["seed"]] = r
    seen = {r["variant"] for r in rows}
    note = None
    if reference not in seen:
        note = f"reference variant {reference!r} is missing from this grid"
    elif not ok.get(reference):
        note = f"reference variant {reference!r} has no ok runs"
    ref = ok.get(reference, {})
    out = []
    for v, runs in ok.items():
        seeds = sorted(runs)
        acc = mean_ci([runs[s]["test_acc"] for s in seeds], confidence)
        common = [s for s in seeds if s in ref]
        delta = None
        if v != reference and common:
            delta = paired_difference(
                [runs[s]["test_acc"] for s in common],
                [ref[s]["test_acc"] for s in common],
                confidence,
            )
        out.append(Summary(v, [runs[s] for s in seeds], acc, delta))
    out.sort(key=lambda s: -s.acc.mean)
    return out, note


def _mean(runs: list[dict], key: str, scale: float = 1.0, digits: int = 2) -> str:
    values = [r[key] * scale for r in runs if r.get(key) is not None]
    return f"{mean(values):.{digits}f}" if values else "–"


def format_acc(ci: Interval, scale: float = 100.0, digits: int = 2) -> str:
    """``"94.44 ± 0.81"``, ``"94.44 ± n/a"`` with one value."""
    half = NA if math.isnan(ci.half_width) else f"{ci.half_width * scale:.{digits}f}"
    return f"{ci.mean * scale:.{digits}f} ± {half}"


def format_delta(ci: Interval, scale: float = 100.0, digits: int = 2) -> str:
    """``"+0.52 [-0.10, +1.14]"``, ``"+0.52 [n/a]"`` with one pair."""

    def f(x: float) -> str:
        return f"{x * scale:+.{digits}f}"

    if math.isnan(ci.lo):
        return f"{f(ci.mean)} [{NA}]"
    return f"{f(ci.mean)} [{f(ci.lo)}, {f(ci.hi)}]"


def _delta_cells(s: Summary, reference: str) -> tuple[str, str]:
    if s.variant == reference:
        return DASH, DASH
    if s.delta is None:  # no reference, or no seed in common with it
        return NA, NA
    cell = format_delta(s.delta)
    if s.delta.n != len(s.runs):
        cell += f" (n={s.delta.n})"
    if math.isnan(s.delta.lo):
        return cell, NA
    return cell, "*" if s.delta.excludes_zero else ""


def markdown(rows: list[dict[str, Any]], reference: str, confidence: float = 0.95) -> str:
    """The text of ``results.md``: a header naming the statistics, the table, the failed runs."""
    summaries, note = summarize(rows, reference, confidence)
    return _markdown(rows, summaries, note, reference, confidence)


def _markdown(
    rows: list[dict[str, Any]],
    summaries: list[Summary],
    note: str | None,
    reference: str,
    confidence: float,
) -> str:
    pct = f"{100 * confidence:g}%"
    lines = [
        f"Test accuracy: mean ± half-width of the Student-t {pct} CI over seeds (n = the seeds "
        f"column). Δ vs {reference}: paired difference in percentage points over the seeds both "
        f"variants have, mean [{pct} CI], {PAIRED_METHOD}; * marks an interval that excludes 0. "
        "An interval needs two seeds (n/a with one). Other columns: means over the seeds.",
        "",
    ]
    if note:
        lines += [f"Note: {note}; the Δ columns are {NA}.", ""]
    lines += [
        f"| variant | seeds | test acc (%) mean ± {pct} CI | Δ vs {reference} (pp) mean [lo, hi] "
        "| excl. 0 | best val acc (%) | alpha | beta | gamma | firing rate | SOPs/sample (k) "
        "| wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        delta, excl = _delta_cells(s, reference)
        rs = s.runs
        lines.append(
            f"| {s.variant} | {len(rs)} | {format_acc(s.acc)} | {delta} | {excl} "
            f"| {_mean(rs, 'val_acc_best', 100)} | {_mean(rs, 'alpha_mean')} "
            f"| {_mean(rs, 'beta_mean')} | {_mean(rs, 'gamma_mean')} "
            f"| {_mean(rs, 'firing_rate', 1, 3)} | {_mean(rs, 'synops_ac', 1e-3, 1)} "
            f"| {_mean(rs, 'wall_s', 1, 0)} |"
        )
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["", "Failed runs (see `<variant>/seed<k>/train.log`; rerun to retry):", ""]
        for r in failed:
            last = (r.get("error") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {r['variant']} seed {r['seed']}: {last[0]}")
    return "\n".join(lines) + "\n"


def write_reports(
    rows: list[dict[str, Any]],
    out: str | Path,
    reference: str = "glif_soft",
    confidence: float = 0.95,
) -> None:
    """Write ``results.csv`` (one row per run), ``results.md`` (per variant: test accuracy with
    its t-interval and the paired difference to ``reference``, best first; failed runs below)
    and ``results.png`` (the same two, as error bars) into ``out``."""
    out = Path(out)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    summaries, note = summarize(rows, reference, confidence)
    (out / "results.md").write_text(_markdown(rows, summaries, note, reference, confidence))
    plot(summaries, reference, note, confidence, out / "results.png")


def _half(ci: Interval, scale: float = 100.0) -> float:
    return 0.0 if math.isnan(ci.half_width) else ci.half_width * scale


def plot(
    summaries: list[Summary], reference: str, note: str | None, confidence: float, path: Path
) -> None:
    """Left: mean test accuracy with its CI per variant, the reference's mean as a line. Right:
    the paired differences to the reference with their CIs around 0, red where they exclude 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pct = f"{100 * confidence:g}%"
    names = [s.variant for s in summaries]
    y = list(range(len(names)))[::-1]
    fig, (ax, ax_d) = plt.subplots(1, 2, sharey=True, figsize=(11, 0.35 * max(len(names), 1) + 1.6))
    means = [100 * s.acc.mean for s in summaries]
    errs = [_half(s.acc) for s in summaries]
    ax.barh(y, means, xerr=errs, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_yticks(y, names)
    if means:
        lo = min(m - e for m, e in zip(means, errs, strict=True))
        ax.set_xlim(max(0.0, math.floor(lo - 2)), 100)
    ref = next((s for s in summaries if s.variant == reference), None)
    if ref is not None:
        ax.axvline(100 * ref.acc.mean, color="k", ls="--", lw=1, label=f"{reference} mean")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"test accuracy (%), mean ± {pct} CI over seeds")
    ax.grid(axis="x", alpha=0.3)

    ax_d.axvline(0.0, color="k", lw=1)
    for yi, s in zip(y, summaries, strict=True):
        if s.variant == reference:
            ax_d.text(0.0, yi, " reference", va="center", fontsize=8)
        if s.delta is None:
            continue
        color = "tab:red" if s.delta.excludes_zero else "tab:gray"
        x, half = 100 * s.delta.mean, _half(s.delta)
        ax_d.errorbar(x, yi, xerr=half, fmt="o", color=color, capsize=3, mfc=color)
        if s.delta.excludes_zero:
            ax_d.annotate("*", (x + half, yi), xytext=(3, 0), textcoords="offset points",
                          color=color, va="center", fontsize=12)  # fmt: skip
    if note:
        ax_d.text(0.5, 0.5, note, transform=ax_d.transAxes, ha="center", va="center", wrap=True)
    ax_d.set_xlabel(f"Δ vs {reference} (pp), paired mean ± {pct} CI (red, *: excludes 0)")
    ax_d.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
