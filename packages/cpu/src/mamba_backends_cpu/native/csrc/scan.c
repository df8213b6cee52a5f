/* Mamba1 selective scan kernels: mb_scan_f32 (contiguous, one sequence per item) and
   mb_scan_varlen (vLLM's varlen layout through strides, in place). The AVX-512 block kernel
   sits under MB_V512; every other target takes the portable loop. */
#include "mb_common.h"

/* Mamba1 scan: u, dt, y (T, Dm); B, C (T, G, N); A (Dm, N); h (S, Dm, N) in/out.
   Work item = (sequence, group, block of DB channels); tokens in order inside an item.
   The block's state is kept transposed, (N, DB), so the inner loop runs over channels. */
#define DB 16
int mb_scan_f32(const MbScanArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    const float *u = a->u, *dt = a->dt, *A = a->A, *B = a->B, *C = a->C;
    float *h = a->h, *y = a->y;
    const int64_t* qsl = a->qsl;
    const int64_t S = a->S, Dm = a->Dm, N = a->N, G = a->G;
    const int nthreads = (int)a->nthreads;
    int failed = 0;
    const int64_t Dg = Dm / G;
    const int64_t nblk = (Dg + DB - 1) / DB;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = 0; item < S * G * nblk; ++item) {
        const int64_t s = item / (G * nblk), g = (item / nblk) % G;
        const int64_t d0 = g * Dg + (item % nblk) * DB;
        const int64_t d1 = d0 + DB < (g + 1) * Dg ? d0 + DB : (g + 1) * Dg;
        const int64_t nd = d1 - d0;
        float* hl = (float*)malloc(sizeof(float) * (size_t)(2 * N * DB));
        if (!hl) {
            _Pragma("omp atomic write")
            failed = 1;
            continue;
        }
        float* al = hl + N * DB;
        float* hs = h + s * Dm * N;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < DB; ++k) {
                hl[n * DB + k] = k < nd ? hs[(d0 + k) * N + n] : 0.0f;
                al[n * DB + k] = k < nd ? A[(d0 + k) * N + n] : 0.0f;
            }
        for (int64_t t = qsl[s]; t < qsl[s + 1]; ++t) {
            float dtv[DB], xu[DB], acc[DB];
            for (int64_t k = 0; k < DB; ++k) {
                dtv[k] = k < nd ? dt[t * Dm + d0 + k] : 0.0f;
                xu[k] = k < nd ? dtv[k] * u[t * Dm + d0 + k] : 0.0f;
                acc[k] = 0.0f;
            }
            const float* b = B + (t * G + g) * N;
            const float* c = C + (t * G + g) * N;
            for (int64_t n = 0; n < N; ++n) {
                const float bn = b[n], cn = c[n];
                float* hn = hl + n * DB;
                const float* an = al + n * DB;
                #pragma omp simd
                for (int64_t k = 0; k < DB; ++k) {
                    float v = mb_exp(dtv[k] * an[k]) * hn[k] + xu[k] * bn;
                    hn[k] = v;
                    acc[k] += v * cn;
                }
            }
            for (int64_t k = 0; k < nd; ++k) y[t * Dm + d0 + k] = acc[k];
        }
        for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < nd; ++k) hs[(d0 + k) * N + n] = hl[n * DB + k];
        free(hl);
    }
    return failed ? MB_ENOMEM : MB_OK;
}

#ifdef MB_V512
/* 16 token values of one channel into a vector (lanes past tl are zero), any stride. */
static inline __m512 ld_tok(const float* p, int64_t st, int64_t tl) {
    const __mmask16 m = (__mmask16)((1u << tl) - 1u);
    if (st == 1) return _mm512_maskz_loadu_ps(m, p);
    float __attribute__((aligned(64))) b[16] = {0};
    for (int64_t i = 0; i < tl; ++i) b[i] = p[i * st];
    return _mm512_load_ps(b);
}
static inline void st_tok(float* p, int64_t st, int64_t tl, __m512 v) {
    const __mmask16 m = (__mmask16)((1u << tl) - 1u);
    if (st == 1) { _mm512_mask_storeu_ps(p, m, v); return; }
    float __attribute__((aligned(64))) b[16];
    _mm512_store_ps(b, v);
    for (int64_t i = 0; i < tl; ++i) p[i * st] = b[i];
}

/* In-register transpose of a 16x16 tile: r[i] lane j <- r[j] lane i. */
static inline void tr16(__m512* r) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xDD);
        }
    for (int j = 0; j < 8; ++j) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    }
}

