"""``train.py test/fit --ckpt_path <the authors' file>`` with a shipped experiment config: the
file is converted for the configured model, evaluated, and a wrong model is refused by name.

The data is a tiny CIFAR-10 in torchvision's on-disk format (``tests/test_configs.py``'s
``write_cifar``), the checkpoint one fabricated in the authors' exact layout
(``tests/test_compat.py``'s ``fabricate``), so the real loading code runs on both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_glif.authors_checkpoints import convert_state_dict
from lightning_glif.cli.main import cli_main
from lightning_glif.models import ResNet19
from lightning_glif.neurons import GLIF
from tests.cli_runs import QUIET, ROOT
from tests.test_compat import fabricate
from tests.test_configs import write_cifar

CONFIG = str(ROOT / "conf" / "experiment" / "cifar10_resnet19_t6.yaml")


@pytest.fixture
def cifar10(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)}
    write_cifar(
        tmp_path, "cifar-10-batches-py", "labels", {**batches, "test_batch": 6, "batches.meta": 0}
    )
    return tmp_path


def authors_file(tmp_path: Path, layout: str = "resnet19_cifar10_t6") -> Path:
    path = tmp_path / "resCifar19-CIFAR10-step6-CW.pth.tar"
    sd = fabricate(layout, seed=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 199}, path)
    return path


def args(data: Path, subcommand: str, *extra: str) -> list[str]:
    """``subcommand`` on the config, the tiny data and ``extra`` (given after the config, so
    that they win)."""
    return [
        subcommand,
        "--config", CONFIG,
        "--data.init_args.data_dir", str(data),
        "--data.init_args.val_size", "4",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
        "--data.init_args.verify_md5", "false",  # fabricated files: not the originals' md5
        "--trainer.default_root_dir", str(data / "runs"),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        *QUIET,
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_test_evaluates_the_authors_checkpoint(cifar10):
    source = authors_file(cifar10)
    cli = cli_main(args(cifar10, "test", "--ckpt_path", str(source)))
    # an independent path: the file converted straight into a fresh ResNet-19, on the test split
    backbone = ResNet19(GLIF, 6, num_classes=10).eval()
    authors = torch.load(source, weights_only=True)
    backbone.load_state_dict(convert_state_dict(authors, backbone))
    images, labels = zip(*(cli.datamodule.datasets["test"][i] for i in range(6)), strict=True)
    with torch.inference_mode():
        predicted = backbone(torch.stack(images)).mean(0).argmax(1)
    expected = (predicted == torch.tensor(labels)).float().mean().item()
    assert cli.trainer.callback_metrics["test/acc"].item() == pytest.approx(expected)
    # what was tested are the converted weights (no checkpoint replaced them)
    torch.testing.assert_close(
        cli.model.backbone.state_dict(), backbone.state_dict(), rtol=0, atol=0
    )


@pytest.mark.slow
def test_fit_starts_from_the_authors_weights(cifar10):
    source = authors_file(cifar10)
    cli = cli_main(args(cifar10, "fit", "--ckpt_path", str(source), "--trainer.max_epochs", "0"))
    reference = ResNet19(GLIF, 6, num_classes=10)
    expected = convert_state_dict(torch.load(source, weights_only=True), reference)
    torch.testing.assert_close(cli.model.backbone.state_dict(), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_naming_both(cifar10, capsys):
    source = authors_file(cifar10, layout="resnet19_cifar100_t6")
    with pytest.raises(SystemExit):
        cli_main(args(cifar10, "test", "--ckpt_path", str(source)))
    err = capsys.readouterr().err
    assert str(source) in err and "100 classes" in err and "num_classes=10" in err


def test_eval_time_steps_is_refused_for_the_authors_checkpoint(cifar10, capsys):
    source = authors_file(cifar10)
    with pytest.raises(SystemExit):
        cli_main(args(cifar10, "test", "--ckpt_path", str(source), "--eval_time_steps", "4"))
    assert "runs at the T it was trained at" in capsys.readouterr().err
