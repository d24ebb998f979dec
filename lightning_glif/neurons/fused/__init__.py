"""The fused membrane op, the engine of every :class:`~lightning_glif.neurons.MembraneNeuron`.

As PyTorch ops, the recurrence of :mod:`lightning_glif.neurons.functional` is a chain of tiny
element-wise passes per step, and autograd keeps about seven tensors per step. Fused: one pass
over time forward; one backward that recomputes the membrane from the saved input (all it keeps,
with the ``[5 + T, C]`` coefficients). Engines: the C kernel of :mod:`.cpu` for CPU tensors, the
Triton kernels of :mod:`.triton_kernels` for CUDA ones, as ``torch.library`` custom ops
(:mod:`.ops`). Anything else (a surrogate without ``kernel_code()``, float64 on CUDA, other
devices or coefficient shapes) runs the reference loop
:func:`~lightning_glif.neurons.functional.membrane_sequence`. The first time an engine meets a
combination (:func:`describe`), :func:`first_use_check` compares it with that loop.
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
from .ops import engine_module, membrane_fwd, register_engine
from .ops import membrane_bwd as membrane_bwd  # the op pair is imported from here

Backend = Literal["auto", "fused", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "fused", "reference")
#: The first-use check's coefficients are uniform in these ranges, its input in [-1, 1.6]: every
#: term matters, some spikes fire. The first five are the rows of the kernels' ``coef``.
CHECK_RANGES = {
    "decay": (0.2, 0.9),
    "hard": (0.0, 1.0),
    "leak": (0.0, 0.1),
    "soft": (0.0, 0.5),
    "v_threshold": (0.3, 0.8),
    "gain": (0.5, 1.0),
}
CHANNEL = tuple(CHECK_RANGES)[:5]
# The check's tolerances relative to the largest reference value: by the input dtype for the
# input gradient (rounded to it), by the compute dtype for the coefficients' (sums reordered).
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}

_overrides: dict[str, object] = {}  # device type -> engine, set by use_engine
_verdicts: dict[tuple, str] = {}  # combination -> first_use_error
_warned: set[tuple | str] = set()


def check_backend(backend: str) -> str:
    """``backend``, or a ValueError naming the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    return backend


def _kernel_code(surrogate) -> tuple[int, float, float] | None:
    # A spike function that is not a Surrogate at all (a plain callable) has no kernel.
    return surrogate.kernel_code() if isinstance(surrogate, Surrogate) else None


def _select(x: torch.Tensor, c: MembraneCoefficients, surrogate, detach_reset: bool):
    """``(engine, compute dtype, first-use key, why not)``: ``why`` is ``""`` when the engine
    serves the call. The key holds Python constants only, which Dynamo can pass on."""
    if _kernel_code(surrogate) is None:
        return None, None, None, f"no fused kernel for the surrogate {type(surrogate).__name__}"
    if x.dim() < 3 or x.numel() == 0 or not x.is_floating_point():
        return None, None, None, f"input of shape {tuple(x.shape)} and dtype {x.dtype}"
    T, C = x.shape[0], x.shape[2]
    values = [getattr(c, name) for name in CHECK_RANGES]
    if any(p.shape not in ((), (C,)) for p in values[:5]) or c.gain.shape not in ((T,), (T, C)):
        return None, None, None, "coefficient shapes other than [] / [C] and gain [T] / [T, C]"
    if any(p.device != x.device for p in values):
        return None, None, None, "coefficients on another device than the input"
    compute = torch.promote_types(x.dtype, torch.float32)
    for p in values:
        compute = torch.promote_types(compute, p.dtype)
    engine = _overrides.get(x.device.type)
    if engine is None and x.device.type == "cpu":
        why = cpu.unavailable()
        if why:
            return None, None, None, f"the CPU kernel could not be built: {why}"
        engine = cpu
    elif engine is None and x.device.type == "cuda":
        try:
            engine = engine_module("triton")
        except ImportError as e:
            return None, None, None, f"Triton is not importable ({e})"
    if engine is None:
        return None, None, None, f"device type {x.device.type!r}"
    if compute not in engine.COMPUTE_DTYPES:
        return None, None, None, f"compute dtype {compute} on the {engine.NAME} engine"
    key = (engine.NAME, x.device, x.dtype, compute, type(surrogate).__name__)
    key += (_kernel_code(surrogate), bool(detach_reset), x.dim() > 3)
    key += (tuple(p.dim() for p in values),)
    return engine, compute, key, first_use_error(key, surrogate)


