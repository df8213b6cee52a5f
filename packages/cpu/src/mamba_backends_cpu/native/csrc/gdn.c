/* Fused gated-delta-net kernels: mb_gdn_rows (decode), mb_gdn_tiles (prefill), mb_gdn_gating.
   Every tensor is read through its dtype code and strides; all math is fp32.

   The delta rule acts on each value row S[v, :] of a [V, K] state independently:

       sk = S[v] . k,  sq = S[v] . q,  d = beta * (x[v] - exp(g) * sk)
       o[v] = exp(g) * sq + d * (k . q),  S[v] <- exp(g) * S[v] + d * k

   mb_gdn_rows (a few tokens per sequence) walks the rows of a state four at a time, each row
   loaded once for all of its sequence's tokens; a single token on fp32 states of unit K stride
   (the decode step) runs gdn_row1 in place, with no row buffer. mb_gdn_tiles holds a block of VT rows
   transposed, [K, VT], so the inner loop runs across rows (no horizontal sums) and the block
   stays in L1 for every token. It keeps the block scaled, S = s * S': a token then costs one
   FMA per element for the update and two for the dot products (the decay multiply is folded
   into s); S' is renormalised when s gets small (or the decay is 0).

   Both read MbGdnArgs (mb_args.h) as the int64 array prm[37]:
       0 N, 1 H, 2 HV, 3 K, 4 V, 5 l2norm, 6 dst_mode, 7 ncol,
       8..15 dtype codes of q, k, v, g, beta, o, state_in, state_out,
       16.. strides: q (t, h), k (t, h), v (t, h), g (t, h), beta (t, h, v), o (t, h),
                     state_in (4), state_out (4)        (last axis of q, k, v, o: unit)
   seq is [N, 4] int64: first token, token count, source slot (< 0: zero state), destination
   slot (< 0: none). dst_mode 0 writes the final state to the destination slot; 1 writes the
   state after token i to slot dst2d[n * ncol + i] when > 0; 2 writes it to slot first + i
   (per-token states). */
#include "mb_common.h"

#define MB_GDN_NPRM 37
/* k, q of token t at head h as fp32 (optionally L2-normalised), q scaled; returns k . q */
static float prep_kq(const void* q, const void* k, const int64_t* prm, int64_t t, int64_t h,
                     float scale, float* kn, float* qn) {
    const int64_t K = prm[3];
    const int64_t* st = prm + 16;
    mb_load_n(mb_elem(k, (int)prm[9], t * st[2] + h * st[3]), (int)prm[9], 1, K, kn);
    mb_load_n(mb_elem(q, (int)prm[8], t * st[0] + h * st[1]), (int)prm[8], 1, K, qn);
    float rk = 1.0f, rq = scale;
    if (prm[5]) {
        float sk = 0.0f, sq = 0.0f;
        #pragma omp simd reduction(+:sk, sq)
        for (int64_t i = 0; i < K; ++i) { sk += kn[i] * kn[i]; sq += qn[i] * qn[i]; }
        rk = 1.0f / sqrtf(sk + 1e-6f);
        rq = scale / sqrtf(sq + 1e-6f);
    }
    float kq = 0.0f;
    #pragma omp simd reduction(+:kq)
    for (int64_t i = 0; i < K; ++i) { kn[i] *= rk; qn[i] *= rq; kq += kn[i] * qn[i]; }
    return kq;
}

#define SOFF(s, slot, hv, v) ((slot) * (s)[0] + (hv) * (s)[1] + (v) * (s)[2])

/* ------------------------------------------------------------------ rows (decode) */
#define RB 4  /* value rows per pass: independent dot-product chains */
/* State rows ahead that the row kernel prefetches (past the last row of an item, the first
   rows of the next item's source state): the hardware prefetchers stop at 4 KiB pages and at
   each jump to another slot. Measured on an AVX2 EPYC, decode B=32 (16 MiB fp32 states):
   about 5% faster than without; 4 rows alike, 16 no better. On an AVX-512 EPYC gdn_row1 ran
   0.53x the old kernel's time with it, 0.57-0.77x without (C driver, min of 15 x 20 calls). */
