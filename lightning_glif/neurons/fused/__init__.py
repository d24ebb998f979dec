"""Fused multi-step membrane op: the default engine of every membrane neuron
(``MembraneNeuron.forward``).

Why hand-written: the membrane recurrence of :mod:`lightning_glif.neurons.functional` is a chain
of tiny element-wise ops per time step; run as PyTorch ops, each is its own pass over memory and
autograd keeps about seven tensors per step for the backward. No library fuses this recurrence
with its BPTT, so this package does: one pass over time forward; one pass backward that
recomputes the membrane from the saved input and returns the input gradient and the gradient of
every coefficient (per-channel sums, the per-step gain). Autograd maps those back to the neuron's
latents (gates, hard/static/pinned modes, layer-wise scalars). Saved for the backward: the input
only (4 bytes per element and step in float32, 2 in bf16/fp16 on CUDA) plus the ``[5 + T, C]``
coefficients.

Engines: CPU tensors -> the C kernel of :mod:`.cpu`; CUDA tensors -> the Triton kernels of
:mod:`.triton_kernels`. Everything they do not cover (a surrogate whose
:meth:`~lightning_glif.neurons.surrogate.Surrogate.kernel_code` is ``None``: any but the four
built-in ones, another device, float64 on CUDA, odd coefficient shapes) runs the reference loop
:func:`~lightning_glif.neurons.functional.membrane_sequence`, which is also what the fused
engines are tested against: spikes bit-identical, gradients within float tolerance.

The kernels are called through the ``torch.library`` custom ops ``lightning_glif::membrane_fwd``
and ``lightning_glif::membrane_bwd`` of :mod:`.ops` (autograd and fake implementations
registered), so ``torch.compile(model, fullgraph=True)`` traces a whole spiking network without
a graph break.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..functional import MembraneCoefficients, membrane_sequence
from ..surrogate import Surrogate
from . import cpu
from .ops import membrane_bwd, membrane_fwd

Backend = Literal["auto", "fused", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "fused", "reference")


def _kernel_code(surrogate: Surrogate) -> tuple[int, float, float] | None:
    """The surrogate's code for the kernels; ``None`` also for a spike function that is not a
    :class:`Surrogate` at all (a plain callable has no kernel)."""
    return surrogate.kernel_code() if isinstance(surrogate, Surrogate) else None


def _engine(x: torch.Tensor, c: MembraneCoefficients, surrogate: Surrogate):
    """``(engine module, compute dtype, None)`` or ``(None, None, why not)``."""
    if _kernel_code(surrogate) is None:
        return None, None, f"no fused kernel for the surrogate {type(surrogate).__name__}"
    if x.dim() < 3 or x.numel() == 0 or not x.is_floating_point():
        return None, None, f"input of shape {tuple(x.shape)} and dtype {x.dtype}"
    T, C = x.shape[0], x.shape[2]
    channel = (c.decay, c.hard, c.leak, c.soft, c.v_threshold)
    if any(p.shape not in ((), (C,)) for p in channel) or c.gain.shape not in ((T,), (T, C)):
        return None, None, "coefficient shapes other than [] / [C] and gain [T] / [T, C]"
    if any(p.device != x.device for p in (*channel, c.gain)):
        return None, None, "coefficients on another device than the input"
    compute = torch.promote_types(x.dtype, torch.float32)
    for p in (*channel, c.gain):
        compute = torch.promote_types(compute, p.dtype)
    if x.device.type == "cpu":
        why = _cpu_kernel_error()
        if why:
            return None, None, f"the CPU kernel could not be built: {why}"
        return cpu, compute, None
    if x.device.type == "cuda":
        if compute != torch.float32:
            return None, None, f"compute dtype {compute} on CUDA (the Triton kernels are float32)"
        try:
            from . import triton_kernels
        except ImportError as e:
            return None, None, f"Triton is not importable ({e})"
        return triton_kernels, compute, None
    return None, None, f"device type {x.device.type!r}"


@torch.compiler.assume_constant_result
def _cpu_kernel_error() -> str:
    """Why the C kernel cannot be loaded, ``""`` if it can. Builds it on the first call.

    ``assume_constant_result``: under ``torch.compile`` Dynamo runs this once while tracing and
    bakes in the answer, instead of tracing into :func:`cpu.load` (a lock, a subprocess, ctypes:
    graph breaks). The answer only changes when a test swaps the build function (eager code)."""
    return "" if cpu.load() is not None else str(cpu.build_error())


def fused_available(x: torch.Tensor, c: MembraneCoefficients, surrogate: Surrogate) -> str | None:
    """``None`` if the fused op serves this call, else the reason it does not."""
    return _engine(x, c, surrogate)[2]


def membrane(
    x: torch.Tensor,
    c: MembraneCoefficients,
    surrogate: Surrogate,
    detach_reset: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Spikes ``[T, B, C, ...]`` in ``x``'s dtype, the membrane computed in at least float32.

    ``backend``: ``"auto"`` uses the fused op where it applies and the reference loop elsewhere;
    ``"fused"`` raises a RuntimeError saying why if the fused op does not apply; ``"reference"``
    always runs :func:`~lightning_glif.neurons.functional.membrane_sequence`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if backend != "reference":
        engine, compute, why = _engine(x, c, surrogate)
        if engine is not None:
            return _fused(engine, x, c, surrogate, detach_reset, compute).to(x.dtype)
        if backend == "fused":
            raise RuntimeError(
                f"backend='fused' cannot run this call: {why}. Use backend='auto' (falls back to "
                "the reference loop) or backend='reference'."
            )
    compute = torch.promote_types(x.dtype, torch.float32)
    return membrane_sequence(x.to(compute), c, surrogate, detach_reset).to(x.dtype)


def _fused(engine, x, c, surrogate, detach_reset, compute) -> torch.Tensor:
    T, C = x.shape[0], x.shape[2]
    # Per-channel [5, C] and [T, C] views; autograd sums the gradients back onto the layer-wise
    # scalars through expand's backward, and onto the latents through the coefficient maps.
    coef = torch.stack(
        [p.expand(C) for p in (c.decay, c.hard, c.leak, c.soft, c.v_threshold)]
    ).to(compute)
    gain = c.gain if c.gain.dim() == 2 else c.gain.unsqueeze(1)
    gain = gain.expand(T, C).to(compute).contiguous()
    half = x.dtype in (torch.float16, torch.bfloat16)
    if not (half and engine.READS_HALF_PRECISION):
        x = x.to(compute)
    kind, p, q = _kernel_code(surrogate)
    return membrane_fwd(
        x.contiguous(), coef, gain, engine.NAME, kind, float(p), float(q), bool(detach_reset)
    )


__all__ = ["BACKENDS", "Backend", "fused_available", "membrane", "membrane_bwd", "membrane_fwd"]
