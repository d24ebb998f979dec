"""GLIF, GLIF_f, LIF and PLIF against hand-computed trajectories and independent loops."""

import pytest
import torch

from lightning_glif.neurons import GLIF, LIF, PLIF, GLIFf, Rectangular, Triangle
from lightning_glif.neurons.functional import (
    GLIFValues,
    glif_coefficients,
    membrane_sequence,
    membrane_step,
)

SPEC = dict(tau=0.25, v_threshold=0.5, v_leak=0.0625, v_reset=0.5, conductance=0.5)


def glif_sequence(x, values, spike_fn, **kwargs):
    return membrane_sequence(x, glif_coefficients(values), spike_fn, **kwargs)


def spec_values(alpha, beta, gamma, T=4):
    """Exact binary fractions for the hand computations below."""
    t = torch.tensor
    return GLIFValues(
        alpha=t(alpha),
        beta=t(beta),
        gamma=t(gamma),
        tau=t(0.25),
        v_threshold=t(0.5),
        v_leak=t(0.0625),
        v_reset=t(0.5),
        conductance=torch.full((T,), 0.5),
    )


X = torch.tensor([0.6, 0.3, 0.9, 0.1]).view(4, 1, 1)  # [T, B=1, C=1]

# Hand computations with tau=1/4, v_th=1/2, v_leak=1/16, v_reset=1/2, g=1/2, x = X.
GOLDEN = {
    # alpha=1 beta=0 gamma=1, plain LIF with hard reset u = tau*u*(1-o) + x:
    # 0.6 (fires) -> 0.25*0.6*0 + 0.3 = 0.3 -> 0.25*0.3 + 0.9 = 0.975 (fires) -> 0 + 0.1 = 0.1
    (1.0, 0.0, 1.0): ([0.6, 0.3, 0.975, 0.1], [1, 0, 1, 0]),
    # alpha=1 beta=0 gamma=0, soft reset u = tau*u - v_reset*o + x:
    # 0.6 (fires) -> 0.15 - 0.5 + 0.3 = -0.05 -> -0.0125 + 0.9 = 0.8875 (fires)
    # -> 0.221875 - 0.5 + 0.1 = -0.178125
    (1.0, 0.0, 0.0): ([0.6, -0.05, 0.8875, -0.178125], [1, 0, 1, 0]),
    # alpha=0 beta=1 gamma=0, linear decay, conductance input g*x, soft reset:
    # -1/16 + 0.3 = 0.2375 -> 0.2375 - 1/16 + 0.15 = 0.325 -> 0.325 - 1/16 + 0.45 = 0.7125
    # (fires) -> 0.7125 - 1/16 - 0.5 + 0.05 = 0.2
    (0.0, 1.0, 0.0): ([0.2375, 0.325, 0.7125, 0.2], [0, 0, 1, 0]),
    # alpha=0 beta=0 gamma=1, linear decay, hard reset:
    # -1/16 + 0.6 = 0.5375 (fires) -> 0 - 1/16 + 0.3 = 0.2375 -> 0.2375 - 1/16 + 0.9 = 1.075
    # (fires) -> 0 - 1/16 + 0.1 = 0.0375
    (0.0, 0.0, 1.0): ([0.5375, 0.2375, 1.075, 0.0375], [1, 0, 1, 0]),
    # alpha=1 beta=1 gamma=1: 0.3 -> 0.075 + 0.15 = 0.225 -> 0.05625 + 0.45 = 0.50625 (fires)
    # -> 0 + 0.05 = 0.05
    (1.0, 1.0, 1.0): ([0.3, 0.225, 0.50625, 0.05], [0, 0, 1, 0]),
}


@pytest.mark.parametrize("gates", list(GOLDEN), ids=str)
def test_golden_trajectory_at_gate_extremes(gates):
    membrane, spikes = GOLDEN[gates]
    o, u = glif_sequence(X, spec_values(*gates), Rectangular(), return_membrane=True)
    torch.testing.assert_close(u.flatten(), torch.tensor(membrane), rtol=0, atol=1e-6)
    assert o.flatten().tolist() == spikes
    # The module with pinned gates fires identically (its values are sigmoid(logit(.)) ~ exact).
    m = GLIF(1, 4, alpha=gates[0], beta=gates[1], gamma=gates[2], **SPEC)
    assert m(X).flatten().tolist() == spikes


