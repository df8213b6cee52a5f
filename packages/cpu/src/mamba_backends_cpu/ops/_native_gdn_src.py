"""C source of the fused gated-delta-net kernels (built and loaded by ``_native_gdn``).

Plain C99 + OpenMP, no PyTorch headers; loaded with :mod:`ctypes`. Every tensor is read
through its dtype code (0 fp32, 1 bf16, 2 fp16) and strides; all math is fp32.

The delta rule acts on each value row ``S[v, :]`` of a ``[V, K]`` state independently::

    sk = S[v] . k,  sq = S[v] . q,  d = beta * (x[v] - exp(g) * sk)
    o[v] = exp(g) * sq + d * (k . q),  S[v] <- exp(g) * S[v] + d * k

``mb_gdn_rows`` (decode, a few tokens per sequence) walks the rows of a state four at a time,
each row loaded once for all of its sequence's tokens. ``mb_gdn_tiles`` (prefill) holds a
block of ``VT`` rows transposed, ``[K, VT]``, so the inner loop runs across rows (no
horizontal sums) and the block stays in L1 for every token. It keeps the block scaled,
``S = s * S'``: a token then costs one FMA per element for the update and two for the dot
products (the decay multiply is folded into ``s``); ``S'`` is renormalised when ``s`` gets
small (or the decay is 0).

Parameter block ``prm`` (int64), shared by both kernels::

    0 N, 1 H, 2 HV, 3 K, 4 V, 5 l2norm, 6 dst_mode, 7 ncol,
    8..15 dtype codes of q, k, v, g, beta, o, state_in, state_out,
    16.. strides: q (t, h), k (t, h), v (t, h), g (t, h), beta (t, h, v), o (t, h),
                  state_in (4), state_out (4)            (last axis of q, k, v, o: unit)

``seq`` is ``[N, 4]`` int64: first token, token count, source slot (< 0: zero state),
destination slot (< 0: none). ``dst_mode`` 0 writes the final state to the destination
slot; 1 writes the state after token ``i`` to slot ``dst2d[n * ncol + i]`` when > 0;
2 writes it to slot ``first + i`` (per-token states).
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static inline float bf2f(uint16_t v) {
    union { uint32_t i; float f; } u; u.i = ((uint32_t)v) << 16; return u.f;
}
static inline uint16_t f2bf(float f) {
    union { uint32_t i; float f; } u; u.f = f;
    const uint32_t r = (u.i + 0x7FFFu + ((u.i >> 16) & 1u)) >> 16;
    return (uint16_t)((u.i & 0x7fffffffu) > 0x7f800000u ? (u.i >> 16) | 0x40u : r); /* NaN */
}
static inline float ldx(const void* p, int dt, int64_t i) {
    if (dt == 0) return ((const float*)p)[i];
    if (dt == 1) return bf2f(((const uint16_t*)p)[i]);
    return (float)((const _Float16*)p)[i];
}
static inline void stx(void* p, int dt, int64_t i, float x) {
    if (dt == 0) ((float*)p)[i] = x;
    else if (dt == 1) ((uint16_t*)p)[i] = f2bf(x);
    else ((_Float16*)p)[i] = (_Float16)x;
}
/* n contiguous-or-strided values -> fp32 */
static void ld_vec(float* dst, const void* p, int dt, int64_t off, int64_t st, int64_t n) {
    if (st == 1 && dt == 0) { memcpy(dst, (const float*)p + off, sizeof(float) * n); return; }
    if (st == 1 && dt == 1) {
        const uint16_t* s = (const uint16_t*)p + off;
        for (int64_t i = 0; i < n; ++i) dst[i] = bf2f(s[i]);
        return;
    }
    for (int64_t i = 0; i < n; ++i) dst[i] = ldx(p, dt, off + i * st);
}
static void st_vec(void* p, int dt, int64_t off, int64_t st, const float* src, int64_t n) {
    if (st == 1 && dt == 0) { memcpy((float*)p + off, src, sizeof(float) * n); return; }
    if (st == 1 && dt == 1) {
        uint16_t* d = (uint16_t*)p + off;
        for (int64_t i = 0; i < n; ++i) d[i] = f2bf(src[i]);
        return;
    }
    for (int64_t i = 0; i < n; ++i) stx(p, dt, off + i * st, src[i]);
}

/* k, q of token t at head h as fp32 (optionally L2-normalised), q scaled; returns k . q */
static float prep_kq(const void* q, const void* k, const int64_t* prm, int64_t t, int64_t h,
                     float scale, float* kn, float* qn) {
    const int64_t K = prm[3];
    const int64_t* st = prm + 16;
    ld_vec(kn, k, (int)prm[9], t * st[2] + h * st[3], 1, K);
    ld_vec(qn, q, (int)prm[8], t * st[0] + h * st[1], 1, K);
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
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads */
static inline float hsum(v16 x) {
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += x[i];
    return s;
}
void mb_gdn_rows(const void* q, const void* k, const void* x, const void* g, const void* beta,
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
                            ld_vec(row, s_in, din, SOFF(si, src, hv, v), si[3], K);
                        else
                            memset(row, 0, sizeof(float) * (size_t)K);
                        st_vec(s_out, dso, SOFF(so, dst, hv, v), so[3], row, K);
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
                b[2 * K + 1] = expf(ldx(g, dg, (t0 + i) * st[6] + hv * st[7]));
            }
            for (int64_t v0 = 0; v0 < V; v0 += RB) {
                const int64_t nr = V - v0 < RB ? V - v0 : RB;
                float* rp[RB];
                for (int64_t r = 0; r < RB; ++r) {
                    rp[r] = row + r * K;
                    if (r >= nr) { memset(rp[r], 0, sizeof(float) * (size_t)K); continue; }
                    if (src >= 0 && s_in)
                        ld_vec(rp[r], s_in, din, SOFF(si, src, hv, v0 + r), si[3], K);
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
                    if (K >= 16) {  /* whole vectors: 8 independent accumulators */
                        v16 A0 = {0}, A1 = {0}, A2 = {0}, A3 = {0};
                        v16 B0 = {0}, B1 = {0}, B2 = {0}, B3 = {0};
                        for (; j0 + 16 <= K; j0 += 16) {
                            const v16 kj = *(const v16u*)(kn + j0), qj = *(const v16u*)(qn + j0);
                            const v16 x0 = *(const v16u*)(r0 + j0), x1 = *(const v16u*)(r1 + j0);
                            const v16 x2 = *(const v16u*)(r2 + j0), x3 = *(const v16u*)(r3 + j0);
                            A0 += x0 * kj; A1 += x1 * kj; A2 += x2 * kj; A3 += x3 * kj;
                            B0 += x0 * qj; B1 += x1 * qj; B2 += x2 * qj; B3 += x3 * qj;
                        }
                        a0 = hsum(A0); a1 = hsum(A1); a2 = hsum(A2); a3 = hsum(A3);
                        b0 = hsum(B0); b1 = hsum(B1); b2 = hsum(B2); b3 = hsum(B3);
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
                            beta ? ldx(beta, db, t * st[8] + hv * st[9] + v * st[10]) : 1.0f;
                        d[r] = bt * (ldx(x, dx, t * st[4] + hv * st[5] + v) - dec * sk[r]);
                        stx(o, dout, t * st[11] + hv * st[12] + v, dec * sq[r] + d[r] * kq);
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
                                st_vec(s_out, dso, SOFF(so, slot, hv, v0 + r), so[3], rp[r], K);
                        } else if (mode == 2) {
                            st_vec(s_out, dso, SOFF(so, t, hv, v0 + r), so[3], rp[r], K);
                        }
                    }
                }
                if (mode == 0 && dst >= 0)
                    for (int64_t r = 0; r < nr; ++r)
                        st_vec(s_out, dso, SOFF(so, dst, hv, v0 + r), so[3], rp[r], K);
            }
        }
        free(row); free(tok);
    }
}

/* ------------------------------------------------------------------ tiles (prefill) */
#define VT 32
#define TB 32
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
        st_vec(s_out, dso, SOFF(so, slot, hv, v0 + j), so[3], tmp, K);
    }
}

/* one token on one block: apply the pending update (kp, dp), dot products with k and q,
   then the new pending update; writes VT outputs to ov and returns nothing */
static inline void tile_token(tile_t* tl, int64_t K, const float* kp, const float* kn,
                              const float* qn, float kq, float dec, const float* xv,
                              const float* bv, float* ov) {
    float* S = tl->S;
    v16 d0 = *(v16*)tl->dp, d1 = *(v16*)(tl->dp + 16);
    v16 k0 = {0}, k1 = {0}, q0 = {0}, q1 = {0};
    if (tl->a == 1.0f) {
        for (int64_t kk = 0; kk < K; ++kk) {
            v16* Sr = (v16*)(S + kk * VT);
            const float cp = kp[kk], ck = kn[kk], cq = qn[kk];
            const v16 s0 = Sr[0] + cp * d0, s1 = Sr[1] + cp * d1;
            Sr[0] = s0; Sr[1] = s1;
            k0 += s0 * ck; k1 += s1 * ck; q0 += s0 * cq; q1 += s1 * cq;
        }
    } else {
        const float a = tl->a;
        for (int64_t kk = 0; kk < K; ++kk) {
            v16* Sr = (v16*)(S + kk * VT);
            const float cp = kp[kk], ck = kn[kk], cq = qn[kk];
            const v16 s0 = a * Sr[0] + cp * d0, s1 = a * Sr[1] + cp * d1;
            Sr[0] = s0; Sr[1] = s1;
            k0 += s0 * ck; k1 += s1 * ck; q0 += s0 * cq; q1 += s1 * cq;
        }
    }
    float ak[VT] __attribute__((aligned(64))), aq[VT] __attribute__((aligned(64)));
    *(v16*)ak = k0; *(v16*)(ak + 16) = k1; *(v16*)aq = q0; *(v16*)(aq + 16) = q1;
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
void mb_gdn_tiles(const void* q, const void* k, const void* x, const void* g, const void* beta,
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
                        ld_vec(tmp, s_in, din, SOFF(si, src, hv, v0 + j), si[3], K);
                        for (int64_t kk = 0; kk < K; ++kk) tiles[b].S[kk * VT + j] = tmp[kk];
                    }
            }
            for (int64_t i0 = 0; i0 < L; i0 += TB) {
                const int64_t nb = L - i0 < TB ? L - i0 : TB;
                for (int64_t i = 0; i < nb; ++i) {
                    const int64_t t = t0 + i0 + i;
                    float* r = tok + (i + 1) * per;
                    r[2 * K] = prep_kq(q, k, prm, t, h, scale, r, r + K);
                    r[2 * K + 1] = expf(ldx(g, dg, t * st[6] + hv * st[7]));
                    ld_vec(xb + i * Vp, x, dx, t * st[4] + hv * st[5], 1, V);
                    float* bi = bb + i * Vp;
                    if (!beta)
                        for (int64_t j = 0; j < V; ++j) bi[j] = 1.0f;
                    else if (st[10])
                        ld_vec(bi, beta, db, t * st[8] + hv * st[9], st[10], V);
                    else {
                        const float b1 = ldx(beta, db, t * st[8] + hv * st[9]);
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
                    st_vec(o, dout, (t0 + i0 + i) * st[11] + hv * st[12], 1, ob + i * Vp, V);
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

/* ------------------------------------------------------------------ gating */
/* g = -exp(A_log) * softplus(a + dt_bias), beta_out = sigmoid(b); a, b (T, HV) strided */
void mb_gdn_gating(const void* A_log, const void* a, const void* b, const void* dt_bias,
                   float* g, void* beta_out, const int64_t* prm, float sp_beta,
                   float threshold) {
    const int64_t T = prm[0], HV = prm[1];
    const int dA = (int)prm[2], da = (int)prm[3], db = (int)prm[4], dd = (int)prm[5];
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < HV; ++h) {
            const float xv = ldx(a, da, t * prm[6] + h * prm[7]) + ldx(dt_bias, dd, h * prm[10]);
            const float bx = sp_beta * xv;
            const float sp = bx > threshold ? xv : log1pf(expf(bx)) / sp_beta;
            g[t * HV + h] = -expf(ldx(A_log, dA, h * prm[11])) * sp;
            const float bv = ldx(b, db, t * prm[8] + h * prm[9]);
            stx(beta_out, db, t * HV + h, 1.0f / (1.0f + expf(-bv)));
        }
}
"""
