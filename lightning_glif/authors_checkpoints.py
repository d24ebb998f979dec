"""The GLIF authors' released checkpoints (GitHub ``Ikarosy/Gated-LIF``) converted into this
project's backbones, as ``train.py test --config conf/experiment/<model>.yaml --ckpt_path <their
file>`` does (which file goes with which config, and what the converted models reproduce bit for
bit: ``docs/reproducing.md``).

Layers are paired in registration order (on both sides the order they run) and each layer's
tensors copied by name, a neuron's latents by :data:`NEURON_KEYS`. tdBN's ``Vth`` is not copied
but checked against our :class:`TdBatchNorm`'s ``scale``. What the shapes cannot tell is checked
too (conv strides and paddings, tdBN scales, the neuron class and its soft gates): any difference
is an :class:`AuthorsCheckpointMismatch` naming both models and the first difference.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class NotAuthorsCheckpoint(ValueError):
    """The object or file is not one of the GLIF authors' checkpoints."""


class AuthorsCheckpointMismatch(ValueError):
    """An authors' checkpoint of another model than the configured one (the message names both)."""


# -- reading ---------------------------------------------------------------------------------------
def _unwrap(obj: Any) -> Any:
    """The state_dict inside ``{'state_dict': sd, ...}`` or ``{'net': sd, ...}``, or ``obj``."""
    if isinstance(obj, Mapping) and "pytorch-lightning_version" not in obj:
        for key in ("state_dict", "net"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def is_authors_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (what ``torch.load`` returned) is ``{'state_dict': sd}``, ``{'net': sd}``
    or ``sd`` with GLIF neurons under the authors' names (``<layer>.alpha`` ...
    ``<layer>.conduct``); a Lightning checkpoint never is."""
    sd = _unwrap(obj)
    tensors = isinstance(sd, Mapping) and all(isinstance(v, torch.Tensor) for v in sd.values())
    if not tensors or not all(isinstance(k, str) for k in sd):
        return False  # e.g. a Lightning checkpoint, which _unwrap leaves whole
    keys = {k.removeprefix("module.") for k in sd}
    owners = [k[: -len(".conduct")] for k in keys if k.endswith(".conduct")]
    return any(all(f"{o}.{leaf}" in keys for leaf in NEURON_KEYS) for o in owners)


def authors_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The state_dict of a loaded authors' checkpoint, ``module.`` stripped, in stored order;
    :class:`NotAuthorsCheckpoint` if it is none."""
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
    """:func:`authors_state_dict` of the file at ``path``, loaded on the CPU (memory-mapped when
    a zip). ``weights_only=False`` unpickles arbitrary objects: only for a file you trust."""
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        obj = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zipped)
    except Exception as error:  # OSError, torch.load's UnpicklingError, RuntimeError, EOFError...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        hint = " If you trust the file, read it with weights_only=False." if weights_only else ""
        raise NotAuthorsCheckpoint(f"cannot read {path} with torch.load: {first}.{hint}") from error
    try:
        return authors_state_dict(obj)
    except NotAuthorsCheckpoint as error:
        raise NotAuthorsCheckpoint(f"{path}: {error}") from None


def is_authors_file(path: str | os.PathLike, weights_only: bool = True) -> bool:
    """Whether :func:`read_authors_checkpoint` reads ``path``; False, never an error, if not."""
    try:
        read_authors_checkpoint(path, weights_only)
    except NotAuthorsCheckpoint:
        return False
    return True


# -- the layers of either side ---------------------------------------------------------------------
@dataclass
class _Layer:
    """One layer: its tensors by leaf name (the authors': tensors; ours: state_dict keys)."""

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
        weight = layer.entries.get("weight")
        if "conduct" in layer.entries:
            layer.kind = "neuron"
        elif "running_mean" in layer.entries:  # a batch norm; the authors' tdBN adds ``Vth``
            layer.kind = "norm"
        elif weight is not None and weight.dim() in (2, 4):
            layer.kind = "conv" if weight.dim() == 4 else "linear"
        else:
            raise AuthorsCheckpointMismatch(
                f"the authors' checkpoint has an entry this converter does not know: "
                f"{layer.name} ({', '.join(sorted(layer.entries))})."
            )
    return layers


def _our_layers(module: nn.Module, prefix: str = "") -> list[_Layer]:
    layers: list[_Layer] = []
    for child, m in module.named_children():
        name = prefix + child
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if isinstance(m, TdBatchNorm):
            keys = {"weight": f"{name}.weight", "bias": f"{name}.bias"}
            stats = ("running_mean", "running_var", "num_batches_tracked")
            layers.append(_Layer("norm", name, keys | {k: f"{name}.bn.{k}" for k in stats}, m))
        elif isinstance(m, SpikingNeuron):
            latents = {a: f"{name}.{o}" for a, o in NEURON_KEYS.items() if hasattr(m, o)}
            layers.append(_Layer("neuron", name, latents, m))
        elif isinstance(m, nn.Conv2d | nn.Linear):
            kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
            layers.append(
                _Layer(kind, name, {k: f"{name}.{k}" for k, v in own if v is not None}, m)
            )
        elif own:
            raise AuthorsCheckpointMismatch(
                f"this model's layer {name!r} ({type(m).__name__}) has no counterpart in the "
                "authors' models: only convs, linears, TdBatchNorm and neurons convert."
            )
        else:
            layers += _our_layers(m, f"{name}.")
    return layers