def test_golden_trajectory_mixed_gates():
    # alpha=beta=gamma=1/2: decay 1 - 0.5*0.75 = 0.625, leak 0.5/16 = 0.03125, hard share 0.5,
    # soft reset 0.25, gain 1 - 0.5*0.5 = 0.75; x = [0.8, 0.4, 0.2, 0.6] -> I = [.6, .3, .15, .45]
    # u1 = -0.03125 + 0.6 = 0.56875 (fires)
    # u2 = 0.625*0.56875*0.5 - 0.03125 - 0.25 + 0.3 = 0.196484375
    # u3 = 0.625*0.196484375 - 0.03125 + 0.15 = 0.241552734375
    # u4 = 0.625*0.241552734375 - 0.03125 + 0.45 = 0.569720458984375 (fires)
    x = torch.tensor([0.8, 0.4, 0.2, 0.6]).view(4, 1, 1)
    o, u = glif_sequence(x, spec_values(0.5, 0.5, 0.5), Rectangular(), return_membrane=True)
    expected = [0.56875, 0.196484375, 0.241552734375, 0.569720458984375]
    torch.testing.assert_close(u.flatten(), torch.tensor(expected), rtol=0, atol=1e-6)
    assert o.flatten().tolist() == [1, 0, 0, 1]
    m = GLIF(1, 4, alpha=0.5, beta=0.5, gamma=0.5, **SPEC)
    assert m(x).flatten().tolist() == [1, 0, 0, 1]


def test_golden_trajectory_gliff():
    # u = tau*u*(1-o) - v_leak + g*x - v_reset*o with x = [1.2, 0.8, 0.2, 0.9]:
    # u1 = -1/16 + 0.6 = 0.5375 (fires); u2 = 0 - 1/16 + 0.4 - 0.5 = -0.1625
    # u3 = 0.25*-0.1625 - 1/16 + 0.1 = -0.003125; u4 = 0.25*-0.003125 - 1/16 + 0.45 = 0.38671875
    x = torch.tensor([1.2, 0.8, 0.2, 0.9]).view(4, 1, 1)
    m = GLIFf(1, 4, **SPEC)
    o, u = membrane_sequence(x, m.coefficients(), Rectangular(), return_membrane=True)
    torch.testing.assert_close(
        u.flatten(), torch.tensor([0.5375, -0.1625, -0.003125, 0.38671875]), rtol=0, atol=1e-6
    )
    assert m(x).flatten().tolist() == [1, 0, 0, 0]


def plain_loop(x, step):
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        u = step(u, o, x[t])
        o = (u > 0.5).to(x.dtype)
        out.append(o)
    return torch.stack(out)


def test_lif_hard_reset_special_case_matches_plain_loop():
    torch.manual_seed(0)
    x = torch.rand(8, 16, 6, 3, 3)
    expected = plain_loop(x, lambda u, o, xt: 0.25 * u * (1 - o) + xt)
    glif = GLIF(6, 8, alpha=1, beta=0, gamma=1, **SPEC)
    lif = LIF(6, 8, decay=0.25, v_threshold=0.5, reset="hard")
    assert torch.equal(glif(x), expected)
    assert torch.equal(lif(x), expected)
    assert expected.sum() > 0 and (1 - expected).sum() > 0


