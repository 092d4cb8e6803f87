/* P-pooling kernel body, included once per element type by ppool.c with
 *   T      the element type (float or double)
 *   SFX    the symbol suffix (f32 or f64)
 *   TINY   the smallest normal number of T, LOWEST its most negative finite number
 *   ZLOG   the stand-in for ln 0: finite (fast-math assumes no infinities) and so negative that
 *          exp(α (ZLOG − lm)) is exactly 0 for any α the layer uses (α ≥ 1e-18), and 1 for α = 0:
 *          an exact zero (or a value below TINY) gets weight 0^α as the formula says
 *   EXP, LOG  the exp and log functions for T
 *
 * The maths is the one of poolcli/ops/ppool.py (same weighted-average form, same gradients, same
 * negative-input modes); this file only changes how it is scheduled. One image plane at a time, the
 * zero-padded plane is split into sh×sw phases: padded pixel (r, c) goes to phase (r mod sh, c mod sw)
 * at row r / sh, column c / sw of a [hq, wq] block. Tap (di, dj) of output (i, j) is then element
 * (i + di/sh)·wq + (j + dj/sw) of phase (di mod sh, dj mod sw), so for a fixed tap the whole output grid,
 * flattened with row stride wq, is ONE contiguous run of ho·wq elements: every loop below is a long
 * unit-stride loop the compiler vectorises (with libmvec's exp/log) without gathers or per-row
 * remainders. Columns j in [wo, wq) are spare lanes: computed, never written out, and kept at zero
 * gradient. ln x~ is computed once per input element, exp once per (window, tap).
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define PLANE CAT(plane, SFX)

typedef struct {
    int64_t sh, sw, hq, wq, bs;  /* strides (phases), block rows/cols, block stride (with one spare row) */
    int64_t ho, wo, f;           /* output grid, f = ho·wq flattened lanes */
    T *x, *l, *v;                /* [sh·sw][bs]: padded x (0 outside), ln x (ZLOG for 0 and outside), 1/0 validity */
    T *g;                        /* same layout: gradient wrt the padded x (backward only) */
    T *lm, *acc, *acc2, *acc3, *al, *gy;  /* [f] each */
    T *wt;                       /* [kh·kw][f]: the tap weights (backward only) */
} PLANE;

static inline int64_t CAT(tap_offset, SFX)(const PLANE *P, int64_t di, int64_t dj)
{
    return ((di % P->sh) * P->sw + dj % P->sw) * P->bs + (di / P->sh) * P->wq + dj / P->sw;
}

/* First and one-past-last index q of column phase r whose column c = q*sw + r - pw lies in [0, w). */
static inline void CAT(phase_range, SFX)(int64_t r, int64_t sw, int64_t pw, int64_t w, int64_t *q0, int64_t *q1)
{
    const int64_t t = pw - r, last = w - 1 + pw - r;
    *q0 = t > 0 ? (t + sw - 1) / sw : 0;
    *q1 = last < 0 ? 0 : last / sw + 1;
}

/* Start of padded row (row + ph) of column phase r inside the buffer `base`. */
static inline T *CAT(phase_row, SFX)(const PLANE *P, T *base, int64_t row, int64_t ph, int64_t r)
{
    const int64_t pr = row + ph;
    return base + ((pr % P->sh) * P->sw + r) * P->bs + (pr / P->sh) * P->wq;
}

/* dst[q] = x[q*stride] - s (or max(x, 0) when clamping) for q in [q0, q1) */
static inline __attribute__((always_inline)) void CAT(gather_row, SFX)(T *restrict dst, const T *restrict src, int64_t q0,
                                                                      int64_t q1, int64_t stride, T s, int mode)
{
    if (mode == MODE_CLAMP) {
#pragma omp simd
        for (int64_t q = q0; q < q1; q++) dst[q] = src[q * stride] > 0 ? src[q * stride] : 0;
    } else {
#pragma omp simd
        for (int64_t q = q0; q < q1; q++) dst[q] = src[q * stride] - s;
    }
}

/* dst[q*stride] = src[q] (0 where clamping and x <= 0, as torch.clamp's gradient) for q in [q0, q1) */
static inline __attribute__((always_inline)) void CAT(scatter_row, SFX)(T *restrict dst, const T *restrict src,
                                                                       const T *restrict xr, int64_t q0, int64_t q1,
                                                                       int64_t stride, int mode)
{
    if (mode == MODE_CLAMP) {
#pragma omp simd
        for (int64_t q = q0; q < q1; q++) dst[q * stride] = xr[q * stride] > 0 ? src[q] : 0;
    } else {
#pragma omp simd
        for (int64_t q = q0; q < q1; q++) dst[q * stride] = src[q];
    }
}

