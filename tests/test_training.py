"""Training end to end: the digits data, the small convnet, the classifier's parameter groups and
the CLI (fit, test, predict, checkpoints, the run directory), all on the embedded data, offline."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning import Trainer
from torch import nn

from lightning_glif.cli.main import cli_main
from lightning_glif.data.digits import DigitsDataModule
from lightning_glif.models.convnet import SpikingConvNet
from lightning_glif.neurons import GLIF, LIF, PLIF
from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.training.module import SpikingClassifier

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when it gets args while sys.argv holds pytest's own arguments.
    monkeypatch.setattr(sys, "argv", ["train.py"])


def small_fit_args(root) -> list[str]:
    """A few steps of the default run (conf/default.yaml), written under ``root``."""
    return [
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "2",
        "--trainer.limit_test_batches", "2",
        "--model.backbone.init_args.channels", "[8, 16]",
        *QUIET,
    ]  # fmt: skip


# -- the data -------------------------------------------------------------------------------------
def test_digits_split_is_fixed_stratified_and_disjoint():
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    sizes = {name: len(ds) for name, ds in dm.datasets.items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1

    # Disjoint and complete: every row of load_digits() is in exactly one split.
    rows = np.concatenate(list(dm.indices.values()))
    assert np.array_equal(np.sort(rows), np.arange(1797))
    # Stratified: every class in val and test, 27 images each (+-1).
    for name in ("val", "test"):
        counts = torch.bincount(dm.datasets[name].tensors[1], minlength=10)
        assert counts.min() >= 26 and counts.max() <= 28

    # Fixed by split_seed, whatever the global RNG state.
    torch.manual_seed(123)
    np.random.seed(123)
    again = DigitsDataModule()
    again.setup("fit")
    assert all(np.array_equal(dm.indices[k], again.indices[k]) for k in dm.indices)
    other = DigitsDataModule(split_seed=1)
    other.setup("fit")
    assert not np.array_equal(dm.indices["val"], other.indices["val"])


# -- the small convnet ----------------------------------------------------------------------------
def test_convnet_output_is_per_step_logits():
    net = SpikingConvNet(GLIF, time_steps=4)
    static = torch.rand(3, 1, 8, 8)
    assert net(static).shape == (4, 3, 10)
    sequence = static.unsqueeze(1).expand(3, 4, 1, 8, 8)  # [B, T, C, H, W]
    assert net(sequence).shape == (4, 3, 10)
    three_stages = SpikingConvNet(LIF, time_steps=2, num_classes=7, channels=(4, 8, 8))
    assert three_stages(static).shape == (2, 3, 7)


def test_convnet_neuron_count():
    net = SpikingConvNet(GLIF, time_steps=4)
    neurons = [m for m in net.modules() if isinstance(m, SpikingNeuron)]
    assert [(n.num_features, n.time_steps) for n in neurons] == [(32, 4), (64, 4)]

    # Spiking units per image and step: 32 x 8 x 8 + 64 x 8 x 8 (the pool follows the neuron).
    units = []

    def record(module, inputs, spikes):
        units.append(spikes[0, 0].numel())  # one image, one step

    hooks = [n.register_forward_hook(record) for n in neurons]
    net(torch.rand(2, 1, 8, 8))
    for h in hooks:
        h.remove()
    assert units == [32 * 8 * 8, 64 * 8 * 8]
    assert sum(p.numel() for p in net.classifier.parameters()) == 64 * 4 * 4 * 10 + 10


# -- the classifier ------------------------------------------------------------------------------
def attach_trainer(model: SpikingClassifier, max_epochs: int = 10) -> SpikingClassifier:
    model.trainer = Trainer(
        max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    return model


def test_parameter_groups_follow_the_paper():
    model = attach_trainer(SpikingClassifier(SpikingConvNet(GLIF, time_steps=4)))
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["weights", "neuron", "gates"]

    glifs = [m for m in model.modules() if isinstance(m, GLIF)]
    gate_ids = {id(getattr(n, f"{g}_latent")) for n in glifs for g in ("alpha", "beta", "gamma")}
    neuron_ids = {id(p) for n in glifs for p in n.parameters()} - gate_ids
    weight_ids = {id(p) for p in model.parameters()} - gate_ids - neuron_ids
    assert len(gate_ids) == 6 and len(neuron_ids) == 10  # 2 neurons x (3 gates; 5 membrane)
    assert {id(p) for p in groups["gates"]["params"]} == gate_ids
    assert {id(p) for p in groups["neuron"]["params"]} == neuron_ids
    assert {id(p) for p in groups["weights"]["params"]} == weight_ids
    conv = model.backbone.features[0][0].module.weight
    assert any(p is conv for p in groups["weights"]["params"])

    assert isinstance(opt, torch.optim.SGD)
    assert groups["weights"]["lr"] == 0.1 and groups["weights"]["weight_decay"] == 4e-5
    assert groups["neuron"]["lr"] == 0.1 and groups["neuron"]["weight_decay"] == 0.0
    assert groups["gates"]["lr"] == pytest.approx(0.01) and groups["gates"]["weight_decay"] == 0.0
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)

    # Cosine from each group's own rate to 0 over max_epochs, stepped per epoch.
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 10
    assert conf["lr_scheduler"]["interval"] == "epoch"
    for _ in range(5):
        opt.step()
        sched.step()
    assert groups["weights"]["lr"] == pytest.approx(0.05)
    assert groups["gates"]["lr"] == pytest.approx(0.005)
    for _ in range(5):
        opt.step()
        sched.step()
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-12) for g in opt.param_groups)


def test_neuron_lr_factor_scales_the_membrane_group_only():
    model = SpikingClassifier(
        SpikingConvNet(GLIF, time_steps=2), neuron_lr_factor=0.5, gate_lr_factor=0.2
    )
    conf = attach_trainer(model).configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"weights": 0.1, "neuron": pytest.approx(0.05), "gates": pytest.approx(0.02)}
    assert not [g for g in opt.param_groups if "lr_factor" in g]  # popped, not optimizer state
    # The cosine starts from each group's scaled rate.
    assert sched.base_lrs == [0.1, pytest.approx(0.05), pytest.approx(0.02)]

    # PLIF's rate is in the neuron group; the factor applies under any optimizer.
    plif = SpikingClassifier(
        SpikingConvNet(PLIF, time_steps=2),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        neuron_lr_factor=10.0,
    )
    opt = attach_trainer(plif).configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"weights": 1e-3, "neuron": pytest.approx(1e-2)}
    assert SpikingClassifier(SpikingConvNet(LIF, time_steps=2)).neuron_lr_factor == 1.0


def test_parameter_groups_are_configurable_and_skip_empty_groups():
    model = SpikingClassifier(
        SpikingConvNet(PLIF, time_steps=2),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
        gate_lr_factor=1.0,
        neuron_weight_decay=1e-4,
    )
    opt = attach_trainer(model).configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["weights", "neuron"]  # PLIF has no gates
    plif_latents = {id(m.rate_latent) for m in model.modules() if isinstance(m, PLIF)}
    assert {id(p) for p in groups["neuron"]["params"]} == plif_latents
    assert groups["weights"]["weight_decay"] == 0.05 and groups["neuron"]["weight_decay"] == 1e-4
    assert groups["neuron"]["lr"] == 1e-3

    gates = SpikingClassifier(SpikingConvNet(GLIF, time_steps=2), gate_lr_factor=1.0)
    opt = attach_trainer(gates).configure_optimizers()["optimizer"]
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {
        "weights": 0.1,
        "neuron": 0.1,
        "gates": 0.1,
    }

    lif = attach_trainer(SpikingClassifier(SpikingConvNet(LIF, time_steps=2)))
    assert [g["name"] for g in lif.configure_optimizers()["optimizer"].param_groups] == ["weights"]


class RecurrentLIF(SpikingNeuron):
    """A neuron of its own: a learnt leak (a membrane constant) and a learnt recurrent weight
    (not one), ``u[t] = leak * u[t-1] + x[t] + W o[t-1]``."""

    def __init__(self, num_features: int, time_steps: int) -> None:
        super().__init__(num_features, time_steps)
        self.leak = nn.Parameter(torch.full((num_features,), 0.5))
        self.recurrent = nn.Linear(num_features, num_features, bias=False)

    def membrane_parameters(self):
        yield self.leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        u = o = torch.zeros_like(x[0])
        spikes = []
        for x_t in x:
            u = self.leak * u + x_t + self.recurrent(o)
            o = self.surrogate(u - 0.5)
            spikes.append(o)
        return torch.stack(spikes)


class UnnamedRecurrentLIF(RecurrentLIF):
    """The same neuron without ``membrane_parameters``: SpikingNeuron's default, none."""

    membrane_parameters = SpikingNeuron.membrane_parameters


