"""The CLI's default profiler: Lightning's pass-through one without a context manager per call."""

from __future__ import annotations

import tempfile

import pytest
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.profilers import PassThroughProfiler, SimpleProfiler

from lightning_glif.cli import cli_main
from lightning_glif.profiling import NoOpProfiler, with_no_op_profiler


def test_the_cli_swaps_only_lightnings_default_profiler():
    default = cli_main(["--trainer.logger", "false"], run=False).trainer
    assert type(default.profiler) is NoOpProfiler
    chosen = cli_main(["--trainer.logger", "false", "--trainer.profiler", "simple"], run=False)
    assert type(chosen.trainer.profiler) is SimpleProfiler  # the user's choice is kept


def test_its_profile_is_one_shared_context_that_lets_errors_through():
    profiler = NoOpProfiler()
    first, second = profiler.profile("[Callback]a.on_train_batch_start"), profiler.profile("b")
    assert first is second
    with first as value:
        assert value is None
    with pytest.raises(KeyError, match="inside"), profiler.profile("c"):  # not swallowed
        raise KeyError("inside")


class Count(Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1


def test_a_fit_with_it_calls_every_hook():
    """Two epochs of 3 batches through the CLI: each batch's hook ran, as with Lightning's own."""
    count = Count()
    with tempfile.TemporaryDirectory() as root:
        cli = cli_main(
            ["fit", "--trainer.default_root_dir", root, "--trainer.max_epochs", "2",
             "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
             "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
             "--model.backbone.init_args.channels", "[4, 8]"],
            callbacks=[count],
        )  # fmt: skip
    assert type(cli.trainer.profiler) is NoOpProfiler
    assert count.steps == 6 and cli.trainer.global_step == 6


def test_a_trainer_built_by_hand_gets_it_only_in_place_of_the_default():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert type(trainer.profiler) is PassThroughProfiler
    assert type(with_no_op_profiler(trainer).profiler) is NoOpProfiler
    simple = Trainer(logger=False, enable_progress_bar=False, profiler="simple")
    assert type(with_no_op_profiler(simple).profiler) is SimpleProfiler
