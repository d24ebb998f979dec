"""The GLIF authors' checkpoints convert into this project's backbones
(lightning_glif/authors_checkpoints.py), and the converted models give the authors' spikes and
logits bit for bit in eval.

For each of the five released models a checkpoint is fabricated in exactly the authors' layout
(``tests/data/authors_checkpoints/*.txt``: key, shape, dtype in stored order; random values),
saved, read back and converted. Our model's spikes (every neuron layer) and logits are then
compared with a direct evaluation of the authors' tensors written here from their formulas, in
their order of operations (their ``layers.py``: ``tdBatchNorm`` and ``LIFSpike_CW``; torch's
batch norm for their plain ``BatchNorm2d`` / ``SyncBatchNorm``), with nothing of lightning_glif.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_glif.authors_checkpoints import (
    AuthorsCheckpointMismatch,
    NotAuthorsCheckpoint,
    authors_state_dict,
    convert_state_dict,
    describe_authors,
    is_authors_checkpoint,
    is_authors_file,
    read_authors_checkpoint,
)
from lightning_glif.layers import TdBatchNorm
from lightning_glif.models import ResNet18, ResNet18MS, ResNet19, WideNet7B
from lightning_glif.neurons import GLIF

LAYOUTS = Path(__file__).parent / "data" / "authors_checkpoints"
RESIDUAL = 2**-0.5
EPS = 1e-5
NEURON = ("alpha", "beta", "gamma", "tau", "Vth", "leak", "reVth", "conduct")


# -- fabricated checkpoints in the authors' layouts ------------------------------------------------
def read_layout(name: str) -> list[tuple[str, list[int], torch.dtype]]:
    """(key, shape, dtype) of each line of a layout file, in order."""
    rows = []
    for line in (LAYOUTS / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        dims = [int(d) for d in re.findall(r"\d+", shape)]
        rows.append((key, dims, getattr(torch, dtype)))
    return rows


def fabricate(name: str, seed: int, time_steps: int | None = None) -> dict[str, torch.Tensor]:
    """A state_dict in the layout ``name`` with random values (``time_steps``: another T for the
    conductances). Scaled so that every layer fires some but not all of the time."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    layout = read_layout(name)
    norms = {k.rsplit(".", 1)[0] for k, _, _ in layout if k.endswith(".running_mean")}
    for key, shape, dtype in layout:
        owner, leaf = key.rsplit(".", 1)
        if leaf == "conduct" and time_steps is not None:
            shape = [time_steps, *shape[1:]]
        is_norm = owner in norms
        if leaf == "num_batches_tracked":
            value = torch.tensor(1000)
        elif leaf == "Vth" and not shape:  # tdBN's V_th
            value = torch.tensor(0.5)
        elif leaf == "weight" and not is_norm:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif leaf == "bias" and not is_norm:
            value = torch.randn(shape, generator=g) * 0.1
        elif leaf == "weight":  # norm
            value = torch.rand(shape, generator=g) + 0.5
        elif leaf == "bias":  # norm
            value = torch.randn(shape, generator=g) * 0.3 + 0.3
        elif leaf == "running_mean":
            value = torch.randn(shape, generator=g) * 0.3
        elif leaf == "running_var":
            value = torch.rand(shape, generator=g) * 1.5 + 0.5
        else:  # neuron latents, used as sigmoid(latent)
            value = torch.randn(shape, generator=g, dtype=torch.float64)
        out[key] = value.to(dtype)
    return out


def strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in sd.items()}


