"""The GLIF authors' order of operations, on values where another order rounds differently.

Float arithmetic is not associative, so a checkpoint gives its authors' spikes bit for bit only
if every operation runs in their order (GitHub ``Ikarosy/Gated-LIF``, ``layers.py``). The
expected values are computed here by hand, one float32 (or float64) operation at a time in
numpy, from the authors' formulas; each test also shows that another order gives another result
on the same values, so it would fail if the order changed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_glif.layers import TdBatchNorm
from lightning_glif.neurons.functional import MembraneCoefficients
from lightning_glif.neurons.fused import membrane
from lightning_glif.neurons.surrogate import Rectangular

f32 = np.float32


# -- tdBN ------------------------------------------------------------------------------------------
def test_tdbn_eval_is_the_authors_order_where_orders_round_differently():
    """Their tdBatchNorm in eval: ``alpha * Vth * (x - mean) / sqrt(var + eps)``, then
    ``* weight + bias``. Here a residual norm (alpha = 1/sqrt(2), scale 0.3535...) on values
    where normalising first, or torch's batch-norm kernel (the previous implementation), gives
    another float32."""
    mean, var, weight, bias, eps = 0.3, 0.7, 1.3, 0.1, 1e-5
    xs = [-0.4, 1.7, 2.0, 2.2, 0.5]
    bn = TdBatchNorm(1, alpha=2**-0.5, eps=eps).eval()
    with torch.no_grad():
        bn.bn.running_mean.fill_(mean)
        bn.bn.running_var.fill_(var)
        bn.weight.fill_(weight)
        bn.bias.fill_(bias)
    x = torch.tensor(xs).view(5, 1, 1)  # [T=5, B=1, C=1]

    s, m, w, b = f32(2**-0.5) * f32(0.5), f32(mean), f32(weight), f32(bias)
    root = np.sqrt(f32(var) + f32(eps))
    authors = [(s * (f32(v) - m)) / root * w + b for v in xs]
    normalised_first = [w * (s * ((f32(v) - m) / root)) + b for v in xs]
    kernel = w * (s * F.batch_norm(x.view(5, 1), bn.bn.running_mean, bn.bn.running_var, eps=eps))
    kernel = kernel + b

    got = bn(x).flatten()
    assert got.tolist() == [float(v) for v in authors]
    assert [float(v) for v in normalised_first][:4] != got.tolist()[:4]
    assert not torch.equal(kernel.flatten(), got)


@pytest.mark.parametrize("theirs", [nn.BatchNorm2d, nn.SyncBatchNorm])
def test_a_plain_norm_evaluates_as_the_authors_batchnorm(theirs):
    """Scale 1 (their CIFAR10-DVS BatchNorm2d; the SyncBatchNorm their ImageNet model was
    converted to): torch's batch norm of the same [T*B, C, H, W] tensor, bit for bit."""
    g = torch.Generator().manual_seed(0)
    ours = TdBatchNorm(3, alpha=1.0, v_threshold=1.0)
    reference = theirs(3)
    state = {
        "weight": torch.rand(3, generator=g) + 0.5,
        "bias": torch.randn(3, generator=g),
        "running_mean": torch.randn(3, generator=g),
        "running_var": torch.rand(3, generator=g) + 0.5,
        "num_batches_tracked": torch.tensor(10),
    }
    reference.load_state_dict(state)
    ours.load_state_dict(
        {"weight": state["weight"], "bias": state["bias"], "scale": torch.tensor(1.0)}
        | {f"bn.{k}": v for k, v in state.items() if k not in ("weight", "bias")}
    )
    x = torch.randn(4, 2, 3, 5, 5, generator=g) * 3
    with torch.no_grad():
        expected = reference.eval()(x.flatten(0, 1)).reshape(x.shape)
        got = ours.eval()(x)
    assert torch.equal(got, expected)
    # the tdBN order with scale 1 rounds otherwise on some of these values
    c = (3, 1, 1)
    mean, var = state["running_mean"].view(c), state["running_var"].view(c)
    tdbn = (x - mean) / torch.sqrt(var + 1e-5) * state["weight"].view(c) + state["bias"].view(c)
    assert not torch.equal(tdbn, expected)


