"""Surrogate gradients of the Heaviside step.

Forward, every surrogate is ``H(v) = 1[v > 0]`` (strictly above the threshold, as the GLIF
authors). Backward, ``dH/dv`` is the derivative of a smooth *primitive*; each surrogate defines
both side by side, so a test checks the hand-written backward against autograd of the primitive.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Heaviside(torch.autograd.Function):
    """``1[v > 0]`` forward; ``grad * surrogate.derivative(v)`` backward."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.surrogate = surrogate
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(v), None


class Surrogate(nn.Module):
    """Base: a spike function with a smooth stand-in for its gradient. Subclasses define
    :meth:`primitive` and :meth:`derivative` (its closed form, used by the backward pass)."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Spikes ``1[v > 0]`` in ``v``'s dtype; ``v`` is membrane minus threshold."""
        return _Heaviside.apply(v, self)

    def primitive(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def kernel_code(self) -> tuple[int, float, float] | None:
        """``(kind, p, q)``: the derivative the fused kernels compute (the table in
        ``fused/membrane_body.h``) and its two constants; ``None``: no kernel, the reference loop
        runs (a new surrogate). The four built-ins give it for their exact type only, since a
        subclass may redefine :meth:`derivative`; one that keeps it overrides this method."""
        return None


class Rectangular(Surrogate):
    """Box of unit area: ``dH/dv = 1[|v| < width/2] / width``; ``width=1`` is the GLIF authors'.

    Args:
        width: width of the box around the threshold.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"Rectangular surrogate needs width > 0, got {width}.")
        self.width = float(width)

    def primitive(self, v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(v / self.width + 0.5, 0.0, 1.0)

    def derivative(self, v: torch.Tensor) -> torch.Tensor:
        return (v.abs() < self.width / 2).to(v.dtype) / self.width

    def kernel_code(self) -> tuple[int, float, float] | None:
        return (0, self.width / 2, 1 / self.width) if type(self) is Rectangular else None

    def extra_repr(self) -> str:
        return f"width={self.width}"


class ATan(Surrogate):
    """Arctangent: primitive ``atan(pi/2 * alpha * v) / pi + 1/2``.

    Args:
        alpha: slope; the peak of ``dH/dv`` is ``alpha / 2``.
    """

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"ATan surrogate needs alpha > 0, got {alpha}.")
        self.alpha = float(alpha)

    def primitive(self, v: torch.Tensor) -> torch.Tensor:
        return torch.atan(math.pi / 2 * self.alpha * v) / math.pi + 0.5

    def derivative(self, v: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * v) ** 2)

    def kernel_code(self) -> tuple[int, float, float] | None:
        return (1, self.alpha / 2, math.pi / 2 * self.alpha) if type(self) is ATan else None

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Sigmoid(Surrogate):
    """Logistic: primitive ``sigmoid(alpha * v)``.

    Args:
        alpha: slope; the peak of ``dH/dv`` is ``alpha / 4``.
    """

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"Sigmoid surrogate needs alpha > 0, got {alpha}.")
        self.alpha = float(alpha)

    def primitive(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.alpha * v)

    def derivative(self, v: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha * v)
        return self.alpha * s * (1 - s)

    def kernel_code(self) -> tuple[int, float, float] | None:
        return (2, self.alpha, 0.0) if type(self) is Sigmoid else None

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Triangle(Surrogate):
    """Triangle of unit area: ``dH/dv = max(0, 1 - |v|/width) / width``.

    Args:
        width: half the base of the triangle.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"Triangle surrogate needs width > 0, got {width}.")
        self.width = float(width)

    def primitive(self, v: torch.Tensor) -> torch.Tensor:
        r = torch.clamp(v / self.width, -1.0, 1.0)
        # Integral of the triangle: (1 + r)^2 / 2 left of 0, 1 - (1 - r)^2 / 2 right of it.
        return torch.where(r < 0, 0.5 * (1 + r) ** 2, 1 - 0.5 * (1 - r) ** 2)

    def derivative(self, v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(1 - v.abs() / self.width, min=0.0) / self.width

    def kernel_code(self) -> tuple[int, float, float] | None:
        return (3, self.width, 1 / self.width) if type(self) is Triangle else None

    def extra_repr(self) -> str:
        return f"width={self.width}"
