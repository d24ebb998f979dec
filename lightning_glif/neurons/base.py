"""The neuron contract (:class:`SpikingNeuron`), what a neuron reports to the monitors
(:class:`Observable`), and the neurons of the membrane recurrence (:class:`MembraneNeuron`)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .functional import MembraneCoefficients
from .fused import Backend, check_backend, membrane
from .surrogate import Rectangular, Surrogate


@dataclass(frozen=True)
class Observable:
    """One quantity of a neuron that :class:`~lightning_glif.callbacks.GateMonitor` logs: a
    histogram over channels, their mean and standard deviation.

    Args:
        group: ``"gates"`` (also drawn in the ``gates/evolution`` image) or ``"membrane"``; the
            first part of its tags (:func:`lightning_glif.training.tags.observable`).
        value: ``[C]`` or ``[]``; with ``per_step``, ``[T, C]`` or ``[T]``. Monitors detach it.
        per_step: one value set per time step (logged as one series per step).
    """

    group: Literal["gates", "membrane"]
    value: torch.Tensor
    per_step: bool = False

    def __post_init__(self) -> None:
        if self.group not in ("gates", "membrane"):
            raise ValueError(f"Observable group must be 'gates' or 'membrane', got {self.group!r}.")
        if not isinstance(self.value, torch.Tensor):
            raise TypeError(
                f"Observable value must be a torch.Tensor, got {type(self.value).__name__}: "
                "wrap numbers with torch.tensor(...)."
            )
        if self.per_step and self.value.dim() not in (1, 2):
            raise ValueError(
                f"a per-step Observable is [T] or [T, C], got shape {tuple(self.value.shape)}."
            )


class SpikingNeuron(nn.Module):
    """The contract every neuron meets: maps a time-first current ``[T, B, C, ...]`` to spikes.

    Built as ``Neuron(num_features, time_steps, **options)``, so that a backbone takes a factory
    ``neuron`` and calls ``neuron(C, T)`` per layer. Backbones, the optimizer's parameter groups
    and the monitors rely on this class only. Subclasses implement ``forward``.

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        time_steps: ``T`` (dim 0 of the input).
        surrogate: gradient stand-in for the spike; ``None`` means ``Rectangular(width=1.0)``,
            the GLIF authors' choice.
    """

    def __init__(
        self, num_features: int, time_steps: int, surrogate: Surrogate | None = None
    ) -> None:
        super().__init__()
        if int(num_features) < 1 or int(time_steps) < 1:
            raise ValueError(
                f"{type(self).__name__} needs num_features >= 1 and time_steps >= 1, got "
                f"num_features={num_features}, time_steps={time_steps}."
            )
        self.num_features = int(num_features)
        self.time_steps = int(time_steps)
        self.surrogate = surrogate if surrogate is not None else Rectangular()

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable gate latents: the optimizer's ``gates`` group (learning rate times
        ``gate_lr_factor``, weight decay ``neuron_weight_decay``). None by default."""
        return iter(())

    def membrane_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that are membrane constants (time constants, thresholds, leaks, resets):
        the optimizer's ``neuron`` group (learning rate times ``neuron_lr_factor``, weight decay
        ``neuron_weight_decay``). The neuron's other parameters (a recurrent weight, say) train
        with the network's weights, at the optimizer's weight decay. None by default."""
        return iter(())

    def observables(self) -> dict[str, Observable]:
        """The quantities a monitor should log, by name (``"alpha"``, ``"tau"``, ...). None by
        default."""
        return {}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming both shapes unless ``x`` is ``[T, B, C, ...]``."""
        T, C = self.time_steps, self.num_features
        if x.dim() >= 3 and x.shape[0] == T and x.shape[2] == C:
            return
        got = "rank < 3" if x.dim() < 3 else f"{x.shape[0]} time steps, {x.shape[2]} channels"
        raise ValueError(
            f"{type(self).__name__}({SpikingNeuron.extra_repr(self)}) got {got} (shape "
            f"{tuple(x.shape)}), expected time-first input [T={T}, B, C={C}, ...]: move time to "
            "dim 0 (x.transpose(0, 1) for [B, T, ...]); the data and the model must use the same "
            "time_steps."
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, time_steps={self.time_steps}"


class MembraneNeuron(SpikingNeuron, metaclass=ABCMeta):
    """A neuron defined by the membrane recurrence of :mod:`lightning_glif.neurons.functional`.

    Subclasses define :meth:`coefficients` (abstract), the map from their parameters to the
    recurrence; they share the forward pass (fused op or reference loop), the replay of
    :class:`~lightning_glif.callbacks.NonFiniteGuard`, and :meth:`membrane_parameters` (every
    parameter that is not a gate). The membrane lives only inside ``forward``: no state to reset.

    Args:
        num_features, time_steps, surrogate: as :class:`SpikingNeuron`.
        detach_reset: cut the gradient through the spike in the reset terms.
        backend: ``"auto"``: the fused op of :mod:`lightning_glif.neurons.fused` wherever it
            applies, else the reference loop; ``"fused"``: the fused op or a RuntimeError saying
            why not; ``"reference"``: the PyTorch loop. Same spikes either way.
    """

    def __init__(
        self,
        num_features: int,
        time_steps: int,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(num_features, time_steps, surrogate)
        self.detach_reset = bool(detach_reset)
        self.backend = check_backend(backend)

    @abstractmethod
    def coefficients(self) -> MembraneCoefficients:
        """The coefficients of the membrane recurrence, differentiable w.r.t. the parameters."""

    def membrane_parameters(self) -> Iterator[nn.Parameter]:
        gates = {id(p) for p in self.gate_parameters()}
        return (p for p in self.parameters() if id(p) not in gates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, C, ...]`` (0/1, in ``x``'s dtype) for input current ``x`` of that shape.

        Under autocast the membrane and the coefficients stay float32 (a bf16 membrane loses the
        small leaks and resets); the spikes come back in the input dtype.
        """
        self.check_input(x)
        with torch.autocast(x.device.type, enabled=False):
            return membrane(x, self.coefficients(), self.surrogate, self.detach_reset, self.backend)

    @property
    def binary_spikes(self) -> bool:
        """Whether the spikes are exactly 0/1, so that the layer they feed may keep them as 1 bit
        each for its backward: true of the fused kernels, and of the reference loop with a
        surrogate that keeps :class:`Surrogate`'s Heaviside ``forward``."""
        s = self.surrogate
        return isinstance(s, Surrogate) and type(s).forward is Surrogate.forward
