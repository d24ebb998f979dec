"""Contracts of the spiking backbones: shapes, neuron layout, parameter count, tdBN scaling,
direct encoding, that gradients reach every parameter, and the "Add a backbone" recipe.

Most tests use ``StepNeuron``, a deterministic stand-in (Heaviside at 0.5 with a straight-through
gradient), so they check the wiring of the nets and not the dynamics of a neuron; the tests at
the end run the real ``GLIF``.
"""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_glif.layers import (
    SpikeConv2d,
    SpikingSequential,
    TdBatchNorm,
    TimeDistributed,
    binary_spikes,
    spike_conv,
    to_time_first,
)
from lightning_glif.models.common import NeuronFactory, init_weights
from lightning_glif.models.msresnet import MSBlock, ResNet18MS
from lightning_glif.models.resnet import BasicBlock, ResNet18, ResNet19
from lightning_glif.models.sew import SEWBlock, WideNet7B
from lightning_glif.neurons.base import SpikingNeuron

T, B = 2, 2
PLAIN_SCALE = 0.5  # alpha = 1, V_th = 0.5
RESIDUAL_SCALE = 0.5 / math.sqrt(2)  # alpha = 1/sqrt(2), V_th = 0.5


class StepNeuron(SpikingNeuron):
    """Stand-in neuron: ``o = H(x - 0.5)`` per step, gradient passed straight through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        spikes = (x > 0.5).to(x.dtype)
        return spikes + (x - x.detach())  # value: exactly the spikes; gradient: identity


class CountingFactory:
    """A neuron factory that records every ``(num_features, time_steps)`` it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, num_features: int, time_steps: int) -> nn.Module:
        self.calls.append((num_features, time_steps))
        return StepNeuron(num_features, time_steps)


def channels(factory: CountingFactory, time_steps: int = T) -> list[int]:
    assert all(t == time_steps for _, t in factory.calls)
    return [c for c, _ in factory.calls]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tdbn_scales(model: nn.Module) -> dict[str, float]:
    return {n: m.scale.item() for n, m in model.named_modules() if isinstance(m, TdBatchNorm)}


def is_residual_norm(name: str) -> bool:
    """The norms that feed a residual addition: a block's bn2 and its shortcut norm."""
    return name.endswith(".bn2") or ".shortcut" in name


# --- neuron layout: one factory call per spiking layer, with the derived channels ------------


def test_resnet19_neurons():
    f = CountingFactory()
    ResNet19(f, T)
    # stem 128; stages (128 x3, 256 x3, 512 x2 blocks), two neurons per block; no head neuron.
    assert channels(f) == [128] + [128] * 6 + [256] * 6 + [512] * 4
    assert len(f.calls) == 17


