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
     history keys   hk[l] (H, W, T/32, hd, 32): tiles of 32 columns, each (hd, 32) contiguous
     history values hv[l] (H, W, T, hd)
   Row b of a step is candidate e = b % E of beam w = b / E. A row attends the TP prefix keys, the first
   n1 history columns of its beam, and (write == 2) its own step columns hist_len + e*S .. + step_len. */

#include <math.h>
#include <stdint.h>
#include <string.h>
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
    float *const *hk, *const *hv;             /* 2 * n_layer each (ping-pong buffer, layer) */
    int W, E, T, S;
    float *x, *ln, *qkv, *y, *ff, *sc;
    int sc_stride;
    sgemm_fn sgemm;
} ttk_ctx;

int ttk_abi_version(void) { return 4; }
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

/* softmax numerators over s[0..n0) and s[off..off+n1) in place (two runs of one row); returns 1 / sum.
   The caller scales the attention output by it (one multiply per output element, not per probability). */
static float softmax2(float *s, int n0, int off, int n1) {
    float m = -INFINITY;
    for (int k = 0; k < 2; k++) {
        float *p = k ? s + off : s;
        int n = k ? n1 : n0, i = 0;
#if TTK_AVX2
        if (n >= 8) {
            __m256 mv = _mm256_set1_ps(-INFINITY);
            for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(p + i));
            float hm = hmax256(mv);
            m = hm > m ? hm : m;
        }
#endif
        for (; i < n; i++) m = p[i] > m ? p[i] : m;
    }
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
/* Scores of one or two query rows (q1 may be NULL) against 32 key columns: key (d, j) at k[d * ld + j].
   Used for the prefix (ld = TPP) and for one history tile (ld = 32). */
static inline void scores32(const float *k, size_t ld, int hd, const float *q0, const float *q1, float *s0,
                            float *s1) {
#if TTK_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    if (q1) {
        for (int d = 0; d < hd; d++, k += ld) {
            __m256 k0 = _mm256_loadu_ps(k), k1 = _mm256_loadu_ps(k + 8);
            __m256 k2 = _mm256_loadu_ps(k + 16), k3 = _mm256_loadu_ps(k + 24);
            __m256 x = _mm256_broadcast_ss(q0 + d), y = _mm256_broadcast_ss(q1 + d);
            a0 = _mm256_fmadd_ps(x, k0, a0); a1 = _mm256_fmadd_ps(x, k1, a1);
            a2 = _mm256_fmadd_ps(x, k2, a2); a3 = _mm256_fmadd_ps(x, k3, a3);
            b0 = _mm256_fmadd_ps(y, k0, b0); b1 = _mm256_fmadd_ps(y, k1, b1);
            b2 = _mm256_fmadd_ps(y, k2, b2); b3 = _mm256_fmadd_ps(y, k3, b3);
        }
        _mm256_storeu_ps(s1, b0); _mm256_storeu_ps(s1 + 8, b1);
        _mm256_storeu_ps(s1 + 16, b2); _mm256_storeu_ps(s1 + 24, b3);
    } else {
        for (int d = 0; d < hd; d++, k += ld) {
            __m256 x = _mm256_broadcast_ss(q0 + d);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k), a0); a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 8), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 16), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 24), a3);
        }
    }
    _mm256_storeu_ps(s0, a0); _mm256_storeu_ps(s0 + 8, a1);
    _mm256_storeu_ps(s0 + 16, a2); _mm256_storeu_ps(s0 + 24, a3);
