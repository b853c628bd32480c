/* Fused CPU decoder step for Trajectory-Transformer beam search (ros_seqplanner/planning/ckernel.py).

   One call runs every transformer block for one token per row (embedding, LayerNorm, qkv, K/V write,
   attention over the shared prefix + the beam's cached history + the candidate's own step tokens,
   softmax, projection, MLP with exact-erf GELU, final LayerNorm and the per-dimension head), so a plan
   pays one foreign call per token instead of ~50 torch ops per layer. Matrix products go to the BLAS
   sgemm that torch itself uses (its address is handed in: no link-time dependency); the per-beam
   attention, softmax, LayerNorm and GELU are written here with AVX2/FMA (generic C otherwise).

   Numerics: fp32 throughout, the same formulas as nets/tt.py; only the summation order and the erf/exp
   polynomials differ from torch (a few float ulps), which the planner's exactness tests cover.

   Layouts (all row-major, float32):
     layer weights  ln1_w, ln1_b, w_qkv (C, 3C; query part pre-scaled by 1/sqrt(hd)), b_qkv, w_o (C, C),
                    b_o, ln2_w, ln2_b, w_fc (C, F), b_fc, w_out (F, C), b_out   (12 pointers per layer)
     prefix keys    kp[l] (H, hd, TPP)   prefix values vp[l] (H, TPP, hd)   (TP valid, zero padded)
   History as a tree: planning step s contributes one segment of L = seg_len columns (its S action/reward tokens,
   then the observation tokens) per surviving beam; beam w's history is segments anc[w][0], anc[w][1], ... of
   steps 0, 1, ..., so beams with a common ancestor share (and read) one copy of it. History column j of beam
   w lives in segment j / L, slot anc[w][j / L], column j % L.
     segment keys   sk[l] (NSEG, H, W, hd, LK)  (keys transposed, LK = L rounded up to 8)
     segment values sv[l] (NSEG, H, W, L, hd)
     candidates     ck[l] (H, W, E, hd, SK) / cv[l] (H, W, E, S, hd): step tokens of the current step
   Row b of a step is candidate e = b % E of beam w = b / E. A row attends the TP prefix keys, the first n1
   history columns of its beam, and (write == 2) its own step tokens 0..step_len. Rows are visited in the
   order given by `order` (beams sorted by ancestry), so shared segments are read while still in cache. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TTK_AVX2 1
#else
#define TTK_AVX2 0
#endif

#ifdef TTK_PROFILE /* development only: cycle counters per section */
#include <x86intrin.h>
static uint64_t ttk_prof_c[12];
#define PT(i, ...) do { uint64_t t_ = __rdtsc(); __VA_ARGS__; ttk_prof_c[i] += __rdtsc() - t_; } while (0)
uint64_t ttk_prof(int i) { return ttk_prof_c[i]; }
#else
#define PT(i, ...) do { __VA_ARGS__; } while (0)
#endif

typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *, const float *,
                         const float *, const int *, const float *, const int *, const float *, float *,
                         const int *);

typedef struct {
    int n_layer, C, H, hd, F, D, n_bins, n1b; /* n1b = n_bins + 1 (head width) */
    float eps;
    const float *const *lw;                   /* n_layer * 12 */
    const float *lnf_w, *lnf_b, *tok, *pos, *head;
    const float *const *kp, *const *vp;       /* n_layer each */
    int tp, tpp;
    float *const *sk, *const *sv, *const *ck, *const *cv; /* n_layer each */
    int32_t *anc, *order;                     /* anc (W, n_seg), order (W,) (ttk_plan updates them) */
    int32_t *runs;                            /* scratch (n_seg, W, 3) + (n_seg,) run counts */
    int32_t *nodes;                           /* scratch (n_seg * W, 4): one row block's nodes */
    float *inv;                               /* scratch (H, W * E) */
    int W, E, S, L, LK, SK, n_seg;           /* LK / SK: key row strides (L / S rounded up to 8) */
    float *x, *ln, *qkv, *y, *ff, *sc;
    int sc_stride;
    sgemm_fn sgemm;
} ttk_ctx;

int ttk_abi_version(void) { return 11; }
int ttk_has_avx2(void) { return TTK_AVX2; }
int ttk_ctx_size(void) { return (int)sizeof(ttk_ctx); }

/* row-major Cm (M x N, ldc) = A (M x K, lda) * B (K x N, ldb) + beta * Cm, through column-major sgemm */
static void gemm(const ttk_ctx *c, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                 float beta, float *cm, int ldc) {
    const float one = 1.0f;
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (beta == 0.0f)
            for (int i = 0; i < m; i++) memset(cm + (size_t)i * ldc, 0, sizeof(float) * n);
        return;
    }
    c->sgemm("N", "N", &n, &m, &k, &one, b, &ldb, a, &lda, &beta, cm, &ldc);
}

/* ------------------------------------------------------------------------------------ elementwise */
#if TTK_AVX2
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* exp: Cephes expf range reduction + degree-5 polynomial (as in sse_mathfun), ~1-2 ulp */
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
/* erf: odd/even rational approximation on [-4, 4] (clamped; |erf| rounds to 1 beyond), ~4e-7 abs */
static inline __m256 erf256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-2.72614225801306e-10f);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.77068142495902e-08f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.10102402082508e-06f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-5.69250639462346e-05f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-7.34990630326855e-04f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.95459980854025e-03f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-1.60960333262415e-02f));
    p = _mm256_mul_ps(p, x);
    __m256 q = _mm256_set1_ps(-1.45660718464996e-05f);
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-2.13374055278905e-04f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-1.68282697438203e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-7.37332916720468e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-1.42647390514189e-02f));
    return _mm256_div_ps(p, q);
}
#endif

static void layer_norm(const float *x, float *out, int rows, int c, const float *w, const float *b, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * c;
        float *o = out + (size_t)r * c;
        int i = 0;
        float s = 0.0f, v = 0.0f;
#if TTK_AVX2
        __m256 a = _mm256_setzero_ps();
        for (; i + 8 <= c; i += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(xr + i));
        s = hsum256(a);
#endif
        for (; i < c; i++) s += xr[i];
        const float mean = s / (float)c;
        i = 0;
#if TTK_AVX2
        __m256 m8 = _mm256_set1_ps(mean), q = _mm256_setzero_ps();
        for (; i + 8 <= c; i += 8) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xr + i), m8);
            q = _mm256_fmadd_ps(d, d, q);
        }
        v = hsum256(q);
