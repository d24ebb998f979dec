"""Ctrl-C and SIGTERM during ``fit`` leave a resumable ``checkpoints/last.ckpt`` (what the user
sees: docs/reliability.md).

Lightning alone, on SIGTERM, stops after the running batch and saves nothing; Ctrl-C raises
``KeyboardInterrupt`` wherever the code is (possibly between two parameter groups' updates).
Its ``OnExceptionCheckpoint`` and ``ModelCheckpoint(save_on_exception=True)`` save on every
exception (a ``NonFiniteLossError`` must keep the last good ``last.ckpt``), and the former
deletes its file after a normal run.

:class:`InterruptCheckpoint` makes the first Ctrl-C a SIGTERM, so the run stops at the end of a
batch in a consistent state; a second Ctrl-C stops at once. A stop during validation waits for
its end and the epoch's checkpoints, so the resumed run starts the next epoch as an
uninterrupted one would (tests/test_reliability.py compares the weights). A stop mid-epoch
resumes that epoch's remaining batches from a new pass over the data.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """On Ctrl-C (SIGINT) or SIGTERM during training, save ``<dirpath>/last.ckpt`` of the first
    ``ModelCheckpoint`` with ``trainer.save_checkpoint`` (atomic through the CLI's CheckpointIO)
    and exit with status 128 + the signal's number (130, 143; Lightning would exit 0)."""

    def __init__(self) -> None:
        self._armed = False
        self._signal = signal.SIGTERM
        self._previous_sigint = None
        self._previous_sigterm = None  # Lightning's handler, which makes its loops stop
        self._validating = False
        self._deferred = False

    def on_train_start(self, trainer, pl_module) -> None:
        # Armed while the training loop runs (after a resumed state is restored).
        self._armed, self._signal, self._deferred = True, signal.SIGTERM, False
        if threading.current_thread() is threading.main_thread() and os.name != "nt":
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_first_ctrl_c)
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _disarm(self) -> None:
        self._armed = False
        if signal.getsignal(signal.SIGINT) == self._on_first_ctrl_c:
            signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)

    def on_train_end(self, trainer, pl_module) -> None:
        self._disarm()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._disarm()

    def _on_first_ctrl_c(self, signum, frame) -> None:
        # Handled as SIGTERM; the next Ctrl-C raises KeyboardInterrupt as usual.
        signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        self._signal = signal.SIGINT
        signal.raise_signal(signal.SIGTERM)

    def _on_sigterm(self, signum, frame) -> None:
        name = "Ctrl-C" if self._signal == signal.SIGINT else "SIGTERM"
        again = " (Ctrl-C again: now)" if self._signal == signal.SIGINT else ""
        if self._validating:
            self._deferred = True
            log.warning("%s: stopping after this validation, saving last.ckpt%s", name, again)
            return
        log.warning("%s: stopping after this batch, saving last.ckpt%s", name, again)
        self._stop()

    def _stop(self) -> None:
        # Lightning's own handler, restored and signalled, stops its loops after the batch.
        signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validating = self._armed and not trainer.sanity_checking

    def on_validation_end(self, trainer, pl_module) -> None:
        # The checkpoints' on_validation_end runs after this one (Lightning calls them last):
        # they still save this validation; the loops stop at the next batch or the epoch's end.
        self._validating = False
        if self._deferred:
            self._deferred = False
            self._stop()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        armed = self._armed
        self._validating = False
        self._disarm()  # from here Ctrl-C is Python's again (after a KeyboardInterrupt: ignored)
        if isinstance(exception, SIGTERMException):
            # The status a shell gives a process stopped by the signal (SIGTERMException is the
            # SystemExit that Lightning re-raises after the callbacks).
            exception.code = 128 + int(self._signal)
        if not (interrupted and armed):
            return  # another error, or before training: keep the last.ckpt there is
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size > 1:
            return  # a second Ctrl-C under DDP: the ranks stopped anywhere, a barrier could hang
        dirs = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        if not dirs:
            return  # checkpointing is off
        path = os.path.join(dirs[0], "last" + ModelCheckpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        log.warning(
            "%s at global step %d (epoch %d): saved %s; resume with --ckpt_path last",
            "Ctrl-C" if self._signal == signal.SIGINT else type(exception).__name__,
            trainer.global_step,
            trainer.current_epoch,
            path,
        )
