/* P-pooling kernel body, included once per element type by ppool.c with
 *   T      the element type (float or double)
 *   SFX    the symbol suffix (f32 or f64)
 *   TINY   the smallest normal number of T, LOWEST its most negative finite number
 *   EXP, LOG  the exp and log functions for T
 *
 * The maths is the one of poolcli/ops/ppool.py (same weighted-average form, same gradients, same
 * negative-input modes); this file only changes how it is scheduled: one image plane at a time, its
 * padded x, ln x~ and validity kept in small phase buffers (column c of the padded plane goes to phase
 * c mod s_w at index c / s_w) so that every tap of every window row is a contiguous, vectorisable run.
 * ln x~ is computed once per input element, exp once per (window, tap).
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define PLANE CAT(plane, SFX)
#define PLANE_BUILD CAT(plane_build, SFX)
#define ROW_MAX CAT(row_max, SFX)
#define FWD CAT(ppool_fwd, SFX)
#define BWD CAT(ppool_bwd, SFX)

typedef struct {
    int64_t hp, wq;      /* padded rows, columns per phase */
    int64_t sw;          /* column stride = number of phases */
    T *x, *l, *v;        /* [sw][hp][wq]: padded x (0 outside), ln x~ (ln TINY outside), 1/0 validity */
    T *g;                /* same layout: gradient wrt the padded x (backward only) */
    T *lm, *acc, *acc2, *acc3, *arow;  /* one output row each */
    T *wt;               /* [kh*kw][wo]: the row's tap weights (backward only) */
} PLANE;

/* First and one-past-last index q of phase r whose column c = q*sw + r - pw lies in [0, w). */
static inline void CAT(phase_range, SFX)(int64_t r, int64_t sw, int64_t pw, int64_t w, int64_t *q0, int64_t *q1)
{
    const int64_t t = pw - r, last = w - 1 + pw - r;
    *q0 = t > 0 ? (t + sw - 1) / sw : 0;
    *q1 = last < 0 ? 0 : last / sw + 1;
}

/* Fill x and ln x~ of the phase buffers from one [h, w] plane (the validity mask and the zero padding
 * of x are set once per call); returns the shift s that was subtracted. No divisions per element. */
static T PLANE_BUILD(PLANE *P, const T *xin, int64_t h, int64_t w, int64_t ph, int64_t pw, int mode)
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
            const T *restrict src = xin + row * w + r - pw;
            T *restrict dst = P->x + (r * P->hp + row + ph) * P->wq;
            if (mode == MODE_CLAMP) {
                for (int64_t q = q0; q < q1; q++) dst[q] = src[q * sw] > 0 ? src[q * sw] : 0;
            } else {
                for (int64_t q = q0; q < q1; q++) dst[q] = src[q * sw] - s;
            }
        }
    }
    /* ln x~ for the whole buffer in one vectorised sweep (cells outside the plane get ln TINY) */
    const int64_t n = sw * P->hp * P->wq;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        const T xv = P->x[i] > TINY ? P->x[i] : TINY;
        P->l[i] = LOG(xv);
    }
    return s;
}

/* gx of one plane from the padded phase-layout gradient; clamp mode zeroes it where x <= 0 (as
 * torch.clamp, whose gradient is 0 at the kink). */
static void CAT(plane_scatter_back, SFX)(const PLANE *P, const T *xin, T *gx, int64_t h, int64_t w,
                                        int64_t ph, int64_t pw, int mode)
{
    const int64_t sw = P->sw;
    for (int64_t r = 0; r < sw; r++) {
        int64_t q0, q1;
        CAT(phase_range, SFX)(r, sw, pw, w, &q0, &q1);
        for (int64_t row = 0; row < h; row++) {
            const T *restrict src = P->g + (r * P->hp + row + ph) * P->wq;
            T *restrict dst = gx + row * w + r - pw;
            const T *restrict xr = xin + row * w + r - pw;
            if (mode == MODE_CLAMP) {
                for (int64_t q = q0; q < q1; q++) dst[q * sw] = xr[q * sw] > 0 ? src[q] : 0;
            } else {
                for (int64_t q = q0; q < q1; q++) dst[q * sw] = src[q];
            }
        }
    }
}

/* lm[j] = max over the window's taps of ln x~ (the floor outside never exceeds a valid tap). */
static void ROW_MAX(const PLANE *P, int64_t i, int64_t wo, int64_t kh, int64_t kw, int64_t sh)
{
    T *restrict lm = P->lm;
    for (int64_t j = 0; j < wo; j++) lm[j] = LOWEST;
    for (int64_t di = 0; di < kh; di++)
        for (int64_t dj = 0; dj < kw; dj++) {
            const T *restrict L = P->l + ((dj % P->sw) * P->hp + i * sh + di) * P->wq + dj / P->sw;
#pragma omp simd
            for (int64_t j = 0; j < wo; j++) lm[j] = L[j] > lm[j] ? L[j] : lm[j];
        }
}

