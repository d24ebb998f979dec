"""Property-based tests (Hypothesis) of the neurons: for random shapes, time steps, gate modes
and parameter values, the spikes are 0/1, nothing is NaN (spikes or gradients), and the fused op
equals the reference loop (spikes bit for bit, gradients within float tolerance)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_glif.neurons import GLIF, LIF, PLIF, GLIFf
from lightning_glif.neurons.fused import fused_available

unit = st.floats(0.02, 0.98)  # every initial value the neurons take lies strictly in (0, 1)
gate_mode = st.one_of(st.sampled_from(["soft", "hard", "static"]), st.floats(0.0, 1.0))
SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def neurons(draw):
    """``(neuron, x)``: a random neuron and a random input current ``[T, B, C, ...]``."""
    T, B, C = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    trailing = draw(st.lists(st.integers(1, 4), max_size=2))
    kind = draw(st.sampled_from(["GLIF", "GLIFf", "LIF", "PLIF"]))
    if kind == "GLIF":
        neuron = GLIF(
            C, T,
            alpha=draw(gate_mode), beta=draw(gate_mode), gamma=draw(gate_mode),
            granularity=draw(st.sampled_from(["channel", "layer"])),
            tau=draw(unit), v_threshold=draw(unit), v_leak=draw(unit), v_reset=draw(unit),
            conductance=draw(unit), gate_init=draw(st.one_of(st.just("random"), unit)),
        )  # fmt: skip
    elif kind == "GLIFf":
        neuron = GLIFf(
            C, T, granularity=draw(st.sampled_from(["channel", "layer"])), tau=draw(unit),
            v_threshold=draw(unit), v_leak=draw(unit), v_reset=draw(unit), conductance=draw(unit),
        )  # fmt: skip
    else:
        cls = LIF if kind == "LIF" else PLIF
        neuron = cls(C, T, decay=draw(unit), v_threshold=draw(st.floats(0.05, 2.0)),
                     reset=draw(st.sampled_from(["hard", "soft"])))  # fmt: skip
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0, 1e4]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(T, B, C, *trailing, generator=torch.Generator().manual_seed(seed)) * scale
    return neuron, x


def run(neuron, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Spikes, the input gradient and the parameter gradients of ``sum(spikes * w)``."""
    x = x.clone().requires_grad_(True)
    spikes = neuron(x)
    weights = torch.linspace(-1, 1, spikes.numel()).view_as(spikes)
    (spikes * weights).sum().backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in neuron.parameters()]
    return spikes.detach(), x.grad, grads


@SETTINGS
@given(neurons())
def test_spikes_are_binary_and_nothing_is_nan(case):
    neuron, x = case
    neuron.backend = "reference"
    spikes, x_grad, grads = run(neuron, x)
    assert spikes.shape == x.shape and spikes.dtype == x.dtype
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(x_grad).all()
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.compile
@SETTINGS
@given(neurons())
def test_fused_equals_reference(case):
    neuron, x = case
    if fused_available(x, neuron.coefficients(), neuron.surrogate) is not None:
        pytest.skip("no fused kernel here (no C compiler)")
    fused = copy.deepcopy(neuron)
    fused.backend, neuron.backend = "fused", "reference"
    spikes, x_grad, grads = run(fused, x)
    ref_spikes, ref_x_grad, ref_grads = run(neuron, x)
    assert torch.equal(spikes, ref_spikes)
    # Same float32 operations in a different order in the backward (the kernel sums the
    # per-channel coefficient gradients over B and space in its own order): relative 1e-4.
    torch.testing.assert_close(x_grad, ref_x_grad, rtol=1e-4, atol=1e-5)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))
