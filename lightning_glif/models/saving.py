"""Smaller saved-for-backward activations: spikes kept as packed bits, tdBN outputs kept as a
recipe, both through ``torch.autograd.graph.saved_tensors_hooks`` scoped to one layer call.

Two replacements, each applied only to the one tensor it is known to be right for:

- **Spikes as bits.** A neuron marks its output as binary (:func:`mark_binary`: exactly 0/1, by
  construction). A layer whose input is such a tensor runs inside :func:`saved_as_bits`, which
  stores that input, wherever the layer saves it for its backward (the convolution's or linear
  layer's weight gradient), as 1 bit per element (:func:`pack_bits`, 1/32 of float32) and
  restores it exactly (:func:`unpack_bits`: dtype, shape and values), so the gradients are
  bit-identical. Views, pooled or summed spikes are other tensors and carry no mark; an in-place
  change after marking (the version counter moves) voids it.
- **Recipes.** A tensor that is cheap to recompute exactly from tensors that are saved anyway
  carries a :class:`Recipe` (:func:`attach_recipe`; tdBN's output ``f(x, statistics)``, with
  its input ``x`` saved by the norm itself). A consumer that would save it (the neuron's fused
  op saves its input) runs inside :func:`saved_as_recipe`, which stores the recipe instead;
  the backward recomputes the tensor with the same ops, bit-identical.

Nothing here runs under ``torch.compile`` (Inductor decides what the compiled graph saves), with
grad disabled, inside ``torch.utils.checkpoint`` (which saves nothing there anyway), or while
switched off: :func:`memory_saving` (``with memory_saving(False): ...``) for everything in a
block, or the ``memory_saving`` attribute of the layers (:func:`set_memory_saving` on a whole
net). Hooks already active outside (``torch.autograd.graph.save_on_cpu``, a byte counter) are
chained: they see, and pack, what these hooks store.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lightning_glif_memory_saving", default=True
)
_BINARY = "_lightning_glif_binary"  # tensor attribute: the version counter when marked
_RECIPE = "_lightning_glif_recipe"  # tensor attribute: a Recipe


@contextlib.contextmanager
def memory_saving(enabled: bool = True) -> Iterator[None]:
    """Switch the savings of this module on or off for the code in the block (default: on
    everywhere). ``with memory_saving(False): loss = net(x)...`` saves what it saved before."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def set_memory_saving(module: nn.Module, enabled: bool) -> nn.Module:
    """Set the ``memory_saving`` attribute of every layer of ``module`` that has one
    (:class:`~lightning_glif.models.layers.TimeDistributed`,
    :class:`~lightning_glif.models.tdbn.TdBatchNorm`); returns ``module``."""
    for m in module.modules():
        if isinstance(getattr(m, "memory_saving", None), bool):
            m.memory_saving = bool(enabled)
    return module


def _top_hooks():
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


#: Smallest tensor (elements) the savings touch. Below it what they save is a few hundred
#: kilobytes at most, and their extra small ops (the packing, the recomputed batch norm) cost
#: more time than the memory is worth: on row digits' 8-128-128-10 MLP (activations of 65536
#: elements) they made the bare training loop about 1.3x longer. ResNet-19's smallest layer has
#: 6 x 8 x 512 x 4 x 4 = 393216 elements at batch 8.
MIN_ELEMENTS = 1 << 18


def worth_it(t: torch.Tensor) -> bool:
    """Whether ``t`` is large enough for the savings (:data:`MIN_ELEMENTS`)."""
    return t.numel() >= MIN_ELEMENTS


def active() -> bool:
    """Whether the savings apply to what autograd records right now."""
    if torch.compiler.is_compiling() or not _ENABLED.get() or not torch.is_grad_enabled():
        return False
    if torch.is_inference_mode_enabled():
        return False
    if not torch._C._autograd._saved_tensors_hooks_is_enabled():  # e.g. under functorch
        return False
    outer = _top_hooks()
    # Inside torch.utils.checkpoint its own hooks must see every saved tensor as saved.
    return outer is None or not getattr(outer[0], "_checkpoint_internal", False)


# --- spikes as bits ----------------------------------------------------------------------------


def markable(t: torch.Tensor) -> bool:
    """Whether :func:`mark_binary` would mark ``t``: it is large enough and the savings are
    :func:`active` (a caller checks this before a dearer test of its own)."""
    return active() and worth_it(t)


def mark_binary(t: torch.Tensor) -> torch.Tensor:
    """Mark ``t`` (returned as is) as exactly 0/1: only for tensors that are so by construction
    (a neuron's spikes). No-op unless :func:`markable`."""
    if markable(t):
        setattr(t, _BINARY, t._version)
    return t


def is_binary(t: torch.Tensor) -> bool:
    """``t`` was marked by :func:`mark_binary` and has not been changed in place since."""
    version = getattr(t, _BINARY, None)
    return version is not None and version == t._version


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits(t: torch.Tensor) -> torch.Tensor:
    """The elements of ``t`` (read in contiguous order, each 0 or 1) as bits: uint8
    ``[ceil(numel / 8)]``, element ``8 * i + j`` in bit ``j`` of byte ``i``. Torch ops only, so
    the same packing runs on any device."""
    flat = t.reshape(-1) != 0
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) << _shifts(t.device)
    return bits.sum(1, dtype=torch.uint8)  # distinct bits: the sum is their OR