#endif
        for (; i < c; i++) v += (xr[i] - mean) * (xr[i] - mean);
        const float rstd = 1.0f / sqrtf(v / (float)c + eps);
        i = 0;
#if TTK_AVX2
        __m256 r8 = _mm256_set1_ps(rstd);
        for (; i + 8 <= c; i += 8) {
            __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), m8), r8);
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
        }
#endif
        for (; i < c; i++) o[i] = (xr[i] - mean) * rstd * w[i] + b[i];
    }
}

static void fill_rows(float *dst, const float *row, int rows, int n) {
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * n, row, sizeof(float) * n);
}

static void add_rows(float *dst, const float *row, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        float *d = dst + (size_t)r * n;
        int i = 0;
#if TTK_AVX2
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_add_ps(_mm256_loadu_ps(d + i), _mm256_loadu_ps(row + i)));
#endif
        for (; i < n; i++) d[i] += row[i];
    }
}

static void gelu_inplace(float *x, size_t n) { /* exact GELU: 0.5 x (1 + erf(x / sqrt 2)) */
    size_t i = 0;
#if TTK_AVX2
    const __m256 h = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), r2 = _mm256_set1_ps(0.70710678118654752f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = erf256(_mm256_mul_ps(v, r2));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(h, v), _mm256_add_ps(one, e)));
    }
#endif
    for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

/* max(m, s[0..n)): row maxima are taken right after each block of scores is written (still in L1) */
static inline float vmax(const float *s, int n, float m) {
    int i = 0;
#if TTK_AVX2
    if (n >= 8) {
        __m256 mv = _mm256_set1_ps(m);
        for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
        m = hmax256(mv);
    }
#endif
    for (; i < n; i++) m = s[i] > m ? s[i] : m;
    return m;
}

/* softmax numerators exp(s - m) over s[0..n0) and s[off..off+n1) in place (two runs of one row, m their max);
   returns 1 / sum. The caller scales the attention output by it (one multiply per output element). */
static float softmax2(float *s, int n0, int off, int n1, float m) {
    float sum = 0.0f;
    for (int k = 0; k < 2; k++) {
        float *p = k ? s + off : s;
        int n = k ? n1 : n0, i = 0;
#if TTK_AVX2
        __m256 mv = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p + i), mv));
            _mm256_storeu_ps(p + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        sum += hsum256(acc);
#endif
        for (; i < n; i++) {
            p[i] = expf(p[i] - m);
            sum += p[i];
        }
    }
    return 1.0f / sum;
}

/* ------------------------------------------------------------------------------------ attention */
/* Scores of one or two query rows (q1 may be NULL) against 8 * nv (nv = 1..4) key columns: key (d, j) at
   k[d * ld + j]. Inlined with a constant nv, so each width gets its own register-only loop. */
#if TTK_AVX2
static inline __attribute__((always_inline)) void scores_v(const float *k, size_t ld, int hd, const float *q0,
                                                           const float *q1, float *s0, float *s1, const int nv) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    if (q1) {
        for (int d = 0; d < hd; d++, k += ld) {
            __m256 x = _mm256_broadcast_ss(q0 + d), y = _mm256_broadcast_ss(q1 + d);
            __m256 k0 = _mm256_loadu_ps(k);
            a0 = _mm256_fmadd_ps(x, k0, a0); b0 = _mm256_fmadd_ps(y, k0, b0);
            if (nv > 1) { __m256 k1 = _mm256_loadu_ps(k + 8); a1 = _mm256_fmadd_ps(x, k1, a1); b1 = _mm256_fmadd_ps(y, k1, b1); }
            if (nv > 2) { __m256 k2 = _mm256_loadu_ps(k + 16); a2 = _mm256_fmadd_ps(x, k2, a2); b2 = _mm256_fmadd_ps(y, k2, b2); }
            if (nv > 3) { __m256 k3 = _mm256_loadu_ps(k + 24); a3 = _mm256_fmadd_ps(x, k3, a3); b3 = _mm256_fmadd_ps(y, k3, b3); }
        }
        _mm256_storeu_ps(s1, b0);
        if (nv > 1) _mm256_storeu_ps(s1 + 8, b1);
        if (nv > 2) _mm256_storeu_ps(s1 + 16, b2);
        if (nv > 3) _mm256_storeu_ps(s1 + 24, b3);
    } else { /* one row: even and odd d accumulate separately (twice the independent FMA chains), then add */
        int d = 0;
        for (; d + 2 <= hd; d += 2, k += 2 * ld) {
            __m256 x = _mm256_broadcast_ss(q0 + d), y = _mm256_broadcast_ss(q0 + d + 1);
            const float *k2 = k + ld;
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k), a0);
            b0 = _mm256_fmadd_ps(y, _mm256_loadu_ps(k2), b0);
            if (nv > 1) { a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 8), a1); b1 = _mm256_fmadd_ps(y, _mm256_loadu_ps(k2 + 8), b1); }
            if (nv > 2) { a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 16), a2); b2 = _mm256_fmadd_ps(y, _mm256_loadu_ps(k2 + 16), b2); }
            if (nv > 3) { a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 24), a3); b3 = _mm256_fmadd_ps(y, _mm256_loadu_ps(k2 + 24), b3); }
        }
        for (; d < hd; d++, k += ld) {
            __m256 x = _mm256_broadcast_ss(q0 + d);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k), a0);
            if (nv > 1) a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 8), a1);
            if (nv > 2) a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 16), a2);
            if (nv > 3) a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 24), a3);
        }
        a0 = _mm256_add_ps(a0, b0);
        if (nv > 1) a1 = _mm256_add_ps(a1, b1);
        if (nv > 2) a2 = _mm256_add_ps(a2, b2);
        if (nv > 3) a3 = _mm256_add_ps(a3, b3);
    }
    _mm256_storeu_ps(s0, a0);
    if (nv > 1) _mm256_storeu_ps(s0 + 8, a1);
    if (nv > 2) _mm256_storeu_ps(s0 + 16, a2);
    if (nv > 3) _mm256_storeu_ps(s0 + 24, a3);
}
#endif

