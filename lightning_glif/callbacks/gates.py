"""How each neuron layer's gates and membrane parameters evolve during training, in TensorBoard."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_glif import tags
from lightning_glif.callbacks.budget import TimeBudget
from lightning_glif.callbacks.hooks import log_scalars
from lightning_glif.callbacks.tensorboard import add_figure, summary_writer
from lightning_glif.neurons import Observable, SpikingNeuron

#: ``{layer: {name: Observable}}``, the values as float32 CPU tensors.
Snapshot = dict[str, dict[str, Observable]]


class GateMonitor(Callback):
    """Logs what every neuron layer reports in its
    :meth:`~lightning_glif.neurons.SpikingNeuron.observables` (GLIF: its gates and membrane
    values; LIF, PLIF: decay and threshold; a new neuron: whatever it reports there).

    Layers are every :class:`~lightning_glif.neurons.SpikingNeuron`, keyed by module name. At
    the start of training, every ``every_n_steps`` optimizer steps (as ``histogram_budget``
    allows) and at the end of training, on global rank 0 (the parameters are the same on every
    rank), at step ``trainer.global_step``, for each observable ``<name>`` of group ``<group>``
    (``gates`` or ``membrane``; tags from :func:`lightning_glif.tags.observable`):

    - ``<group>/<layer>/<name>``: histogram over channels (e.g. ``gates/<layer>/alpha``);
    - ``<group>/<layer>/<name>_mean`` and ``<group>/<layer>/<name>_std``: the mean over
      channels and their population standard deviation (numpy's default ``ddof=0``, so 0 for a
      layer-wise scalar);
    - for a per-step observable (GLIF's conductance ``[T, C]``), the same for each time step
      ``k``: ``membrane/<layer>/conductance/t<k>``, ``membrane/<layer>/conductance_mean/t<k>``,
      ``membrane/<layer>/conductance_std/t<k>``.

    Every histogram has ``bins`` equal bins over the range of its values (numpy's
    ``histogram(values, bins)``; its min, max, sum and count are stored exactly).

    Images: ``gates/evolution`` (the mean of each ``gates`` observable per layer against the
    epochs so far, epoch 0 being the initial values) and ``gates/distributions`` (each gate's
    distribution over channels, one outline per layer: the paper's figure of bell-shaped gate
    distributions; the membrane parameters' are in the histograms), within a time budget
    (below) or every ``figure_every_n_epochs`` epochs, and always after the last. The evolution
    is kept as one float per gate per layer per epoch, saved in checkpoints so that a resumed run
    continues it, so the last image shows the whole run.

    Why a budget: a pair of images costs about 0.2 s of matplotlib on a CPU core, nothing next to
    a CIFAR epoch but more than a whole epoch of the embedded runs (0.15 s on row digits, where
    drawing every epoch made the shipped run about 1.5x longer: benchmarks/loop_overhead.py).
    With ``figure_every_n_epochs=None`` (the default) an epoch ends with new images only when
    the wall time since the last ones (or since the start of training) is at least their
    drawing time divided by ``figure_budget``, the first time twice that, to keep the time of
    the last images in hand (:class:`~lightning_glif.callbacks.budget.TimeBudget`; before the
    first drawing its time is taken as :attr:`FIGURE_COST` = 0.2 s). Drawing, the last images
    included, then takes at most that share of the run (1%): a run of under 40 s gets its
    images at the end only, epochs of 20 s or more get them every epoch from the second. The
    histograms and scalars keep to ``histogram_budget`` the same way, the ones at
    the start and at the end included.

    Args:
        every_n_steps: log the histograms and scalars every this many optimizer steps
            (0: only at the start and at the end of training).
        bins: bins of each histogram, over the range of its values.
        membrane: log the ``membrane`` observables too, not only the gates.
        figures: log the images at all.
        figure_every_n_epochs: draw the images every this many training epochs, and after the
            last one (0: only after the last one); ``None``: as ``figure_budget`` allows, and
            after the last.
        figure_budget: with ``figure_every_n_epochs=None``, the largest share of the wall time
            spent drawing the images (between 0 and 1).
        histogram_budget: the largest share of the wall time spent writing the histograms and
            scalars: a step that is a multiple of ``every_n_steps`` logs them only when the
            time since the last ones allows it (:class:`~lightning_glif.callbacks.budget.
            TimeBudget`); ``None``: every ``every_n_steps`` steps. The start and the end of
            training are always logged.
    """

    #: Seconds a pair of images is taken to cost before the first is drawn (measured: 0.15 to
    #: 0.3 s on one core of the CI machine).
    FIGURE_COST = 0.2

    def __init__(
        self,
        every_n_steps: int = 50,
        bins: int = 30,
        membrane: bool = True,
        figures: bool = True,
        figure_every_n_epochs: int | None = None,
        figure_budget: float = 0.01,
        histogram_budget: float | None = 0.01,
    ) -> None:
        every = 0 if figure_every_n_epochs is None else figure_every_n_epochs
        budgets = (figure_budget, 1.0 if histogram_budget is None else histogram_budget)
        if every_n_steps < 0 or bins < 1 or every < 0 or not all(0 < b <= 1 for b in budgets):
            raise ValueError(
                "GateMonitor needs every_n_steps >= 0, bins >= 1, figure_every_n_epochs >= 0 "
                "(or None) and 0 < figure_budget, histogram_budget <= 1, got "
                f"{every_n_steps}, {bins}, {figure_every_n_epochs}, {figure_budget} and "
                f"{histogram_budget}."
            )
        self.every_n_steps = every_n_steps
        self.bins = bins
        self.membrane = membrane
        self.figures = figures
        self.figure_every_n_epochs = figure_every_n_epochs
        self.figure_budget = figure_budget
        self.histogram_budget = histogram_budget
        #: Pace the images and the histograms (a test sets their ``clock``).
        # Reserves: the images of the end, the histograms of the start and of the end are within
        # the budget.
        self.figure_timer = TimeBudget(figure_budget, prior=self.FIGURE_COST, reserve=1)
        self.histogram_timer = TimeBudget(histogram_budget or 1.0, reserve=2)
        self.epochs: list[int] = []
        self.means: dict[str, dict[str, list[float]]] = {}  # {layer: {gate: [mean per epoch]}}
        self.stds: dict[str, dict[str, list[float]]] = {}  # the same, across-channel std
        self._layers: dict[str, SpikingNeuron] = {}
        self._last_step: int | None = None  # step of the last histograms
        self._last_figure: int | None = None  # epoch of the last images

    def snapshot(self) -> Snapshot:
        """``{layer: {name: observable}}`` of every monitored layer, each value detached as a
        float32 CPU tensor (the shapes of the neuron's :meth:`observables`)."""
        out: Snapshot = {}
        with torch.no_grad():
            for layer, module in self._layers.items():
                out[layer] = {
                    name: replace(obs, value=obs.value.detach().float().cpu())
                    for name, obs in module.observables().items()
                }
        return out

    # -- when -----------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._layers = {
            n: m for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)
        }
        self.figure_timer.start()
        self.histogram_timer.start()
        snapshot = self._log(trainer)
        if snapshot is not None and not self.epochs:
            self._record(0, snapshot)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            if self.histogram_budget is None or self.histogram_timer.due():
                self._log(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not self._layers:
            return
        epoch = trainer.current_epoch + 1
        snapshot = self.snapshot()
        self._record(epoch, snapshot)
        if self.figures and self._figures_due(epoch):
            self._log_figures(trainer, snapshot, epoch)

    def _figures_due(self, epoch: int) -> bool:
        n = self.figure_every_n_epochs
        if n is not None:
            return bool(n) and epoch % n == 0
        return self.figure_timer.due()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        snapshot = self._log(trainer)  # the final values
        if snapshot is not None and self.figures and self.epochs:
            if self._last_figure != self.epochs[-1]:
                self._log_figures(trainer, snapshot, self.epochs[-1])

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "means": self.means, "stds": self.stds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.means = state_dict.get("means", {})
        self.stds = state_dict.get("stds", {})

    # -- what -----------------------------------------------------------------------------------
    def _log(self, trainer: Trainer) -> Snapshot | None:
        """Log histograms and scalars at the current step (once per step) on rank 0 and return
        the snapshot; ``None`` on other ranks or when there is no neuron layer."""
        if not trainer.is_global_zero or not self._layers:
            return None
        snapshot = self.snapshot()
        step = trainer.global_step
        if step != self._last_step:
            self._last_step = step
            with self.histogram_timer.spend():
                self._write(trainer, snapshot, step)
        return snapshot

    def _write(self, trainer: Trainer, snapshot: Snapshot, step: int) -> None:
        writer = summary_writer(trainer, type(self).__name__)
        scalars: dict[str, float] = {}
        for layer, observables in snapshot.items():
            for name, obs in observables.items():
                if obs.group == "membrane" and not self.membrane:
                    continue
                v = obs.value.numpy()
                # [T, C] or [T]: one series per time step; else one series (k = None)
                series = enumerate(v.reshape(v.shape[0], -1)) if obs.per_step else [(None, v)]
                for k, values in series:
                    # Statistics in float64: a constant float32 layer then has exactly its value
                    # as mean and 0 as std. np.std: the population std (ddof=0).
                    wide = values.astype(np.float64)
                    for stat, value in (("mean", wide.mean()), ("std", wide.std())):
                        scalars[tags.observable(obs.group, layer, name, stat, k)] = float(value)
                    if writer is not None:
                        tag = tags.observable(obs.group, layer, name, step=k)
                        writer.add_histogram(tag, values.reshape(-1), step, bins=self.bins)
        log_scalars(trainer, scalars, step)

    @staticmethod
    def _gates(snapshot: Snapshot) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {gate: values}}``: the ``gates`` observables of the layers that have any
        (a layer without gates would take a colour and a legend entry and draw nothing)."""
        gates = {
            layer: {n: o.value.numpy() for n, o in obs.items() if o.group == "gates"}
            for layer, obs in snapshot.items()
        }
        return {layer: g for layer, g in gates.items() if g}

    def _record(self, epoch: int, snapshot: Snapshot) -> None:
        self.epochs.append(epoch)
        for layer, gates in self._gates(snapshot).items():
            means, stds = self.means.setdefault(layer, {}), self.stds.setdefault(layer, {})
            for gate, values in gates.items():
                values = values.astype(np.float64)
                means.setdefault(gate, []).append(float(values.mean()))
                stds.setdefault(gate, []).append(float(values.std()))

    def _log_figures(self, trainer: Trainer, snapshot: Snapshot, epoch: int) -> None:
        self._last_figure = epoch
        writer = summary_writer(trainer, type(self).__name__)
        if writer is None:
            return
        with self.figure_timer.spend():
            self._draw(writer, trainer.global_step, snapshot)

    def _draw(self, writer: Any, step: int, snapshot: Snapshot) -> None:
        from lightning_glif.callbacks.figures import (
            distribution_figure,
            evolution_figure,
            quantities,
        )

        if any(self.means.values()):
            evolution = evolution_figure(self.epochs, self.means, self.stds)
            add_figure(writer, tags.GATE_EVOLUTION, evolution, step)
        gates = self._gates(snapshot)
        if gates:
            distributions = distribution_figure(gates, quantities(gates))
            add_figure(writer, tags.GATE_DISTRIBUTIONS, distributions, step)