static int CAT(plane_alloc, SFX)(PLANE *P, int64_t h, int64_t w, int64_t wo, int64_t kh, int64_t kw,
                                 int64_t ph, int64_t pw, int64_t sw, int backward)
{
    P->sw = sw;
    P->hp = h + 2 * ph;
    P->wq = (w + 2 * pw + sw - 1) / sw;
    const int64_t n = sw * P->hp * P->wq;
    const int64_t nb = backward ? 4 : 3;
    const int64_t total = nb * n + 5 * wo + (backward ? kh * kw * wo : 0);
    T *buf = (T *)calloc((size_t)total, sizeof(T));  /* x's padding stays 0 for every plane */
    if (!buf) return 1;
    P->x = buf; P->l = buf + n; P->v = buf + 2 * n;
    P->g = backward ? buf + 3 * n : NULL;
    T *rows = buf + nb * n;
    P->lm = rows; P->acc = rows + wo; P->acc2 = rows + 2 * wo; P->acc3 = rows + 3 * wo; P->arow = rows + 4 * wo;
    P->wt = backward ? rows + 5 * wo : NULL;
    for (int64_t r = 0; r < sw; r++) {  /* validity depends on the geometry only */
        int64_t q0, q1;
        CAT(phase_range, SFX)(r, sw, pw, w, &q0, &q1);
        for (int64_t row = 0; row < h; row++)
            for (int64_t q = q0; q < q1; q++) P->v[(r * P->hp + row + ph) * P->wq + q] = 1;
    }
    return 0;
}

/* Row i of max(α, 0) (any strides, 0 for broadcast dims) as a contiguous row. */
static inline void CAT(alpha_row, SFX)(T *restrict dst, const T *a, int64_t ash, int64_t asw, int64_t i, int64_t wo)
{
    const T *src = a + i * ash;
    for (int64_t j = 0; j < wo; j++) dst[j] = src[j * asw] > 0 ? src[j * asw] : 0;
}

/* y[n] for planes n in [n0, n1): x [N, h, w] contiguous, y [N, ho, wo] contiguous,
 * α element (b, c, i, j) at a[b*asb + c*asc + i*ash + j*asw]; plane n = b*C + c. */
int FWD(const T *x, const T *a, int64_t asb, int64_t asc, int64_t ash, int64_t asw, T *y,
        int64_t C, int64_t h, int64_t w, int64_t ho, int64_t wo,
        int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int mode,
        int64_t n0, int64_t n1)
{
    PLANE P;
    if (CAT(plane_alloc, SFX)(&P, h, w, wo, kh, kw, ph, pw, sw, 0)) return 1;
    for (int64_t n = n0; n < n1; n++) {
        const T s = PLANE_BUILD(&P, x + n * h * w, h, w, ph, pw, mode);
        const T *an = a + (n / C) * asb + (n % C) * asc;
        for (int64_t i = 0; i < ho; i++) {
            ROW_MAX(&P, i, wo, kh, kw, sh);
            T *restrict lm = P.lm, *restrict num = P.acc, *restrict den = P.acc2, *restrict al = P.arow;
            CAT(alpha_row, SFX)(al, an, ash, asw, i, wo);
            for (int64_t j = 0; j < wo; j++) { num[j] = 0; den[j] = 0; }
            for (int64_t di = 0; di < kh; di++)
                for (int64_t dj = 0; dj < kw; dj++) {
                    const int64_t off = ((dj % sw) * P.hp + i * sh + di) * P.wq + dj / sw;
                    const T *restrict L = P.l + off, *restrict X = P.x + off, *restrict V = P.v + off;
#pragma omp simd
                    for (int64_t j = 0; j < wo; j++) {
                        const T wt = V[j] * EXP(al[j] * (L[j] - lm[j]));
                        den[j] += wt;
                        num[j] += wt * X[j];
                    }
                }
            T *restrict yr = y + (n * ho + i) * wo;
#pragma omp simd
            for (int64_t j = 0; j < wo; j++) yr[j] = num[j] / den[j] + s;
        }
    }
    free(P.x);
    return 0;
}

/* Gradients for planes [n0, n1). gy, y [N, ho, wo]; gx [N, h, w] (NULL: not needed);
 * ga [N, ho, wo] full-size gradient wrt α (NULL: not needed; 0 where α <= 0, as torch.clamp). */
