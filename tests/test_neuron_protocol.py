"""The neuron contract: SpikingNeuron (what every neuron offers), Observable (what it reports to
the monitors), MembraneNeuron (the neurons of the membrane recurrence); and NonFiniteGuard's
diagnosis of neurons of either kind, including a diagnosis that itself fails."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_glif.callbacks import NonFiniteGuard, NonFiniteLossError
from lightning_glif.neurons import (
    GLIF,
    LIF,
    PLIF,
    GLIFf,
    MembraneNeuron,
    Observable,
    Rectangular,
    SpikingNeuron,
    Triangle,
)
from lightning_glif.neurons.functional import MembraneCoefficients, lif_coefficients

T = 3


class Threshold(SpikingNeuron):
    """A neuron of its own (no coefficients()): fires where its input exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return (x > 0.5).to(x.dtype)


class Net(nn.Module):
    """``[B, T, C]`` -> linear -> each neuron in turn."""

    def __init__(self, *neurons: nn.Module, channels: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        self.neurons = nn.Sequential(*neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neurons(self.linear(x).transpose(0, 1))


def batch(value: float = 1.0, channels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((4, T, channels), value), torch.zeros(4, dtype=torch.long)


# -- SpikingNeuron and Observable ----------------------------------------------------------------
def test_spiking_neuron_is_the_minimal_contract():
    n = Threshold(2, T)
    assert (n.num_features, n.time_steps) == (2, T)
    assert type(n.surrogate) is Rectangular and n.surrogate.width == 1.0
    assert list(n.gate_parameters()) == [] and n.observables() == {}
    assert list(n.membrane_parameters()) == []
    assert not hasattr(n, "backend") and not hasattr(n, "coefficients")
    assert Threshold(2, T, surrogate=Triangle()).surrogate.__class__ is Triangle
    with pytest.raises(ValueError, match="num_features >= 1 and time_steps >= 1"):
        Threshold(0, T)
    with pytest.raises(ValueError, match=r"got 4 time steps.*T=3"):
        n(torch.zeros(4, 1, 2))


def test_membrane_neuron_needs_coefficients():
    class NoCoefficients(MembraneNeuron):
        pass

    with pytest.raises(TypeError, match="abstract method coefficients"):
        NoCoefficients(2, T)

    class Leaky(MembraneNeuron):
        def coefficients(self) -> MembraneCoefficients:
            return lif_coefficients(torch.tensor(0.5), torch.tensor(0.5), torch.ones(T), "hard")

    # the shared forward: u = 0.5 u (1 - o) + x; x = 0.3 -> 0.3, 0.45, 0.525 (fires)
    n = Leaky(1, T, backend="reference")
    assert n(torch.full((T, 1, 1), 0.3)).flatten().tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="auto, fused, reference"):
        Leaky(1, T, backend="gpu")


def test_membrane_parameters_are_every_parameter_but_the_gates():
    def names(m):
        ids = {id(p) for p in m.membrane_parameters()}
        return {n for n, p in m.named_parameters() if id(p) in ids}

    membrane = {"tau_latent", "v_threshold_latent", "v_leak_latent", "v_reset_latent"}
    membrane |= {"conductance_latent"}
    assert names(GLIF(2, T)) == membrane == names(GLIFf(2, T))
    assert names(GLIF(2, T, alpha="hard", beta=0.5, gamma="static")) == membrane
    assert names(GLIF(2, T, learn_membrane=False)) == set()
    assert names(PLIF(2, T)) == {"rate_latent"} and names(LIF(2, T)) == set()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(group="gate", value=torch.zeros(2)), "group must be 'gates' or 'membrane'"),
        (dict(group="gates", value=0.5), "torch.tensor"),
        (dict(group="membrane", value=torch.zeros(()), per_step=True), r"\[T\] or \[T, C\]"),
    ],
)
def test_observable_rejects_what_a_monitor_cannot_log(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        Observable(**kwargs)


def test_glif_observables_are_its_values():
    torch.manual_seed(0)
    m = GLIF(3, T, beta="hard", gamma=0.25)
    obs = m.observables()
    assert list(obs) == [
        "alpha", "beta", "gamma", "tau", "v_threshold", "v_leak", "v_reset", "conductance"
    ]  # fmt: skip
    assert {n for n, o in obs.items() if o.group == "gates"} == {"alpha", "beta", "gamma"}
    assert [n for n, o in obs.items() if o.per_step] == ["conductance"]
    # an independent path: sigmoid of the latents, the pinned gate, the hard gate's 0/1
    torch.testing.assert_close(obs["alpha"].value, torch.sigmoid(m.alpha_latent))
    assert obs["beta"].value.tolist() == (torch.sigmoid(m.beta_latent) > 0.5).float().tolist()
    assert obs["gamma"].value.tolist() == [0.25] * 3
    assert obs["tau"].value.tolist() == pytest.approx([0.25] * 3)
    assert obs["conductance"].value.shape == (T, 3)
    assert obs["alpha"].value.requires_grad  # monitors detach; the neuron need not


def test_gliff_lif_plif_observables():
    assert [n for n, o in GLIFf(2, T).observables().items() if o.group == "gates"] == []
    assert set(GLIFf(2, T).observables()) == {
        "tau", "v_threshold", "v_leak", "v_reset", "conductance"
    }  # fmt: skip
    lif = LIF(2, T, decay=0.25, v_threshold=0.75).observables()
    assert {n: (o.group, o.value.item()) for n, o in lif.items()} == {
        "decay": ("membrane", 0.25), "v_threshold": ("membrane", 0.75)
    }  # fmt: skip
    plif = PLIF(2, T, decay=0.25, granularity="channel")
    assert plif.observables()["decay"].value.tolist() == pytest.approx([0.25, 0.25])
    with torch.no_grad():
        plif.rate_latent.copy_(torch.tensor([0.0, math.log(3)]))  # k = 1/2, 3/4
    assert plif.observables()["decay"].value.tolist() == pytest.approx([0.5, 0.25])


# -- NonFiniteGuard on neurons of either kind ----------------------------------------------------
def test_a_neuron_without_coefficients_with_nan_input_is_named():
    model = Net(LIF(2, T), Threshold(2, T))
    x, y = batch()
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
        model.linear.bias.fill_(-1.0)
    assert NonFiniteGuard.first_non_finite_layer(None, model, (x, y)) is None  # healthy
    x[0, 1, 0] = float("nan")
    # the LIF in front stops spiking at the NaN (NaN > V_th is false): only the linear output,
    # the LIF's input, is NaN. The Threshold after it sees finite spikes.
    assert NonFiniteGuard.first_non_finite_layer(None, model, (x, y)) == (
        "'neurons.0' (LIF): non-finite input current (shape (3, 4, 2)), so a non-finite membrane"
    )
    alone = Net(Threshold(2, T))
    found = NonFiniteGuard.first_non_finite_layer(None, alone, (x, y))
    assert found == (
        "'neurons.0' (Threshold): non-finite input current (shape (3, 4, 2)), so a non-finite "
        "membrane"
    )


def test_only_membrane_neurons_are_replayed_and_the_others_are_reported():
    # input 3e38 each step into a soft-reset LIF (decay 1/2, reset 1/2 * 1/2): u[0] = 3e38
    # fires, u[1] = 1.5e38 - 0.25 + 3e38 > float32 max (3.4e38): inf
    x, y = batch(1.0)
    model = Net(LIF(2, T, reset="soft"))
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.fill_(3e38)
    found = NonFiniteGuard.first_non_finite_layer(None, model, (x, y))
    assert found == (
        "'neurons.0' (LIF): the membrane overflowed at time step 1 (finite input and parameters)"
    )
    # the same input into a neuron whose membrane the guard cannot replay: not blamed, reported
    other = Net(Threshold(2, T))
    with torch.no_grad():
        other.linear.weight.zero_()
        other.linear.bias.fill_(3e38)
    diagnosis = NonFiniteGuard.diagnose(None, other, (x, y))
    assert diagnosis.culprit is None and diagnosis.failure is None
    assert diagnosis.unreplayed == ["neurons.0"]
    text = diagnosis.describe()
    assert "'neurons.0' (Threshold) cannot be replayed (not a MembraneNeuron)" in text
    assert "finite parameters and input" in text
    # with MembraneNeurons only, the message is the plain one
    healthy = NonFiniteGuard.diagnose(None, Net(LIF(2, T)), (x, y))
    assert healthy.unreplayed == [] and healthy.describe().startswith(
        "no neuron layer saw a non-finite value: the input data or the layers after"
    )


class Broken(nn.Module):
    """A layer whose forward raises (here: always)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: shapes do not fit")


def fake_trainer() -> SimpleNamespace:
    """What NonFiniteGuard reads of the trainer, without a Trainer."""
    plugin = SimpleNamespace(forward_context=contextlib.nullcontext)
    return SimpleNamespace(
        global_step=7, current_epoch=1, checkpoint_callbacks=[], precision_plugin=plugin
    )


def test_a_diagnosis_that_raises_is_reported_as_failing():
    model = Net(LIF(2, T), Broken())
    x, y = batch()
    diagnosis = NonFiniteGuard.diagnose(None, model, (x, y))
    assert diagnosis.culprit is None
    assert diagnosis.failure == "RuntimeError: boom: shapes do not fit"
    assert NonFiniteGuard.first_non_finite_layer(None, model, (x, y)) is None
    guard = NonFiniteGuard(check_gradients=False)
    trainer = fake_trainer()
    guard.on_train_batch_start(trainer, model, (x, y), 2)
    with pytest.raises(NonFiniteLossError) as error:  # still raised, not the RuntimeError
        guard.on_before_backward(trainer, model, torch.tensor(float("nan")))
        guard.on_before_optimizer_step(trainer, model, None)  # where the guard decides
    message = str(error.value)
    assert message.startswith("non-finite training loss (nan) at global step 7 (epoch 1, batch 2)")
    assert "the diagnosis failed: RuntimeError: boom: shapes do not fit" in message
    assert "no neuron layer saw" not in message
    assert message.endswith("Training stopped before this step's update.")


def test_a_culprit_found_before_the_failure_is_still_named():
    lif = LIF(2, T)
    model = Net(lif, Broken())
    x, y = batch()
    x[1, 0, 1] = float("inf")
    diagnosis = NonFiniteGuard.diagnose(None, model, (x, y))
    assert diagnosis.failure == "RuntimeError: boom: shapes do not fit"
    assert diagnosis.culprit.startswith("'neurons.0' (LIF): non-finite input current")
    assert diagnosis.describe().startswith("the first non-finite neuron layer is 'neurons.0'")


@pytest.mark.parametrize(
    "make",
    [
        lambda: GLIF(4, T),
        lambda: GLIF(4, T, granularity="layer"),
        lambda: GLIFf(4, T),
        lambda: LIF(4, T),
        lambda: PLIF(4, T),
        lambda: PLIF(4, T, granularity="channel"),
    ],
)
def test_builtin_neurons_meet_the_observable_shapes(make):
    m = make()
    assert isinstance(m, MembraneNeuron) and isinstance(m, SpikingNeuron)
    assert m.observables()
    for name, obs in m.observables().items():
        allowed = ((T,), (T, 4)) if obs.per_step else ((), (4,))
        assert tuple(obs.value.shape) in allowed, (name, obs.value.shape)


def test_the_guard_stops_at_a_nan_gradient_of_a_parameter_listed_at_train_start():
    from lightning_glif.callbacks.finite import NonFiniteGuard

    model = Net(LIF(2, T))
    x, y = batch()
    guard = NonFiniteGuard()
    guard.on_train_start(fake_trainer(), model)
    assert guard._params == list(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    trainer = SimpleNamespace(**vars(fake_trainer()), precision="32-true")
    guard.on_train_batch_start(trainer, model, (x, y), 0)
    guard.on_before_optimizer_step(trainer, model, None)  # all finite: nothing happens
    name, p = list(model.named_parameters())[-1]
    p.grad.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=rf"non-finite gradient \(first: {name}\)"):
        guard.on_before_optimizer_step(trainer, model, None)
