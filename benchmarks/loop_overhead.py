"""What the training framework costs on a whole embedded run, as a user runs it.

    python benchmarks/loop_overhead.py                                   # the default run
    python benchmarks/loop_overhead.py --config conf/experiment/row_digits.yaml --rounds 3

The same run (model, data, optimizer, schedule, epochs, validation every epoch) three ways,
interleaved round by round in one process session so that a busy phase of a shared machine hits
all three alike:

- ``bare``: a plain PyTorch loop over the DataModule's loaders with the module's own
  ``configure_optimizers`` (train steps, scheduler step per epoch, a validation pass per epoch);
  no Lightning Trainer, no logging, no checkpoints;
- ``fit, no callbacks``: ``train.py fit`` with ``--trainer.callbacks []``, no logger, no
  checkpointing (what the CLI always adds stays: RunState, InterruptCheckpoint, ...);
- ``fit, shipped``: ``train.py fit`` with the config as shipped: every monitor, the guard, both
  checkpoints, the learning-rate monitor, TensorBoard.

The progress bar is off in both fits (this script's output is not a terminal). Each round runs the
three in a rotated order (round ``i`` starts with the ``i mod 3``-th way,
:func:`benchmarks.common.rotated_rounds`), so no way always runs first or after the same one.
Printed: the median wall time of each over the rounds, its ratio to ``bare``'s median, and the
paired ratio: the geometric mean over the rounds of its time over that round's ``bare``, with a 95%
Student-t interval (of the log ratios, :func:`lightning_glif.stats.paired_ratio`). On a machine
whose speed drifts between phases the paired figure is the steadier one, and its interval says what
the rounds can resolve: a goal is met only where the interval's upper end is within it. The model
and data are built by the CLI from the same config for all three, with the same seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    machine_note,
    markdown_table,
    paired_ratio_cell,
    rotated_rounds,
)
from lightning_glif.cli import cli_main  # noqa: E402

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _args(config: str | None, root: str, *extra: str) -> list[str]:
    stack = ["--config", config] if config else []
    return [*stack, "--trainer.default_root_dir", root, *QUIET, *extra]


def bare_loop(config: str | None, root: str) -> float:
    """The run as a plain PyTorch loop; its wall time, from parsing the config (as for the fits:
    the whole command but Python's start and imports)."""
    start = time.perf_counter()
    cli = cli_main(_args(config, root), run=False)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    data.setup("fit")
    model.trainer = trainer  # configure_optimizers reads max_epochs from it
    conf = model.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    train, val = data.train_dataloader(), data.val_dataloader()
    for _ in range(trainer.max_epochs):
        model.train()
        for x, y in train:
            loss = model.loss(model.per_step_logits(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += (model(x).argmax(1) == y).sum().item()
    return time.perf_counter() - start


def fit(config: str | None, root: str, shipped: bool) -> float:
    extra = [] if shipped else [
        "--trainer.callbacks", "[]",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    cli_main(["fit", *_args(config, root, *extra)])
    return time.perf_counter() - start


def in_a_fresh_root(way, config: str | None, *more) -> float:
    """``way(config, root, *more)`` with a new temporary ``root``, removed after."""
    with tempfile.TemporaryDirectory() as root:
        return way(config, root, *more)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="experiment config (default run if unset)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # LightningCLI reads sys.argv when given no args
    ways = {
        "bare PyTorch loop": lambda: in_a_fresh_root(bare_loop, args.config),
        "fit, no callbacks/logger/checkpoints": lambda: in_a_fresh_root(fit, args.config, False),
        "fit, shipped defaults": lambda: in_a_fresh_root(fit, args.config, True),
    }
    times = rotated_rounds(ways, args.rounds)
    bare = times["bare PyTorch loop"]
    base = statistics.median(bare)
    rows = []
    for name, t in times.items():
        # The ratio within each round too: a round shares one phase of a shared machine.
        rows.append([name, f"{statistics.median(t):.2f}", f"{statistics.median(t) / base:.2f}x",
                     paired_ratio_cell(t, bare), " ".join(f"{v:.1f}" for v in t)])  # fmt: skip
    print(f"# {args.config or 'conf/default.yaml'}, {args.rounds} interleaved rounds")
    print(f"# {machine_note(torch.device('cpu'))}")
    header = ["run", "median s", "vs bare (medians)", "vs bare per round (geo. mean [95% CI])"]
    header.append("each round (s)")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