#ifndef GDN_PFR
#define GDN_PFR 8
#endif
/* One token of one (sequence, value head) with fp32 states of unit K stride, in place through
   the strides: each group of RB rows is read once for both dot products (k and q, reduced by
   mb_vsum8), then updated from L1 and stored; no row is copied to a buffer. ``sin``/``sout``:
   row 0 of the source / destination state (NULL: zeros / not written), rows ``rin``/``rout``
   elements apart; ``xv``/``bv``/``ov``: this token's value-row base offsets; ``nxt``: row 0
   of the next item's source state (prefetched past the last row), or NULL. */
static void gdn_row1(const float* sin, float* sout, int64_t rin, int64_t rout, const float* kn,
                     const float* qn, float kq, float dec, const void* x, int dx, int64_t xv,
                     const void* beta, int db, int64_t bv, int64_t bvs, void* o, int dout,
                     int64_t ov, int64_t K, int64_t V, const float* nxt) {
    for (int64_t v0 = 0; v0 < V; v0 += RB) {
        const int64_t nr = V - v0 < RB ? V - v0 : RB;
        for (int64_t r = 0; r < RB && GDN_PFR > 0; ++r) {
            const int64_t vp = v0 + GDN_PFR + r;
            const float* pr = vp < V ? (sin ? sin + vp * rin : NULL)
                                     : (nxt && vp - V < V ? nxt + (vp - V) * rin : NULL);
            for (int64_t l = 0; pr && l < K; l += 16) __builtin_prefetch(pr + l, 1, 3);
        }
        mb_vf acc[2 * RB];
        for (int r = 0; r < 2 * RB; ++r) acc[r] = (mb_vf){0};
        for (int64_t j = 0; sin && j < K; j += MB_VL) {
            const mb_vf kj = *(const mb_vfu*)(kn + j), qj = *(const mb_vfu*)(qn + j);
            for (int r = 0; r < RB; ++r) {
                if (r >= nr) break;
                const mb_vf h = *(const mb_vfu*)(sin + (v0 + r) * rin + j);
                acc[r] += h * kj;
                acc[RB + r] += h * qj;
            }
        }
        float sums[2 * RB];
        mb_vsum8(acc, sums); /* sums[r] = S[v0 + r] . k, sums[RB + r] = S[v0 + r] . q */
        float d[RB];
        for (int64_t r = 0; r < nr; ++r) {
            const int64_t v = v0 + r;
            const float bt = beta ? mb_ld(beta, db, bv + v * bvs) : 1.0f;
            d[r] = bt * (mb_ld(x, dx, xv + v) - dec * sums[r]);
            mb_st(o, dout, ov + v, dec * sums[RB + r] + d[r] * kq);
        }
        for (int64_t r = 0; sout && r < nr; ++r) {
            const float* ip = sin ? sin + (v0 + r) * rin : NULL;
            float* op = sout + (v0 + r) * rout;
            const mb_vf vd = (mb_vf){0} + d[r], vdec = (mb_vf){0} + dec;
            for (int64_t j = 0; j < K; j += MB_VL) {
                const mb_vf kj = *(const mb_vfu*)(kn + j);
                const mb_vf h = ip ? *(const mb_vfu*)(ip + j) : (mb_vf){0};
                *(mb_vfu*)(op + j) = vdec * h + vd * kj;
            }
        }
    }
}