/* One work item of mb_scan_varlen: tokens [t0, t1) of the nd <= 16 channels d0.. (one
   group). Lanes are channels; the state is N vectors (one per n) kept in registers across
   tokens, so y accumulates without any horizontal sum. Per tile of 16 tokens, dt (biased,
   softplussed) and dt*u are formed along t (one row per channel) and transposed into lane
   order in registers; y is transposed back, then D*u and the z gate are applied along t.
   B and C element n of token t is at t * bt + n * bn (resp. ct, cn). */
static inline __attribute__((always_inline)) void scan_blk_v512(
    const float* u, const float* dbias, int softplus, const float* A, const float* Bg,
    const float* Cg, int64_t bt, int64_t bn, int64_t ct, int64_t cn, const float* Dp,
    float* z, float* delta, float* hs, const int64_t* k, int64_t t0, int64_t t1,
    int64_t d0, int64_t nd, int64_t N, int64_t pf) {
    __m512 h[64], a2[64], rdt[16], rxu[16], ry[16];
    const __mmask16 m = (__mmask16)((1u << nd) - 1u);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i rowN = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)N));
    for (int64_t n = 0; n < N; ++n) {
        const __m512i ix = _mm512_add_epi32(rowN, _mm512_set1_epi32((int)n));
        h[n] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, ix, hs + d0 * N, 4);
        a2[n] = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, ix, A + d0 * N, 4),
                              _mm512_set1_ps(MB_LOG2E));
    }
    /* Channel-last views ((T, dim).t(), as vLLM's Mamba1 mixer passes them): a token's
       channels are contiguous, so tiles load straight into lane order, no transposes. */
    const int chan_last = k[0] == 1 && k[4] == 1 && (!z || k[2] == 1);
    const __m512 dbv = dbias ? _mm512_maskz_loadu_ps(m, dbias + d0) : _mm512_setzero_ps();
    const __m512 Dv = Dp ? _mm512_maskz_loadu_ps(m, Dp + d0) : _mm512_setzero_ps();
    for (int64_t tb = t0; chan_last && tb < t1; ++tb) {
        __m512 dtv = _mm512_add_ps(_mm512_maskz_loadu_ps(m, delta + d0 + tb * k[5]), dbv);
        if (softplus) dtv = vsoftplus(dtv);
        const __m512 uv = _mm512_maskz_loadu_ps(m, u + d0 + tb * k[1]);
        const __m512 xu = _mm512_mul_ps(dtv, uv); /* dt = inf: an infinite input, as the spec */
        /* |dt * A * log2(e)| stays finite, which vexp2_nc needs; NaN stays NaN */
        dtv = _mm512_min_ps(_mm512_set1_ps(1e18f), dtv);
        const float* b = Bg + tb * bt;
        const float* c = Cg + tb * ct;
        __m512 acc0 = _mm512_mul_ps(Dv, uv), acc1 = _mm512_setzero_ps();
        #pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
            const __m512 e = vexp2_nc(_mm512_mul_ps(dtv, a2[n]));
            h[n] = _mm512_fmadd_ps(e, h[n], _mm512_mul_ps(xu, _mm512_set1_ps(b[n * bn])));
            if (n & 1) acc1 = _mm512_fmadd_ps(h[n], _mm512_set1_ps(c[n * cn]), acc1);
            else acc0 = _mm512_fmadd_ps(h[n], _mm512_set1_ps(c[n * cn]), acc0);
        }
        const __m512 y = _mm512_add_ps(acc0, acc1);
        _mm512_mask_storeu_ps(delta + d0 + tb * k[5], m, y);
        if (z) {
            float* zp = z + d0 + tb * k[3];
            _mm512_mask_storeu_ps(zp, m, vgate(y, _mm512_maskz_loadu_ps(m, zp)));
        }
    }
    for (int64_t tb = t0; !chan_last && tb < t1; tb += 16) {
        const int64_t tl = t1 - tb < 16 ? t1 - tb : 16;
        for (int64_t q = 0; q < 16; ++q) {
            if (q >= nd) {
                rdt[q] = rxu[q] = _mm512_setzero_ps();
                continue;
            }
            const int64_t d = d0 + q;
            /* 48 row streams are too many for the hardware prefetchers: fetch ahead */
            _mm_prefetch((const char*)(delta + d * k[4] + (tb + pf) * k[5]), _MM_HINT_T0);
            _mm_prefetch((const char*)(u + d * k[0] + (tb + pf) * k[1]), _MM_HINT_T0);
            if (z) _mm_prefetch((const char*)(z + d * k[2] + (tb + pf) * k[3]), _MM_HINT_T0);
            __m512 dtv = _mm512_add_ps(ld_tok(delta + d * k[4] + tb * k[5], k[5], tl),
                                       _mm512_set1_ps(dbias ? dbias[d] : 0.0f));
            if (softplus) dtv = vsoftplus(dtv);
            rxu[q] = _mm512_mul_ps(dtv, ld_tok(u + d * k[0] + tb * k[1], k[1], tl));
            /* |dt * A * log2(e)| stays finite, which vexp2_nc needs; NaN stays NaN */
            rdt[q] = _mm512_min_ps(_mm512_set1_ps(1e18f), dtv);
        }
        tr16(rdt);
        tr16(rxu);
        for (int64_t i = 0; i < tl; ++i) {
            const float* b = Bg + (tb + i) * bt;
            const float* c = Cg + (tb + i) * ct;
            const __m512 dtv = rdt[i], xu = rxu[i];
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            #pragma GCC unroll 16
            for (int64_t n = 0; n < N; ++n) {
                const __m512 e = vexp2_nc(_mm512_mul_ps(dtv, a2[n]));
                h[n] = _mm512_fmadd_ps(e, h[n], _mm512_mul_ps(xu, _mm512_set1_ps(b[n * bn])));
                if (n & 1) acc1 = _mm512_fmadd_ps(h[n], _mm512_set1_ps(c[n * cn]), acc1);
                else acc0 = _mm512_fmadd_ps(h[n], _mm512_set1_ps(c[n * cn]), acc0);
            }
            ry[i] = _mm512_add_ps(acc0, acc1);
        }
        for (int64_t i = tl; i < 16; ++i) ry[i] = _mm512_setzero_ps();
        tr16(ry);
        for (int64_t q = 0; q < nd; ++q) {
            const int64_t d = d0 + q;
            const __m512 uv = ld_tok(u + d * k[0] + tb * k[1], k[1], tl);
            const __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(Dp ? Dp[d] : 0.0f), uv, ry[q]);
            st_tok(delta + d * k[4] + tb * k[5], k[5], tl, y);
            if (z) {
                float* zp = z + d * k[2] + tb * k[3];
                st_tok(zp, k[3], tl, vgate(y, ld_tok(zp, k[3], tl)));
            }
        }
    }
    float __attribute__((aligned(64))) tmp[16];
    for (int64_t n = 0; n < N; ++n) {
        _mm512_store_ps(tmp, h[n]);
        for (int64_t q = 0; q < nd; ++q) hs[(d0 + q) * N + n] = tmp[q];
    }
}

