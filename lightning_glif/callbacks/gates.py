"""How GLIF's gates and membrane parameters evolve during training, in TensorBoard."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_glif.callbacks.hooks import log_scalars
from lightning_glif.callbacks.tensorboard import add_figure, summary_writer
from lightning_glif.neurons import GLIF, GLIFf

GATES = ("alpha", "beta", "gamma")


class GateMonitor(Callback):
    """Logs the values of every GLIF (and GLIF_f) layer, as its ``values()`` returns them.

    Layers are found by type and keyed by module name. At the start of training, every
    ``every_n_steps`` optimizer steps and at the end of training, on global rank 0 (the
    parameters are the same on every rank), at step ``trainer.global_step``:

    - ``gates/<layer>/<gate>``: histogram over channels of alpha, beta, gamma (GLIF only), and
      ``gates/<layer>/<gate>_mean`` their means (scalars);
    - ``membrane/<layer>/<name>``: histograms of tau, v_threshold, v_leak, v_reset, and
      ``membrane/<layer>/<name>_mean``; the conductance per time step ``t`` as
      ``membrane/<layer>/conductance/t<t>`` (histogram over channels) and
      ``membrane/<layer>/conductance_mean/t<t>``.

    Every histogram has ``bins`` equal bins over the range of its values (numpy's
    ``histogram(values, bins)``; its min, max, sum and count are stored exactly).

    Images: ``gates/evolution`` (mean gate per layer against the epochs so far, epoch 0 being
    the initial values) and ``gates/distributions`` (each gate's distribution over channels, one
    outline per layer: the paper's figure of bell-shaped gate distributions; the membrane
    parameters' are in the histograms), every ``figure_every_n_epochs`` epochs and after the
    last. The evolution is kept as three floats per layer per epoch, saved in checkpoints so
    that a resumed run continues it.

    Cost on a CPU core (benchmarks/callback_overhead.py): a set of histograms ~7 ms for two
    layers, a pair of images ~0.1 s. Nothing next to a CIFAR epoch, but 15% of an epoch of the
    default digits run (0.7 s), whose config therefore draws them only after the last epoch.

    Args:
        every_n_steps: log the histograms and scalars every this many optimizer steps
            (0: only at the start and at the end of training).
        bins: bins of each histogram, over the range of its values.
        membrane: log the membrane parameters too, not only the gates.
        figures: log the images at all.
        figure_every_n_epochs: draw the images every this many training epochs, and after the
            last one (0: only after the last one).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        bins: int = 30,
        membrane: bool = True,
        figures: bool = True,
        figure_every_n_epochs: int = 1,
    ) -> None:
        if every_n_steps < 0 or bins < 1 or figure_every_n_epochs < 0:
            raise ValueError(
                "GateMonitor needs every_n_steps >= 0, bins >= 1 and figure_every_n_epochs >= 0, "
                f"got {every_n_steps}, {bins} and {figure_every_n_epochs}."
            )
        self.every_n_steps = every_n_steps
        self.bins = bins
        self.membrane = membrane
        self.figures = figures
        self.figure_every_n_epochs = figure_every_n_epochs
        self.epochs: list[int] = []
        self.means: dict[str, dict[str, list[float]]] = {}
        self._layers: dict[str, GLIF | GLIFf] = {}
        self._last_step: int | None = None  # step of the last histograms
        self._last_figure: int | None = None  # epoch of the last images

    def snapshot(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {quantity: values}}`` of every monitored layer, as float32 numpy arrays of
        the shapes of :class:`~lightning_glif.neurons.GLIFValues` (gates absent for GLIF_f)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        with torch.no_grad():
            for name, module in self._layers.items():
                values = module.values()
                out[name] = {
                    f.name: getattr(values, f.name).detach().float().cpu().numpy()
                    for f in fields(values)
                    if getattr(values, f.name) is not None
                }
        return out

    # -- when -----------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, GLIF | GLIFf)}
        snapshot = self._log(trainer)
        if snapshot is not None and not self.epochs:
            self._record(0, snapshot)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._log(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not self._layers:
            return
        epoch = trainer.current_epoch + 1
        snapshot = self.snapshot()
        self._record(epoch, snapshot)
        n = self.figure_every_n_epochs
        if self.figures and n and epoch % n == 0:
            self._log_figures(trainer, snapshot, epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        snapshot = self._log(trainer)  # the final values
        if snapshot is not None and self.figures and self.epochs:
            if self._last_figure != self.epochs[-1]:
                self._log_figures(trainer, snapshot, self.epochs[-1])

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "means": self.means}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.means = state_dict.get("means", {})

    # -- what -----------------------------------------------------------------------------------
    def _log(self, trainer: Trainer) -> dict[str, dict[str, np.ndarray]] | None:
        """Log histograms and scalars at the current step (once per step) on rank 0 and return
        the snapshot; ``None`` on other ranks or when there is no GLIF layer."""
        if not trainer.is_global_zero or not self._layers:
            return None
        snapshot = self.snapshot()
        step = trainer.global_step
        if step != self._last_step:
            self._last_step = step
            self._write(trainer, snapshot, step)
        return snapshot

    def _write(self, trainer: Trainer, snapshot: dict, step: int) -> None:
        writer = summary_writer(trainer, type(self).__name__)
        scalars: dict[str, float] = {}
        for layer, values in snapshot.items():
            for name, v in values.items():
                group = "gates" if name in GATES else "membrane"
                if group == "membrane" and not self.membrane:
                    continue
                prefix = f"{group}/{layer}"
                if name == "conductance":  # [T, C] or [T]: one series per time step
                    per_step = v.reshape(v.shape[0], -1)
                    series = {f"conductance/t{t}": g for t, g in enumerate(per_step)}
                    means = {f"conductance_mean/t{t}": g.mean() for t, g in enumerate(per_step)}
                else:
                    series = {name: v.reshape(-1)}
                    means = {f"{name}_mean": v.mean()}
                scalars.update({f"{prefix}/{k}": float(m) for k, m in means.items()})
                if writer is not None:
                    for k, values_ in series.items():
                        writer.add_histogram(f"{prefix}/{k}", values_, step, bins=self.bins)
        log_scalars(trainer, scalars, step)

    def _record(self, epoch: int, snapshot: dict[str, dict[str, np.ndarray]]) -> None:
        self.epochs.append(epoch)
        for layer, values in snapshot.items():
            per_layer = self.means.setdefault(layer, {})
            for gate in GATES:
                if gate in values:
                    per_layer.setdefault(gate, []).append(float(values[gate].mean()))

    def _log_figures(self, trainer: Trainer, snapshot: dict, epoch: int) -> None:
        self._last_figure = epoch
        writer = summary_writer(trainer, type(self).__name__)
        if writer is None:
            return
        from lightning_glif.callbacks.figures import distribution_figure, evolution_figure

        step = trainer.global_step
        if any(self.means.values()):
            add_figure(writer, "gates/evolution", evolution_figure(self.epochs, self.means), step)
        gates = {layer: {g: v[g] for g in GATES if g in v} for layer, v in snapshot.items()}
        if any(gates.values()):
            add_figure(writer, "gates/distributions", distribution_figure(gates, GATES), step)