class LinearNet(nn.Module):
    """``[B, T, 3]`` -> linear -> the neuron -> linear, per-step logits ``[T, B, 2]``."""

    def __init__(self, neuron: nn.Module) -> None:
        super().__init__()
        self.inp, self.neuron, self.out = nn.Linear(3, 4), neuron, nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.neuron(self.inp(x).transpose(0, 1)))


def test_a_custom_neurons_recurrent_weight_keeps_the_weight_decay():
    model = SpikingClassifier(LinearNet(RecurrentLIF(4, 2)), num_classes=2, neuron_lr_factor=0.5)
    opt = attach_trainer(model).configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in opt.param_groups}
    net = model.backbone
    assert list(groups) == ["weights", "neuron"]
    assert [p is net.neuron.leak for p in groups["neuron"]["params"]] == [True]
    weights = {id(p) for p in groups["weights"]["params"]}
    assert weights == {id(p) for p in net.parameters()} - {id(net.neuron.leak)}
    assert id(net.neuron.recurrent.weight) in weights
    assert groups["weights"]["weight_decay"] == 4e-5 and groups["weights"]["lr"] == 0.1
    assert groups["neuron"]["weight_decay"] == 0.0 and groups["neuron"]["lr"] == 0.05

    # a neuron that names no membrane constant: every parameter of it trains as a weight
    unnamed = SpikingClassifier(LinearNet(UnnamedRecurrentLIF(4, 2)), num_classes=2)
    opt = attach_trainer(unnamed).configure_optimizers()["optimizer"]
    assert [g["name"] for g in opt.param_groups] == ["weights"]
    assert len(opt.param_groups[0]["params"]) == len(list(unnamed.parameters())) == 6