def test_resnet18_neurons():
    f = CountingFactory()
    ResNet18(f, T)
    # stem 64; four stages of two blocks, two neurons per block.
    assert channels(f) == [64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
    assert len(f.calls) == 17


def test_msresnet_neurons():
    f = CountingFactory()
    ResNet18MS(f, T)
    # stem 64; each block's first neuron sees C_in (pre-activation), its second C_out.
    assert channels(f) == [64, 64, 64, 64, 64, 64, 128, 128, 128, 128, 256, 256, 256, 256, 512,
                           512, 512]  # fmt: skip

    class ResNet34MS(ResNet18MS):
        STAGE_BLOCKS = (3, 4, 6, 3)

    f34 = CountingFactory()
    ResNet34MS(f34, T)
    # stem 1 + (3 + 4 + 6 + 3) blocks x 2 = 33; a stage's first block enters with the previous C.
    assert len(f34.calls) == 33
    assert channels(f34)[:9] == [64, 64, 64, 64, 64, 64, 64, 64, 128]


def test_widenet7b_neurons():
    f = CountingFactory()
    WideNet7B(f, T)
    # conv1x1(2->64) 1 + four SEW(64) x 2 = 9 at 64; conv1x1(64->128) 1 + three SEW(128) x 2 = 7.
    assert channels(f) == [64] * 9 + [128] * 7


def test_time_steps_is_passed_through():
    f = CountingFactory()
    model = ResNet19(f, 6, num_classes=100)
    assert {t for _, t in f.calls} == {6}
    assert (model.time_steps, model.num_classes) == (6, 100)


# --- parameter count and head ----------------------------------------------------------------


def test_resnet19_parameter_count_matches_hand_derivation():
    def conv(k, cin, cout):
        return k * k * cin * cout

    def bn(c):  # tdBN: affine weight and bias; the scale is a buffer
        return 2 * c

    def block(cin, cout, stride):
        body = conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
        shortcut = bn(cout) if (cin == cout and stride == 1) else conv(1, cin, cout) + bn(cout)
        return body + shortcut

    stem = conv(3, 3, 128) + bn(128)
    stages = 3 * block(128, 128, 1)
    stages += block(128, 256, 2) + 2 * block(256, 256, 1)
    stages += block(256, 512, 2) + block(512, 512, 1)
    head10 = 512 * 256 + 256 * 10  # bias-free 512 -> 256 -> 10
    head100 = 512 * 100  # bias-free 512 -> 100
    assert stem + stages + head10 == 12_700_544
    assert n_params(ResNet19(CountingFactory(), T)) == 12_700_544
    assert n_params(ResNet19(CountingFactory(), T, num_classes=100)) == stem + stages + head100


def test_resnet_head_is_bias_free_and_follows_the_authors_rule():
    cifar10 = ResNet19(CountingFactory(), T, num_classes=10).head.module
    assert [type(m) for m in cifar10] == [nn.Linear, nn.Linear]  # nothing between the two FCs
    assert [(m.in_features, m.out_features, m.bias) for m in cifar10] == [
        (512, 256, None),
        (256, 10, None),
    ]
    cifar100 = ResNet19(CountingFactory(), T, num_classes=100).head.module
    assert isinstance(cifar100, nn.Linear) and cifar100.out_features == 100
    assert cifar100.bias is None
    single = ResNet18(CountingFactory(), T, num_classes=10, head_hidden=0).head.module
    assert isinstance(single, nn.Linear) and single.in_features == 512


# --- tdBN scaling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "n_residual", "n_plain"),
    [
        # stem 1 + 8 blocks x bn1; 8 blocks x (bn2 + shortcut norm)
        (lambda f: ResNet19(f, T), 16, 9),
        (lambda f: ResNet18(f, T), 16, 9),
        (lambda f: ResNet18MS(f, T), 16, 9),
    ],
)
def test_residual_norms_scaled_by_inverse_sqrt2(make, n_residual, n_plain):
    scales = tdbn_scales(make(CountingFactory()))
    residual = {n: s for n, s in scales.items() if is_residual_norm(n)}
    plain = {n: s for n, s in scales.items() if not is_residual_norm(n)}
    assert (len(residual), len(plain)) == (n_residual, n_plain)
    assert all(s == pytest.approx(RESIDUAL_SCALE) for s in residual.values())
    assert all(s == pytest.approx(PLAIN_SCALE) for s in plain.values())


def test_identity_shortcut_carries_a_scaled_norm():
    block = BasicBlock(CountingFactory(), T, 128, 128, stride=1)
    assert isinstance(block.shortcut, TdBatchNorm)
    assert block.shortcut.scale.item() == pytest.approx(RESIDUAL_SCALE)
    ms = MSBlock(CountingFactory(), T, 64, 128, stride=2)
    assert isinstance(ms.shortcut[0].module, nn.Conv2d) and ms.shortcut[0].module.stride == (2, 2)
    assert ms.shortcut[1].scale.item() == pytest.approx(RESIDUAL_SCALE)


def test_sew_norms_are_plain_batch_norms():
    assert set(tdbn_scales(WideNet7B(CountingFactory(), T)).values()) == {1.0}


def test_sync_batchnorm_conversion_keeps_the_scaling_and_the_output():
    torch.manual_seed(0)
    model = ResNet18(CountingFactory(), T)
    x = torch.randn(B, 3, 16, 16)
    before = tdbn_scales(model)
    expected = model(x)  # train mode: batch statistics
    assert expected.abs().sum() > 0
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    inner = [m.bn for m in converted.modules() if isinstance(m, TdBatchNorm)]
    assert len(inner) == 25 and all(isinstance(bn, nn.SyncBatchNorm) for bn in inner)
    assert tdbn_scales(converted) == before
    # without a process group SyncBatchNorm normalises locally: the same numbers as before
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)