def describe(key: tuple) -> str:
    """A combination, a first-use key, in words."""
    name, device, dtype, compute, surrogate, code, detach_reset, spatial, layout = key
    shapes = [("[]", "[C]")[d] for d in layout[:5]] + [("[T]", "[T, C]")[layout[5] - 1]]
    coefficients = ", ".join(f"{n} {s}" for n, s in zip(CHECK_RANGES, shapes, strict=True))
    text = f"engine {name} on {device}, input {dtype} [T, B, C{', ...' if spatial else ''}], "
    text += f"compute {compute}, surrogate {surrogate} (kernel code {code}), "
    text += f"detach_reset={detach_reset}, coefficients {coefficients}"
    return text.replace("torch.", "")


@torch.compiler.assume_constant_result
def first_use_error(key: tuple, surrogate: Surrogate) -> str:
    """``""`` if the engine passed its first-use check for this combination (run on the first
    call with a key), else a sentence saying why not. Constant under ``torch.compile``: Dynamo
    runs it eagerly while tracing (the check needs autograd and real tensors)."""
    if key not in _verdicts:
        why = first_use_check(key, surrogate)
        _verdicts[key] = (
            why and f"the fused op failed its first-use check ({why}) for {describe(key)}"
        )
    return _verdicts[key]


def first_use_check(key: tuple, surrogate: Surrogate) -> str:
    """Run the engine of ``key`` and the reference loop on a small random input, forward and
    backward: ``""`` if the spikes are equal and the gradients within :data:`RTOL`, else what
    differed or what the engine raised. Why: the tests run the C kernel, but the Triton kernels
    only interpreted (on a GPU: ``benchmarks/gpu_check.sh``), and Triton versions differ.

    A combination that fails runs the reference loop under ``backend="auto"``, after one warning,
    and raises under ``backend="fused"``."""
    name, device, dtype, compute, _, _, detach_reset, spatial, layout = key
    # Sizes that divide by 16, as most layers' do, so that Triton compiles the variant that the
    # real calls use (it specialises on divisibility by 16).
    T, C = 4, 16
    shape = (T, 2, C, 4, 4) if spatial else (T, 16, C)
    sizes = [(C,) if d else () for d in layout[:5]] + [(T, C)[: layout[5]]]
    g = torch.Generator().manual_seed(0)

    def draw(size, low, high, dtype=compute):
        t = torch.rand(size, generator=g, dtype=torch.float64) * (high - low) + low
        return t.to(device, dtype).requires_grad_()

    # Gradients whatever the caller's mode (validation runs in inference mode). Autocast does not
    # touch these element-wise ops.
    with torch.inference_mode(False), torch.enable_grad():
        try:
            x = draw(shape, -1.0, 1.6, dtype)
            values = [draw(s, *r) for s, r in zip(sizes, CHECK_RANGES.values(), strict=True)]
            c = MembraneCoefficients(**dict(zip(CHECK_RANGES, values, strict=True)))
            w = draw(shape, -1.0, 1.0, dtype)
            fused = _fused(engine_module(name), x, c, surrogate, detach_reset, compute).to(dtype)
            got = torch.autograd.grad((fused * w).sum(), [x, *values])
            reference = membrane_sequence(x.to(compute), c, surrogate, detach_reset).to(dtype)
            want = torch.autograd.grad((reference * w).sum(), [x, *values])
        except Exception as e:  # any failure of the engine means: do not use it here
            return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        if not torch.equal(fused, reference):
            n = (fused != reference).sum().item()
            return f"{n} of {reference.numel()} spikes differ from the reference loop"
        for what, a, b in zip(["input", *CHECK_RANGES], got, want, strict=True):
            tol = RTOL[dtype if what == "input" else compute]
            err = ((a.double() - b.double()).abs().max() / (b.abs().max() + 1e-30)).item()
            if a.dtype != b.dtype or not err <= tol:  # NaN fails too
                what = "the input gradient" if what == "input" else f"the gradient of {what}"
                return f"{what} differs from the reference loop's by {err:.1e} (rtol {tol:g})"
    return ""


