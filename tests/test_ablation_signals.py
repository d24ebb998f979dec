"""ablate.py as a user runs it, in real processes: Ctrl-C (SIGINT to its process group, as a
terminal sends it) or a SIGTERM to ablate.py alone ends its children, and a rerun redoes the
interrupted runs (after a SIGTERM, once their trials' heartbeat is stale); a second ablate.py
on the same --out takes the trial the first left waiting."""

from __future__ import annotations

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
# Long enough to be stopped mid-run, short enough for the rerun of the same runs to finish; the
# progress bar says when an epoch starts. A rerun redoes the same runs: the same arguments.
FIT = ["--trainer.max_epochs", "8", "--trainer.limit_val_batches", "2"]
LONG = ["--trainer.max_epochs", "300"]  # stopped in any case

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]


def ablate(out: Path, fit: list[str], *options: str) -> subprocess.Popen:
    """``ablate.py`` on glif_soft and lif, seed 0, in a session of its own (a terminal's)."""
    command = [sys.executable, str(ROOT / "ablate.py"), "--config", "conf/default.yaml"]
    command += ["--variants", "glif_soft,lif", "--seeds", "0", "--out", str(out), *options]
    return subprocess.Popen(
        [*command, "--", *fit],
        cwd=ROOT,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def training(proc: subprocess.Popen, out: Path, variants=("glif_soft", "lif")) -> list[int]:
    """Wait until a child trains each of ``variants`` (an epoch in its train.log); their pids."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        logs = [log for v in variants for log in (out / v).glob("*/train.log")]
        if len(logs) == len(variants) and all("Epoch 1" in log.read_text() for log in logs):
            if len(pids := children_of(proc.pid)) == len(variants):
                return pids
        time.sleep(0.3)
    raise AssertionError("the children did not start training")


def gone(pids: list[int], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(alive(p) for p in pids)


def test_ctrl_c_ends_the_children_and_a_rerun_redoes_them(tmp_path):
    out = tmp_path / "out"
    proc = ablate(out, FIT)
    pids = training(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert gone(pids) and "interrupted: the runs stopped keep no result" in output
    assert not list(out.rglob("result.json")) and not (out / "results.csv").exists()
    assert len(list(out.rglob("last.ckpt"))) == 2  # each run saved where it stopped
    rerun = ablate(out, FIT)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "[ablate] run glif_soft seed 0" in output and "[ablate] run lif seed 0" in output


def test_sigterm_ends_the_children_and_a_rerun_retries_them_once_stale(tmp_path):
    out = tmp_path / "out"
    proc = ablate(out, FIT)
    pids = training(proc, out)
    os.kill(proc.pid, signal.SIGTERM)  # ablate.py alone, as `kill` or a scheduler sends it
    proc.communicate(timeout=60)
    assert gone(pids), "a child trains on without its worker"
    assert not list(out.rglob("result.json"))
    rerun = ablate(out, FIT, "--heartbeat", "1")  # the killed trials are stale after 3 s
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    for variant in ("glif_soft", "lif"):
        assert f"[ablate] queued {variant} seed 0: waiting or running" in output
    study = optuna.load_study(study_name="ablation", storage=f"sqlite:///{out / 'study.db'}")
    states = sorted((t.user_attrs["variant"], t.state.name) for t in study.trials)
    assert states == [
        ("glif_soft", "COMPLETE"),
        ("glif_soft", "FAIL"),
        ("lif", "COMPLETE"),
        ("lif", "FAIL"),
    ]


def test_a_second_ablation_on_the_same_out_takes_what_the_first_left(tmp_path):
    out, one = tmp_path / "out", ("--workers", "1")
    first = ablate(out, LONG, *one)
    second = None
    try:
        (pid_first,) = training(first, out, ["glif_soft"])
        second = ablate(out, LONG, *one)
        (pid_second,) = training(second, out, ["lif"])
        assert first.poll() is None and alive(pid_first) and alive(pid_second)
    finally:
        for proc in (first, second):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGINT)
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert "[ablate] run glif_soft seed 0" in out_first and "run lif" not in out_first
    assert "[ablate] queued glif_soft seed 0: waiting or running" in out_second
    assert "[ablate] run lif seed 0" in out_second and "run glif_soft" not in out_second