#else
    for (int j = 0; j < 32; j++) {
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

/* history key (d, col) of a beam's tiled block (tiles of 32 columns, each (hd, 32)) */
static inline size_t kidx(int hd, int col, int d) { return ((size_t)(col >> 5) * hd + d) * 32 + (col & 31); }

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

/* write row r's K/V (qkv row) into its beam's column col (all heads) */
static void write_row(const ttk_ctx *c, float *hk, float *hv, int r, int wi, int col) {
    const int H = c->H, hd = c->hd, C = c->C, T = c->T;
    const float *k = c->qkv + (size_t)r * 3 * C + C, *v = k + C;
    for (int h = 0; h < H; h++) {
        float *kb = hk + ((size_t)h * c->W + wi) * hd * T;
        for (int d = 0; d < hd; d++) kb[kidx(hd, col, d)] = k[h * hd + d];
        memcpy(hv + (((size_t)h * c->W + wi) * T + col) * hd, v + h * hd, sizeof(float) * hd);
    }
}

/* scores of one row against its own step columns col .. col+ns-1 (ns <= 8) of a tiled key block */
static inline void step_scores(const float *kb, int hd, int col, int ns, const float *q, float *s) {
#if TTK_AVX2
    if ((col & 31) + 8 <= 32) { /* the 8 columns sit in one tile */
        const float *k = kb + kidx(hd, col, 0);
        __m256 a = _mm256_setzero_ps(), b = a;
        int d = 0;
        for (; d + 2 <= hd; d += 2, k += 64) {
            a = _mm256_fmadd_ps(_mm256_broadcast_ss(q + d), _mm256_loadu_ps(k), a);
            b = _mm256_fmadd_ps(_mm256_broadcast_ss(q + d + 1), _mm256_loadu_ps(k + 32), b);
        }
        for (; d < hd; d++, k += 32) a = _mm256_fmadd_ps(_mm256_broadcast_ss(q + d), _mm256_loadu_ps(k), a);
        float t[8];
        _mm256_storeu_ps(t, _mm256_add_ps(a, b));
        for (int i = 0; i < ns; i++) s[i] = t[i];
        return;
    }
#endif
    for (int i = 0; i < ns; i++) {
        float a = 0.0f;
        for (int d = 0; d < hd; d++) a += q[d] * kb[kidx(hd, col + i, d)];
        s[i] = a;
    }
}

/* Attention of all rows, in pairs (r, r+1): the pair shares the prefix keys/values (and the history when both
   rows are candidates of one beam). Scores go to two scratch rows: prefix at [0, TPP), then history [TPP, ..). */
static void attention(const ttk_ctx *c, int l, int cur, int b, int e, int write, int hist_len, int step_len) {
    const int H = c->H, hd = c->hd, C = c->C, T = c->T, S = c->S, ss = c->sc_stride, tp = c->tp, tpp = c->tpp;
    const int c3 = 3 * C, n1 = hist_len + (write == 1), ns = write == 2 ? step_len + 1 : 0;
    const float *kp = c->kp[l], *vp = c->vp[l];
    float *hk = c->hk[cur * c->n_layer + l], *hv = c->hv[cur * c->n_layer + l];
    for (int r = 0; r < b; r += 2) {
        const int two = r + 1 < b;
        const int w0 = r / e, w1 = (r + 1) / e, same = two && w0 == w1;
        const int col0 = hist_len + (r % e) * S, col1 = hist_len + ((r + 1) % e) * S;
        if (write) {
            PT(2, write_row(c, hk, hv, r, w0, write == 1 ? hist_len : col0 + step_len));
            if (two) PT(2, write_row(c, hk, hv, r + 1, w1, write == 1 ? hist_len : col1 + step_len));
        }
        for (int h = 0; h < H; h++) {
            const float *q0 = c->qkv + (size_t)r * c3 + h * hd, *q1 = two ? q0 + c3 : NULL;
            float *s0 = c->sc, *s1 = c->sc + ss;
            const float *kph = kp + (size_t)h * hd * tpp, *vph = vp + (size_t)h * tpp * hd;
            const float *kb0 = hk + ((size_t)h * c->W + w0) * hd * T, *kb1 = hk + ((size_t)h * c->W + w1) * hd * T;
            const float *vb0 = hv + ((size_t)h * c->W + w0) * T * hd, *vb1 = hv + ((size_t)h * c->W + w1) * T * hd;
            PT(3, for (int j = 0; j < tp; j += 32) scores32(kph + j, tpp, hd, q0, q1, s0 + j, two ? s1 + j : NULL));
            PT(4, for (int j = 0; j < n1; j += 32) {
                const size_t off = (size_t)(j >> 5) * hd * 32;
                if (same) {
                    scores32(kb0 + off, 32, hd, q0, q1, s0 + tpp + j, s1 + tpp + j);
                } else {
                    scores32(kb0 + off, 32, hd, q0, NULL, s0 + tpp + j, NULL);
                    if (two) scores32(kb1 + off, 32, hd, q1, NULL, s1 + tpp + j, NULL);
                }
            });
            if (ns) {
                step_scores(kb0, hd, col0, ns, q0, s0 + tpp + n1);
                if (two) step_scores(kb1, hd, col1, ns, q1, s1 + tpp + n1);
            }
            float i0, i1 = 0.0f;
            PT(5, i0 = softmax2(s0, tp, tpp, n1 + ns));
            if (two) PT(5, i1 = softmax2(s1, tp, tpp, n1 + ns));
            float *y0 = c->y + (size_t)r * C + h * hd, *y1 = y0 + C;
#if TTK_AVX2
            if (hd == 32) {
                PT(6, {
                    v32 a0 = v32_zero(), a1 = v32_zero();
                    pv32(&a0, two ? &a1 : NULL, s0, two ? s1 : NULL, vph, tp);
                    if (same) {
                        pv32(&a0, &a1, s0 + tpp, s1 + tpp, vb0, n1);
                    } else {
                        pv32(&a0, NULL, s0 + tpp, NULL, vb0, n1);
                        if (two) pv32(&a1, NULL, s1 + tpp, NULL, vb1, n1);
                    }
                    pv32(&a0, NULL, s0 + tpp + n1, NULL, vb0 + (size_t)col0 * 32, ns);
                    v32_store(y0, a0, i0);
                    if (two) {
                        pv32(&a1, NULL, s1 + tpp + n1, NULL, vb1 + (size_t)col1 * 32, ns);
                        v32_store(y1, a1, i1);
                    }
                });
                continue;
            }
#endif
            for (int k = 0; k < 1 + two; k++) {
                float *y = k ? y1 : y0, *sk = k ? s1 : s0;
                const float *vb = k ? vb1 : vb0;
                const float inv = k ? i1 : i0;
                memset(y, 0, sizeof(float) * hd);
                pv_generic(y, sk, vph, tp, hd);
                pv_generic(y, sk + tpp, vb, n1, hd);
                pv_generic(y, sk + tpp + n1, vb + (size_t)(k ? col1 : col0) * hd, ns, hd);
                for (int d = 0; d < hd; d++) y[d] *= inv;
            }
        }
    }
}

/* One decoder step: bins (b,) of dimension pos % D at trajectory position pos -> logits (b, n_bins + 1).
   write: 0 query only, 1 history column hist_len, 2 step token step_len of each candidate. */
void ttk_step(const ttk_ctx *c, const int64_t *bins, int b, int e, int pos, int write, int hist_len, int step_len,
              int cur, float *logits) {
    const int C = c->C, F = c->F, d = pos % c->D;
    for (int r = 0; r < b; r++) {
        const float *t = c->tok + ((size_t)d * c->n_bins + bins[r]) * C, *p = c->pos + (size_t)pos * C;
        float *x = c->x + (size_t)r * C;
        for (int i = 0; i < C; i++) x[i] = t[i] + p[i];
    }
    for (int l = 0; l < c->n_layer; l++) {
        const float *const *p = c->lw + (size_t)l * 12;
        PT(0, layer_norm(c->x, c->ln, b, C, p[0], p[1], c->eps));
        PT(1, fill_rows(c->qkv, p[3], b, 3 * C));
        PT(1, gemm(c, b, 3 * C, C, c->ln, C, p[2], 3 * C, 1.0f, c->qkv, 3 * C));
        attention(c, l, cur, b, e, write, hist_len, step_len);
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

/* After selection: new beam i (buffer dst) = history of beam parent[i] (first hist_len columns of src)
   followed by the step_len step tokens of candidate winners[i] = parent[i] * E + e. */
void ttk_merge(const ttk_ctx *c, const int64_t *parent, const int64_t *winners, int n_beams, int hist_len,
               int step_len, int src, int dst) {
    const int H = c->H, hd = c->hd, T = c->T, W = c->W, E = c->E, S = c->S;
    const int tiles = (hist_len + 31) / 32; /* whole tiles, the last one partly filled */
    for (int l = 0; l < c->n_layer; l++) {
        const float *sk = c->hk[src * c->n_layer + l], *sv = c->hv[src * c->n_layer + l];
        float *dk = c->hk[dst * c->n_layer + l], *dv = c->hv[dst * c->n_layer + l];
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < n_beams; i++) {
                const int pw = (int)parent[i], ei = (int)(winners[i] % E);
                const float *kb = sk + ((size_t)h * W + pw) * hd * T;
                float *kd = dk + ((size_t)h * W + i) * hd * T;
                memcpy(kd, kb, sizeof(float) * (size_t)tiles * hd * 32);
                for (int j = 0; j < step_len; j++)
                    for (int d = 0; d < hd; d++) kd[kidx(hd, hist_len + j, d)] = kb[kidx(hd, hist_len + ei * S + j, d)];
                const float *vb = sv + ((size_t)h * W + pw) * T * hd;
                float *vd = dv + ((size_t)h * W + i) * T * hd;
                memcpy(vd, vb, sizeof(float) * (size_t)hist_len * hd);
                memcpy(vd + (size_t)hist_len * hd, vb + (size_t)(hist_len + ei * S) * hd,
                       sizeof(float) * (size_t)step_len * hd);
            }
        }
    }
}
