"""ablate.py: a tiny grid writes the three reports; a rerun skips what finished and trains anew
what changed (arguments, a redefined variant), sets an unreadable result.json aside and adopts
a run's result in another study; a failing variant is a failed row; pinned gates stay pinned;
the reports' statistics checked by hand on made-up rows; the command line's defaults."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
from pathlib import Path
from statistics import mean, stdev

import optuna
import pytest
import torch
import yaml

from ablate import main
from lightning_glif.sweep.grid import CONF, read_grid
from lightning_glif.sweep.report import write_reports
from lightning_glif.sweep.worker import Workers, read_scalars

TINY = [
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
]
PINNED = {
    "class_path": "lightning_glif.neurons.GLIF",
    "init_args": {"alpha": 0, "beta": 1, "gamma": 1},
}
LIF = {"class_path": "lightning_glif.neurons.LIF", "init_args": {"decay": 0.25}}
BROKEN = {"class_path": "lightning_glif.neurons.GLIF", "init_args": {"alpha": 2}}


def ablate(out: Path, grid: Path, *options: str, fit=TINY) -> tuple[int, list[str]]:
    """``ablate.py`` on ``grid`` (seed 0, reference pinned), in this process: (code, log)."""
    argv = ["--grid", str(grid), "--out", str(out), "--seeds", "0", "--reference", "pinned"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*argv, "--config", "conf/default.yaml", *options, "--", *fit])
    return code, stdout.getvalue().splitlines()


def grid_file(path: Path, **variants) -> Path:
    path.write_text(yaml.safe_dump({"variants": variants}))
    return path


def run_dirs(out: Path, variant: str) -> list[Path]:
    return sorted((out / variant).iterdir())


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The grid pinned + lif, once: (out, grid file, run directory by variant)."""
    tmp = tmp_path_factory.mktemp("ablation")
    grid = grid_file(tmp / "grid.yaml", pinned=PINNED, lif=LIF, broken=BROKEN)
    code, logged = ablate(tmp / "out", grid, "--variants", "pinned,lif")
    assert code == 0, logged
    rows = csv.DictReader((tmp / "out" / "results.csv").open())
    return tmp / "out", grid, {r["variant"]: Path(r["run_dir"]) for r in rows}


@pytest.mark.slow
def test_tiny_grid_writes_reports(first):
    out, _, _ = first
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [
        ("pinned", "0", "ok"),
        ("lif", "0", "ok"),
    ]
    assert rows[1]["alpha_mean"] == ""  # LIF has no gates
    table = (out / "results.md").read_text()
    assert "| pinned | 1 |" in table and "| lif | 1 |" in table
    assert (out / "results.png").stat().st_size > 0
    for row in rows:
        run = Path(row["run_dir"])
        assert run.parent == out / row["variant"] and run.name.startswith("seed0-")
        assert {"run.json", "train.log", "result.json"} <= {p.name for p in run.iterdir()}
        args = json.loads((run / "run.json").read_text())["args"]
        neuron = args[args.index("--model.backbone.init_args.neuron") + 1]
        assert json.loads(neuron) == {"pinned": PINNED, "lif": LIF}[row["variant"]]
        result = json.loads((run / "result.json").read_text())
        assert float(row["test_acc"]) == result["test_acc"]
        # tested on the checkpoint selected on val/acc (max): its score is the best val acc
        assert result["selected_score"] == pytest.approx(result["val_acc_best"])
        assert (run / result["best_ckpt"]).is_file()
        # the figures are the run's own events: the test split's firing rate, the gates' means
        scalars = read_scalars(run)
        assert [v for _, v in scalars["spikes/test/rate"]] == [pytest.approx(result["firing_rate"])]


@pytest.mark.slow
def test_pinned_gates_stay_pinned(first):
    run = first[2]["pinned"]
    scalars = read_scalars(run)
    for gate, pinned in {"alpha": 0.0, "beta": 1.0, "gamma": 1.0}.items():
        tags = [t for t in scalars if t.startswith("gates/") and t.endswith(f"/{gate}_mean")]
        assert len(tags) == 2  # both spiking layers of the convnet
        assert all(v == pinned for t in tags for _, v in scalars[t]), gate
    result = json.loads((run / "result.json").read_text())
    assert (result["alpha_mean"], result["beta_mean"], result["gamma_mean"]) == (0.0, 1.0, 1.0)


