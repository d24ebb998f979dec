"""Every config in ``conf/`` parses, builds its model and runs ``fast_dev_run`` on fabricated data.

The data is fabricated in the shape the config's own DataModule produces (which needs no files to
be built), so no dataset is read and nothing is downloaded. The experiments run small without
changing their models' layout: T=2 (their full-size models are built in
``test_experiment_config_builds_what_its_name_says``) and 64x64 instead of 224x224 ImageNet
images (the MS-ResNet ends in a global average pool).
"""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.cli.config import import_class, signature_defaults
from lightning_glif.cli.main import cli_main
from lightning_glif.data.errors import DatasetNotFoundError
from lightning_glif.data.vision import CIFAR10DataModule, CIFAR100DataModule, ImageNetDataModule
from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.training.module import SpikingClassifier

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "lightning_glif" / "conf"  # shipped in the package; ROOT/conf links to it
DEFAULT = CONF / "default.yaml"
EXPERIMENTS = sorted((CONF / "experiment").glob("*.yaml"))
NEURONS = sorted((CONF / "neuron").glob("*.yaml"))
RECIPES = sorted((CONF / "recipe").glob("*.yaml"))
ALL = sorted(CONF.rglob("*.yaml"))

# The experiments' fast_dev_run at T=2 (the data's own T where it has one: the model follows it),
# ImageNet at 64x64; row digits keep T=8 (one step per pixel row at least).
SMALL_T = ["--model.backbone.init_args.time_steps", "2"]
SMALLER = {
    "cifar10dvs_widenet7b_t16": (["--data.init_args.time_steps", "2"], None),
    "event_digits": (["--data.init_args.time_steps", "2"], None),
    "imagenet_resnet18ms_t6": (SMALL_T, 64),
    "row_digits": ([], None),
    "delayed_row_digits": (
        ["--data.init_args.time_steps", "16", "--data.init_args.blank_steps", "1"],
        None,
    ),
}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when it gets args while sys.argv holds pytest's own arguments.
    monkeypatch.setattr(sys, "argv", ["train.py"])


class FabricatedData(LightningDataModule):
    """Four random samples of one shape and their labels, in batches of two, for every stage."""

    def __init__(self, sample_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(4, *sample_shape, generator=generator)
        self.dataset = TensorDataset(x, torch.arange(4) % num_classes)

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=2)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def sample_shape(datamodule, side: int | None = None) -> tuple[int, ...]:
    """The shape of one sample of ``datamodule`` (built, never set up: no files are read)."""
    frames = getattr(datamodule, "frame_shape", None)  # Tonic event data: (T, P, H, W)
    if frames is not None:
        return tuple(frames)
    steps = getattr(datamodule, "time_steps", None)  # other sequences: (T, ...)
    if hasattr(datamodule, "in_features"):  # (T, F)
        return (steps, datamodule.in_features)
    side = side or datamodule.image_size
    image = (datamodule.in_channels, side, side)
    return image if steps is None else (steps, *image)


def class_name(spec: str | dict) -> str:
    """The class a config names, as ``class_path`` or as a plain string."""
    return (spec if isinstance(spec, str) else spec["class_path"]).rsplit(".", 1)[1]


def stack_for(path: Path) -> list[str]:
    """``--config`` arguments that run ``path`` (default.yaml is always read first)."""
    return [] if path == DEFAULT else ["--config", str(path)]


def build(path: Path, tmp_path: Path, *extra: str):
    return cli_main(
        [*stack_for(path), "--trainer.default_root_dir", str(tmp_path), *extra], run=False
    )


def fast_dev_run(path: Path, tmp_path: Path) -> None:
    small = SMALL_T if path in EXPERIMENTS else []
    overrides, side = SMALLER.get(path.stem, (small, None))
    cli = build(
        path,
        tmp_path,
        "--trainer.fast_dev_run", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32-true",  # the DVS recipe's fp16 AMP is for GPUs
        "--trainer.enable_progress_bar", "false",
        *overrides,
    )  # fmt: skip
    assert isinstance(cli.model, SpikingClassifier)
    data = FabricatedData(sample_shape(cli.datamodule, side), cli.model.num_classes)
    cli.trainer.fit(cli.model, datamodule=data)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/acc" in cli.trainer.callback_metrics
    cli.trainer.test(cli.model, datamodule=data, verbose=False)
    assert 0 <= cli.trainer.callback_metrics["test/acc"] <= 1


