"""GateMonitor: what it logs for every SpikingNeuron's observables, read back from the TensorBoard
event files and compared with the model's values and with statistics computed by hand."""

from __future__ import annotations

import math
from csv import DictReader as csv_reader
from pathlib import Path

import numpy as np
import pytest
import torch
from monitoring import last_scalar, read_events, tiny_fit
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.callbacks import GateMonitor
from lightning_glif.callbacks.figures import evolution_figure
from lightning_glif.neurons import GLIF, LIF, PLIF, GLIFf, Observable, SpikingNeuron
from lightning_glif.training import tags

T = 4


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cli, run_dir = tiny_fit(tmp_path_factory.mktemp("fit"))
    return cli, read_events(run_dir)


def fit(
    tmp_path, model: LightningModule, monitor: GateMonitor, *others: Callback, epochs: int = 2,
    channels=3, logger=None,
):  # fmt: skip
    """``trainer.fit`` of ``model`` on 4 samples of noise ``[4, T, channels]`` in batches of 2
    (two steps an epoch); the run's events (of a TensorBoardLogger, unless ``logger`` is given)."""
    logger = logger or TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = Trainer(
        logger=logger,
        callbacks=[monitor, *others],
        max_epochs=epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    x = torch.rand(4, T, channels, generator=torch.Generator().manual_seed(0)) * 2
    trainer.fit(model, DataLoader(TensorDataset(x), batch_size=2))
    return read_events(logger.log_dir)


class Chain(LightningModule):
    """Neurons applied one after the other to ``[B, T, 3]`` noise, trained with SGD at ``lr``."""

    def __init__(self, lr: float = 0.1, **neurons: nn.Module) -> None:
        super().__init__()
        self.lr = lr
        for name, neuron in neurons.items():
            self.add_module(name, neuron)

    def training_step(self, batch, batch_idx) -> torch.Tensor:
        x = batch[0].transpose(0, 1)
        for neuron in self.children():
            x = neuron(x)
        return x.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


# -- the default model (a CLI fit, shared by these tests) -----------------------------------------
@pytest.mark.slow
def test_gate_and_membrane_tags_exist_for_every_glif_layer(fitted):
    cli, events = fitted
    tags_ = events.Tags()
    layers = [n for n, m in cli.model.named_modules() if isinstance(m, GLIF)]
    assert layers == ["backbone.features.0.2", "backbone.features.1.2"]
    for layer in layers:
        for gate in ("alpha", "beta", "gamma"):
            assert f"gates/{layer}/{gate}" in tags_["histograms"]
            assert f"gates/{layer}/{gate}_mean" in tags_["scalars"]
            assert f"gates/{layer}/{gate}_std" in tags_["scalars"]
        for name in ("tau", "v_threshold", "v_leak", "v_reset"):
            assert f"membrane/{layer}/{name}" in tags_["histograms"]
            assert f"membrane/{layer}/{name}_mean" in tags_["scalars"]
            assert f"membrane/{layer}/{name}_std" in tags_["scalars"]
        for t in range(T):
            assert f"membrane/{layer}/conductance/t{t}" in tags_["histograms"]
            assert f"membrane/{layer}/conductance_mean/t{t}" in tags_["scalars"]
            assert f"membrane/{layer}/conductance_std/t{t}" in tags_["scalars"]
        assert f"membrane/{layer}/conductance" not in tags_["histograms"]  # per step only
    for image in ("gates/evolution", "gates/distributions"):
        assert len(events.Images(image)) == 2  # one per epoch
    # At the start, every 2 steps and at the end (2 epochs of 3 steps): steps 0, 2, 4, 6.
    steps = [e.step for e in events.Histograms(f"gates/{layers[0]}/alpha")]
    assert steps == [0, 2, 4, 6]
    assert [e.step for e in events.Scalars(f"gates/{layers[0]}/alpha_std")] == [0, 2, 4, 6]


@pytest.mark.slow
def test_last_alpha_histogram_equals_the_models_values(fitted):
    cli, events = fitted
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, GateMonitor))
    for name, module in cli.model.named_modules():
        if not isinstance(module, GLIF):
            continue
        last = events.Histograms(f"gates/{name}/alpha")[-1]
        assert last.step == cli.trainer.global_step == 6
        alpha = module.values().alpha.detach().double().numpy()
        h = last.histogram_value
        assert (h.num, h.min, h.max) == (alpha.size, alpha.min(), alpha.max())
        assert h.sum == pytest.approx(alpha.sum(), rel=1e-12)
        assert h.sum_squares == pytest.approx(alpha @ alpha, rel=1e-12)
        counts, _ = np.histogram(alpha, bins=monitor.bins)
        assert sum(h.bucket) == alpha.size
        assert [c for c in h.bucket if c] == [c for c in counts.tolist() if c]
        mean = events.Scalars(f"gates/{name}/alpha_mean")[-1]
        assert mean.step == 6 and mean.value == pytest.approx(alpha.mean(), rel=1e-6)
        std = events.Scalars(f"gates/{name}/alpha_std")[-1]
        # the population std, from the histogram's sums: sqrt(E[a^2] - E[a]^2)
        by_sums = math.sqrt(max(h.sum_squares / h.num - (h.sum / h.num) ** 2, 0.0))
        assert std.step == 6 and std.value == pytest.approx(alpha.std(), rel=1e-5)
        assert std.value == pytest.approx(by_sums, rel=1e-3) and std.value > 0
        # the evolution holds the initial values (epoch 0) and one mean per epoch
        assert monitor.epochs == [0, 1, 2]
        assert monitor.means[name]["alpha"][-1] == pytest.approx(alpha.mean(), rel=1e-6)
        assert monitor.stds[name]["alpha"][-1] == pytest.approx(alpha.std(), rel=1e-5)
        assert list(monitor.means[name]) == ["alpha", "beta", "gamma"]  # the "gates" group