# -- the neuron ------------------------------------------------------------------------------------
def coefficients(a, h, l, r, b, th, dtype) -> MembraneCoefficients:
    """One channel's recurrence coefficients (decay, hard, leak, soft, gain for T=2, threshold)."""

    def channel(value: float) -> torch.Tensor:
        return torch.tensor([value], dtype=dtype)

    return MembraneCoefficients(
        decay=channel(a), hard=channel(h), leak=channel(l), soft=channel(r),
        gain=torch.full((2, 1), b, dtype=dtype), v_threshold=channel(th),
    )  # fmt: skip


def authors_step(a, h, l, r, b, x, u, o):
    """Their LIFSpike_CW update: ``((a * u * (1 - h * o) - l) + b * x) - r * o``, in the dtype
    of the arguments (numpy scalars)."""
    return ((a * u * (1 - h * o) - l) + b * x) - r * o


@pytest.mark.parametrize("shape", [(2, 1, 1), (2, 1, 1, 2, 4)])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_the_membrane_sums_in_the_authors_order(backend, shape):
    """After a spike, their membrane adds the input before subtracting the soft reset. On these
    values that order reaches 0.50000006 > 0.5 (a spike), subtracting first gives exactly 0.5
    (none). Shapes: a linear layer's [T, B, C] and a conv's [T, B, C, H, W] (the C kernel's two
    code paths)."""
    a, h, l, r, b, th = 0.513, 0.199, 0.035, 0.394, 0.808, 0.5
    x1, x2 = 1.0, 0.7566388845443726  # a float32
    a_, h_, l_, r_, b_, th_ = (f32(v) for v in (a, h, l, r, b, th))
    u1 = authors_step(a_, h_, l_, r_, b_, f32(x1), f32(0), f32(0))
    u2 = authors_step(a_, h_, l_, r_, b_, f32(x2), u1, f32(u1 > th_))
    reset_first = ((a_ * u1 * (1 - h_) - l_) - r_) + b_ * f32(x2)
    assert u1 > th_ and u2 > th_ and not reset_first > th_

    x = torch.tensor([x1, x2]).view(2, 1, 1, *([1] * (len(shape) - 3))).expand(shape)
    spikes = membrane(x.contiguous(), coefficients(a, h, l, r, b, th, torch.float32),
                      Rectangular(), backend=backend)  # fmt: skip
    assert torch.equal(spikes, torch.ones(shape))


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_float64_coefficients_run_the_membrane_in_float64(backend):
    """The authors' CIFAR10-DVS gates are float64, which makes their membrane float64 for a
    float32 input. On these values the float64 membrane stays just below the threshold at the
    second step, the float32 one lands above it: ours follows the coefficients' dtype."""
    values = (0.8376641026835236, 0.32432700638883194, 0.02683359384942358, 0.4942211599403716,
              0.9808285968318934, 0.5)  # fmt: skip
    x1, x2 = 1.0, 0.4905097186565399  # float32 values
    for dtype, fires in ((np.float64, False), (np.float32, True)):
        a, h, l, r, b, th = (dtype(v) for v in values)
        u1 = authors_step(a, h, l, r, b, dtype(x1), dtype(0), dtype(0))
        u2 = authors_step(a, h, l, r, b, dtype(x2), u1, dtype(1))
        assert u1 > th and (u2 > th) == fires

    x = torch.tensor([x1, x2]).view(2, 1, 1)
    for dtype, second in ((torch.float64, 0.0), (torch.float32, 1.0)):
        spikes = membrane(x, coefficients(*values, dtype), Rectangular(), backend=backend)
        assert spikes.dtype == torch.float32
        assert spikes.flatten().tolist() == [1.0, second]
