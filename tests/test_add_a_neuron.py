"""README's "Add a neuron" example, run as a user would: its code saved as a module, trained
through the CLI with the default config's monitors, and what they logged checked against the
trained model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_glif.cli.main import cli_main
from lightning_glif.neurons import SpikingNeuron
from lightning_glif.sweep.worker import read_scalars
from lightning_glif.training import tags

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Add a neuron"
MODULE = "my_neurons"  # the module name the section tells the user to save the code as


def section() -> str:
    """The section of README.md."""
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, f"no '{HEADING}' section in README.md"
    after = text.split(HEADING, 1)[1]
    return re.split(r"^## ", after, maxsplit=1, flags=re.M)[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[str, str]:
    """``(code, class name)`` of the section's first python block."""
    text = section()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"the '{HEADING}' section has no ```python block"
    names = re.findall(r"^class (\w+)\(SpikingNeuron\):", blocks[0], re.M)
    assert len(names) == 1, "the example should define one SpikingNeuron subclass"
    # the command the section shows trains this very class from this module
    assert f"--model.backbone.init_args.neuron {MODULE}.{names[0]}" in text
    assert f"`{MODULE}.py`" in text
    return blocks[0], names[0]


@pytest.fixture(scope="module")
def trained(example, tmp_path_factory):
    code, name = example
    root = tmp_path_factory.mktemp("add_a_neuron")
    (root / f"{MODULE}.py").write_text(code)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        cli = cli_main(
            [
                "fit",
                "--model.backbone.init_args.neuron", f"{MODULE}.{name}",
                "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "3",
                "--trainer.limit_val_batches", "2",
                "--trainer.default_root_dir", str(root),
                "--trainer.enable_progress_bar", "false",
            ]
        )  # fmt: skip
    return cli, name, read_scalars(cli.trainer.log_dir)


def neuron_layers(cli, name: str) -> dict[str, SpikingNeuron]:
    layers = {n: m for n, m in cli.model.named_modules() if type(m).__name__ == name}
    assert len(layers) == 2  # the default convnet: one neuron after each of its two convs
    assert all(isinstance(m, SpikingNeuron) for m in layers.values())
    return layers


def test_gate_monitor_logs_the_example_neurons_observables(trained):
    cli, name, scalars = trained
    for layer, module in neuron_layers(cli, name).items():
        observables = module.observables()
        assert observables, f"the example {name} reports no observables"
        for quantity, obs in observables.items():
            values = obs.value.detach().double().numpy()
            mean = scalars[tags.observable(obs.group, layer, quantity, "mean")]
            std = scalars[tags.observable(obs.group, layer, quantity, "std")]
            # at the start (step 0) and at the end (after the last of the 3 steps)
            assert [s for s, _ in mean] == [s for s, _ in std] == [0, 3]
            assert mean[-1][1] == pytest.approx(values.mean(), rel=1e-6)
            assert std[-1][1] == pytest.approx(values.std(), rel=1e-5, abs=1e-9)
        # training reached its learnable parameter: some observable moved from its start
        assert any(
            scalars[tags.observable(o.group, layer, q, "mean")][0][1]
            != scalars[tags.observable(o.group, layer, q, "mean")][-1][1]
            for q, o in observables.items()
        )


def test_firing_rate_monitor_logs_the_example_neurons(trained):
    cli, name, scalars = trained
    layers = neuron_layers(cli, name)
    for layer in layers:
        for stage in ("train", "val"):
            rate = scalars[tags.firing(stage, "rate", layer)]
            assert len(rate) == 1 and 0 <= rate[0][1] <= 1
    # the validation rates by hand: the trained model on the same 2 validation batches
    counts = {layer: [0, 0] for layer in layers}

    def count(layer):
        def hook(module, args, spikes):
            counts[layer][0] += int(spikes.sum())
            counts[layer][1] += spikes.numel()

        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in layers.items()]
    model = cli.model.eval()
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(cli.datamodule.val_dataloader()):
                if i == 2:
                    break
                model(x)
    finally:
        for h in handles:
            h.remove()
    for layer, (spikes, elements) in counts.items():
        logged = scalars[tags.firing("val", "rate", layer)][-1][1]
        assert logged == pytest.approx(spikes / elements, rel=1e-6, abs=1e-9)
    total = sum(s for s, _ in counts.values()) / sum(e for _, e in counts.values())
    assert scalars[tags.firing("val")][-1][1] == pytest.approx(total, rel=1e-6, abs=1e-9)
    assert np.isfinite(total) and total > 0  # some layer fired: the check had something to see


def test_the_examples_membrane_parameter_trains_in_the_neuron_group(trained):
    """The example's membrane_parameters() put beta in the `neuron` group (no weight decay)."""
    cli, name, _ = trained
    betas = {id(m.beta) for m in neuron_layers(cli, name).values()}
    (optimizer,) = cli.trainer.optimizers
    groups = {g["name"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert groups["neuron"] == betas and not betas & groups["weights"]
    neuron_group = next(g for g in optimizer.param_groups if g["name"] == "neuron")
    assert neuron_group["weight_decay"] == 0.0
