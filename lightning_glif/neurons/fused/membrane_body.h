/* Kernel body, instantiated by membrane.c for real = float (FN(x) = x_f32) and real = double.
 * Two layouts: "rows" when S > 1 (a row is one (batch, channel) pair, its S elements contiguous,
 * the coefficients are scalars for the row) and "linear" when S == 1 (a tile runs over channels,
 * the coefficients are vectors). The per-element maths: FN(step), FN(dspike), FN(dmembrane);
 * the row tiles inline the same operations with the reset terms picked per row
 * (ROW_RESET_FACTORS), since the rows path is where large inputs (convolutions) run. */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Ask for the next time step's rows of a tile early: successive steps are a whole [B, C, S]
 * apart in memory, too far for the hardware prefetcher to guess. */
ALWAYS_INLINE void FN(prefetch)(const real *p, int64_t n, int write)
{
    for (int64_t i = 0; i < n; i += 64 / (int64_t)sizeof(real)) {
        if (write)
            __builtin_prefetch(p + i, 1);
        else
            __builtin_prefetch(p + i, 0);
    }
}

/* The same aimed at L2 (locality 2: prefetcht1 on x86), for the row tile a thread works on
 * next: it is needed a whole tile later, and the time steps of a tile, a power of two apart for
 * typical shapes, share the same few L1 sets, so fetching them all into L1 that early would
 * evict each other. (Measured: faster than prefetching the next step of the same tile.) */
ALWAYS_INLINE void FN(prefetch_next)(const real *p, int64_t n)
{
    for (int64_t i = 0; i < n; i += 64 / (int64_t)sizeof(real)) __builtin_prefetch(p + i, 0, 2);
}

/* Copy a finished scratch row of a tile to its place in an output: streamed (non-temporal
 * stores, see STORE_ROW in membrane.c) when the output is large, else a plain copy. */
