/* Mamba1 selective scan kernels: mb_scan_f32 (contiguous fp32, one sequence per item) and
   mb_scan_varlen (vLLM's varlen layout through strides, in place, fp32 or bf16 storage).
   mb_scan_varlen runs one vector block kernel for N <= 64, written over the width-generic
   helpers of mb_common.h: 16 lanes on AVX-512, 8 on AVX2 (isa/ headers), the portable
   GNU-vector forms elsewhere (SSE, NEON, ...); a scalar loop serves larger N. */
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

/* ------------------------------------------------------------------ mb_scan_varlen */
/* u, delta and z are stored in fp32 or bf16 (dt, a constant in each compiled kernel); all
   arithmetic is fp32. */

/* lanes j < n of element i + j * st of a dt-coded array, as fp32 (the others 0) */
MB_ALWAYS_INLINE mb_vf ld_row(const void* p, const int dt, int64_t i, int64_t st, int64_t n) {
    if (dt == MB_F32) return mb_vload_part((const float*)p + i, st, n);
    const uint16_t* q = (const uint16_t*)p + i;
    if (st == 1 && n == MB_VL) return mb_vload(q, MB_BF16);
    mb_vf v = {0};
    for (int64_t j = 0; j < n; ++j) v[j] = mb_bf16_to_f32(q[j * st]);
    return v;
}

/* element i + j * st of a dt-coded array = lane j of v, j < n */
MB_ALWAYS_INLINE void st_row(void* p, const int dt, int64_t i, int64_t st, int64_t n, mb_vf v) {
    if (dt == MB_F32) {
        mb_vstore_part((float*)p + i, st, n, v);
        return;
    }
    uint16_t* q = (uint16_t*)p + i;
    if (st == 1 && n == MB_VL) {
        mb_vstore_bf16(q, v);
        return;
    }
    for (int64_t j = 0; j < n; ++j) q[j * st] = mb_f32_to_bf16(v[j]);
}

/* One token on the N state vectors (lanes are channels): h[n] = 2^(dt a2[n]) h[n] + xu B[n],
   returns acc0 + sum_n h[n] C[n]. fast: every |dt a2[n]| is at most 125, so 2^t needs no
   clamps (mb_vpow2_nc); otherwise the clamped, saturating mb_vpow2. */
MB_ALWAYS_INLINE mb_vf scan_step(mb_vf* restrict h, const mb_vf* restrict a2, mb_vf dtv,
                                 mb_vf xu, const float* b, int64_t bn, const float* c,
                                 int64_t cn, int64_t N, mb_vf acc0, int fast) {
    mb_vf acc1 = {0};
    if (fast) {
        #pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
            h[n] = mb_vpow2_nc(dtv * a2[n]) * h[n] + xu * b[n * bn];
            if (n & 1) acc1 += h[n] * c[n * cn];
            else acc0 += h[n] * c[n * cn];
        }
    } else {
        #pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
            h[n] = mb_vpow2(dtv * a2[n]) * h[n] + xu * b[n * bn];
            if (n & 1) acc1 += h[n] * c[n * cn];
            else acc0 += h[n] * c[n * cn];
        }
    }
    return acc0 + acc1;
}

/* Whether the unclamped 2^t serves a token whose dt lanes are dtv (|dt| * max_n |a2| bound) */
MB_ALWAYS_INLINE int scan_fast(int a_ok, mb_vf dtv, mb_vf amax) {
#ifdef MB_VPOW2_ANY_FINITE
    (void)dtv, (void)amax; /* 2^t is exact for every finite t, and t is finite */
    return a_ok;
#else
    return a_ok && mb_vall_lt((mb_vf)((mb_vi)dtv & 0x7fffffff) * amax, 125.0f);
#endif
}

