"""What every spiking neuron module of the project shares."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .functional import MembraneCoefficients
from .fused import BACKENDS, Backend, membrane
from .surrogate import Rectangular, Surrogate


class SpikingNeuron(nn.Module):
    """Base of the neuron modules: maps a time-first current ``[T, B, C, ...]`` to spikes.

    Every neuron is built as ``Neuron(num_features, time_steps, **options)`` so that backbones can
    take a factory ``neuron: Callable[[int, int], nn.Module]`` and call ``neuron(C, T)`` per layer.
    The membrane state lives only inside ``forward``: there is nothing to reset between batches.

    Subclasses define :meth:`coefficients`, the map from their parameters to the membrane
    recurrence of :mod:`lightning_glif.neurons.functional`; the forward pass is shared.

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        time_steps: ``T`` (dim 0 of the input).
        surrogate: gradient stand-in for the spike; ``None`` means ``Rectangular(width=1.0)``,
            the GLIF authors' choice.
        detach_reset: cut the gradient through the spike in the reset terms.
        backend: ``"auto"``: the fused op of :mod:`lightning_glif.neurons.fused` (C kernel on CPU,
            Triton on CUDA) wherever it applies, else the reference loop; ``"fused"``: the fused
            op or a RuntimeError saying why not; ``"reference"``: the PyTorch loop
            :func:`~lightning_glif.neurons.functional.membrane_sequence`. Same spikes either way.
    """

    def __init__(
        self,
        num_features: int,
        time_steps: int,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        backend: Backend = "auto",
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
        self.detach_reset = bool(detach_reset)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
        self.backend = backend

    def coefficients(self) -> MembraneCoefficients:
        """The coefficients of the membrane recurrence, differentiable w.r.t. the parameters."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, C, ...]`` (0/1, in ``x``'s dtype) for input current ``x`` of that shape.

        Under autocast the membrane and the coefficients are kept in float32 (a bf16 membrane
        loses the small leaks and resets); the spikes come back in the input dtype.
        """
        self.check_input(x)
        with torch.autocast(x.device.type, enabled=False):
            return membrane(x, self.coefficients(), self.surrogate, self.detach_reset, self.backend)

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable gate latents (trained at their own learning-rate factor). None by default."""
        return iter(())

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming both shapes unless ``x`` is ``[T, B, C, ...]``."""
        expected = f"[T={self.time_steps}, B, C={self.num_features}, ...]"
        if x.dim() < 3:
            raise ValueError(
                f"{self._describe()} expects time-first input {expected} of rank >= 3, got shape "
                f"{tuple(x.shape)}. Move time to dim 0 (e.g. x.transpose(0, 1) for [B, T, ...])."
            )
        if x.shape[0] != self.time_steps:
            raise ValueError(
                f"{self._describe()} got {x.shape[0]} time steps (input shape {tuple(x.shape)}, "
                f"expected {expected}): the data and the model must use the same time_steps."
            )
        if x.shape[2] != self.num_features:
            raise ValueError(
                f"{self._describe()} got {x.shape[2]} channels in dim 2 (input shape "
                f"{tuple(x.shape)}, expected {expected})."
            )

    def _describe(self) -> str:
        name = type(self).__name__
        return f"{name}(num_features={self.num_features}, time_steps={self.time_steps})"

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, time_steps={self.time_steps}"