static void gdn_rows(const void* q, const void* k, const void* x, const void* g, const void* beta,
                     void* o, const void* s_in, void* s_out, const int64_t* seq,
                     const int64_t* dst2d, const int64_t* prm, float scale, int nthreads) {
    const int64_t N = prm[0], H = prm[1], HV = prm[2], K = prm[3], V = prm[4];
    const int mode = (int)prm[6];
    const int64_t ncol = prm[7];
    const int dx = (int)prm[10], dg = (int)prm[11], db = (int)prm[12], dout = (int)prm[13];
    const int din = (int)prm[14], dso = (int)prm[15];
    const int64_t* st = prm + 16;
    const int64_t *si = st + 13, *so = st + 17;
    const int64_t GR = HV / H;
    /* single-token items on fp32 states with unit K stride take gdn_row1 */
    const int fast1 = mode == 0 && K % MB_VL == 0 && (!s_in || (din == 0 && si[3] == 1)) &&
                      (!s_out || (dso == 0 && so[3] == 1));
    #pragma omp parallel num_threads(nthreads)
    {
        float* row = NULL; float* tok = NULL; int64_t cap = 0;
        row = (float*)malloc(sizeof(float) * (size_t)(RB * K));
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < N * HV; ++item) {
            const int64_t n = item / HV, hv = item % HV, h = hv / GR;
            const int64_t t0 = seq[4 * n], L = seq[4 * n + 1];
            const int64_t src = seq[4 * n + 2], dst = seq[4 * n + 3];
            if (L == 0) {  /* pass-through: the state is copied to the destination */
                if (mode == 0 && dst >= 0 && s_out)
                    for (int64_t v = 0; v < V; ++v) {
                        if (src >= 0 && s_in)
                            mb_load_n(mb_elem(s_in, din, SOFF(si, src, hv, v)), din, si[3], K, row);
                        else
                            memset(row, 0, sizeof(float) * (size_t)K);
                        mb_store_n(mb_elem(s_out, dso, SOFF(so, dst, hv, v)), dso, so[3], K, row);
                    }
                continue;
            }
            const int64_t per = 2 * K + 2;  /* kn, qn, k.q, exp(g) */
            if (L * per > cap) {
                free(tok);
                cap = L * per;
                tok = (float*)malloc(sizeof(float) * (size_t)cap);
            }
            for (int64_t i = 0; i < L; ++i) {
                float* b = tok + i * per;
                b[2 * K] = prep_kq(q, k, prm, t0 + i, h, scale, b, b + K);
                b[2 * K + 1] = expf(mb_ld(g, dg, (t0 + i) * st[6] + hv * st[7]));
            }
            /* the source rows GDN_PFR ahead (past the last row: the next item's first rows) */
            int64_t nsrc = -1, nhv = 0;
            if (s_in && item + 1 < N * HV) {
                const int64_t n2 = (item + 1) / HV;
                nhv = (item + 1) % HV;
                nsrc = seq[4 * n2 + 1] > 0 ? seq[4 * n2 + 2] : -1;
            }
            if (fast1 && L == 1) {
                const int64_t t = t0;
                gdn_row1(src >= 0 && s_in ? (const float*)s_in + SOFF(si, src, hv, 0) : NULL,
                         dst >= 0 && s_out ? (float*)s_out + SOFF(so, dst, hv, 0) : NULL,
                         si[2], so[2], tok, tok + K, tok[2 * K], tok[2 * K + 1], x, dx,
                         t * st[4] + hv * st[5], beta, db, t * st[8] + hv * st[9], st[10], o,
                         dout, t * st[11] + hv * st[12], K, V,
                         nsrc >= 0 ? (const float*)s_in + SOFF(si, nsrc, nhv, 0) : NULL);
                continue;
            }
            for (int64_t v0 = 0; v0 < V; v0 += RB) {
                const int64_t nr = V - v0 < RB ? V - v0 : RB;
                if (s_in) {
                    for (int64_t r = 0; r < RB; ++r) {
                        const int64_t vp = v0 + GDN_PFR + r;
                        const char* pr = NULL;
                        if (vp < V && src >= 0) pr = mb_elem(s_in, din, SOFF(si, src, hv, vp));
                        else if (vp >= V && vp - V < V && nsrc >= 0)
                            pr = mb_elem(s_in, din, SOFF(si, nsrc, nhv, vp - V));
                        if (pr && si[3] == 1)
                            for (int64_t l = 0; l < K * mb_esize(din); l += 64)
                                __builtin_prefetch(pr + l, 1, 3);
                    }
                }
                float* rp[RB];
                for (int64_t r = 0; r < RB; ++r) {
                    rp[r] = row + r * K;
                    if (r >= nr) { memset(rp[r], 0, sizeof(float) * (size_t)K); continue; }
                    if (src >= 0 && s_in)
                        mb_load_n(mb_elem(s_in, din, SOFF(si, src, hv, v0 + r)), din, si[3], K, rp[r]);
                    else memset(rp[r], 0, sizeof(float) * (size_t)K);
                }
                float* r0 = rp[0]; float* r1 = rp[1]; float* r2 = rp[2]; float* r3 = rp[3];
                for (int64_t i = 0; i < L; ++i) {
                    const int64_t t = t0 + i;
                    const float* kn = tok + i * per;
                    const float* qn = kn + K;
                    const float kq = kn[2 * K], dec = kn[2 * K + 1];
                    float a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
                    int64_t j0 = 0;
                    if (K >= MB_VL) {  /* whole vectors: 8 independent accumulators */
                        mb_vf A0 = {0}, A1 = {0}, A2 = {0}, A3 = {0};
                        mb_vf B0 = {0}, B1 = {0}, B2 = {0}, B3 = {0};
                        for (; j0 + MB_VL <= K; j0 += MB_VL) {
                            const mb_vf kj = *(const mb_vfu*)(kn + j0);
                            const mb_vf qj = *(const mb_vfu*)(qn + j0);
                            const mb_vf x0 = *(const mb_vfu*)(r0 + j0);
                            const mb_vf x1 = *(const mb_vfu*)(r1 + j0);
                            const mb_vf x2 = *(const mb_vfu*)(r2 + j0);
                            const mb_vf x3 = *(const mb_vfu*)(r3 + j0);
                            A0 += x0 * kj; A1 += x1 * kj; A2 += x2 * kj; A3 += x3 * kj;
                            B0 += x0 * qj; B1 += x1 * qj; B2 += x2 * qj; B3 += x3 * qj;
                        }
                        const mb_vf acc[2 * RB] = {A0, A1, A2, A3, B0, B1, B2, B3};
                        float sums[2 * RB];
                        mb_vsum8(acc, sums);
                        a0 = sums[0]; a1 = sums[1]; a2 = sums[2]; a3 = sums[3];
                        b0 = sums[4]; b1 = sums[5]; b2 = sums[6]; b3 = sums[7];
                    }
                    for (int64_t j = j0; j < K; ++j) {
                        const float kj = kn[j], qj = qn[j];
                        a0 += r0[j] * kj; a1 += r1[j] * kj; a2 += r2[j] * kj; a3 += r3[j] * kj;
                        b0 += r0[j] * qj; b1 += r1[j] * qj; b2 += r2[j] * qj; b3 += r3[j] * qj;
                    }
                    const float sk[RB] = {a0, a1, a2, a3}, sq[RB] = {b0, b1, b2, b3};
                    float d[RB] = {0, 0, 0, 0};
                    for (int64_t r = 0; r < nr; ++r) {
                        const int64_t v = v0 + r;
                        const float bt =
                            beta ? mb_ld(beta, db, t * st[8] + hv * st[9] + v * st[10]) : 1.0f;
                        d[r] = bt * (mb_ld(x, dx, t * st[4] + hv * st[5] + v) - dec * sk[r]);
                        mb_st(o, dout, t * st[11] + hv * st[12] + v, dec * sq[r] + d[r] * kq);
                    }
                    const float d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
                    #pragma omp simd
                    for (int64_t j = 0; j < K; ++j) {
                        const float kj = kn[j];
                        r0[j] = dec * r0[j] + d0 * kj; r1[j] = dec * r1[j] + d1 * kj;
                        r2[j] = dec * r2[j] + d2 * kj; r3[j] = dec * r3[j] + d3 * kj;
                    }
                    for (int64_t r = 0; r < nr; ++r) {
                        if (mode == 1) {
                            const int64_t slot = dst2d[n * ncol + i];
                            if (slot > 0)
                                mb_store_n(mb_elem(s_out, dso, SOFF(so, slot, hv, v0 + r)), dso, so[3], K, rp[r]);
                        } else if (mode == 2) {
                            mb_store_n(mb_elem(s_out, dso, SOFF(so, t, hv, v0 + r)), dso, so[3], K, rp[r]);
                        }
                    }
                }
                if (mode == 0 && dst >= 0)
                    for (int64_t r = 0; r < nr; ++r)
                        mb_store_n(mb_elem(s_out, dso, SOFF(so, dst, hv, v0 + r)), dso, so[3], K, rp[r]);
            }
        }
        free(row); free(tok);
    }
}