def test_hyperparameters_keep_configs_and_drop_objects(tmp_path):
    """Built in Python, the backbone, optimizer and loss are objects: left out of the
    hyperparameters (a checkpoint must not pickle them), and no copy of them is kept. Under
    LightningCLI they are the resolved config, which a checkpoint rebuilds the model from."""
    from lightning_glif.training.losses import TETLoss

    model = SpikingClassifier(
        SpikingConvNet(LIF, time_steps=2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        loss=TETLoss(),
        gate_lr_factor=2.0,
    )
    plain = {
        "num_classes": 10, "lr_scheduler": None, "lr_interval": "epoch", "gate_lr_factor": 2.0,
        "neuron_lr_factor": 1.0, "neuron_weight_decay": 0.0, "compile": False,
    }  # fmt: skip
    assert dict(model.hparams) == plain and dict(model.hparams_initial) == plain

    cli = cli_main(["--trainer.default_root_dir", str(tmp_path), *QUIET], run=False)
    hparams = cli.model.hparams
    assert hparams["backbone"]["class_path"] == "lightning_glif.models.convnet.SpikingConvNet"
    assert hparams["backbone"]["init_args"]["neuron"]["class_path"] == "lightning_glif.neurons.GLIF"
    assert hparams["optimizer"]["class_path"] == "torch.optim.SGD"
    assert hparams["gate_lr_factor"] == 1000 and hparams["loss"] is None


def test_loss_is_cross_entropy_of_time_averaged_logits():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return self.logits

    per_step = torch.randn(3, 2, 10)  # [T, B, K]
    model = SpikingClassifier(Fixed(per_step))
    y = torch.tensor([1, 7])
    loss, logits, _ = model._step((torch.zeros(2, 1, 8, 8), y))
    assert torch.equal(logits, per_step.mean(0))
    assert loss == nn.functional.cross_entropy(per_step.mean(0), y)

    with pytest.raises(ValueError, match=r"per-step logits \[T, B, num_classes=10\]"):
        SpikingClassifier(Fixed(torch.randn(2, 10)))(torch.zeros(2, 1, 8, 8))


# -- the CLI -------------------------------------------------------------------------------------
class _StepRecorder(pl.Callback):
    """Each training step's loss and batch size."""

    def __init__(self):
        self.losses, self.sizes = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.sizes.append(batch[1].shape[0])


def test_epoch_metrics_are_the_batch_weighted_means_of_the_steps():
    """The per-epoch values (logged once per epoch from metric states, not per step) against
    values computed by hand: train/loss is the batch-size-weighted mean of the step losses,
    val/loss, val/acc and val/acc_top5 those of a hand-run pass over the validation loader."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=100)  # 1257 = 12 x 100 + 57: unequal batches
    model = SpikingClassifier(SpikingConvNet(GLIF, channels=(4, 8)), num_classes=10)
    recorder = _StepRecorder()
    trainer = Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert recorder.sizes[-1] == 57 and len(recorder.sizes) == 13
    losses, sizes = np.array(recorder.losses), np.array(recorder.sizes)
    assert metrics["train/loss"].item() == pytest.approx((losses * sizes).sum() / sizes.sum())

    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            logits = model(x)
            loss_sum += model.loss(model.per_step_logits(x), y).item() * len(y)
            top1 += (logits.argmax(1) == y).sum().item()
            top5 += (logits.topk(5, 1).indices == y[:, None]).any(1).sum().item()
            n += len(y)
    assert n == 270
    assert metrics["val/loss"].item() == pytest.approx(loss_sum / n, rel=1e-5)
    assert metrics["val/acc"].item() == pytest.approx(top1 / n)
    assert metrics["val/acc_top5"].item() == pytest.approx(top5 / n)
    assert metrics["val/acc_best"].item() == pytest.approx(top1 / n)


@pytest.mark.slow
def test_fit_test_predict_and_reload(tmp_path):
    cli = cli_main(["fit", *small_fit_args(tmp_path)])
    run = tmp_path / "digits" / "version_0"
    assert cli.trainer.log_dir == str(run)

    # One run directory: TensorBoard events, the resolved config and the checkpoints.
    assert list(run.glob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["backbone"]["class_path"].endswith("SpikingConvNet")
    assert config["model"]["backbone"]["init_args"]["channels"] == [8, 16]
    assert config["trainer"]["max_epochs"] == 2
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # best on val/acc + last

    metrics = cli.trainer.callback_metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/acc_best"):
        assert name in metrics, name
    # Epoch 2 of a 2-epoch cosine starts at half the initial rates; gates at conf/default.yaml's
    # 1000 times those (LearningRateMonitor's names for the optimizer's named parameter groups).
    assert metrics["lr-SGD/weights"] == pytest.approx(0.05) and metrics["lr-SGD/neuron"] == 0.05
    assert metrics["lr-SGD/gates"] == pytest.approx(50.0)
    assert not [name for name in metrics if name.startswith("lr/")]  # the module logs none
    assert torch.isfinite(metrics["train/loss"])
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    best = cli.trainer.checkpoint_callback
    assert best.monitor == "val/acc" and best.best_model_score == metrics["val/acc_best"]

    # Reload: identical predictions, bit for bit (last.ckpt holds the final weights).
    last = run / "checkpoints" / "last.ckpt"
    dm = DigitsDataModule()
    dm.setup("predict")
    x = dm.datasets["test"].tensors[0][:64]
    trained = cli.model.eval()
    reloaded = SpikingClassifier.load_from_checkpoint(last).eval()
    assert reloaded.backbone.features[1][0].module.out_channels == 16  # rebuilt from the ckpt
    with torch.no_grad():
        assert torch.equal(trained(x), reloaded(x))

    # `test --ckpt_path` rebuilds the model from the checkpoint's hyperparameters: the channels
    # are not given again. It is a new run: version_1, the first run is left alone.
    from_last = ["--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(last), *QUIET]
    tested = cli_main(["test", *from_last, "--trainer.limit_test_batches", "2"])
    assert "test/acc" in tested.trainer.callback_metrics
    assert "test/acc_top5" in tested.trainer.callback_metrics
    assert (tmp_path / "digits" / "version_1" / "config.yaml").is_file()
    with torch.no_grad():
        assert torch.equal(tested.model.eval()(x), trained(x))

    predicted = cli_main(["predict", *from_last, "--trainer.limit_predict_batches", "1"])
    with torch.no_grad():
        assert torch.equal(predicted.model.eval()(x), trained(x))


@pytest.mark.slow
def test_resume_continues_and_never_overwrites_a_run(tmp_path):
    # Stopped after its first epoch of two (max_steps), so the cosine schedule runs over the two
    # epochs that the resume completes (a resume with another max_epochs is refused).
    cli_main(["fit", *small_fit_args(tmp_path), "--trainer.max_steps", "4"])
    run = tmp_path / "digits" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)

    resumed = cli_main(["fit", *small_fit_args(tmp_path), "--ckpt_path", str(last)])
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 8
    assert (tmp_path / "digits" / "version_1" / "config.yaml").is_file()
    # The schedule continues (one epoch before the resume, one after) ...
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    # ... and the best validation accuracy survives the resume (it is part of the weights).
    best_before = first["state_dict"]["val_acc_best.max_value"].item()
    val_after = resumed.trainer.callback_metrics["val/acc"].item()
    assert resumed.model.val_acc_best.compute().item() == pytest.approx(max(best_before, val_after))

    # Writing into an existing run directory (a fixed version) is refused, not overwritten.
    before = (run / "config.yaml").read_text()
    with pytest.raises(SystemExit, match="2"):
        cli_main(["fit", *small_fit_args(tmp_path), "--trainer.logger.init_args.version", "0"])
    assert (run / "config.yaml").read_text() == before


def test_help_names_the_main_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--model.backbone",
        "--model.gate_lr_factor",
        "--model.optimizer",
        "--trainer.default_root_dir",
        "--data",
        "--ckpt_path",
    ):
        assert option in out


def test_mismatched_classes_are_a_clear_error(tmp_path):
    # The CLI copies num_classes from the data into the model; a model built in Python can
    # still disagree with its data.
    model = SpikingClassifier(SpikingConvNet(LIF, time_steps=2, num_classes=7), num_classes=7)
    trainer = Trainer(
        fast_dev_run=1, default_root_dir=tmp_path, enable_progress_bar=False, accelerator="cpu"
    )
    with pytest.raises(ValueError, match="the data has 10 classes but the model was built for "):
        trainer.fit(model, datamodule=DigitsDataModule())


@pytest.mark.slow
def test_cosine_can_step_per_batch(tmp_path):
    args = ["--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "3", *QUIET]
    cli = cli_main(["fit", *args, "--model.lr_interval", "step"])
    config = cli.trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.T_max == 3  # fast_dev_run: 3 steps
    assert config.scheduler.last_epoch == 3
    assert all(lr == pytest.approx(0.0, abs=1e-12) for lr in config.scheduler.get_last_lr())