static int CAT(plane_alloc, SFX)(PLANE *P, int64_t h, int64_t w, int64_t ho, int64_t wo, int64_t kh, int64_t kw,
                                 int64_t sh, int64_t sw, int64_t ph, int64_t pw, int backward)
{
    P->sh = sh; P->sw = sw;
    P->hq = (h + 2 * ph + sh - 1) / sh;
    P->wq = (w + 2 * pw + sw - 1) / sw;
    P->bs = (P->hq + 1) * P->wq;  /* a spare row: spare lanes of the last rows read past the block */
    P->ho = ho; P->wo = wo; P->f = ho * P->wq;
    const int64_t n = sh * sw * P->bs, f = P->f;
    const int64_t nb = backward ? 4 : 3;
    const int64_t total = nb * n + 6 * f + (backward ? kh * kw * f : 0);
    T *buf = (T *)calloc((size_t)total, sizeof(T));  /* x's padding stays 0 for every plane */
    if (!buf) return 1;
    P->x = buf; P->l = buf + n; P->v = buf + 2 * n;
    P->g = backward ? buf + 3 * n : NULL;
    T *rows = buf + nb * n;
    P->lm = rows; P->acc = rows + f; P->acc2 = rows + 2 * f; P->acc3 = rows + 3 * f; P->al = rows + 4 * f;
    P->gy = rows + 5 * f;
    P->wt = backward ? rows + 6 * f : NULL;
    for (int64_t r = 0; r < sw; r++) {  /* validity depends on the geometry only */
        int64_t q0, q1;
        CAT(phase_range, SFX)(r, sw, pw, w, &q0, &q1);
        for (int64_t row = 0; row < h; row++) {
            T *dst = CAT(phase_row, SFX)(P, P->v, row, ph, r);
            for (int64_t q = q0; q < q1; q++) dst[q] = 1;
        }
    }
    return 0;
}

/* Fill x and ln x~ of the phase buffers from one [h, w] plane; returns the shift s that was subtracted. */
static T CAT(plane_build, SFX)(PLANE *P, const T *xin, int64_t h, int64_t w, int64_t ph, int64_t pw, int mode)
{
    T s = 0;
    if (mode == MODE_SHIFT) {
        T mn = xin[0];
        for (int64_t i = 1; i < h * w; i++) mn = xin[i] < mn ? xin[i] : mn;
        s = mn < 0 ? mn : 0;
    }
    const int64_t sw = P->sw;
    for (int64_t r = 0; r < sw; r++) {
        int64_t q0, q1;
        CAT(phase_range, SFX)(r, sw, pw, w, &q0, &q1);
        for (int64_t row = 0; row < h; row++) {
            const T *src = xin + row * w + r - pw;
            T *dst = CAT(phase_row, SFX)(P, P->x, row, ph, r);
            /* constant strides for the common cases so that the gathers vectorise */
            if (sw == 1) CAT(gather_row, SFX)(dst, src, q0, q1, 1, s, mode);
            else if (sw == 2) CAT(gather_row, SFX)(dst, src, q0, q1, 2, s, mode);
            else CAT(gather_row, SFX)(dst, src, q0, q1, sw, s, mode);
        }
    }
    const int64_t n = P->sh * sw * P->bs;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {  /* zeros (and values below TINY, and cells outside the plane) get ZLOG */
        const T xv = P->x[i] >= TINY ? P->x[i] : 1;
        P->l[i] = P->x[i] >= TINY ? LOG(xv) : ZLOG;
    }
    return s;
}

/* gx of one plane from the padded phase-layout gradient. */
static void CAT(plane_scatter_back, SFX)(PLANE *P, const T *xin, T *gx, int64_t h, int64_t w,
                                        int64_t ph, int64_t pw, int mode)
{
    const int64_t sw = P->sw;
    for (int64_t r = 0; r < sw; r++) {
        int64_t q0, q1;
        CAT(phase_range, SFX)(r, sw, pw, w, &q0, &q1);
        for (int64_t row = 0; row < h; row++) {
            const T *src = CAT(phase_row, SFX)(P, P->g, row, ph, r);
            T *dst = gx + row * w + r - pw;
            const T *xr = xin + row * w + r - pw;
            if (sw == 1) CAT(scatter_row, SFX)(dst, src, xr, q0, q1, 1, mode);
            else if (sw == 2) CAT(scatter_row, SFX)(dst, src, xr, q0, q1, 2, mode);
            else CAT(scatter_row, SFX)(dst, src, xr, q0, q1, sw, mode);
        }
    }
}

