/* Fused membrane recurrence for the CPU (lightning_glif.neurons.fused.cpu builds and loads it).
 *
 * The equation is the one of lightning_glif/neurons/functional.py:
 *     u[t] = a*u[t-1]*(1 - h*o[t-1]) - l - r*o[t-1] + b[t]*x[t],   o[t] = H(u[t] - v_th)
 * Forward: one pass over time per element, spikes out, nothing else stored.
 * Backward: recompute u over time for a small tile of elements (it stays in cache), then run
 * BPTT backwards over that tile: the input gradient and the per-channel parameter sums.
 * So the autograd graph only keeps the input x (4 bytes per element and step).
 *
 * Exactness: built with -ffp-contract=off and without -ffast-math, so each operation rounds once
 * in the order of functional.membrane_step: the spikes are bit-identical to the PyTorch loop.
 *
 * The kernel body is written once in membrane_body.h and instantiated for float and double.
 * Layout: x, spikes, grads are contiguous [T, B, C, S] (S = product of the trailing dims);
 * coef is [5, C] (decay, hard, leak, soft, v_threshold), gain is [T, C].
 */
#pragma STDC FP_CONTRACT OFF

#include <stdint.h>
#include <stdlib.h>
#include <tgmath.h>

/* Elements per tile: the backward keeps T * TILE membrane values of a tile in cache. */
#define TILE 512

/* Number of partial-sum slices of the linear (S == 1) backward, independent of the thread count
 * so the parameter gradients do not depend on it. (Partial sums live per row or per slice, never
 * per thread; hence also the dynamic schedules: on a shared machine an idle thread takes over the
 * work of a descheduled one, and the results stay the same.) */
#define LINEAR_SLICES 8

/* exp for the float Sigmoid surrogate: libm's expf does not vectorise without -ffast-math, which
 * this build must not use. Cody-Waite reduction (ln 2 split so n * hi is exact) and a degree-6
 * Taylor polynomial: a few ulp, plenty for a surrogate slope. */
static inline float exp_f32(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = floorf(x * 1.44269504f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23}; /* 2^n, -126 < n < 128 */
    return p * scale.f;
}

#define real float
#define FN(name) name##_f32
#define EXP exp_f32
#include "membrane_body.h"
#undef real
#undef FN
#undef EXP

#define real double
#define FN(name) name##_f64
#define EXP exp
#include "membrane_body.h"
#undef real
#undef FN
#undef EXP

/* Written once, in cpu.py (ABI_VERSION), which passes it as -DMEMBRANE_ABI_VERSION=<n>. */
#ifndef MEMBRANE_ABI_VERSION
#error "MEMBRANE_ABI_VERSION is not defined: build through lightning_glif.neurons.fused.cpu, or pass -DMEMBRANE_ABI_VERSION=<cpu.ABI_VERSION>"
#endif
int membrane_abi_version(void) { return MEMBRANE_ABI_VERSION; }
int membrane_linear_slices(void) { return LINEAR_SLICES; }