# -- the direct evaluation of the authors' tensors -------------------------------------------------
class Reference:
    """The authors' model in eval, from its tensors, time-first ``[T, B, C, H, W]``. Keeps the
    outputs of every norm and neuron layer in the order they run."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self.p = strip(sd)
        self.norms: list[torch.Tensor] = []
        self.spikes: list[torch.Tensor] = []

    def conv(self, x, key, stride, padding):
        y = F.conv2d(x.flatten(0, 1), self.p[key], stride=stride, padding=padding)
        return y.reshape(*x.shape[:2], *y.shape[1:])

    def norm(self, x, name, alpha=None):
        """Over T*B with the running statistics. With ``alpha``, their tdBatchNorm:
        ``alpha * Vth * (x - mean) / sqrt(var + eps)``, then ``* weight + bias``; without, a
        plain batch norm (their BatchNorm2d, and the SyncBatchNorm that replaced their tdBN)."""
        p = {leaf: self.p[f"{name}.{leaf}"] for leaf in ("weight", "bias", "running_mean")}
        var = self.p[f"{name}.running_var"]
        if alpha is None:
            y = F.batch_norm(x.flatten(0, 1), p["running_mean"], var, p["weight"], p["bias"],
                             eps=EPS).reshape(x.shape)  # fmt: skip
        else:
            c = (-1, 1, 1)
            y = alpha * self.p[f"{name}.Vth"] * (x - p["running_mean"].view(c))
            y = y / torch.sqrt(var.view(c) + EPS)
            y = y * p["weight"].view(c) + p["bias"].view(c)
        self.norms.append(y)
        return y

    def glif(self, x, name):
        """Their LIFSpike_CW with soft gates: every latent used as sigmoid(latent) in its stored
        dtype (the DVS gates are float64, and so is that membrane), the terms in their order."""
        s = {k: torch.sigmoid(self.p[f"{name}.{k}"]) for k in NEURON}
        al, be, ga, tau, th, leak, reset = (s[k].view(-1, 1, 1) for k in NEURON[:-1])
        u = torch.zeros_like(x[0])
        o = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            current = x[t] * (1 - be * (1 - s["conduct"][t].view(-1, 1, 1)))
            u = (
                (1 - al * (1 - tau)) * u * (1 - ga * o) - (1 - al) * leak
                + current - (1 - ga) * reset * o
            )  # fmt: skip
            o = (u - th > 0).to(x.dtype)
            out.append(o)
        self.spikes.append(torch.stack(out))
        return self.spikes[-1]

    def pool_head(self, x, linears):
        y = F.adaptive_avg_pool2d(x.flatten(0, 1), 1).flatten(1)
        for key in linears:
            y = F.linear(y, self.p[key])
        return y.reshape(*x.shape[:2], -1)

    # -- the nets ---
    def resnet(self, image, time_steps, strides):
        """ResNet-19/18 (post-activation blocks); ``strides``: first conv of each block."""
        stem = F.conv2d(image, self.p["conv1.0.0.weight"], padding=1)
        x = stem.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1)  # direct encoding
        x = self.glif(self.norm(x, "conv1.0.1", 1.0), "conv1.1")
        for i, s in enumerate(strides):
            n = f"features.{i}"
            out = self.glif(self.norm(self.conv(x, f"{n}.body.0.0.weight", s, 1),
                                      f"{n}.body.0.1", 1.0), f"{n}.body.1")  # fmt: skip
            out = self.norm(self.conv(out, f"{n}.body.2.0.weight", 1, 1), f"{n}.body.2.1", RESIDUAL)
            if f"{n}.downsample.0.0.weight" in self.p:
                short = self.conv(x, f"{n}.downsample.0.0.weight", s, 0)
                short = self.norm(short, f"{n}.downsample.0.1", RESIDUAL)
            else:
                short = self.norm(x, f"{n}.downsample.0", RESIDUAL)
            x = self.glif(out + short, f"{n}.lif")
        heads = sorted(k for k in self.p if k.startswith("lastave."))
        return self.pool_head(x, heads).mean(0)

    def msresnet(self, image, time_steps):
        """MS-ResNet-18 as the authors evaluated it: stem padding 1, plain BNs (their
        SyncBatchNorm replaced every tdBN, and the file holds no tdBN Vth)."""
        stem = F.conv2d(image, self.p["conv1.0.0.weight"], stride=2, padding=1)
        x = stem.unsqueeze(0).repeat(time_steps, 1, 1, 1, 1)
        x = self.glif(self.norm(x, "conv1.0.1"), "conv1.1")
        for i in range(8):
            n, s = f"features.{i}", 2 if i % 2 == 0 else 1
            out = self.conv(self.glif(x, f"{n}.body.0"), f"{n}.body.1.0.weight", s, 1)
            out = self.norm(out, f"{n}.body.1.1")
            out = self.conv(self.glif(out, f"{n}.body.2"), f"{n}.body.3.0.weight", 1, 1)
            out = self.norm(out, f"{n}.body.3.1")
            if f"{n}.downsample.0.0.weight" in self.p:
                short = self.conv(x, f"{n}.downsample.0.0.weight", s, 0)
                short = self.norm(short, f"{n}.downsample.0.1")
            else:
                short = self.norm(x, f"{n}.downsample.0")
            x = out + short
        return self.pool_head(x, ["lastave.0.weight"]).mean(0)

    def widenet(self, frames):
        """7B-wideNet on ``[B, T, 2, 48, 48]``: features averaged over T, then the classifier
        (the authors' order). Returns ``[B, K]``."""

        def cbn(x, n, k):
            x = self.conv(x, f"{n}.0.0.weight", 1, k // 2)
            return self.glif(self.norm(x, f"{n}.0.1"), f"{n}.1")

        def sew(x, i):
            return cbn(cbn(x, f"conv.{i}.conv.0", 3), f"conv.{i}.conv.1", 3) + x

        def pool(x):
            y = F.avg_pool2d(x.flatten(0, 1), 2)
            return y.reshape(*x.shape[:2], *y.shape[1:])

        x = cbn(frames.transpose(0, 1), "conv.0", 1)
        for i in (1, 2, 3, 4):
            x = sew(x, i)
        x = cbn(pool(x), "conv.6", 1)
        for i in (7, 9, 11):
            x = pool(sew(x, i))
        return F.linear(x.flatten(2).mean(0), self.p["out.weight"], self.p["out.bias"])


# -- our models ------------------------------------------------------------------------------------
def build(kind: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "resnet19":
        model = ResNet19(GLIF, kwargs.pop("time_steps", 6), **kwargs)
    elif kind == "resnet18":
        model = ResNet18(GLIF, 6, num_classes=100, **{"stage_strides": (1, 1, 2, 2), **kwargs})
    elif kind == "resnet18ms":
        model = ResNet18MS(GLIF, 6, **{"stem_padding": 1, "tdbn_scale": False, **kwargs})
    else:
        model = WideNet7B(kwargs.get("neuron", GLIF), 16, num_classes=10, in_channels=2,
                          image_size=48)  # fmt: skip
    return model.eval()


@pytest.fixture(scope="module")
def resnet19_c10():
    return build("resnet19", num_classes=10)


@pytest.fixture(scope="module")
def resnet19_c100():
    return build("resnet19", num_classes=100)


@pytest.fixture(scope="module")
def resnet18():
    return build("resnet18")


@pytest.fixture(scope="module")
def resnet18ms():
    return build("resnet18ms")


def save_and_convert(tmp_path, obj, model, name="ckpt.pth.tar"):
    path = tmp_path / name
    torch.save(obj, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert is_authors_checkpoint(loaded)
    converted = convert_state_dict(loaded, model)
    model.load_state_dict(converted)
    assert read_authors_checkpoint(path).keys() == authors_state_dict(obj).keys()
    return converted


@contextlib.contextmanager
def recording(model: torch.nn.Module, kind: type) -> Iterator[list[torch.Tensor]]:
    """The outputs of every ``kind`` layer of ``model`` within the block, in the order they
    run."""
    outputs: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda module, args, out: outputs.append(out.clone()))
        for m in model.modules()
        if isinstance(m, kind)
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor], spikes: bool) -> None:
    """Every layer's output bit-equal; with ``spikes``, in a net whose every layer fires some of
    the time (so that a wrong tensor or a rounding difference would show)."""
    assert len(ours) == len(theirs) > 0
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if spikes:
            assert 0.01 < b.mean().item() < 0.99, f"layer {i} fires at {b.mean().item():.3f}"
        assert torch.equal(a, b), f"layer {i}: {(a != b).sum().item()} values differ"


def run_both(model, ref: Reference, evaluate, x) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s mean logits and the reference's (``evaluate(x)``, a method of ``ref``) on
    ``x``, after checking that every norm and neuron layer gave the reference's output."""
    with recording(model, TdBatchNorm) as norms, recording(model, GLIF) as spikes:
        ours = model(x).mean(0)
    theirs = evaluate(x)
    assert_same(norms, ref.norms, spikes=False)
    assert_same(spikes, ref.spikes, spikes=True)
    assert theirs.std() > 0.05  # the input reaches the logits
    return ours, theirs


# -- the five models: the authors' spikes and logits, over several batches ------------------------
@pytest.mark.parametrize(
    ("layout", "fixture", "wrapped"),
    [
        ("resnet19_cifar10_t6", "resnet19_c10", "module"),
        pytest.param("resnet19_cifar100_t6", "resnet19_c100", "plain", marks=pytest.mark.slow),
        pytest.param("resnet18_cifar100_t6", "resnet18", "module", marks=pytest.mark.slow),
    ],
)
@torch.inference_mode()
def test_cifar_resnets_give_the_authors_spikes_and_logits(
    tmp_path, request, layout, fixture, wrapped
):
    model = request.getfixturevalue(fixture)
    sd = fabricate(layout, seed=1)
    prefix = "module." if wrapped == "module" else ""
    obj = {"state_dict": {prefix + k: v for k, v in sd.items()}, "epoch": 199, "best_acc": 77.4}
    save_and_convert(tmp_path, obj, model)
    strides = (1, 1, 1, 2, 1, 1, 2, 1) if "resnet19" in layout else (1, 1, 1, 1, 2, 1, 2, 1)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        ref = Reference(sd)
        image = torch.randn(1, 3, 16, 16, generator=g)
        ours, theirs = run_both(
            model, ref, partial(ref.resnet, time_steps=6, strides=strides), image
        )
        assert torch.equal(ours, theirs)


@torch.inference_mode()
def test_msresnet18_imagenet_file_as_released_gives_the_authors_spikes(tmp_path, resnet18ms):
    released = fabricate("resnet18ms_imagenet_t6", seed=3)  # module. keys, no tdBN Vth
    assert all(k.startswith("module.") for k in released)
    assert not any(k.endswith(".1.Vth") and not v.shape for k, v in released.items())
    save_and_convert(tmp_path, {"state_dict": released, "epoch": 149}, resnet18ms)
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        ref = Reference(released)
        image = torch.randn(2, 3, 32, 32, generator=g)
        ours, theirs = run_both(resnet18ms, ref, partial(ref.msresnet, time_steps=6), image)
        assert torch.equal(ours, theirs)


def widenet7b_file(tmp_path, model) -> dict[str, torch.Tensor]:
    """An authors' CIFAR10-DVS file ({'net': ...}, float64 gates) converted into ``model``."""
    sd = fabricate("widenet7b_cifar10dvs_t16", seed=5)
    assert sd["conv.0.1.alpha"].dtype == torch.float64  # as the authors' DVS gates
    optimizer = {"state": {}, "param_groups": []}
    obj = {"net": sd, "optimizer": optimizer, "lr_scheduler": {}, "epoch": 168}
    save_and_convert(tmp_path, obj, model, "checkpoint_max.pth")
    return sd


def test_widenet7b_keeps_the_float64_gates(tmp_path):
    model = build("widenet7b")
    sd = widenet7b_file(tmp_path, model)
    neuron = model.features[0][2]
    for gate in ("alpha", "beta", "gamma"):
        latent = getattr(neuron, f"{gate}_latent")
        assert latent.dtype == torch.float64 and latent.requires_grad
        assert torch.equal(latent, sd[f"conv.0.1.{gate}"])  # every bit of the file's value
    assert neuron.tau_latent.dtype == torch.float32  # as the file's


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "reference"])
@torch.inference_mode()
def test_widenet7b_gives_the_authors_spikes(tmp_path, backend):
    """The membrane in float64 as theirs: by the fused kernel ("auto" on the CPU) or the
    reference loop (what a CUDA device runs in float64)."""
    model = build("widenet7b", neuron=partial(GLIF, backend=backend))
    sd = widenet7b_file(tmp_path, model)
    g = torch.Generator().manual_seed(6)
    for _ in range(2):
        ref = Reference(sd)
        frames = (torch.rand(1, 16, 2, 48, 48, generator=g) < 0.3).float()  # [B, T, 2, 48, 48]
        ours, theirs = run_both(model, ref, ref.widenet, frames)
        # Ours applies the classifier per step, then averages; theirs averages first: 1e-6.
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * theirs.abs().max())