def test_gate_monitor_state_survives_a_checkpoint():
    monitor = GateMonitor()
    monitor.epochs, monitor.means = [0, 1], {"net.0": {"alpha": [0.5, 0.6]}}
    monitor.stds = {"net.0": {"alpha": [0.01, 0.2]}}
    restored = GateMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.epochs == [0, 1] and restored.means == {"net.0": {"alpha": [0.5, 0.6]}}
    assert restored.stds == {"net.0": {"alpha": [0.01, 0.2]}}
    # the resumed run continues the evolution: the next epoch's means are appended
    glif = GLIF(2, T, gate_init=(0.75, 0.5, 0.25))
    restored.layers = {"net.0": glif}
    restored.record(2, restored.snapshot())
    assert restored.epochs == [0, 1, 2]
    assert restored.means["net.0"]["alpha"] == pytest.approx([0.5, 0.6, 0.75])
    assert restored.means["net.0"]["gamma"] == pytest.approx([0.25])
    assert restored.stds["net.0"]["alpha"] == pytest.approx([0.01, 0.2, 0.0])  # one value each


# -- hand-built layers ---------------------------------------------------------------------------
def test_std_equals_numpys_population_std_of_known_values(tmp_path):
    glif = GLIF(4, T, learn_membrane=False)
    alpha = [0.1, 0.2, 0.4, 0.8]
    conductance = [[0.5, 0.5, 0.5, 0.5], [0.1, 0.3, 0.5, 0.7], [0.9, 0.9, 0.1, 0.1], [0.2] * 4]
    with torch.no_grad():
        glif.alpha_latent.copy_(torch.tensor([logit(a) for a in alpha]))
        glif.conductance_latent.copy_(torch.tensor([[logit(g) for g in r] for r in conductance]))
    # lr = 0: the values logged at every step are the ones set above
    monitor = GateMonitor(every_n_steps=1)
    events = fit(tmp_path, Chain(lr=0.0, glif=glif), monitor, epochs=1, channels=4)
    # by hand: mean 0.375, squared deviations .075625 + .030625 + .000625 + .180625 = .2875
    assert np.std(alpha) == pytest.approx(math.sqrt(0.2875 / 4), rel=1e-12)  # ddof=0
    for e in events.Scalars("gates/glif/alpha_std"):
        assert e.value == pytest.approx(math.sqrt(0.2875 / 4), rel=1e-6)
    assert last_scalar(events, "gates/glif/alpha_mean") == pytest.approx(0.375, rel=1e-6)
    # per step: t0 constant (std 0), t1 mean .4 std sqrt(.05), t2 std .4, t3 constant
    by_hand = [0.0, math.sqrt(0.05), 0.4, 0.0]
    for t, want in enumerate(by_hand):
        assert np.std(conductance[t]) == pytest.approx(want, abs=1e-12)
        got = last_scalar(events, f"membrane/glif/conductance_std/t{t}")
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
        mean = last_scalar(events, f"membrane/glif/conductance_mean/t{t}")
        assert mean == pytest.approx(np.mean(conductance[t]), rel=1e-6)
    # a constant layer: std exactly 0 (statistics in float64), mean its value
    assert last_scalar(events, "membrane/glif/tau_std") == 0.0
    assert last_scalar(events, "membrane/glif/tau_mean") == pytest.approx(0.25, rel=1e-7)