@pytest.mark.slow
def test_a_rerun_skips_the_finished_runs(first):
    out, grid, _ = first
    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    code, logged = ablate(out, grid, "--variants", "pinned,lif")
    assert code == 0
    assert [line for line in logged if line.startswith("[ablate] ")] == [
        "[ablate] skip pinned seed 0: finished",
        "[ablate] skip lif seed 0: finished",
        "[ablate] enqueued 0 of 2 trials in study 'ablation'",
        "[ablate] no trial left in study 'ablation': `ablate.py report` reports it",
    ]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == before


@pytest.mark.slow
def test_a_changed_argument_trains_anew(first):
    """Another fit argument is another run: not "skip pinned seed 0: finished"."""
    out, grid, dirs = first
    old = dirs["pinned"]
    fit = [*TINY[:-6], "--trainer.limit_val_batches", "1", *TINY[-4:]]
    code, logged = ablate(out, grid, "--variants", "pinned", fit=fit)
    assert code == 0 and not any("skip" in line for line in logged)
    new = [d for d in run_dirs(out, "pinned") if d != old]
    assert len(new) == 1 and f"[ablate] run pinned seed 0 -> {new[0]}" in logged
    (row,) = csv.DictReader((out / "results.csv").open())
    assert row["run_dir"] == str(new[0])
    assert json.loads((old / "run.json").read_text())["args"][-len(TINY) :] == TINY  # kept


