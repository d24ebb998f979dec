"""Surrogate gradients: the hand-written backward equals autograd of each primitive; and the codes
that tell the fused kernels which derivative to compute."""

import math

import pytest
import torch

from lightning_glif.neurons import ATan, Rectangular, Sigmoid, Surrogate, Triangle

SURROGATES = [
    Rectangular(),
    Rectangular(width=0.5),
    ATan(),
    ATan(alpha=5.0),
    Sigmoid(),
    Sigmoid(alpha=10.0),
    Triangle(),
    Triangle(width=0.3),
]


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_forward_is_strict_heaviside(surrogate):
    v = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 2.0])
    assert surrogate(v).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_backward_equals_autograd_of_primitive(surrogate):
    torch.manual_seed(0)
    v = torch.randn(2000, dtype=torch.float64)
    # Keep away from the kinks of the piecewise primitives, where the slope is one-sided.
    for kink in (getattr(surrogate, "width", None),):
        if kink is not None:
            v = v[((v.abs() - kink / 2).abs() > 1e-6) & ((v.abs() - kink).abs() > 1e-6)]
    v1 = v.clone().requires_grad_()
    (g_custom,) = torch.autograd.grad(surrogate(v1).sum(), v1)
    v2 = v.clone().requires_grad_()
    (g_auto,) = torch.autograd.grad(surrogate.primitive(v2).sum(), v2)
    torch.testing.assert_close(g_custom, g_auto, rtol=1e-12, atol=1e-12)
    assert g_auto.abs().sum() > 0


def test_rectangular_is_the_authors_box():
    v = torch.tensor([-0.7, -0.49, 0.0, 0.3, 0.49, 0.51], requires_grad=True)
    Rectangular()(v).sum().backward()
    assert v.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_primitive_is_a_smoothed_step_of_unit_area(surrogate):
    v = torch.linspace(-60, 60, 600001, dtype=torch.float64)
    area = torch.trapezoid(surrogate.derivative(v), v)
    assert area.item() == pytest.approx(1.0, abs=2e-2)
    assert surrogate.primitive(torch.tensor([-60.0])).item() == pytest.approx(0.0, abs=0.02)
    assert surrogate.primitive(torch.tensor([60.0])).item() == pytest.approx(1.0, abs=0.02)


def test_bad_width_is_rejected():
    with pytest.raises(ValueError, match="width > 0"):
        Rectangular(width=0)


# ---------------------------------------------------------------- codes for the fused kernels
def kernel_derivative(code, v: torch.Tensor) -> torch.Tensor:
    """dH/dv as the kernels compute it from ``(kind, p, q)`` (membrane_body.h, written again)."""
    kind, p, q = code
    if kind == 0:
        return (v.abs() < p).to(v.dtype) * q
    if kind == 1:
        return p / (1 + (q * v) ** 2)
    if kind == 2:
        s = 1 / (1 + torch.exp(-p * v))
        return p * s * (1 - s)
    return torch.clamp(1 - v.abs() * q, min=0.0) * q


def test_kernel_codes_by_hand():
    assert Rectangular(width=0.5).kernel_code() == (0, 0.25, 2.0)
    assert ATan(alpha=2.0).kernel_code() == (1, 1.0, math.pi)
    assert Sigmoid(alpha=4.0).kernel_code() == (2, 4.0, 0.0)
    assert Triangle(width=0.8).kernel_code() == (3, 0.8, 1.25)


@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
def test_kernel_code_means_the_surrogates_derivative(surrogate):
    v = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    torch.testing.assert_close(
        kernel_derivative(surrogate.kernel_code(), v), surrogate.derivative(v), rtol=1e-12,
        atol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("cls", [Rectangular, ATan, Sigmoid, Triangle])
def test_subclasses_have_no_kernel_code(cls):
    # a subclass may redefine the derivative, which the kernel would silently ignore
    class Shifted(cls):
        def derivative(self, v):
            return super().derivative(v - 0.1)

    assert cls().kernel_code() is not None and Shifted().kernel_code() is None


def test_a_new_surrogate_has_no_kernel_code():
    class Box(Surrogate):
        def derivative(self, v):
            return (v.abs() < 0.5).to(v.dtype)

    assert Box().kernel_code() is None