/* scores of one or two rows against n columns of a (hd, ld) key block; writes up to round-up(n, 8) scores */
static void scores_cols(const float *k, size_t ld, int hd, const float *q0, const float *q1, float *s0, float *s1,
                        int n) {
#if TTK_AVX2
    int j = 0;
    for (; j + 32 <= n; j += 32) scores_v(k + j, ld, hd, q0, q1, s0 + j, q1 ? s1 + j : NULL, 4);
    switch ((n - j + 7) / 8) {
        case 1: scores_v(k + j, ld, hd, q0, q1, s0 + j, q1 ? s1 + j : NULL, 1); break;
        case 2: scores_v(k + j, ld, hd, q0, q1, s0 + j, q1 ? s1 + j : NULL, 2); break;
        case 3: scores_v(k + j, ld, hd, q0, q1, s0 + j, q1 ? s1 + j : NULL, 3); break;
        case 4: scores_v(k + j, ld, hd, q0, q1, s0 + j, q1 ? s1 + j : NULL, 4); break;
        default: break; /* nothing left */
    }
#else
    for (int j = 0; j < n; j++) {
        float a = 0.0f, b = 0.0f;
        for (int d = 0; d < hd; d++) {
            a += q0[d] * k[(size_t)d * ld + j];
            if (q1) b += q1[d] * k[(size_t)d * ld + j];
        }
        s0[j] = a;
        if (q1) s1[j] = b;
    }
#endif
}


/* acc[0..hd) += sum_j p[j] * v[j * hd ..] for n rows of v */
static inline void pv_generic(float *acc, const float *p, const float *v, int n, int hd) {
    for (int j = 0; j < n; j++)
        for (int d = 0; d < hd; d++) acc[d] += p[j] * v[(size_t)j * hd + d];
}

#if TTK_AVX2
typedef struct { __m256 a, b, c, d; } v32;
static inline v32 v32_zero(void) { __m256 z = _mm256_setzero_ps(); v32 r = {z, z, z, z}; return r; }
static inline void v32_store(float *y, v32 r, float s) {
    __m256 k = _mm256_set1_ps(s);
    _mm256_storeu_ps(y, _mm256_mul_ps(r.a, k)); _mm256_storeu_ps(y + 8, _mm256_mul_ps(r.b, k));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(r.c, k)); _mm256_storeu_ps(y + 24, _mm256_mul_ps(r.d, k));
}
/* r0 += sum_j p0[j] v_j (and r1 += sum_j p1[j] v_j sharing the loads when p1) over n rows of v (n, 32) */
static inline void pv32(v32 *r0, v32 *r1, const float *p0, const float *p1, const float *v, int n) {
    v32 x = *r0, y = r1 ? *r1 : v32_zero();
    if (p1) {
        for (int j = 0; j < n; j++, v += 32) {
            __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
                   v3 = _mm256_loadu_ps(v + 24);
            __m256 s = _mm256_broadcast_ss(p0 + j), t = _mm256_broadcast_ss(p1 + j);
            x.a = _mm256_fmadd_ps(s, v0, x.a); x.b = _mm256_fmadd_ps(s, v1, x.b);
            x.c = _mm256_fmadd_ps(s, v2, x.c); x.d = _mm256_fmadd_ps(s, v3, x.d);
            y.a = _mm256_fmadd_ps(t, v0, y.a); y.b = _mm256_fmadd_ps(t, v1, y.b);
            y.c = _mm256_fmadd_ps(t, v2, y.c); y.d = _mm256_fmadd_ps(t, v3, y.d);
        }
        *r1 = y;
    } else { /* one row: two interleaved accumulator sets hide the FMA latency */
        v32 z = v32_zero();
        int j = 0;
        for (; j + 2 <= n; j += 2, v += 64) {
            __m256 s = _mm256_broadcast_ss(p0 + j), t = _mm256_broadcast_ss(p0 + j + 1);
            x.a = _mm256_fmadd_ps(s, _mm256_loadu_ps(v), x.a); x.b = _mm256_fmadd_ps(s, _mm256_loadu_ps(v + 8), x.b);
            x.c = _mm256_fmadd_ps(s, _mm256_loadu_ps(v + 16), x.c);
            x.d = _mm256_fmadd_ps(s, _mm256_loadu_ps(v + 24), x.d);
            z.a = _mm256_fmadd_ps(t, _mm256_loadu_ps(v + 32), z.a);
            z.b = _mm256_fmadd_ps(t, _mm256_loadu_ps(v + 40), z.b);
            z.c = _mm256_fmadd_ps(t, _mm256_loadu_ps(v + 48), z.c);
            z.d = _mm256_fmadd_ps(t, _mm256_loadu_ps(v + 56), z.d);
        }
        for (; j < n; j++, v += 32) {
            __m256 s = _mm256_broadcast_ss(p0 + j);
            x.a = _mm256_fmadd_ps(s, _mm256_loadu_ps(v), x.a); x.b = _mm256_fmadd_ps(s, _mm256_loadu_ps(v + 8), x.b);
            x.c = _mm256_fmadd_ps(s, _mm256_loadu_ps(v + 16), x.c);
            x.d = _mm256_fmadd_ps(s, _mm256_loadu_ps(v + 24), x.d);
        }
        x.a = _mm256_add_ps(x.a, z.a); x.b = _mm256_add_ps(x.b, z.b);
        x.c = _mm256_add_ps(x.c, z.c); x.d = _mm256_add_ps(x.d, z.d);
    }
    *r0 = x;
}
#endif

/* write a K/V pair (row r of qkv, all heads) into column col of a (hd, ld) key block / value block per head */
static void write_kv(const ttk_ctx *c, int r, float *k0, size_t kstride, int ld, float *v0, size_t vstride, int col) {
    const int H = c->H, hd = c->hd, C = c->C;
    const float *k = c->qkv + (size_t)r * 3 * C + C, *v = k + C;
    for (int h = 0; h < H; h++) {
        float *kb = k0 + h * kstride + col;
        for (int d = 0; d < hd; d++) kb[(size_t)d * ld] = k[h * hd + d];
        memcpy(v0 + h * vstride + (size_t)col * hd, v + h * hd, sizeof(float) * hd);
    }
}

static inline const float *seg_k(const ttk_ctx *c, int l, int s, int h, int slot) {
    return c->sk[l] + (((size_t)s * c->H + h) * c->W + slot) * c->hd * c->LK;
}
static inline const float *seg_v(const ttk_ctx *c, int l, int s, int h, int slot) {
    return c->sv[l] + (((size_t)s * c->H + h) * c->W + slot) * (size_t)c->L * c->hd;
}
static inline const float *cand_k(const ttk_ctx *c, int l, int h, int w, int e) {
    return c->ck[l] + (((size_t)h * c->W + w) * c->E + e) * c->hd * c->SK;
}
static inline const float *cand_v(const ttk_ctx *c, int l, int h, int w, int e) {
    return c->cv[l] + (((size_t)h * c->W + w) * c->E + e) * (size_t)c->S * c->hd;
}

