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
:mod:`.triton_kernels` (:func:`use_engine` swaps one in for a block). Everything they do not
cover (a surrogate whose :meth:`~lightning_glif.neurons.surrogate.Surrogate.kernel_code` is
``None``: any but the four built-in ones, another device, float64 on CUDA, odd coefficient
shapes) runs the reference loop :func:`~lightning_glif.neurons.functional.membrane_sequence`,
which is also what the fused engines are tested against: spikes bit-identical, gradients within
float tolerance.

What is verified where: the C kernel by the test suite on every run (tests/test_fused.py); the
Triton kernels only under ``TRITON_INTERPRET=1`` on the CPU, and on a GPU by
``benchmarks/gpu_check.sh`` when one is at hand. So the first time an engine is about to run a
new combination (engine, device, input and compute dtype, surrogate, ``detach_reset``, input
rank, coefficient layout), it is first run on a small random input (2,048 elements, forward and
backward, gradients enabled locally even under ``no_grad`` or inference mode) against the
reference loop (:func:`first_use_results`): spikes equal, input and coefficient gradients within
tolerance. A combination that fails, or raises, runs the reference loop from then on under
``backend="auto"``, after one warning naming it and the reason; ``backend="fused"`` raises
instead. Once per combination and process: every test run exercises it on the C kernel.

The kernels are called through the ``torch.library`` custom ops ``lightning_glif::membrane_fwd``
and ``lightning_glif::membrane_bwd`` of :mod:`.ops` (autograd and fake implementations
registered), so ``torch.compile(model, fullgraph=True)`` traces a whole spiking network without
a graph break; the first-use check runs eagerly while Dynamo traces (it is
``assume_constant_result``), not in the graph.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import torch

from ..functional import MembraneCoefficients, membrane_sequence
from ..surrogate import Surrogate
from . import cpu
from .ops import engine_module, membrane_bwd, membrane_fwd, register_engine

Backend = Literal["auto", "fused", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "fused", "reference")
CHANNEL = ("decay", "hard", "leak", "soft", "v_threshold")

_overrides: dict[str, object] = {}  # device type -> engine, set by use_engine
_verdicts: dict[tuple, str] = {}  # combination -> "" (passed) or why it failed
_warned: set[tuple | str] = set()  # what _warn_once has warned about


def _kernel_code(surrogate: Surrogate) -> tuple[int, float, float] | None:
    """The surrogate's code for the kernels; ``None`` also for a spike function that is not a
    :class:`Surrogate` at all (a plain callable has no kernel)."""
    return surrogate.kernel_code() if isinstance(surrogate, Surrogate) else None


def _engine(x: torch.Tensor, c: MembraneCoefficients, surrogate: Surrogate):
    """``(engine, compute dtype, None)`` or ``(None, None, why not)``."""
    if _kernel_code(surrogate) is None:
        return None, None, f"no fused kernel for the surrogate {type(surrogate).__name__}"
    if x.dim() < 3 or x.numel() == 0 or not x.is_floating_point():
        return None, None, f"input of shape {tuple(x.shape)} and dtype {x.dtype}"
    T, C = x.shape[0], x.shape[2]
    channel = [getattr(c, name) for name in CHANNEL]
    if any(p.shape not in ((), (C,)) for p in channel) or c.gain.shape not in ((T,), (T, C)):
        return None, None, "coefficient shapes other than [] / [C] and gain [T] / [T, C]"
    if any(p.device != x.device for p in (*channel, c.gain)):
        return None, None, "coefficients on another device than the input"
    compute = torch.promote_types(x.dtype, torch.float32)
    for p in (*channel, c.gain):
        compute = torch.promote_types(compute, p.dtype)
    engine = _overrides.get(x.device.type)
    if engine is None and x.device.type == "cpu":
        why = _cpu_kernel_error()
        if why:
            return None, None, f"the CPU kernel could not be built: {why}"
        engine = cpu
    if engine is None and x.device.type == "cuda":
        try:
            from . import triton_kernels
        except ImportError as e:
            return None, None, f"Triton is not importable ({e})"
        engine = triton_kernels
    if engine is None:
        return None, None, f"device type {x.device.type!r}"
    if compute not in engine.COMPUTE_DTYPES:
        return None, None, f"compute dtype {compute} on {x.device.type} (the {engine.NAME} "
        f"engine computes in {', '.join(map(str, engine.COMPUTE_DTYPES))})"
    return engine, compute, None


@torch.compiler.assume_constant_result
def _cpu_kernel_error() -> str:
    """Why the C kernel cannot be loaded, ``""`` if it can. Builds it on the first call.

    ``assume_constant_result``: under ``torch.compile`` Dynamo runs this once while tracing and
    bakes in the answer, instead of tracing into :func:`cpu.load` (a lock, a subprocess, ctypes:
    graph breaks). The answer only changes when a test swaps the build function (eager code)."""
    return "" if cpu.load() is not None else str(cpu.build_error())