def test_describes_each_file():
    names = ("resnet19_cifar10_t6", "resnet18_cifar100_t6", "resnet18ms_imagenet_t6",
             "widenet7b_cifar10dvs_t16")  # fmt: skip
    seen = {name: describe_authors(strip(fabricate(name, 0))).description for name in names}
    assert seen["resnet19_cifar10_t6"].startswith(
        "the authors' ResNet-19 for CIFAR-10 (10 classes, T=6, in_channels=3, stem 128 channels"
    )
    assert "head 512->256->10" in seen["resnet19_cifar10_t6"]
    assert seen["resnet18_cifar100_t6"].startswith("the authors' ResNet-18 for CIFAR-100 (100 ")
    assert seen["resnet18ms_imagenet_t6"].startswith("the authors' MS-ResNet-18 for ImageNet")
    assert seen["widenet7b_cifar10dvs_t16"].startswith(
        "the authors' 7B-wideNet for CIFAR10-DVS (10 classes, T=16, in_channels=2"
    )


# -- the wrong model is refused --------------------------------------------------------------------
def refusal(sd, model) -> str:
    with pytest.raises(AuthorsCheckpointMismatch) as info:
        convert_state_dict({"state_dict": sd}, model)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_resnet18_file_into_resnet19_is_refused(resnet19_c100):
    message = refusal(fabricate("resnet18_cifar100_t6", 0), resnet19_c100)
    assert "the authors' ResNet-18 for CIFAR-100" in message
    assert "this project's ResNet19 (num_classes=100, time_steps=6" in message
    assert "conv1.0.0.weight [64, 3, 3, 3] vs this model's stem.0.module.weight [128, 3, 3, 3]" in (
        message
    )