static void store_kv(const ttk_ctx *c, int l, int r, int w, int e, int write, int hist_len, int step_len) {
    const int hd = c->hd;
    if (write == 2) {
        write_kv(c, r, (float *)cand_k(c, l, 0, w, e), (size_t)c->W * c->E * hd * c->SK, c->SK,
                 (float *)cand_v(c, l, 0, w, e), (size_t)c->W * c->E * c->S * hd, step_len);
    } else {
        const int s = hist_len / c->L;  /* the beam's own current segment: anc[w][s] == w */
        write_kv(c, r, (float *)seg_k(c, l, s, 0, w), (size_t)c->W * hd * c->LK, c->LK, (float *)seg_v(c, l, s, 0, w),
                 (size_t)c->W * c->L * hd, hist_len % c->L);
    }
}

#if TTK_AVX2
static inline v32 v32_load(const float *y) {
    v32 r = {_mm256_loadu_ps(y), _mm256_loadu_ps(y + 8), _mm256_loadu_ps(y + 16), _mm256_loadu_ps(y + 24)};
    return r;
}
#endif

/* y[0..hd) (+)= sum_j p[j] v_j over n rows of v; with p1: also y1 from p1 sharing the loads. acc: add to y. */
static inline void pv_rows(float *y0, float *y1, const float *p0, const float *p1, const float *v, int n, int hd,
                           int acc) {
#if TTK_AVX2
    if (hd == 32) {
        v32 a0 = acc ? v32_load(y0) : v32_zero(), a1 = p1 ? (acc ? v32_load(y1) : v32_zero()) : v32_zero();
        pv32(&a0, p1 ? &a1 : NULL, p0, p1, v, n);
        v32_store(y0, a0, 1.0f);
        if (p1) v32_store(y1, a1, 1.0f);
        return;
    }
#endif
    for (int m = 0; m < (p1 ? 2 : 1); m++) {
        float *y = m ? y1 : y0;
        if (!acc) memset(y, 0, sizeof(float) * hd);
        pv_generic(y, m ? p1 : p0, v, n, hd);
    }
}

/* Software prefetch of a block that is read next: history blocks are scattered 3-4 KiB pieces (one page or
   less), which the hardware prefetchers only pick up after several misses. */
static inline void prefetch(const void *p, size_t bytes) {
#if defined(__GNUC__)
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o, 0, 3);
#else
    (void)p; (void)bytes;
#endif
}

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ROWBLOCK 64 /* rows whose scores are kept at once (64 x ~600 floats: L2-resident) */

/* Group the beams (in ancestry order) by the segment they descend from at each history step: runs
   (slot, first, end) of consecutive order positions; runs[n_seg * W * 3 + s] = number of runs of step s. */
static void make_runs(const ttk_ctx *c, int nseg) {
    int32_t *cnt = c->runs + (size_t)c->n_seg * c->W * 3;
    for (int s = 0; s < nseg; s++) {
        int32_t *r = c->runs + (size_t)s * c->W * 3;
        int n = 0;
        for (int k = 0; k < c->W; k++) {
            const int slot = c->anc[(size_t)c->order[k] * c->n_seg + s];
            if (n && r[(n - 1) * 3] == slot) {
                r[(n - 1) * 3 + 2] = k + 1;
            } else {
                r[n * 3] = slot; r[n * 3 + 1] = k; r[n * 3 + 2] = k + 1;
                n++;
            }
        }
        cnt[s] = n;
    }
}

/* The history nodes the rows [k0, k1) (ancestry order) descend from, in visiting order: step s ascending, then
   runs: (s, slot, first row, end row) with the row range clipped to the block. Returns their number. */
static int block_nodes(const ttk_ctx *c, int nseg, int e, int k0, int k1, int32_t *nodes) {
    const int32_t *cnt = c->runs + (size_t)c->n_seg * c->W * 3;
    int n = 0;
    for (int s = 0; s < nseg; s++) {
        const int32_t *run = c->runs + (size_t)s * c->W * 3;
        for (int i = 0; i < cnt[s]; i++, run += 3) {
            const int ka = MAX(run[1] * e, k0), kz = MIN(run[2] * e, k1);
            if (ka >= kz) continue;
            nodes[n * 4] = s; nodes[n * 4 + 1] = run[0]; nodes[n * 4 + 2] = ka; nodes[n * 4 + 3] = kz;
            n++;
        }
    }
    return n;
}

#define PREFETCH_AHEAD 3 /* nodes: a node's compute (~0.1-1 us) is shorter than a DRAM round trip per block */

/* Tree attention. Rows are indexed k in ancestry order (row(k) = order[k / e] * e + k % e), in blocks of
   ROWBLOCK rows (a block's scores stay in L2). Each history segment node is read once per head for all the
   block's rows below it, two rows per pass, the next nodes prefetched. Pass 1 puts every row's scores in
   scratch (prefix at [0, TPP), history at TPP + column, own step tokens after) and tracks the row maxima; then
   one exp pass per row; pass 2 accumulates the values node by node into y and scales by 1 / sum. */
