"""CUDA engine of the fused membrane op: Triton kernels, the same maths as ``membrane_body.h``.

One program handles one channel ``c`` and ``BLOCK`` of its ``B * S`` elements, so the
coefficients are scalars and the parameter gradients reduce inside the program, into its own slot
of partial sums (no atomics: deterministic). The input is read in its own dtype (bf16 under
autocast), the membrane is float32; the backward recomputes it into a scratch buffer.
``enable_fp_fusion=False`` keeps one rounding per operation (no FMA), as in the reference loop,
so the spikes are bit-identical. Imported only for CUDA tensors (or by the tests under
``TRITON_INTERPRET=1``, set before this module is imported).
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

#: What an engine declares (see :mod:`.cpu`): a float32 membrane, input read in its own dtype.
NAME = "triton"
COMPUTE_DTYPES = (torch.float32,)
READS_HALF_PRECISION = True
BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _surrogate(v, KIND: tl.constexpr, p, q):
    """dH/dv of the built-in surrogates, ``(KIND, p, q)`` from ``Surrogate.kernel_code``."""
    if KIND == 0:
        d = tl.where(tl.abs(v) < p, q, 0.0)
    elif KIND == 1:
        z = q * v
        d = p / (1.0 + z * z)
    elif KIND == 2:
        s = 1.0 / (1.0 + tl.exp(-p * v))
        d = p * s * (1.0 - s)
    else:
        d = tl.maximum(1.0 - tl.abs(v) * q, 0.0) * q
    return d


@triton.jit
def _offsets(C, S, BS, BLOCK: tl.constexpr):
    """Channel, element offsets in one time step of [T, B, C, S], and the in-range mask."""
    c = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < BS
    b = (j // S).to(tl.int64)
    return c, b * C * S + c * S + j % S, mask


@triton.jit
def _coefficients(coef_ptr, C, c):
    """Channel ``c``'s decay, hard, leak, soft and v_threshold from ``coef`` ``[5, C]``."""
    a = tl.load(coef_ptr + c)
    h = tl.load(coef_ptr + C + c)
    l = tl.load(coef_ptr + 2 * C + c)
    r = tl.load(coef_ptr + 3 * C + c)
    th = tl.load(coef_ptr + 4 * C + c)
    return a, h, l, r, th


@triton.jit
def _step(u, o, x, a, h, l, r, b, th):
    """One step of the recurrence, ``(u[t], o[t])`` from ``u[t-1], o[t-1]`` and ``x[t]``: the one
    place the kernels write it (the forward, and the backward's recompute, which must round
    exactly as the forward did). Same operation order as ``functional.membrane_step``."""
    u = a * u * (1.0 - h * o) - l + b * x - r * o
    o = tl.where(u - th > 0.0, 1.0, 0.0)
    return u, o


@triton.jit
def forward_kernel(x_ptr, out_ptr, coef_ptr, gain_ptr, T, N, C, S, BS, BLOCK: tl.constexpr):
    c, off, mask = _offsets(C, S, BS, BLOCK)
    a, h, l, r, th = _coefficients(coef_ptr, C, c)
    u = tl.zeros([BLOCK], dtype=tl.float32)
    o = tl.zeros([BLOCK], dtype=tl.float32)
    at = off  # int64 offsets of step t, advanced by N per step (t * N may not fit in int32)
    for t in range(T):
        b = tl.load(gain_ptr + t * C + c)
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        u, o = _step(u, o, x, a, h, l, r, b, th)
        tl.store(out_ptr + at, o.to(out_ptr.dtype.element_ty), mask=mask)
        at += N