def test_cifar10_file_into_cifar100_is_refused(resnet19_c100):
    message = refusal(fabricate("resnet19_cifar10_t6", 0), resnet19_c100)
    assert "the authors' ResNet-19 for CIFAR-10 (10 classes" in message
    assert "ResNet19 (num_classes=100" in message
    assert "lastave" in message and "head.module" in message


def test_t4_file_into_t6_is_refused(resnet19_c100):
    message = refusal(fabricate("resnet19_cifar100_t6", 0, time_steps=4), resnet19_c100)
    assert "(100 classes, T=4" in message and "time_steps=6" in message
    assert "conv1.1.conduct [4, 128] vs this model's stem.2.conductance_latent [6, 128]" in message


def test_what_the_shapes_do_not_tell_is_refused(resnet19_c10):
    paper_strides = build("resnet18", stage_strides=(1, 2, 2, 2))
    message = refusal(fabricate("resnet18_cifar100_t6", 0), paper_strides)
    assert "'features.2.body.0.0' has stride 1" in message and "has stride 2" in message

    ms = fabricate("resnet18ms_imagenet_t6", 0)
    assert "padding 1" in refusal(ms, build("resnet18ms", stem_padding=3))
    message = refusal(ms, build("resnet18ms", tdbn_scale=True))
    assert "scales by 1" in message and "by 0.5" in message

    lif = ResNet19(lambda c, t: GLIF(c, t, alpha="hard"), 6, num_classes=10)
    assert "gate modes {'alpha': 'hard'}" in refusal(fabricate("resnet19_cifar10_t6", 0), lif)