/* ------------------------------------------------------------------ tiles (prefill) */
#define VT 32 /* value rows per tile (a multiple of MB_VL) */
#define NV (VT / MB_VL)
#define S_MIN 1e-18f

/* one block of VT value rows, transposed [K, VT], holding S = s * (a * S' + kp dp^T) */
typedef struct { float* S; float* dp; float s, a; } tile_t;

/* writes s * (a * S' + kp dp^T) of the first nv rows of the block to a state slot */
static void store_tile(void* s_out, int dso, const int64_t* so, int64_t slot, int64_t hv,
                       int64_t v0, int64_t nv, int64_t K, const tile_t* tl, const float* kp,
                       float* tmp) {
    for (int64_t j = 0; j < nv; ++j) {
        const float dj = tl->dp[j];
        for (int64_t kk = 0; kk < K; ++kk)
            tmp[kk] = tl->s * (tl->a * tl->S[kk * VT + j] + kp[kk] * dj);
        mb_store_n(mb_elem(s_out, dso, SOFF(so, slot, hv, v0 + j)), dso, so[3], K, tmp);
    }
}

/* one token on one block: apply the pending update (kp, dp), dot products with k and q,
   then the new pending update; writes VT outputs to ov and returns nothing */
static inline void tile_token(tile_t* tl, int64_t K, const float* kp, const float* kn,
                              const float* qn, float kq, float dec, const float* xv,
                              const float* bv, float* ov) {
    float* S = tl->S;
    mb_vf d[NV], ks[NV], qs[NV];
    #pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
        d[j] = *(const mb_vf*)(tl->dp + j * MB_VL);
        ks[j] = qs[j] = (mb_vf){0};
    }
    if (tl->a == 1.0f) {
        for (int64_t kk = 0; kk < K; ++kk) {
            mb_vf* Sr = (mb_vf*)(S + kk * VT);
            const float cp = kp[kk], ck = kn[kk], cq = qn[kk];
            #pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) {
                const mb_vf sj = Sr[j] + cp * d[j];
                Sr[j] = sj;
                ks[j] += sj * ck;
                qs[j] += sj * cq;
            }
        }
    } else {
        const float a = tl->a;
        for (int64_t kk = 0; kk < K; ++kk) {
            mb_vf* Sr = (mb_vf*)(S + kk * VT);
            const float cp = kp[kk], ck = kn[kk], cq = qn[kk];
            #pragma GCC unroll 8
            for (int j = 0; j < NV; ++j) {
                const mb_vf sj = a * Sr[j] + cp * d[j];
                Sr[j] = sj;
                ks[j] += sj * ck;
                qs[j] += sj * cq;
            }
        }
    }
    float ak[VT] __attribute__((aligned(64))), aq[VT] __attribute__((aligned(64)));
    #pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
        *(mb_vf*)(ak + j * MB_VL) = ks[j];
        *(mb_vf*)(aq + j * MB_VL) = qs[j];
    }
    /* S' holds the state before the token: S_prev = s * S'; new one = s * dec * (...) */
    const float sn = tl->s * dec;
    const int keep = sn >= S_MIN;
    const float inv = keep ? 1.0f / sn : 1.0f;
    #pragma omp simd
    for (int64_t j = 0; j < VT; ++j) {
        const float d = bv[j] * (xv[j] - sn * ak[j]);
        ov[j] = sn * aq[j] + d * kq;
        tl->dp[j] = d * inv;
    }
    if (keep) { tl->s = sn; tl->a = 1.0f; } else { tl->a = sn; tl->s = 1.0f; }
}

