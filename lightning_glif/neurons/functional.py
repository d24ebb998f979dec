r"""The neurons' dynamics: one membrane recurrence, and each neuron's map to its coefficients.

GLIF, GLIF_f, LIF and PLIF are all this recurrence over a time-first input ``x``
``[T, B, C, ...]``, with ``u[0] = 0`` and ``o[0] = 0``:

.. math::

    u[t] = a \, u[t-1] \, (1 - h \, o[t-1]) - l + b[t] \, x[t] - r \, o[t-1], \qquad
    o[t] = H(u[t] - V_{th})

``a`` (decay), ``h`` (share of multiplicative, "hard" reset), ``l`` (linear leak), ``r``
(subtractive, "soft" reset) and ``V_th`` are ``[C]`` per channel or scalars per layer; the input
gain ``b`` is ``[T, C]`` or ``[T]``. They broadcast over dim 2 (linear ``[T, B, C]`` and conv
``[T, B, C, H, W]`` layers alike). The terms are summed left to right as written, the GLIF
authors' order, so that their checkpoints give their spikes bit for bit. Each neuron's equation
is in its coefficient map's docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

SpikeFn = Callable[[torch.Tensor], torch.Tensor]  # a Surrogate, or any spike function


@dataclass
class MembraneCoefficients:
    """Coefficients of the recurrence (module docstring): ``[C]`` or ``[]``, ``gain`` ``[T, C]``
    or ``[T]``."""

    decay: torch.Tensor
    hard: torch.Tensor
    leak: torch.Tensor
    soft: torch.Tensor
    gain: torch.Tensor
    v_threshold: torch.Tensor

    def broadcast_to(self, trailing: int) -> MembraneCoefficients:
        """View per-channel coefficients as ``[C, 1, ...]`` to broadcast over ``[B, C, *S]``
        with ``trailing = len(S)``; scalars stay scalars."""

        def view(name: str) -> torch.Tensor:
            p = getattr(self, name)
            layer_wise = p.dim() == (1 if name == "gain" else 0)  # gain: [T]
            return p if layer_wise else p.reshape(*p.shape, *([1] * trailing))

        return MembraneCoefficients(**{f.name: view(f.name) for f in fields(self)})


def membrane_step(
    x_t: torch.Tensor,
    u: torch.Tensor,
    o: torch.Tensor,
    c: MembraneCoefficients,
    t: int,
    spike_fn: SpikeFn,
    detach_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u[t], o[t])`` from ``u[t-1], o[t-1]`` and ``x[t]``; ``c`` broadcasts against ``x_t``
    (:meth:`MembraneCoefficients.broadcast_to`). With ``detach_reset`` the spike in the reset
    terms carries no gradient (GLIF's authors keep it attached)."""
    r = o.detach() if detach_reset else o
    u = c.decay * u * (1 - c.hard * r) - c.leak + c.gain[t] * x_t - c.soft * r
    return u, spike_fn(u - c.v_threshold)


def membrane_sequence(
    x: torch.Tensor,
    c: MembraneCoefficients,
    spike_fn: SpikeFn,
    detach_reset: bool = False,
    return_membrane: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T, B, C, ...]`` of the recurrence over ``x`` of that shape (and, with
    ``return_membrane``, the membrane ``u[1..T]``): the reference loop that the fused engines
    are checked against."""
    c = c.broadcast_to(x.dim() - 3)
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    spikes, membrane = [], []
    for t in range(x.shape[0]):
        u, o = membrane_step(x[t], u, o, c, t, spike_fn, detach_reset)
        spikes.append(o)
        if return_membrane:
            membrane.append(u)
    if return_membrane:
        return torch.stack(spikes), torch.stack(membrane)
    return torch.stack(spikes)


@dataclass
class GLIFValues:
    """The values GLIF runs on, each in (0, 1) (a pinned gate may be 0 or 1): ``[C]`` or ``[]``,
    ``conductance`` ``[T, C]`` or ``[T]``. GLIF_f has no gates (``None``)."""

    alpha: torch.Tensor | None
    beta: torch.Tensor | None
    gamma: torch.Tensor | None
    tau: torch.Tensor
    v_threshold: torch.Tensor
    v_leak: torch.Tensor
    v_reset: torch.Tensor
    conductance: torch.Tensor


def glif_coefficients(v: GLIFValues) -> MembraneCoefficients:
    r"""GLIF (Yao et al., NeurIPS 2022, eq. 8-12): gates ``alpha`` (leakage), ``beta``
    (integration), ``gamma`` (reset) mix each pair of bio-features.

    .. math::

        I[t] &= (1 - \beta (1 - g[t])) \, x[t] \\
        u[t] &= (1 - \alpha (1 - \tau)) \, u[t-1] \, (1 - \gamma \, o[t-1])
                - (1 - \alpha) V_{leak} + I[t] - (1 - \gamma) V_{reset} \, o[t-1] \\
        o[t] &= H(u[t] - V_{th})

    ``alpha = 1``: exponential decay ``tau * u``; ``0``: linear decay ``u - V_leak``.
    ``beta = 1``: time-dependent conductance ``g[t] * x``; ``0``: ``x``.
    ``gamma = 1``: hard reset ``u * (1 - o)``; ``0``: soft reset ``u - V_reset * o``.
    """
    return MembraneCoefficients(
        decay=1 - v.alpha * (1 - v.tau),
        hard=v.gamma,
        leak=(1 - v.alpha) * v.v_leak,
        soft=(1 - v.gamma) * v.v_reset,
        gain=1 - v.beta * (1 - v.conductance),
        v_threshold=v.v_threshold,
    )


def gliff_coefficients(v: GLIFValues) -> MembraneCoefficients:
    r"""GLIF_f, the paper's "coarsely fused" neuron: every bio-feature at once, no gates.

    .. math:: u[t] = \tau \, u[t-1] \, (1 - o[t-1]) - V_{leak} + g[t] \, x[t] - V_{reset} \, o[t-1]
    """
    return MembraneCoefficients(
        decay=v.tau,
        hard=torch.ones_like(v.tau),
        leak=v.v_leak,
        soft=v.v_reset,
        gain=v.conductance,
        v_threshold=v.v_threshold,
    )


def check_reset(reset: str) -> None:
    """Raise a ValueError unless ``reset`` is ``"hard"`` or ``"soft"``."""
    if reset not in ("hard", "soft"):
        raise ValueError(f"reset must be 'hard' or 'soft', got {reset!r}.")


def lif_coefficients(
    decay: torch.Tensor,
    v_threshold: torch.Tensor,
    gain: torch.Tensor,
    reset: str,
) -> MembraneCoefficients:
    r"""LIF in SpikingJelly's convention: reset the fired membrane, then decay and charge.

    .. math::

        u[t] = \lambda \, \big(u[t-1] - R(u[t-1], o[t-1])\big) + b[t] \, x[t], \quad
        R = u \, o \ (\text{hard, to } 0) \ \text{or} \ V_{th} \, o \ (\text{soft})

    ``lambda`` is the decay factor (SpikingJelly's ``1 - 1/tau``); ``b = 1`` for LIF with
    ``decay_input=False``, ``b = 1 - lambda`` for PLIF (Fang et al., ICCV 2021).
    """
    check_reset(reset)
    zero = torch.zeros_like(decay)
    hard = reset == "hard"
    return MembraneCoefficients(
        decay=decay,
        hard=zero + 1 if hard else zero,
        leak=zero,
        soft=zero if hard else decay * v_threshold,
        gain=gain,
        v_threshold=v_threshold + zero,
    )
