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
    """Firing statistics of every :class:`SpikingNeuron` layer (keyed by module name), logged at
    each epoch's end at ``trainer.global_step``, summed over the DDP ranks:

    - ``spikes/<stage>/<layer>/rate``: spikes / (neurons x steps x samples);
    - ``spikes/<stage>/<layer>/channel_rate``: histogram of the per-channel rates over [0, 1]
      (TensorBoardLogger only; the scalars go to every logger);
    - ``spikes/<stage>/<layer>/dead``, ``.../saturated``: fractions of channels that never fired,
      or fired at every position, step and sample;
    - ``spikes/<stage>/rate``: the rate over all the layers' neurons together.

    Spikes ``[T, B, C, ...]`` are summed per channel on the device (float32 per call, float64
    across calls: exact under bf16/fp16 too). Training batches are sampled, one in
    ``train_every_n_batches`` (the first of each epoch included), since the count's fixed cost
    is a visible share of a small model's step (``benchmarks/loop_overhead.py``): the ``train``
    rate is then an unbiased estimate, ``dead`` and ``saturated`` upper bounds. Validation and
    test batches are all counted.

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
        self._elements: dict[str, dict[str, torch.Tensor]] = {}  # per channel: T * B * H * W
        self._layers: dict[str, SpikingNeuron] = {}

    def select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        self._layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)}
        return dict(self._layers)

    def reset(self, stage: str, pl_module: LightningModule) -> None:
        device = pl_module.device
        # float64: exact to 2**53 spikes, one in-place add per call (int64 needs a cast first).
        self._spikes[stage] = {
            n: torch.zeros(m.num_features, dtype=torch.float64, device=device)
            for n, m in self._layers.items()
        }
        # A tensor, not a Python int: under torch.compile a Python number read in the traced
        # hook is a guard (a recompile per step).
        self._elements[stage] = {
            n: torch.zeros((), dtype=torch.float64, device=device) for n in self._layers
        }

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        spikes = output.detach()
        # Two contiguous reductions are faster on the CPU than one over dims (0, 2); float32 is
        # exact below 2**24 spikes per channel per call.
        t, b, c = spikes.shape[:3]
        if spikes.dim() == 3:
            per_channel = spikes.reshape(t * b, c).sum(0, dtype=torch.float32)
        else:
            per_channel = spikes.reshape(t * b, c, -1).sum(2, dtype=torch.float32).sum(0)
        self._spikes[stage][name].add_(per_channel)
        self._elements[stage][name].add_(spikes.numel() // c)

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        names = list(self._layers)
        if not names:
            return
        spikes = self._spikes[stage]
        elements = torch.stack([self._elements[stage][n] for n in names])
        total = torch.cat([*(spikes[n] for n in names), elements])
        total = trainer.strategy.reduce(total, reduce_op="sum")
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
