"""The CLI's own rules: values the data knows are set once, a class named in a config starts from
its own defaults, configs state only what differs, and the package runs from any directory."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lightning_glif.cli.checkpoint_io import AtomicCheckpointIO
from lightning_glif.cli.config import import_class, signature_defaults
from lightning_glif.cli.main import (
    CONF_DIR,
    GLIFCLI,
    GLIFParser,
    RunConfig,
    cli_main,
    resolve_config_paths,
)
from lightning_glif.data.base import LOADER_WORKERS
from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.training.module import SpikingClassifier

ROOT = Path(__file__).resolve().parents[1]
ROW = str(CONF_DIR / "experiment" / "row_digits.yaml")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])


def build(tmp_path: Path, *args: str):
    return cli_main([*args, "--trainer.default_root_dir", str(tmp_path)], run=False)


def neurons(model) -> list[SpikingNeuron]:
    return [m for m in model.modules() if isinstance(m, SpikingNeuron)]


# -- shared values: set once, by the data ---------------------------------------------------------
def test_data_values_reach_the_backbone_and_the_classifier(tmp_path):
    cli = build(tmp_path, "--config", ROW, "--data.init_args.time_steps", "16")
    assert {n.time_steps for n in neurons(cli.model)} == {16}
    assert cli.model.backbone.in_features == 8 and cli.model.num_classes == 10
    # the saved config shows what was built
    assert cli.config.model.backbone.init_args.time_steps == 16
    assert cli.config.model.backbone.init_args.in_features == 8

    cli = build(tmp_path, "--data", "lightning_glif.data.vision.CIFAR100DataModule",
                "--model.backbone", "lightning_glif.models.resnet.ResNet19",
                "--model.backbone.init_args.time_steps", "2")  # fmt: skip
    assert cli.model.num_classes == 100 and cli.model.backbone.stem[0].module.in_channels == 3
    assert {n.time_steps for n in neurons(cli.model)} == {2}  # static data: the model's own T


@pytest.mark.parametrize(
    ("key", "value", "data_value"),
    [
        ("model.backbone.init_args.num_classes", "5", "10"),
        ("model.backbone.init_args.in_channels", "3", "1"),
        ("model.backbone.init_args.image_size", "16", "8"),
    ],
)
def test_a_value_that_contradicts_the_data_is_an_error(key, value, data_value, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(tmp_path, f"--{key}", value)
    err = capsys.readouterr().err
    assert f"{key} = {value}" in err and "DigitsDataModule" in err and f"= {data_value}" in err
    assert "drop" in err


def test_the_classifiers_num_classes_is_the_datas(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(tmp_path, "--model.num_classes", "5")
    err = capsys.readouterr().err
    assert "model.num_classes = 5" in err and "DigitsDataModule has num_classes = 10" in err
    assert build(tmp_path, "--model.num_classes", "10").model.num_classes == 10  # agrees


@pytest.mark.slow
def test_the_saved_config_rebuilds_the_run(tmp_path):
    """The run's config.yaml holds the linked values and the backbone's own T (static data),
    and building from it gives the same model."""
    cli = cli_main(
        ["fit", "--config", str(CONF_DIR / "experiment" / "cifar10_resnet19_t2.yaml"),
         "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "0",
         "--trainer.num_sanity_val_steps", "0",
         "--data", "lightning_glif.data.digits.DigitsDataModule"],
    )  # fmt: skip
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    init = saved["model"]["backbone"]["init_args"]
    assert init["time_steps"] == 2 and init["num_classes"] == 10 and init["in_channels"] == 1
    assert saved["model"]["num_classes"] == 10
    saved_config = str(Path(cli.trainer.log_dir) / "config.yaml")
    again = cli_main(["fit", "--config", saved_config, "--trainer.max_steps", "0",
                      "--trainer.num_sanity_val_steps", "0",
                      "--trainer.default_root_dir", str(tmp_path / "again")])  # fmt: skip
    assert {n.time_steps for n in neurons(again.model)} == {2}
    shapes = {k: v.shape for k, v in cli.model.state_dict().items()}
    assert {k: v.shape for k, v in again.model.state_dict().items()} == shapes


def test_time_steps_typed_in_the_model_must_agree_with_sequence_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(tmp_path, "--config", ROW, "--model.backbone.init_args.time_steps", "4")
    err = capsys.readouterr().err
    assert "time_steps = 4" in err and "RowDigitsDataModule has time_steps = 8" in err
    # the same value is no conflict
    cli = build(tmp_path, "--config", ROW, "--model.backbone.init_args.time_steps", "8")
    assert {n.time_steps for n in neurons(cli.model)} == {8}


# -- a named class starts from its own defaults ---------------------------------------------------
@pytest.mark.parametrize(
    ("data", "own"),
    [
        ("lightning_glif.data.NMNISTDataModule", {"val_fraction": 0.1, "time_steps": 10}),
        ("lightning_glif.data.SHDDataModule", {"val_fraction": 0.1, "time_steps": 100}),
        ("lightning_glif.data.DVSGestureDataModule", {"val_fraction": 0.1, "batch_size": 16}),
        ("lightning_glif.data.CIFAR10DataModule", {"num_workers": LOADER_WORKERS}),
    ],
)
def test_default_configs_data_options_do_not_leak_into_another_data_class(data, own, tmp_path):
    mlp = ["--model.backbone", "lightning_glif.models.mlp.SpikingMLP"]
    sequences = mlp if "SHD" in data else []
    config = build(tmp_path, "--data", data, *sequences).config
    init = vars(config.data.init_args)
    assert {k: init[k] for k in own} == own
    # what the user gives is kept
    given = build(tmp_path, "--data", data, *sequences, "--data.init_args.batch_size", "7").config
    assert given.data.init_args.batch_size == 7


def test_an_overlay_neuron_starts_from_its_own_defaults(tmp_path):
    cli = build(
        tmp_path,
        "--model.backbone.init_args.neuron", "lightning_glif.neurons.GLIF",
        "--model.backbone.init_args.neuron.v_threshold", "0.3",
        "--config", str(CONF_DIR / "neuron" / "plif.yaml"),
    )  # fmt: skip
    # the GLIF option given before the PLIF overlay carries over only as jsonargparse does for
    # given values; every option nobody gave is PLIF's own default
    plif = neurons(cli.model)[0]
    assert type(plif).__name__ == "PLIF" and plif.granularity == "layer"


# -- configs state only what differs --------------------------------------------------------------
def _class_specs(node, where=""):
    """Every ``{class_path, init_args}`` mapping in a loaded YAML tree, with its key path."""
    if isinstance(node, dict):
        if "class_path" in node:
            yield where, node
        for key, value in node.items():
            yield from _class_specs(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _class_specs(value, f"{where}[{i}]")


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


@pytest.fixture(scope="module")
def default_optimizer(tmp_path_factory) -> dict:
    """The classifier's default optimizer as the parser resolves it (class_path and init_args):
    a config naming the same class starts from these values, not from the class's own."""
    cli = build(tmp_path_factory.mktemp("default"))
    return cli.config.model.optimizer.as_dict()


