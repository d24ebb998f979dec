"""How each spiking layer fires: mean rate, per-channel rates, dead and saturated channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pytorch_lightning import LightningModule, Trainer
from torch import nn

from lightning_glif.callbacks.hooks import ForwardHookMonitor, Stage, summary_writer
from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.training import tags


class FiringRateMonitor(ForwardHookMonitor):
    """Per-layer firing statistics of every :class:`SpikingNeuron`, logged once per epoch.

    A forward hook on each neuron (found by type, keyed by its module name) sums its spikes
    ``[T, B, C, ...]`` over every dim but the channel dim 2, into a per-channel float64 counter
    on the device (exact to 2**53 spikes); the element count per channel (``T * B * H * W``) is
    a Python int. Memory is one number per channel per monitored stage, reset every epoch. At the
    end of each epoch the counts are summed over the DDP ranks (one all-reduce), so the figures
    rank 0 logs are global:

    - ``spikes/<stage>/<layer>/rate``: spikes / (neurons x steps x samples) of the layer (scalar);
    - ``spikes/<stage>/<layer>/channel_rate``: histogram of the per-channel rates over [0, 1]
      (to a TensorBoardLogger; the scalars go to every logger);
    - ``spikes/<stage>/<layer>/dead``: fraction of channels that never fired in the epoch;
    - ``spikes/<stage>/<layer>/saturated``: fraction of channels that fired at every position,
      step and sample of the epoch;
    - ``spikes/<stage>/rate``: the rate over all the layers' neurons together.

    ``<stage>`` is ``train``, ``val`` or ``test``; the step is ``trainer.global_step``. The
    scalars of a stage's latest epoch are also in ``last[stage]``
    (:class:`~lightning_glif.callbacks.hooks.ForwardHookMonitor`). Under bf16/fp16 autocast the
    spikes are summed in float32 (exact while one forward call gives a channel fewer than 2**24
    spikes) and accumulated in float64, so the counts stay exact.

    Training batches are sampled: one in ``train_every_n_batches`` (4 by default; the first of
    every epoch included) is counted, so the ``train`` figures are those of the counted batches:
    the rate an unbiased estimate of the epoch's, ``dead`` and ``saturated`` the channels that
    never fired or always fired in them (an upper bound on the epoch's fractions). Validation
    and test batches are all counted, so their figures are exact. Why: the count is two small
    ops per layer per batch, whose fixed cost is a visible share of a small model's step (the
    embedded runs: ``benchmarks/loop_overhead.py``). ``train_every_n_batches=1`` counts them
    all.

    Args:
        stages: the loops to monitor.
        bins: bins of the per-channel rate histogram on [0, 1].
        histograms: log the per-channel rate histograms (scalars are always logged).
        train_every_n_batches: count one training batch in this many (1: every one).
    """

    def __init__(
        self,
        stages: Sequence[Stage] = ("train", "val"),
        bins: int = 20,
        histograms: bool = True,
        train_every_n_batches: int = 4,
    ) -> None:
        super().__init__(stages, train_every_n_batches)
        if bins < 1:
            raise ValueError(f"FiringRateMonitor: bins must be >= 1, got {bins}.")
        self.bins = bins
        self.histograms = histograms
        self._spikes: dict[str, dict[str, torch.Tensor]] = {}
        self._elements: dict[str, dict[str, int]] = {}
        self._traced: dict[str, dict[str, torch.Tensor]] = {}  # elements counted under compile
        self._layers: dict[str, SpikingNeuron] = {}

    def select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        self._layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)}
        return dict(self._layers)

    def reset(self, stage: str, pl_module: LightningModule) -> None:
        device = pl_module.device
        # float64 counters: exact up to 2**53 spikes per channel, and one in-place add per call
        # (an int64 counter needs a cast first; each op's fixed cost is what a small layer pays).
        self._spikes[stage] = {
            n: torch.zeros(m.num_features, dtype=torch.float64, device=device)
            for n, m in self._layers.items()
        }
        # Elements per channel: a Python int, but a tensor under torch.compile, where the hooks
        # are traced into the graph and a Python number read there is a guard (a recompile per
        # step).
        self._elements[stage] = dict.fromkeys(self._layers, 0)
        self._traced[stage] = {
            n: torch.zeros((), dtype=torch.int64, device=device) for n in self._layers
        }

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        spikes = output.detach()
        # [T, B, C] -> [T * B, C]: one reduction; [T, B, C, ...] -> [T * B, C, S]: two contiguous
        # reductions, faster than one over dims (0, 2) on the CPU. Whole numbers below 2**24 are
        # exact in float32 (the sum of one call), and in the float64 counter below 2**53.
        t, b, c = spikes.shape[:3]
        if spikes.dim() == 3:
            per_channel = spikes.reshape(t * b, c).sum(0, dtype=torch.float32)
        else:
            per_channel = spikes.reshape(t * b, c, -1).sum(2, dtype=torch.float32).sum(0)
        self._spikes[stage][name].add_(per_channel)
        if torch.compiler.is_compiling():
            self._traced[stage][name].add_(spikes.numel() // c)
        else:
            self._elements[stage][name] += spikes.numel() // c

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        names = list(self._layers)
        if not names:
            return
        spikes = self._spikes[stage]
        eager = [float(self._elements[stage][n]) for n in names]
        elements = torch.stack([self._traced[stage][n] for n in names]).double()
        elements += torch.tensor(eager, dtype=torch.float64, device=elements.device)
        total = self.all_sum(trainer, torch.cat([*(spikes[n] for n in names), elements]))
        if not trainer.is_global_zero:
            return
        total = total.cpu().numpy()
        sizes = [spikes[n].numel() for n in names]
        per_layer = np.split(total[: sum(sizes)], np.cumsum(sizes)[:-1])
        elements = total[sum(sizes) :].tolist()

        step = trainer.global_step
        writer = summary_writer(trainer, type(self).__name__) if self.histograms else None
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        scalars: dict[str, float] = {}
        all_spikes = all_elements = 0.0
        for name, counts, per_channel in zip(names, per_layer, elements, strict=True):
            if per_channel == 0:  # the layer did not run in this stage
                continue
            fired = float(counts.sum())
            scalars[tags.firing(stage, "rate", name)] = fired / (per_channel * counts.size)
            scalars[tags.firing(stage, "dead", name)] = float(np.mean(counts == 0))
            scalars[tags.firing(stage, "saturated", name)] = float(np.mean(counts == per_channel))
            all_spikes += fired
            all_elements += per_channel * counts.size
            if writer is not None:
                tag = tags.firing(stage, "channel_rate", name)
                writer.add_histogram(tag, counts / per_channel, step, bins=edges)
        if all_elements:
            scalars[tags.firing(stage)] = all_spikes / all_elements
            self.publish(trainer, stage, scalars)