def test_a_resnet_file_saved_after_syncbatchnorm_conversion_is_refused(resnet19_c10):
    """Such a file holds no tdBN Vth: its norms trained as plain BNs, which ResNet19 (always
    tdBN) is not; run with the tdBN scales, its logits would be off."""
    sd = fabricate("resnet19_cifar10_t6", 0)
    synced = {f"module.{k}": v for k, v in sd.items() if not (k.endswith(".Vth") and not v.shape)}
    assert len(synced) == len(sd) - 25  # the 25 norms of ResNet-19
    message = refusal(synced, resnet19_c10)
    assert "the authors' norm 'conv1.0.1' scales by 1 (" in message and "by 0.5" in message
    assert "saved after SyncBatchNorm conversion" in message and "ResNet-19 has tdBN" in message
    assert "refused" in message


def test_an_msresnet_file_with_tdbn_vth_needs_the_tdbn_scales():
    """The released ImageNet file has no tdBN Vth (plain BNs: tdbn_scale false); one saved
    without SyncBatchNorm keeps Vth, and its norms scale by alpha * Vth as the paper's tdBN."""
    unsynced = {}
    for k, v in strip(fabricate("resnet18ms_imagenet_t6", 0)).items():
        unsynced[k] = v
        if k.endswith(".num_batches_tracked"):  # the authors' tdBN registers Vth after it
            unsynced[k.replace("num_batches_tracked", "Vth")] = torch.tensor(0.5)
    message = refusal(unsynced, build("resnet18ms"))
    assert "the authors' norm 'conv1.0.1' scales by 0.5" in message and "by 1" in message
    scaled = build("resnet18ms", tdbn_scale=True)
    scaled.load_state_dict(convert_state_dict({"state_dict": unsynced}, scaled))


