"""What the observability callbacks cost on the default run (conf/default.yaml).

    python benchmarks/callback_overhead.py               # the 12-epoch default run, ~15 s on CPU
    python benchmarks/callback_overhead.py --ab 2        # + 2 alternated fits without / with
    python benchmarks/callback_overhead.py --figure-every 1 --epochs 4

Trains the default run with GateMonitor, FiringRateMonitor and SynapticOpsMonitor (as
conf/default.yaml configures them if it has them, else as proposed for it) and times, inside
the same run, every call into the monitors: their forward hooks and their callback methods
(reductions, histograms, figures). Rows: the median training step, the mean epoch (training,
validation and every epoch-end callback; a mean, so that work done every few epochs counts) and
the whole fit, each with the time spent in the monitors and the ratio with / without (without =
the same time less the monitors'). Timing inside one run is immune to a busy machine, unlike
two separate runs; it is exact on the CPU, where the hooks run synchronously. On a GPU the hooks
only launch kernels: use ``--ab N``, which also runs N fits alternately without and with the
monitors and compares them. The first epoch of each fit (warm-up) is left out of the step and
epoch rows, not of the whole-fit row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import wraps
from pathlib import Path

from pytorch_lightning import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_note, markdown_table  # noqa: E402
from lightning_glif.callbacks import (  # noqa: E402
    FiringRateMonitor,
    GateMonitor,
    SynapticOpsMonitor,
)
from lightning_glif.cli import cli_main  # noqa: E402

MONITORS = (GateMonitor, FiringRateMonitor, SynapticOpsMonitor)


class Clock:
    """Seconds spent in the wrapped methods, in total."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, monitor: Callback) -> None:
        """Time the monitor's forward hook and every callback method it overrides."""
        names = [n for n in dir(type(monitor)) if n.startswith(("on_", "setup", "teardown"))]
        names = [n for n in names if getattr(type(monitor), n) is not getattr(Callback, n, None)]
        for name in [*names, "_hook"]:
            if hasattr(monitor, name):
                setattr(monitor, name, self._timed(getattr(monitor, name)))

    def _timed(self, fn):
        @wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


class Stopwatch(Callback):
    """Wall time of every training step and epoch, and the monitors' share of each; put it
    last, so that it includes the other callbacks' hooks."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.steps: list[tuple[float, float]] = []  # (wall, in monitors)
        self.epochs: list[tuple[float, float]] = []
        self.fit = (0.0, 0.0)

    def _now(self) -> tuple[float, float]:
        return time.perf_counter(), self.clock.seconds

    def _since(self, start: tuple[float, float]) -> tuple[float, float]:
        now = self._now()
        return now[0] - start[0], now[1] - start[1]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(self._since(self._step))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = self._now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(self._since(self._epoch))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit = self._now()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit = self._since(self._fit)


def fit(
    root: str,
    monitors: bool,
    epochs: int | None,
    figure_every: int | None = None,
    figures: bool = True,
) -> tuple[Stopwatch, int, str]:
    """One default run (of ``epochs`` epochs if given): its stopwatch, steps per epoch, a device
    note. ``figure_every`` and ``figures`` override GateMonitor's."""
    args = [
        "--trainer.default_root_dir", root,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    cli = cli_main(args, run=False)
    callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, MONITORS)]
    clock = Clock()
    if monitors:
        configured = [c for c in cli.trainer.callbacks if isinstance(c, MONITORS)]
        chosen = configured or [
            GateMonitor(figure_every_n_epochs=0),  # as proposed for conf/default.yaml
            FiringRateMonitor(),
            SynapticOpsMonitor(),
        ]
        for monitor in chosen:
            if isinstance(monitor, GateMonitor):
                if figure_every is not None:
                    monitor.figure_every_n_epochs = figure_every
                monitor.figures = monitor.figures and figures
            clock.wrap(monitor)
        callbacks += chosen
    watch = Stopwatch(clock)
    cli.trainer.callbacks = [*callbacks, watch]
    cli.trainer.fit(cli.model, cli.datamodule)
    per_epoch = len(watch.steps) // len(watch.epochs)
    watch.steps, watch.epochs = watch.steps[per_epoch:], watch.epochs[1:]  # drop the warm-up
    return watch, per_epoch, machine_note(cli.trainer.strategy.root_device)


def median(pairs: list[tuple[float, float]], i: int) -> float:
    return statistics.median(p[i] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per fit (default: the config's 12)"
    )
    parser.add_argument("--ab", type=int, default=0, help="alternated fits without / with")
    parser.add_argument(
        "--figure-every", type=int, default=None, help="GateMonitor figure_every_n_epochs"
    )
    parser.add_argument("--no-figures", action="store_true", help="GateMonitor figures=False")
    args = parser.parse_args()

    options = {"figure_every": args.figure_every, "figures": not args.no_figures}
    with tempfile.TemporaryDirectory() as root:
        watch, per_epoch, note = fit(root, True, args.epochs, **options)
        step_wall = statistics.median(w for w, _ in watch.steps)
        step_in = statistics.median(m for _, m in watch.steps)
        epoch_wall = statistics.fmean(w for w, _ in watch.epochs)
        epoch_in = statistics.fmean(m for _, m in watch.epochs)
        rows = [
            ("training step (median, ms)", step_wall * 1e3, step_in * 1e3),
            (f"epoch: {per_epoch} steps + validation (mean, s)", epoch_wall, epoch_in),
            (f"whole fit, {len(watch.epochs) + 1} epochs (s)", *watch.fit),
        ]
        print("Timed inside one run with the monitors:\n")
        header = ["default run", "with monitors", "in the monitors", "without", "ratio"]
        cells = [
            [what, f"{w:.2f}", f"{m:.3f}", f"{w - m:.2f}", f"{w / (w - m):.4f}"]
            for what, w, m in rows
        ]
        print(markdown_table(header, cells))

        if args.ab:
            walls: dict[bool, dict[str, list[float]]] = {
                m: {"step": [], "epoch": [], "fit": []} for m in (False, True)
            }
            for _ in range(args.ab):
                for monitors in (False, True):
                    w, _, _ = fit(root, monitors, args.epochs, **options)
                    walls[monitors]["step"] += [s for s, _ in w.steps]
                    walls[monitors]["epoch"] += [e for e, _ in w.epochs]
                    walls[monitors]["fit"] += [w.fit[0]]
            rows = []
            for key, average, unit in (
                ("step", statistics.median, "median, ms"),
                ("epoch", statistics.fmean, "mean, s"),
                ("fit", statistics.fmean, "mean, s"),
            ):
                off, on = (average(walls[m][key]) for m in (False, True))
                scale = 1e3 if key == "step" else 1.0
                rows.append(
                    [f"{key} ({unit})", f"{off * scale:.2f}", f"{on * scale:.2f}",
                     f"{on / off:.4f}"]
                )  # fmt: skip
            print(f"\n{args.ab} alternated fits per variant (sensitive to other load):\n")
            print(markdown_table(["default run", "without", "with", "ratio"], rows))
    print(f"\nthe first epoch of each fit is left out of the step and epoch rows; {note}")


if __name__ == "__main__":
    main()
