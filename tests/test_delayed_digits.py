"""Delayed row digits: ``RowDigitsDataModule(blank_steps=...)`` and its experiment config.

Each pixel row occupies ``T // 8`` steps: the first ``T // 8 - blank_steps`` show it, the rest are
zeros. Checked against scikit-learn's ``load_digits()`` directly, not the shared reader.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml
from sklearn.datasets import load_digits

from lightning_glif.cli.main import CONF_DIR, cli_main
from lightning_glif.data.sequential import RowDigitsDataModule
from lightning_glif.neurons.base import SpikingNeuron

CONFIG = CONF_DIR / "experiment" / "delayed_row_digits.yaml"
DIGITS = load_digits()
IMAGES = torch.from_numpy((DIGITS.images / 16.0).astype(np.float32))  # [N, 8, 8] in [0, 1]
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when it gets args while sys.argv holds pytest's own arguments.
    monkeypatch.setattr(sys, "argv", ["train.py"])


def set_up(**kwargs) -> RowDigitsDataModule:
    dm = RowDigitsDataModule(**kwargs)
    dm.setup()
    return dm


def config_data_args() -> dict:
    return yaml.safe_load(CONFIG.read_text())["data"]["init_args"]


@pytest.mark.parametrize(("time_steps", "blank_steps"), [(32, 3), (16, 1), (24, 1), (32, 0)])
def test_shapes(time_steps, blank_steps):
    dm = set_up(time_steps=time_steps, blank_steps=blank_steps, batch_size=16)
    rows, labels = next(iter(dm.train_dataloader()))
    assert rows.shape == (16, time_steps, 8) and rows.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 1257, "val": 270, "test": 270}


@pytest.mark.parametrize(("time_steps", "blank_steps"), [(32, 3), (32, 1), (24, 2), (16, 1)])
def test_blank_steps_are_zero_and_shown_steps_are_the_rows(time_steps, blank_steps):
    dm = set_up(time_steps=time_steps, blank_steps=blank_steps)
    per_row = time_steps // 8
    shown = per_row - blank_steps
    for split in SPLITS:
        sequences, labels = dm.datasets[split].tensors
        index = torch.from_numpy(dm.indices[split])
        assert torch.equal(labels, torch.from_numpy(DIGITS.target[dm.indices[split]]))
        steps = sequences.reshape(len(sequences), 8, per_row, 8)  # [N, row, step in row, pixel]
        assert torch.equal(steps[:, :, shown:], torch.zeros_like(steps[:, :, shown:]))
        expected = IMAGES[index].unsqueeze(2).expand(-1, -1, shown, -1)
        assert torch.equal(steps[:, :, :shown], expected)


def test_the_documented_example():
    """time_steps=32, blank_steps=3: row r at step 4r, 3 blank steps after it; the last row is
    step 29 counting from 1 (index 28), steps 30-32 (indices 29-31) are blank."""
    dm = set_up(time_steps=32, blank_steps=3)
    sequences = dm.datasets["test"].tensors[0]
    images = IMAGES[torch.from_numpy(dm.indices["test"])]
    shown = [4 * r for r in range(8)]
    assert shown[-1] == 28
    assert torch.equal(sequences[:, shown], images)
    blank = [t for t in range(32) if t not in shown]
    assert len(blank) == 24 and blank[-3:] == [29, 30, 31]
    assert not sequences[:, blank].any()
    assert sequences[:, shown].any(2).all(1).float().mean() > 0.5  # most shown rows have ink


@pytest.mark.parametrize("time_steps", [8, 16, 32])
def test_no_blank_steps_is_the_previous_layout(time_steps):
    plain = set_up(time_steps=time_steps)
    zero = set_up(time_steps=time_steps, blank_steps=0)
    for split in SPLITS:
        sequences, labels = zero.datasets[split].tensors
        # the layout before blank_steps: each row repeated T // 8 times
        index = torch.from_numpy(zero.indices[split])
        before = IMAGES[index].repeat_interleave(time_steps // 8, dim=1)
        assert torch.equal(sequences, before)
        assert torch.equal(sequences, plain.datasets[split].tensors[0])
        assert torch.equal(labels, plain.datasets[split].tensors[1])
    assert RowDigitsDataModule().blank_steps == 0


def test_the_split_is_that_of_row_digits():
    rows = set_up()
    delayed = set_up(**config_data_args())
    for split in SPLITS:
        assert np.array_equal(delayed.indices[split], rows.indices[split])
        assert torch.equal(delayed.datasets[split].tensors[1], rows.datasets[split].tensors[1])
    for seed in (1, 2):  # the split follows split_seed, not blank_steps
        a, b = set_up(split_seed=seed), set_up(time_steps=32, blank_steps=3, split_seed=seed)
        assert all(np.array_equal(a.indices[s], b.indices[s]) for s in SPLITS)


def test_two_setups_give_identical_tensors():
    a, b = set_up(time_steps=32, blank_steps=3), set_up(time_steps=32, blank_steps=3)
    for split in SPLITS:
        for x, y in zip(a.datasets[split].tensors, b.datasets[split].tensors, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("time_steps", "blank_steps", "fix"),
    [
        (32, 4, "lower blank_steps to at most 3, or raise time_steps to 40 or more"),
        (32, 10, "lower blank_steps to at most 3, or raise time_steps to 88 or more"),
        (8, 1, "lower blank_steps to at most 0, or raise time_steps to 16 or more"),
        (16, -1, "use 0 or more"),
    ],
)
def test_bad_blank_steps_raise(time_steps, blank_steps, fix):
    with pytest.raises(ValueError) as error:
        RowDigitsDataModule(time_steps=time_steps, blank_steps=blank_steps)
    message = str(error.value)
    assert message.startswith("RowDigitsDataModule: blank_steps must be in ")
    assert f"blank_steps={blank_steps}" in message and f"time_steps={time_steps}" in message
    assert f"time_steps // 8 = {time_steps // 8}" in message and fix in message


def test_config_shares_32_time_steps():
    args = config_data_args()
    assert args == {"time_steps": 32, "blank_steps": 3}
    values = RowDigitsDataModule(**args).shared_values()
    assert values == {"num_classes": 10, "time_steps": 32, "in_features": 8}


@pytest.mark.slow
def test_config_builds_through_the_cli(tmp_path):
    args = ["--config", str(CONFIG), "--trainer.default_root_dir", str(tmp_path)]
    cli = cli_main(args, run=False)
    assert isinstance(cli.datamodule, RowDigitsDataModule)
    assert (cli.datamodule.time_steps, cli.datamodule.blank_steps) == (32, 3)
    assert cli.datamodule.shared_values()["time_steps"] == 32
    neurons = [m for m in cli.model.modules() if isinstance(m, SpikingNeuron)]
    assert neurons and {n.time_steps for n in neurons} == {32}
    assert type(cli.model.backbone).__name__ == "SpikingMLP"
    assert cli.model.backbone.in_features == 8 and cli.model.num_classes == 10
    assert cli.trainer.logger.name == "delayed_row_digits"
    assert cli.trainer.max_epochs == 60
    cli.datamodule.setup()
    rows, _ = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        assert cli.model.backbone(rows[:4]).shape == (32, 4, 10)  # [T, B, classes]