def unpack_bits(packed: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a contiguous tensor of ``shape`` and ``dtype`` (0/1)."""
    bits = (packed.unsqueeze(1) >> _shifts(packed.device)) & 1
    return bits.view(-1)[: math.prod(shape)].to(dtype).view(shape)


def _key(t: torch.Tensor) -> tuple:
    """Same memory, layout and dtype: the same values."""
    return (t.data_ptr(), t.device, t.dtype, tuple(t.shape), t.stride())


def saved_as_bits(target: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context for one layer call on ``target``, a binary-marked tensor (or a view of one with
    the same values, e.g. its time-folded ``flatten(0, 1)``; the caller checks the mark): where
    the layer saves ``target`` for its backward, 1 bit per element is stored. A null context
    when the savings are not :func:`active` or ``target`` is not contiguous."""
    if not (active() and target.is_contiguous() and target.numel() > 0):
        return contextlib.nullcontext()
    key, version = _key(target), target._version  # no reference to target: the graph keeps
    restore = partial(unpack_bits, shape=target.shape, dtype=target.dtype)  # the hooks

    def replace(t: torch.Tensor):
        if t._version == version and _key(t) == key:
            return restore, (pack_bits(t),)
        return None

    return _ChainedHooks(replace)


# --- recipes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to recompute a tensor exactly: ``fn(*tensors)`` (the same ops as its forward).
    ``tensors`` are detached and saved anyway elsewhere (or tiny); ``versions`` their version
    counters when attached."""

    fn: Callable[..., torch.Tensor]
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.fn(*tensors)


def attach_recipe(t: torch.Tensor, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor):
    """Attach to ``t`` (returned as is) the recipe ``fn(*tensors)`` that recomputes it
    bit-identically. No-op when the savings are not :func:`active` or ``t`` is smaller than
    :data:`MIN_ELEMENTS`."""
    if worth_it(t) and active():
        tensors = tuple(u.detach() for u in tensors)
        setattr(t, _RECIPE, (t._version, Recipe(fn, tensors, tuple(u._version for u in tensors))))
    return t


def recipe_of(t: torch.Tensor) -> Recipe | None:
    """The recipe attached to ``t``, unless ``t`` changed in place since."""
    entry = getattr(t, _RECIPE, None)
    return entry[1] if entry is not None and entry[0] == t._version else None


def saved_as_recipe(target: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context for one call that saves ``target``: if ``target`` carries a recipe, store that
    instead (its tensors are saved anyway), recomputed in the backward. A null context when it
    carries none or the savings are not :func:`active`."""
    recipe = recipe_of(target) if active() else None  # active() first: nothing under compile
    if recipe is None:
        return contextlib.nullcontext()
    key, version = _key(target), target._version

    def replace(t: torch.Tensor):
        if t._version == version and _key(t) == key:
            return partial(_recompute, recipe), recipe.tensors
        return None

    return _ChainedHooks(replace)


def _recompute(recipe: Recipe, *tensors: torch.Tensor) -> torch.Tensor:
    if tuple(u._version for u in recipe.tensors) != recipe.versions:
        raise RuntimeError(
            "a tensor that a saved tdBN output is recomputed from was modified in place after "
            "the forward; run without in-place changes, or with memory_saving(False)."
        )
    return recipe(*tensors)


# --- the hooks ---------------------------------------------------------------------------------


class _ChainedHooks(torch.autograd.graph.saved_tensors_hooks):
    """``replace(t)`` -> ``None`` (save ``t`` as it is) or ``(restore, tensors)`` (store
    ``tensors``, give back ``restore(*tensors)``). The hooks active outside (if any) are
    chained: they pack what is stored, and unpack it first."""

    def __init__(self, replace: Callable[[torch.Tensor], tuple | None]) -> None:
        outer = _top_hooks()
        outer_pack, outer_unpack = outer if outer is not None else (_detach, _identity)

        def pack(t: torch.Tensor):
            replaced = replace(t)
            if replaced is None:
                return None, outer_pack(t)
            restore, tensors = replaced
            return restore, tuple(outer_pack(u) for u in tensors)

        def unpack(packed) -> torch.Tensor:
            restore, stored = packed
            if restore is None:
                return outer_unpack(stored)
            return restore(*(outer_unpack(u) for u in stored))

        super().__init__(pack, unpack)


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()  # what a pack hook keeps must not hold the graph (a reference cycle)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


__all__ = [
    "Recipe",
    "active",
    "attach_recipe",
    "is_binary",
    "mark_binary",
    "markable",
    "memory_saving",
    "pack_bits",
    "recipe_of",
    "saved_as_bits",
    "saved_as_recipe",
    "set_memory_saving",
    "unpack_bits",
    "worth_it",
]