@pytest.mark.slow
def test_another_study_adopts_only_the_same_run_and_sets_an_unreadable_result_aside(
    first, tmp_path
):
    """A redefined variant in a new study trains anew instead of adopting the old neuron's
    result.json; a truncated result.json is set aside and retrained, not failed on every
    rerun."""
    out, _, dirs = first
    old_lif, pinned = dirs["lif"], dirs["pinned"]
    text = (pinned / "result.json").read_text()
    (pinned / "result.json").write_text(text[: len(text) // 2])  # truncated
    redefined = grid_file(tmp_path / "grid.yaml", pinned=PINNED, lif={**LIF, "init_args": {}})
    code, logged = ablate(out, redefined, "--variants", "pinned,lif", "--study", "other")
    assert code == 0, logged
    assert any(line.startswith(f"[ablate] {pinned}/result.json is unreadable") for line in logged)
    (aside,) = pinned.glob("result.json.unreadable-*")
    assert aside.read_text() == text[: len(text) // 2]
    assert f"[ablate] run pinned seed 0 -> {pinned}" in logged  # retrained in its directory
    identity = json.loads((pinned / "run.json").read_text())["identity"]
    assert json.loads((pinned / "result.json").read_text())["identity"] == identity
    new_lif = [d for d in run_dirs(out, "lif") if d != old_lif]
    assert len(new_lif) == 1 and f"[ablate] run lif seed 0 -> {new_lif[0]}" in logged
    # a third study asking for the very same runs adopts their results instead of training
    code, logged = ablate(out, redefined, "--variants", "pinned,lif", "--study", "third")
    assert code == 0
    ran = ("[ablate] adopt", "[ablate] done", "[ablate] run")
    said = sorted(line.split(":")[0] for line in logged if line.startswith(ran))
    assert said == [
        f"[ablate] {what} {v} seed 0" for what in ("adopt", "done") for v in ("lif", "pinned")
    ]


@pytest.mark.slow
def test_a_failing_variant_is_a_failed_row_and_does_not_stop_the_grid(first):
    out, grid, _ = first
    code, logged = ablate(out, grid, "--variants", "broken,pinned")
    assert code == 1
    rows = {r["variant"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["broken"]["status"] == "failed" and "alpha" in rows["broken"]["error"]
    assert rows["pinned"]["status"] == "ok"
    assert "- broken seed 0: " in (out / "results.md").read_text()
    assert not list((out / "broken").rglob("result.json"))


# -- the default grid and the command line -------------------------------------------------------
DEFAULT_GRID = CONF / "ablation" / "default.yaml"
DEFAULT_SUBSET = ["glif_soft", "glif_hard", "glif_static", "gliff", "a1b0g1", "lif", "plif"]


def test_the_default_grid():
    variants = read_grid(DEFAULT_GRID, ["all"])
    assert list(read_grid(DEFAULT_GRID)) == DEFAULT_SUBSET and len(variants) == 19
    assert list(read_grid(DEFAULT_GRID, ["lif", "glif_soft"])) == ["lif", "glif_soft"]
    corners = {f"a{a}b{b}g{g}" for a in (0, 1) for b in (0, 1) for g in (0, 1)}
    expected = {"glif_soft", "glif_hard", "glif_static", "gliff", "alpha_only", "beta_only"}
    expected |= {"gamma_only", "glif_layer", "glif_frozen_membrane", "lif", "plif"} | corners
    assert set(variants) == expected
    for name, neuron in variants.items():  # every variant builds its neuron
        module, cls = neuron["class_path"].rsplit(".", 1)
        layer = getattr(importlib.import_module(module), cls)(4, 2, **neuron.get("init_args", {}))
        assert layer(torch.randn(2, 3, 4)).shape == (2, 3, 4), name


def test_bad_grids_name_the_problem(tmp_path):
    path = grid_file(tmp_path / "g.yaml", pinned=PINNED)
    assert list(read_grid(path)) == ["pinned"]  # no default: every variant
    with pytest.raises(ValueError, match=r"unknown variants \['nope'\]; .* has: pinned"):
        read_grid(path, ["nope"])
    path.write_text(yaml.safe_dump({"variants": {"x": {"init_args": {}}}}))
    with pytest.raises(ValueError, match=r"variants \['x'\] need a class_path"):
        read_grid(path)


def test_the_command_line_s_defaults(tmp_path):
    """``ablate.py enqueue`` with no options: the default subset x seeds 0-4 on delayed row
    digits, compared with glif_soft; 2 local workers by default on a CPU with 2 cores."""
    assert main(["enqueue", "--out", str(tmp_path)]) == 0
    study = optuna.load_study(study_name="ablation", storage=f"sqlite:///{tmp_path}/study.db")
    trials = study.get_trials()
    assert [(t.user_attrs["variant"], t.user_attrs["seed"]) for t in trials] == [
        (v, s) for v in DEFAULT_SUBSET for s in range(5)
    ]
    assert {Path(c).name for t in trials for c in t.user_attrs["configs"]} == {
        "delayed_row_digits.yaml"
    }
    assert {t.state.name for t in trials} == {"WAITING"}
    assert study.user_attrs["reference"] == "glif_soft"
    assert len({t.user_attrs["identity"] for t in trials}) == 35
    assert Workers(tmp_path, gpus_per_trial=0).workers == min(2, os.cpu_count() or 1)


def test_the_command_line_refuses_bad_options(tmp_path, capsys):
    for argv, message in [
        (["--variants", "lif,plif"], "--reference 'glif_soft' among the variants: lif, plif"),
        (["--variants", "nope"], "unknown variants ['nope']"),
        (["--seeds", "1,1"], "--seeds must be distinct"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- the reports, on made-up rows ------------------------------------------------------------------
T95 = {2: 12.706204736174707, 3: 4.302652729749464}  # t_{0.975, n-1} by the number of values


def run(variant, seed, acc, val=0.9, gates=(0.5, 0.5, 0.5), status="ok", **kw):
    row = {"variant": variant, "seed": seed, "status": status, "wall_s": 20.0 + seed}
    if status == "ok":
        row |= {"test_acc": acc, "val_acc_best": val, "firing_rate": 0.2, "synops_ac": 15e3}
        row |= dict(zip(("alpha_mean", "beta_mean", "gamma_mean"), gates, strict=True))
    return row | kw


REF = {2: 0.910, 0: 0.900, 1: 0.920}  # glif_soft by seed (out of seed order on purpose)
BETTER = {0: 0.950, 1: 0.960, 2: 0.955}  # differences 5.0, 4.0, 4.5 pp: excludes 0
NOISY = {0: 0.890, 1: 0.930, 2: 0.900}  # differences -1, +1, -1 pp: contains 0
PARTIAL = {1: 0.940, 2: 0.950, 3: 0.990}  # seed 3 has no reference: paired on seeds 1, 2


def made_up_rows():
    rows = [run("glif_soft", s, a, val=0.93) for s, a in REF.items()]
    rows += [run("better", s, a, val=0.95 + 0.01 * s) for s, a in BETTER.items()]
    rows += [run("noisy", s, a, gates=(None, None, None)) for s, a in NOISY.items()]
    rows += [run("partial", s, a) for s, a in PARTIAL.items()]
    return rows + [
        run("single", 0, 0.925),
        run("single", 1, None, status="failed", error="a\nboom"),
    ]


def table(md: str) -> tuple[list[str], dict[str, dict[str, str]], list[str]]:
    """results.md's header cells, its rows by variant, and the variants in order."""
    cells = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith("|")
    ]
    header, body = cells[0], cells[2:]
    return header, {r[0]: dict(zip(header, r, strict=True)) for r in body}, [r[0] for r in body]


def t_interval(values):
    """(mean, half width) of the Student-t 95% interval, by hand."""
    return mean(values), T95[len(values)] * stdev(values) / math.sqrt(len(values))


def delta_cell(variant, reference, seeds):
    m, h = t_interval([variant[s] - reference[s] for s in seeds])
    return f"{100 * m:+.2f} [{100 * (m - h):+.2f}, {100 * (m + h):+.2f}]"


def test_reports_by_hand(tmp_path):
    rows = made_up_rows()
    write_reports(rows, tmp_path, "glif_soft")
    md = (tmp_path / "results.md").read_text()
    header, by, order = table(md)
    acc, delta, excl = header[2:5]
    assert header == [
        "variant",
        "seeds",
        "test acc (%) mean ± 95% CI",
        "Δ vs glif_soft (pp) mean [lo, hi]",
        "excl. 0",
        "best val acc (%)",
        "alpha",
        "beta",
        "gamma",
        "firing rate",
        "SOPs/sample (k)",
        "wall (s)",
    ]
    assert "Student-t 95% CI" in md.splitlines()[0] and "paired t-test" in md.splitlines()[0]
    assert order == ["partial", "better", "single", "glif_soft", "noisy"]  # best mean first
    m, h = t_interval(list(BETTER.values()))
    assert by["better"][acc] == f"{100 * m:.2f} ± {100 * h:.2f}" == "95.50 ± 1.24"
    assert by["better"][delta] == delta_cell(BETTER, REF, [0, 1, 2]) == "+4.50 [+3.26, +5.74]"
    assert by["better"][excl] == "*"
    assert by["noisy"][delta] == delta_cell(NOISY, REF, [0, 1, 2]) and by["noisy"][excl] == ""
    assert by["partial"][delta] == delta_cell(PARTIAL, REF, [1, 2]) + " (n=2)"
    assert (by["glif_soft"][delta], by["glif_soft"][excl]) == ("—", "—")
    assert by["single"][acc] == "92.50 ± n/a" and by["single"]["seeds"] == "1"
    assert by["single"][delta] == "+2.50 [n/a]" and by["single"][excl] == "n/a"
    assert by["better"]["best val acc (%)"] == "96.00" and by["noisy"]["alpha"] == "–"
    assert by["better"]["SOPs/sample (k)"] == "15.0" and by["better"]["wall (s)"] == "21"
    assert "- single seed 1: boom" in md.split("Failed runs")[1]
    csv_rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(csv_rows) == len(rows) and csv_rows[-1]["status"] == "failed"
    assert csv_rows[-1]["test_acc"] == "" and csv_rows[6]["alpha_mean"] == ""
    assert (tmp_path / "results.png").stat().st_size > 0


def test_reports_against_another_reference(tmp_path):
    write_reports(made_up_rows(), tmp_path, "better")
    header, by, _ = table((tmp_path / "results.md").read_text())
    assert header[3] == "Δ vs better (pp) mean [lo, hi]"
    assert (
        by["glif_soft"][header[3]] == delta_cell(REF, BETTER, [0, 1, 2]) == "-4.50 [-5.74, -3.26]"
    )
    assert by["glif_soft"][header[4]] == "*" and by["better"][header[3]] == "—"


def test_reports_without_the_reference(tmp_path):
    rows = [r for r in made_up_rows() if r["variant"] != "glif_soft"]
    write_reports(
        rows + [run("glif_soft", 0, None, status="failed", error="x")], tmp_path, "glif_soft"
    )
    md = (tmp_path / "results.md").read_text()
    assert "reference variant 'glif_soft' has no ok run" in md
    header, by, order = table(md)
    assert "glif_soft" not in order and len(order) == 4
    assert all(r[header[3]] == "n/a" and r[header[4]] == "n/a" for r in by.values())