def _combination(x, c, surrogate, detach_reset, engine, compute) -> tuple:
    """What decides the engine's code path: the first-use check's key (Python constants, so
    that Dynamo can pass it to :func:`first_use_error`)."""
    layout = tuple(getattr(c, name).dim() for name in CHANNEL) + (c.gain.dim(),)
    return (engine.NAME, x.device, x.dtype, compute, type(surrogate).__name__,
            _kernel_code(surrogate), bool(detach_reset), x.dim() > 3, layout)  # fmt: skip


def describe(key: tuple) -> str:
    """A combination in words, for warnings and :func:`first_use_results`."""
    name, device, dtype, compute, surrogate, code, detach_reset, spatial, layout = key
    shapes = ", ".join(
        f"{n} {'[C]' if d else '[]'}" for n, d in zip(CHANNEL, layout[:5], strict=True)
    )
    return (
        f"engine {name} on {device}, input {dtype} [T, B, C{', ...' if spatial else ''}], "
        f"compute {compute}, surrogate {surrogate} (kernel code {code}), "
        f"detach_reset={detach_reset}, "
        f"coefficients {shapes}, gain {'[T, C]' if layout[5] == 2 else '[T]'}"
    ).replace("torch.", "")


@torch.compiler.assume_constant_result
def first_use_error(key: tuple, surrogate: Surrogate) -> str:
    """``""`` if the engine passed its first-use check for this combination, else a sentence
    naming the combination and why it failed. The check runs on the first call with a key, once
    per process.

    ``assume_constant_result``: under ``torch.compile`` Dynamo calls this eagerly while tracing
    (the check needs autograd and real tensors) and bakes the answer into the graph."""
    if key not in _verdicts:
        _verdicts[key] = _first_use_check(key, surrogate)
    if not _verdicts[key]:
        return ""
    return f"the fused op failed its first-use check ({_verdicts[key]}) for {describe(key)}"


# Tolerances of the check, relative to the largest reference value: the input gradient is rounded
# to the input dtype at the end (one ulp apart at most); the coefficient gradients are sums over
# the batch in another order than autograd's.
X_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}
COEF_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
#: The check's coefficients are drawn uniformly from these ranges (every term of the recurrence
#: matters), its input from [-1, 1.6] (some spikes, not all).
CHECK_RANGES = {"decay": (0.2, 0.9), "hard": (0.0, 1.0), "leak": (0.0, 0.1), "soft": (0.0, 0.5),
                "v_threshold": (0.3, 0.8), "gain": (0.5, 1.0)}  # fmt: skip


def _first_use_check(key: tuple, surrogate: Surrogate) -> str:
    name, device, dtype, compute, _, _, detach_reset, spatial, layout = key
    engine = engine_module(name)
    # Sizes that divide by 16, as most layers' do, so that Triton compiles the variant that the
    # real calls use (it specialises on divisibility by 16).
    T, B, C = 4, 2, 16
    shape = (T, B, C, 4, 4) if spatial else (T, 16, C)
    g = torch.Generator().manual_seed(0)

    def draw(size, low, high, dtype=compute):
        t = torch.rand(size, generator=g, dtype=torch.float64) * (high - low) + low
        return t.to(device, dtype)

    # The check needs gradients, whatever the caller's mode (validation runs in inference mode).
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device.type, enabled=False),
    ):
        try:
            x = draw(shape, -1.0, 1.6, dtype).requires_grad_()
            values = {
                n: draw((C,) if d else (), *CHECK_RANGES[n])
                for n, d in zip(CHANNEL, layout[:5], strict=True)
            }
            values["gain"] = draw((T, C) if layout[5] == 2 else (T,), *CHECK_RANGES["gain"])
            c = MembraneCoefficients(**{n: v.requires_grad_() for n, v in values.items()})
            w = draw(shape, -1.0, 1.0, dtype)
            inputs = [x, *values.values()]
            fused = _fused(engine, x, c, surrogate, detach_reset, compute).to(dtype)
            got = torch.autograd.grad((fused * w).sum(), inputs)
            reference = membrane_sequence(x.to(compute), c, surrogate, detach_reset).to(dtype)
            want = torch.autograd.grad((reference * w).sum(), inputs)
        except Exception as e:  # any failure of the engine means: do not use it here
            return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        if fused.shape != reference.shape or not torch.equal(fused, reference):
            n = (fused != reference).sum().item() if fused.shape == reference.shape else "all"
            return f"{n} of {reference.numel()} spikes differ from the reference loop"
        for what, a, b in zip(["input", *values], got, want, strict=True):
            tol = X_RTOL[dtype] if what == "input" else COEF_RTOL[compute]
            err = ((a.double() - b.double()).abs().max() / (b.abs().max() + 1e-30)).item()
            if a.dtype != b.dtype or not err <= tol:  # NaN fails too
                label = "the input gradient" if what == "input" else f"the gradient of {what}"
                return (
                    f"{label} differs from the reference loop's by {err:.1e} of its largest "
                    f"value (tolerance {tol:g})"
                )
    return ""