def test_gate_monitor_on_layer_wise_glif_and_gliff(tmp_path):
    model = Chain(glif=GLIF(3, T, granularity="layer", gamma=1.0), gliff=GLIFf(3, T))
    monitor = GateMonitor(every_n_steps=1)
    events = fit(tmp_path, model, monitor)
    tags_ = events.Tags()
    assert "gates/gliff/alpha" not in tags_["histograms"]  # GLIF_f has no gates
    assert "membrane/gliff/tau" in tags_["histograms"]
    assert [e.step for e in events.Histograms("gates/glif/gamma")] == [0, 1, 2, 3, 4]
    assert events.Scalars("gates/glif/gamma_mean")[-1].value == 1.0  # pinned
    alpha = model.glif.values().alpha.item()  # a layer-wise gate: one value
    last = events.Histograms("gates/glif/alpha")[-1].histogram_value
    assert (last.num, last.min, last.max) == (1, alpha, alpha)
    assert last_scalar(events, "gates/glif/alpha_std") == 0.0  # one value: no spread
    g = model.glif.values().conductance  # [T] layer-wise
    for t in range(T):
        assert events.Scalars(f"membrane/glif/conductance_mean/t{t}")[-1].value == pytest.approx(
            g[t].item()
        )
    # by default the images only after the last epoch
    assert [e.step for e in events.Images("gates/distributions")] == [4]
    assert [e.step for e in events.Images("gates/evolution")] == [4]


