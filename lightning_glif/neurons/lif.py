"""LIF-family baselines: LIF (fixed decay and threshold) and PLIF (learnable decay); dynamics in
:func:`lightning_glif.neurons.functional.lif_coefficients` (reset, then decay and charge)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .base import MembraneNeuron, Observable
from .functional import MembraneCoefficients, check_reset, lif_coefficients
from .fused import Backend
from .surrogate import Surrogate

Reset = Literal["hard", "soft"]


def _check_open_unit(value: float, what: str) -> float:
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{what} must lie strictly inside (0, 1), got {value}.")
    return float(value)


class LIF(MembraneNeuron):
    """Leaky integrate-and-fire with a fixed decay and threshold: ``u[t] = decay * (u[t-1] -
    reset) + x[t]``, SpikingJelly's ``LIFNode(tau=1/(1-decay), decay_input=False, v_reset=0.0 or
    None)`` but firing on ``u > v_threshold`` (SpikingJelly: ``>=``).

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        time_steps: ``T`` (dim 0 of the input).
        decay: membrane decay factor per step, in (0, 1) (SpikingJelly's ``1 - 1/tau``). The
            default 0.25 is GLIF's initial ``tau``: a default LIF is GLIF's corner
            ``alpha=1, beta=0, gamma=1`` at initialisation, the ablations' baseline.
        v_threshold: firing threshold (0.5 matches the tdBN normalisation of the backbones).
        reset: ``"hard"`` (to 0) or ``"soft"`` (subtract the threshold).
        detach_reset: cut the gradient through the spike in the reset.
        surrogate: gradient stand-in for the spike; ``None`` means ``Rectangular(width=1.0)``.
        backend: ``"auto"``, ``"fused"`` or ``"reference"``; see
            :class:`~lightning_glif.neurons.base.MembraneNeuron`.
    """

    def __init__(
        self,
        num_features: int,
        time_steps: int,
        *,
        decay: float = 0.25,
        v_threshold: float = 0.5,
        reset: Reset = "hard",
        detach_reset: bool = False,
        surrogate: Surrogate | None = None,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(num_features, time_steps, surrogate, detach_reset, backend)
        check_reset(reset)
        self.reset = reset
        self.register_buffer("decay", torch.tensor(_check_open_unit(decay, "LIF decay")))
        self.register_buffer("v_threshold", torch.tensor(float(v_threshold)))
        self.register_buffer("gain", torch.ones(self.time_steps), persistent=False)

    def coefficients(self) -> MembraneCoefficients:
        return lif_coefficients(self.decay, self.v_threshold, self.gain, self.reset)

    def observables(self) -> dict[str, Observable]:
        """The decay factor and the threshold (group ``"membrane"``, scalars)."""
        return {
            "decay": Observable("membrane", self.decay),
            "v_threshold": Observable("membrane", self.v_threshold),
        }

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, decay={self.decay.item():.4g}, "
            f"v_threshold={self.v_threshold.item():.4g}, reset={self.reset!r}"
        )


class PLIF(MembraneNeuron):
    """Parametric LIF (Fang et al., ICCV 2021): a learnable time constant, input decayed too.

    ``k = sigmoid(w) = 1/tau`` is learnt; ``u[t] = (1 - k) (u[t-1] - reset) + k x[t]``
    (SpikingJelly's ``ParametricLIFNode`` with ``decay_input=True``, firing on ``>``).

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        time_steps: ``T`` (dim 0 of the input).
        decay: initial decay factor ``1 - k`` in (0, 1); 0.5 is Fang et al.'s ``tau = 2``.
        v_threshold: firing threshold.
        reset: ``"hard"`` (to 0) or ``"soft"`` (subtract the threshold).
        granularity: ``"layer"`` (one time constant per layer, as in the paper) or ``"channel"``.
        detach_reset: cut the gradient through the spike in the reset.
        surrogate: gradient stand-in for the spike; ``None`` means ``Rectangular(width=1.0)``.
        backend: ``"auto"``, ``"fused"`` or ``"reference"`` (see :class:`LIF`).
    """

    def __init__(
        self,
        num_features: int,
        time_steps: int,
        *,
        decay: float = 0.5,
        v_threshold: float = 0.5,
        reset: Reset = "hard",
        granularity: Literal["channel", "layer"] = "layer",
        detach_reset: bool = False,
        surrogate: Surrogate | None = None,
        backend: Backend = "auto",
    ) -> None:
        super().__init__(num_features, time_steps, surrogate, detach_reset, backend)
        check_reset(reset)
        if granularity not in ("channel", "layer"):
            raise ValueError(f"granularity must be 'channel' or 'layer', got {granularity!r}.")
        self.reset = reset
        self.granularity = granularity
        k = 1.0 - _check_open_unit(decay, "PLIF decay")
        shape = (self.num_features,) if granularity == "channel" else ()
        self.rate_latent = nn.Parameter(torch.full(shape, math.log(k / (1 - k))))
        self.register_buffer("v_threshold", torch.tensor(float(v_threshold)))

    def coefficients(self) -> MembraneCoefficients:
        k = torch.sigmoid(self.rate_latent)
        gain = k.expand(self.time_steps, *k.shape)
        return lif_coefficients(1 - k, self.v_threshold, gain, self.reset)

    def observables(self) -> dict[str, Observable]:
        """The learnt decay factor ``1 - k`` and the threshold (group ``"membrane"``)."""
        return {
            "decay": Observable("membrane", self.coefficients().decay),
            "v_threshold": Observable("membrane", self.v_threshold),
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reset={self.reset!r}, granularity={self.granularity!r}"