def test_lif_soft_reset_special_case_matches_plain_loop():
    torch.manual_seed(1)
    x = torch.rand(8, 16, 6)
    # GLIF alpha=1 beta=0 gamma=0: u = tau*u - v_reset*o + x (reset after the decay).
    expected = plain_loop(x, lambda u, o, xt: 0.25 * u - 0.5 * o + xt)
    assert torch.equal(GLIF(6, 8, alpha=1, beta=0, gamma=0, **SPEC)(x), expected)
    # SpikingJelly-style soft reset subtracts before the decay: equal when v_reset = tau*v_th.
    lif = LIF(6, 8, decay=0.25, v_threshold=0.5, reset="soft")
    glif = GLIF(6, 8, alpha=1, beta=0, gamma=0, **{**SPEC, "v_reset": 0.125})
    sj = plain_loop(x, lambda u, o, xt: 0.25 * (u - 0.5 * o) + xt)
    assert torch.equal(lif(x), sj)
    assert torch.equal(glif(x), sj)


def test_plif_matches_plain_loop():
    torch.manual_seed(2)
    x = torch.rand(6, 4, 3) * 2
    m = PLIF(3, 6, decay=0.5, v_threshold=0.5)
    # Fang et al.: k = 1/tau = 0.5, u = u + k (x - u) after a hard reset to 0.
    expected = plain_loop(x, lambda u, o, xt: u * (1 - o) + 0.5 * (xt - u * (1 - o)))
    assert torch.equal(m(x), expected)


def test_step_loop_equals_sequence():
    torch.manual_seed(3)
    m = GLIF(5, 6)
    x = torch.randn(6, 3, 5, 4)
    c = glif_coefficients(m.values()).broadcast_to(1)  # [C, 1] against the steps' [B, C, 4]
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    steps = []
    for t in range(6):
        u, o = membrane_step(x[t], u, o, c, t, m.surrogate)
        steps.append(o)
    assert torch.equal(torch.stack(steps), m(x))


# ---------------------------------------------------------------- gradients
def ste(surrogate):
    """Heaviside forward, slope of the primitive backward: built from the primitive only."""

    def spike(v):
        p = surrogate.primitive(v)
        return p + ((v > 0).to(v.dtype) - p).detach()

    return spike


def hard_ste(g):
    return g + ((g > 0.5).to(g.dtype) - g).detach()


def spec_forward(m, x, spike):
    """SPEC section 1 written out literally, on sigmoid of the module's latents."""
    shape = (-1,) + (1,) * (x.dim() - 3) if m.granularity == "channel" else ()

    def gate(name):
        mode = m.gate_modes[name]
        if isinstance(mode, float):
            return torch.tensor(mode).reshape(shape) if shape else torch.tensor(mode)
        g = torch.sigmoid(getattr(m, f"{name}_latent"))
        g = hard_ste(g) if mode == "hard" else g
        return g.reshape(shape) if shape else g

    def sig(name):
        p = torch.sigmoid(getattr(m, f"{name}_latent"))
        return p.reshape(shape) if shape else p

    a, b, c = gate("alpha"), gate("beta"), gate("gamma")
    tau, vth, vl, vr = sig("tau"), sig("v_threshold"), sig("v_leak"), sig("v_reset")
    cond = torch.sigmoid(m.conductance_latent)
    u, o, out = 0.0, 0.0, []
    for t in range(x.shape[0]):
        g_t = cond[t].reshape(shape) if shape else cond[t]
        i_t = (1 - b * (1 - g_t)) * x[t]
        u = (1 - a * (1 - tau)) * u * (1 - c * o) - (1 - a) * vl - (1 - c) * vr * o + i_t
        o = spike(u - vth)
        out.append(o)
    return torch.stack(out)


GRAD_CASES = [
    dict(),
    dict(granularity="layer"),
    dict(alpha="hard", beta="hard", gamma="hard"),
    dict(alpha="static", beta="soft", gamma=0.3),
    dict(alpha=1, beta=0, gamma=1),
    dict(surrogate=Triangle(width=0.8)),
    dict(learn_membrane=False, gate_init=(0.2, 0.7, 0.9)),
]