class Resonator(SpikingNeuron):
    """Not a MembraneNeuron: fires where ``rho * x > 0.5``; ``rho`` (per channel) is its gate and
    ``gain`` a per-step quantity, both reported through observables()."""

    def __init__(self, num_features: int, time_steps: int) -> None:
        super().__init__(num_features, time_steps)
        self.rho = nn.Parameter(torch.linspace(0.5, 1.5, num_features))
        self.gain = torch.linspace(0.0, 1.0, time_steps * num_features).view(time_steps, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.surrogate(self.rho.view(-1) * x - 0.5)

    def gate_parameters(self):
        yield self.rho

    def observables(self) -> dict[str, Observable]:
        return {
            "rho": Observable("gates", self.rho),
            "gain": Observable("membrane", self.gain, per_step=True),
        }


def test_lif_plif_and_any_spiking_neuron_are_logged(tmp_path):
    lif, plif = LIF(3, T, decay=0.25, v_threshold=0.75), PLIF(3, T, granularity="channel")
    model = Chain(lif=lif, resonator=Resonator(3, T), plif=plif)
    monitor = GateMonitor(every_n_steps=1, figure_every_n_epochs=1)
    events = fit(tmp_path, model, monitor)
    # LIF: fixed decay and threshold (scalars: std 0)
    for e in events.Scalars("membrane/lif/decay_mean"):
        assert e.value == 0.25
    assert last_scalar(events, "membrane/lif/v_threshold_mean") == 0.75
    assert last_scalar(events, "membrane/lif/decay_std") == 0.0
    # PLIF: the learnt decay 1 - sigmoid(w), per channel, at the end of training
    decay = (1 - torch.sigmoid(plif.rate_latent)).detach().double().numpy()
    assert events.Scalars("membrane/plif/decay_mean")[0].value == pytest.approx(0.5)
    assert last_scalar(events, "membrane/plif/decay_mean") == pytest.approx(decay.mean())
    assert last_scalar(events, "membrane/plif/decay_std") == pytest.approx(decay.std(), rel=1e-5)
    h = events.Histograms("membrane/plif/decay")[-1].histogram_value
    assert (h.num, h.min, h.max) == (3, decay.min(), decay.max())
    # neither has gates: no gates tags, no evolution entries with values
    assert not [t for t in events.Tags()["scalars"] if t.startswith(("gates/lif", "gates/plif"))]
    # a neuron of its own: its gate is logged and drawn, its per-step quantity one series a step
    rho = model.resonator.rho.detach().double().numpy()
    assert last_scalar(events, "gates/resonator/rho_mean") == pytest.approx(rho.mean())
    assert last_scalar(events, "gates/resonator/rho_std") == pytest.approx(rho.std(), rel=1e-5)
    assert monitor.epochs == [0, 1, 2]
    assert monitor.means["resonator"]["rho"][0] == pytest.approx(1.0)  # linspace(.5, 1.5) mean
    assert monitor.means["resonator"]["rho"][-1] == pytest.approx(rho.mean())
    assert set(monitor.means) == {"resonator"}  # layers without gates are not in the evolution
    gain = model.resonator.gain.double().numpy()
    for t in range(T):
        got = last_scalar(events, f"membrane/resonator/gain_std/t{t}")
        assert got == pytest.approx(gain[t].std(), rel=1e-6)
    assert len(events.Images(tags.GATE_EVOLUTION)) == 2
    assert len(events.Images(tags.GATE_DISTRIBUTIONS)) == 2


def test_membrane_false_logs_the_gates_only(tmp_path):
    events = fit(tmp_path, Chain(glif=GLIF(3, T)), GateMonitor(membrane=False), epochs=1)
    scalars = events.Tags()["scalars"]
    assert "gates/glif/alpha_std" in scalars
    assert not [t for t in scalars if t.startswith("membrane/")]


def test_evolution_panels_are_the_gates_of_the_data():
    means = {"a": {"rho": [0.5, 0.6]}, "b": {}, "c": {"alpha": [0.1, 0.2], "rho": [0.4, 0.4]}}
    figure = evolution_figure([0, 1], means)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["mean rho per epoch", "mean alpha per epoch"]
    legend = figure.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a", "c"]  # "b" has no gates


class Values(Callback):
    """The alpha of layer ``glif`` after every optimizer step, by global step."""

    def __init__(self) -> None:
        self.alpha: dict[int, np.ndarray] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.alpha[trainer.global_step] = pl_module.glif.values().alpha.detach().numpy().copy()


def test_cadences_and_each_histogram_holds_its_own_steps_values(tmp_path):
    """Histograms and scalars at the start, every 3 steps and at the end; images every 3 epochs
    and after the last. The histograms of a step are written at the end of its epoch, with the
    values of that step (SGD changes alpha every step)."""
    values = Values()
    monitor = GateMonitor(every_n_steps=3, figure_every_n_epochs=3)
    events = fit(tmp_path, Chain(lr=1.0, glif=GLIF(3, T)), monitor, values, epochs=4)
    steps = [e.step for e in events.Histograms("gates/glif/alpha")]
    assert steps == [0, 3, 6, 8]  # 2 steps an epoch: the end is step 8
    assert [e.step for e in events.Scalars("gates/glif/alpha_mean")] == steps
    for e in events.Histograms("gates/glif/alpha")[1:]:
        alpha = values.alpha[e.step]
        h = e.histogram_value
        assert (h.min, h.max) == (alpha.min(), alpha.max()), e.step
    assert len({float(values.alpha[s].mean()) for s in steps[1:]}) == len(steps) - 1  # all moved
    for tag in (tags.GATE_EVOLUTION, tags.GATE_DISTRIBUTIONS):
        assert [e.step // 2 for e in events.Images(tag)] == [3, 4]  # epochs


def test_without_a_tensorboard_logger_the_scalars_still_reach_the_logger(tmp_path):
    csv = CSVLogger(tmp_path, name="csv", version=0)
    with pytest.warns(UserWarning, match="no TensorBoardLogger, so its histograms and images"):
        fit(tmp_path, Chain(glif=GLIF(3, T)), GateMonitor(every_n_steps=1), logger=csv, epochs=1)
    rows = list(csv_reader((Path(csv.log_dir) / "metrics.csv").open()))
    logged = [r for r in rows if r.get("gates/glif/alpha_mean")]
    assert [int(r["step"]) for r in logged] == [0, 1, 2]


def test_negative_cadences_are_refused():
    with pytest.raises(ValueError, match="figure_every_n_epochs >= 0"):
        GateMonitor(figure_every_n_epochs=-1)
    with pytest.raises(ValueError, match="every_n_steps >= 0"):
        GateMonitor(every_n_steps=-1)