@triton.jit
def backward_kernel(
    x_ptr,
    grad_ptr,
    grad_x_ptr,
    scratch_ptr,
    partial_ptr,
    coef_ptr,
    gain_ptr,
    T,
    N,
    C,
    S,
    BS,
    p,
    q,
    KIND: tl.constexpr,
    KEEP_RESET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    c, off, mask = _offsets(C, S, BS, BLOCK)
    a, h, l, r, th = _coefficients(coef_ptr, C, c)
    # Recompute the membrane, exactly as the forward did; keep it in the scratch buffer.
    u = tl.zeros([BLOCK], dtype=tl.float32)
    o = tl.zeros([BLOCK], dtype=tl.float32)
    at = off
    for t in range(T):
        b = tl.load(gain_ptr + t * C + c)
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        u, o = _step(u, o, x, a, h, l, r, b, th)
        tl.store(scratch_ptr + at, u, mask=mask)
        at += N
    # BPTT, t = T-1 .. 0; u holds u[t], gn = dL/du[t+1].
    Q = 5 + T
    slot = partial_ptr + (c * tl.num_programs(1) + tl.program_id(1)) * Q
    gn = tl.zeros([BLOCK], dtype=tl.float32)
    sa = tl.zeros([BLOCK], dtype=tl.float32)
    sh = tl.zeros([BLOCK], dtype=tl.float32)
    sl = tl.zeros([BLOCK], dtype=tl.float32)
    sr = tl.zeros([BLOCK], dtype=tl.float32)
    sth = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        at -= N
        has_prev = t > 0  # o[0] = 0 and u[0] = 0 whatever v_th is
        up = tl.load(scratch_ptr + at - N, mask=mask & has_prev, other=0.0)
        pv = tl.where((up - th > 0.0) & has_prev, 1.0, 0.0)  # o[t-1]
        b = tl.load(gain_ptr + t * C + c)
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        go = tl.load(grad_ptr + at, mask=mask, other=0.0).to(tl.float32)
        v = u - th
        d_o = go
        if KEEP_RESET:  # u[t+1] sees o[t] in the resets
            d_o = go + gn * (-(a * u * h) - r)
        ds = d_o * _surrogate(v, KIND, p, q)
        gu = ds + gn * (a * (1.0 - h * tl.where(v > 0.0, 1.0, 0.0)))
        gu = tl.where(mask, gu, 0.0)
        ds = tl.where(mask, ds, 0.0)
        tl.store(grad_x_ptr + at, (gu * b).to(grad_x_ptr.dtype.element_ty), mask=mask)
        sa += gu * (up * (1.0 - h * pv))
        sh += gu * (a * up * pv)
        sl += gu
        sr += gu * pv
        sth += ds
        tl.store(slot + 5 + t, tl.sum(gu * x, axis=0))
        gn = gu
        u = up
    tl.store(slot + 0, tl.sum(sa, axis=0))
    tl.store(slot + 1, -tl.sum(sh, axis=0))
    tl.store(slot + 2, -tl.sum(sl, axis=0))
    tl.store(slot + 3, -tl.sum(sr, axis=0))
    tl.store(slot + 4, -tl.sum(sth, axis=0))


def _on(device: torch.device):
    """Launch on the tensors' GPU, not the current one (nothing to select for CPU tensors)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(x: torch.Tensor) -> tuple[tuple[int, int], tuple[int, ...], dict]:
    """The grid, the size arguments ``(T, N, C, S, BS)`` and the launch options for ``x``."""
    T, B, C = x.shape[:3]
    S = math.prod(x.shape[3:])
    grid = (C, triton.cdiv(B * S, BLOCK))
    options = {"BLOCK": BLOCK, "num_warps": NUM_WARPS, "enable_fp_fusion": False}
    return grid, (T, B * C * S, C, S, B * S), options


def forward(x: torch.Tensor, coef: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Spikes; arguments as ``cpu.forward`` (``coef`` and ``gain`` float32)."""
    grid, sizes, options = _launch(x)
    out = torch.empty_like(x)
    with _on(x.device):
        forward_kernel[grid](x, out, coef, gain, *sizes, **options)
    return out


def backward(x, grad, coef, gain, surrogate, detach_reset):
    """Gradients ``(x, coef, gain)``; arguments as ``cpu.backward``."""
    grid, sizes, options = _launch(x)
    kind, p, q = surrogate
    grad_x = torch.empty_like(x)
    scratch = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    partial = torch.empty(x.shape[2], grid[1], 5 + x.shape[0], dtype=torch.float32, device=x.device)
    args = (x, grad, grad_x, scratch, partial, coef, gain, *sizes, float(p), float(q))
    with _on(x.device):
        backward_kernel[grid](*args, KIND=kind, KEEP_RESET=not detach_reset, **options)
    total = partial.sum(1).t()
    return grad_x, total[:5], total[5:]