def restated_defaults(path: Path, default_optimizer: dict) -> list[str]:
    """Each value of the config ``path`` that equals what the key holds without it, as
    ``<file>: <key>: <value>: remove it: it equals <the default>``."""
    config = yaml.safe_load(path.read_text()) or {}
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []

    def check(key: str, value, default: dict, owner: str) -> None:
        name = key.rsplit(".", 1)[-1]
        if name in default and _plain(value) == default[name]:
            found.append(f"{shown}: {key}: {value!r}: remove it: it equals {owner.format(name)}")

    for where, spec in _class_specs(config):
        owner = f"the default of {spec['class_path']}.{{}}"
        default = signature_defaults(import_class(spec["class_path"]))
        if where == "model.optimizer" and spec["class_path"] == default_optimizer["class_path"]:
            owner = "the default of SpikingClassifier.optimizer's {}"
            default.update(default_optimizer["init_args"])
        for name, value in (spec.get("init_args") or {}).items():
            check(f"{where}.init_args.{name}", value, default, owner)
    # The classifier's own options: against the code's defaults, and conf/default.yaml's values
    # for every other file (read after it).
    model = signature_defaults(SpikingClassifier)
    model = {k: (v, "the default of SpikingClassifier.{}") for k, v in model.items()}
    if path != CONF_DIR / "default.yaml":
        base = yaml.safe_load((CONF_DIR / "default.yaml").read_text()).get("model", {})
        model |= {k: (v, "conf/default.yaml's model.{}") for k, v in base.items()}
    for name, value in (config.get("model") or {}).items():
        if name in model and not isinstance(value, dict):
            check(f"model.{name}", value, {name: model[name][0]}, model[name][1])
    return found


