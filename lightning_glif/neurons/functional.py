r"""Pure dynamics of the neurons: one membrane recurrence, and the maps from each neuron's
parameters to its coefficients.

Every neuron of the project (GLIF, GLIF_f, LIF, PLIF) is an instance of one recurrence over
time-first input ``x`` of shape ``[T, B, C, ...]``, with ``u[0] = 0`` and ``o[0] = 0``:

.. math::

    u[t] = a \, u[t-1] \, (1 - h \, o[t-1]) - l + b[t] \, x[t] - r \, o[t-1], \qquad
    o[t] = H(u[t] - V_{th})

``a`` (decay), ``h`` (share of multiplicative, "hard" reset), ``l`` (linear leak), ``r``
(subtractive, "soft" reset) and ``V_th`` are per channel ``[C]`` or per layer (scalars);
``b`` (input gain) is ``[T, C]`` or ``[T]``. Coefficients broadcast over dim 2 of the input, so
the same code serves linear ``[T, B, C]`` and conv ``[T, B, C, H, W]`` layers. The reset of step
``t-1``'s spike is applied at step ``t``; ``H`` is a
:class:`~lightning_glif.neurons.surrogate.Surrogate`. The terms are summed left to right in the
order written, the GLIF authors' order (their ``LIFSpike_CW``), so that their checkpoints give
their spikes bit for bit (float addition is not associative;
``tests/test_authors_arithmetic.py``).
Each neuron's equation lives in the docstring of its coefficient map below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

SpikeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MembraneCoefficients:
    """Coefficients of the membrane recurrence (module docstring); shapes ``[C]`` or ``[]``,
    ``gain`` ``[T, C]`` or ``[T]``."""

    decay: torch.Tensor
    hard: torch.Tensor
    leak: torch.Tensor
    soft: torch.Tensor
    gain: torch.Tensor
    v_threshold: torch.Tensor

    def broadcast_to(self, trailing: int) -> MembraneCoefficients:
        """View per-channel coefficients as ``[C, 1, ...]`` to broadcast over ``[B, C, *S]``
        with ``trailing = len(S)``; scalars stay scalars."""

        def view(p: torch.Tensor, lead: int) -> torch.Tensor:
            if p.dim() == lead:  # layer-wise scalar (after the leading time dim, if any)
                return p
            return p.reshape(*p.shape, *([1] * trailing))

        lead = {"gain": 1}  # gain carries a leading time dim
        return MembraneCoefficients(
            **{f.name: view(getattr(self, f.name), lead.get(f.name, 0)) for f in fields(self)}
        )


def membrane_step(
    x_t: torch.Tensor,
    u: torch.Tensor,
    o: torch.Tensor,
    c: MembraneCoefficients,
    t: int,
    spike_fn: SpikeFn,
    detach_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence: returns ``(u[t], o[t])`` from ``u[t-1], o[t-1]`` and ``x[t]``.

    ``c`` must already broadcast against ``x_t`` (:meth:`MembraneCoefficients.broadcast_to`);
    ``t`` indexes ``c.gain``. With ``detach_reset`` the spike in the reset terms carries no
    gradient (GLIF's authors keep it attached).
    """
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
    """Run the recurrence over ``x`` ``[T, B, C, ...]``: spikes of the same shape (and, with
    ``return_membrane``, the membrane trajectory ``u[1..T]`` too). A loop of
    :func:`membrane_step`; this is the reference the fused paths are checked against."""
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
    """The constrained values GLIF runs on, each in (0, 1) (a pinned gate may be 0 or 1).

    Shapes ``[C]`` channel-wise or ``[]`` layer-wise; ``conductance`` ``[T, C]`` or ``[T]``.
    GLIF_f has no gates: its ``alpha``, ``beta``, ``gamma`` are ``None``.
    """

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
    one = torch.ones_like(v.tau)
    return MembraneCoefficients(
        decay=v.tau,
        hard=one,
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


def glif_step(x_t, u, o, values: GLIFValues, t: int, spike_fn: SpikeFn):
    """One GLIF step (:func:`glif_coefficients`) on ``x_t`` ``[B, C, ...]``."""
    c = glif_coefficients(values).broadcast_to(x_t.dim() - 2)
    return membrane_step(x_t, u, o, c, t, spike_fn)


def glif_sequence(x: torch.Tensor, values: GLIFValues, spike_fn: SpikeFn, **kwargs):
    """GLIF over ``x`` ``[T, B, C, ...]`` (:func:`glif_coefficients`, :func:`membrane_sequence`)."""
    return membrane_sequence(x, glif_coefficients(values), spike_fn, **kwargs)
