"""Evaluate the GLIF authors' released checkpoints (GitHub ``Ikarosy/Gated-LIF``) with this
project's backbones.

    python train.py test --config conf/experiment/cifar100_resnet19_t6.yaml \
        --ckpt_path resCifar19-CIFAR100-step6-CW.pth.tar

The authors' files are ``torch.save({'state_dict': sd, ...})`` (CIFAR, ImageNet; keys prefixed
``module.`` when trained with DDP) or ``{'net': sd, 'optimizer': ..., ...}`` (CIFAR10-DVS). Their
five released architectures map onto :class:`~lightning_glif.models.ResNet19`,
:class:`~lightning_glif.models.ResNet18` (``stage_strides=(1, 1, 2, 2)``),
:class:`~lightning_glif.models.ResNet18MS` (``stem_padding=1, tdbn_scale=False``) and
:class:`~lightning_glif.models.WideNet7B` (T=16, 48x48), all with
:class:`~lightning_glif.neurons.GLIF` neurons (channel-wise, soft gates).

The conversion is layer by layer, in registration order (both sides register conv, norm,
neuron, linear in the order they run): each of the authors' layers (keys grouped by module) is
paired with ours of the same kind and its tensors copied by name. Neuron parameters are latents
used as ``sigmoid(latent)`` on both sides: ``alpha, beta, gamma, tau, Vth, leak, reVth,
conduct`` become ``alpha_latent, beta_latent, gamma_latent, tau_latent, v_threshold_latent,
v_leak_latent, v_reset_latent, conductance_latent``. Latents the file stores in float64 (the
CIFAR10-DVS gates) make ours float64 too (:func:`keep_float64`): the authors' membrane runs in
float64 there, and so does ours. Everything else is copied in our dtype (float32 both sides).

The tdBN ``Vth`` scalar is not copied: our :class:`TdBatchNorm` keeps ``scale = alpha * V_th``
from its construction, and the converter checks that this scale is the authors' effective one:
``alpha * Vth`` where the file holds the tdBN ``Vth``, 1 where it holds none (plain BNs: the DVS
net's, and any model saved after SyncBatchNorm conversion, which drops the scale, as their
ImageNet file). A ResNet-19/18 file without ``Vth`` is refused: those backbones always scale.

What the shapes cannot tell is checked too: conv strides and paddings (ResNet-18's
``(1, 1, 2, 2)`` stages, MS-ResNet-18's stem padding 1), the tdBN scales, the neuron class and
soft gates. Any difference is a :class:`AuthorsCheckpointMismatch` naming the file's model, the
configured one and the first difference. What the converted models reproduce, bit for bit and
within which tolerance: ``docs/reproducing.md``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.neurons.base import SpikingNeuron
from lightning_glif.neurons.glif import GLIF

#: The authors' neuron entries -> this project's GLIF latents (same order, same sigmoid).
NEURON_KEYS = {
    "alpha": "alpha_latent",
    "beta": "beta_latent",
    "gamma": "gamma_latent",
    "tau": "tau_latent",
    "Vth": "v_threshold_latent",
    "leak": "v_leak_latent",
    "reVth": "v_reset_latent",
    "conduct": "conductance_latent",
}
#: The entries of a batch norm (the authors' tdBN adds a scalar ``Vth``).
NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
#: Gate modes whose forward pass is the authors' ``sigmoid(latent)``.
SOFT_GATES = ("soft", "static")


class NotAuthorsCheckpoint(ValueError):
    """The object or file is not one of the GLIF authors' checkpoints."""


class AuthorsCheckpointMismatch(ValueError):
    """An authors' checkpoint of another model than the configured one; the message names both
    and the first difference."""


