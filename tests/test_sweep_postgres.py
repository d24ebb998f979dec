"""Sweeps on a real PostgreSQL server (tests/postgres.py) and on the embedded SQLite storage, in
real processes: two workers share a 4-trial grid, one is SIGKILLed mid-trial, its trial is
retried by the other and every grid point ends exactly once with a result; the same grid on the
embedded storage gives the same rows, and each local worker's runs saw only its own devices."""

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

from tests.cli_runs import alive, children_of

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--config", "conf/default.yaml", "--variants", "glif_soft,lif", "--seeds", "0,1"]
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip
POINTS = {(v, s) for v in ("glif_soft", "lif") for s in (0, 1)}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc"),
]


def ablate(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "ablate.py"), *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs,
    )  # fmt: skip


def rows(path: Path) -> set[tuple[str, int, str]]:
    return {(r["variant"], int(r["seed"]), r["status"]) for r in csv.DictReader(path.open())}


def test_a_killed_worker_s_trial_is_retried_and_every_point_ends_once(postgres, tmp_path):
    url = postgres.database("sweep_kill")
    study_args = ["--storage", url, "--study", "kill"]
    enqueue = ablate("enqueue", *study_args, *GRID, "--", *TINY)
    output, _ = enqueue.communicate(timeout=120)
    assert enqueue.returncode == 0, output
    assert "enqueued 4 of 4 trials in study 'kill'" in output
    # heartbeat 2 s: a trial silent for 6 s is stale
    worker = [*study_args, "--workers", "1", "--heartbeat", "2"]
    doomed = ablate("worker", *worker, "--out", str(tmp_path / "a"), start_new_session=True)
    survivor = ablate("worker", *worker[:-4], "--workers", "2", "--heartbeat", "2",
                      "--out", str(tmp_path / "b"))
    try:
        deadline = time.monotonic() + 120
        while not (kids := children_of(doomed.pid)):  # its first trial's child is running
            assert doomed.poll() is None and time.monotonic() < deadline, doomed.stdout.read()
            time.sleep(0.1)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.communicate(timeout=30)
        output, _ = survivor.communicate(timeout=400)
    finally:
        for proc in (doomed, survivor):
            if proc.poll() is None:
                proc.kill()
    assert survivor.returncode == 0, output
    for _ in range(100):  # the killed worker's child got SIGTERM from the kernel (pdeathsig)
        if not any(alive(k) for k in kids):
            break
        time.sleep(0.2)
    assert not any(alive(k) for k in kids)

    study = optuna.load_study(study_name="kill", storage=url.replace("://", "+psycopg://", 1))
    trials = study.get_trials()
    by_state: dict[str, list] = {}
    for t in trials:
        by_state.setdefault(t.state.name, []).append(t)
    assert set(by_state) == {"COMPLETE", "FAIL"}, {t.number: t.state for t in trials}
    complete = by_state["COMPLETE"]
    # every grid point exactly once with a result
    assert sorted((t.user_attrs["variant"], t.user_attrs["seed"]) for t in complete) == sorted(
        POINTS
    )
    for t in complete:
        result = t.user_attrs["result"]
        assert 0.0 <= result["test_acc"] <= 1.0 and t.value == result["test_acc"]
        assert t.user_attrs["run_dir"].startswith(str(tmp_path / "b"))  # all done by survivor
    # the killed trial: failed as stale (no error of a run), retried once, the retry complete
    (killed,) = by_state["FAIL"]
    assert "error" not in killed.user_attrs and f"pid {doomed.pid} " in killed.user_attrs["worker"]
    (retry,) = [t for t in complete if t.system_attrs.get("retry_history")]
    assert retry.system_attrs["retry_history"] == [killed.number]
    key = ("variant", "seed")
    assert [retry.user_attrs[k] for k in key] == [killed.user_attrs[k] for k in key]

    # the reports from the study alone, on "another machine" (a fresh --out)
    report = ablate("report", *study_args, "--out", str(tmp_path / "report"))
    output, _ = report.communicate(timeout=120)
    assert report.returncode == 0, output
    pg_rows = rows(tmp_path / "report" / "results.csv")
    assert pg_rows == {(v, s, "ok") for v, s in POINTS}

    # The same grid on the embedded storage, 2 local workers with 2 of 4 (fake) GPUs each.
    emb = tmp_path / "embedded"
    local = ablate(*GRID, "--out", str(emb), "--workers", "2", "--gpus", "0,1,2,3",
                   "--gpus-per-trial", "2", "--", *TINY)  # fmt: skip
    output, _ = local.communicate(timeout=400)
    assert local.returncode == 0, output
    assert rows(emb / "results.csv") == pg_rows
    embedded = optuna.load_study(study_name="ablation", storage=f"sqlite:///{emb / 'study.db'}")
    seen = {}  # worker slot -> the devices its children saw (their own environment and affinity)
    for t in embedded.get_trials():
        slot = t.user_attrs["worker"].rsplit(" ", 1)[1]
        seen.setdefault(slot, set()).add(
            (t.user_attrs["result"]["devices"]["CUDA_VISIBLE_DEVICES"],
             tuple(t.user_attrs["result"]["devices"]["cpus"]),
             t.user_attrs["result"]["devices"]["threads"])
        )  # fmt: skip
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // 2)
    expected = {
        "0": {("0,1", tuple(cpus[:share]), share)},
        "1": {("2,3", tuple(cpus[share : 2 * share] or cpus[1 % len(cpus) :][:1]), share)},
    }
    assert {s: v for s, v in seen.items()} == {s: expected[s] for s in seen}
    assert len(seen) == 2  # both workers ran trials
