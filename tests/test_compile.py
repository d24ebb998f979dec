"""``torch.compile`` through the fused membrane op: the ``torch.library`` custom ops pass
``opcheck`` (schema, fake tensors, autograd registration, AOT dispatch), a small spiking ResNet of
GLIF neurons compiles with ``fullgraph=True`` into one graph (so: no graph break) holding one
fused op per neuron, its outputs and gradients equal eager, and ``SpikingClassifier(compile=True)``
trains a step through the Trainer and writes checkpoints that load without compile.

Inductor compiles the small backbone once for the module (the ``compiled`` fixture; the tests
that use it are marked slow); the training step reuses Inductor's cache (same graph, same shapes).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_glif.models.resnet import SpikingResNet
from lightning_glif.neurons import GLIF, SpikingNeuron
from lightning_glif.neurons.fused import cpu, membrane_bwd, membrane_fwd
from lightning_glif.training.module import SpikingClassifier

pytestmark = pytest.mark.compile

T, B, CLASSES, SIZE = 2, 2, 3, 6


def small_resnet(seed: int = 0) -> SpikingResNet:
    """Stem + one basic block (3 GLIF layers, a residual addition), 4 channels."""
    torch.manual_seed(seed)
    net = SpikingResNet(
        GLIF,
        T,
        CLASSES,
        in_channels=3,
        stem_channels=4,
        stage_channels=(4,),
        stage_blocks=(1,),
        stage_strides=(1,),
        head_hidden=0,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move the gates and membrane latents off their init: each matters
        for m in net.modules():
            if isinstance(m, SpikingNeuron):
                for p in m.parameters():
                    p.add_(0.5 * torch.randn(p.shape, generator=g))
    return net


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, SIZE, SIZE, generator=g) * 2
    return images, torch.randint(0, CLASSES, (B,), generator=g)


def step(net, images, labels):
    """Logits, and the gradient of every parameter by name, of one training forward+backward
    (the classifier's default loss: cross-entropy of the time-averaged logits)."""
    logits = net(images)
    loss = torch.nn.functional.cross_entropy(logits.mean(0), labels)
    names, params = zip(*net.named_parameters(), strict=True)
    return logits, dict(zip(names, torch.autograd.grad(loss, params), strict=True))


@pytest.fixture(scope="module")
def compiled():
    """Eager and compiled (Inductor, fullgraph) results of the same net on the same batch, and
    the Dynamo graphs handed to Inductor."""
    from torch._inductor.compile_fx import compile_fx

    graphs: list[torch.fx.GraphModule] = []

    def inductor_recording(gm, example_inputs):
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    eager = small_resnet()
    net = copy.deepcopy(eager)
    images, labels = batch()
    fn = torch.compile(net, fullgraph=True, backend=inductor_recording)  # raises on a break
    return {
        "eager": step(eager, images, labels),
        "compiled": step(fn, images, labels),
        "graphs": graphs,
        "net": eager,
    }


@pytest.mark.slow
def test_the_whole_backbone_is_one_graph_with_one_fused_op_per_neuron(compiled):
    assert len(compiled["graphs"]) == 1
    targets = [n.target for n in compiled["graphs"][0].graph.nodes if n.op == "call_function"]
    neurons = [m for m in compiled["net"].modules() if isinstance(m, SpikingNeuron)]
    assert len(neurons) == 3
    assert targets.count(torch.ops.lightning_glif.membrane_fwd.default) == len(neurons)


@pytest.mark.slow
def test_compiled_outputs_and_gradients_equal_eager(compiled):
    (want, want_grads), (got, got_grads) = compiled["eager"], compiled["compiled"]
    # Inductor fuses the batch norms and coefficient maps (other rounding than eager), so a
    # membrane sitting on the threshold could flip; on this batch none does.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want.abs().sum() > 0
    # torch.compile(net) names the parameters as the net does (the wrapper's own
    # `_orig_mod.` prefix aside)
    assert [k.removeprefix("_orig_mod.") for k in got_grads] == list(want_grads)
    for (name, g1), g2 in zip(got_grads.items(), want_grads.values(), strict=True):
        scale = g2.abs().max().item() + 1e-30
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4 * scale, msg=name)
    neuron_grads = [g for k, g in want_grads.items() if ".tau" in k or "alpha" in k]
    assert neuron_grads and all(g.abs().sum() > 0 for g in neuron_grads)