ALWAYS_INLINE void FN(store_row)(real *restrict dst, const real *restrict src, int64_t n,
                                 int stream)
{
    if (stream) {
        STORE_ROW(dst, src, n);
        return;
    }
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

/* Whether outputs of that many elements are streamed (STREAM_MIN_BYTES in membrane.c). */
ALWAYS_INLINE int FN(streams)(int64_t elements)
{
    return STREAM_STORES && elements * (int64_t)sizeof(real) >= STREAM_MIN_BYTES;
}

/* The reset factors of one row: o is 0 or 1, so 1 - h * o and r * o each take one of two
 * values. Computed once per row with the same operations and picked per element (a select,
 * which AVX-512 folds into a masked operation), they round exactly as the reference, NaN or
 * infinite coefficients included. c0 is step(u = 0, o = 0) without b * x: at t = 0 the step is
 * one multiply and one add per element. */
#define ROW_RESET_FACTORS(a, h, l, r)                                                            \
    const real f1 = 1 - (h) * (real)1, f0 = 1 - (h) * (real)0;                                    \
    const real r1 = (r) * (real)1, r0 = (r) * (real)0;                                            \
    const real c0 = (a) * (real)0 * f0 - (l) - r0

/* One step of the recurrence, same operations and order as functional.membrane_step. */
ALWAYS_INLINE real FN(step)(real a, real h, real l, real r, real b, real x, real u, real o)
{
    return a * u * (1 - h * o) - l + b * x - r * o;
}

/* dH/dv of the built-in surrogates: (kind, p, q) is their Surrogate.kernel_code() (surrogate.py). */
ALWAYS_INLINE real FN(surrogate)(int kind, real p, real q, real v)
{
    if (kind == 0) /* Rectangular: p = width / 2, q = 1 / width */
        return fabs(v) < p ? q : (real)0;
    if (kind == 1) { /* ATan: p = alpha / 2, q = pi / 2 * alpha */
        real z = q * v;
        return p / (1 + z * z);
    }
    if (kind == 2) { /* Sigmoid: p = alpha */
        real s = 1 / (1 + EXP(-p * v));
        return p * s * (1 - s);
    }
    real d = 1 - fabs(v) * q; /* Triangle: q = 1 / width */
    return d > 0 ? d * q : (real)0;
}

/* BPTT of one element at step t, first half: ut = u[t], go = dL/do[t] from above, gn = dL/du[t+1];
 * keep = 0 cuts the reset path (detach_reset). Returns (total dL/do[t]) * H'(u[t] - v_th), which is
 * also minus the threshold's share. The backward may round differently from autograd (only the
 * forward must be bit-exact), so loop-invariant products are grouped to be hoisted. */
ALWAYS_INLINE real FN(dspike)(int kind, real p, real q, real keep, real a, real h, real r, real th,
                              real ut, real go, real gn)
{
    const real d_o = go - gn * (keep * (a * h) * ut + keep * r); /* u[t+1] sees o[t] in resets */
    return d_o * FN(surrogate)(kind, p, q, ut - th);
}

/* Second half: dL/du[t] = ds + gn * du[t+1]/du[t], with du[t+1]/du[t] = a * (1 - h * o[t]). */
ALWAYS_INLINE real FN(dmembrane)(real ds, real gn, real a, real h, real th, real ut)
{
    return ds + gn * (ut - th > 0 ? a * (1 - h) : a);
}

/* ------------------------------------------------------------------------------------------ */
/* Forward */

/* One row tile: n contiguous elements of one channel; time stride `stride`, gain stride C.
 * Same operations and order as FN(step) (see ROW_RESET_FACTORS). The spikes of a step are built
 * in the scratch row o (which also holds o[t-1] for the next step), then stored. */
ALWAYS_INLINE void FN(forward_row)(const real *restrict x, real *restrict out, int64_t n,
                                   int64_t stride, int64_t T, const real *restrict cf, int64_t C,
                                   const real *restrict gain, real *restrict u, real *restrict o,
                                   int stream)
{
    const real a = cf[0], h = cf[C], l = cf[2 * C], r = cf[3 * C], th = cf[4 * C];
    ROW_RESET_FACTORS(a, h, l, r);
    for (int64_t t = 0; t < T; ++t) {
        const real *restrict xt = x + t * stride;
        const real b = gain[t * C];
        FN(prefetch_next)(xt + n, n); /* the next tile (contiguous with this one) at step t */
        if (t == 0) {
            for (int64_t i = 0; i < n; ++i) {
                const real ui = c0 + b * xt[i];
                u[i] = ui;
                o[i] = ui - th > 0 ? 1 : 0;
            }
        } else {
            for (int64_t i = 0; i < n; ++i) {
                const int fired = o[i] > 0;
                const real ui = a * u[i] * (fired ? f1 : f0) - l + b * xt[i] - (fired ? r1 : r0);
                u[i] = ui;
                o[i] = ui - th > 0 ? 1 : 0;
            }
        }
        FN(store_row)(out + t * stride, o, n, stream);
    }
}

/* One linear tile: n contiguous channels of one batch row, per-channel coefficients. */
ALWAYS_INLINE void FN(forward_linear)(const real *restrict x, real *restrict out, int64_t n,
                                      int64_t stride, int64_t T, const real *restrict cf,
                                      int64_t C, const real *restrict gain, real *restrict u,
                                      real *restrict o)
{
    const real *a = cf, *h = cf + C, *l = cf + 2 * C, *r = cf + 3 * C, *th = cf + 4 * C;
    for (int64_t i = 0; i < n; ++i) u[i] = o[i] = 0;
    for (int64_t t = 0; t < T; ++t) {
        const real *restrict xt = x + t * stride;
        real *restrict ot = out + t * stride;
        const real *restrict b = gain + t * C;
        if (t + 1 < T) {
            FN(prefetch)(xt + stride, n, 0);
            FN(prefetch)(ot + stride, n, 1);
        }
        for (int64_t i = 0; i < n; ++i) {
            real ui = FN(step)(a[i], h[i], l[i], r[i], b[i], xt[i], u[i], o[i]);
            real oi = ui - th[i] > 0 ? 1 : 0;
            u[i] = ui;
            o[i] = oi;
            ot[i] = oi;
        }
    }
}

void FN(membrane_forward)(const real *x, real *spikes, const real *coef, const real *gain,
                          int64_t T, int64_t B, int64_t C, int64_t S)
{
    const int64_t stride = B * C * S;
    if (S == 1) {
        const int64_t chunks = (C + TILE - 1) / TILE;
#pragma omp parallel if (T * stride > 32768)
        {
            real u[TILE], o[TILE];
#pragma omp for schedule(dynamic, 8)
            for (int64_t task = 0; task < B * chunks; ++task) {
                const int64_t b = task / chunks, c0 = (task % chunks) * TILE;
                const int64_t n = C - c0 < TILE ? C - c0 : TILE;
                FN(forward_linear)(x + b * C + c0, spikes + b * C + c0, n, stride, T, coef + c0, C,
                                   gain + c0, u, o);
            }
        }
        return;
    }
    const int stream = FN(streams)(T * stride);
    const int64_t chunk = ROW_CHUNK(B * C);
#pragma omp parallel if (T * stride > 32768)
    {
        _Alignas(64) real u[TILE], o[TILE];
#pragma omp for schedule(dynamic, chunk)
        for (int64_t row = 0; row < B * C; ++row) {
            const int64_t c = row % C;
            for (int64_t s0 = 0; s0 < S; s0 += TILE) {
                const int64_t n = S - s0 < TILE ? S - s0 : TILE;
                FN(forward_row)(x + row * S + s0, spikes + row * S + s0, n, stride, T, coef + c, C,
                                gain + c, u, o, stream);
            }
        }
        if (stream) stream_fence();
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Backward */

/* Row tile: recompute u as FN(forward_row) does into U (T + 1 rows of TILE, row 0 all zeros =
 * u[0]), then BPTT backwards over time; gn (dL/du[t+1]) and G (the input gradient of one step,
 * then stored) are scratch rows. While step t runs, the next tile's x[t] and upstream gradient
 * at t are fetched into L2. The BPTT reads x again for the gain's gradient, from the cache (a
 * tile's x is T * n values); copying it into a scratch buffer during the recompute instead
 * measured slower, at T = 6 and T = 16.
 * acc[0..4] += gradients of decay, hard, leak, soft, v_threshold; acc[5 + t] += of gain[t]. */
ALWAYS_INLINE void FN(backward_row)(int kind, real p, real q, real keep, const real *restrict x,
                                    const real *restrict go, real *restrict gx, int64_t n,
                                    int64_t stride, int64_t T, const real *restrict cf, int64_t C,
                                    const real *restrict gain, real *restrict U,
                                    real *restrict gn, real *restrict G, double *restrict acc,
                                    int stream)
{
    const real a = cf[0], h = cf[C], l = cf[2 * C], r = cf[3 * C], th = cf[4 * C];
    ROW_RESET_FACTORS(a, h, l, r);
    for (int64_t t = 0; t < T; ++t) {
        const real *restrict up = U + t * TILE, *restrict xt = x + t * stride;
        real *restrict ut = U + (t + 1) * TILE;
        const real b = gain[t * C];
        if (t == 0) {
            for (int64_t i = 0; i < n; ++i) ut[i] = c0 + b * xt[i];
        } else {
            for (int64_t i = 0; i < n; ++i) {
                const int fired = up[i] - th > 0; /* o[t-1] */
                ut[i] = a * up[i] * (fired ? f1 : f0) - l + b * xt[i] - (fired ? r1 : r0);
            }
        }
    }
    /* d/da of a * u[t-1] * (1 - h * o[t-1]), summed: sum(gu * u[t-1]) - h * (that sum over the
     * elements that fired at t-1); so two sums (su, sh) instead of a select per element. */
    const real k1 = keep * (a * h), k2 = keep * r, a1 = a * (1 - h);
    for (int64_t i = 0; i < n; ++i) gn[i] = 0;
    for (int64_t t = T - 1; t >= 0; --t) {
        const real *restrict up = U + t * TILE, *restrict ut = U + (t + 1) * TILE;
        const real *restrict xt = x + t * stride, *restrict got = go + t * stride;
        const real b = gain[t * C];
        FN(prefetch_next)(xt + n, n);
        FN(prefetch_next)(got + n, n);
        real su = 0, sh = 0, sl = 0, sr = 0, sth = 0, sb = 0;
        if (t > 0) {
#pragma omp simd reduction(+ : su, sh, sl, sr, sth, sb)
            for (int64_t i = 0; i < n; ++i) {
                const real v = ut[i] - th;
                const real ds = (got[i] - gn[i] * (k1 * ut[i] + k2)) * FN(surrogate)(kind, p, q, v);
                const real gu = ds + gn[i] * (v > 0 ? a1 : a); /* FN(dspike), FN(dmembrane) */
                const real gup = gu * up[i];
                const int fired = up[i] - th > 0; /* o[t-1] */
                G[i] = gu * b;
                gn[i] = gu;
                su += gup;
                sh += fired ? gup : 0;
                sl += gu;
                sr += fired ? gu : 0;
                sth += ds;
                sb += gu * xt[i];
            }
        } else { /* u[0] = o[0] = 0: the decay, hard and soft terms vanish */
#pragma omp simd reduction(+ : sl, sth, sb)
            for (int64_t i = 0; i < n; ++i) {
                const real v = ut[i] - th;
                const real ds = (got[i] - gn[i] * (k1 * ut[i] + k2)) * FN(surrogate)(kind, p, q, v);
                const real gu = ds + gn[i] * (v > 0 ? a1 : a);
                G[i] = gu * b;
                sl += gu;
                sth += ds;
                sb += gu * xt[i];
            }
        }
        FN(store_row)(gx + t * stride, G, n, stream);
        acc[0] += (double)su - (double)h * (double)sh;
        acc[1] -= (double)a * (double)sh;
        acc[2] -= sl;
        acc[3] -= sr;
        acc[4] -= sth;
        acc[5 + t] += sb;
    }
}

/* Linear tile: as FN(backward_row) with per-channel coefficients; acc is [5 + T][C] (offset to
 * the tile's first channel) and accumulates element-wise. */
ALWAYS_INLINE void FN(backward_linear)(int kind, real p, real q, real keep,
                                       const real *restrict x, const real *restrict go,
                                       real *restrict gx, int64_t n, int64_t stride, int64_t T,
                                       const real *restrict cf, int64_t C,
                                       const real *restrict gain, real *restrict U,
                                       real *restrict gn, double *restrict acc)
{
    const real *a = cf, *h = cf + C, *l = cf + 2 * C, *r = cf + 3 * C, *th = cf + 4 * C;
    for (int64_t t = 0; t < T; ++t) {
        const real *restrict up = U + t * TILE;
        real *restrict ut = U + (t + 1) * TILE;
        const real *restrict xt = x + t * stride, *restrict b = gain + t * C;
        const real pm = t > 0 ? 1 : 0;
        if (t + 1 < T) FN(prefetch)(xt + stride, n, 0);
        for (int64_t i = 0; i < n; ++i)
            ut[i] = FN(step)(a[i], h[i], l[i], r[i], b[i], xt[i], up[i],
                             up[i] - th[i] > 0 ? pm : 0);
    }
    for (int64_t i = 0; i < n; ++i) gn[i] = 0;
    for (int64_t t = T - 1; t >= 0; --t) {
        const real *restrict up = U + t * TILE, *restrict ut = U + (t + 1) * TILE;
        const real *restrict xt = x + t * stride, *restrict got = go + t * stride;
        const real *restrict b = gain + t * C;
        real *restrict gxt = gx + t * stride;
        const real pm = t > 0 ? 1 : 0;
        if (t > 0) {
            FN(prefetch)(got - stride, n, 0);
            FN(prefetch)(gxt - stride, n, 1);
        }
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            const real ds =
                FN(dspike)(kind, p, q, keep, a[i], h[i], r[i], th[i], ut[i], got[i], gn[i]);
            const real gu = FN(dmembrane)(ds, gn[i], a[i], h[i], th[i], ut[i]);
            const real pv = up[i] - th[i] > 0 ? pm : 0;
            const real gup = gu * up[i];
            gxt[i] = gu * b[i];
            gn[i] = gu;
            acc[i] += pv > 0 ? gup * (1 - h[i]) : gup;
            acc[C + i] -= a[i] * (gup * pv);
            acc[2 * C + i] -= gu;
            acc[3 * C + i] -= gu * pv;
            acc[4 * C + i] -= ds;
            acc[(5 + t) * C + i] += gu * xt[i];
        }
    }
}

/* One switch per tile with a literal kind in each case, so that the compiler specialises (and
 * vectorises) the tile loops for each surrogate; the parallel region itself is outlined once. */
static void FN(backward_row_any)(int kind, real p, real q, real keep, const real *x,
                                 const real *go, real *gx, int64_t n, int64_t stride, int64_t T,
                                 const real *cf, int64_t C, const real *gain, real *U, real *gn,
                                 real *G, double *acc, int stream)
{
    switch (kind) {
    case 0:
        FN(backward_row)(0, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, G, acc,
                         stream);
        break;
    case 1:
        FN(backward_row)(1, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, G, acc,
                         stream);
        break;
    case 2:
        FN(backward_row)(2, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, G, acc,
                         stream);
        break;
    default:
        FN(backward_row)(3, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, G, acc,
                         stream);
    }
}

static void FN(backward_linear_any)(int kind, real p, real q, real keep, const real *x,
                                    const real *go, real *gx, int64_t n, int64_t stride,
                                    int64_t T, const real *cf, int64_t C, const real *gain,
                                    real *U, real *gn, double *acc)
{
    switch (kind) {
    case 0:
        FN(backward_linear)(0, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, acc);
        break;
    case 1:
        FN(backward_linear)(1, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, acc);
        break;
    case 2:
        FN(backward_linear)(2, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, acc);
        break;
    default:
        FN(backward_linear)(3, p, q, keep, x, go, gx, n, stride, T, cf, C, gain, U, gn, acc);
    }
}

/* partial: [P, 5 + T, C] doubles, zeroed by the caller; P = B for S > 1 (one slice per batch
 * row), LINEAR_SLICES for S == 1. Returns 0, or 1 if a scratch allocation failed. */
int FN(membrane_backward)(const real *x, const real *go, real *gx, double *partial,
                          const real *coef, const real *gain, int64_t T, int64_t B, int64_t C,
                          int64_t S, int kind, double p_, double q_, int detach)
{
    const int64_t stride = B * C * S, Q = 5 + T;
    const real p = (real)p_, q = (real)q_, keep = detach ? 0 : 1;
    const int stream = FN(streams)(T * stride);
    const int64_t chunk = ROW_CHUNK(B * C);
    int failed = 0;
#pragma omp parallel if (T * stride > 32768)
    {
        real *U = aligned_alloc(64, sizeof(real) * (size_t)((T + 3) * TILE));
        double *acc = malloc(sizeof(double) * (size_t)Q);
        if (U == NULL || acc == NULL) {
#pragma omp atomic write
            failed = 1;
        } else {
            real *gn = U + (T + 1) * TILE, *G = gn + TILE;
            for (int64_t i = 0; i < TILE; ++i) U[i] = 0; /* u[0] */
            if (S == 1) {
                const int64_t chunks = (C + TILE - 1) / TILE;
#pragma omp for schedule(dynamic, 8)
                for (int64_t task = 0; task < LINEAR_SLICES * chunks; ++task) {
                    const int64_t k = task / chunks, c0 = (task % chunks) * TILE;
                    const int64_t n = C - c0 < TILE ? C - c0 : TILE;
                    for (int64_t b = k * B / LINEAR_SLICES; b < (k + 1) * B / LINEAR_SLICES; ++b)
                        FN(backward_linear_any)(kind, p, q, keep, x + b * C + c0, go + b * C + c0,
                                                gx + b * C + c0, n, stride, T, coef + c0, C,
                                                gain + c0, U, gn, partial + k * Q * C + c0);
                }
            } else {
#pragma omp for schedule(dynamic, chunk)
                for (int64_t row = 0; row < B * C; ++row) {
                    const int64_t b = row / C, c = row % C;
                    for (int64_t j = 0; j < Q; ++j) acc[j] = 0;
                    for (int64_t s0 = 0; s0 < S; s0 += TILE) {
                        const int64_t n = S - s0 < TILE ? S - s0 : TILE;
                        FN(backward_row_any)(kind, p, q, keep, x + row * S + s0, go + row * S + s0,
                                             gx + row * S + s0, n, stride, T, coef + c, C, gain + c,
                                             U, gn, G, acc, stream);
                    }
                    for (int64_t j = 0; j < Q; ++j) partial[(b * Q + j) * C + c] = acc[j];
                }
                if (stream) stream_fence();
            }
        }
        free(U);
        free(acc);
    }
    return failed;
}