# --- shapes and the direct encoding ----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape", "k"),
    [
        (lambda f: ResNet19(f, T), (B, 3, 32, 32), 10),
        (lambda f: ResNet18(f, T, num_classes=100), (B, 3, 32, 32), 100),
        (lambda f: ResNet18MS(f, T), (B, 3, 64, 64), 1000),
        (lambda f: WideNet7B(f, T), (B, T, 2, 48, 48), 10),
    ],
    ids=["resnet19", "resnet18", "resnet18ms", "widenet7b"],
)
def test_per_step_logits_shape(make, shape, k):
    torch.manual_seed(0)
    with torch.no_grad():
        out = make(CountingFactory())(torch.randn(*shape))
    assert out.shape == (T, B, k)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda f: ResNet19(f, T), (B, 3, 16, 16)),
        (lambda f: ResNet18MS(f, T), (B, 3, 64, 64)),
        (lambda f: WideNet7B(f, T), (B, 2, 48, 48)),
    ],
    ids=["resnet19", "resnet18ms", "widenet7b"],
)
def test_static_batch_equals_explicitly_repeated_sequence(make, shape):
    torch.manual_seed(0)
    model = make(CountingFactory())
    x = torch.randn(*shape)
    for m in model.modules():
        if isinstance(m, TdBatchNorm):
            m.bn.momentum = None  # cumulative average: one batch sets the running statistics
    model.train()
    model(x)
    model.eval()
    with torch.no_grad():
        static = model(x)
        sequence = model(x.unsqueeze(1).repeat(1, T, 1, 1, 1))  # [B, T, C, H, W], a real copy
    assert static.abs().sum() > 0
    torch.testing.assert_close(static, sequence, rtol=1e-5, atol=1e-6)


def test_msresnet_spatial_plan_and_stem_padding():
    x = to_time_first(torch.randn(B, 3, 64, 64), T)
    model = ResNet18MS(CountingFactory(), T)
    stem = model.stem(x)
    assert stem.shape == (T, B, 64, 32, 32)  # conv7x7 stride 2 padding 3, no max-pool
    assert model.blocks(stem).shape == (T, B, 512, 2, 2)  # every stage halves: 32 -> 2
    authors = ResNet18MS(CountingFactory(), T, stem_padding=1)
    assert authors.stem(x).shape == (T, B, 64, 30, 30)


def test_msresnet_residual_stream_is_real_valued():
    torch.manual_seed(0)
    model = ResNet18MS(CountingFactory(), T)
    with torch.no_grad():
        out = model.blocks[:2](model.stem(to_time_first(torch.randn(B, 3, 32, 32), T)))
    assert not torch.isin(out, torch.tensor([0.0, 1.0])).all()  # membrane values, not spikes


def test_widenet7b_classifier_input_and_time_mean():
    torch.manual_seed(0)
    model = WideNet7B(CountingFactory(), T).eval()
    assert model.head.module.in_features == 1152 == 128 * 3 * 3
    assert model.head.module.bias is not None
    x = torch.rand(B, T, 2, 48, 48)
    with torch.no_grad():
        features = model.features(to_time_first(x, T)).flatten(2)  # [T, B, 1152]
        mean_then_linear = model.head.module(features.mean(0))  # the authors' readout
        per_step = model(x)
    torch.testing.assert_close(per_step.mean(0), mean_then_linear, rtol=1e-5, atol=1e-6)
    assert WideNet7B(CountingFactory(), T, image_size=64).head.module.in_features == 128 * 16


def test_sew_block_adds_spikes_to_its_input():
    torch.manual_seed(0)
    block = SEWBlock(CountingFactory(), T, 8)
    x = (torch.rand(T, B, 8, 6, 6) > 0.5).float()
    with torch.no_grad():
        residual = block(x) - x
    assert set(residual.unique().tolist()) <= {0.0, 1.0}  # the body ends in a neuron
    assert residual.sum() > 0


def test_resnet18_stage_strides():
    x = to_time_first(torch.randn(B, 3, 16, 16), T)
    spec = ResNet18(CountingFactory(), T)  # (1, 2, 2, 2): 16 -> 2
    authors = ResNet18(CountingFactory(), T, stage_strides=(1, 1, 2, 2))  # 16 -> 4
    with torch.no_grad():
        assert spec.blocks(spec.stem(x)).shape == (T, B, 512, 2, 2)
        assert authors.blocks(authors.stem(x)).shape == (T, B, 512, 4, 4)
    assert n_params(spec) == n_params(authors)