# -- reading ---------------------------------------------------------------------------------------
def _unwrap(obj: Any) -> Any:
    """The state_dict inside ``{'state_dict': sd, ...}`` or ``{'net': sd, ...}``, or ``obj``."""
    if isinstance(obj, Mapping) and "pytorch-lightning_version" not in obj:
        for key in ("state_dict", "net"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def is_authors_checkpoint(obj: Any) -> bool:
    """True if ``obj`` (what ``torch.load`` returned) is one of the authors' checkpoints: a
    ``{'state_dict': sd}`` or ``{'net': sd}`` dict, or a bare ``sd``, whose tensors include
    GLIF neurons under the authors' names (``<layer>.alpha`` ... ``<layer>.conduct``). A
    Lightning checkpoint (``pytorch-lightning_version``) never is."""
    if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
        return False
    sd = _unwrap(obj)
    if not isinstance(sd, Mapping) or not sd:
        return False
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        return False
    keys = {k.removeprefix("module.") for k in sd}
    owners = [k[: -len(".conduct")] for k in keys if k.endswith(".conduct")]
    return any(all(f"{o}.{leaf}" in keys for leaf in NEURON_KEYS) for o in owners)


def authors_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The authors' state_dict of a loaded checkpoint (either form), ``module.`` stripped, in
    its stored order; :class:`NotAuthorsCheckpoint` if it is none."""
    if not is_authors_checkpoint(obj):
        what = f"keys {list(obj)[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise NotAuthorsCheckpoint(
            f"not a GLIF authors' checkpoint ({what}): expected {{'state_dict': ...}} or "
            "{'net': ...} holding GLIF neurons (<layer>.alpha ... <layer>.conduct)."
        )
    return {k.removeprefix("module."): v for k, v in _unwrap(obj).items()}


def read_authors_checkpoint(
    path: str | os.PathLike, weights_only: bool = True
) -> dict[str, torch.Tensor]:
    """Load the authors' file at ``path`` (on the CPU) and return its state_dict
    (:func:`authors_state_dict`). ``weights_only=False`` unpickles arbitrary objects (only for a
    file you trust), for a file holding more than tensors and plain values."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch.load's UnpicklingError, RuntimeError, EOFError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        hint = " If you trust the file, read it with weights_only=False." if weights_only else ""
        raise NotAuthorsCheckpoint(f"cannot read {path} with torch.load: {first}.{hint}") from error
    try:
        return authors_state_dict(obj)
    except NotAuthorsCheckpoint as error:
        raise NotAuthorsCheckpoint(f"{path}: {error}") from None


def is_authors_file(path: str | os.PathLike, weights_only: bool = True) -> bool:
    """True if the file at ``path`` loads (on the CPU, memory-mapped when it is a zip) and
    :func:`is_authors_checkpoint`; False for anything else, never an error (for a CLI deciding
    how to read ``--ckpt_path``)."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        obj = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipped)
    except Exception:  # noqa: BLE001 - unreadable: not an authors' file, the caller's loader says why
        return False
    return is_authors_checkpoint(obj)


# -- the layers of either side ---------------------------------------------------------------------
@dataclass
class _Layer:
    """One layer: its kind, its module name and its tensors by leaf name (the authors': the
    tensors; ours: our state_dict keys)."""

    kind: str  # "conv", "linear", "norm", "neuron"
    name: str
    entries: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # ours only


def _authors_layers(sd: dict[str, torch.Tensor]) -> list[_Layer]:
    layers: list[_Layer] = []
    for key, value in sd.items():
        owner, _, leaf = key.rpartition(".")
        if not layers or layers[-1].name != owner:
            layers.append(_Layer("", owner))
        layers[-1].entries[leaf] = value
    for layer in layers:
        leaves = set(layer.entries)
        weight = layer.entries.get("weight")
        if "conduct" in leaves:
            layer.kind = "neuron"
        elif "running_mean" in leaves:
            layer.kind = "norm"
        elif weight is not None and weight.dim() == 4:
            layer.kind = "conv"
        elif weight is not None and weight.dim() == 2:
            layer.kind = "linear"
        else:
            raise AuthorsCheckpointMismatch(
                f"the authors' checkpoint has an entry this converter does not know: "
                f"{layer.name} ({', '.join(sorted(leaves))})."
            )
    return layers


def _our_layers(backbone: nn.Module) -> list[_Layer]:
    layers: list[_Layer] = []
    inner: set[int] = set()
    for name, m in backbone.named_modules():
        if id(m) in inner:
            continue
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if isinstance(m, TdBatchNorm):
            inner.update(id(s) for s in m.modules() if s is not m)
            keys = {"weight": f"{name}.weight", "bias": f"{name}.bias"}
            keys.update({k: f"{name}.bn.{k}" for k in NORM_KEYS[2:]})
            layers.append(_Layer("norm", name, keys, m))
        elif isinstance(m, SpikingNeuron):
            inner.update(id(s) for s in m.modules() if s is not m)
            latents = {a: f"{name}.{o}" for a, o in NEURON_KEYS.items() if hasattr(m, o)}
            layers.append(_Layer("neuron", name, latents, m))
        elif isinstance(m, nn.Conv2d | nn.Linear):
            kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
            keys = {k: f"{name}.{k}" for k, v in own if v is not None}
            layers.append(_Layer(kind, name, keys, m))
        elif own:
            raise AuthorsCheckpointMismatch(
                f"this model's layer {name!r} ({type(m).__name__}) has no counterpart in the "
                "authors' models: only convs, linears, TdBatchNorm and neurons convert."
            )
    return layers


# -- what each side is -----------------------------------------------------------------------------
_DATASETS = {10: "CIFAR-10", 100: "CIFAR-100", 1000: "ImageNet"}


@dataclass
class AuthorsModel:
    """What an authors' state_dict holds, inferred from its keys and shapes."""

    family: str  # "ResNet-19", "ResNet-18", "MS-ResNet-18", "7B-wideNet", or a description
    num_classes: int
    time_steps: int
    in_channels: int
    stem_channels: int
    blocks: int
    head: list[int]

    def __str__(self) -> str:
        data = "CIFAR10-DVS" if self.family == "7B-wideNet" else _DATASETS.get(self.num_classes)
        where = f" for {data}" if data else ""
        return (
            f"the authors' {self.family}{where} ({self.num_classes} classes, T={self.time_steps}, "
            f"in_channels={self.in_channels}, stem {self.stem_channels} channels, {self.blocks} "
            f"blocks, head {'->'.join(map(str, self.head))})"
        )


def describe_authors(sd: dict[str, torch.Tensor]) -> AuthorsModel:
    """:class:`AuthorsModel` of an authors' state_dict (``module.`` stripped)."""
    layers = _authors_layers(sd)
    convs = [x for x in layers if x.kind == "conv"]
    linears = [x for x in layers if x.kind == "linear"]
    neurons = [x for x in layers if x.kind == "neuron"]
    stem = convs[0].entries["weight"] if convs else torch.empty(0, 0, 0, 0)
    head = [linears[0].entries["weight"].shape[1]] if linears else []
    head += [x.entries["weight"].shape[0] for x in linears]
    if stem.dim() == 4 and convs[0].name.startswith("conv."):  # SEW: conv.<i>.conv.<j>...
        found = (re.match(r"conv\.(\d+)\.conv\.", x.name) for x in layers)
        blocks = len({m.group(1) for m in found if m})
        family = "7B-wideNet" if blocks == 7 else f"SEW wideNet with {blocks} blocks"
    else:
        found = (re.match(r"features\.(\d+)\.", x.name) for x in layers)
        blocks = len({m.group(1) for m in found if m})
        kernel, width = stem.shape[-1], stem.shape[0]
        if kernel == 7:
            family = f"MS-ResNet-{2 + 2 * blocks}"
        elif kernel == 3 and blocks == 8 and width in (128, 64):
            family = "ResNet-19" if width == 128 else "ResNet-18"
        else:
            family = f"ResNet-style net ({kernel}x{kernel} stem)"
    return AuthorsModel(
        family=family,
        num_classes=head[-1] if head else 0,
        time_steps=neurons[0].entries["conduct"].shape[0] if neurons else 0,
        in_channels=stem.shape[1],
        stem_channels=stem.shape[0],
        blocks=blocks,
        head=head,
    )


def describe_backbone(backbone: nn.Module) -> str:
    """Our backbone's class and sizes, worded as :class:`AuthorsModel`."""
    layers = _our_layers(backbone)
    convs = [x.module for x in layers if x.kind == "conv"]
    linears = [x.module for x in layers if x.kind == "linear"]
    neurons = [x.module for x in layers if x.kind == "neuron"]
    blocks = len(getattr(backbone, "blocks", [])) or sum(
        type(m).__name__ == "SEWBlock" for m in backbone.modules()
    )
    head = [linears[0].in_features, *(m.out_features for m in linears)] if linears else []
    classes = getattr(backbone, "num_classes", head[-1] if head else "?")
    steps = getattr(backbone, "time_steps", neurons[0].time_steps if neurons else "?")
    kinds = "/".join(sorted({type(m).__name__ for m in neurons})) or "no"
    stem = ""
    if convs:
        stem = f", in_channels={convs[0].in_channels}, stem {convs[0].out_channels} channels"
    return (
        f"this project's {type(backbone).__name__} (num_classes={classes}, time_steps={steps}"
        f"{stem}, {blocks} blocks, {kinds} neurons, head {'->'.join(map(str, head))})"
    )


# -- what the shapes do not tell -------------------------------------------------------------------
def _conv_geometry(family: str, name: str, kernel: int) -> tuple[int, int] | None:
    """(stride, padding) of the authors' conv ``name``, or None where not known."""
    block_strides = {
        "ResNet-19": (1, 1, 1, 2, 1, 1, 2, 1),
        "ResNet-18": (1, 1, 1, 1, 2, 1, 2, 1),  # their stages (1, 1, 2, 2)
        "MS-ResNet-18": (2, 1, 2, 1, 2, 1, 2, 1),
    }
    if family == "7B-wideNet":
        return 1, kernel // 2
    if family not in block_strides:
        return None
    if name == "conv1.0.0":
        return (2, 1) if family == "MS-ResNet-18" else (1, 1)  # their MS stem: padding 1
    m = re.fullmatch(r"features\.(\d+)\.(body\.(\d+)\.0|downsample\.0\.0)", name)
    if m is None:
        return None
    stride = block_strides[family][int(m.group(1))]
    if m.group(3) is not None:  # body conv: the block's first has the stride
        first = "0" if family != "MS-ResNet-18" else "1"
        return (stride if m.group(3) == first else 1), 1
    return stride, 0


def _norm_scale(family: str, name: str, entries: dict[str, torch.Tensor]) -> float | None:
    """The authors' effective scale of norm ``name``: tdBN's ``alpha * Vth`` where the file holds
    the tdBN ``Vth``; 1 where it holds none (a plain BN: the DVS net's, or any model saved after
    SyncBatchNorm conversion, which drops tdBN's scale); None where ``alpha`` is not known."""
    if "Vth" not in entries:
        return 1.0
    if family not in ("ResNet-19", "ResNet-18", "MS-ResNet-18"):
        return None
    # The norms before a residual addition: body.2.1 (ResNet), body.3.1 (MS), every shortcut.
    residual = ".downsample." in name or re.search(r"\.body\.[23]\.1$", name) is not None
    return (2**-0.5 if residual else 1.0) * float(entries["Vth"])


def _structure_problem(family: str, theirs: _Layer, ours: _Layer) -> str | None:
    m = ours.module
    if theirs.kind == "conv":
        geometry = _conv_geometry(family, theirs.name, theirs.entries["weight"].shape[-1])
        if geometry is not None and (m.stride[0], m.padding[0]) != geometry:
            return (
                f"the authors' conv {theirs.name!r} has stride {geometry[0]}, padding "
                f"{geometry[1]}; this model's {ours.name!r} has stride {m.stride[0]}, padding "
                f"{m.padding[0]}"
            )
    elif theirs.kind == "norm":
        scale = _norm_scale(family, theirs.name, theirs.entries)
        if scale is not None and not math.isclose(float(m.scale), scale, rel_tol=1e-6):
            problem = (
                f"the authors' norm {theirs.name!r} scales by {scale:.6g} (tdBN alpha * V_th; 1 "
                f"for a plain BN); this model's {ours.name!r} by {float(m.scale):.6g}"
            )
            if "Vth" not in theirs.entries and family in ("ResNet-19", "ResNet-18"):
                problem += (
                    ". The file's norms hold no tdBN Vth: it was saved after SyncBatchNorm "
                    "conversion, which trains them as plain batch norms; this project's "
                    f"{family} has tdBN scales only, so it is refused"
                )
            return problem
    elif theirs.kind == "neuron":
        if not isinstance(m, GLIF):
            return f"this model's neuron {ours.name!r} is {type(m).__name__}, the authors' is GLIF"
        hard = {g: mode for g, mode in m.gate_modes.items() if mode not in SOFT_GATES}
        if hard:
            return (
                f"this model's GLIF {ours.name!r} has gate modes {hard}; the authors' gates are "
                "soft (sigmoid of the latent): use 'soft'"
            )
    return None


def _layer_problem(theirs: _Layer, ours: _Layer, own: dict[str, torch.Tensor]) -> str | None:
    if theirs.kind != ours.kind:
        return (
            f"the authors' {theirs.kind} {theirs.name!r} meets this model's {ours.kind} "
            f"{ours.name!r}"
        )
    wanted = set(theirs.entries) - ({"Vth"} if theirs.kind == "norm" else set())
    if wanted != set(ours.entries):
        return (
            f"the authors' {theirs.kind} {theirs.name!r} holds {sorted(wanted)}, this model's "
            f"{ours.name!r} ({type(ours.module).__name__}) {sorted(ours.entries)}"
        )
    for leaf, key in ours.entries.items():
        if theirs.entries[leaf].shape != own[key].shape:
            return (
                f"the authors' {theirs.name}.{leaf} {list(theirs.entries[leaf].shape)} vs this "
                f"model's {key} {list(own[key].shape)}"
            )
    return None


# -- converting ------------------------------------------------------------------------------------
def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone of a ``SpikingClassifier``, or ``model`` itself."""
    return getattr(model, "backbone", model)


def convert_state_dict(checkpoint: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' ``checkpoint`` (a loaded file in either form, or its state_dict) as the
    state_dict of ``model``'s backbone (``model``: a SpikingClassifier or a backbone), for
    ``backbone.load_state_dict``. Our tdBN ``scale`` buffers are kept (checked, not copied).
    Where the file stores a neuron latent in float64 (the CIFAR10-DVS gates), ``model``'s latent
    is made float64 first (:func:`keep_float64`), so that ``load_state_dict`` keeps the values.

    Raises :class:`NotAuthorsCheckpoint` for anything else, :class:`AuthorsCheckpointMismatch`
    when the file holds another model than ``model``.
    """
    sd = authors_state_dict(checkpoint)
    backbone = backbone_of(model)
    held = describe_authors(sd)
    theirs, ours = _authors_layers(sd), _our_layers(backbone)
    own = backbone.state_dict()

    def refuse(problem: str) -> AuthorsCheckpointMismatch:
        return AuthorsCheckpointMismatch(
            f"the checkpoint holds {held}, the configured model is {describe_backbone(backbone)}: "
            f"{problem}. Configure the model the file was trained as, where this project has it "
            "(docs/reproducing.md, 'The authors' checkpoints')."
        )

    for i, (t, o) in enumerate(zip(theirs, ours, strict=False)):
        problem = _layer_problem(t, o, own) or _structure_problem(held.family, t, o)
        if problem:
            raise refuse(f"layer {i}: {problem}")
    if len(theirs) != len(ours):
        extra = theirs[len(ours)] if len(theirs) > len(ours) else ours[len(theirs)]
        side = "the authors'" if len(theirs) > len(ours) else "this model's"
        raise refuse(
            f"the file has {len(theirs)} layers, this model {len(ours)}; first unmatched: "
            f"{side} {extra.kind} {extra.name!r}"
        )
    for t, o in zip(theirs, ours, strict=True):
        if t.kind == "neuron":
            keep_float64(o.module, t.entries)
    own = backbone.state_dict()
    out = dict(own)  # the scale buffers (and anything else not converted) stay ours
    for t, o in zip(theirs, ours, strict=True):
        for leaf, key in o.entries.items():
            out[key] = t.entries[leaf].detach().to(own[key].dtype).clone()
    return out


def keep_float64(neuron: nn.Module, entries: dict[str, torch.Tensor]) -> None:
    """Make ``neuron``'s latents float64 where the authors' ``entries`` are (their CIFAR10-DVS
    gates, drawn with numpy): their membrane then runs in float64, and so does ours
    (:func:`~lightning_glif.neurons.fused.membrane` computes in the promoted dtype). Replaced in
    place, before ``load_state_dict``, which would otherwise cast the values to float32."""
    for leaf, name in NEURON_KEYS.items():
        current = getattr(neuron, name, None)
        if leaf not in entries or entries[leaf].dtype != torch.float64 or current is None:
            continue
        if isinstance(current, nn.Parameter):
            latent = nn.Parameter(current.detach().double(), requires_grad=current.requires_grad)
            setattr(neuron, name, latent)
        else:
            neuron.register_buffer(name, current.double())
