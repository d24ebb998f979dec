"""The child of a sweep's trial: ``python -m lightning_glif.sweep.child RUN_DIR`` trains one run
through :func:`lightning_glif.cli.cli_main` with the arguments in ``RUN_DIR/run.json``, tests the
checkpoint selected on ``run.json``'s metric and writes ``RUN_DIR/result.json`` (atomically) when
it succeeds. Its worker (:mod:`lightning_glif.sweep.worker`) puts that result into the trial."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from lightning_glif import tags
from lightning_glif.io import write_bytes
from lightning_glif.sweep import devices

GATES = ("alpha", "beta", "gamma")


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every TensorBoard event file under ``run_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for events in sorted(Path(run_dir).rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] += [(e.step, e.value) for e in acc.Scalars(tag)]
    return dict(scalars)


# -- child: one variant, one seed ----------------------------------------------------------------
def run_one(run_dir: Path) -> dict[str, Any]:
    """Train (``fit``) with ``run.json``'s arguments, test the checkpoint that is best on
    ``run.json``'s ``monitor`` and ``mode``, return and write ``result.json``.

    The child adds its own callbacks and reads its figures from them, whatever the configs hold:
    a checkpoint on the selection metric (in ``RUN_DIR/selected/``) and a firing-rate monitor
    of the test stage (the rate reported is the test split's at the selected checkpoint, like
    the accuracy). The synaptic operations, the energy and the gates are read back from the
    run's event files (the configs' ``SynapticOpsMonitor`` and ``GateMonitor``).
    """
    from lightning_glif.callbacks import FiringRateMonitor
    from lightning_glif.cli import cli_main

    spec = json.loads((run_dir / "run.json").read_text())
    devices.apply_in_child()
    selected = _selection_checkpoint(run_dir / "selected", spec["monitor"], spec["mode"])
    firing = FiringRateMonitor(stages=("test",), histograms=False)
    start = time.perf_counter()
    cli = cli_main(["fit", *spec["args"]], callbacks=[selected, firing])
    trainer = cli.trainer
    # Before the test run, which starts its metrics afresh.
    val_acc_best = trainer.callback_metrics.get(tags.best("val", "acc"))
    if not selected.best_model_path:
        raise RuntimeError(
            f"no checkpoint was selected on {spec['monitor']!r}: the fit never logged it. Check "
            "the ablation's --monitor against the metrics the model logs, and that validation "
            "runs (trainer.limit_val_batches > 0)."
        )
    tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=selected.best_model_path)
    wall = time.perf_counter() - start
    trainer.logger.finalize("success")  # flush the events before reading them back

    scalars = read_scalars(run_dir)

    def last(tag: str) -> float | None:
        return scalars[tag][-1][1] if tag in scalars else None

    result: dict[str, Any] = {
        "variant": spec.get("variant"),
        "seed": spec["seed"],
        "status": "ok",
        "val_acc_best": None if val_acc_best is None else float(val_acc_best),
        "test_acc": float(tested[0][tags.metric("test", "acc")]),
        "firing_rate": firing.last.get("test", {}).get(tags.firing("test")),
        "synops_ac": last(tags.synops("test", "ac")),
        "energy_uJ": last(tags.energy("test")),
        "wall_s": wall,
        "selected_on": spec["monitor"],
        "selected_score": float(selected.best_model_score),
        "best_ckpt": str(Path(selected.best_model_path).relative_to(run_dir)),
        "devices": devices.seen_by_child(),
    }
    gate_layers = tags.layers(scalars, "gates")
    for g in GATES:  # final value of each layer's mean gate, averaged over the layers
        means = [last(tags.observable("gates", layer, g, "mean")) for layer in gate_layers]
        means = [m for m in means if m is not None]
        result[f"{g}_mean"] = mean(means) if means else None
    write_bytes(run_dir / "result.json", json.dumps(result, indent=2).encode())
    return result


def _selection_checkpoint(dirpath: Path, monitor: str, mode: str):
    """A ``ModelCheckpoint`` keeping the best epoch on ``monitor``, under a class of its own:
    Lightning refuses two stateful callbacks with one state key, and ``ModelCheckpoint``'s is its
    class name with the monitor and mode, which a config's checkpoint on the same metric shares."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class SelectionCheckpoint(ModelCheckpoint):
        pass

    return SelectionCheckpoint(dirpath=dirpath, monitor=monitor, mode=mode, save_top_k=1)


def end_with_parent(parent: int) -> None:
    """Linux: have the kernel send this child SIGTERM when ``parent`` (ablate.py) dies, also by
    SIGKILL, when it cannot forward a signal (``prctl(PR_SET_PDEATHSIG)``; the standard library
    does not wrap it, hence ctypes). SIGTERM then stops the run as a forwarded one would
    (InterruptCheckpoint: last.ckpt, no result.json, so a rerun redoes it). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":  # python -m lightning_glif.sweep.child RUN_DIR
    end_with_parent(int(os.environ.get("ABLATION_PARENT", os.getppid())))
    run_one(Path(sys.argv[1]))
