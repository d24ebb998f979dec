"""The GLIF authors' checkpoints convert into this project's backbones (lightning_glif/compat.py).

For each of the five released models a checkpoint is fabricated in exactly the authors' layout
(``tests/data/authors_checkpoints/*.txt``: key, shape, dtype in registration order; random values),
saved, read back and converted; our model's logits are then checked against a direct evaluation
of the authors' tensors written here (F.conv2d, F.batch_norm with the tdBN scale, F.linear,
average pools, and the GLIF recurrence on sigmoid(latents) from the spec's equations via
``lightning_glif.neurons.functional``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_glif.compat import (
    AuthorsCheckpointMismatch,
    NotAuthorsCheckpoint,
    authors_state_dict,
    convert_state_dict,
    describe_authors,
    is_authors_checkpoint,
    is_authors_file,
    read_authors_checkpoint,
)
from lightning_glif.models import ResNet18, ResNet18MS, ResNet19, WideNet7B
from lightning_glif.neurons import GLIF
from lightning_glif.neurons.functional import GLIFValues, glif_sequence

LAYOUTS = Path(__file__).parent / "data" / "authors_checkpoints"
RESIDUAL = 2**-0.5
EPS = 1e-5


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
            value = torch.randn(shape, generator=g)
        out[key] = value.to(dtype)
    return out


# -- the direct evaluation of the authors' tensors -------------------------------------------------
class Reference:
    """The authors' model evaluated from its tensors: time-first ``[T, B, C, H, W]``."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self.p = sd
        self.rates: list[float] = []

    def conv(self, x, key, stride, padding):
        y = F.conv2d(x.flatten(0, 1), self.p[key], stride=stride, padding=padding)
        return y.reshape(*x.shape[:2], *y.shape[1:])

    def norm(self, x, name, alpha=None):
        """Eval-mode BN over T*B; with ``alpha`` the tdBN scale ``alpha * Vth`` before the
        affine."""
        p = self.p
        y = F.batch_norm(
            x.flatten(0, 1), p[f"{name}.running_mean"], p[f"{name}.running_var"], eps=EPS
        ).reshape(x.shape)
        if alpha is not None:
            y = (alpha * p[f"{name}.Vth"]) * y
        shape = (-1, 1, 1)
        return p[f"{name}.weight"].view(shape) * y + p[f"{name}.bias"].view(shape)

    def glif(self, x, name):
        """GLIF (docs/GLIF_SPEC.md section 1) on sigmoid of the authors' latents."""
        s = {k: torch.sigmoid(self.p[f"{name}.{k}"].float()) for k in
             ("alpha", "beta", "gamma", "tau", "Vth", "leak", "reVth", "conduct")}  # fmt: skip
        values = GLIFValues(
            alpha=s["alpha"], beta=s["beta"], gamma=s["gamma"], tau=s["tau"],
            v_threshold=s["Vth"], v_leak=s["leak"], v_reset=s["reVth"], conductance=s["conduct"],
        )  # fmt: skip
        spikes = glif_sequence(x, values, lambda v: (v > 0).to(v.dtype))
        self.rates.append(spikes.mean().item())
        return spikes

    def pool_head(self, x, linears):
        y = F.adaptive_avg_pool2d(x.flatten(0, 1), 1).flatten(1)
        for key in linears:
            y = F.linear(y, self.p[key])
        return y.reshape(*x.shape[:2], -1)

    # -- the nets ---
    def resnet(self, image, time_steps, strides, tdbn=True):
        """ResNet-19/18 (post-activation blocks); ``strides``: first conv of each block."""
        a1, ar = (1.0, RESIDUAL) if tdbn else (None, None)
        stem = F.conv2d(image, self.p["conv1.0.0.weight"], padding=1)
        x = stem.unsqueeze(0).expand(time_steps, *stem.shape)  # direct encoding
        x = self.glif(self.norm(x, "conv1.0.1", a1), "conv1.1")
        for i, s in enumerate(strides):
            n = f"features.{i}"
            out = self.glif(self.norm(self.conv(x, f"{n}.body.0.0.weight", s, 1),
                                      f"{n}.body.0.1", a1), f"{n}.body.1")  # fmt: skip
            out = self.norm(self.conv(out, f"{n}.body.2.0.weight", 1, 1), f"{n}.body.2.1", ar)
            if f"{n}.downsample.0.0.weight" in self.p:
                short = self.conv(x, f"{n}.downsample.0.0.weight", s, 0)
                short = self.norm(short, f"{n}.downsample.0.1", ar)
            else:
                short = self.norm(x, f"{n}.downsample.0", ar)
            x = self.glif(out + short, f"{n}.lif")
        heads = sorted(k for k in self.p if k.startswith("lastave."))
        return self.pool_head(x, heads)

    def msresnet(self, image, time_steps):
        """MS-ResNet-18 as the authors evaluated it: stem padding 1, plain BNs (their
        SyncBatchNorm dropped tdBN's scale, so the Vth entries are unused)."""
        stem = F.conv2d(image, self.p["conv1.0.0.weight"], stride=2, padding=1)
        x = stem.unsqueeze(0).expand(time_steps, *stem.shape)
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
        return self.pool_head(x, ["lastave.0.weight"])

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
        model = WideNet7B(GLIF, 16, num_classes=10, in_channels=2, image_size=48)
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