int BWD(const T *x, const T *a, int64_t asb, int64_t asc, int64_t ash, int64_t asw, const T *y, const T *gy,
        T *gx, T *ga, int64_t C, int64_t h, int64_t w, int64_t ho, int64_t wo,
        int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int mode,
        int64_t n0, int64_t n1)
{
    PLANE P;
    if (CAT(plane_alloc, SFX)(&P, h, w, wo, kh, kw, ph, pw, sw, 1)) return 1;
    const int64_t nbuf = sw * P.hp * P.wq;
    for (int64_t n = n0; n < n1; n++) {
        const T *xn = x + n * h * w;
        const T s = PLANE_BUILD(&P, xn, h, w, ph, pw, mode);
        const T *an = a + (n / C) * asb + (n % C) * asc;
        for (int64_t i = 0; i < nbuf; i++) P.g[i] = 0;
        T gshift = 0;
        for (int64_t i = 0; i < ho; i++) {
            ROW_MAX(&P, i, wo, kh, kw, sh);
            T *restrict lm = P.lm, *restrict gd = P.acc, *restrict gar = P.acc2, *restrict gsum = P.acc3,
              *restrict al = P.arow;
            CAT(alpha_row, SFX)(al, an, ash, asw, i, wo);
            for (int64_t j = 0; j < wo; j++) gd[j] = 0;
            /* pass 1: the tap weights (kept for pass 2) and their sum */
            for (int64_t di = 0; di < kh; di++)
                for (int64_t dj = 0; dj < kw; dj++) {
                    const int64_t off = ((dj % sw) * P.hp + i * sh + di) * P.wq + dj / sw;
                    const T *restrict L = P.l + off, *restrict V = P.v + off;
                    T *restrict W = P.wt + (di * kw + dj) * wo;
#pragma omp simd
                    for (int64_t j = 0; j < wo; j++) {
                        W[j] = V[j] * EXP(al[j] * (L[j] - lm[j]));
                        gd[j] += W[j];
                    }
                }
            const T *restrict gyr = gy + (n * ho + i) * wo, *restrict yr = y + (n * ho + i) * wo;
            for (int64_t j = 0; j < wo; j++) { gd[j] = gyr[j] / gd[j]; gar[j] = 0; gsum[j] = 0; }
            /* pass 2: g·p_t, the α gradient, and the x gradient added into the padded buffer */
            for (int64_t di = 0; di < kh; di++)
                for (int64_t dj = 0; dj < kw; dj++) {
                    const int64_t off = ((dj % sw) * P.hp + i * sh + di) * P.wq + dj / sw;
                    const T *restrict L = P.l + off, *restrict X = P.x + off, *restrict W = P.wt + (di * kw + dj) * wo;
                    T *restrict G = P.g + off;
#pragma omp simd
                    for (int64_t j = 0; j < wo; j++) {
                        const T gp = W[j] * gd[j];
                        const T d = X[j] - (yr[j] - s);
                        gar[j] += gp * (L[j] - lm[j]) * d;
                        const T inv = X[j] > TINY ? 1 / X[j] : 0;      /* ln x~ is flat below TINY */
                        const T gt = gp * (1 + al[j] * d * inv);
                        G[j] += gt;
                        gsum[j] += gt;
                    }
                }
            if (ga) {
                T *restrict gar_out = ga + (n * ho + i) * wo;
                for (int64_t j = 0; j < wo; j++) gar_out[j] = al[j] > 0 ? gar[j] : 0;
            }
            for (int64_t j = 0; j < wo; j++) gshift += gyr[j] - gsum[j];
        }
        if (!gx) continue;
        T *gxn = gx + n * h * w;
        CAT(plane_scatter_back, SFX)(&P, xn, gxn, h, w, ph, pw, mode);
        if (mode == MODE_SHIFT) {
            /* s = min x when negative: its gradient goes to the minimum, split evenly over ties (as torch.amin) */
            T mn = xn[0];
            for (int64_t k = 1; k < h * w; k++) mn = xn[k] < mn ? xn[k] : mn;
            if (mn < 0) {
                int64_t ties = 0;
                for (int64_t k = 0; k < h * w; k++) ties += xn[k] == mn;
                const T share = gshift / (T)ties;
                for (int64_t k = 0; k < h * w; k++)
                    if (xn[k] == mn) gxn[k] += share;
            }
        }
    }
    free(P.x);
    return 0;
}

#undef PLANE
#undef PLANE_BUILD
#undef ROW_MAX
#undef FWD
#undef BWD