static void attention(const ttk_ctx *c, int l, int b, int e, int write, int hist_len, int step_len) {
    const int H = c->H, hd = c->hd, C = c->C, ss = c->sc_stride, tp = c->tp, tpp = c->tpp, L = c->L;
    const int c3 = 3 * C, n1 = hist_len + (write == 1), ns = write == 2 ? step_len + 1 : 0;
    const int nseg = (n1 + L - 1) / L;
    const size_t kbytes = sizeof(float) * c->LK * hd, vbytes = sizeof(float) * (size_t)L * hd;
    int32_t *nodes = c->nodes;
#define ROW(k) (c->order[(k) / e] * e + (k) % e)
#define SC(k) (c->sc + (size_t)((k) - k0) * ss)
    if (write)
        for (int k = 0; k < b; k++) {
            const int r = ROW(k);
            PT(2, store_kv(c, l, r, r / e, r % e, write, hist_len, step_len));
        }
    for (int k0 = 0; k0 < b; k0 += ROWBLOCK) {
        const int k1 = MIN(b, k0 + ROWBLOCK), nn = block_nodes(c, nseg, e, k0, k1, nodes);
        for (int h = 0; h < H; h++) {
            float *inv = c->inv + (size_t)h * b;
            const float *kph = c->kp[l] + (size_t)h * hd * tpp, *vph = c->vp[l] + (size_t)h * tpp * hd;
            for (int i = 0; i < PREFETCH_AHEAD && i < nn; i++)
                prefetch(seg_k(c, l, nodes[i * 4], h, nodes[i * 4 + 1]), kbytes);
            PT(3, for (int k = k0; k < k1; k += 2) {
                const int two = k + 1 < k1;
                const float *q0 = c->qkv + (size_t)ROW(k) * c3 + h * hd;
                const float *q1 = two ? c->qkv + (size_t)ROW(k + 1) * c3 + h * hd : NULL;
                scores_cols(kph, tpp, hd, q0, q1, SC(k), two ? SC(k + 1) : NULL, tp);
                inv[k] = vmax(SC(k), tp, -INFINITY); /* running row max until the softmax */
                if (two) inv[k + 1] = vmax(SC(k + 1), tp, -INFINITY);
            });
            PT(4, for (int i = 0; i < nn; i++) {
                const int32_t *nd = nodes + i * 4;
                const int s = nd[0], cols = n1 - s * L < L ? n1 - s * L : L, pos = tpp + s * L;
                if (i + PREFETCH_AHEAD < nn)
                    prefetch(seg_k(c, l, nd[PREFETCH_AHEAD * 4], h, nd[PREFETCH_AHEAD * 4 + 1]), kbytes);
                const float *kt = seg_k(c, l, s, h, nd[1]);
                for (int k = nd[2]; k < nd[3]; k += 2) {
                    const int two = k + 1 < nd[3];
                    const float *q0 = c->qkv + (size_t)ROW(k) * c3 + h * hd;
                    const float *q1 = two ? c->qkv + (size_t)ROW(k + 1) * c3 + h * hd : NULL;
                    scores_cols(kt, c->LK, hd, q0, q1, SC(k) + pos, two ? SC(k + 1) + pos : NULL, cols);
                    inv[k] = vmax(SC(k) + pos, cols, inv[k]);
                    if (two) inv[k + 1] = vmax(SC(k + 1) + pos, cols, inv[k + 1]);
                }
            });
            for (int i = 0; i < PREFETCH_AHEAD && i < nn; i++)
                prefetch(seg_v(c, l, nodes[i * 4], h, nodes[i * 4 + 1]), vbytes);
            for (int k = k0; k < k1; k++) {
                float *sk = SC(k);
                if (ns) {
                    const int r = ROW(k);
                    scores_cols(cand_k(c, l, h, r / e, r % e), c->SK, hd, c->qkv + (size_t)r * c3 + h * hd, NULL,
                                sk + tpp + n1, NULL, ns);
                    inv[k] = vmax(sk + tpp + n1, ns, inv[k]);
                }
                PT(5, inv[k] = softmax2(sk, tp, tpp, n1 + ns, inv[k]));
            }
            PT(6, {
                for (int k = k0; k < k1; k += 2) { /* prefix (+ own step tokens) first: writes y */
                    const int two = k + 1 < k1, r0 = ROW(k), r1 = two ? ROW(k + 1) : r0;
                    float *y0 = c->y + (size_t)r0 * C + h * hd, *y1 = c->y + (size_t)r1 * C + h * hd;
                    float *p0 = SC(k), *p1 = two ? SC(k + 1) : NULL;
                    pv_rows(y0, two ? y1 : NULL, p0, p1, vph, tp, hd, 0);
                    if (ns) {
                        pv_rows(y0, NULL, p0 + tpp + n1, NULL, cand_v(c, l, h, r0 / e, r0 % e), ns, hd, 1);
                        if (two) pv_rows(y1, NULL, p1 + tpp + n1, NULL, cand_v(c, l, h, r1 / e, r1 % e), ns, hd, 1);
                    }
                }
                for (int i = 0; i < nn; i++) {
                    const int32_t *nd = nodes + i * 4;
                    const int s = nd[0], cols = n1 - s * L < L ? n1 - s * L : L, pos = tpp + s * L;
                    if (i + PREFETCH_AHEAD < nn)
                        prefetch(seg_v(c, l, nd[PREFETCH_AHEAD * 4], h, nd[PREFETCH_AHEAD * 4 + 1]), vbytes);
                    const float *vt = seg_v(c, l, s, h, nd[1]);
                    for (int k = nd[2]; k < nd[3]; k += 2) {
                        const int two = k + 1 < nd[3];
                        float *y0 = c->y + (size_t)ROW(k) * C + h * hd;
                        float *y1 = two ? c->y + (size_t)ROW(k + 1) * C + h * hd : NULL;
                        pv_rows(y0, y1, SC(k) + pos, two ? SC(k + 1) + pos : NULL, vt, cols, hd, 1);
                    }
                }
                for (int k = k0; k < k1; k++) {
                    float *y = c->y + (size_t)ROW(k) * C + h * hd;
                    for (int d = 0; d < hd; d++) y[d] *= inv[k];
                }
            });
        }
    }
#undef SC
#undef ROW
}

/* One decoder step: bins (b,) of dimension pos % D at trajectory position pos -> logits (b, n_bins + 1).
   write: 0 query only, 1 history column hist_len, 2 step token step_len of each candidate. */
