"""ablate.py: a tiny grid writes the three reports, reruns resume, pinned gates stay pinned; the
reports' statistics checked by hand on made-up rows; the command line's defaults."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import re
from pathlib import Path
from statistics import mean, stdev

import pytest
import torch
import yaml
from scipy import stats

from ablate import main
from lightning_glif import ablation
from lightning_glif.ablation import load_variants, read_grid, read_scalars
from lightning_glif.ablation_report import write_reports
from lightning_glif.cli import CONF_DIR
from lightning_glif.stats import PAIRED_METHOD

TINY = [
    "--",
    "--trainer.max_epochs", "2",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
]  # fmt: skip
GRID = {
    "variants": {
        "pinned": {
            "class_path": "lightning_glif.neurons.GLIF",
            "init_args": {"alpha": 0, "beta": 1, "gamma": 1},
        },
        "lif": {"class_path": "lightning_glif.neurons.LIF", "init_args": {"decay": 0.25}},
        "broken": {"class_path": "lightning_glif.neurons.GLIF", "init_args": {"alpha": 2}},
    }
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Run 'pinned' alone (as if the grid was killed after it), leave a half-written 'lif' run,
    then rerun the whole two-variant grid; returns (out, grid file, log lines of the rerun,
    mtime of pinned's result.json after the first run)."""
    tmp = tmp_path_factory.mktemp("ablation")
    grid_file = tmp / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(GRID))
    out = tmp / "out"
    args = ["--grid", str(grid_file), "--out", str(out), "--seeds", "0", "--reference", "pinned"]
    assert main([*args, "--variants", "pinned", *TINY]) == 0
    first = (out / "pinned" / "seed0" / "result.json").stat().st_mtime_ns
    interrupted = out / "lif" / "seed0"
    interrupted.mkdir(parents=True)
    (interrupted / "stale.txt").write_text("killed mid-run")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*args, "--variants", "pinned,lif", *TINY]) == 0
    logged = stdout.getvalue().splitlines()
    return out, grid_file, logged, first


@pytest.mark.slow
def test_tiny_grid_writes_reports(grid):
    out, _, _, _ = grid
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [
        ("pinned", "0", "ok"),
        ("lif", "0", "ok"),
    ]
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and 0.0 <= float(r["val_acc_best"]) <= 1.0
        assert float(r["firing_rate"]) >= 0.0 and float(r["synops_ac"]) >= 0.0
    assert rows[1]["alpha_mean"] == ""  # LIF has no gates
    table = (out / "results.md").read_text()
    assert "| pinned | 1 |" in table and "| lif | 1 |" in table
    assert (out / "results.png").stat().st_size > 0
    for v in ("pinned", "lif"):
        run = out / v / "seed0"
        assert {"variant.yaml", "run.json", "train.log", "result.json"} <= {
            p.name for p in run.iterdir()
        }
        assert list(run.rglob("events.out.tfevents*")) and list(run.rglob("*.ckpt"))
        # The selection is explicit: recorded in run.json, done by the child's own checkpoint.
        spec = json.loads((run / "run.json").read_text())
        assert (spec["monitor"], spec["mode"]) == ("val/acc", "max")
        result = json.loads((run / "result.json").read_text())
        assert result["selected_on"] == "val/acc" and result["best_ckpt"].startswith("selected/")
        assert [p.name for p in (run / "selected").iterdir()] == [Path(result["best_ckpt"]).name]
        # selected on val/acc (max): its score is the run's best validation accuracy
        assert result["selected_score"] == pytest.approx(result["val_acc_best"])
        # the firing rate is the child's test-stage monitor's, the one logged at the test
        scalars = read_scalars(run)
        assert [v for _, v in scalars["spikes/test/rate"]] == [
            pytest.approx(result["firing_rate"], rel=1e-6)
        ]


@pytest.mark.slow
def test_rerun_skips_finished_and_redoes_interrupted(grid):
    out, _, logged, first = grid
    assert (out / "pinned" / "seed0" / "result.json").stat().st_mtime_ns == first
    assert any(line.startswith("[ablate] skip pinned seed 0") for line in logged)
    assert [line for line in logged if line.startswith("[ablate] run ")] == [
        f"[ablate] run lif seed 0 -> {out / 'lif' / 'seed0'}"
    ]
    assert not (out / "lif" / "seed0" / "stale.txt").exists()