def first_use_results() -> dict[str, str]:
    """The combinations checked so far in this process (:func:`describe`), each with ``""``
    (passed: the fused engine runs it) or why it failed (the reference loop runs it)."""
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
    """Within the block, run tensors of ``device_type`` (``"cpu"``, ``"cuda"``) through ``engine``,
    which has what :mod:`.cpu` has (a unique ``NAME``, ...): how the tests and
    ``benchmarks/gpu_check.py`` run the Triton kernels on CPU tensors, or a broken engine."""
    register_engine(engine)
    previous = _overrides.get(device_type)
    _overrides[device_type] = engine
    try:
        yield
    finally:
        _overrides[device_type] = previous


def fused_available(
    x: torch.Tensor, c: MembraneCoefficients, surrogate: Surrogate, detach_reset: bool = False
) -> str | None:
    """``None`` if the fused op serves this call under ``backend="auto"`` (after its first-use
    check), else the reason it does not."""
    return _select(x, c, surrogate, detach_reset)[3] or None


def membrane(
    x: torch.Tensor,
    c: MembraneCoefficients,
    surrogate: Surrogate,
    detach_reset: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Spikes ``[T, B, C, ...]`` in ``x``'s dtype, the membrane computed in at least float32.

    ``backend``: ``"auto"`` uses the fused op where it applies and passed its first-use check,
    else the reference loop :func:`~lightning_glif.neurons.functional.membrane_sequence` (with
    one warning per surrogate without a kernel and per combination that failed the check);
    ``"fused"`` raises a RuntimeError saying why it cannot; ``"reference"`` runs the loop.
    """
    if check_backend(backend) != "reference":
        engine, compute, key, why = _select(x, c, surrogate, detach_reset)
        if not why:
            return _fused(engine, x, c, surrogate, detach_reset, compute).to(x.dtype)
        if backend == "fused":
            raise RuntimeError(
                f"backend='fused' cannot run this call: {why}. Use backend='auto' (falls back to "
                "the reference loop) or backend='reference'."
            )
        if key is not None or _kernel_code(surrogate) is None:  # else: nothing to fuse here
            note = "the reference loop runs it (backend='reference' on the neuron silences this)"
            _warn_once(key or type(surrogate).__name__, f"lightning_glif: {why}; {note}.")
    compute = torch.promote_types(x.dtype, torch.float32)
    return membrane_sequence(x.to(compute), c, surrogate, detach_reset).to(x.dtype)


def _fused(engine, x, c, surrogate, detach_reset, compute) -> torch.Tensor:
    T, C = x.shape[0], x.shape[2]
    # Per-channel [5, C] and [T, C] views; autograd sums the gradients back onto the layer-wise
    # scalars through expand's backward, and onto the latents through the coefficient maps.
    coef = torch.stack([getattr(c, name).expand(C) for name in CHANNEL]).to(compute)
    gain = c.gain if c.gain.dim() == 2 else c.gain.unsqueeze(1)
    gain = gain.expand(T, C).to(compute).contiguous()
    if not (x.dtype in (torch.float16, torch.bfloat16) and engine.READS_HALF_PRECISION):
        x = x.to(compute)
    kind, p, q = _kernel_code(surrogate)
    return membrane_fwd(
        x.contiguous(), coef, gain, engine.NAME, kind, float(p), float(q), bool(detach_reset)
    )
