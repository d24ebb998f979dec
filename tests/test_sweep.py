"""The sweep's parts without training: device slots from a fake GPU list, storage URLs and their
errors, the trial queue on a real embedded SQLite study (duplicates, resume, failed points, a
lost worker's row), search spaces and the command line's errors."""

from __future__ import annotations

import pytest
import yaml
from optuna.trial import TrialState

from ablate import main
from lightning_glif.sweep import devices, grid, search
from lightning_glif.sweep import trials as T
from lightning_glif.sweep.report import grid_rows
from lightning_glif.sweep.storage import StorageError, open_storage, storage_url


# -- devices -------------------------------------------------------------------------------------
def test_each_worker_gets_its_own_gpus_and_cores():
    slots = devices.slots(2, ["0", "1", "2", "3"], 2, [0, 1, 2, 3, 4, 5, 6, 7])
    assert [(s.gpus, s.cpus) for s in slots] == [(("0", "1"), (0, 1, 2, 3)),
                                                  (("2", "3"), (4, 5, 6, 7))]  # fmt: skip
    env = slots[1].env()
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["ABLATION_CPUS"] == "4,5,6,7"
    assert env["OMP_NUM_THREADS"] == env["ABLATION_THREADS"] == "4"
    # one GPU each: as many workers as GPUs by default
    assert devices.default_workers(["5", "7", "9"], 1, [0, 1]) == 3
    assert [s.gpus for s in devices.slots(3, ["5", "7", "9"], 1, [0, 1])] == [
        ("5",), ("7",), ("9",)
    ]
    # CPU only: the cores are split, more workers than cores share them round-robin
    cpu = devices.slots(3, [], 1, [0, 1])
    assert [(s.gpus, s.cpus) for s in cpu] == [((), (0,)), ((), (1,)), ((), (0,))]
    assert cpu[0].env()["CUDA_VISIBLE_DEVICES"] == ""
    assert devices.default_workers([], 1, [0, 1]) == 2 and devices.default_workers([], 1, [0]) == 1
    with pytest.raises(ValueError, match="needs 6 GPUs, but 4 are visible"):
        devices.slots(3, ["0", "1", "2", "3"], 2, [0])


def test_visible_gpus(monkeypatch):
    assert devices.visible_gpus("3, 1") == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert devices.visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.visible_gpus() == []


# -- storage -------------------------------------------------------------------------------------
def test_storage_urls_and_errors(tmp_path):
    assert storage_url(None, tmp_path / "o") == f"sqlite:///{tmp_path / 'o' / 'study.db'}"
    assert storage_url("postgres://u:p@h/db", ".") == "postgresql+psycopg://u:p@h/db"
    assert storage_url("postgresql://u@h:5/db", ".") == "postgresql+psycopg://u@h:5/db"
    with pytest.raises(StorageError, match="is not a database URL Optuna can open"):
        open_storage("nope://x")
    with pytest.raises(StorageError, match="cannot connect to --storage .*:\\*\\*\\*@127.0.0.1"):
        open_storage(storage_url("postgresql://u:secret@127.0.0.1:1/db", "."))
    with pytest.raises(StorageError, match="--heartbeat must be at least 1"):
        open_storage("sqlite://", heartbeat=0)


# -- the queue, on a real SQLite study -------------------------------------------------------------
@pytest.fixture
def study(tmp_path):
    import optuna

    storage = open_storage(storage_url(None, tmp_path), heartbeat=1, max_retries=1)
    s = optuna.create_study(storage=storage, study_name="t", direction="maximize")
    T.mark(s, T.GRID)
    return s


def points(variants=("a", "b"), seeds=(0,)):
    neurons = {v: {"class_path": "lightning_glif.neurons.LIF"} for v in variants}
    return grid.specs([], neurons, list(seeds), [], "val/acc", "max")


