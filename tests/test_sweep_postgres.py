"""Sweeps on a real PostgreSQL server (tests/postgres.py) and on the embedded SQLite storage, in
real processes: two workers share a 4-trial grid, one is SIGKILLed mid-trial, its trial is
retried by the other and every grid point ends exactly once with a result; the report from the
study alone; the same grid on the embedded storage gives the same rows, each local worker's runs
on GPUs of their own; a server stopped mid-sweep is named, and a rerun recovers."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.cli_runs import ONE_EPOCH, alive, children_of

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--config", "conf/default.yaml", "--variants", "glif_soft,lif", "--seeds", "0,1"]
TINY = ONE_EPOCH
POINTS = {(v, s) for v in ("glif_soft", "lif") for s in (0, 1)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc"),
]


def ablate(*args: str, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "ablate.py"), *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def finished(proc: subprocess.Popen, timeout: float = 400) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output
    return output


def rows(path: Path) -> set[tuple[str, int, str]]:
    return {(r["variant"], int(r["seed"]), r["status"]) for r in csv.DictReader(path.open())}


def first_child(proc: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 120
    while not (kids := children_of(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    return kids


def test_a_killed_worker_s_trial_is_retried_and_every_point_ends_once(postgres, tmp_path):
    url = postgres.database("sweep_kill")
    study_args = ["--storage", url, "--study", "kill", "--heartbeat", "2"]  # stale after 6 s
    assert "enqueued 4 of 4 trials" in finished(ablate("enqueue", *study_args, *GRID, "--", *TINY))
    doomed = ablate("worker", *study_args, "--workers", "1", "--out", str(tmp_path / "a"))
    survivor = ablate("worker", *study_args, "--workers", "2", "--out", str(tmp_path / "b"))
    try:
        kids = first_child(doomed)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.communicate(timeout=30)
        finished(survivor)
    finally:
        for proc in (doomed, survivor):
            if proc.poll() is None:
                proc.kill()
    deadline = time.monotonic() + 30  # the killed worker's child saw its parent go
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(k) for k in kids)

    study = optuna.load_study(study_name="kill", storage=url.replace("://", "+psycopg://", 1))
    by_state: dict[str, list] = {}
    for t in study.get_trials():
        by_state.setdefault(t.state.name, []).append(t)
    assert set(by_state) == {"COMPLETE", "FAIL"}
    complete = by_state["COMPLETE"]
    assert sorted((t.user_attrs["variant"], t.user_attrs["seed"]) for t in complete) == sorted(
        POINTS
    )
    for t in complete:
        assert t.value == t.user_attrs["result"]["test_acc"]
        assert t.user_attrs["run_dir"].startswith(str(tmp_path / "b"))  # all by the survivor
    (killed,) = by_state["FAIL"]  # failed as stale (no error of a run), retried once
    assert "error" not in killed.user_attrs and f"pid {doomed.pid}" in killed.user_attrs["worker"]
    (retry,) = [t for t in complete if t.system_attrs.get("retry_history")]
    assert retry.system_attrs["retry_history"] == [killed.number]
    assert retry.user_attrs["identity"] == killed.user_attrs["identity"]

    # the reports from the study alone, on "another machine" (a fresh --out)
    finished(ablate("report", "--storage", url, "--study", "kill", "--out", str(tmp_path / "r")))
    pg_rows = rows(tmp_path / "r" / "results.csv")
    assert pg_rows == {(v, s, "ok") for v, s in POINTS}

    # the same grid on the embedded storage: 2 local workers, 2 of 4 (visible) GPUs each
    emb = tmp_path / "embedded"
    local = ablate(
        *GRID,
        "--out",
        str(emb),
        "--workers",
        "2",
        "--gpus-per-trial",
        "2",
        "--",
        *TINY,
        env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"},
    )
    finished(local)
    assert rows(emb / "results.csv") == pg_rows
    embedded = optuna.load_study(study_name="ablation", storage=f"sqlite:///{emb / 'study.db'}")
    assert {t.user_attrs["gpus"] for t in embedded.get_trials()} == {"0,1", "2,3"}


def test_a_server_stopped_mid_sweep_is_named_and_a_rerun_recovers(own_postgres, tmp_path):
    """A stopped server is said plainly: no misleading "exceeding max length" error, no
    traceback per thread."""
    url, out = own_postgres.database("sweep_stop"), str(tmp_path / "w")
    study_args = ["--storage", url, "--study", "stop", "--heartbeat", "1"]
    fit = ["--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false"]
    finished(
        ablate(
            "enqueue",
            *study_args,
            *GRID[:3],
            "lif",
            "--seeds",
            "0",
            "--reference",
            "lif",
            "--",
            *fit,
        )
    )
    worker = ablate("worker", *study_args, "--workers", "1", "--out", out)
    first_child(worker)
    own_postgres.stop(remove=False)
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 1, output
    last = output.strip().splitlines()[-1]  # (before it, Optuna's heartbeat thread's traceback)
    assert last.startswith("ablate.py: error: the study's storage postgresql+psycopg://")
    assert "Connection refused" in last and "rerun the command" in last
    own_postgres.start()
    output = finished(ablate("worker", *study_args, "--out", out))
    assert "[ablate] done lif seed 0" in output or "[ablate] adopt lif seed 0" in output
    study = optuna.load_study(study_name="stop", storage=url.replace("://", "+psycopg://", 1))
    assert [t.state.name for t in study.get_trials()].count("COMPLETE") == 1