static void scan_blk_v512_n16(const float* u, const float* dbias, int softplus,
                              const float* A, const float* Bg, const float* Cg, int64_t bt,
                              int64_t bn, int64_t ct, int64_t cn, const float* Dp, float* z,
                              float* delta, float* hs, const int64_t* k, int64_t t0,
                              int64_t t1, int64_t d0, int64_t nd, int64_t pf) {
    scan_blk_v512(u, dbias, softplus, A, Bg, Cg, bt, bn, ct, cn, Dp, z, delta, hs, k, t0, t1,
                  d0, nd, 16, pf);
}

static void scan_blk_v512_any(const float* u, const float* dbias, int softplus,
                              const float* A, const float* Bg, const float* Cg, int64_t bt,
                              int64_t bn, int64_t ct, int64_t cn, const float* Dp, float* z,
                              float* delta, float* hs, const int64_t* k, int64_t t0,
                              int64_t t1, int64_t d0, int64_t nd, int64_t N,
                              int64_t pf) {
    scan_blk_v512(u, dbias, softplus, A, Bg, Cg, bt, bn, ct, cn, Dp, z, delta, hs, k, t0, t1,
                  d0, nd, N, pf);
}
#endif

/* Mamba1 scan in vLLM's varlen layout, in place. Element (d, t) of u, z, delta at
   d*k[0] + t*k[1] (u), d*k[2] + t*k[3] (z), d*k[4] + t*k[5] (delta); dt = delta + dbias[d]
   (dbias may be NULL), softplussed when asked, is read before delta[d, t] is overwritten;
   B/C element (g, n, t) at g*k[6] + n*k[7] + t*k[8] (B) and g*k[9] + n*k[10] + t*k[11] (C).
   y = h C + D u goes to delta; with z, y * silu(z) goes to z. h: (S, Dm, N) contiguous
   in/out; run[s] = 0 skips sequence s entirely. */