def test_enqueue_resumes_skips_finished_and_redoes_failed(study):
    logged = []
    assert grid.enqueue(study, points(), logged.append) == 2
    assert grid.enqueue(study, points(), logged.append) == 0  # already waiting
    assert logged == ["[ablate] queued a seed 0: waiting (trial #0)",
                      "[ablate] queued b seed 0: waiting (trial #1)"]  # fmt: skip
    # a waiting trial takes the options of the latest command (as a fresh run would)
    changed = grid.specs([], {"a": {"class_path": "x.Y"}}, [0], ["--trainer.max_epochs", "1"],
                         "val/acc", "max")  # fmt: skip
    assert grid.enqueue(study, changed, logged.append) == 0
    assert study.get_trials()[0].user_attrs["train_args"] == ["--trainer.max_epochs", "1"]
    assert study.get_trials()[0].user_attrs["neuron"] == {"class_path": "x.Y"}
    logged.clear()
    a, b = T.pop_waiting(study), T.pop_waiting(study)
    assert (a.user_attrs["variant"], b.user_attrs["variant"]) == ("a", "b")
    assert a.state == TrialState.RUNNING and T.pop_waiting(study) is None
    study._storage.set_trial_user_attr(a._trial_id, "result", {"test_acc": 0.5})
    study.tell(a.number, 0.5)
    study._storage.set_trial_user_attr(b._trial_id, "error", "Traceback\nValueError: boom")
    study.tell(b.number, state=TrialState.FAIL)
    rows, pending = grid_rows(study, [("a", 0), ("b", 0)])
    assert pending == []
    assert rows[0] == {"test_acc": 0.5, "variant": "a", "seed": 0, "status": "ok"}
    assert rows[1]["status"] == "failed" and rows[1]["error"].endswith("boom")
    logged.clear()
    assert grid.enqueue(study, points(), logged.append) == 1  # the failed point only
    assert logged == ["[ablate] skip a seed 0: finished (trial #0)"]
    assert grid_rows(study, [("b", 0)]) == ([], [("b", 0)])  # queued again: pending


def test_a_point_enqueued_twice_runs_once(study):
    """Two commands enqueueing the same grid at once: the second trial of a point is marked a
    duplicate when taken, not run, and left out of the reports."""
    for spec in points(("a",)) * 2:
        study.enqueue_trial({}, user_attrs=spec)
    first = T.pop_waiting(study)
    assert first.number == 0 and T.pop_waiting(study) is None
    dup = study.get_trials()[1]
    assert dup.state == TrialState.PRUNED and dup.system_attrs["duplicate_of"] == 0
    assert grid_rows(study) == ([], [("a", 0)])


def test_a_lost_worker_s_trial_is_retried_then_a_failed_row(study):
    import time

    from optuna.storages._heartbeat import get_heartbeat_thread

    from lightning_glif.sweep.storage import fail_stale_trials

    grid.enqueue(study, points(("a",)), lambda _: None)
    for attempt in range(2):  # max_retries=1: the original and one retry
        trial = T.pop_waiting(study)
        assert trial is not None and T.tries(trial) == attempt
        with get_heartbeat_thread(trial._trial_id, study._storage):
            pass  # one heartbeat, then the "worker" is gone
        deadline = time.monotonic() + 15  # stale after 3 x 1 s (SQLite's clock: whole seconds)
        while study.get_trials()[trial.number].state == TrialState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.5)
            fail_stale_trials(study)
    assert T.pop_waiting(study) is None  # no retry left
    rows, pending = grid_rows(study)
    assert pending == [] and rows[0]["status"] == "failed"
    assert rows[0]["error"].startswith("worker lost on 2 tries (no heartbeat for 3 s)")


def test_a_worker_killed_right_after_taking_a_trial_leaves_it_stale(study):
    """The heartbeat starts when the trial is taken: a worker that dies before its heartbeat
    thread starts still leaves a trial that goes stale and is retried (not RUNNING forever)."""
    import time

    from lightning_glif.sweep.storage import fail_stale_trials

    grid.enqueue(study, points(("a",)), lambda _: None)
    taken = T.pop_waiting(study)  # ... and the worker is gone before its heartbeat thread
    deadline = time.monotonic() + 15
    while study.get_trials()[taken.number].state == TrialState.RUNNING:
        assert time.monotonic() < deadline, "a taken trial without a heartbeat is never stale"
        time.sleep(0.5)
        fail_stale_trials(study)
    retry = T.pop_waiting(study)
    assert retry is not None and T.tries(retry) == 1


