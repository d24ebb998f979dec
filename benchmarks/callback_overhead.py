"""What each callback, forward hook and logger call costs in a whole shipped run.

    python benchmarks/callback_overhead.py --config conf/experiment/row_digits.yaml --rounds 5
    python benchmarks/callback_overhead.py                       # the default run

Each round runs the bare PyTorch loop of ``benchmarks/loop_overhead.py`` and ``train.py fit``
with the config as shipped (every callback, the logger and the checkpoints), in a rotated order
(:func:`benchmarks.common.rotated_rounds`). Inside the fit, every hook a callback overrides, the
monitors' forward hooks (``_hook``) and the loggers' methods are timed: wall time spent inside
them, summed over the run. The fit runs through the CLI as a user runs it; only ``Trainer.fit``
is wrapped, to add the timers to the trainer the CLI built before it starts.

Printed, medians over the rounds: seconds per run of each part and its share of the same round's
bare loop (the median of the per-round ratios), by callback and by hook; the sum of the timed
parts; and the rest of ``fit - bare``: Lightning's own loop (fetcher, hook dispatch, optimizer
closure, validation loops) and everything not inside a timed call. ``loop_overhead.py`` gives
the same ``fit - bare`` split the other way (a fit without callbacks); this script says which
parts of the callbacks' share are where. A timer adds two clock reads and two counter updates
to each call (about 21,000 calls in a shipped row-digits run). TensorBoard's writer thread runs
beside the loop and is not in any row. On a GPU the timers see only what a call does before it
returns, not the kernels it launches: there ``loop_overhead.py``'s whole-run ratios are the
figure to use.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import torch
from pytorch_lightning import Callback, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_note, markdown_table, rotated_rounds  # noqa: E402
from benchmarks.loop_overhead import _args, bare_loop, in_a_fresh_root  # noqa: E402
from lightning_glif.cli import cli_main  # noqa: E402

LOGGER_METHODS = ("log_metrics", "log_hyperparams", "save", "finalize")


class Clock:
    """Seconds and calls per ``(owner, method)`` of the wrapped methods."""

    def __init__(self) -> None:
        self.seconds: Counter[tuple[str, str]] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()

    def wrap(self, obj: object, name: str, owner: str, label: str | None = None) -> None:
        fn = getattr(obj, name)
        key = (owner, label or name)

        @wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1

        setattr(obj, name, timed)

    def instrument(self, trainer: Trainer) -> None:
        """Time every hook each callback overrides (those still dispatched: not ``None`` on the
        instance), the monitors' forward hooks, and the loggers' methods."""
        hooks = [n for n in dir(Callback) if n.startswith(("on_", "setup", "teardown"))]
        for callback in trainer.callbacks:
            owner = type(callback).__name__
            for name in hooks:
                overridden = getattr(type(callback), name, None) is not getattr(Callback, name)
                if overridden and callable(getattr(callback, name, None)):
                    self.wrap(callback, name, owner)
            if callable(getattr(callback, "_hook", None)):  # registered at fit start
                self.wrap(callback, "_hook", owner, "forward hook")
        for logger in trainer.loggers:
            for name in LOGGER_METHODS:
                self.wrap(logger, name, type(logger).__name__)


@contextmanager
def timed_fits(clock: Clock) -> Iterator[None]:
    """``Trainer.fit`` instruments its trainer before it runs."""
    fit = Trainer.fit

    def instrumented(trainer: Trainer, *args, **kwargs):
        clock.instrument(trainer)
        return fit(trainer, *args, **kwargs)

    Trainer.fit = instrumented
    try:
        yield
    finally:
        Trainer.fit = fit


def shipped_fit(config: str | None, root: str, clocks: list[Clock]) -> float:
    clock = Clock()
    clocks.append(clock)
    start = time.perf_counter()
    with timed_fits(clock):
        cli_main(["fit", *_args(config, root)])
    return time.perf_counter() - start


def share(values: list[float], bare: list[float]) -> float:
    """The median over the rounds of each round's value over that round's bare loop."""
    return statistics.median(v / b for v, b in zip(values, bare, strict=True))


def rows(
    clocks: list[Clock], bare: list[float], key: Callable[[tuple[str, str]], str]
) -> list[tuple[str, float, float, float]]:
    """``(name, median calls, median s, share of bare)`` per ``key`` of the timed parts,
    the largest first."""
    seconds, calls = [Counter() for _ in clocks], [Counter() for _ in clocks]
    for clock, s, n in zip(clocks, seconds, calls, strict=True):
        for k in clock.seconds:
            s[key(k)] += clock.seconds[k]
            n[key(k)] += clock.calls[k]
    out = []
    for name in set().union(*seconds):
        secs = [s[name] for s in seconds]
        out.append((name, statistics.median(n[name] for n in calls), statistics.median(secs),
                    share(secs, bare)))  # fmt: skip
    return sorted(out, key=lambda r: -r[2])


def table(named: list[tuple[str, float, float, float]], first: str) -> str:
    cells = [[n, f"{c:.0f}", f"{s:.3f}", f"{x:.3f}x"] for n, c, s, x in named]
    return markdown_table([first, "calls per run", "s per run", "vs bare loop"], cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="experiment config (default run if unset)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--top", type=int, default=15, help="hooks listed in the second table")
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # LightningCLI reads sys.argv when given no args
    clocks: list[Clock] = []
    times = rotated_rounds(
        {
            "bare": lambda: in_a_fresh_root(bare_loop, args.config),
            "fit": lambda: in_a_fresh_root(shipped_fit, args.config, clocks),
        },
        args.rounds,
    )
    bare, fit = times["bare"], times["fit"]
    timed = [sum(c.seconds.values()) for c in clocks]
    rest = [f - b - t for f, b, t in zip(fit, bare, timed, strict=True)]

    def line(name: str, values: list[float]) -> list[str]:
        return [name, f"{statistics.median(values):.3f}", f"{share(values, bare):.3f}x"]

    print(f"# {args.config or 'conf/default.yaml'}, {args.rounds} rounds, medians")
    print(f"# {machine_note(torch.device('cpu'))}")
    header = ["run", "s per run", "vs bare loop (per round)"]
    summary = [
        line("bare PyTorch loop", bare),
        line("train.py fit, shipped", fit),
        line("  timed: callbacks' hooks, forward hooks, loggers", timed),
        line("  the rest: Lightning's loop, dispatch, untimed work", rest),
    ]
    print(markdown_table(header, summary))
    print()
    print(table(rows(clocks, bare, key=lambda k: k[0]), "callback or logger"))
    print()
    print(table(rows(clocks, bare, key=lambda k: f"{k[0]}.{k[1]}")[: args.top], "hook"))


if __name__ == "__main__":
    main()
