"""The sweep's engine without training, on real embedded SQLite studies: the queue (resume,
failed points, a lost worker's retries, each waiting trial taken once), the rows of the report,
a damaged study file or result.json set aside, concurrent first runs on one --out, storages'
errors and each worker's GPUs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablate import main
from lightning_glif.sweep import grid
from lightning_glif.sweep.report import grid_rows
from lightning_glif.sweep.worker import Workers, adopt, left, open_study, storage_url

ROOT = Path(__file__).resolve().parents[1]
LIF = {"class_path": "lightning_glif.neurons.LIF"}


@pytest.fixture
def study(tmp_path):
    url = storage_url(None, tmp_path)
    return url, open_study(url, "t", heartbeat=1, retries=1, create={"direction": "maximize"})


def specs(variants=("a", "b"), seeds=(0,), args=()):
    return grid.points(["conf/default.yaml"], dict.fromkeys(variants, LIF), list(seeds), list(args))


def finish(study, value=None, error=None):
    """Take the next waiting trial (as a worker's optimize does) and end it."""
    trial = study.ask()
    if error is not None:
        trial.set_user_attr("error", error)
    else:
        trial.set_user_attr("result", {"test_acc": value})
    study.tell(trial, value, state=TrialState.FAIL if error is not None else None)
    return trial


def test_the_queue_resumes_skips_what_finished_and_redoes_what_failed(study, capsys):
    url, study = study
    assert grid.enqueue(url, study, specs(), "a") == 2
    capsys.readouterr()
    assert grid.enqueue(url, study, specs(), "a") == 0  # waiting: not twice
    assert capsys.readouterr().out.splitlines() == [
        "[ablate] queued a seed 0: waiting or running",
        "[ablate] queued b seed 0: waiting or running",
    ]
    finish(study, 0.5)
    finish(study, error="Traceback\nValueError: boom")
    rows, pending = grid_rows(study, [s["identity"] for s in specs()])
    assert pending == [] and [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["test_acc"] == 0.5 and rows[1]["error"].endswith("boom")
    assert grid.enqueue(url, study, specs(), "a") == 1  # the failed point only
    assert capsys.readouterr().out.splitlines() == ["[ablate] skip a seed 0: finished"]
    assert grid_rows(study, [specs()[1]["identity"]]) == ([], ["b seed 0"])
    # other fit arguments: other points, trained anew
    assert grid.enqueue(url, study, specs(args=["--trainer.max_epochs", "1"]), "a") == 2


def test_the_identity_is_the_resolved_run(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  max_epochs: 3\n")
    key = grid.identity([str(base)], [], seed=0)
    assert grid.identity([str(base)], [], seed=1) != key
    assert grid.identity([str(base)], ["--trainer.max_epochs", "2"], seed=0) != key
    moved = tmp_path / "other" / "base.yaml"
    moved.parent.mkdir()
    moved.write_text(base.read_text())
    assert grid.identity([str(moved)], [], seed=0) == key  # the content counts, not the path
    nested = tmp_path / "nested.yaml"
    nested.write_text("config: base.yaml\n")
    key_nested = grid.identity([str(nested)], [], seed=0)
    base.write_text("trainer:\n  max_epochs: 4\n")  # a config the base names changed
    assert grid.identity([str(base)], [], seed=0) != key
    assert grid.identity([str(nested)], [], seed=0) != key_nested


def test_each_waiting_trial_is_taken_once_by_concurrent_workers(study):
    """SQLite has no SELECT ... FOR UPDATE: without the embedded storage's lock, two threads
    took one waiting trial (and then failed to tell it twice)."""
    url, study = study
    for i in range(12):
        study.enqueue_trial({"i": i}, user_attrs={"i": i})
    taken, lock = [], threading.Lock()

    def objective(trial):
        with lock:
            taken.append(trial.user_attrs["i"])
        time.sleep(0.05)
        return 0.0

    study.optimize(objective, n_trials=12, n_jobs=4)
    assert sorted(taken) == list(range(12))
    assert {t.state for t in study.get_trials()} == {TrialState.COMPLETE}


DIE = """import os, sys, time
from lightning_glif.sweep.worker import open_study
study = open_study(sys.argv[1], "t", heartbeat=1, retries=1)
study.optimize(lambda trial: time.sleep(1.5) or os._exit(1), n_trials=1)  # killed mid-trial
"""


@pytest.mark.slow
def test_a_lost_worker_s_trial_is_retried_then_a_failed_row(study):
    url, study = study
    grid.enqueue(url, study, specs(("a",)), "a")
    for attempt in range(2):  # retries=1: the try and one retry
        subprocess.run([sys.executable, "-c", DIE, url], cwd=ROOT, check=False, timeout=60)
        assert left(study) == (0, 1)
        deadline = time.monotonic() + 20  # stale after 3 x 1 s (SQLite's clock: whole seconds)
        while left(study)[1]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
            optuna.storages.fail_stale_trials(study)
        assert left(study) == (1 - attempt, 0)
    (row,), pending = grid_rows(study, [specs(("a",))[0]["identity"]])
    assert pending == [] and row["status"] == "failed"
    assert row["error"] == "worker lost on 2 tries (no heartbeat)"


def test_a_search_counts_the_trials_that_ran(study):
    _, study = study
    assert left(study, 3) == (3, 0)
    finish_new = [study.ask(), study.ask()]
    study.tell(finish_new[0], 1.0)
    finish_new[1].set_user_attr("error", "boom")
    study.tell(finish_new[1], state=TrialState.FAIL)
    assert left(study, 3) == (1, 0)
    study.tell(study.ask(), state=TrialState.FAIL)  # lost or interrupted: no error, not counted
    assert left(study, 3) == (1, 0)


def test_a_result_belongs_to_its_run(tmp_path, capsys):
    (tmp_path / "result.json").write_text('{"identity": "x", "test_acc": 0.9}')
    assert adopt(tmp_path, "x") == {"identity": "x", "test_acc": 0.9}
    assert adopt(tmp_path, "y") is None  # another run's: set aside
    (tmp_path / "result.json").write_text('{"identity": "x", "test_')  # truncated
    assert adopt(tmp_path, "x") is None
    logged = capsys.readouterr().out.splitlines()
    first, second = sorted(tmp_path.glob("result.json.unreadable-*"))  # neither overwritten
    assert second.read_text() == '{"identity": "x", "test_' and "0.9" in first.read_text()
    assert "is the result of another run" in logged[0] and "is unreadable" in logged[1]
    assert not (tmp_path / "result.json").exists()


def test_a_damaged_study_file_is_set_aside_and_named(tmp_path, capsys):
    """A damaged study.db is named and set aside, not SQLAlchemy's "database disk image is
    malformed" or "file is not a database", which name neither the file nor a fix."""
    out = tmp_path / "out"
    lif = ["--out", str(out), "--variants", "lif", "--reference", "lif"]
    assert main(["enqueue", *lif, "--seeds", "0,1"]) == 0
    data = (out / "study.db").read_bytes()
    (out / "study.db").write_bytes(data[: len(data) // 2])  # truncated
    assert main(["enqueue", *lif, "--seeds", "0"]) == 0
    said = capsys.readouterr().out
    assert f"[ablate] {out / 'study.db'} is not a sound SQLite database" in said
    assert "enqueued 1 of 1 trials" in said  # a new study
    (aside,) = out.glob("study.db.damaged-*")
    assert aside.read_bytes() == data[: len(data) // 2]
    (out / "study.db").write_text("not a database")
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--out", str(out)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "is not a sound SQLite database (file is not a database)" in captured.out
    assert "no study 'ablation'" in captured.err and len(list(out.glob("study.db.damaged-*"))) == 2


@pytest.mark.slow
def test_first_runs_started_together_on_one_out_share_it(tmp_path):
    """Both create the schema without one dying on "UNIQUE constraint failed"."""
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "ablate.py"), "enqueue", "--out", str(out)]
    command += ["--variants", "glif_soft,lif", "--seeds", "0,1"]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert sorted(int(o.split("enqueued ")[1].split()[0]) for o in outputs) == [0, 0, 0, 4]
    study = optuna.load_study(study_name="ablation", storage=storage_url(None, out))
    assert len(study.get_trials()) == 4


def test_storage_errors_name_the_problem(tmp_path, capsys):
    assert storage_url(None, tmp_path / "o") == f"sqlite:///{tmp_path / 'o' / 'study.db'}"
    assert storage_url("postgres://u:p@h/db", ".") == "postgresql+psycopg://u:p@h/db"
    assert storage_url("postgresql://u@h:5/db", ".") == "postgresql+psycopg://u@h:5/db"
    for url, why in [("nope://x", "load plugin"), ("postgres://u@127.0.0.1:1/d", "refused")]:
        assert main(["report", "--storage", url]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ablate.py: error: the study's storage ") and why in err
        assert "Check the URL (e.g. postgresql://USER:PASSWORD@HOST:5432/DB)" in err
    with pytest.raises(ValueError, match="need --heartbeat >= 1"):
        open_study("sqlite://", "s", heartbeat=0)
    with pytest.raises(SystemExit):
        main(["worker", "--out", str(tmp_path / "none")])
    assert "no study in" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert main(["enqueue", "--out", str(tmp_path), "--variants", "lif", "--reference", "lif"]) == 0
    with pytest.raises(SystemExit):
        main(["report", "--out", str(tmp_path), "--study", "nope"])
    assert "no study 'nope' in sqlite:///" in capsys.readouterr().err


def test_each_worker_gets_its_own_gpus(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 1,2,3")
    workers = Workers(tmp_path, None, gpus_per_trial=2)
    assert workers.workers == 2 and sorted(workers.slots.get() for _ in range(2)) == ["0,1", "2,3"]
    assert Workers(tmp_path, 3, gpus_per_trial=1).workers == 3
    assert Workers(tmp_path, 4, gpus_per_trial=0).slots.get() == ""  # on the CPU
    with pytest.raises(SystemExit):
        main(["--gpus-per-trial", "2", "--workers", "3", "--out", str(tmp_path)])
    assert (
        "--workers 3 x --gpus-per-trial 2 needs 6 of the 4 GPUs visible (0,1,2,3)"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--jobs", "0", "--out", str(tmp_path)])
    assert "--jobs must be at least 1, got 0." in capsys.readouterr().err
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert Workers(tmp_path, None, gpus_per_trial=1).slots.get() == ""
