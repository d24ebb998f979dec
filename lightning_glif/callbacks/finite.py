"""Stop training at the first non-finite loss or gradient, naming the step and the layer."""

from __future__ import annotations

import os
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.neurons.functional import membrane_sequence


class NonFiniteLossError(FloatingPointError):
    """Raised by :class:`NonFiniteGuard`; the message names the step and the layer."""


class NonFiniteGuard(Callback):
    """Raises :class:`NonFiniteLossError` when the training loss, or a gradient, is NaN or Inf.

    Both checks run before the optimizer step, so the broken step never updates the weights and
    no checkpoint is written after it: ``last.ckpt`` stays the last good one, to resume from
    (``--ckpt_path last``) after lowering the learning rate or fixing the data. The error names
    the global step, the epoch and batch, and the first neuron layer (in forward order, keyed by
    module name) whose parameters (gates, tau, threshold, ...), input current or membrane are
    non-finite, found by running that batch's forward once more without gradients.

    Why gradients too: a NaN membrane does not reach the loss, since ``NaN >= V_th`` is false and
    the layer just stops spiking; its gates then turn NaN through the backward pass first.

    Args:
        check_gradients: also stop at a non-finite gradient (skipped under ``16-mixed``, whose
            gradient scaler skips such steps by design).

    Cost: one ``isfinite`` on the loss and one fused norm over the gradients per step (a device
    sync each on a GPU).
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._batch: Any = None
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx):
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor
    ) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._stop(trainer, pl_module, f"non-finite training loss ({loss.detach().item()})")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer):
        if not self.check_gradients or trainer.precision == "16-mixed":
            return
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch._foreach_norm([g for _, g in named])
        if bool(torch.isfinite(torch.stack(norms)).all()):
            return
        first = next(n for (n, _), norm in zip(named, norms, strict=True) if not norm.isfinite())
        self._stop(trainer, pl_module, f"non-finite gradient (first: {first})")

    def _stop(self, trainer: Trainer, pl_module: LightningModule, what: str) -> None:
        culprit = self.first_non_finite_layer(trainer, pl_module, self._batch)
        where = (
            f"the first non-finite neuron layer is {culprit}"
            if culprit
            else "no neuron layer saw a non-finite value: the input data or the layers after "
            "the last neuron (the head, the logits) overflowed"
        )
        # The newest checkpoint: a last*.ckpt if a ModelCheckpoint writes one (conf/default.yaml).
        paths = [
            getattr(c, "last_model_path", "") or getattr(c, "best_model_path", "")
            for c in trainer.checkpoint_callbacks
        ]
        paths = [p for p in paths if p]
        last = next((p for p in paths if os.path.basename(p).startswith("last")), None)
        last = last or (paths[0] if paths else "")
        kept = f"; the last good checkpoint is kept: {last}" if last else ""
        raise NonFiniteLossError(
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}): {where}. Training stopped before this step's update{kept}."
        )

    @staticmethod
    def first_non_finite_layer(
        trainer: Trainer | None, pl_module: LightningModule, batch: Any
    ) -> str | None:
        """``"'name' (Type): what"`` for the first neuron in forward order whose input, parameters
        or membrane are non-finite on ``batch`` (``x`` or ``(x, y)``), else ``None``."""
        names = {m: n for n, m in pl_module.named_modules() if isinstance(m, SpikingNeuron)}
        found: list[str] = []

        def check(module: SpikingNeuron, args: tuple) -> None:
            if found:
                return
            what = NonFiniteGuard._diagnose(module, args[0])
            if what:
                found.append(f"'{names[module]}' ({type(module).__name__}): {what}")

        hooks = [m.register_forward_pre_hook(check) for m in names]
        x = batch[0] if isinstance(batch, list | tuple) else batch
        context = trainer.precision_plugin.forward_context() if trainer else torch.no_grad()
        try:
            with torch.no_grad(), context:
                pl_module(x)
        except Exception:  # noqa: BLE001 - the diagnosis must not hide the non-finite loss
            pass
        finally:
            for h in hooks:
                h.remove()
        return found[0] if found else None

    @staticmethod
    def _diagnose(neuron: SpikingNeuron, x: torch.Tensor) -> str | None:
        bad = [n for n, p in neuron.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            gates = {id(p) for p in neuron.gate_parameters()}
            kinds = [
                "gate" if id(p) in gates else "parameter"
                for n, p in neuron.named_parameters()
                if n in bad
            ]
            return "non-finite " + ", ".join(f"{k} {n}" for k, n in zip(kinds, bad, strict=True))
        if not torch.isfinite(x).all():
            return f"non-finite input current (shape {tuple(x.shape)}), so a non-finite membrane"
        with torch.autocast(x.device.type, enabled=False):
            _, u = membrane_sequence(
                x.float(), neuron.coefficients(), neuron.surrogate, return_membrane=True
            )
        if not torch.isfinite(u).all():
            t = int((~torch.isfinite(u)).flatten(1).any(1).nonzero()[0])
            return f"the membrane overflowed at time step {t} (finite input and parameters)"
        return None