/* One work item of mb_scan_varlen: tokens [t0, t1) of the nd <= MB_VL channels d0.. of one
   group. Lanes are channels; the state is N vectors (one per n) that persist across tokens,
   so y accumulates without a horizontal sum. Tokens-last rows (the layout of the op's
   arguments): per tile of MB_VL tokens, dt (biased, softplussed) and dt u are formed along t,
   one row per channel, and transposed into lane order in registers; y is transposed back,
   then D u and the z gate are applied along t. Channel-last views ((T, dim).t(), as vLLM's
   Mamba1 mixer passes them) load a token's channels straight into lanes. B and C element n
   of token t are at t * bt + n * bn (resp. ct, cn). Non-finite values as the spec: dt is
   clamped to [-1e18, 1e18] before the decay (dt = inf stays in dt u), so that dt a2 is
   finite for |A| < 3e20; 2^t saturates to 0 / inf. */
MB_ALWAYS_INLINE void scan_blk(const int dt, const void* u, const float* dbias, int softplus,
                               const float* A, const float* Bg, const float* Cg, int64_t bt,
                               int64_t bn, int64_t ct, int64_t cn, const float* Dp, void* z,
                               void* delta, float* hs, const int64_t* k, int64_t t0,
                               int64_t t1, int64_t d0, int64_t nd, int64_t N, int64_t pf) {
    mb_vf h[64], a2[64], rdt[MB_VL], rxu[MB_VL], ry[MB_VL];
    const mb_vf zero = {0};
    mb_vf amax = zero; /* max_n |a2[n]| per channel */
    for (int64_t n = 0; n < N; ++n) {
        h[n] = mb_vload_part(hs + d0 * N + n, N, nd);
        a2[n] = mb_vload_part(A + d0 * N + n, N, nd) * MB_LOG2E;
        const mb_vf aa = (mb_vf)((mb_vi)a2[n] & 0x7fffffff);
        const mb_vi gt = aa > amax;
        amax = (mb_vf)(((mb_vi)amax & ~gt) | ((mb_vi)aa & gt));
    }
    /* |A| huge, inf or NaN: never fast (the clamped step keeps NaN and saturates) */
    const int a_ok = mb_vall_lt(amax, 3e20f);
    const int64_t es = mb_esize(dt);
    const int chan_last = k[0] == 1 && k[4] == 1 && (!z || k[2] == 1);
    const mb_vf dbv = dbias ? mb_vload_part(dbias + d0, 1, nd) : zero;
    const mb_vf Dv = Dp ? mb_vload_part(Dp + d0, 1, nd) : zero;
    for (int64_t tb = t0; chan_last && tb < t1; ++tb) {
        mb_vf dtv = ld_row(delta, dt, d0 + tb * k[5], 1, nd) + dbv;
        if (softplus) dtv = mb_vsoftplus(dtv);
        const mb_vf uv = ld_row(u, dt, d0 + tb * k[1], 1, nd);
        const mb_vf xu = dtv * uv; /* dt = inf: an infinite input, as the spec */
        dtv = mb_vclamp(dtv, -1e18f, 1e18f);
        const int fast = scan_fast(a_ok, dtv, amax);
        const mb_vf y =
            scan_step(h, a2, dtv, xu, Bg + tb * bt, bn, Cg + tb * ct, cn, N, Dv * uv, fast);
        st_row(delta, dt, d0 + tb * k[5], 1, nd, y);
        if (z) {
            const int64_t iz = d0 + tb * k[3];
            st_row(z, dt, iz, 1, nd, mb_vgate(y, ld_row(z, dt, iz, 1, nd)));
        }
    }
    for (int64_t tb = t0; !chan_last && tb < t1; tb += MB_VL) {
        const int64_t tl = t1 - tb < MB_VL ? t1 - tb : MB_VL;
        for (int64_t q = 0; q < MB_VL; ++q) {
            if (q >= nd) {
                rdt[q] = rxu[q] = zero;
                continue;
            }
            const int64_t d = d0 + q;
            /* 3 * MB_VL row streams are too many for the hardware prefetchers: fetch ahead */
            __builtin_prefetch((const char*)delta + (d * k[4] + (tb + pf) * k[5]) * es);
            __builtin_prefetch((const char*)u + (d * k[0] + (tb + pf) * k[1]) * es);
            if (z) __builtin_prefetch((const char*)z + (d * k[2] + (tb + pf) * k[3]) * es);
            mb_vf dtv = ld_row(delta, dt, d * k[4] + tb * k[5], k[5], tl) +
                        (dbias ? dbias[d] : 0.0f);
            if (softplus) dtv = mb_vsoftplus(dtv);
            rxu[q] = dtv * ld_row(u, dt, d * k[0] + tb * k[1], k[1], tl);
            rdt[q] = mb_vclamp(dtv, -1e18f, 1e18f);
        }
        mb_vtranspose(rdt);
        mb_vtranspose(rxu);
        for (int64_t i = 0; i < tl; ++i) {
            const int fast = scan_fast(a_ok, rdt[i], amax);
            ry[i] = scan_step(h, a2, rdt[i], rxu[i], Bg + (tb + i) * bt, bn, Cg + (tb + i) * ct,
                              cn, N, zero, fast);
        }
        for (int64_t i = tl; i < MB_VL; ++i) ry[i] = zero;
        mb_vtranspose(ry);
        for (int64_t q = 0; q < nd; ++q) {
            const int64_t d = d0 + q;
            const mb_vf uv = ld_row(u, dt, d * k[0] + tb * k[1], k[1], tl);
            const mb_vf y = ry[q] + (Dp ? Dp[d] : 0.0f) * uv;
            st_row(delta, dt, d * k[4] + tb * k[5], k[5], tl, y);
            if (z) {
                const int64_t iz = d * k[2] + tb * k[3];
                st_row(z, dt, iz, k[3], tl, mb_vgate(y, ld_row(z, dt, iz, k[3], tl)));
            }
        }
    }
    for (int64_t n = 0; n < N; ++n)
        for (int64_t q = 0; q < nd; ++q) hs[(d0 + q) * N + n] = h[n][q];
}