def test_resnet_rejects_mismatched_stage_lists():
    from lightning_glif.models.resnet import SpikingResNet

    with pytest.raises(ValueError, match="one entry per stage"):
        SpikingResNet(CountingFactory(), T, 10, 3, 64, (64, 128), (2,), (1, 2))


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda f: ResNet19(f, T), (B, 3, 16, 16)),
        # 64x64: the last stage must keep more than 1x1, else a conv there sees only its centre
        # tap, a shift before it is absorbed by the next norm and that bias gets a zero gradient
        (lambda f: ResNet18MS(f, T, num_classes=10), (B, 3, 64, 64)),
        (lambda f: WideNet7B(f, T, image_size=32), (B, T, 2, 32, 32)),
    ],
    ids=["resnet19", "resnet18ms", "widenet7b"],
)
def test_every_parameter_gets_a_gradient(make, shape):
    torch.manual_seed(0)
    model = make(CountingFactory())
    model(torch.randn(*shape)).mean(0).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- with the real GLIF ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape", "k", "n_neurons"),
    [
        (lambda n: ResNet19(n, T), (B, 3, 8, 8), 10, 17),
        (lambda n: ResNet18MS(n, T), (B, 3, 32, 32), 1000, 17),
        (lambda n: WideNet7B(n, T, image_size=32), (B, T, 2, 32, 32), 10, 16),
    ],
    ids=["resnet19", "resnet18ms", "widenet7b"],
)
def test_backbones_train_with_glif(make, shape, k, n_neurons):
    from lightning_glif.neurons import GLIF

    torch.manual_seed(0)
    model = make(GLIF)
    assert sum(isinstance(m, GLIF) for m in model.modules()) == n_neurons
    out = model(torch.randn(*shape))
    assert out.shape == (T, B, k)
    out.mean(0).logsumexp(1).sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- the "Add a backbone" recipe -------------------------------------------------------------


class TinyNet(nn.Module):
    """A backbone as the recipe writes one: two conv + tdBN + neuron layers, average pool,
    readout. The data replaces ``num_classes`` and ``in_channels`` (matched by name), but the
    parser wants every argument before that: each has a default."""

    def __init__(
        self,
        neuron: NeuronFactory,
        num_classes: int = 2,
        in_channels: int = 3,
        time_steps: int = 4,
        width: int = 8,
        memory_saving: bool = False,
    ) -> None:
        super().__init__()
        self.time_steps = time_steps
        first = neuron(width, time_steps)
        bits = memory_saving and binary_spikes(first)  # the second conv takes first's spikes
        self.features = SpikingSequential(
            TimeDistributed(spike_conv(in_channels, width, 3, False, padding=1)),
            TdBatchNorm(width),
            first,
            TimeDistributed(spike_conv(width, width, 3, bits, padding=1)),
            TdBatchNorm(width),
            neuron(width, time_steps),
            memory_saving=memory_saving,
        )
        self.head = TimeDistributed(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(width, num_classes))
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> per-step logits ``[T, B, num_classes]``."""
        return self.head(self.features(to_time_first(x, self.time_steps)))


def test_backbones_import_only_the_layers_and_common():
    allowed = {"lightning_glif.layers", "lightning_glif.models.common"}
    root = Path(__file__).resolve().parents[1] / "lightning_glif" / "models"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            ours = {n for n in names if n.startswith("lightning_glif")}
            assert ours <= allowed, (path.name, ours)


def test_a_recipe_backbone_saves_memory_with_the_same_gradients():
    from lightning_glif.neurons import GLIF

    x = torch.randn(B, 1, 6, 6) * 3
    steps = []
    for on in (True, False):
        torch.manual_seed(0)
        net = TinyNet(GLIF, num_classes=3, in_channels=1, time_steps=T, memory_saving=on)
        assert isinstance(net.features[3].module, SpikeConv2d) == on
        out = net(x)
        assert out.shape == (T, B, 3)
        out.mean(0).logsumexp(1).sum().backward()
        steps.append((out, {n: p.grad for n, p in net.named_parameters()}))
    (out_on, grads_on), (out_off, grads_off) = steps
    assert torch.equal(out_on, out_off)
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        assert torch.equal(grads_on[name], grad), name


@pytest.mark.slow  # builds the CLI
def test_the_data_sets_a_recipe_backbones_arguments_by_name(tmp_path, monkeypatch):
    from lightning_glif.cli.main import cli_main

    monkeypatch.setattr(sys, "argv", ["train.py"])
    args = ["--model.backbone", f"{__name__}.TinyNet", "--trainer.default_root_dir", str(tmp_path)]
    cli = cli_main(args, run=False)  # the default data: 8x8 digits, 1 channel, 10 classes
    backbone = cli.model.backbone
    assert isinstance(backbone, TinyNet)
    assert backbone.features[0].module.in_channels == 1
    assert backbone.head.module[2].out_features == 10