/* A [ho, wo] plane (any strides, 0 for broadcast dims) into a flattened [ho, wq] array, spare lanes 0;
 * with clip, max(src, 0). */
static void CAT(load_grid, SFX)(const PLANE *P, T *restrict dst, const T *src, int64_t s_h, int64_t s_w, int clip)
{
    for (int64_t i = 0; i < P->ho; i++) {
        T *row = dst + i * P->wq;
        const T *in = src + i * s_h;
        for (int64_t j = 0; j < P->wo; j++) row[j] = clip ? (in[j * s_w] > 0 ? in[j * s_w] : 0) : in[j * s_w];
        for (int64_t j = P->wo; j < P->wq; j++) row[j] = 0;
    }
}

/* lm = max over the window's taps of ln x~ (the floor outside never exceeds a valid tap). */
static void CAT(window_max, SFX)(const PLANE *P, int64_t kh, int64_t kw)
{
    T *restrict lm = P->lm;
    const int64_t f = P->f;
    for (int64_t t = 0; t < f; t++) lm[t] = LOWEST;
    for (int64_t di = 0; di < kh; di++)
        for (int64_t dj = 0; dj < kw; dj++) {
            const T *restrict L = P->l + CAT(tap_offset, SFX)(P, di, dj);
#pragma omp simd
            for (int64_t t = 0; t < f; t++) lm[t] = L[t] > lm[t] ? L[t] : lm[t];
        }
}

/* y[n] for planes n in [n0, n1): x [N, h, w] contiguous, y [N, ho, wo] contiguous,
 * α element (b, c, i, j) at a[b*asb + c*asc + i*ash + j*asw], clipped at 0; plane n = b*C + c. */
int CAT(ppool_fwd, SFX)(const T *x, const T *a, int64_t asb, int64_t asc, int64_t ash, int64_t asw, T *y,
                        int64_t C, int64_t h, int64_t w, int64_t ho, int64_t wo,
                        int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int mode,
                        int64_t n0, int64_t n1)
{
    PLANE P;
    if (CAT(plane_alloc, SFX)(&P, h, w, ho, wo, kh, kw, sh, sw, ph, pw, 0)) return 1;
    const int64_t f = P.f;
    for (int64_t n = n0; n < n1; n++) {
        const T s = CAT(plane_build, SFX)(&P, x + n * h * w, h, w, ph, pw, mode);
        CAT(load_grid, SFX)(&P, P.al, a + (n / C) * asb + (n % C) * asc, ash, asw, 1);
        CAT(window_max, SFX)(&P, kh, kw);
        T *restrict lm = P.lm, *restrict num = P.acc, *restrict den = P.acc2, *restrict al = P.al;
        for (int64_t t = 0; t < f; t++) { num[t] = 0; den[t] = 0; }
        for (int64_t di = 0; di < kh; di++)
            for (int64_t dj = 0; dj < kw; dj++) {
                const int64_t off = CAT(tap_offset, SFX)(&P, di, dj);
                const T *restrict L = P.l + off, *restrict X = P.x + off, *restrict V = P.v + off;
#pragma omp simd
                for (int64_t t = 0; t < f; t++) {
                    const T wt = V[t] * EXP(al[t] * (L[t] - lm[t]));
                    den[t] += wt;
                    num[t] += wt * X[t];
                }
            }
        for (int64_t i = 0; i < ho; i++) {
            T *restrict yr = y + (n * ho + i) * wo;
            const T *restrict nr = num + i * P.wq, *restrict dr = den + i * P.wq;
#pragma omp simd
            for (int64_t j = 0; j < wo; j++) yr[j] = nr[j] / dr[j] + s;
        }
    }
    free(P.x);
    return 0;
}

/* Gradients for planes [n0, n1). gy, y [N, ho, wo]; gx [N, h, w] (NULL: not needed);
 * ga [N, ho, wo] full-size gradient wrt α (NULL: not needed; 0 where α <= 0, as torch.clamp). */
