"""Lightning's cost per hook call taken off: the CLI's default profiler (Lightning's pass-through
one without a context manager per call) and the callbacks' empty per-batch hooks never called."""

from __future__ import annotations

import tempfile
from datetime import timedelta

import pytest
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.profilers import PassThroughProfiler, SimpleProfiler

from lightning_glif.callbacks import LastCheckpoint
from lightning_glif.cli import cli_main
from lightning_glif.profiling import (
    BATCH_HOOKS,
    NoOpProfiler,
    skip_empty_batch_hooks,
    with_no_op_profiler,
)


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
        self.epochs = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs += 1


class CountBackward(Count):
    """Defines one more per-batch hook than its base; inherits ``on_train_batch_end``."""

    def __init__(self):
        super().__init__()
        self.backwards = 0

    def on_before_backward(self, trainer, pl_module, loss):
        self.backwards += 1


def test_a_fit_with_it_calls_every_hook():
    """Two epochs of 3 batches through the CLI: each batch's hook ran, as with Lightning's own."""
    count, backward = Count(), CountBackward()
    with tempfile.TemporaryDirectory() as root:
        cli = cli_main(
            ["fit", "--trainer.default_root_dir", root, "--trainer.max_epochs", "2",
             "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
             "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
             "--model.backbone.init_args.channels", "[4, 8]"],
            callbacks=[count, backward],
        )  # fmt: skip
    assert type(cli.trainer.profiler) is NoOpProfiler
    assert count.steps == 6 and cli.trainer.global_step == 6 and count.epochs == 2
    assert backward.steps == backward.backwards == 6 and backward.epochs == 2
    # The empty per-batch hooks were set aside (never called), the defined ones kept.
    assert count.on_before_backward is None and count.on_validation_batch_end is None
    assert backward.on_before_backward.__func__ is CountBackward.on_before_backward
    assert count.on_train_batch_end.__func__ is Count.on_train_batch_end


def test_only_the_empty_per_batch_hooks_are_set_aside():
    """A hook is set to None only where the callback's class inherits it from Callback: a
    Lightning callback's own hooks and every once-per-epoch or stage hook are kept."""
    plain, checkpoint = Callback(), ModelCheckpoint(every_n_train_steps=5)
    timed = ModelCheckpoint(train_time_interval=timedelta(minutes=5))
    per_epoch, last = ModelCheckpoint(monitor="val/acc", mode="max"), LastCheckpoint()
    callbacks = [plain, checkpoint, timed, per_epoch, last]
    trainer = Trainer(logger=False, enable_progress_bar=False, callbacks=callbacks)
    skip_empty_batch_hooks(trainer)
    assert all(getattr(plain, name) is None for name in BATCH_HOOKS)
    assert plain.on_train_epoch_end.__func__ is Callback.on_train_epoch_end  # per epoch: kept
    assert plain.on_save_checkpoint.__func__ is Callback.on_save_checkpoint  # called directly
    for saves_per_step in (checkpoint, timed):
        kept = {n for n in BATCH_HOOKS if getattr(saves_per_step, n) is not None}
        assert kept == {"on_train_batch_end"}  # the one ModelCheckpoint defines, used here
    # per epoch only: ModelCheckpoint's batch hook returns at once, so it is set aside too
    for per_epoch_only in (per_epoch, last):
        assert all(getattr(per_epoch_only, name) is None for name in BATCH_HOOKS)
        assert per_epoch_only.on_train_epoch_end is not None
    assert Callback().on_train_batch_end.__func__ is Callback.on_train_batch_end  # class untouched


def test_a_trainer_built_by_hand_gets_it_only_in_place_of_the_default():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert type(trainer.profiler) is PassThroughProfiler
    assert type(with_no_op_profiler(trainer).profiler) is NoOpProfiler
    simple = Trainer(logger=False, enable_progress_bar=False, profiler="simple")
    assert type(with_no_op_profiler(simple).profiler) is SimpleProfiler
