"""Ctrl-C and SIGTERM during ``fit`` leave a resumable ``checkpoints/last.ckpt``.

What Lightning 2.6 does by itself: on SIGTERM its signal connector sets
``trainer.received_sigterm`` and the loops raise ``SIGTERMException`` (a ``SystemExit``) once the
running training or validation batch is done; on Ctrl-C, ``KeyboardInterrupt`` lands wherever the
code is (possibly between the updates of two parameter groups). Either way ``on_exception`` of
the callbacks runs, and nothing saves: the run keeps the ``last.ckpt`` of the last finished epoch.
Lightning's ``OnExceptionCheckpoint`` does not fit: it saves on every exception (a
``NonFiniteLossError`` must keep the last good ``last.ckpt``) and its ``teardown`` deletes its
file after a normal run, which here would be ``last.ckpt``; ``ModelCheckpoint(save_on_exception=
True)`` saves on every exception too.

:class:`InterruptCheckpoint` makes the first Ctrl-C stop like SIGTERM, at the end of the running
batch (a consistent state: weights, optimizer and counters of the same step); a second Ctrl-C
stops at once, Lightning's way. A stop asked for during validation waits for that validation to
end and for the epoch's checkpoints (Lightning would stop mid-validation and save a state whose
resume never validates that epoch: its ``val/acc`` lost, never offered to the best checkpoint).
On either signal it writes ``last.ckpt`` in the ModelCheckpoint's directory with
``trainer.save_checkpoint``, so through the trainer's ``CheckpointIO`` (atomic with
``AtomicCheckpointIO`` of :mod:`lightning_glif.cli.checkpoint_io`), and the process exits with the
shell's status for the signal (130 for Ctrl-C, 143 for SIGTERM; Lightning would exit 0 after
SIGTERM).

Resuming from such a mid-epoch checkpoint (``fit --ckpt_path last``): Lightning continues the
interrupted epoch, it does not restart it. The global step, the epoch number and the schedule
go on from the checkpoint, and the epoch runs only its remaining batches (``limit - done``). The
DataLoader is not resumable, so those batches come from a new pass over the data (Lightning warns
"You're resuming from a checkpoint that ended before the epoch ended"): in that one epoch some
samples are seen twice and others not at all; later epochs are as usual. Stopped during the
validation at an epoch's end, the run saves after that epoch: the resumed run starts the next
one, as an uninterrupted run would (tests/test_reliability.py compares the weights).
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
    ``ModelCheckpoint`` and exit with status 128 + the signal's number."""

    def __init__(self, filename: str = "last") -> None:
        self.filename = filename
        self._armed = False
        self._signal = signal.SIGTERM
        self._previous_sigint = None
        self._previous_sigterm = None  # Lightning's handler, which makes its loops stop
        self._validating = False
        self._deferred = False

    # -- arming: only while the training loop runs (after a resumed state is restored) -----------
    def on_train_start(self, trainer, pl_module) -> None:
        self._armed, self._signal, self._deferred = True, signal.SIGTERM, False
        if threading.current_thread() is threading.main_thread() and os.name != "nt":
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_first_ctrl_c)
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_train_end(self, trainer, pl_module) -> None:
        self._disarm()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._disarm()

    def _disarm(self) -> None:
        self._armed = False
        if signal.getsignal(signal.SIGINT) == self._on_first_ctrl_c:
            signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)

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
        # Lightning's own handler (restored, then signalled) makes its loops stop after the
        # running batch.
        signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)

    # -- a stop asked for during validation waits for its end ------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        self._validating = self._armed and not trainer.sanity_checking

    def on_validation_end(self, trainer, pl_module) -> None:
        # The checkpoints' on_validation_end runs after this one (Lightning calls them last):
        # they still save this validation; the loops stop at the next batch or the epoch's end.
        self._validating = False
        if self._deferred:
            self._deferred = False
            self._stop()

    # -- the save --------------------------------------------------------------------------------
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
        dirpath = next(
            (c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)),
            None,
        )
        if dirpath is None:
            return  # checkpointing is off
        path = os.path.join(dirpath, self.filename + ModelCheckpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        log.warning(
            "%s at global step %d (epoch %d): saved %s; resume with --ckpt_path last",
            "Ctrl-C" if self._signal == signal.SIGINT else type(exception).__name__,
            trainer.global_step,
            trainer.current_epoch,
            path,
        )
