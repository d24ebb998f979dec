"""How each spiking layer fires: mean rate, per-channel rates, dead and saturated channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pytorch_lightning import LightningModule, Trainer
from torch import nn

from lightning_glif import tags
from lightning_glif.callbacks.hooks import ForwardHookMonitor, Stage
from lightning_glif.callbacks.tensorboard import summary_writer
from lightning_glif.neurons.base import SpikingNeuron


class FiringRateMonitor(ForwardHookMonitor):
    """Per-layer firing statistics of every :class:`SpikingNeuron`, logged once per epoch.

    A forward hook on each neuron (found by type, keyed by its module name) sums its spikes
    ``[T, B, C, ...]`` over every dim but the channel dim 2, into a per-channel int64 counter on
    the device; the element count per channel (``T * B * H * W``) is a Python int. Memory is two
    numbers per channel per monitored stage, reset every epoch. At the end of each epoch the
    counts are summed over the DDP ranks (one all-reduce), so the figures rank 0 logs are global:

    - ``spikes/<stage>/<layer>/rate``: spikes / (neurons x steps x samples) of the layer (scalar);
    - ``spikes/<stage>/<layer>/channel_rate``: histogram of the per-channel rates over [0, 1];
    - ``spikes/<stage>/<layer>/dead``: fraction of channels that never fired in the epoch;
    - ``spikes/<stage>/<layer>/saturated``: fraction of channels that fired at every position,
      step and sample of the epoch;
    - ``spikes/<stage>/rate``: the rate over all the layers' neurons together.

    ``<stage>`` is ``train``, ``val`` or ``test``; the step is ``trainer.global_step``. The
    scalars of a stage's latest epoch are also in ``last[stage]``
    (:class:`~lightning_glif.callbacks.hooks.ForwardHookMonitor`). Under bf16/fp16 autocast the
    spikes are summed in float32 (exact while one forward call gives a channel fewer than 2**24
    spikes) and accumulated in int64, so the counts stay exact.

    Args:
        stages: the loops to monitor.
        bins: bins of the per-channel rate histogram on [0, 1].
        histograms: log the per-channel rate histograms (scalars are always logged).
    """

    def __init__(
        self,
        stages: Sequence[Stage] = ("train", "val"),
        bins: int = 20,
        histograms: bool = True,
    ) -> None:
        super().__init__(stages)
        if bins < 1:
            raise ValueError(f"FiringRateMonitor: bins must be >= 1, got {bins}.")
        self.bins = bins
        self.histograms = histograms
        self._spikes: dict[str, dict[str, torch.Tensor]] = {}
        self._elements: dict[str, dict[str, int]] = {}
        self._layers: dict[str, SpikingNeuron] = {}

    def select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        self._layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)}
        return dict(self._layers)

    def reset(self, stage: str, pl_module: LightningModule) -> None:
        device = pl_module.device
        self._spikes[stage] = {
            n: torch.zeros(m.num_features, dtype=torch.int64, device=device)
            for n, m in self._layers.items()
        }
        # Tensors, not Python ints: under torch.compile the hooks are traced into the graph, and
        # a Python number read there is a guard (a recompile every step).
        self._elements[stage] = {
            n: torch.zeros((), dtype=torch.int64, device=device) for n in self._layers
        }

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        spikes = output.detach()
        # [T, B, C] -> [T * B, C]: one reduction; [T, B, C, ...] -> [T * B, C, S]: two contiguous
        # reductions, faster than one over dims (0, 2) on the CPU. As few ops as possible: on
        # small layers each op's fixed cost is what a step pays. Whole numbers below 2**24 are
        # exact in float32, so the cast to int64 loses nothing.
        t, b, c = spikes.shape[:3]
        if spikes.dim() == 3:
            per_channel = spikes.reshape(t * b, c).sum(0, dtype=torch.float32)
        else:
            per_channel = spikes.reshape(t * b, c, -1).sum(2, dtype=torch.float32).sum(0)
        self._spikes[stage][name].add_(per_channel.to(torch.int64))
        self._elements[stage][name].add_(spikes.numel() // c)

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        names = list(self._layers)
        if not names:
            return
        spikes = self._spikes[stage]
        elements = torch.stack([self._elements[stage][n] for n in names])
        total = self.all_sum(trainer, torch.cat([*(spikes[n] for n in names), elements]))
        if not trainer.is_global_zero:
            return
        total = total.cpu()
        sizes = [spikes[n].numel() for n in names]
        per_layer = torch.split(total[: sum(sizes)], sizes)
        elements = total[sum(sizes) :].tolist()

        step = trainer.global_step
        writer = summary_writer(trainer, type(self).__name__) if self.histograms else None
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        scalars: dict[str, float] = {}
        all_spikes = all_elements = 0
        for name, counts, per_channel in zip(names, per_layer, elements, strict=True):
            if per_channel == 0:  # the layer did not run in this stage
                continue
            rate = counts.sum().item() / (per_channel * counts.numel())
            scalars[tags.firing(stage, "rate", name)] = rate
            scalars[tags.firing(stage, "dead", name)] = (counts == 0).double().mean().item()
            saturated = (counts == per_channel).double().mean().item()
            scalars[tags.firing(stage, "saturated", name)] = saturated
            all_spikes += counts.sum().item()
            all_elements += per_channel * counts.numel()
            if writer is not None:
                rates = counts.double().numpy() / per_channel
                tag = tags.firing(stage, "channel_rate", name)
                writer.add_histogram(tag, rates, step, bins=edges)
        if all_elements:
            scalars[tags.firing(stage)] = all_spikes / all_elements
            self.publish(trainer, stage, scalars)