int CAT(ppool_bwd, SFX)(const T *x, const T *a, int64_t asb, int64_t asc, int64_t ash, int64_t asw, const T *y,
                        const T *gy, T *gx, T *ga, int64_t C, int64_t h, int64_t w, int64_t ho, int64_t wo,
                        int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int mode,
                        int64_t n0, int64_t n1)
{
    PLANE P;
    if (CAT(plane_alloc, SFX)(&P, h, w, ho, wo, kh, kw, sh, sw, ph, pw, 1)) return 1;
    const int64_t nbuf = sh * sw * P.bs, f = P.f;
    for (int64_t n = n0; n < n1; n++) {
        const T *xn = x + n * h * w;
        const T s = CAT(plane_build, SFX)(&P, xn, h, w, ph, pw, mode);
        CAT(load_grid, SFX)(&P, P.al, a + (n / C) * asb + (n % C) * asc, ash, asw, 1);
        CAT(load_grid, SFX)(&P, P.gy, gy + n * ho * wo, wo, 1, 0);
        CAT(window_max, SFX)(&P, kh, kw);
        T *restrict lm = P.lm, *restrict gd = P.acc, *restrict gar = P.acc2, *restrict ys = P.acc3,
          *restrict al = P.al, *restrict gyb = P.gy;
        for (int64_t i = 0; i < nbuf; i++) P.g[i] = 0;
        /* ys = y - s, the pooled value before the shift is added back (spare lanes: -s, unused) */
        CAT(load_grid, SFX)(&P, ys, y + n * ho * wo, wo, 1, 0);
        for (int64_t t = 0; t < f; t++) { ys[t] -= s; gd[t] = 0; gar[t] = 0; }
        /* pass 1: the tap weights (kept for pass 2) and their sum */
        for (int64_t di = 0; di < kh; di++)
            for (int64_t dj = 0; dj < kw; dj++) {
                const int64_t off = CAT(tap_offset, SFX)(&P, di, dj);
                const T *restrict L = P.l + off, *restrict V = P.v + off;
                T *restrict W = P.wt + (di * kw + dj) * f;
#pragma omp simd
                for (int64_t t = 0; t < f; t++) {
                    W[t] = V[t] * EXP(al[t] * (L[t] - lm[t]));
                    gd[t] += W[t];
                }
            }
        /* g / Σw; spare lanes have g = 0 (and possibly Σw = 0): they contribute exactly nothing */
        for (int64_t t = 0; t < f; t++) gd[t] = gd[t] > 0 ? gyb[t] / gd[t] : 0;
        /* pass 2: g·p_t, the α gradient, and the x gradient added into the padded buffer */
        for (int64_t di = 0; di < kh; di++)
            for (int64_t dj = 0; dj < kw; dj++) {
                const int64_t off = CAT(tap_offset, SFX)(&P, di, dj);
                const T *restrict L = P.l + off, *restrict X = P.x + off, *restrict W = P.wt + (di * kw + dj) * f;
                T *restrict G = P.g + off;
#pragma omp simd
                for (int64_t t = 0; t < f; t++) {
                    const T gp = W[t] * gd[t];
                    const T d = X[t] - ys[t];
                    gar[t] += gp * (L[t] - lm[t]) * d;
                    const T inv = X[t] >= TINY ? 1 / X[t] : 0;     /* a zero tap has weight 0 (α > 0) or no ln term (α = 0) */
                    G[t] += gp * (1 + al[t] * d * inv);
                }
            }
        if (ga) {
            for (int64_t i = 0; i < ho; i++) {
                T *restrict out = ga + (n * ho + i) * wo;
                const T *restrict gr = gar + i * P.wq, *restrict ar = al + i * P.wq;
                for (int64_t j = 0; j < wo; j++) out[j] = ar[j] > 0 ? gr[j] : 0;
            }
        }
        if (!gx) continue;
        T *gxn = gx + n * h * w;
        CAT(plane_scatter_back, SFX)(&P, xn, gxn, h, w, ph, pw, mode);
        if (s < 0) {
            /* shift mode with s = min x < 0 (plane_build): y = f(x - s) + s, so ∂y/∂s = g - Σ ∂f/∂x goes to
             * the minimum, split evenly over ties (as torch.amin). Σ_x ∂f/∂x over the plane = Σ of gx so far. */
            T gshift = 0;
            for (int64_t k = 0; k < ho * wo; k++) gshift += gy[n * ho * wo + k];
            for (int64_t k = 0; k < h * w; k++) gshift -= gxn[k];
            int64_t ties = 0;
            for (int64_t k = 0; k < h * w; k++) ties += xn[k] == s;
            const T share = gshift / (T)ties;
            for (int64_t k = 0; k < h * w; k++)
                if (xn[k] == s) gxn[k] += share;
        }
    }
    free(P.x);
    return 0;
}

#undef PLANE