int mb_scan_varlen(const MbScanVarlenArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    const float *u = a->u, *dbias = a->delta_bias, *A = a->A, *B = a->B, *C = a->C;
    const float* Dp = a->D;
    float *z = a->z, *delta = a->delta, *h = a->h;
    const uint8_t* run = a->run;
    const int64_t* qsl = a->qsl;
    const int64_t S = a->S, Dm = a->Dm, N = a->N, G = a->G, pf = a->prefetch;
    const int softplus = (int)a->softplus, nthreads = (int)a->nthreads;
    /* local copy: provably not aliased by the stores */
    const int64_t k[12] = {a->su[0], a->su[1], a->sz[0], a->sz[1], a->sdelta[0], a->sdelta[1],
                           a->sB[0], a->sB[1], a->sB[2], a->sC[0], a->sC[1], a->sC[2]};
    (void)pf; /* read by the AVX-512 block kernel only */
    int failed = 0;
    const int64_t Dg = Dm / G;
    const int64_t nblk = (Dg + DB - 1) / DB;
#ifdef MB_V512
    if (N <= 64) {
        #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
        for (int64_t item = 0; item < S * G * nblk; ++item) {
            const int64_t s = item / (G * nblk), g = (item / nblk) % G;
            if (!run[s]) continue;
            const int64_t d0 = g * Dg + (item % nblk) * DB;
            const int64_t nd = d0 + DB < (g + 1) * Dg ? DB : (g + 1) * Dg - d0;
            float* hs = h + s * Dm * N;
            if (N == 16)
                scan_blk_v512_n16(u, dbias, softplus, A, B + g * k[6], C + g * k[9], k[8],
                                  k[7], k[11], k[10], Dp, z, delta, hs, k, qsl[s], qsl[s + 1],
                                  d0, nd, pf);
            else
                scan_blk_v512_any(u, dbias, softplus, A, B + g * k[6], C + g * k[9], k[8],
                                  k[7], k[11], k[10], Dp, z, delta, hs, k, qsl[s], qsl[s + 1],
                                  d0, nd, N, pf);
        }
        return MB_OK;
    }
#endif
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = 0; item < S * G * nblk; ++item) {
        const int64_t s = item / (G * nblk), g = (item / nblk) % G;
        if (!run[s]) continue;
        const int64_t d0 = g * Dg + (item % nblk) * DB;
        const int64_t d1 = d0 + DB < (g + 1) * Dg ? d0 + DB : (g + 1) * Dg;
        const int64_t nd = d1 - d0;
        float* hl = (float*)malloc(sizeof(float) * (size_t)(3 * N * DB));
        if (!hl) {
            _Pragma("omp atomic write")
            failed = 1;
            continue;
        }
        float* al = hl + N * DB;
        float* bc = al + N * DB; /* B row then C row of the current token */
        float* hs = h + s * Dm * N;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t q = 0; q < DB; ++q) {
                hl[n * DB + q] = q < nd ? hs[(d0 + q) * N + n] : 0.0f;
                al[n * DB + q] = q < nd ? A[(d0 + q) * N + n] : 0.0f;
            }
        for (int64_t t = qsl[s]; t < qsl[s + 1]; ++t) {
            float dtv[DB], xu[DB], acc[DB];
            for (int64_t q = 0; q < DB; ++q) {
                const int64_t d = d0 + (q < nd ? q : 0);
                dtv[q] = delta[d * k[4] + t * k[5]] + (dbias ? dbias[d] : 0.0f);
                xu[q] = u[d * k[0] + t * k[1]];
                acc[q] = 0.0f;
            }
            if (softplus) {
                #pragma omp simd
                for (int64_t q = 0; q < DB; ++q) dtv[q] = mb_softplus(dtv[q]);
            }
            for (int64_t q = 0; q < DB; ++q) {
                dtv[q] = q < nd ? dtv[q] : 0.0f;
                xu[q] *= dtv[q];
            }
            for (int64_t n = 0; n < N; ++n) {
                bc[n] = B[g * k[6] + n * k[7] + t * k[8]];
                bc[N + n] = C[g * k[9] + n * k[10] + t * k[11]];
            }
            for (int64_t n = 0; n < N; ++n) {
                const float bn = bc[n], cn = bc[N + n];
                float* hn = hl + n * DB;
                const float* an = al + n * DB;
                #pragma omp simd
                for (int64_t q = 0; q < DB; ++q) {
                    float v = mb_exp(dtv[q] * an[q]) * hn[q] + xu[q] * bn;
                    hn[q] = v;
                    acc[q] += v * cn;
                }
            }
            for (int64_t q = 0; q < nd; ++q) {
                const int64_t d = d0 + q;
                const float uv = u[d * k[0] + t * k[1]];
                const float yv = acc[q] + (Dp ? Dp[d] * uv : 0.0f);
                delta[d * k[4] + t * k[5]] = yv;
                if (z) {
                    float* zp = z + d * k[2] + t * k[3];
                    const float zv = *zp;
                    *zp = yv * mb_silu(zv);
                }
            }
        }
        for (int64_t n = 0; n < N; ++n)
            for (int64_t q = 0; q < nd; ++q) hs[(d0 + q) * N + n] = hl[n * DB + q];
        free(hl);
    }
    return failed ? MB_ENOMEM : MB_OK;
}