@pytest.mark.parametrize("path", sorted(CONF_DIR.rglob("*.yaml")), ids=lambda p: p.stem)
def test_no_config_restates_a_code_default(path, default_optimizer):
    """Configs state only what differs from what the key holds without them."""
    problems = restated_defaults(path, default_optimizer)
    assert not problems, "\n".join(problems)


def test_a_restated_default_is_named_with_its_fix(tmp_path, default_optimizer):
    config = tmp_path / "mine.yaml"
    config.write_text(
        "model:\n"
        "  gate_lr_factor: 1000\n"  # conf/default.yaml's
        "  neuron_lr_factor: 1.0\n"  # SpikingClassifier's default
        "  lr_interval: step\n"  # differs: kept
        "  optimizer:\n"
        "    class_path: torch.optim.SGD\n"
        "    init_args: {lr: 0.1, momentum: 0.5}\n"  # lr 0.1 is the classifier's default SGD's
        "data:\n"
        "  class_path: lightning_glif.data.digits.DigitsDataModule\n"
        "  init_args: {batch_size: 64, val_fraction: 0.2}\n"
    )
    assert restated_defaults(config, default_optimizer) == [
        f"{config}: model.optimizer.init_args.lr: 0.1: remove it: it equals the default of "
        "SpikingClassifier.optimizer's lr",
        f"{config}: data.init_args.batch_size: 64: remove it: it equals the default of "
        "lightning_glif.data.digits.DigitsDataModule.batch_size",
        f"{config}: model.gate_lr_factor: 1000: remove it: it equals conf/default.yaml's "
        "model.gate_lr_factor",
        f"{config}: model.neuron_lr_factor: 1.0: remove it: it equals the default of "
        "SpikingClassifier.neuron_lr_factor",
    ]


def test_cifar_recipes_share_one_base():
    cifar = sorted((CONF_DIR / "experiment").glob("cifar1*_resnet*_t*.yaml"))
    assert len(cifar) == 12
    assert {yaml.safe_load(p.read_text())["config"] for p in cifar} == {"../recipe/cifar.yaml"}


# -- packaging ------------------------------------------------------------------------------------
def test_shipped_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = resolve_config_paths(["fit", "--config", "conf/experiment/row_digits.yaml"])
    assert args[2] == str(CONF_DIR / "experiment" / "row_digits.yaml")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text("trainer: {max_epochs: 1}\n")
    # a file of the user's own, where the command runs, is theirs
    assert resolve_config_paths(["--config=conf/mine.yaml"]) == ["--config=conf/mine.yaml"]