# -- what each side is -----------------------------------------------------------------------------
class AuthorsModel(NamedTuple):
    """What an authors' state_dict holds: its family ("ResNet-19", "ResNet-18", "MS-ResNet-18",
    "7B-wideNet", or a description) and its sizes in words."""

    family: str
    description: str


def describe_authors(sd: dict[str, torch.Tensor]) -> AuthorsModel:
    """:class:`AuthorsModel` of an authors' state_dict (``module.`` stripped)."""
    layers = _authors_layers(sd)
    convs = [x for x in layers if x.kind == "conv"]
    linears = [x for x in layers if x.kind == "linear"]
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
    classes = head[-1] if head else 0
    data = {10: "CIFAR-10", 100: "CIFAR-100", 1000: "ImageNet"}.get(classes)
    data = "CIFAR10-DVS" if family == "7B-wideNet" else data
    steps = next((x.entries["conduct"].shape[0] for x in layers if x.kind == "neuron"), 0)
    return AuthorsModel(
        family,
        f"the authors' {family}{f' for {data}' if data else ''} ({classes} classes, T={steps}, "
        f"in_channels={stem.shape[1]}, stem {stem.shape[0]} channels, {blocks} blocks, head "
        f"{'->'.join(map(str, head))})",
    )


def describe_backbone(backbone: nn.Module) -> str:
    """Our backbone's class and sizes, worded as :func:`describe_authors`."""
    layers = _our_layers(backbone)
    convs = [x.module for x in layers if x.kind == "conv"]
    linears = [x.module for x in layers if x.kind == "linear"]
    head = [linears[0].in_features, *(m.out_features for m in linears)] if linears else []
    classes = getattr(backbone, "num_classes", head[-1] if head else "?")
    steps = getattr(backbone, "time_steps", "?")
    stem = ""
    if convs:
        stem = f", in_channels={convs[0].in_channels}, stem {convs[0].out_channels} channels"
    return (
        f"this project's {type(backbone).__name__} (num_classes={classes}, time_steps={steps}"
        f"{stem}, head {'->'.join(map(str, head))})"
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
    """The authors' effective scale of norm ``name``: tdBN's ``alpha * Vth``, 1 where the file
    holds no ``Vth`` (plain BNs, or saved after SyncBatchNorm conversion), None if not known."""
    if "Vth" not in entries:
        return 1.0
    if family not in ("ResNet-19", "ResNet-18", "MS-ResNet-18"):
        return None
    # The norms before a residual addition: body.2.1 (ResNet), body.3.1 (MS), every shortcut.
    residual = ".downsample." in name or re.search(r"\.body\.[23]\.1$", name) is not None
    return (2**-0.5 if residual else 1.0) * float(entries["Vth"])


def _problem(family: str, theirs: _Layer, ours: _Layer, own: dict[str, torch.Tensor]) -> str | None:
    """The first difference between the authors' layer and ours, or None."""
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
        # "soft" and "static" gates run the authors' sigmoid(latent) forward.
        hard = {g: mode for g, mode in m.gate_modes.items() if mode not in ("soft", "static")}
        if hard:
            return (
                f"this model's GLIF {ours.name!r} has gate modes {hard}; the authors' gates are "
                "soft (sigmoid of the latent): use 'soft'"
            )
    return None


# -- converting ------------------------------------------------------------------------------------
def convert_state_dict(checkpoint: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' ``checkpoint`` (a loaded file, or its state_dict) as the state_dict of
    ``model``'s backbone (``model``: a ``SpikingClassifier`` or a backbone), after
    :func:`keep_float64`. Raises :class:`NotAuthorsCheckpoint` for anything else,
    :class:`AuthorsCheckpointMismatch` when the file holds another model than ``model``."""
    sd = authors_state_dict(checkpoint)
    backbone = getattr(model, "backbone", model)
    held = describe_authors(sd)
    theirs, ours = _authors_layers(sd), _our_layers(backbone)
    own = backbone.state_dict()

    def refuse(problem: str) -> AuthorsCheckpointMismatch:
        return AuthorsCheckpointMismatch(
            f"the checkpoint holds {held.description}, the configured model is "
            f"{describe_backbone(backbone)}: {problem}. Configure the model the file was trained "
            "as, where this project has it (docs/reproducing.md, 'The authors' checkpoints')."
        )

    for i, (t, o) in enumerate(zip(theirs, ours, strict=False)):
        problem = _problem(held.family, t, o, own)
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
    out = backbone.state_dict()  # the scale buffers (and anything not converted) stay ours
    for t, o in zip(theirs, ours, strict=True):
        for leaf, key in o.entries.items():
            out[key] = t.entries[leaf].detach().to(out[key].dtype).clone()
    return out


def keep_float64(neuron: nn.Module, entries: dict[str, torch.Tensor]) -> None:
    """Make ``neuron``'s latents float64 where the authors' ``entries`` are (their CIFAR10-DVS
    gates), so that our membrane runs in float64 as theirs (it computes in the promoted dtype).
    Done before ``load_state_dict``, which would cast the values to the latents' dtype."""
    for leaf, name in NEURON_KEYS.items():
        current = getattr(neuron, name, None)
        if leaf not in entries or entries[leaf].dtype != torch.float64 or current is None:
            continue
        value = current.detach().double()
        if isinstance(current, nn.Parameter):
            value = nn.Parameter(value, requires_grad=current.requires_grad)
        setattr(neuron, name, value)  # a registered buffer stays one