def test_other_objects_are_not_authors_checkpoints(tmp_path, resnet19_c10):
    lightning = {"state_dict": {"backbone.stem.2.alpha_latent": torch.zeros(3)},
                 "pytorch-lightning_version": "2.6.6"}  # fmt: skip
    sd = fabricate("resnet19_cifar10_t6", 0)
    partial = {k: v for k, v in sd.items() if not k.endswith(".reVth")}
    for obj in (lightning, {"net": 5}, [sd], {"model": sd}, {"state_dict": partial}, {}):
        assert not is_authors_checkpoint(obj)
    assert is_authors_checkpoint(sd) and is_authors_checkpoint({"net": sd})
    with pytest.raises(NotAuthorsCheckpoint, match="not a GLIF authors' checkpoint"):
        convert_state_dict(lightning, resnet19_c10)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotAuthorsCheckpoint, match="cannot read"):
        read_authors_checkpoint(text)
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save({"net": sd, "epoch": 1}, tmp_path / "checkpoint_max.pth")
    assert not is_authors_file(text) and not is_authors_file(tmp_path / "last.ckpt")
    assert is_authors_file(tmp_path / "checkpoint_max.pth")
    with pytest.raises(NotAuthorsCheckpoint, match="last.ckpt: not a GLIF authors'"):
        read_authors_checkpoint(tmp_path / "last.ckpt")