/* The compiled forms: storage dtype x (N = 16 with unit-stride B/C rows, or any N <= 64) */
#define MB_SCAN_BLK(name, DT, NN, BN, CN)                                                      \
    static void name(const void* u, const float* dbias, int softplus, const float* A,          \
                     const float* Bg, const float* Cg, int64_t bt, int64_t bn, int64_t ct,     \
                     int64_t cn, const float* Dp, void* z, void* delta, float* hs,             \
                     const int64_t* k, int64_t t0, int64_t t1, int64_t d0, int64_t nd,         \
                     int64_t N, int64_t pf) {                                                  \
        (void)bn, (void)cn, (void)N;                                                           \
        scan_blk(DT, u, dbias, softplus, A, Bg, Cg, bt, BN, ct, CN, Dp, z, delta, hs, k, t0,   \
                 t1, d0, nd, NN, pf);                                                          \
    }
MB_SCAN_BLK(scan_blk_f32_n16, MB_F32, 16, 1, 1)
MB_SCAN_BLK(scan_blk_bf16_n16, MB_BF16, 16, 1, 1)
MB_SCAN_BLK(scan_blk_f32_any, MB_F32, N, bn, cn)
MB_SCAN_BLK(scan_blk_bf16_any, MB_BF16, N, bn, cn)
#undef MB_SCAN_BLK

typedef void (*scan_blk_fn)(const void*, const float*, int, const float*, const float*,
                            const float*, int64_t, int64_t, int64_t, int64_t, const float*,
                            void*, void*, float*, const int64_t*, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t);