# ---------------------------------------------------------------- the custom ops themselves
def op_inputs(dtype, shape=(4, 3, 5, 6)):
    g = torch.Generator().manual_seed(0)
    t, c = shape[0], shape[2]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8 + 0.3).to(dtype)
    coef = torch.stack(
        [torch.rand(c, generator=g, dtype=torch.float64) * s for s in (0.9, 1.0, 0.1, 0.5, 0.6)]
    ).to(dtype)
    gain = (torch.rand(t, c, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x, coef, gain


@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_forward_op(dtype, detach_reset):
    assert cpu.load() is not None
    x, coef, gain = (t.requires_grad_() for t in op_inputs(dtype))
    # schema, fake-tensor shapes/strides, autograd registration, AOTAutograd (dynamic shapes)
    torch.library.opcheck(membrane_fwd, (x, coef, gain, "cpu", 0, 0.5, 1.0, detach_reset))


def test_opcheck_backward_op():
    x, coef, gain = op_inputs(torch.float32, (3, 2, 4))  # linear layout [T, B, C]
    grad = torch.randn(x.shape)
    torch.library.opcheck(membrane_bwd, (x, grad, coef, gain, "cpu", 1, 1.5, 4.7, False))


def test_op_gradients_equal_the_reference_loop():
    from lightning_glif.neurons.functional import MembraneCoefficients, membrane_sequence
    from lightning_glif.neurons.surrogate import Rectangular

    x, coef, gain = (t.requires_grad_() for t in op_inputs(torch.float64))
    kind, p, q = Rectangular().kernel_code()
    spikes = membrane_fwd(x, coef, gain, "cpu", kind, p, q, False)
    c = MembraneCoefficients(
        decay=coef[0], hard=coef[1], leak=coef[2], soft=coef[3], gain=gain, v_threshold=coef[4]
    )
    want = membrane_sequence(x, c, Rectangular())
    assert torch.equal(spikes, want) and 0 < want.mean() < 1
    w = torch.randn(x.shape, dtype=torch.float64)
    got = torch.autograd.grad((spikes * w).sum(), [x, coef, gain])
    ref = torch.autograd.grad((want * w).sum(), [x, coef, gain])
    for g1, g2 in zip(got, ref, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- the LightningModule option
def test_compile_option_keeps_the_modules_state_dict_keys():
    plain = SpikingClassifier(small_resnet(), num_classes=CLASSES)
    comp = SpikingClassifier(small_resnet(), num_classes=CLASSES, compile=True)
    assert comp.hparams.compile is True
    assert comp.backbone._compiled_call_impl is not None  # compiled in place, lazily
    assert list(comp.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in comp.state_dict())


@pytest.mark.slow
def test_compiled_module_trains_a_step_and_its_checkpoint_loads_without_compile(compiled, tmp_path):
    from pytorch_lightning import Trainer

    model = SpikingClassifier(small_resnet(), num_classes=CLASSES, compile=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = batch()
    data = DataLoader(TensorDataset(images, labels), batch_size=B)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, data)
    assert trainer.global_step == 1
    after = model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert "backbone.stem.0.module.weight" in changed  # the step did train the backbone
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)

    # The step is the eager step of the fixture (same init, same batch): the default SGD's first
    # update (lr 0.1, weight decay 4e-5; the momentum buffer starts as the gradient).
    key = "stem.0.module.weight"
    grad = compiled["eager"][1][key]
    want = before["backbone." + key] - 0.1 * (grad + 4e-5 * before["backbone." + key])
    torch.testing.assert_close(after["backbone." + key], want, rtol=1e-4, atol=1e-6)

    loaded = SpikingClassifier.load_from_checkpoint(
        path, backbone=small_resnet(seed=1), compile=False
    )
    assert loaded.compile_backbone is False
    assert loaded.backbone._compiled_call_impl is None
    assert list(loaded.state_dict()) == list(after)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_cli_option_compiles_the_backbone(tmp_path):
    # `train.py fit --model.compile true` builds this model.
    from lightning_glif.cli.main import cli_main

    args = ["--model.compile", "true", "--trainer.default_root_dir", str(tmp_path)]
    model = cli_main(args, run=False).model
    assert model.compile_backbone is True and model.hparams.compile is True
    assert model.backbone._compiled_call_impl is not None
    assert not any("_orig_mod" in k for k in model.state_dict())
