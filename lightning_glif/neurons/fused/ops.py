"""The fused membrane op as ``torch.library`` custom ops ``lightning_glif::membrane_fwd`` and
``::membrane_bwd`` (the autograd of the first): each has the engine's kernel and a fake
implementation (shapes, dtypes, strides) that ``torch.compile`` traces with, so Dynamo records one
opaque node per neuron.

The ops take an ``engine`` name rather than dispatching per device, so that the tests can run the
Triton kernels, or a broken engine, on CPU tensors. The forward op takes the surrogate ``(kind, p,
q)`` and ``detach_reset`` for the backward's sake (``setup_context`` sees only the op's inputs).
No double backward.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

ENGINES: tuple[str, ...] = ("cpu", "triton")
DEVICES = ("cpu", "cuda")
_registered: dict[str, object] = {}  # engines added by register_engine, by NAME


def register_engine(engine: ModuleType | object) -> None:
    """Let the ops call ``engine`` (what :mod:`.cpu` has) by its ``NAME``; the two built-in names
    stay built in."""
    if engine.NAME in ENGINES and engine is not engine_module(engine.NAME):
        raise ValueError(f"engine name {engine.NAME!r} is taken by a built-in engine.")
    _registered[engine.NAME] = engine


def engine_module(name: str) -> ModuleType | object:
    """The engine of that name (imports Triton only when asked for it)."""
    if name == "cpu":
        from . import cpu

        return cpu
    if name == "triton":
        from . import triton_kernels

        return triton_kernels
    if name in _registered:
        return _registered[name]
    names = ", ".join([*ENGINES, *_registered])
    raise ValueError(f"engine must be one of {names}, got {name!r}.")


@torch.library.custom_op("lightning_glif::membrane_fwd", mutates_args=(), device_types=DEVICES)
def membrane_fwd(
    x: Tensor,
    coef: Tensor,
    gain: Tensor,
    engine: str,
    kind: int,
    p: float,
    q: float,
    detach_reset: bool,
) -> Tensor:
    """Spikes like ``x`` ``[T, B, C, ...]`` (compute dtype, or bf16/fp16 for ``"triton"``), from
    ``coef`` ``[5, C]`` (decay, hard, leak, soft, v_threshold) and ``gain`` ``[T, C]``."""
    # .contiguous(): a no-op in eager mode; under Inductor the layout is its choice.
    return engine_module(engine).forward(x.contiguous(), coef.contiguous(), gain.contiguous())


@membrane_fwd.register_fake
def _membrane_fwd_fake(x, coef, gain, engine, kind, p, q, detach_reset):
    # Both engines return a fresh contiguous tensor like x (torch.empty_like of a contiguous x).
    return x.new_empty(x.shape)


@torch.library.custom_op("lightning_glif::membrane_bwd", mutates_args=(), device_types=DEVICES)
def membrane_bwd(
    x: Tensor,
    grad: Tensor,
    coef: Tensor,
    gain: Tensor,
    engine: str,
    kind: int,
    p: float,
    q: float,
    detach_reset: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(x, coef, gain)`` of the loss given ``grad`` = dL/dspikes (any layout: a
    ``spikes.sum()`` hands a stride-0 one); arguments as :func:`membrane_fwd`."""
    tensors = [t.contiguous() for t in (x, grad, coef, gain)]
    grad_x, grad_coef, grad_gain = engine_module(engine).backward(
        *tensors, (kind, p, q), detach_reset
    )
    # The engines return the coefficient gradients as slices of one [5 + T, C] sum (Triton's
    # transposed); a custom op's outputs must not alias and must have the fake's strides: copied.
    return (
        grad_x,
        grad_coef.clone(memory_format=torch.contiguous_format),
        grad_gain.clone(memory_format=torch.contiguous_format),
    )


@membrane_bwd.register_fake
def _membrane_bwd_fake(x, grad, coef, gain, engine, kind, p, q, detach_reset):
    # grad_x like x; the coefficient gradients in the coefficients' dtype (the compute dtype:
    # float64 sums cast back on CPU, float32 on CUDA).
    return x.new_empty(x.shape), coef.new_empty(coef.shape), gain.new_empty(gain.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, coef, gain, *options = inputs
    ctx.save_for_backward(x, coef, gain)  # the input only (plus [5 + T, C] coefficients)
    ctx.options = options


def _backward(ctx, grad):
    x, coef, gain = ctx.saved_tensors
    grad_x, grad_coef, grad_gain = membrane_bwd(x, grad, coef, gain, *ctx.options)
    return grad_x, grad_coef, grad_gain, None, None, None, None, None


membrane_fwd.register_autograd(_backward, setup_context=_setup_context)