void ttk_step(const ttk_ctx *c, const int64_t *bins, int b, int e, int pos, int write, int hist_len, int step_len,
              float *logits) {
    const int C = c->C, F = c->F, d = pos % c->D;
    for (int r = 0; r < b; r++) {
        const float *t = c->tok + ((size_t)d * c->n_bins + bins[r]) * C, *p = c->pos + (size_t)pos * C;
        float *x = c->x + (size_t)r * C;
        for (int i = 0; i < C; i++) x[i] = t[i] + p[i];
    }
    make_runs(c, (hist_len + (write == 1) + c->L - 1) / c->L);
    for (int l = 0; l < c->n_layer; l++) {
        const float *const *p = c->lw + (size_t)l * 12;
        PT(0, layer_norm(c->x, c->ln, b, C, p[0], p[1], c->eps));
        PT(1, fill_rows(c->qkv, p[3], b, 3 * C));
        PT(1, gemm(c, b, 3 * C, C, c->ln, C, p[2], 3 * C, 1.0f, c->qkv, 3 * C));
        attention(c, l, b, e, write, hist_len, step_len);
        PT(8, gemm(c, b, C, C, c->y, C, p[4], C, 1.0f, c->x, C));
        PT(0, add_rows(c->x, p[5], b, C));
        PT(0, layer_norm(c->x, c->ln, b, C, p[6], p[7], c->eps));
        PT(8, fill_rows(c->ff, p[9], b, F));
        PT(8, gemm(c, b, F, C, c->ln, C, p[8], F, 1.0f, c->ff, F));
        PT(9, gelu_inplace(c->ff, (size_t)b * F));
        PT(8, gemm(c, b, C, F, c->ff, F, p[10], C, 1.0f, c->x, C));
        PT(0, add_rows(c->x, p[11], b, C));
    }
    layer_norm(c->x, c->ln, b, C, c->lnf_w, c->lnf_b, c->eps);
    PT(10, gemm(c, b, c->n1b, C, c->ln, C, c->head + (size_t)d * C * c->n1b, c->n1b, 0.0f, logits, c->n1b));
}

/* order = beams sorted by ancestry anc[w][0..t] (np.lexsort with anc[:, 0] primary; rows are unique) */
static void ancestry_order(const ttk_ctx *c, int t) {
    int32_t *o = c->order;
    for (int i = 0; i < c->W; i++) o[i] = i;
    for (int i = 1; i < c->W; i++) { /* insertion sort: few beams, and the order is mostly kept step to step */
        const int32_t v = o[i], *rv = c->anc + (size_t)v * c->n_seg;
        int j = i - 1;
        for (; j >= 0; j--) {
            const int32_t *rj = c->anc + (size_t)o[j] * c->n_seg;
            int s = 0;
            while (s < t && rj[s] == rv[s]) s++;
            if (rj[s] <= rv[s]) break;
            o[j + 1] = o[j];
        }
        o[j + 1] = v;
    }
}

/* After selection at planning step t = hist_len / L: new beam i continues the ancestry of beam winners[i] / E
   (anc rows copied, anc[i][t] = i, order recomputed) and its segment t starts with the step tokens of candidate
   winners[i]. Returns 0, or -1 if scratch memory could not be allocated. */