OVERLAYS = [CONF / "debug.yaml"]


def test_every_config_is_covered():
    multinode = CONF / "multinode.yaml"  # GPUs only: parsed in tests/test_reliability.py
    ablation_grids = set((CONF / "ablation").glob("*.yaml"))  # ablate.py grids: test_ablation.py
    search_spaces = set((CONF / "search").glob("*.yaml"))  # ablate.py search: test_sweep*.py
    covered = {
        DEFAULT, *OVERLAYS, *EXPERIMENTS, *NEURONS, *RECIPES, multinode, *ablation_grids,
        *search_spaces,
    }  # fmt: skip
    assert set(ALL) == covered, "a config in conf/ is not exercised by the tests below"
    assert {p.stem for p in NEURONS} == {"glif", "lif", "plif", "gliff"}


@pytest.mark.parametrize("path", [DEFAULT, *OVERLAYS, *NEURONS], ids=lambda p: p.stem)
def test_digits_configs_run(path, tmp_path):
    fast_dev_run(path, tmp_path)


def test_default_run_has_checkpoints_and_the_monitors():
    callbacks = yaml.safe_load(DEFAULT.read_text())["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in callbacks] == [
        "ModelCheckpoint",
        "ModelCheckpoint",
        "LearningRateMonitor",
        "NonFiniteGuard",
        "GateMonitor",
        "FiringRateMonitor",
        "SynapticOpsMonitor",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_run(path, tmp_path):
    fast_dev_run(path, tmp_path)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_builds_what_its_name_says(path, tmp_path):
    """The full-size model is built; its T, classes and logger name agree with the file name
    (``<name>_t<T>``; without ``_t<T>`` in the name, T is the data's own)."""
    cli = build(path, tmp_path)
    stated = yaml.safe_load(path.read_text())
    backbone = cli.model.backbone
    stated_backbone = stated.get("model.backbone") or stated["model"]["backbone"]
    assert type(backbone).__name__ == class_name(stated_backbone)
    named = re.search(r"_t(\d+)$", path.stem)
    # without _t<T> in the name, T is the data's (and linked into the model from there)
    time_steps = int(named[1]) if named else cli.datamodule.time_steps
    neurons = [m for m in backbone.modules() if isinstance(m, SpikingNeuron)]
    assert neurons and {n.time_steps for n in neurons} == {time_steps}
    assert type(neurons[0]).__name__ == "GLIF"  # the paper's neuron unless an overlay says else
    assert cli.model.num_classes == cli.datamodule.num_classes
    assert cli.trainer.logger.name == path.stem
    if "digits" not in path.stem:  # a paper recipe keeps the authors' optimisation exactly
        full_rate = "imagenet" in path.stem or "dvs" in path.stem  # gates at the full lr
        assert cli.model.gate_lr_factor == (1.0 if full_rate else 0.1)
        assert cli.model.neuron_lr_factor == 1.0 and cli.model.neuron_weight_decay == 0.0
    if hasattr(cli.datamodule, "time_steps"):
        assert cli.datamodule.time_steps == time_steps


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_configs_inherit_nothing_by_accident(path, tmp_path):
    """A config that names a class starts from that class's defaults: every init_arg of an
    experiment's backbone and data is stated in the experiment file, linked from the data, or the
    class's own default, never a value left over from default.yaml (the digits' in_channels=1
    on a CIFAR net, their val_fraction on N-MNIST). The neuron is inherited on purpose."""
    cli = build(path, tmp_path)
    config = cli.config
    stated = yaml.safe_load(path.read_text())
    linked = cli.datamodule.shared_values()
    for section, resolved in (
        ("backbone", config.model.backbone),
        ("data", config.data),
    ):
        backbone = stated.get("model.backbone") or stated["model"]["backbone"]
        spec = backbone if section == "backbone" else stated["data"]
        spec = spec if isinstance(spec, dict) else {"class_path": spec}
        defaults = signature_defaults(import_class(resolved.class_path))
        for key, value in vars(resolved.init_args).items():
            if key in spec.get("init_args", {}) or key == "neuron":
                continue
            expected = linked[key] if key in linked and section == "backbone" else defaults[key]
            if isinstance(expected, tuple):
                expected = list(expected)
            assert value == expected, f"{section}.{key}={value!r} leaks in from another config"


def test_neuron_overlay_stacks_on_an_experiment(tmp_path):
    cli = build(
        CONF / "experiment" / "cifar10_resnet19_t2.yaml",
        tmp_path,
        "--config",
        str(CONF / "neuron" / "lif.yaml"),
    )
    neurons = [m for m in cli.model.backbone.modules() if isinstance(m, SpikingNeuron)]
    assert len(neurons) == 17  # ResNet-19: stem + 8 blocks x 2
    assert {type(n).__name__ for n in neurons} == {"LIF"}
    assert {n.time_steps for n in neurons} == {2}
    assert all(n.decay.item() == 0.25 for n in neurons)


@pytest.mark.parametrize(
    ("experiment", "lr", "gate_lr", "decay", "t_max"),
    [
        ("cifar100_resnet19_t4", 0.1, 0.01, 4e-5, 200),  # cosine to 0 over the 200 epochs
        ("imagenet_resnet18ms_t6", 0.1, 0.1, 4e-5, 150),  # gates at the full rate on ImageNet
        # the DVS recipe's own T_max; no weight decay, gates at the full rate (the authors')
        ("cifar10dvs_widenet7b_t16", 0.01, 0.01, 0.0, 64),
    ],
)
def test_recipe_optimisation_reaches_the_parameter_groups(
    experiment, lr, gate_lr, decay, t_max, tmp_path
):
    cli = build(CONF / "experiment" / f"{experiment}.yaml", tmp_path)
    cli.model.trainer = cli.trainer
    conf = cli.model.configure_optimizers()
    groups = {g["name"]: g for g in conf["optimizer"].param_groups}
    assert groups["weights"]["lr"] == lr and groups["weights"]["weight_decay"] == decay
    assert groups["neuron"]["lr"] == lr and groups["neuron"]["weight_decay"] == 0.0
    assert groups["gates"]["lr"] == pytest.approx(gate_lr) and groups["gates"]["weight_decay"] == 0
    sched = conf["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == t_max
    assert conf["lr_scheduler"]["interval"] == "epoch"


# -- what produced the published numbers -----------------------------------------------------------
def _stage_strides(backbone) -> list[int]:
    """The stride of each stage's first convolution, read off the built ResNet."""
    firsts, channels = [], None
    for block in backbone.blocks:
        if block.conv1.module.out_channels != channels:
            firsts.append(block.conv1.module.stride[0])
            channels = block.conv1.module.out_channels
    return firsts


def _norm_scales(backbone) -> set[float]:
    return {round(m.scale.item(), 4) for m in backbone.modules() if isinstance(m, TdBatchNorm)}


@pytest.mark.parametrize("name", [p.stem for p in EXPERIMENTS if "resnet18_t" in p.stem])
def test_resnet18_configs_use_the_authors_strides(name, tmp_path):
    path = CONF / "experiment" / f"{name}.yaml"
    assert _stage_strides(build(path, tmp_path).model.backbone) == [1, 1, 2, 2]
    paper = build(path, tmp_path, "--model.backbone.init_args.stage_strides", "[1,2,2,2]")
    assert _stage_strides(paper.model.backbone) == [1, 2, 2, 2]  # the paper's text: one override


def test_imagenet_config_builds_the_model_behind_68_10(tmp_path):
    path = CONF / "experiment" / "imagenet_resnet18ms_t6.yaml"
    backbone = build(path, tmp_path).model.backbone
    assert backbone.stem[0].module.padding == (1, 1)
    assert _norm_scales(backbone) == {1.0}  # plain BN: the authors' SyncBatchNorm conversion
    args = ["--model.backbone.init_args.tdbn_scale", "true"]
    paper = build(path, tmp_path, *args, "--model.backbone.init_args.stem_padding", "3").model
    assert _norm_scales(paper.backbone) == {0.5, round(0.5 * 2**-0.5, 4)}  # tdBN: V_th, a V_th
    assert paper.backbone.stem[0].module.padding == (3, 3)
    x = torch.rand(1, 3, 64, 64)  # stem padding 1 shrinks every map: 64 -> 30 (3 keeps 32)
    assert backbone.stem[0].module(x).shape[-1] == 30
    assert paper.backbone.stem[0].module(x).shape[-1] == 32


def test_cifar10dvs_config_is_the_authors_run(tmp_path):
    path = CONF / "experiment" / "cifar10dvs_widenet7b_t16.yaml"
    cli = build(path, tmp_path)
    neurons = [m for m in cli.model.backbone.modules() if isinstance(m, SpikingNeuron)]
    assert len(neurons) == 16
    for neuron in neurons:
        values = neuron.values()
        for name, value in [
            ("tau", 0.5),
            ("v_threshold", 0.99999),
            ("conductance", 0.9),
            ("v_leak", 0.03125),
            ("v_reset", 0.99999),
        ]:
            torch.testing.assert_close(
                getattr(values, name), torch.full_like(getattr(values, name), value)
            )
    dm = cli.datamodule
    assert dm.to_frames.antialias is False and dm.drop_last_train is True
    assert dm.to_frames.key == "T16-events-48x48p2-noaa"  # its own frame cache
    paper = build(
        path,
        tmp_path,
        "--data.init_args.resize_antialias", "true",
        "--data.init_args.drop_last", "false",
    )  # fmt: skip
    assert paper.datamodule.to_frames.antialias is True
    assert paper.datamodule.drop_last_train is False
    assert paper.datamodule.to_frames.key == "T16-events-48x48p2"


# -- the experiment configs' image DataModules, offline ------------------------------------------
def test_missing_datasets_are_one_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")
    message = str(error.value)
    assert "CIFAR-10" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "--data.init_args.download true" in message

    with pytest.raises(DatasetNotFoundError, match="CIFAR-100"):
        CIFAR100DataModule(data_dir=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"ImageNet was not found .*train/<class>/\*\.JPEG"):
        ImageNetDataModule(data_dir=str(tmp_path)).setup("fit")


def write_cifar(root: Path, folder: str, label_key: str, files: dict[str, int]) -> None:
    """A tiny CIFAR in torchvision's on-disk format: pickled dicts of uint8 rows [N, 3072]."""
    generator = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    for name, n in files.items():
        if n == 0:  # the metadata file
            entry = {
                "label_names": list("abcdefghij"),
                "fine_label_names": [str(i) for i in range(100)],
            }
        else:
            rows = generator.integers(0, 256, (n, 3072), dtype=np.uint8)
            entry = {"data": rows, label_key: [i % 10 for i in range(n)]}
        (root / folder / name).write_bytes(pickle.dumps(entry))


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_cifar_splits_and_transforms(cls, tmp_path, monkeypatch):
    # The fabricated files cannot match torchvision's md5 sums: skip that check only.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    if cls is CIFAR10DataModule:
        batches = {f"data_batch_{i}": 8 for i in range(1, 6)}
        files = {**batches, "test_batch": 6, "batches.meta": 0}
        write_cifar(tmp_path, "cifar-10-batches-py", "labels", files)
    else:
        files = {"train": 40, "test": 6, "meta": 0}
        write_cifar(tmp_path, "cifar-100-python", "fine_labels", files)

    dm = cls(data_dir=str(tmp_path), batch_size=4, val_size=10, split_seed=3, num_workers=0)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 30, "val": 10, "test": 6}
    assert not set(dm.datasets["train"].indices) & set(dm.datasets["val"].indices)
    again = cls(data_dir=str(tmp_path), val_size=10, split_seed=3)
    again.setup("fit")
    assert again.datasets["val"].indices == dm.datasets["val"].indices

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Validation images are only normalised, not augmented.
    val = dm.datasets["val"]
    raw = torch.from_numpy(val.dataset.data[val.indices[0]]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    assert torch.allclose(val[0][0], (raw - mean) / std, atol=1e-6)