/* Work item = (sequence, value head). Tokens go in blocks of TB: the block's k, q (normed,
   scaled), k.q and decay are prepared once, then each VT-row block of the state runs
   through the TB tokens while it sits in L1. */
static void gdn_tiles(const void* q, const void* k, const void* x, const void* g,
                      const void* beta, void* o, const void* s_in, void* s_out,
                      const int64_t* seq, const int64_t* dst2d, const int64_t* prm, float scale,
                      int nthreads, const int64_t TB) {
    const int64_t N = prm[0], H = prm[1], HV = prm[2], K = prm[3], V = prm[4];
    const int mode = (int)prm[6];
    const int64_t ncol = prm[7];
    const int dx = (int)prm[10], dg = (int)prm[11], db = (int)prm[12], dout = (int)prm[13];
    const int din = (int)prm[14], dso = (int)prm[15];
    const int64_t* st = prm + 16;
    const int64_t *si = st + 13, *so = st + 17;
    const int64_t GR = HV / H;
    const int64_t nvt = (V + VT - 1) / VT;
    const int64_t per = 2 * K + 16;  /* kn, qn, then k.q and the decay (padded) */
    #pragma omp parallel num_threads(nthreads)
    {
        const int64_t Vp = nvt * VT;  /* x, beta and o of a token block, rows padded */
        const size_t nfl = (size_t)(nvt * (K * VT + VT) + (TB + 1) * per + 2 * K + 3 * TB * Vp);
        float* mem = (float*)aligned_alloc(64, (sizeof(float) * nfl + 63) / 64 * 64);
        tile_t* tiles = (tile_t*)malloc(sizeof(tile_t) * (size_t)nvt);
        for (int64_t b = 0; b < nvt; ++b) {
            tiles[b].S = mem + b * K * VT;
            tiles[b].dp = mem + nvt * K * VT + b * VT;
        }
        float* tok = mem + nvt * (K * VT + VT);  /* row 0: the token before the block */
        float* tmp = tok + (TB + 1) * per;
        float* xb = tmp + 2 * K;
        float* bb = xb + TB * Vp;
        float* ob = bb + TB * Vp;
        memset(xb, 0, sizeof(float) * (size_t)(3 * TB * Vp));
        #pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < N * HV; ++item) {
            const int64_t n = item / HV, hv = item % HV, h = hv / GR;
            const int64_t t0 = seq[4 * n], L = seq[4 * n + 1];
            const int64_t src = seq[4 * n + 2], dst = seq[4 * n + 3];
            memset(mem, 0, sizeof(float) * (size_t)(nvt * (K * VT + VT)));
            memset(tok, 0, sizeof(float) * (size_t)per);
            for (int64_t b = 0; b < nvt; ++b) {
                tiles[b].s = 1.0f; tiles[b].a = 1.0f;
                const int64_t v0 = b * VT, nv = V - v0 < VT ? V - v0 : VT;
                if (src >= 0 && s_in)
                    for (int64_t j = 0; j < nv; ++j) {
                        mb_load_n(mb_elem(s_in, din, SOFF(si, src, hv, v0 + j)), din, si[3], K, tmp);
                        for (int64_t kk = 0; kk < K; ++kk) tiles[b].S[kk * VT + j] = tmp[kk];
                    }
            }
            for (int64_t i0 = 0; i0 < L; i0 += TB) {
                const int64_t nb = L - i0 < TB ? L - i0 : TB;
                for (int64_t i = 0; i < nb; ++i) {
                    const int64_t t = t0 + i0 + i;
                    float* r = tok + (i + 1) * per;
                    r[2 * K] = prep_kq(q, k, prm, t, h, scale, r, r + K);
                    r[2 * K + 1] = expf(mb_ld(g, dg, t * st[6] + hv * st[7]));
                    mb_load_n(mb_elem(x, dx, t * st[4] + hv * st[5]), dx, 1, V, xb + i * Vp);
                    float* bi = bb + i * Vp;
                    if (!beta)
                        for (int64_t j = 0; j < V; ++j) bi[j] = 1.0f;
                    else if (st[10])
                        mb_load_n(mb_elem(beta, db, t * st[8] + hv * st[9]), db, st[10], V, bi);
                    else {
                        const float b1 = mb_ld(beta, db, t * st[8] + hv * st[9]);
                        for (int64_t j = 0; j < V; ++j) bi[j] = b1;
                    }
                }
                for (int64_t b = 0; b < nvt; ++b) {
                    const int64_t v0 = b * VT, nv = V - v0 < VT ? V - v0 : VT;
                    for (int64_t i = 0; i < nb; ++i) {
                        const int64_t t = t0 + i0 + i;
                        const float* r = tok + (i + 1) * per;
                        const int64_t off = i * Vp + v0;
                        tile_token(&tiles[b], K, r - per, r, r + K, r[2 * K], r[2 * K + 1],
                                   xb + off, bb + off, ob + off);
                        if (mode == 1) {
                            const int64_t slot = dst2d[n * ncol + i0 + i];
                            if (slot > 0)
                                store_tile(s_out, dso, so, slot, hv, v0, nv, K, &tiles[b], r, tmp);
                        } else if (mode == 2) {
                            store_tile(s_out, dso, so, t, hv, v0, nv, K, &tiles[b], r, tmp);
                        }
                    }
                }
                for (int64_t i = 0; i < nb; ++i)
                    mb_store_n(mb_elem(o, dout, (t0 + i0 + i) * st[11] + hv * st[12]), dout, 1, V, ob + i * Vp);
                memcpy(tok, tok + nb * per, sizeof(float) * (size_t)per);  /* last token */
            }
            if (mode == 0 && dst >= 0)
                for (int64_t b = 0; b < nvt; ++b) {
                    const int64_t v0 = b * VT, nv = V - v0 < VT ? V - v0 : VT;
                    store_tile(s_out, dso, so, dst, hv, v0, nv, K, &tiles[b], tok, tmp);
                }
        }
        free(tiles); free(mem);
    }
}