int ttk_merge(const ttk_ctx *c, const int64_t *winners, int n_beams, int hist_len, int step_len) {
    const int H = c->H, hd = c->hd, E = c->E, t = hist_len / c->L;
    int32_t *anc = malloc(sizeof(int32_t) * (size_t)n_beams * c->n_seg);
    if (!anc) return -1;
    for (int i = 0; i < n_beams; i++) {
        memcpy(anc + (size_t)i * c->n_seg, c->anc + (size_t)(winners[i] / E) * c->n_seg, sizeof(int32_t) * t);
        anc[(size_t)i * c->n_seg + t] = i;
    }
    memcpy(c->anc, anc, sizeof(int32_t) * (size_t)n_beams * c->n_seg);
    free(anc);
    ancestry_order(c, t);
    for (int l = 0; l < c->n_layer; l++) {
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < n_beams; i++) {
                const int w = (int)(winners[i] / E), e = (int)(winners[i] % E);
                float *kd = (float *)seg_k(c, l, t, h, i);
                const float *ks = cand_k(c, l, h, w, e);
                for (int d = 0; d < hd; d++)
                    memcpy(kd + (size_t)d * c->LK, ks + (size_t)d * c->SK, sizeof(float) * step_len);
                memcpy((float *)seg_v(c, l, t, h, i), cand_v(c, l, h, w, e), sizeof(float) * (size_t)step_len * hd);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
   The whole beam search in C (ttk_plan): the same algorithm and token-choice rules as BeamPlanner.plan and
   planning/sampling.py, so a plan costs no Python between tokens. Each helper below mirrors one torch function
   there (named in its comment); they agree to float rounding (softmax / cumsum summation order), which only
   matters for a token sitting exactly on a sampling boundary (the exactness tests compare whole plans). */

typedef struct {
    int H, W, E, A, O, logp;  /* horizon, beams, expansions, act / obs dims; logp: score = cumulative log-prob */
    int use_cdf, topk;        /* cdf filter on/off; top-k filter (0: off) */
    float cdf;
    int pos0;                 /* trajectory position of the first planned token */
    const float *u;           /* (H, W*E, A) uniforms */
    const float *disc;        /* (H + 1,) discount^k */
    const float *mid_r, *mid_v; /* (n_bins,) bin midpoints of the reward / value dimensions */
    const float *logits0;     /* (n_bins + 1,) logits at the last prefix position */
    const int64_t *first_obs; /* (O,) bins of the current observation */
    int64_t *out_bins;        /* (H, D) the best beam's bins */
    float *out_score;         /* its score */
    const int64_t *obs_lo, *obs_hi; /* (O,) lowest / highest in-bounds bin per observation dim; NULL: no bounds */
    int32_t *out_viol;        /* the best beam's count of predicted observation bins out of bounds */
    double deadline;          /* CLOCK_MONOTONIC seconds: stop after the first transition that ends past it (0: none) */
    int32_t *out_h;           /* transitions planned: H, or fewer when the deadline cut the search */
} ttk_plan_args;

static double monotonic_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int ttk_plan_args_size(void) { return (int)sizeof(ttk_plan_args); }

/* softmax over n logits into p; returns nothing (p sums to ~1). torch.softmax: max, exp(x - max), * 1/sum */
static void softmax_row(const float *x, int n, float *p) {
    float m = x[0], s = 0.0f;
    int i = 0;
    for (int k = 1; k < n; k++) m = x[k] > m ? x[k] : m;
#if TTK_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(m)));
        _mm256_storeu_ps(p + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    s = hsum256(acc);
#endif
    for (; i < n; i++) { p[i] = expf(x[i] - m); s += p[i]; }
    const float inv = 1.0f / s;
    for (i = 0; i < n; i++) p[i] *= inv;
}

/* greedy_bins: first index of the maximum over the n bins (a NaN never wins, the result stays in range) */
static int64_t argmax_row(const float *x, int n) {
    int64_t k = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[k]) k = i;
    return k;
}

/* token_logp: log_softmax over the n bins + stop at index k */
static float logp_row(const float *x, int n1, int64_t k) {
    float m = x[0], s = 0.0f;
    for (int i = 1; i < n1; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n1; i++) s += expf(x[i] - m);
    return (x[k] - m) - logf(s);
}

/* expectation: unfiltered softmax over bins + stop, stop dropped without renormalising, dotted with mids */
static float expect_row(const float *x, int n, const float *mid, float *p) {
    softmax_row(x, n + 1, p);
    float e = 0.0f;
    for (int i = 0; i < n; i++) e += p[i] * mid[i];
    return e;
}

/* A binary max-heap of floats, for the largest few of a row without sorting it all. */
static void heap_down(float *h, int n, int i) {
    const float v = h[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] > h[c]) c++;
        if (!(h[c] > v)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
}

static void heap_make(float *h, const float *p, int n) {
    memcpy(h, p, sizeof(float) * n);
    for (int i = n / 2 - 1; i >= 0; i--) heap_down(h, n, i);
}

static float heap_pop(float *h, int *n) { /* the largest; *n > 0 */
    const float top = h[0];
    h[0] = h[--*n];
    heap_down(h, *n, 0);
    return top;
}

/* sample_bins: inverse CDF over the filtered probabilities of the n bins with uniform u.
   cdf filter (filter_mask): sort ascending, cut = the largest index whose cumulative mass is < cdf (0 if none),
   keep p > srt[cut]. Here without a full sort: cum_asc(i) = S - (sum of the n-1-i largest), so with j0 the
   smallest j whose j largest sum to more than S - cdf, srt[cut] is the (j0+1)-th largest (the smallest if no
   j < n qualifies): pop the largest from a heap until then (few pops for a peaked distribution).
   top-k: keep p >= the k-th largest. Nothing kept: keep all. Inverse CDF as sample_bins. */
static int64_t sample_row(const float *x, int n, float u, const ttk_plan_args *a, float *p, unsigned char *keep) {
    float *q = p + n; /* heap, then the running sum of the kept probabilities */
    int any = 0, m;
    softmax_row(x, n, p);
    memset(keep, 1, n);
    if (a->use_cdf) {
        double tot = 0.0, top = 0.0;
        for (int i = 0; i < n; i++) tot += p[i];
        const double target = tot - (double)a->cdf;
        float thr = p[0];
        int found = 0;
        heap_make(q, p, m = n);
        while (m > 0 && !found) {
            const float v = heap_pop(q, &m);
            if (top > target) { thr = v; found = 1; } else { top += v; }
        }
        if (!found) for (int i = 0; i < n; i++) thr = p[i] < thr ? p[i] : thr;
        for (int i = 0; i < n; i++) keep[i] = p[i] > thr;
    }
    if (a->topk > 0) {
        float kth = 0.0f;
        heap_make(q, p, m = n);
        for (int j = 0; j < a->topk && m > 0; j++) kth = heap_pop(q, &m);
        for (int i = 0; i < n; i++) keep[i] &= p[i] >= kth;
    }
    for (int i = 0; i < n; i++) any |= keep[i];
    double run = 0.0;
    for (int i = 0; i < n; i++) { run += (keep[i] || !any) ? p[i] : 0.0f; q[i] = (float)run; } /* torch's CPU
                                                                      cumsum accumulates in double */
    const float target = (1.0f - u) * q[n - 1];
    int64_t cnt = 0;
    for (int i = 0; i < n; i++) cnt += q[i] < target;
    return cnt < n ? cnt : n - 1;
}

typedef struct { float s; int i, v; } scored; /* score, candidate index, violations (bounded plans) */

static int by_score_desc(const void *x, const void *y) { /* BeamPlanner keep_order: descending; ties: lower index */
    const scored *a = x, *b = y;
    const int na = isnan(a->s), nb = isnan(b->s); /* a NaN score ranks last (a consistent order for qsort) */
    if (na != nb) return na - nb;
    if (!na && a->s != b->s) return a->s < b->s ? 1 : -1;
    return (a->i > b->i) - (a->i < b->i);
}

static int by_viol_score(const void *x, const void *y) { /* BeamPlanner keep_order: fewest violations first */
    const scored *a = x, *b = y;
    if (a->v != b->v) return a->v < b->v ? -1 : 1;
    return by_score_desc(x, y);
}

static int by_index(const void *x, const void *y) {
    const scored *a = x, *b = y;
    return (a->i > b->i) - (a->i < b->i);
}

/* One receding-horizon plan (BeamPlanner.plan): H planning steps of expand -> sample actions -> greedy reward
   and value -> score -> keep the top W -> greedy next observation. The prefix must be set and the buffers
   allocated for (W, E) by the caller. Returns 0, or -1 if scratch memory could not be allocated. */
int ttk_plan(const ttk_ctx *c, const ttk_plan_args *a) {
    const int H = a->H, W = a->W, E = a->E, A = a->A, O = a->O, D = c->D, n = c->n_bins, n1 = c->n1b;
    const int B = W * E, R = H + 1, ST = A + 2;
    float *lg = malloc(sizeof(float) * ((size_t)B * n1 + (size_t)W * n1 + 2 * (size_t)n1 + (size_t)B * (R + 2)
                                        + 2 * (size_t)W * R + W));
    int64_t *i64 = malloc(sizeof(int64_t) * ((size_t)B * (ST + 1) + 2 * (size_t)W * H * D + W));
    scored *sel = malloc(sizeof(scored) * B);
    unsigned char *keep = malloc((size_t)n1);
    int *vbuf = calloc(2 * (size_t)W, sizeof(int)), *viol = vbuf, *viol2 = vbuf + W; /* violations per beam */
    const int bounded = a->obs_lo != NULL;
    if (!lg || !i64 || !sel || !keep || !vbuf) {
        free(lg); free(i64); free(sel); free(keep); free(vbuf);
        return -1;
    }
    float *lgw = lg + (size_t)B * n1, *p = lgw + (size_t)W * n1, *cs = p + 2 * (size_t)n1, *rhat = cs + B;
    float *crew = rhat + B, *rew = crew + (size_t)B * R, *rew2 = rew + (size_t)W * R, *score = rew2 + (size_t)W * R;
    int64_t *tok = i64, *st = tok + B, *bins = st + (size_t)B * ST, *bins2 = bins + (size_t)W * H * D;
    int64_t *win = bins2 + (size_t)W * H * D;
    int pos = a->pos0, hist = 0, done = H;

    memset(bins, 0, sizeof(int64_t) * (size_t)W * H * D);
    memset(rew, 0, sizeof(float) * (size_t)W * R);
    memset(score, 0, sizeof(float) * W);
    for (int w = 0; w < W; w++) {
        memcpy(lgw + (size_t)w * n1, a->logits0, sizeof(float) * n1);
        for (int k = 0; k < O; k++) bins[(size_t)w * H * D + k] = a->first_obs[k];
    }
    for (int t = 0; t < H; t++) {
        /* expand: candidate b = beam b / E */
        for (int b = 0; b < B; b++) {
            memcpy(lg + (size_t)b * n1, lgw + (size_t)(b / E) * n1, sizeof(float) * n1);
            cs[b] = a->logp ? score[b / E] : 0.0f;
        }
        for (int j = 0; j < A; j++) { /* actions: sampled from the filtered distribution */
            for (int b = 0; b < B; b++) {
                const float *x = lg + (size_t)b * n1;
                tok[b] = st[(size_t)b * ST + j] = sample_row(x, n, a->u[((size_t)t * B + b) * A + j], a, p, keep);
                if (a->logp) cs[b] += logp_row(x, n1, tok[b]);
            }
            ttk_step(c, tok, B, E, pos++, 2, hist, j, lg);
        }
        for (int b = 0; b < B; b++) { /* reward: greedy token, expectation for the score */
            const float *x = lg + (size_t)b * n1;
            tok[b] = st[(size_t)b * ST + A] = argmax_row(x, n);
            if (a->logp) cs[b] += logp_row(x, n1, tok[b]);
            else rhat[b] = expect_row(x, n, a->mid_r, p);
        }
        ttk_step(c, tok, B, E, pos++, 2, hist, A, lg);
        for (int b = 0; b < B; b++) { /* value: greedy token; score */
            const float *x = lg + (size_t)b * n1;
            const int64_t v = argmax_row(x, n);
            st[(size_t)b * ST + A + 1] = v;
            if (a->logp) {
                cs[b] += logp_row(x, n1, v);
            } else {
                float *cr = crew + (size_t)b * R;
                memcpy(cr, rew + (size_t)(b / E) * R, sizeof(float) * R);
                cr[t] = rhat[b];
                cr[t + 1] = expect_row(x, n, a->mid_v, p);
                float s = 0.0f;
                for (int k = 0; k < R; k++) s += cr[k] * a->disc[k];
                cs[b] = s;
            }
        }
        /* keep the top W, in candidate order (BeamPlanner.plan) */
        for (int b = 0; b < B; b++) { sel[b].s = cs[b]; sel[b].i = b; sel[b].v = viol[b / E]; }
        qsort(sel, B, sizeof(scored), by_viol_score); /* violations stay 0 without bounds */
        qsort(sel, W, sizeof(scored), by_index);
        for (int i = 0; i < W; i++) {
            const int b = sel[i].i, par = b / E;
            score[i] = sel[i].s;
            viol2[i] = viol[par];
            win[i] = b;
            memcpy(bins2 + (size_t)i * H * D, bins + (size_t)par * H * D, sizeof(int64_t) * H * D);
            memcpy(bins2 + ((size_t)i * H + t) * D + O, st + (size_t)b * ST, sizeof(int64_t) * ST);
            if (!a->logp) memcpy(rew2 + (size_t)i * R, crew + (size_t)b * R, sizeof(float) * R);
        }
        { int64_t *x = bins; bins = bins2; bins2 = x; }
        { float *x = rew; rew = rew2; rew2 = x; }
        { int *x = viol; viol = viol2; viol2 = x; }
        if (t == H - 1) break;
        if (a->deadline > 0.0 && monotonic_s() >= a->deadline) { /* a plan of t + 1 transitions, as with H = t + 1 */
            done = t + 1;
            break;
        }
        if (ttk_merge(c, win, W, hist, A + 1) != 0) { /* the winners' ancestry and step tokens */
            free(lg); free(i64); free(sel); free(keep); free(vbuf);
            return -1;
        }
        hist += A + 1;
        /* next observation, greedy, at beam width: first the value token (query only) */
        for (int w = 0; w < W; w++) tok[w] = bins[((size_t)w * H + t) * D + D - 1];
        ttk_step(c, tok, W, 1, pos++, 0, hist, 0, lgw);
        for (int k = 0; k < O; k++) {
            for (int w = 0; w < W; w++) {
                const float *x = lgw + (size_t)w * n1;
                tok[w] = bins[((size_t)w * H + t + 1) * D + k] = argmax_row(x, n);
                if (a->logp) score[w] += logp_row(x, n1, tok[w]);
            }
            ttk_step(c, tok, W, 1, pos++, 1, hist++, 0, lgw);
        }
        if (bounded) /* count the predicted observation's bins out of bounds */
            for (int w = 0; w < W; w++)
                for (int k = 0; k < O; k++) {
                    const int64_t x = bins[((size_t)w * H + t + 1) * D + k];
                    viol[w] += x < a->obs_lo[k] || x > a->obs_hi[k];
                }
    }
    for (int w = 0; w < W; w++) { sel[w].s = score[w]; sel[w].i = w; sel[w].v = viol[w]; }
    qsort(sel, W, sizeof(scored), by_viol_score); /* keep_order's first: the first maximum, NaN last */
    const int best = sel[0].i;
    memcpy(a->out_bins, bins + (size_t)best * H * D, sizeof(int64_t) * H * D);
    *a->out_score = score[best];
    if (a->out_viol) *a->out_viol = viol[best];
    if (a->out_h) *a->out_h = done;
    free(lg); free(i64); free(sel); free(keep); free(vbuf);
    return 0;
}

/* sample_row over rows (tests: the C sampler against planning/sampling.py::sample_bins). logits (rows, ld),
   the first n columns are the bins. Returns 0, or -1 if scratch memory could not be allocated. */
int ttk_sample_rows(const float *logits, int rows, int n, int ld, const float *u, int use_cdf, float cdf, int topk,
                    int64_t *out) {
    ttk_plan_args a;
    memset(&a, 0, sizeof(a));
    a.use_cdf = use_cdf; a.cdf = cdf; a.topk = topk;
    float *p = malloc(sizeof(float) * 2 * (size_t)n);
    unsigned char *keep = malloc((size_t)n);
    if (!p || !keep) { free(p); free(keep); return -1; }
    for (int r = 0; r < rows; r++) out[r] = sample_row(logits + (size_t)r * ld, n, u[r], &a, p, keep);
    free(p); free(keep);
    return 0;
}