def first_use_results() -> dict[str, str]:
    """The combinations checked so far in this process (:func:`describe`), each with ``""``
    (passed: the fused engine runs it) or the reason it failed (the reference loop runs it)."""
    return {describe(key): why for key, why in _verdicts.items()}


@torch.compiler.assume_constant_result
def _warn_once(key: tuple | str, message: str) -> bool:
    """Warn once per ``key`` (a combination, or a surrogate's name); constant under compile."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return True


@contextlib.contextmanager
def use_engine(device_type: str, engine) -> Iterator[None]:
    """Within the block, run tensors of ``device_type`` (``"cpu"``, ``"cuda"``) through
    ``engine`` instead of their default one: an object or module with what :mod:`.cpu` has
    (``NAME``, unique; ``COMPUTE_DTYPES``; ``READS_HALF_PRECISION``; ``forward``; ``backward``).

    The seam through which the tests and ``benchmarks/gpu_check.py`` run the Triton kernels
    interpreted on CPU tensors, or a deliberately broken engine behind ``backend="auto"``.
    First-use results of an engine of that name are forgotten on entry: it is checked afresh.
    """
    register_engine(engine)
    for key in [k for k in _verdicts if k[0] == engine.NAME]:
        del _verdicts[key]
        _warned.discard(key)
    previous = _overrides.get(device_type)
    _overrides[device_type] = engine
    try:
        yield
    finally:
        if previous is None:
            _overrides.pop(device_type, None)
        else:
            _overrides[device_type] = previous


def fused_available(
    x: torch.Tensor, c: MembraneCoefficients, surrogate: Surrogate, detach_reset: bool = False
) -> str | None:
    """``None`` if the fused op serves this call under ``backend="auto"`` (after its first-use
    check), else the reason it does not."""
    engine, compute, why = _engine(x, c, surrogate)
    if engine is not None:
        key = _combination(x, c, surrogate, detach_reset, engine, compute)
        why = first_use_error(key, surrogate)
    return why or None


def membrane(
    x: torch.Tensor,
    c: MembraneCoefficients,
    surrogate: Surrogate,
    detach_reset: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Spikes ``[T, B, C, ...]`` in ``x``'s dtype, the membrane computed in at least float32.

    ``backend``: ``"auto"`` uses the fused op where it applies and passed its first-use check,
    the reference loop elsewhere (with one warning per surrogate without a kernel, and one per
    combination that failed the check); ``"fused"`` raises a RuntimeError saying why if the fused
    op does not apply or failed the check; ``"reference"`` always runs
    :func:`~lightning_glif.neurons.functional.membrane_sequence`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if backend != "reference":
        engine, compute, why = _engine(x, c, surrogate)
        if engine is not None:
            key = _combination(x, c, surrogate, detach_reset, engine, compute)
            why = first_use_error(key, surrogate)
            if not why:
                return _fused(engine, x, c, surrogate, detach_reset, compute).to(x.dtype)
        if backend == "fused":
            raise RuntimeError(
                f"backend='fused' cannot run this call: {why}. Use backend='auto' (falls back to "
                "the reference loop) or backend='reference'."
            )
        if engine is not None:
            fallback = "backend='auto' runs the reference loop for it from now on (same maths)"
            _warn_once(key, f"lightning_glif: {why}; {fallback}.")
        elif _kernel_code(surrogate) is None:
            fallback = "backend='auto' runs the reference loop, 10-25x slower on the CPU"
            silence = "Pass backend='reference' to the neuron to silence this."
            _warn_once(type(surrogate).__name__, f"lightning_glif: {why}: {fallback}. {silence}")
    compute = torch.promote_types(x.dtype, torch.float32)
    return membrane_sequence(x.to(compute), c, surrogate, detach_reset).to(x.dtype)


def _fused(engine, x, c, surrogate, detach_reset, compute) -> torch.Tensor:
    T, C = x.shape[0], x.shape[2]
    # Per-channel [5, C] and [T, C] views; autograd sums the gradients back onto the layer-wise
    # scalars through expand's backward, and onto the latents through the coefficient maps.
    coef = torch.stack([getattr(c, name).expand(C) for name in CHANNEL]).to(compute)
    gain = c.gain if c.gain.dim() == 2 else c.gain.unsqueeze(1)
    gain = gain.expand(T, C).to(compute).contiguous()
    half = x.dtype in (torch.float16, torch.bfloat16)
    if not (half and engine.READS_HALF_PRECISION):
        x = x.to(compute)
    kind, p, q = _kernel_code(surrogate)
    return membrane_fwd(
        x.contiguous(), coef, gain, engine.NAME, kind, float(p), float(q), bool(detach_reset)
    )


__all__ = [
    "BACKENDS",
    "Backend",
    "describe",
    "first_use_results",
    "fused_available",
    "membrane",
    "membrane_bwd",
    "membrane_fwd",
    "use_engine",
]
