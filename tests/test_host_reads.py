"""No host reads per step: on a GPU a tensor read back to the host (``.item()``, ``.cpu()``,
``.tolist()``, ``float(t)``, ``bool(t)``, numpy) makes the CPU wait for the device, so the shipped
callbacks and the LightningModule count on the device and read once per epoch.

Every torch call of a run goes through a ``TorchFunctionMode`` that records the host reads made
inside a per-step hook (a training, validation, test or predict step, a batch hook, the
backward and optimizer-step hooks; forward hooks run inside the steps) whose nearest frame in
the package is one of the checked files. A read made by a library on our behalf (torchmetrics
called from training/module.py) counts as ours. The one exception, documented in its class:
NonFiniteGuard reads one flag per optimizer step, to stop before a broken update is applied."""

from __future__ import annotations

import inspect
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.cli.main import CONF_DIR, cli_main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_glif"
CHECKED = (PACKAGE / "callbacks", PACKAGE / "training" / "module.py")
HOST_READS = {
    "item", "tolist", "cpu", "numpy", "__array__", "__bool__", "__float__", "__int__",
    "__index__", "__complex__", "__format__", "equal", "allclose", "is_nonzero",
}  # fmt: skip
PER_STEP = {
    "training_step", "validation_step", "test_step", "predict_step",
    "on_train_batch_start", "on_train_batch_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end", "write_on_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
}  # fmt: skip
#: The one per-step read allowed: (file, function), at most once per optimizer step.
EXCEPTION = ("lightning_glif/callbacks/finite.py", "on_before_optimizer_step")


class HostReads(TorchFunctionMode):
    """Records ``(file, function, line, what)`` for each host read made inside a per-step hook
    whose nearest frame under ``roots`` is in ``checked`` (paths: files or folders)."""

    def __init__(self, checked=CHECKED, roots=(PACKAGE,)) -> None:
        super().__init__()
        self.checked, self.roots = checked, roots
        self.reads: list[tuple[str, str, int, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        what = getattr(func, "__name__", "")
        if what in HOST_READS:
            self.record(what, inspect.currentframe().f_back)
        return func(*args, **(kwargs or {}))

    def record(self, what: str, frame) -> None:
        ours, names = None, set()
        while frame is not None:
            path = Path(frame.f_code.co_filename)
            if ours is None and any(path == r or r in path.parents for r in self.roots):
                ours = (path, frame.f_code.co_name, frame.f_lineno)
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        if ours is None or not names & PER_STEP:
            return
        path, function, line = ours
        if any(path == c or c in path.parents for c in self.checked):
            self.reads.append((str(path.relative_to(ROOT)), function, line, what))


def shipped_callbacks_at_every_step(path: Path) -> Path:
    """conf/default.yaml's callbacks with every per-step path taken in a short run: gate
    snapshots every step, every training batch counted, synaptic operations in every stage."""
    callbacks = yaml.safe_load((CONF_DIR / "default.yaml").read_text())["trainer"]["callbacks"]
    every_step = {
        "GateMonitor": {"every_n_steps": 1, "figure_every_n_epochs": 1},
        "FiringRateMonitor": {"train_every_n_batches": 1, "stages": ["train", "val", "test"]},
        "SynapticOpsMonitor": {"stages": ["train", "val", "test"]},
    }
    for callback in callbacks:
        callback.setdefault("init_args", {}).update(
            every_step.get(callback["class_path"].rsplit(".", 1)[1], {})
        )
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


@pytest.mark.slow
def test_the_shipped_callbacks_and_the_module_read_nothing_per_step(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = shipped_callbacks_at_every_step(tmp_path / "callbacks.yaml")
    small = [
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--model.backbone.init_args.channels", "[4, 8]",
    ]  # fmt: skip
    reads = HostReads()
    with reads:
        cli = cli_main(
            ["fit", "--config", str(config), *small, "--trainer.max_epochs", "2",
             "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
        )  # fmt: skip
        last = str(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
        for subcommand in ("test", "predict"):
            cli_main(
                [subcommand, "--config", str(config), *small, "--ckpt_path", last,
                 f"--trainer.limit_{subcommand}_batches", "2"]
            )  # fmt: skip
    allowed = [r for r in reads.reads if r[:2] == EXCEPTION]
    others = Counter(
        f"{path}:{line} in {function}: {what}"
        for path, function, line, what in reads.reads
        if (path, function) != EXCEPTION
    )
    listed = [f"{where} ({n} times)" for where, n in others.items()]
    assert not others, "host reads in per-step hooks:\n" + "\n".join(listed)
    assert len(allowed) == cli.trainer.global_step == 6  # the guard's one flag per step


# -- the check itself finds reads, and only per-step ones ------------------------------------------
class Reads(Callback):
    """Reads back to the host in a batch hook, a forward hook, at the epoch's end (allowed)."""

    def on_train_start(self, trainer, pl_module):
        pl_module.layer.register_forward_hook(self.forward_hook)

    @staticmethod
    def forward_hook(module, inputs, output) -> None:
        float(output.detach().sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        outputs["loss"].item()

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.layer.weight.tolist()


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_check_finds_reads_in_batch_and_forward_hooks_only():
    here = Path(__file__).resolve()
    reads = HostReads(checked=(here,), roots=(here,))
    trainer = Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Reads()],
    )  # fmt: skip
    with reads:
        trainer.fit(Tiny(), DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2))
    found = sorted({(function, what) for _, function, _, what in reads.reads})
    assert found == [("forward_hook", "__float__"), ("on_train_batch_end", "item")]
    assert len(reads.reads) == 4  # two of each: one per step
