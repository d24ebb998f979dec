"""How each neuron layer's gates and membrane parameters evolve during training."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_glif.callbacks.hooks import log_scalars, summary_writer
from lightning_glif.neurons import Observable, SpikingNeuron
from lightning_glif.training import tags

#: ``{layer: {name: Observable}}``: detached copies of the values, on the model's device.
Snapshot = dict[str, dict[str, Observable]]


class GateMonitor(Callback):
    """Logs each :class:`~lightning_glif.neurons.SpikingNeuron` layer's
    :meth:`~lightning_glif.neurons.SpikingNeuron.observables` (GLIF: gates and membrane values;
    LIF, PLIF: decay and threshold), keyed by module name, on global rank 0, at the start of
    training, every ``every_n_steps`` optimizer steps and at the end, at ``trainer.global_step``:

    - ``<group>/<layer>/<name>``: histogram over channels (TensorBoardLogger only), e.g.
      ``gates/<layer>/alpha``; ``<group>`` is ``gates`` or ``membrane``;
    - ``<group>/<layer>/<name>_mean``, ``..._std``: mean and population std (``ddof=0``) over
      channels, to every logger;
    - a per-step observable (GLIF's conductance ``[T, C]``): the same per time step ``k``, e.g.
      ``membrane/<layer>/conductance_mean/t<k>``.

    A step's values are copied on the device when it ends and written at the epoch's end, so no
    step waits. Images (TensorBoardLogger only): ``gates/evolution`` (each gate's mean per layer
    against epoch, epoch 0 the initial values; kept in checkpoints, so a resumed run continues
    it) and ``gates/distributions`` (each gate over channels, one outline per layer), every
    ``figure_every_n_epochs`` epochs and after the last. Drawing them takes longer than an epoch
    of the embedded runs, hence after the last epoch only by default.

    Args:
        every_n_steps: log the histograms and scalars every this many optimizer steps
            (0: only at the start and at the end of training).
        bins: bins of each histogram, over the range of its values.
        membrane: log the ``membrane`` observables too, not only the gates.
        figures: log the images at all.
        figure_every_n_epochs: draw the images every this many training epochs, and after the
            last one (0: only after the last one).
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        bins: int = 30,
        membrane: bool = True,
        figures: bool = True,
        figure_every_n_epochs: int = 0,
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
        self.means: dict[str, dict[str, list[float]]] = {}  # {layer: {gate: [mean per epoch]}}
        self.stds: dict[str, dict[str, list[float]]] = {}  # the same, across-channel std
        self.layers: dict[str, SpikingNeuron] = {}
        self._pending: list[tuple[int, Snapshot]] = []  # (step, values) not written yet
        self._last_step: int | None = None  # step of the last histograms
        self._last_figure: int | None = None  # epoch of the last images

    def snapshot(self) -> Snapshot:
        """Detached float32 copies of every layer's observables, on the model's device."""
        with torch.no_grad():
            return {
                layer: {
                    name: replace(obs, value=obs.value.detach().float().clone())
                    for name, obs in module.observables().items()
                }
                for layer, module in self.layers.items()
            }

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)}
        if not trainer.is_global_zero or not self.layers:
            return
        snapshot = self.snapshot()
        self._log(trainer, trainer.global_step, snapshot)
        if not self.epochs:
            self.record(0, snapshot)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = self.every_n_steps
        if every and step % every == 0 and step != self._last_step and trainer.is_global_zero:
            self._last_step = step
            self._pending.append((step, self.snapshot()))  # written at the epoch's end

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not self.layers:
            return
        self._flush(trainer)
        epoch = trainer.current_epoch + 1
        snapshot = self.snapshot()
        self.record(epoch, snapshot)
        every = self.figure_every_n_epochs
        if self.figures and every and epoch % every == 0:
            self._log_figures(trainer, snapshot, epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not self.layers:
            return
        self._flush(trainer)
        snapshot = self.snapshot()  # the final values
        if trainer.global_step != self._last_step:
            self._log(trainer, trainer.global_step, snapshot)
        if self.figures and self.epochs and self._last_figure != self.epochs[-1]:
            self._log_figures(trainer, snapshot, self.epochs[-1])

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "means": self.means, "stds": self.stds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.means = state_dict.get("means", {})
        self.stds = state_dict.get("stds", {})

    def _flush(self, trainer: Trainer) -> None:
        for step, snapshot in self._pending:
            self._log(trainer, step, snapshot)
        self._pending = []

    def _log(self, trainer: Trainer, step: int, snapshot: Snapshot) -> None:
        """Write the histograms and scalars of ``snapshot`` at ``step`` (rank 0)."""
        self._last_step = step
        writer = summary_writer(trainer, type(self).__name__)
        scalars: dict[str, float] = {}
        for layer, observables in snapshot.items():
            for name, obs in observables.items():
                if obs.group == "membrane" and not self.membrane:
                    continue
                v = obs.value.cpu().numpy()
                # per step ([T, C] or [T]): one series per time step k
                series = enumerate(v.reshape(v.shape[0], -1)) if obs.per_step else [(None, v)]
                for k, values in series:
                    # float64: a constant layer's mean is exactly its value, its std 0.
                    wide = values.astype(np.float64)
                    for stat, value in (("mean", wide.mean()), ("std", wide.std())):
                        scalars[tags.observable(obs.group, layer, name, stat, k)] = float(value)
                    if writer is not None:
                        tag = tags.observable(obs.group, layer, name, step=k)
                        writer.add_histogram(tag, values.reshape(-1), step, bins=self.bins)
        log_scalars(trainer, scalars, step)

    @staticmethod
    def gates(snapshot: Snapshot) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {gate: values}}`` on the host, for the layers that have gates."""
        gates = {
            layer: {n: o.value.cpu().numpy() for n, o in obs.items() if o.group == "gates"}
            for layer, obs in snapshot.items()
        }
        return {layer: g for layer, g in gates.items() if g}

    def record(self, epoch: int, snapshot: Snapshot) -> None:
        """Append the gates' means and stds of ``snapshot`` to the evolution at ``epoch``."""
        self.epochs.append(epoch)
        for layer, gates in self.gates(snapshot).items():
            means, stds = self.means.setdefault(layer, {}), self.stds.setdefault(layer, {})
            for gate, values in gates.items():
                values = values.astype(np.float64)
                means.setdefault(gate, []).append(float(values.mean()))
                stds.setdefault(gate, []).append(float(values.std()))

    def _log_figures(self, trainer: Trainer, snapshot: Snapshot, epoch: int) -> None:
        from lightning_glif.callbacks import figures  # matplotlib: imported when first drawn

        self._last_figure = epoch
        writer = summary_writer(trainer, type(self).__name__)
        if writer is None:
            return
        step = trainer.global_step
        if any(self.means.values()):
            evolution = figures.evolution_figure(self.epochs, self.means, self.stds)
            writer.add_figure(tags.GATE_EVOLUTION, evolution, step)
        gates = self.gates(snapshot)
        if gates:
            distributions = figures.distribution_figure(gates)
            writer.add_figure(tags.GATE_DISTRIBUTIONS, distributions, step)