@pytest.mark.parametrize("kwargs", GRAD_CASES, ids=str)
@pytest.mark.parametrize("shape", [(5, 4, 3), (5, 4, 3, 2, 2)], ids=["linear", "conv"])
def test_gradients_match_literal_spec_with_autograd_of_primitive(kwargs, shape):
    torch.manual_seed(4)
    m = GLIF(3, 5, **kwargs)
    with torch.no_grad():  # spread the latents so every gate and parameter matters
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = (torch.randn(shape) * 0.8 + 0.3).requires_grad_()
    w = torch.randn(shape)
    params = [x, *m.parameters()]
    got = torch.autograd.grad((m(x) * w).sum(), params)
    want = torch.autograd.grad((spec_forward(m, x, ste(m.surrogate)) * w).sum(), params)
    assert torch.equal(m(x), spec_forward(m, x, ste(m.surrogate)))
    for g1, g2 in zip(got, want, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    assert got[0].abs().sum() > 0


def test_parameter_gradients_exist_and_frozen_ones_do_not():
    m = GLIF(4, 3, alpha="static", beta=1.0, gamma="hard", learn_membrane=False)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"gamma_latent"}
    assert [p is m.gamma_latent for p in m.gate_parameters()] == [True]
    x = torch.randn(3, 2, 4) + 0.5
    m(x).sum().backward()
    assert m.gamma_latent.grad is not None and m.gamma_latent.grad.abs().sum() > 0
    full = GLIF(4, 3)
    assert {n for n, _ in full.named_parameters()} == {
        "alpha_latent",
        "beta_latent",
        "gamma_latent",
        "tau_latent",
        "v_threshold_latent",
        "v_leak_latent",
        "v_reset_latent",
        "conductance_latent",
    }
    assert len(list(full.gate_parameters())) == 3


def test_hard_gate_gradient_is_straight_through_sigmoid():
    m = GLIF(2, 2, alpha="hard", gate_init=(0.7, 0.5, 0.5))
    g = m.values().alpha
    assert g.tolist() == [1.0, 1.0]
    g.sum().backward()
    s = torch.tensor(0.7)
    torch.testing.assert_close(m.alpha_latent.grad, (s * (1 - s)).expand(2))


def test_membrane_gradients_against_finite_differences():
    """With a smooth spike function, autograd of the recurrence matches central differences."""
    torch.manual_seed(5)
    m = GLIF(3, 4).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def f(*latents):
        values = GLIFValues(*[torch.sigmoid(z) for z in latents])
        return glif_sequence(x, values, lambda v: torch.sigmoid(4 * v))

    names = ["alpha", "beta", "gamma", "tau", "v_threshold", "v_leak", "v_reset", "conductance"]
    latents = tuple(getattr(m, f"{n}_latent").detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, latents)


# ---------------------------------------------------------------- values, modes, shapes
def test_values_are_what_forward_uses():
    torch.manual_seed(6)
    m = GLIF(4, 3, beta="hard", gamma=0.25)
    v = m.values()
    torch.testing.assert_close(v.alpha, torch.sigmoid(m.alpha_latent))
    assert v.beta.tolist() == (torch.sigmoid(m.beta_latent) > 0.5).float().tolist()
    assert v.gamma.tolist() == [0.25] * 4
    assert v.conductance.shape == (3, 4) and v.tau.shape == (4,)
    x = torch.randn(3, 5, 4, 2)
    # An independent loop fed only with values() reproduces forward spike for spike.
    ref = spec_forward(m, x, lambda u: (u > 0).float())
    assert torch.equal(m(x), ref)
    assert torch.equal(glif_sequence(x, v, m.surrogate), m(x))


def test_honest_gate_init_and_random_init_range():
    v = GLIF(3, 2, gate_init=(0.1, 0.6, 0.9)).values()
    torch.testing.assert_close(v.alpha, torch.full((3,), 0.1))
    torch.testing.assert_close(v.beta, torch.full((3,), 0.6))
    torch.testing.assert_close(v.gamma, torch.full((3,), 0.9))
    torch.manual_seed(0)
    m = GLIF(1000, 2)
    for z in (m.alpha_latent, m.beta_latent, m.gamma_latent):
        assert z.abs().max() < 0.1 and z.std() > 0.05
    torch.testing.assert_close(m.values().tau, torch.full((1000,), 0.25))
    torch.testing.assert_close(m.values().v_leak, torch.full((1000,), 0.0625))


