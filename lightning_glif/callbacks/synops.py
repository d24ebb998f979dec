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
    """Multiply-accumulates of one dense forward call: ``output elements x fan-in``.

    Fan-in is ``in_features`` (linear) or ``in_channels / groups x prod(kernel_size)`` (conv);
    the bias is not counted.
    """
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def pad_widths(conv: nn.Module) -> list[int]:
    """The widths ``F.pad`` takes (last dim first, left then right) for the padding of ``conv``:
    its ``padding`` as numbers, or ``"same"`` (``dilation x (kernel - 1)`` in all, the odd one
    on the right, as torch pads) or ``"valid"`` (none)."""
    if conv.padding == "valid":
        per_dim = [(0, 0)] * len(conv.kernel_size)
    elif conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        per_dim = [(t // 2, t - t // 2) for t in total]
    else:
        per_dim = [(p, p) for p in conv.padding]
    return [width for pair in reversed(per_dim) for width in pair]


def synaptic_events(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Accumulates an event-driven layer does for input ``x``: one per nonzero input per synapse.

    Linear (``x`` ``[..., in_features]``): ``nonzero(x) x out_features``. Conv (``x``
    ``[N, C_in, *S]``): a convolution of the nonzero mask with an all-ones kernel (same stride,
    padding, dilation and groups, channels summed per group) counts, for every output position,
    the nonzero inputs in its receptive field; their sum times ``out_channels / groups`` is the
    exact count, zero padding and borders included. Returns an int64 scalar on ``x.device``.
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
    """Synaptic operations (SOPs) per sample and the energy they would cost, logged per epoch.

    Counts what the forward pass of every ``nn.Linear`` / ``nn.Conv{1,2,3}d`` (found by type,
    keyed by module name, wrapped in ``TimeDistributed`` or not) actually runs:

    - MAC layers (by default the first synaptic layer the forward pass reaches, which sees the
      real-valued encoded input): ``MACs = output elements x fan-in`` (:func:`dense_macs`).
      Under direct encoding ``TimeDistributed`` runs the first layer once for all T steps, and
      it is counted once.
    - every other layer is spike-driven: ``ACs = nonzero inputs x synapses each reaches``
      (:func:`synaptic_events`, exact for convs with padding). An input that is not 0/1 (average-
      pooled spikes, SEW sums) still counts one AC per nonzero value: an estimate there.

    ``energy = ACs x energy_ac + MACs x energy_mac``, with the 45 nm CMOS figures of Horowitz
    (ISSCC 2014) for 32-bit float by default: 0.9 pJ per AC, 4.6 pJ per MAC. Memory access,
    neuron updates and biases are not counted: like the papers, a lower bound for comparison.
    Counts are int64 on the device, summed over DDP ranks at epoch end; rank 0 logs

    - ``synops/<stage>/<layer>/ac`` or ``.../mac``: operations of that layer per sample;
    - ``synops/<stage>/ac`` and ``synops/<stage>/mac``: totals per sample;
    - ``energy/<stage>/uJ``: energy per sample in microjoules.

    The scalars of a stage's latest epoch are also in ``last[stage]``
    (:class:`~lightning_glif.callbacks.hooks.ForwardHookMonitor`).

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
        self._acs: dict[str, dict[str, torch.Tensor]] = {}
        self._macs: dict[str, dict[str, int]] = {}

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
        device = pl_module.device
        self._acs[stage] = {
            n: torch.zeros((), dtype=torch.int64, device=device) for n in self._layers
        }
        # Tensors, not Python ints: see FiringRateMonitor.reset (torch.compile guards).
        self._macs[stage] = {
            n: torch.zeros((), dtype=torch.int64, device=device) for n in self._layers
        }

    def observe(
        self, stage: str, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
    ) -> None:
        if self._mac is None:  # the first layer to run is the one fed the encoded input
            self._mac = {name}
        if name in self._mac:
            self._macs[stage][name].add_(dense_macs(module, output))
        else:
            self._acs[stage][name].add_(synaptic_events(module, inputs[0]))

    def report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        names = list(self._layers)
        if not names:
            return
        device = pl_module.device
        samples = torch.tensor([self.samples[stage]], dtype=torch.int64, device=device)
        counts = torch.stack([self._acs[stage][n] for n in names])
        macs = torch.stack([self._macs[stage][n] for n in names])
        counts = torch.cat([counts, macs, samples])
        counts = self.all_sum(trainer, counts).tolist()
        if not trainer.is_global_zero:
            return
        samples = counts[-1]
        if samples == 0:
            return
        acs, macs = counts[: len(names)], counts[len(names) : 2 * len(names)]
        mac_layers = self._mac or set()
        scalars: dict[str, float] = {}
        for name, ac, mac in zip(names, acs, macs, strict=True):
            kind, ops = ("mac", mac) if name in mac_layers else ("ac", ac)
            scalars[tags.synops(stage, kind, name)] = ops / samples
        ac, mac = sum(acs) / samples, sum(macs) / samples
        scalars[tags.synops(stage, "ac")] = ac
        scalars[tags.synops(stage, "mac")] = mac
        scalars[tags.energy(stage)] = (ac * self.energy_ac + mac * self.energy_mac) * 1e-6
        self.publish(trainer, stage, scalars)