/* the int64 block of MbGdnArgs, N .. sstate_out[3], as one array */
_Static_assert(offsetof(MbGdnArgs, sstate_out) + 4 * 8 - offsetof(MbGdnArgs, N) ==
                   MB_GDN_NPRM * 8, "MbGdnArgs: N .. sstate_out are one int64 array");

/* Whether the n elements at p (stride s, dtype dt) are finite, by their exponent bits; with
   allow_ninf, -inf counts as finite (a gate that resets the state). */
static int finite_n(const void* p, int dt, int64_t n, int64_t s, int allow_ninf) {
    int bad = 0;
    if (dt == MB_F32) {
        const uint32_t* u = (const uint32_t*)p;
        for (int64_t i = 0; i < n; ++i) {
            const uint32_t b = u[i * s];
            bad |= ((b & 0x7f800000u) == 0x7f800000u) & !(allow_ninf && b == 0xff800000u);
        }
    } else {
        const uint16_t* u = (const uint16_t*)p;
        const uint16_t em = dt == MB_BF16 ? 0x7f80u : 0x7c00u;
        const uint16_t ninf = dt == MB_BF16 ? 0xff80u : 0xfc00u;
        for (int64_t i = 0; i < n; ++i) {
            const uint16_t b = u[i * s];
            bad |= ((b & em) == em) & !(allow_ninf && b == ninf);
        }
    }
    return !bad;
}