@pytest.mark.slow
def test_pinned_gates_stay_pinned(grid):
    out, _, _, _ = grid
    scalars = read_scalars(out / "pinned" / "seed0")
    for gate, pinned in {"alpha": 0.0, "beta": 1.0, "gamma": 1.0}.items():
        tags = [t for t in scalars if t.startswith("gates/") and t.endswith(f"/{gate}_mean")]
        assert len(tags) == 2  # both hidden layers of the MLP
        for tag in tags:
            values = [v for _, v in scalars[tag]]
            assert len(values) >= 2 and all(v == pinned for v in values), (tag, values)
    result = json.loads((out / "pinned" / "seed0" / "result.json").read_text())
    assert (result["alpha_mean"], result["beta_mean"], result["gamma_mean"]) == (0.0, 1.0, 1.0)


@pytest.mark.slow
def test_failed_variant_is_reported_and_does_not_stop_the_grid(grid):
    out, grid_file, _, _ = grid
    args = ["--grid", str(grid_file), "--out", str(out), "--seeds", "0", "--reference", "pinned"]
    code = main([*args, "--variants", "broken,pinned", *TINY])
    assert code == 1
    rows = {r["variant"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["broken"]["status"] == "failed" and "alpha" in rows["broken"]["error"]
    assert rows["pinned"]["status"] == "ok"
    assert "broken seed 0" in (out / "results.md").read_text()
    assert not (out / "broken" / "seed0" / "result.json").exists()


def test_default_grid_has_the_issue_variants():
    variants = load_variants(CONF_DIR / "ablation" / "default.yaml", ["all"])
    corners = {f"a{a}b{b}g{g}" for a in (0, 1) for b in (0, 1) for g in (0, 1)}
    expected = {"glif_soft", "glif_hard", "glif_static", "gliff", "alpha_only", "beta_only"}
    expected |= {"gamma_only", "glif_layer", "glif_frozen_membrane", "lif", "plif"} | corners
    assert set(variants) == expected
    for name, neuron in variants.items():  # every variant builds its neuron
        module, cls = neuron["class_path"].rsplit(".", 1)
        layer = getattr(importlib.import_module(module), cls)(4, 2, **neuron.get("init_args", {}))
        spikes = layer(torch.randn(2, 3, 4))
        assert spikes.shape == (2, 3, 4), name
    with pytest.raises(ValueError, match="unknown variants"):
        load_variants(CONF_DIR / "ablation" / "default.yaml", ["nope"])


# -- the default subset and the command line ----------------------------------------------------
DEFAULT_GRID = CONF_DIR / "ablation" / "default.yaml"
DEFAULT_SUBSET = ["glif_soft", "glif_hard", "glif_static", "gliff", "a1b0g1", "lif", "plif"]


def test_default_subset():
    variants, default = read_grid(DEFAULT_GRID)
    assert default == DEFAULT_SUBSET and len(variants) == 19
    assert list(load_variants(DEFAULT_GRID)) == DEFAULT_SUBSET
    assert list(load_variants(DEFAULT_GRID, [])) == DEFAULT_SUBSET
    assert list(load_variants(DEFAULT_GRID, ["lif", "glif_soft"])) == ["lif", "glif_soft"]


def test_grid_without_default_runs_everything(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    assert list(load_variants(grid)) == list(GRID["variants"])
    grid.write_text(yaml.safe_dump({**GRID, "default": ["pinned", "nope"]}))
    with pytest.raises(ValueError, match="unknown variants \\['nope'\\]"):
        read_grid(grid)


@pytest.fixture
def fake_grid(monkeypatch):
    """Replace run_grid: record its arguments, write an empty results.md."""
    calls = []

    def fake(configs, variants, seeds, out, jobs=1, train_args=None, **kw):
        calls.append(dict(configs=configs, variants=variants, seeds=seeds, jobs=jobs, **kw))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.md").write_text("")
        return []

    monkeypatch.setattr(ablation, "run_grid", fake)
    return calls


def test_cli_defaults(fake_grid, tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    (call,) = fake_grid
    assert list(call["variants"]) == DEFAULT_SUBSET
    assert call["seeds"] == [0, 1, 2, 3, 4]
    assert call["reference"] == "glif_soft"
    assert call["jobs"] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    assert [Path(c).name for c in call["configs"]] == ["delayed_row_digits.yaml"]
    for argv in (["--variants", "all"], ["--full"]):
        assert main(["--out", str(tmp_path), *argv]) == 0
        assert len(fake_grid[-1]["variants"]) == 19
    assert main(["--out", str(tmp_path), "--variants", "lif,plif", "--reference", "lif"]) == 0
    assert fake_grid[-1]["reference"] == "lif"


def test_cli_rejects_a_reference_outside_the_variants(fake_grid, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--variants", "lif,plif"])  # the default reference, glif_soft, is not run
    assert exit_info.value.code == 2
    assert "--reference 'glif_soft' is not among the chosen variants: lif, plif" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--variants", "nope"])
    assert "unknown variants ['nope']" in capsys.readouterr().err
    assert not fake_grid


def test_list_marks_the_defaults(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line.split(":")[0][2:] for line in lines if line.startswith("* ")]
    unmarked = [line.split(":")[0][2:] for line in lines if line.startswith("  ")]
    assert marked == DEFAULT_SUBSET and len(unmarked) == 12 and "a0b0g0" in unmarked


# -- the reports, on hand-made rows --------------------------------------------------------------
T95 = {n: stats.t.ppf(0.975, n - 1) for n in (2, 3)}  # Student t quantiles by n


def run(variant, seed, acc, val=0.9, gates=(0.5, 0.5, 0.5), status="ok", **kw):
    row = {"variant": variant, "seed": seed, "status": status, "wall_s": 20.0 + seed}
    if status == "ok":
        row |= {"test_acc": acc, "val_acc_best": val, "firing_rate": 0.2, "synops_ac": 15e3}
        row |= dict(zip(("alpha_mean", "beta_mean", "gamma_mean"), gates, strict=True))
    return row | kw


REF = {2: 0.910, 0: 0.900, 1: 0.920}  # glif_soft by seed (listed out of seed order below)
BETTER = {0: 0.950, 1: 0.960, 2: 0.955}  # differences 5.0, 4.0, 4.5 pp: excludes 0
NOISY = {0: 0.890, 1: 0.930, 2: 0.900}  # differences -1, +1, -1 pp: contains 0
PARTIAL = {1: 0.940, 2: 0.950, 3: 0.990}  # seed 3 has no reference: pairs on seeds 1, 2


def made_up_rows():
    rows = [run("glif_soft", s, a, val=0.93) for s, a in REF.items()]
    rows += [run("better", s, a, val=0.95 + 0.01 * s) for s, a in BETTER.items()]
    rows += [run("noisy", s, a, gates=(None, None, None)) for s, a in NOISY.items()]
    rows += [run("partial", s, a) for s, a in PARTIAL.items()]
    rows += [run("single", 0, 0.925), run("single", 1, None, status="failed", error="a\nboom")]
    return rows


def table(md: str) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """results.md's header cells, its rows by variant, and the variants in order."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]
    return header, {r[0]: dict(zip(header, r, strict=True)) for r in body}, [r[0] for r in body]


def t_interval(values):
    """(mean, half width) of the Student-t 95% interval, by hand."""
    return mean(values), T95[len(values)] * stdev(values) / math.sqrt(len(values))


def acc_cell(values):
    m, h = t_interval(values)
    return f"{100 * m:.2f} ± {100 * h:.2f}"


def delta_cell(variant, reference, seeds):
    m, h = t_interval([variant[s] - reference[s] for s in seeds])
    return f"{100 * m:+.2f} [{100 * (m - h):+.2f}, {100 * (m + h):+.2f}]"


def test_reports_by_hand(tmp_path):
    rows = made_up_rows()
    write_reports(rows, tmp_path)
    md = (tmp_path / "results.md").read_text()
    header, by, order = table(md)
    acc, delta, excl = header[2], header[3], header[4]
    assert header == [
        "variant", "seeds", "test acc (%) mean ± 95% CI", "Δ vs glif_soft (pp) mean [lo, hi]",
        "excl. 0", "best val acc (%)", "alpha", "beta", "gamma", "firing rate",
        "SOPs/sample (k)", "wall (s)",
    ]  # fmt: skip
    first = md.splitlines()[0]
    assert "Student-t 95% CI" in first and PAIRED_METHOD in first and "* marks" in first
    # sorted by mean test accuracy: 96.0, 95.5, 92.5, 91.0, 90.67
    assert order == ["partial", "better", "single", "glif_soft", "noisy"]
    assert by["better"]["seeds"] == "3"
    assert by["better"][acc] == acc_cell(list(BETTER.values()))
    assert by["glif_soft"][acc] == acc_cell(list(REF.values()))
    assert by["better"][delta] == delta_cell(BETTER, REF, [0, 1, 2])
    assert by["better"][delta] == "+4.50 [+3.26, +5.74]"  # 4.5 ± 4.303 * 0.5 / sqrt(3)
    assert by["better"][excl] == "*"
    assert by["noisy"][delta] == delta_cell(NOISY, REF, [0, 1, 2]) and by["noisy"][excl] == ""
    # paired on the seeds both have (1, 2), n shown when it differs from the seeds column
    assert by["partial"]["seeds"] == "3"
    assert by["partial"][delta] == delta_cell(PARTIAL, REF, [1, 2]) + " (n=2)"
    # the reference's own row
    assert (by["glif_soft"][delta], by["glif_soft"][excl]) == ("—", "—")
    # one ok seed: no interval
    assert by["single"]["seeds"] == "1"
    assert by["single"][acc] == "92.50 ± n/a"
    assert by["single"][delta] == "+2.50 [n/a]" and by["single"][excl] == "n/a"
    # the other columns: means over the ok seeds
    assert by["better"]["best val acc (%)"] == "96.00"
    assert by["noisy"]["alpha"] == "–" and by["better"]["gamma"] == "0.50"
    assert by["better"]["SOPs/sample (k)"] == "15.0" and by["better"]["wall (s)"] == "21"
    assert "- single seed 1: boom" in md.split("Failed runs")[1]
    csv_rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(csv_rows) == len(rows) and csv_rows[-1]["status"] == "failed"
    assert csv_rows[-1]["test_acc"] == "" and csv_rows[6]["alpha_mean"] == ""
    assert (tmp_path / "results.png").stat().st_size > 0


def test_reports_other_reference_and_confidence(tmp_path):
    write_reports(made_up_rows(), tmp_path, reference="better", confidence=0.9)
    header, by, _ = table((tmp_path / "results.md").read_text())
    assert header[2:4] == ["test acc (%) mean ± 90% CI", "Δ vs better (pp) mean [lo, hi]"]
    m, h = mean(NOISY.values()), stats.t.ppf(0.95, 2) * stdev(NOISY.values()) / math.sqrt(3)
    assert by["noisy"][header[2]] == f"{100 * m:.2f} ± {100 * h:.2f}"
    assert by["better"][header[3]] == "—"
    d = [REF[s] - BETTER[s] for s in (0, 1, 2)]
    m, h = mean(d), stats.t.ppf(0.95, 2) * stdev(d) / math.sqrt(3)
    assert (
        by["glif_soft"][header[3]] == f"{100 * m:+.2f} [{100 * (m - h):+.2f}, {100 * (m + h):+.2f}]"
    )
    assert by["glif_soft"][header[4]] == "*"


@pytest.mark.parametrize("how", ["missing", "failed"])
def test_reports_without_the_reference(tmp_path, how):
    rows = [r for r in made_up_rows() if r["variant"] != "glif_soft"]
    if how == "failed":
        rows += [run("glif_soft", s, None, status="failed", error="x") for s in REF]
    write_reports(rows, tmp_path)
    md = (tmp_path / "results.md").read_text()
    expected = "is missing from this grid" if how == "missing" else "has no ok runs"
    assert f"reference variant 'glif_soft' {expected}" in md
    header, by, order = table(md)
    assert "glif_soft" not in order and len(order) == 4
    assert all(r[header[3]] == "n/a" and r[header[4]] == "n/a" for r in by.values())
    assert (tmp_path / "results.png").stat().st_size > 0


# -- end to end: the default grid, two variants, two seeds -------------------------------------
@pytest.mark.slow
def test_two_variants_two_seeds_end_to_end(tmp_path):
    out = tmp_path / "out"
    code = main([
        "--variants", "glif_soft,lif", "--seeds", "0,1", "--out", str(out), "--",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
    ])  # fmt: skip
    assert code == 0
    header, by, order = table((out / "results.md").read_text())
    assert header[:5] == [
        "variant", "seeds", "test acc (%) mean ± 95% CI", "Δ vs glif_soft (pp) mean [lo, hi]",
        "excl. 0",
    ]  # fmt: skip
    assert len(header) == 12 and sorted(order) == ["glif_soft", "lif"]
    assert by["glif_soft"]["seeds"] == by["lif"]["seeds"] == "2"
    assert by["glif_soft"][header[3]] == "—"
    number, signed = r"\d+\.\d\d", r"[+-]\d+\.\d\d"
    assert re.fullmatch(rf"{number} ± {number}", by["lif"][header[2]])
    assert re.fullmatch(rf"{signed} \[{signed}, {signed}\]", by["lif"][header[3]])
    assert by["lif"][header[4]] in ("*", "")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("glif_soft", "0"), ("glif_soft", "1"), ("lif", "0"), ("lif", "1"),
    ]  # fmt: skip
    assert (out / "results.png").stat().st_size > 0
