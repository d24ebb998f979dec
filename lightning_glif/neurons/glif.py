"""GLIF and GLIF_f: they own the latent parameters; their equations are in
:mod:`lightning_glif.neurons.functional` (:func:`glif_coefficients`, :func:`gliff_coefficients`)."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from .base import MembraneNeuron, Observable
from .functional import GLIFValues, MembraneCoefficients, glif_coefficients, gliff_coefficients
from .fused import Backend
from .surrogate import Surrogate

GATES = ("alpha", "beta", "gamma")
MEMBRANE = ("tau", "v_threshold", "v_leak", "v_reset", "conductance")
GATE_MODES = ("soft", "hard", "static", "static_hard")
GateMode = Literal["soft", "hard", "static", "static_hard"] | float
Granularity = Literal["channel", "layer"]


def _logit(value: float, what: str) -> float:
    """Latent ``z`` with ``sigmoid(z) = value``, how every GLIF quantity is stored."""
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"{what} is stored as sigmoid(latent): it must lie in (0, 1), got {value}."
        )
    return math.log(value / (1.0 - value))


class _SigmoidMembrane(MembraneNeuron):
    """GLIF's and GLIF_f's membrane parameters: latents, used as sigmoid(latent)."""

    def __init__(self, num_features: int, time_steps: int, granularity: str, *options) -> None:
        super().__init__(num_features, time_steps, *options)  # surrogate, detach_reset, backend
        if granularity not in ("channel", "layer"):
            raise ValueError(f"granularity must be 'channel' or 'layer', got {granularity!r}.")
        self.granularity = granularity
        self.param_shape: tuple[int, ...] = (self.num_features,) if granularity == "channel" else ()

    def _register_latent(self, name: str, latent: torch.Tensor, trainable: bool) -> None:
        if trainable:
            self.register_parameter(name, nn.Parameter(latent))
        else:
            self.register_buffer(name, latent)

    def _register_membrane(self, learn: bool, *init: float) -> None:
        """The latents of ``MEMBRANE`` from their initial values (the conductance's per step)."""
        for name, value in zip(MEMBRANE, init, strict=True):
            shape = self.param_shape
            if name == "conductance":
                shape = (self.time_steps, *shape)
            z = _logit(value, f"{type(self).__name__} {name}")
            self._register_latent(f"{name}_latent", torch.full(shape, z), learn)

    def _membrane_values(self) -> dict[str, torch.Tensor]:
        return {n: torch.sigmoid(getattr(self, f"{n}_latent")) for n in MEMBRANE}

    @abstractmethod
    def values(self) -> GLIFValues:
        """The constrained values the forward pass uses, differentiable w.r.t. the latents."""

    def observables(self) -> dict[str, Observable]:
        """:meth:`values`: the gates (GLIF only) in group ``"gates"``; tau, v_threshold, v_leak,
        v_reset and the per-step conductance in group ``"membrane"``."""
        values = self.values()
        out: dict[str, Observable] = {}
        for name in (*GATES, *MEMBRANE):
            if (value := getattr(values, name)) is not None:  # GLIF_f has no gates
                group = "gates" if name in GATES else "membrane"
                out[name] = Observable(group, value, per_step=name == "conductance")
        return out


class GLIF(_SigmoidMembrane):
    """Gated Leaky Integrate-and-Fire neuron (Yao et al., NeurIPS 2022): the dynamics of
    :func:`lightning_glif.neurons.functional.glif_coefficients`, every gate and membrane quantity
    a latent ``z`` used as ``sigmoid(z)``.

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        time_steps: ``T`` (dim 0 of the input); the conductance has one value per step.
        alpha: leakage gate mode. ``"soft"``: sigmoid of a learnable latent (the paper's method).
            ``"hard"``: binary ``1[sigmoid(z) > 0.5]`` forward, straight-through backward.
            ``"static"``: frozen. ``"static_hard"``: binary and frozen (the authors'
            ``--static-gate``). A number in ``[0, 1]``: pinned (``1``: exponential decay only).
        beta: integration gate mode, as ``alpha`` (``1``: conductance ``g[t] x``, ``0``: ``x``).
        gamma: reset gate mode, as ``alpha`` (``1``: hard reset, ``0``: soft reset).
        granularity: ``"channel"`` (one value per channel, every reported model) or ``"layer"``
            (scalars; conductance ``[T]``).
        tau: initial exponential decay factor, in (0, 1).
        v_threshold: initial firing threshold, in (0, 1).
        v_leak: initial linear decay constant, in (0, 1) (the authors: ``v_threshold / 8``).
        v_reset: initial soft-reset voltage, in (0, 1).
        conductance: initial time-dependent conductance ``g[t]`` for every step, in (0, 1).
        gate_init: ``"random"``: gate latents uniform in (-0.1, 0.1), gates near 0.5 (the paper's
            runs). A number, or one per gate ``(alpha, beta, gamma)``: the initial gate values.
        gate_init_convention: ``"exact"``: a numeric ``gate_init`` is the initial gate, strictly
            inside (0, 1). ``"authors"``: the GLIF authors' fixed init, ``0.25 + 0.5 g``
            channel-wise and ``0.75 - 0.5 g`` layer-wise for ``g`` in [0, 1].
        learn_membrane: train tau, thresholds, leak, reset and conductance (else frozen).
        surrogate: gradient stand-in for the spike; ``None`` means ``Rectangular(width=1.0)``.
        detach_reset: cut the gradient through the spike in the reset path (the authors keep it).
        backend: ``"auto"``, ``"fused"`` or ``"reference"``; see
            :class:`~lightning_glif.neurons.base.MembraneNeuron`.
    """

    def __init__(
        self,
        num_features: int,
        time_steps: int,
        *,
        alpha: GateMode = "soft",
        beta: GateMode = "soft",
        gamma: GateMode = "soft",
        granularity: Granularity = "channel",
        tau: float = 0.25,
        v_threshold: float = 0.5,
        v_leak: float = 0.0625,
        v_reset: float = 0.5,
        conductance: float = 0.5,
        gate_init: Literal["random"] | float | tuple[float, float, float] = "random",
        gate_init_convention: Literal["exact", "authors"] = "exact",
        learn_membrane: bool = True,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(num_features, time_steps, granularity, surrogate, detach_reset, backend)
        modes = {"alpha": alpha, "beta": beta, "gamma": gamma}
        self.gate_modes = {g: self._check_mode(g, m) for g, m in modes.items()}
        if gate_init_convention not in ("exact", "authors"):
            raise ValueError(
                f"GLIF gate_init_convention={gate_init_convention!r}: use 'exact' or 'authors'."
            )
        self.gate_init_convention = gate_init_convention
        inits = self._gate_inits(gate_init, gate_init_convention == "authors", granularity)
        for g, mode in self.gate_modes.items():
            if isinstance(mode, float):
                self.register_buffer(f"{g}_pinned", torch.full(self.param_shape, mode))
                continue
            if inits[g] is None:
                latent = torch.empty(self.param_shape).uniform_(-0.1, 0.1)
            else:
                latent = torch.full(self.param_shape, _logit(inits[g], f"GLIF gate_init for {g}"))
            self._register_latent(f"{g}_latent", latent, trainable=mode in ("soft", "hard"))
        self._register_membrane(learn_membrane, tau, v_threshold, v_leak, v_reset, conductance)

    @staticmethod
    def _check_mode(gate: str, mode: GateMode) -> str | float:
        if isinstance(mode, str) and mode in GATE_MODES:
            return mode
        if isinstance(mode, int | float) and not isinstance(mode, bool) and 0 <= mode <= 1:
            return float(mode)
        raise ValueError(
            f"GLIF gate {gate}={mode!r} is not a gate mode: use one of {', '.join(GATE_MODES)} "
            "or a number in [0, 1] that pins the gate."
        )

    @staticmethod
    def _gate_inits(gate_init, authors: bool, granularity: str) -> dict[str, float | None]:
        """Each gate's initial value (``None``: random)."""
        if gate_init == "random":
            return dict.fromkeys(GATES)
        if isinstance(gate_init, int | float) and not isinstance(gate_init, bool):
            gate_init = [gate_init] * 3
        if not (isinstance(gate_init, list | tuple) and len(gate_init) == 3):
            raise ValueError(
                f"GLIF gate_init={gate_init!r}: use 'random', one value in (0, 1) for all gates, "
                "or three values (alpha, beta, gamma)."
            )
        values = [float(v) for v in gate_init]
        if authors:  # docs/GLIF_SPEC.md section 3
            if not all(0.0 <= v <= 1.0 for v in values):
                raise ValueError(
                    f"gate_init under the authors' convention must be in [0, 1], got {gate_init}."
                )
            values = [
                0.25 + 0.5 * v if granularity == "channel" else 0.75 - 0.5 * v for v in values
            ]
        return dict(zip(GATES, values, strict=True))

    def _gate(self, gate: str) -> torch.Tensor:
        mode = self.gate_modes[gate]
        if isinstance(mode, float):
            return getattr(self, f"{gate}_pinned")
        g = torch.sigmoid(getattr(self, f"{gate}_latent"))
        if mode == "static_hard":  # a buffer: no gradient to pass through
            return (g > 0.5).to(g.dtype)
        if mode == "hard":
            # Straight-through: forward the binary gate, backward the gradient of sigmoid(z).
            # (b - g) + g is exact in float for b in {0, 1} and g in (0, 1) on the matching side.
            g = g + ((g > 0.5).to(g.dtype) - g).detach()
        return g

    def values(self) -> GLIFValues:
        return GLIFValues(**{g: self._gate(g) for g in GATES}, **self._membrane_values())

    def coefficients(self) -> MembraneCoefficients:
        return glif_coefficients(self.values())

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        for g, mode in self.gate_modes.items():
            if mode in ("soft", "hard"):
                yield getattr(self, f"{g}_latent")

    def extra_repr(self) -> str:
        modes = ", ".join(f"{g}={m!r}" for g, m in self.gate_modes.items())
        return f"{super().extra_repr()}, {modes}, granularity={self.granularity!r}"


class GLIFf(_SigmoidMembrane):
    """GLIF_f, the paper's coarsely fused neuron: every bio-feature at once, no gates.

    Dynamics: :func:`lightning_glif.neurons.functional.gliff_coefficients`. The arguments are
    :class:`GLIF`'s.
    """

    def __init__(
        self,
        num_features: int,
        time_steps: int,
        *,
        granularity: Granularity = "channel",
        tau: float = 0.25,
        v_threshold: float = 0.5,
        v_leak: float = 0.0625,
        v_reset: float = 0.5,
        conductance: float = 0.5,
        learn_membrane: bool = True,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(num_features, time_steps, granularity, surrogate, detach_reset, backend)
        self._register_membrane(learn_membrane, tau, v_threshold, v_leak, v_reset, conductance)

    def values(self) -> GLIFValues:
        return GLIFValues(alpha=None, beta=None, gamma=None, **self._membrane_values())

    def coefficients(self) -> MembraneCoefficients:
        return gliff_coefficients(self.values())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, granularity={self.granularity!r}"