/* Whether every input of every token that runs is finite: q, k, v, beta, and g but for -inf.
   (The fused forms equal the spec's order of operations on finite inputs only; the caller
   runs that order itself when this fails. Tokens of skipped sequences are never read.) */
static int gdn_inputs_finite(const MbGdnArgs* a) {
    const int dq = (int)a->dq, dk = (int)a->dk, dv = (int)a->dv, dg = (int)a->dg;
    const int db = (int)a->dbeta;
    for (int64_t n = 0; n < a->N; ++n) {
        const int64_t t0 = a->seq[4 * n], t1 = t0 + a->seq[4 * n + 1];
        for (int64_t t = t0; t < t1; ++t) {
            for (int64_t h = 0; h < a->H; ++h)
                if (!finite_n(mb_elem(a->q, dq, t * a->sq[0] + h * a->sq[1]), dq, a->K, 1, 0) ||
                    !finite_n(mb_elem(a->k, dk, t * a->sk[0] + h * a->sk[1]), dk, a->K, 1, 0))
                    return 0;
            for (int64_t hv = 0; hv < a->HV; ++hv) {
                if (!finite_n(mb_elem(a->v, dv, t * a->sv[0] + hv * a->sv[1]), dv, a->V, 1, 0) ||
                    !finite_n(mb_elem(a->g, dg, t * a->sg[0] + hv * a->sg[1]), dg, 1, 1, 1))
                    return 0;
                const int64_t nb = a->sbeta[2] ? a->V : 1;
                if (a->beta && !finite_n(mb_elem(a->beta, db, t * a->sbeta[0] + hv * a->sbeta[1]),
                                         db, nb, a->sbeta[2], 0))
                    return 0;
            }
        }
    }
    return 1;
}