@pytest.mark.slow
def test_installed_package_runs_from_another_directory(tmp_path):
    """``pip install .`` then ``lightning-glif fit`` from elsewhere: the wheel ships the configs
    and the kernel sources and declares the console scripts; training from another directory
    reads the shipped default config."""
    # built from a copy: setuptools writes build/ beside the sources
    source = tmp_path / "source"

    def skip(folder: str, names: list[str]) -> set[str]:
        top = {".git", "runs", "build", "data"} if Path(folder) == ROOT else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("lightning_glif-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "lightning_glif/conf/default.yaml" in names
    assert "lightning_glif/conf/experiment/row_digits.yaml" in names
    assert "lightning_glif/neurons/fused/membrane.c" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = (site / entry).read_text()
    assert "lightning-glif = lightning_glif.cli:main" in scripts
    assert "lightning-glif-ablate = lightning_glif.sweep.cli:main" in scripts

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import sys, lightning_glif; from lightning_glif.cli.main import main; "
        "print('imported from', lightning_glif.__file__); main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "fit", "--config", "conf/experiment/row_digits.yaml",
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"imported from {site}" in done.stdout  # the installed copy, not the checkout
    runs = list((elsewhere / "runs" / "row_digits").glob("version_0/checkpoints/last.ckpt"))
    assert runs, "the run did not write into the directory it was started from"


def test_train_and_ablate_are_thin_entry_points():
    for script in ("train.py", "ablate.py"):
        source = (ROOT / script).read_text()
        assert len(source.splitlines()) <= 15, f"{script} should only call into the package"
    assert "import train" not in inspect.getsource(
        import_class("lightning_glif.sweep.worker.run_child")
    )


def test_a_misspelled_option_of_a_forwarding_class_is_suggested(tmp_path, capsys):
    """N-MNIST declares only its own defaults and forwards the rest (**kwargs) to the Tonic base:
    the suggestion still finds the base's options."""
    with pytest.raises(SystemExit):
        build(tmp_path, "--data", "lightning_glif.data.NMNISTDataModule",
              "--data.init_args.val_fracton", "0.2")  # fmt: skip
    err = capsys.readouterr().err
    assert "did you mean 'val_fraction'" in err and "split_seed" in err


# -- a run is named after its data ----------------------------------------------------------------
MNIST = "lightning_glif.data.MNISTDataModule"


def test_a_run_is_named_after_its_data_unless_the_user_names_it(tmp_path, capsys):
    def name(*args: str) -> str:
        return build(tmp_path, *args).trainer.logger.name

    assert name() == "digits"
    assert name("--data", MNIST) == "mnist"
    assert name("--data", "lightning_glif.data.FashionMNISTDataModule") == "fashion_mnist"
    csv = ["--trainer.logger", "pytorch_lightning.loggers.CSVLogger"]
    assert name(*csv, "--data", MNIST) == "mnist"  # any logger with a name
    assert name("--config", ROW) == "row_digits"  # an experiment that names its run
    assert name("--data", MNIST, "--trainer.logger.init_args.name", "mine") == "mine"
    # fit --ckpt_path last looks for the run under that name
    with pytest.raises(SystemExit):
        cli_main(fit_args(tmp_path, "--data", MNIST, "--ckpt_path", "last"))
    assert f"no run to resume in {tmp_path / 'mnist'} " in capsys.readouterr().err


# -- resuming and run directories: errors that say what to type -----------------------------------
def fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
            "--model.backbone.init_args.channels", "[4, 8]", *extra]  # fmt: skip


