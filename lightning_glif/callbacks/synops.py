"""Synaptic operations and an energy estimate per sample, the figures SNN papers report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule, Trainer
from torch import nn

from lightning_glif.callbacks.hooks import ForwardHookMonitor, Stage
from lightning_glif.training import tags

SYNAPTIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def dense_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one dense call: ``output elements x fan-in`` (bias not counted)."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def pad_widths(conv: nn.Module) -> list[int]:
    """``F.pad``'s widths (last dim first, left then right) for ``conv.padding``: numbers,
    ``"same"`` (``dilation x (kernel - 1)``, the odd one on the right, as torch) or ``"valid"``."""
    if conv.padding == "valid":
        per_dim = [(0, 0)] * len(conv.kernel_size)
    elif conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        per_dim = [(t // 2, t - t // 2) for t in total]
    else:
        per_dim = [(p, p) for p in conv.padding]
    return [width for pair in reversed(per_dim) for width in pair]


def synaptic_events(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Accumulates an event-driven layer does for input ``x``: one per nonzero input per synapse,
    an int64 scalar on ``x.device``.

    Linear (``x`` ``[..., in_features]``): ``nonzero(x) x out_features``. Conv (``x``
    ``[N, C_in, *S]``): the nonzero mask, summed per group, convolved with an all-ones kernel of
    the conv's geometry counts each output's nonzero inputs, exact at padded borders; times
    ``out_channels / groups``.
    """
    if isinstance(module, nn.Linear):
        return torch.count_nonzero(x) * module.out_features
    with torch.autocast(x.device.type, enabled=False):
        g = module.groups
        mask = (x != 0).to(torch.float32)
        mask = mask.unflatten(1, (g, module.in_channels // g)).sum(2)  # [N, g, *S]
        padding = module.padding
        if module.padding_mode != "zeros":
            mask = F.pad(mask, pad_widths(module), mode=module.padding_mode)
            padding = 0
        ones = mask.new_ones(g, 1, *module.kernel_size)
        conv = _CONV[len(module.kernel_size)]
        reached = conv(mask, ones, None, module.stride, padding, module.dilation, g)
        return reached.sum(dtype=torch.int64) * (module.out_channels // g)


class SynapticOpsMonitor(ForwardHookMonitor):
    """Synaptic operations (SOPs) per sample and their energy, logged at each epoch's end.

    Counts what every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` (keyed by module name) runs:

    - MAC layers (by default the first synaptic layer to run, fed the real-valued encoded
      input): ``output elements x fan-in``; under direct encoding ``TimeDistributed`` runs it
      once for all T steps, and it is counted once;
    - every other layer: ``ACs = nonzero inputs x synapses each reaches``. A non-binary input
      (average-pooled spikes, SEW sums) counts one AC per nonzero value: an estimate there.

    ``energy = ACs x energy_ac + MACs x energy_mac``, by default the 45 nm figures of Horowitz
    (ISSCC 2014) for 32-bit float. Memory access, neuron updates and biases are not counted: a
    lower bound, as in the papers. Summed over DDP ranks; rank 0 logs

    - ``synops/<stage>/<layer>/ac`` or ``.../mac``: that layer's operations per sample;
    - ``synops/<stage>/ac``, ``synops/<stage>/mac``: totals per sample;
    - ``energy/<stage>/uJ``: energy per sample in microjoules.

    Args:
        stages: the loops to monitor (the papers report inference: ``"val"``, ``"test"``).
        energy_ac: energy of one accumulate, picojoules.
        energy_mac: energy of one multiply-accumulate, picojoules.
        mac_layers: module names counted as MAC layers; ``None``: the first synaptic layer to run;
            ``[]``: none (every layer event-driven, e.g. on event-camera input).
    """

    def __init__(
        self,
        stages: Sequence[Stage] = ("val", "test"),
        energy_ac: float = 0.9,
        energy_mac: float = 4.6,
        mac_layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(stages)
        self.energy_ac = energy_ac
        self.energy_mac = energy_mac
        self.mac_layers = None if mac_layers is None else list(mac_layers)
        self._mac: set[str] | None = None  # the MAC layers of this run, once known
        self._layers: dict[str, nn.Module] = {}
        self._ops: dict[str, dict[str, torch.Tensor]] = {}  # ACs or MACs per stage and layer

    def select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        self._layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, SYNAPTIC)}
        self._mac = None if self.mac_layers is None else set(self.mac_layers)
        if self._mac is not None:
            missing = self._mac - set(self._layers)
            if missing:
                raise ValueError(
                    f"SynapticOpsMonitor: mac_layers {sorted(missing)} are not linear or conv "
                    f"layers of the model; its synaptic layers are {list(self._layers)}."
                )
        return dict(self._layers)

    def reset(self, stage: str, pl_module: LightningModule) -> None:
        # Tensors, not Python ints (torch.compile guards: FiringRateMonitor.reset).
        zero = torch.zeros((), dtype=torch.int64, device=pl_module.device)
        self._ops[stage] = {n: zero.clone() for n in self._layers}

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        if self._mac is None:  # the first layer to run
            self._mac = {name}
        if name in self._mac:
            self._ops[stage][name].add_(dense_macs(module, output))
        else:
            self._ops[stage][name].add_(synaptic_events(module, inputs[0]))

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        names = list(self._layers)
        if not names:
            return
        ops = torch.stack([self._ops[stage][n] for n in names])
        samples = ops.new_tensor([self.samples[stage]])
        total = trainer.strategy.reduce(torch.cat([ops, samples]), reduce_op="sum")
        *ops, samples = total.tolist()
        if not trainer.is_global_zero or samples == 0:
            return
        totals = {"ac": 0, "mac": 0}
        scalars: dict[str, float] = {}
        for name, count in zip(names, ops, strict=True):
            kind = "mac" if name in (self._mac or ()) else "ac"
            totals[kind] += count
            scalars[tags.synops(stage, kind, name)] = count / samples
        ac, mac = totals["ac"] / samples, totals["mac"] / samples
        scalars[tags.synops(stage, "ac")] = ac
        scalars[tags.synops(stage, "mac")] = mac
        scalars[tags.energy(stage)] = (ac * self.energy_ac + mac * self.energy_mac) * 1e-6
        self.publish(trainer, stage, scalars)
