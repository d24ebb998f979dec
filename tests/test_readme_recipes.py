"""README's "Add a dataset" and "Add a backbone" recipes, run as a user would: each python block
saved as the module the section names, trained together through the CLI, and the checkpoint
tested back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightning_glif.cli.main import cli_main

ROOT = Path(__file__).resolve().parents[1]


def block(heading: str, module: str) -> str:
    """The first python block of README's section ``heading``, which names ``<module>.py``."""
    text = (ROOT / "README.md").read_text().split(f"## {heading}\n", 1)[1]
    text = re.split(r"^## ", text, maxsplit=1, flags=re.M)[0]
    assert f"`{module}.py`" in text, f"'{heading}' should tell the user to save {module}.py"
    return re.findall(r"```python\n(.*?)```", text, re.S)[0]


@pytest.mark.slow  # two CLI runs
def test_the_dataset_and_backbone_recipes_train_together(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(block("Add a dataset", "my_data"))
    (tmp_path / "my_backbones.py").write_text(block("Add a backbone", "my_backbones"))
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--data", "my_data.BarsDataModule", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false"]  # fmt: skip
    fit = cli_main(["fit", *common, "--model.backbone", "my_backbones.TwoLayerNet",
                    "--model.backbone.init_args.neuron", "lightning_glif.neurons.GLIF",
                    "--trainer.max_epochs", "3"])  # fmt: skip
    backbone = fit.model.backbone
    # The data's values reached the backbone by name: 1 input channel, 2 classes.
    assert backbone.features[0].module.in_channels == 1
    assert backbone.head.module[2].out_features == 2
    run = tmp_path / "bars" / "version_0"  # named after the data
    assert (run / "config.yaml").is_file()
    # It learns: chance would reach 0.75 on 128 validation images with probability < 1e-8.
    assert fit.trainer.callback_metrics["val/acc"] >= 0.75

    # The run's own checkpoint is read back without naming its classes again.
    last = run / "checkpoints" / "last.ckpt"
    test = cli_main(["test", *common, "--ckpt_path", str(last)])
    assert type(test.model.backbone).__name__ == "TwoLayerNet"
    trained = torch.load(last, weights_only=True)["state_dict"]
    for key, value in test.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert test.trainer.callback_metrics["test/acc"] >= 0.75
