"""What the shipped callbacks, logger and checkpoints cost on a whole run, as a user runs it.

    python benchmarks/loop_overhead.py --rounds 5                        # the default run
    python benchmarks/loop_overhead.py --config conf/experiment/row_digits.yaml --rounds 5

The goal: ``train.py fit`` as shipped (every monitor, the guard, both checkpoints, the
learning-rate monitor, TensorBoard: every tag written) costs at most 1.2x the same fit with
``--trainer.callbacks []``, ``--trainer.logger false`` and ``--trainer.enable_checkpointing
false``, on the default run and on row digits. That fit is the baseline: Lightning's own loop is
what a Lightning template lives with; what the CLI always adds (RunState, InterruptCheckpoint,
...) is in both. A third column, for information, is the same run as a plain PyTorch loop over
the DataModule's loaders with the module's own ``configure_optimizers`` (train steps, scheduler
step per epoch, a validation pass per epoch; no Trainer, no logging, no checkpoints).

The three run interleaved round by round in one session, in a rotated order (round ``i`` starts
with the ``i mod 3``-th, :func:`benchmarks.common.rotated_rounds`), so that a busy phase of a
shared machine hits all three alike; the progress bar is off in both fits. Printed: the median
wall time of each, its ratio to the baseline's median, and the paired ratio: the geometric mean
over the rounds of its time over that round's baseline, with a 95% Student-t interval of the log
ratios (:func:`benchmarks.common.paired_ratio_cell`). The goal is met where the interval's upper
end is at most 1.2x. The model and data are built by the CLI from the same config for all three,
with the same seed. Which callback hook takes what: ``python train.py fit --trainer.profiler
simple`` (Lightning's profiler times every hook of every callback).
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
from lightning_glif.cli.main import cli_main  # noqa: E402

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
BASELINE = "fit, no callbacks/logger/checkpoints"
GOAL = 1.2


def cli_args(configs: list[str], root: str, *extra: str) -> list[str]:
    stack = [arg for config in configs for arg in ("--config", config)]
    return [*stack, "--trainer.default_root_dir", root, *QUIET, *extra]


def bare_loop(configs: list[str], root: str) -> float:
    """The run as a plain PyTorch loop; its wall time, from parsing the config (as for the fits:
    the whole command but Python's start and imports)."""
    start = time.perf_counter()
    cli = cli_main(cli_args(configs, root), run=False)
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


def fit(configs: list[str], root: str, shipped: bool) -> float:
    extra = [] if shipped else [
        "--trainer.callbacks", "[]",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    cli_main(["fit", *cli_args(configs, root, *extra)])
    return time.perf_counter() - start


def in_a_fresh_root(way, configs: list[str], *more) -> float:
    """``way(configs, root, *more)`` with a new temporary ``root``, removed after."""
    with tempfile.TemporaryDirectory() as root:
        return way(configs, root, *more)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="experiment config (default run if unset)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--max_epochs", type=int, default=None, help="fewer epochs than the config (a quick try)"
    )
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # LightningCLI reads sys.argv when given no args
    configs = [args.config] if args.config else []
    if args.max_epochs is not None:  # a config of its own, read after the user's
        overlay = Path(tempfile.mkdtemp()) / "epochs.yaml"
        overlay.write_text(f"trainer:\n  max_epochs: {args.max_epochs}\n")
        configs.append(str(overlay))
    ways = {
        "fit, shipped defaults": lambda: in_a_fresh_root(fit, configs, True),
        BASELINE: lambda: in_a_fresh_root(fit, configs, False),
        "bare PyTorch loop (information)": lambda: in_a_fresh_root(bare_loop, configs),
    }
    times = rotated_rounds(ways, args.rounds)
    baseline = times[BASELINE]
    base = statistics.median(baseline)
    rows = []
    for name, t in times.items():
        # The ratio within each round too: a round shares one phase of a shared machine.
        rows.append([name, f"{statistics.median(t):.2f}", f"{statistics.median(t) / base:.2f}x",
                     paired_ratio_cell(t, baseline), " ".join(f"{v:.1f}" for v in t)])  # fmt: skip
    print(f"# {args.config or 'conf/default.yaml'}, {args.rounds} interleaved rounds")
    print(f"# {machine_note(torch.device('cpu'))}; goal: shipped <= {GOAL}x the baseline")
    header = ["run", "median s", "vs baseline (medians)", "vs baseline per round [95% CI]"]
    print(markdown_table([*header, "each round (s)"], rows))


if __name__ == "__main__":
    main()
