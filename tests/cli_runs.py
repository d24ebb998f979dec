"""Shared helpers of the tests that run the CLI: the repository root, quiet trainer options and
the default run made small."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: PYTHONPATH of a child process that imports a test module (a callback given by class path):
#: the repository (``tests.test_x``) and ``tests/`` itself (this module, as pytest imports it).
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
#: One tiny epoch (2 training batches, 1 validation and 1 test batch): a sweep test's fit runs.
ONE_EPOCH = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
             "--trainer.enable_progress_bar", "false"]  # fmt: skip


def small_args(root, epochs: int = 2, batches: int = 4) -> list[str]:
    """The default run, small: ``epochs`` epochs of ``batches`` batches, narrow layers."""
    return [
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", str(batches),
        "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0",
        "--model.backbone.init_args.channels", "[8, 16]",
        *QUIET,
    ]  # fmt: skip


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc/<pid>/status's PPid)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue  # exited meanwhile
        if int(fields.get("PPid", "0")) == pid and not fields["State"].startswith("Z"):
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (exists and is no zombie)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1]
    except (OSError, IndexError):
        return False
    return not state.startswith("Z")


def fit_small(root: Path) -> Path:
    """``root`` after the default config made small trained 2 epochs of 2 steps, in process, as
    ``train.py fit`` (a finished run: its checkpoints/ holds last.ckpt and the best epoch)."""
    from lightning_glif.cli.main import cli_main

    argv, sys.argv = sys.argv, ["train.py"]
    try:
        cli_main(["fit", *small_args(root, epochs=2, batches=2)])
    finally:
        sys.argv = argv
    return root