def check_close(ours: torch.Tensor, theirs: torch.Tensor, rates: list[float], rtol: float):
    """Equal logits of a net whose every layer spikes (so a wrong tensor would show)."""
    assert ours.shape == theirs.shape
    assert theirs.std() > 0.05  # the input reaches the logits
    assert all(0.01 < r < 0.99 for r in rates), rates
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() <= rtol * scale, (ours - theirs).abs().max() / scale


# -- the five models -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layout", "fixture", "wrapped"),
    [
        ("resnet19_cifar10_t6", "resnet19_c10", "module"),
        ("resnet19_cifar100_t6", "resnet19_c100", "plain"),
        ("resnet18_cifar100_t6", "resnet18", "module"),
    ],
)
@torch.inference_mode()
def test_cifar_resnets_give_the_authors_logits(tmp_path, request, layout, fixture, wrapped):
    model = request.getfixturevalue(fixture)
    sd = fabricate(layout, seed=1)
    prefix = "module." if wrapped == "module" else ""
    obj = {"state_dict": {prefix + k: v for k, v in sd.items()}, "epoch": 199, "best_acc": 77.4}
    save_and_convert(tmp_path, obj, model)
    image = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ref = Reference(sd)
    strides = (1, 1, 1, 2, 1, 1, 2, 1) if "resnet19" in layout else (1, 1, 1, 1, 2, 1, 2, 1)
    theirs = ref.resnet(image, 6, strides)
    ours = model(image)
    check_close(ours, theirs, ref.rates, rtol=0.0)  # the same ops in the same order: bit-equal


@torch.inference_mode()
def test_msresnet18_gives_the_authors_logits(tmp_path, resnet18ms):
    sd = fabricate("resnet18ms_imagenet_t6", seed=3)
    save_and_convert(tmp_path, {"state_dict": sd, "epoch": 149}, resnet18ms)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ref = Reference(sd)
    check_close(resnet18ms(image), ref.msresnet(image, 6), ref.rates, rtol=0.0)


@torch.inference_mode()
def test_widenet7b_gives_the_authors_logits(tmp_path):
    model = build("widenet7b")
    sd = fabricate("widenet7b_cifar10dvs_t16", seed=5)
    assert sd["conv.0.1.alpha"].dtype == torch.float64  # as the authors' DVS gates
    optimizer = {"state": {}, "param_groups": []}
    obj = {"net": sd, "optimizer": optimizer, "lr_scheduler": {}, "epoch": 168}
    converted = save_and_convert(tmp_path, obj, model, "checkpoint_max.pth")
    assert converted["features.0.2.alpha_latent"].dtype == torch.float32
    torch.testing.assert_close(
        converted["features.0.2.alpha_latent"], sd["conv.0.1.alpha"].float(), rtol=0, atol=0
    )
    g = torch.Generator().manual_seed(6)
    frames = (torch.rand(1, 16, 2, 48, 48, generator=g) < 0.3).float()  # [B, T, 2, 48, 48]
    ref = Reference(sd)
    # Ours applies the classifier per step, then averages; theirs averages first: 1e-6.
    check_close(model(frames).mean(0), ref.widenet(frames), ref.rates, rtol=1e-6)


def test_describes_each_file():
    seen = {
        name: str(describe_authors(fabricate(name, 0)))
        for name in ("resnet19_cifar10_t6", "resnet18_cifar100_t6", "resnet18ms_imagenet_t6",
                     "widenet7b_cifar10dvs_t16")
    }  # fmt: skip
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