/* Mamba1 scan in vLLM's varlen layout, in place. u, z, delta are stored in a->dtype (fp32 or
   bf16), everything else is fp32. Element (d, t) of u, z, delta at d*k[0] + t*k[1] (u),
   d*k[2] + t*k[3] (z), d*k[4] + t*k[5] (delta); dt = delta + dbias[d] (dbias may be NULL),
   softplussed when asked, is read before delta[d, t] is overwritten; B/C element (g, n, t) at
   g*k[6] + n*k[7] + t*k[8] (B) and g*k[9] + n*k[10] + t*k[11] (C). y = h C + D u goes to
   delta; with z, y * silu(z) goes to z. h: (S, Dm, N) contiguous fp32 in/out; run[s] = 0
   skips sequence s entirely. Work item = (sequence, group, MB_VL channels) for N <= 64 (the
   vector kernel), (sequence, group, DB channels) otherwise (the scalar loop). */
int mb_scan_varlen(const MbScanVarlenArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    const float *dbias = a->delta_bias, *A = a->A, *B = a->B, *C = a->C;
    const float* Dp = a->D;
    const void* u = a->u;
    void *z = a->z, *delta = a->delta;
    float* h = a->h;
    const uint8_t* run = a->run;
    const int64_t* qsl = a->qsl;
    const int64_t S = a->S, Dm = a->Dm, N = a->N, G = a->G, pf = a->prefetch;
    const int softplus = (int)a->softplus, nthreads = (int)a->nthreads;
    const int dt = a->dtype == MB_BF16 ? MB_BF16 : MB_F32;
    /* local copy: provably not aliased by the stores */
    const int64_t k[12] = {a->su[0], a->su[1], a->sz[0], a->sz[1], a->sdelta[0], a->sdelta[1],
                           a->sB[0], a->sB[1], a->sB[2], a->sC[0], a->sC[1], a->sC[2]};
    int failed = 0;
    const int64_t Dg = Dm / G;
    if (N <= 64) {
        const int64_t nvb = (Dg + MB_VL - 1) / MB_VL;
        const int n16 = N == 16 && k[7] == 1 && k[10] == 1;
        const scan_blk_fn fn = dt == MB_BF16 ? (n16 ? scan_blk_bf16_n16 : scan_blk_bf16_any)
                                             : (n16 ? scan_blk_f32_n16 : scan_blk_f32_any);
        #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
        for (int64_t item = 0; item < S * G * nvb; ++item) {
            const int64_t s = item / (G * nvb), g = (item / nvb) % G;
            if (!run[s]) continue;
            const int64_t d0 = g * Dg + (item % nvb) * MB_VL;
            const int64_t nd = d0 + MB_VL < (g + 1) * Dg ? MB_VL : (g + 1) * Dg - d0;
            fn(u, dbias, softplus, A, B + g * k[6], C + g * k[9], k[8], k[7], k[11], k[10], Dp,
               z, delta, h + s * Dm * N, k, qsl[s], qsl[s + 1], d0, nd, N, pf);
        }
        return MB_OK;
    }
    const int64_t nblk = (Dg + DB - 1) / DB;
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
                dtv[q] = mb_ld(delta, dt, d * k[4] + t * k[5]) + (dbias ? dbias[d] : 0.0f);
                xu[q] = mb_ld(u, dt, d * k[0] + t * k[1]);
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
                const float uv = mb_ld(u, dt, d * k[0] + t * k[1]);
                const float yv = acc[q] + (Dp ? Dp[d] * uv : 0.0f);
                mb_st(delta, dt, d * k[4] + t * k[5], yv);
                if (z) {
                    const int64_t iz = d * k[2] + t * k[3];
                    mb_st(z, dt, iz, yv * mb_silu(mb_ld(z, dt, iz)));
                }
            }
        }
        for (int64_t n = 0; n < N; ++n)
            for (int64_t q = 0; q < nd; ++q) hs[(d0 + q) * N + n] = hl[n * DB + q];
        free(hl);
    }
    return failed ? MB_ENOMEM : MB_OK;
}
