"""Stop training at the first non-finite loss or gradient, naming the step and the layer."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import nn

from lightning_glif.neurons.base import MembraneNeuron, SpikingNeuron
from lightning_glif.neurons.functional import membrane_sequence


def _floating(tensors: Iterable[torch.Tensor | None]) -> list[torch.Tensor]:
    """The floating-point and complex ``tensors``, dense (``None`` and integers skipped)."""
    return [
        t.to_dense() if t.layout != torch.strided else t
        for t in tensors
        if t is not None and (t.is_floating_point() or t.is_complex())
    ]


def non_finite(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """Whether any element of the floating-point ``tensors`` is NaN or Inf (``None`` and integer
    tensors skipped): a boolean scalar on the device, not read back to the host.

    Their largest absolute value (``get_total_norm`` with ``norm_type=inf``, fused per device and
    dtype) is non-finite exactly when an element is; a 2-norm's squares could overflow.
    """
    floats = _floating(tensors)
    if not floats:
        return torch.tensor(False)
    return ~torch.isfinite(torch.nn.utils.get_total_norm(floats, norm_type=math.inf))


def maybe_non_finite(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """A cheaper screen for :func:`non_finite`: true whenever it is, and also when finite values
    add up past their dtype's range (which :func:`non_finite` then clears). A boolean scalar on
    the device.

    The sum of all elements, one concatenation and one reduction per device (at least float32):
    NaN and Inf survive a sum. A few operations whatever the number of tensors, so it is the
    check made at every optimizer step (``benchmarks/loop_overhead.py``); the concatenation is a
    moment's copy of the tensors (4 bytes a float32 parameter).
    """
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in _floating(tensors):
        by_device.setdefault(t.device, []).append(t.flatten())
    if not by_device:
        return torch.tensor(False)
    flags = []
    for flat in by_device.values():
        flat = torch.cat(flat)  # mixed dtypes promote
        total = flat.sum(dtype=torch.promote_types(flat.dtype, torch.float32))
        flags.append(~torch.isfinite(total))
    first = flags[0].device
    return flags[0] if len(flags) == 1 else torch.stack([f.to(first) for f in flags]).any()


class NonFiniteLossError(FloatingPointError):
    """Raised by :class:`NonFiniteGuard`, naming the step and the layer."""


@dataclass
class Diagnosis:
    """What :meth:`NonFiniteGuard.diagnose` found.

    Attributes:
        culprit: ``"'name' (Type): what"`` of the first non-finite neuron layer, or ``None``.
        unreplayed: layers with finite parameters and input whose membrane could not be
            replayed (not a :class:`~lightning_glif.neurons.MembraneNeuron`), and their types.
        failure: ``"ExcType: message"`` if the re-run forward itself raised.
    """

    culprit: str | None = None
    unreplayed: list[str] = field(default_factory=list)
    unreplayed_types: set[str] = field(default_factory=set)
    failure: str | None = None

    def describe(self, broken: dict[str, list[str]] | None = None) -> str:
        """The clause of the error message: the culprit, or why none was found. ``broken``: the
        parameters with a non-finite gradient by layer (:meth:`NonFiniteGuard.by_layer`)."""
        if self.culprit:
            return f"the first non-finite neuron layer is {self.culprit}"
        if self.failure:
            return (
                f"the diagnosis failed: {self.failure} (raised by this batch's forward re-run to "
                "find the layer), so no layer is named: run that forward by hand to see where"
            )
        seen = "no neuron layer saw a non-finite value: "
        cause = (
            "the input data or the layers after the last neuron (the head, the logits) overflowed"
        )
        if broken:  # the loss was finite (checked first): the backward pass overflowed
            listed = "; ".join(f"{layer}: {', '.join(ps)}" for layer, ps in broken.items())
            one = len(broken) == 1
            seen = (
                "the loss and the forward pass on this batch are finite (no neuron layer saw a "
                "non-finite parameter, input or membrane), so "
            )
            cause = (
                f"the backward pass overflowed, in the {'only layer' if one else 'layers'} with "
                f"non-finite gradients ({listed}): lower the learning rate of "
                f"{'its' if one else 'their'} parameters (of gates: also model.gate_lr_factor)"
            )
        if not self.unreplayed:
            return seen + cause
        layers = ", ".join(f"'{n}'" for n in self.unreplayed)
        kinds = ", ".join(sorted(self.unreplayed_types))
        return (
            "no neuron layer saw a non-finite parameter, input or replayed membrane, but the "
            f"membrane of {layers} ({kinds}) cannot be replayed (not a MembraneNeuron): it may "
            f"have overflowed inside with finite parameters and input, or {cause}"
        )


class NonFiniteGuard(Callback):
    """Raises :class:`NonFiniteLossError` when the training loss or a gradient is NaN or Inf.

    Both are checked before the optimizer step, so the broken step is not applied and
    ``last.ckpt`` stays the last good one (``--ckpt_path last`` after lowering the learning rate
    or fixing the data). The error names the global step, epoch and batch, and the first neuron
    layer (forward order) whose parameters, input current or membrane are non-finite, found by
    re-running that batch's forward without gradients (:meth:`diagnose`). Gradients too, since a
    NaN membrane does not reach the loss (``NaN >= V_th`` is false: the layer stops spiking).

    Cost per optimizer step: one sum over the losses since the last step and the gradients, on
    the device (:func:`maybe_non_finite`), then one flag read back to the host: the one per-step
    host read of the shipped callbacks, since the decision must precede the update (as
    ``GradScaler``'s skipped steps). Under gradient accumulation the first broken batch is named.

    Args:
        check_gradients: also stop at a non-finite gradient (skipped under ``16-mixed``, whose
            gradient scaler skips such steps by design).
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._batch: Any = None
        self._batch_idx = -1
        self._losses: list[tuple[int, Any, torch.Tensor]] = []  # since the last optimizer step
        self._params: list[nn.Parameter] = []  # listed once per fit

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._params = list(pl_module.parameters())
        self._losses = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx):
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._losses.append((self._batch_idx, self._batch, loss.detach()))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer):
        losses, self._losses = self._losses, []
        gradients = self.check_gradients and trainer.precision != "16-mixed"
        checked = [loss for _, _, loss in losses]
        if gradients:
            checked += [p.grad for p in self._params or pl_module.parameters()]
        # The one host read per step: stop before the update is applied.
        if not bool(maybe_non_finite(checked)):
            return
        # The screen fired: find what is broken, exactly (finite values may just have summed
        # past float32's range, and then the step goes on).
        for batch_idx, batch, loss in losses:
            if not torch.isfinite(loss).all():
                self._batch, self._batch_idx = batch, batch_idx
                shown = loss.item() if loss.numel() == 1 else loss.tolist()
                self._stop(trainer, pl_module, f"non-finite training loss ({shown})")
        if not gradients:
            return
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        bad = [n for n, g in named if bool(non_finite([g]))]
        if bad:
            what = f"non-finite gradient (first: {bad[0]})"
            self._stop(trainer, pl_module, what, broken=self.by_layer(pl_module, bad))

    @staticmethod
    def by_layer(pl_module: nn.Module, names: list[str]) -> dict[str, list[str]]:
        """Parameter names grouped by layer, in parameter order, gate latents marked:
        ``{"'layer' (Type)": ["gate alpha_latent", "weight", ...]}``."""
        layers: dict[str, list[str]] = {}
        for name in names:
            prefix, _, own = name.rpartition(".")
            module = pl_module.get_submodule(prefix)
            gates = module.gate_parameters() if isinstance(module, SpikingNeuron) else ()
            kind = "gate " if any(p is getattr(module, own) for p in gates) else ""
            label = f"'{prefix or '(the module)'}' ({type(module).__name__})"
            layers.setdefault(label, []).append(kind + own)
        return layers

    def _stop(self, trainer: Trainer, pl_module: LightningModule, what: str, broken=None) -> None:
        where = self.diagnose(trainer, pl_module, self._batch).describe(broken)
        # The newest checkpoint: a last*.ckpt if a ModelCheckpoint writes one.
        paths = [
            getattr(c, "last_model_path", "") or getattr(c, "best_model_path", "")
            for c in trainer.checkpoint_callbacks
        ]
        paths = sorted(
            filter(None, paths), key=lambda p: not os.path.basename(p).startswith("last")
        )
        kept = f"; the last good checkpoint is kept: {paths[0]}" if paths else ""
        raise NonFiniteLossError(
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}): {where}. Training stopped before this step's update{kept}."
        )

    @staticmethod
    def diagnose(trainer: Trainer | None, pl_module: LightningModule, batch: Any) -> Diagnosis:
        """Re-run ``pl_module``'s forward on ``batch`` (``x`` or ``(x, y)``) without gradients,
        checking each neuron as it is called (:func:`neuron_problem`): the first culprit in
        forward order, what could not be replayed, and the error should the forward raise."""
        names = {m: n for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)}
        result = Diagnosis()

        def check(module: SpikingNeuron, args: tuple) -> None:
            if result.culprit:
                return
            what = neuron_problem(module, args[0])
            if what:
                result.culprit = f"'{names[module]}' ({type(module).__name__}): {what}"
            elif not isinstance(module, MembraneNeuron) and names[module] not in result.unreplayed:
                result.unreplayed.append(names[module])
                result.unreplayed_types.add(type(module).__name__)

        hooks = [m.register_forward_pre_hook(check) for m in names]
        x = batch[0] if isinstance(batch, list | tuple) else batch
        context = trainer.precision_plugin.forward_context() if trainer else torch.no_grad()
        try:
            with torch.no_grad(), context:
                pl_module(x)
        except Exception as e:  # noqa: BLE001 - reported; the NonFiniteLossError still raised
            result.failure = f"{type(e).__name__}: {e}"
        finally:
            for h in hooks:
                h.remove()
        return result

    @staticmethod
    def first_non_finite_layer(
        trainer: Trainer | None, pl_module: LightningModule, batch: Any
    ) -> str | None:
        """The culprit of :meth:`diagnose` (``"'name' (Type): what"``), or ``None``."""
        return NonFiniteGuard.diagnose(trainer, pl_module, batch).culprit


def neuron_problem(neuron: SpikingNeuron, x: torch.Tensor) -> str | None:
    """What is non-finite in ``neuron`` on input current ``x``: a parameter (gates named), the
    input, or the membrane replayed by the recurrence (a
    :class:`~lightning_glif.neurons.MembraneNeuron` only); ``None`` if nothing is."""
    gates = {id(p) for p in neuron.gate_parameters()}
    bad = [
        f"{'gate' if id(p) in gates else 'parameter'} {n}"
        for n, p in neuron.named_parameters()
        if not torch.isfinite(p).all()
    ]
    if bad:
        return "non-finite " + ", ".join(bad)
    if not torch.isfinite(x).all():
        return f"non-finite input current (shape {tuple(x.shape)}), so a non-finite membrane"
    if not isinstance(neuron, MembraneNeuron):
        return None  # no recurrence known to replay
    with torch.autocast(x.device.type, enabled=False):
        _, u = membrane_sequence(
            x.float(), neuron.coefficients(), neuron.surrogate, return_membrane=True
        )
    if not torch.isfinite(u).all():
        t = int((~torch.isfinite(u)).flatten(1).any(1).nonzero()[0])
        return f"the membrane overflowed at time step {t} (finite input and parameters)"
    return None
