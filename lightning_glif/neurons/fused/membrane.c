/* Fused membrane recurrence for the CPU (lightning_glif.neurons.fused.cpu builds and loads it).
 *
 * The equation is the one of lightning_glif/neurons/functional.py:
 *     u[t] = a*u[t-1]*(1 - h*o[t-1]) - l - r*o[t-1] + b[t]*x[t],   o[t] = H(u[t] - v_th)
 * Forward: one pass over time per element, spikes out, nothing else stored.
 * Backward: recompute u over time for a small tile of elements (it stays in cache), then run
 * BPTT backwards over that tile: the input gradient and the per-channel parameter sums.
 * So the autograd graph only keeps the input x (4 bytes per element and step), and the memory
 * traffic is what the op must move: forward x in, spikes out; backward x and dL/dspikes in, the
 * input gradient out (20 bytes per element and step in float32). Large outputs are written with
 * non-temporal stores (STREAM_MIN_BYTES), which saves reading their lines first.
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

/* Rows (one (batch, channel) pair each) per OpenMP work item: large enough that a thread walks
 * through long contiguous runs (its next tile, prefetched, is then its own), small enough for
 * 64 items per call, so that an idle thread can take over from a descheduled one. The results do
 * not depend on it (partial sums live per row). */
#define ROW_CHUNK(rows) ((rows) >= 64 * 32 ? 32 : ((rows) >= 64 ? (rows) / 64 : 1))

/* Outputs (spikes, input gradient) of at least this many bytes are written with non-temporal
 * stores: written once and read by another op much later, so there is no point in first reading
 * each line into the cache (what an ordinary store does) and evicting useful data for it; this
 * also leaves the memory bus to the reads. Smaller outputs probably stay in cache for the next op:
 * ordinary stores. */
#define STREAM_MIN_BYTES ((int64_t)4 << 20)

/* STORE_ROW copies a scratch row of a tile (in L1) to the output with non-temporal stores:
 * full 64-byte lines once the destination is aligned (rows are, for an output from PyTorch's
 * allocator and a row length a multiple of 16). A thread that streamed calls stream_fence()
 * before its results may be read. x86 only (SSE2 is part of x86-64); elsewhere a plain copy. */
#if defined(__SSE2__)
#define STREAM_STORES 1
#include <immintrin.h>
static inline void stream_fence(void) { _mm_sfence(); }
static inline void stream_f32(float *restrict dst, const float *restrict src, int64_t n)
{
    int64_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 63); ++i) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) {
#if defined(__AVX512F__)
        _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__AVX__)
        _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
        _mm256_stream_ps(dst + i + 8, _mm256_loadu_ps(src + i + 8));
#else
        for (int k = 0; k < 16; k += 4) _mm_stream_ps(dst + i + k, _mm_loadu_ps(src + i + k));
#endif
    }
    for (; i < n; ++i) dst[i] = src[i];
}
static inline void stream_f64(double *restrict dst, const double *restrict src, int64_t n)
{
    int64_t i = 0;
    for (; i < n && ((uintptr_t)(dst + i) & 63); ++i) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) {
#if defined(__AVX512F__)
        _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
#elif defined(__AVX__)
        _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
        _mm256_stream_pd(dst + i + 4, _mm256_loadu_pd(src + i + 4));
#else
        for (int k = 0; k < 8; k += 2) _mm_stream_pd(dst + i + k, _mm_loadu_pd(src + i + k));
#endif
    }
    for (; i < n; ++i) dst[i] = src[i];
}
#else
#define STREAM_STORES 0
static inline void stream_fence(void) {}
#define stream_f32(dst, src, n) ((void)0)
#define stream_f64(dst, src, n) ((void)0)
#endif

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
#define STORE_ROW stream_f32
#include "membrane_body.h"
#undef real
#undef FN
#undef EXP
#undef STORE_ROW

#define real double
#define FN(name) name##_f64
#define EXP exp
#define STORE_ROW stream_f64
#include "membrane_body.h"
#undef real
#undef FN
#undef EXP
#undef STORE_ROW

/* Written once, in cpu.py (ABI_VERSION), which passes it as -DMEMBRANE_ABI_VERSION=<n>. */
#ifndef MEMBRANE_ABI_VERSION
#error "MEMBRANE_ABI_VERSION is not defined: build through lightning_glif.neurons.fused.cpu, or pass -DMEMBRANE_ABI_VERSION=<cpu.ABI_VERSION>"
#endif
int membrane_abi_version(void) { return MEMBRANE_ABI_VERSION; }
int membrane_linear_slices(void) { return LINEAR_SLICES; }
/* Outputs from this size on are written with non-temporal stores where the CPU has them (0:
 * never); the tests use it to cover both paths. */
int64_t membrane_stream_min_bytes(void) { return STREAM_STORES ? STREAM_MIN_BYTES : 0; }