@pytest.mark.parametrize(
    "granularity, expected",
    # the authors' fixed init, by hand: 0.25 + 0.5 g channel-wise, 0.75 - 0.5 g layer-wise
    [("channel", [0.25, 0.3, 0.75]), ("layer", [0.75, 0.7, 0.25])],
)
def test_authors_gate_init_convention(granularity, expected):
    m = GLIF(
        3, 2, granularity=granularity, gate_init=(0.0, 0.1, 1.0), gate_init_convention="authors"
    )
    v = m.values()
    for gate, value in zip(("alpha", "beta", "gamma"), expected, strict=True):
        torch.testing.assert_close(getattr(v, gate), torch.full_like(getattr(v, gate), value))
    # the default is exact: the requested value itself (0 and 1 are not gate values there)
    torch.testing.assert_close(GLIF(3, 2, gate_init=0.1).values().beta, torch.full((3,), 0.1))
    torch.manual_seed(3)
    a = GLIF(3, 2, gate_init_convention="authors").alpha_latent
    torch.manual_seed(3)
    assert torch.equal(a, GLIF(3, 2).alpha_latent)  # no effect on the random init
    with pytest.raises(ValueError, match=r"gate_init under the authors' convention .* \[0, 1\]"):
        GLIF(3, 2, gate_init=1.5, gate_init_convention="authors")
    with pytest.raises(ValueError, match="gate_init_convention='paper'.*'exact'.*'authors'"):
        GLIF(3, 2, gate_init_convention="paper")


def test_static_hard_gates_are_binary_frozen_and_untrained():
    """The authors' static binary gates: 1[sigmoid(z) > 0.5] of the initial latent, a buffer."""
    torch.manual_seed(11)
    m = GLIF(64, 3, alpha="static_hard", beta="static_hard", gamma="soft")
    z = m.alpha_latent.clone()
    assert "alpha_latent" in dict(m.named_buffers()) and list(m.gate_parameters()) == [
        m.gamma_latent
    ]
    v = m.values()
    assert v.alpha.tolist() == (z > 0).float().tolist()  # sigmoid(z) > 0.5 <=> z > 0
    assert 0 < v.alpha.sum() < 64  # random init: some channels 0, some 1
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    (m(torch.randn(3, 8, 64) + 0.5) * torch.randn(3, 8, 64)).sum().backward()
    opt.step()
    assert torch.equal(m.alpha_latent, z) and torch.equal(m.values().alpha, v.alpha)
    # spike for spike what the same gates pinned as numbers give, per channel
    x = torch.randn(3, 4, 64) + 0.5
    pinned = GLIF(64, 3, alpha="static", beta="static", gamma="static")
    pinned.load_state_dict(m.state_dict(), strict=False)
    with torch.no_grad():
        for gate in ("alpha", "beta"):
            getattr(pinned, f"{gate}_latent").copy_(
                torch.where(getattr(m, f"{gate}_latent") > 0, 200.0, -200.0)
            )
    assert torch.equal(m(x), pinned(x))


def test_pinned_gates_stay_pinned_after_optimizer_steps():
    torch.manual_seed(7)
    m = GLIF(4, 3, alpha=0.0, beta=1.0, gamma="soft")
    opt = torch.optim.SGD(m.parameters(), lr=1.0, momentum=0.9, weight_decay=0.1)
    before_gamma = m.values().gamma.clone()
    for _ in range(3):
        opt.zero_grad()
        (m(torch.randn(3, 8, 4) + 0.5) * torch.randn(3, 8, 4)).sum().backward()
        opt.step()
    v = m.values()
    assert v.alpha.tolist() == [0.0] * 4 and v.beta.tolist() == [1.0] * 4
    assert not torch.equal(v.gamma, before_gamma)  # the learnable one did move


def test_conv_input_equals_linear_input_per_pixel():
    torch.manual_seed(8)
    m = GLIF(3, 4)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(4, 2, 3, 5, 5)
    linear = x.permute(0, 1, 3, 4, 2).reshape(4, 50, 3)
    out = m(linear).reshape(4, 2, 5, 5, 3).permute(0, 1, 4, 2, 3)
    assert torch.equal(m(x), out)