def test_an_exception_in_the_worker_fails_its_trial_and_the_worker_ends(study, tmp_path):
    """A fault of the worker itself (here: a file where the run directory must go) fails that
    trial with the traceback, instead of leaving it RUNNING for the other workers to wait on."""
    from lightning_glif.sweep import worker
    from lightning_glif.sweep.processes import Children

    grid.enqueue(study, points(("a",)), lambda _: None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("a file where the run directory of variant a should go")
    logged: list[str] = []
    (slot,) = devices.slots(1, [], 0, [0])
    worker.work(study, slot, out, Children(), logged.append, lambda t: True)  # returns
    (a,) = study.get_trials()
    assert a.state == TrialState.FAIL and a.user_attrs["error"].startswith("worker error: ")
    assert "Error" in a.user_attrs["error"] and str(out / "a") in a.user_attrs["error"]
    assert any("the worker raised" in line for line in logged)
    rows, pending = grid_rows(study)
    assert pending == [] and rows[0]["status"] == "failed"


# -- search spaces -------------------------------------------------------------------------------
def test_the_shipped_space():
    from lightning_glif.cli import CONF_DIR

    space = search.read_space(CONF_DIR / "search" / "gate_lr.yaml")
    assert space["config"] == ["experiment/delayed_row_digits.yaml"]
    d = search.distributions(space)
    assert (d["model.gate_lr_factor"].low, d["model.gate_lr_factor"].high) == (1.0, 1000.0)
    assert d["model.gate_lr_factor"].log and d["model.neuron_lr_factor"].log


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model.x": 3}, "model.x: expected a mapping"),
        ({"model.x": {"low": 1}}, "model.x: needs low and high"),
        ({"model.x": {"low": 0, "high": 1, "log": True}}, "model.x: .*log"),
        ({"model.x": {"low": 0, "high": 1, "lg": True}}, r"unknown keys \['lg'\]"),
        ({"model.x": {"choices": []}}, "choices must be a non-empty list"),
    ],
)
def test_bad_spaces_name_the_entry(tmp_path, params, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    with pytest.raises(ValueError, match=message):
        search.read_space(path)


def test_overlay_nests_dotted_options_and_restores_list_choices():
    space = {"params": {"model.backbone.init_args.hidden": {"choices": [[8, 8], [16, 16]]},
                        "model.gate_lr_factor": {"low": 1, "high": 2}}}  # fmt: skip
    chosen = search.distributions(space)["model.backbone.init_args.hidden"].choices[1]
    nested = search.overlay({"model.backbone.init_args.hidden": chosen,
                             "model.gate_lr_factor": 1.5}, space)  # fmt: skip
    assert nested == {"model": {"backbone": {"init_args": {"hidden": [16, 16]}},
                                "gate_lr_factor": 1.5}}  # fmt: skip


# -- the command line ------------------------------------------------------------------------------
def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["worker", "--out", str(tmp_path / "none")]) == 1
    assert "has no study.db (the embedded storage)" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert main(["report", "--storage", "nope://x"]) == 1
    assert "is not a database URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--workers", "0", "--out", str(tmp_path)])
    assert "--workers must be at least 1, got 0." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--gpus", "0,1", "--gpus-per-trial", "2", "--workers", "2", "--out", str(tmp_path)])
    assert "needs 4 GPUs, but 2 are visible (0,1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--space", str(tmp_path / "missing.yaml"), "--trials", "1"])
    assert "no such file (the shipped spaces: conf/search/)" in capsys.readouterr().err
    # a grid study is not a search study
    assert main(["enqueue", "--out", str(tmp_path / "g"), "--variants", "lif",
                 "--reference", "lif", "--seeds", "0"]) == 0  # fmt: skip
    from lightning_glif.cli import CONF_DIR

    space = str(CONF_DIR / "search" / "gate_lr.yaml")
    argv = ["search", "--space", space, "--trials", "1", "--out", str(tmp_path / "g")]
    assert main([*argv, "--study", "ablation"]) == 1
    assert "'ablation' is a grid study, not a search one" in capsys.readouterr().err