int mb_gdn_rows(const MbGdnArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    if (a->check_finite && !gdn_inputs_finite(a)) return MB_ENONFINITE;
    int64_t prm[MB_GDN_NPRM];
    memcpy(prm, &a->N, sizeof prm);
    gdn_rows(a->q, a->k, a->v, a->g, a->beta, a->o, a->state_in, a->state_out, a->seq,
             a->dst2d, prm, a->scale, (int)a->nthreads);
    return MB_OK;
}

int mb_gdn_tiles(const MbGdnArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    if (a->check_finite && !gdn_inputs_finite(a)) return MB_ENONFINITE;
    int64_t prm[MB_GDN_NPRM];
    memcpy(prm, &a->N, sizeof prm);
    gdn_tiles(a->q, a->k, a->v, a->g, a->beta, a->o, a->state_in, a->state_out, a->seq,
              a->dst2d, prm, a->scale, (int)a->nthreads, a->token_block > 0 ? a->token_block : 1);
    return MB_OK;
}

/* ------------------------------------------------------------------ gating */
/* g = -exp(A_log) * softplus(a + dt_bias), beta_out = sigmoid(b); a, b (T, HV) strided */
int mb_gdn_gating(const MbGatingArgs* p, int64_t args_size) {
    MB_CHECK_ARGS(p, args_size);
    const int64_t T = p->T, HV = p->HV;
    const int dA = (int)p->dA, da = (int)p->da, db = (int)p->db, dd = (int)p->dd;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < HV; ++h) {
            const float xv = mb_ld(p->a, da, t * p->sa[0] + h * p->sa[1]) +
                             mb_ld(p->dt_bias, dd, h * p->sdt_bias);
            const float sp = mb_softplus_beta(xv, p->beta, p->threshold);
            p->g[t * HV + h] = -expf(mb_ld(p->A_log, dA, h * p->sA_log)) * sp;
            const float bv = mb_ld(p->b, db, t * p->sb[0] + h * p->sb[1]);
            mb_st(p->beta_out, db, t * HV + h, 1.0f / (1.0f + expf(-bv)));
        }
    return MB_OK;
}