def test_layerwise_values_are_scalars():
    m = GLIF(7, 5, granularity="layer")
    v = m.values()
    assert v.alpha.shape == () and v.tau.shape == () and v.conductance.shape == (5,)
    x = torch.randn(5, 2, 7, 3)
    assert m(x).shape == x.shape
    # A layer-wise GLIF equals a channel-wise one whose channels all hold the same values.
    c = GLIF(7, 5)
    with torch.no_grad():
        for name, p in m.named_parameters():
            getattr(c, name).copy_(p.unsqueeze(-1).expand_as(getattr(c, name)))
    assert torch.equal(m(x), c(x))


def test_coefficients_follow_the_spec_table():
    c = glif_coefficients(spec_values(0.5, 0.5, 0.5))
    assert c.decay.item() == 0.625 and c.leak.item() == 0.03125
    assert c.soft.item() == 0.25 and c.hard.item() == 0.5
    assert c.gain.tolist() == [0.75] * 4


@pytest.mark.parametrize("cls", [GLIF, GLIFf, LIF, PLIF])
def test_output_dtype_shape_and_binary(cls):
    x = torch.randn(3, 2, 4, 3, dtype=torch.float64)
    m = cls(4, 3).double()
    y = m(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert set(y.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("cls", [GLIF, LIF, PLIF])
def test_autocast_keeps_membrane_in_float32(cls):
    torch.manual_seed(9)
    m = cls(6, 4)
    x = (torch.randn(4, 8, 6, 3, 3) * 0.7 + 0.4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    # The same bf16 input run in float32 outside autocast gives identical spikes.
    assert torch.equal(y.float(), m(x.float()))


def test_detach_reset_cuts_the_reset_gradient():
    torch.manual_seed(10)
    x = (torch.rand(6, 4, 3) + 0.3).requires_grad_()
    g1 = torch.autograd.grad(LIF(3, 6)(x).sum(), x)[0]
    g2 = torch.autograd.grad(LIF(3, 6, detach_reset=True)(x).sum(), x)[0]
    assert not torch.allclose(g1, g2)


def test_no_state_carries_over_between_calls():
    m = GLIF(2, 3)
    x = torch.rand(3, 4, 2)
    assert torch.equal(m(x), m(x))


# ---------------------------------------------------------------- errors
def test_rank_below_three_is_rejected():
    with pytest.raises(ValueError, match=r"got rank < 3 \(shape \(4, 2\)\).*transpose"):
        GLIF(2, 4)(torch.randn(4, 2))


def test_wrong_time_steps_is_rejected():
    expected = r"got 5 time steps, 3 channels \(shape \(5, 2, 3\)\).*T=4"
    with pytest.raises(ValueError, match=expected):
        GLIF(3, 4)(torch.randn(5, 2, 3))


def test_wrong_channels_is_rejected():
    with pytest.raises(ValueError, match=r"got 4 time steps, 8 channels.*C=3"):
        LIF(3, 4)(torch.randn(4, 2, 8, 5, 5))


@pytest.mark.parametrize("mode", ["sofft", 1.5, -0.1, True, None])
def test_unknown_gate_mode_is_rejected(mode):
    with pytest.raises(ValueError, match="soft, hard, static"):
        GLIF(3, 4, beta=mode)


@pytest.mark.parametrize(
    "kwargs",
    [dict(tau=1.0), dict(v_threshold=0.0), dict(gate_init=1.0), dict(gate_init=(0.5, 0.5))],
)
def test_values_outside_the_sigmoid_range_are_rejected(kwargs):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GLIF(3, 4, **kwargs)


def test_bad_granularity_and_reset_are_rejected():
    with pytest.raises(ValueError, match="granularity"):
        GLIF(3, 4, granularity="neuron")
    with pytest.raises(ValueError, match="reset must be 'hard' or 'soft'"):
        LIF(3, 4, reset="zero")