def test_resuming_nothing_is_an_error_naming_the_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(fit_args(tmp_path, "--ckpt_path", "last"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--ckpt_path last: no run to resume in {tmp_path / 'digits'}" in err
    assert "version_<n>/checkpoints/last.ckpt" in err
    assert not (tmp_path / "digits").exists()  # no fresh run


def test_resuming_a_version_without_last_ckpt_is_an_error(tmp_path, capsys):
    (tmp_path / "digits" / "version_3").mkdir(parents=True)
    for version, what in (("7", "does not exist"), ("3", "has no checkpoints/last.ckpt")):
        with pytest.raises(SystemExit):
            cli_main(fit_args(tmp_path, "--ckpt_path", "last",
                              "--trainer.logger.init_args.version", version))  # fmt: skip
        err = " ".join(capsys.readouterr().err.split())
        assert f"no run to resume in {tmp_path / 'digits'} " in err
        assert f"({tmp_path / 'digits' / f'version_{version}'} {what})" in err
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["version_3"]


@pytest.mark.slow
def test_a_fixed_version_that_exists_says_what_to_type(tmp_path, capsys):
    cli_main(fit_args(tmp_path))
    run = tmp_path / "digits" / "version_0"
    fixed = fit_args(tmp_path, "--trainer.logger.init_args.version", "0")

    def refused() -> str:
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        with pytest.raises(SystemExit) as exit_:
            cli_main(fixed)
        assert exit_.value.code == 2
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # untouched
        message = " ".join(capsys.readouterr().err.split())
        assert f"{run} already holds a run" in message
        assert "Pick a version that does not exist yet" in message
        assert "LightningCLI(" not in message and "save_config" not in message  # no code advice
        return message

    assert "fit --ckpt_path last --trainer.logger.init_args.version 0" in refused()
    # ... and the resume it suggests works, in place (the run is finished: nothing to train).
    resumed = cli_main(fit_args(tmp_path, "--ckpt_path", "last",
                                "--trainer.logger.init_args.version", "0"))  # fmt: skip
    assert resumed.trainer.log_dir == str(run) and resumed.trainer.global_step == 2
    (run / "checkpoints" / "last.ckpt").unlink()
    assert "--ckpt_path last" not in refused()  # no resume to suggest without a last.ckpt


# -- help and misspellings ------------------------------------------------------------------------
def test_the_top_level_help_and_a_misspelt_subcommand_name_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "{fit,validate,test,predict}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        cli_main(["fitt"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "fitt" in err and all(name in err for name in ("fit", "validate", "test", "predict"))


def test_a_subcommands_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["test", "--help"])
    out = capsys.readouterr().out
    assert "--ckpt_path" in out and "--trainer.max_epochs" in out and "--model.backbone" in out


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("model.gate_lr_factr", "model.gate_lr_factor"),
        ("trainer.max_epohcs", "trainer.max_epochs"),
        ("model.bakcbone", "model.backbone"),  # a class option itself, not only its leaves
    ],
)
def test_a_misspelled_key_is_suggested_on_the_command_line_and_in_a_config(
    typo, meant, tmp_path, capsys
):
    """The command line's unknown key is the subcommand parser's error, a config file's the
    top-level parser's: both name the key meant."""
    with pytest.raises(SystemExit):
        cli_main(["fit", f"--{typo}", "1"])
    assert f"unknown key {typo!r}: did you mean {meant!r}" in capsys.readouterr().err
    config = tmp_path / "typo.yaml"
    group, _, key = typo.partition(".")
    config.write_text(f"{group}:\n  {key}: 1\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(config)])
    assert f"unknown key {typo!r}: did you mean {meant!r}" in capsys.readouterr().err


def test_a_key_far_from_every_valid_one_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--completely.different", "1"])
    err = capsys.readouterr().err
    assert "completely.different" in err and "did you mean" not in err


# -- the libraries through their public surface ---------------------------------------------------
@pytest.mark.parametrize("cls", [GLIFCLI, GLIFParser, RunConfig, AtomicCheckpointIO])
def test_our_subclasses_neither_override_nor_use_a_private_name_of_their_base(cls):
    """LightningCLI, jsonargparse's parser, SaveConfigCallback and TorchCheckpointIO are extended
    through their public methods: no method of ours has the private name of one of theirs, and
    no ``self._name`` read in our class is one of theirs (e.g. LightningCLI's ``_get``)."""
    bases = cls.__mro__[1:]
    own = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")} - {"_abc_impl"}
    used = set(re.findall(r"self\.(_[a-z]\w*)", inspect.getsource(cls)))
    reached = sorted(n for n in own | used if any(hasattr(b, n) for b in bases))
    assert reached == [], f"{cls.__name__} reaches {reached} of its base classes"
