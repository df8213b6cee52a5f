/* Causal depthwise conv1d (mb_conv), prefill and decode in one kernel. */
#include "mb_common.h"

/* One kernel serves causal_conv1d_fn and causal_conv1d_update.

   Every request b is a run of tokens; channel c of token t (0-based inside the request) is at
       x + (b * sxb + (start_b + t) * sxt + c * sxc) elements,    start_b = qsl ? qsl[b] : 0,
   its length is qsl[b+1]-qsl[b] (or L without qsl). The output y uses its own strides (it may
   be x itself: every token is read before its output is written, and the window of previous
   inputs is kept in a local buffer, never re-read from x). The state of request b is slot
   slots[b] (b without slots) of st: column i (oldest first) of channel c at
   slot * s0 + c * s1 + i * s2. Its first K = W-1 columns are the initial window (init_mode 2,
   or init_mode 1 where has_init[b], else zeros) and receive the last K inputs.
   A request whose slot is pad/null is skipped: nothing read or written, its output rows are
   zeroed when zero_skipped. Math is fp32; x/y/st/w/bias are fp32 (0), bf16 (1) or fp16 (2).

   Work items: channel groups of CG channels. mode 0: item = (chunk of a request, block);
   with split, a request is cut in chunks of chunk_tokens tokens (the window of a chunk is
   read from x), and the state of a request of several chunks is written after a barrier, so that no chunk
   reads an initial state after it was overwritten. mode 1: item = one request, all groups.
   Inside a group, blocks of 64 channels run on MB_VL-lane GCC vectors with the window kept in
   registers (mb_vblock; unit channel strides, x and y both fp32 or both bf16), one-token
   decode runs a fused load-compute-shift loop (mb_dec1), and the rest (fp16, strided
   channels, a tail of < 64 channels) a scalar ring of fp32 rows (mb_run). AVX-512 (F, BF16)
   intrinsics replace a few portable operations where the compiler targets them. */

#define CG 512 /* channels per work item */
#define KMAX 3

static void mb_zero(char* p, int dt, int64_t s, int64_t n) {
    if (s == 1) {
        memset(p, 0, (size_t)(n * mb_esize(dt)));
    } else if (dt == 0) {
        for (int64_t i = 0; i < n; ++i) ((float*)p)[i * s] = 0.0f;
    } else {
        for (int64_t i = 0; i < n; ++i) ((uint16_t*)p)[i * s] = 0; /* +0 in bf16 and fp16 */
    }
}

/* o[c] = act(bias[c] + sum_k w[k][c] * r[k][c]), c < nc: one token, rows r[0..K] oldest first. */
static inline __attribute__((always_inline)) void mb_taps(
    const int K, int64_t nc, const float* const* r, const float* restrict wf, int64_t dim,
    float* restrict o, int silu) {
    const float* bias = wf + (int64_t)(K + 1) * dim;
    const float* r0 = r[0];
    const float* r1 = r[K > 0 ? 1 : 0];
    const float* r2 = r[K > 1 ? 2 : 0];
    const float* r3 = r[K > 2 ? 3 : 0];
    const float *w0 = wf, *w1 = wf + dim, *w2 = wf + 2 * dim, *w3 = wf + 3 * dim;
    if (silu) {
        #pragma omp simd
        for (int64_t c = 0; c < nc; ++c) {
            float v = bias[c] + w0[c] * r0[c];
            if (K > 0) v += w1[c] * r1[c];
            if (K > 1) v += w2[c] * r2[c];
            if (K > 2) v += w3[c] * r3[c];
            o[c] = mb_silu(v);
        }
    } else {
        #pragma omp simd
        for (int64_t c = 0; c < nc; ++c) {
            float v = bias[c] + w0[c] * r0[c];
            if (K > 0) v += w1[c] * r1[c];
            if (K > 1) v += w2[c] * r2[c];
            if (K > 2) v += w3[c] * r3[c];
            o[c] = v;
        }
    }
}

typedef struct {
    const char *x, *qsl, *slots;
    char *y, *st;
    const uint8_t* has_init;
    const float* wf; /* (W + 1, dim): taps then bias, fp32 */
    int64_t B, L, dim, W, K;
    int64_t xdt, sxb, sxt, sxc, ydt, syb, syt, syc, sdt, s0, s1, s2;
    int64_t q64, i64, sslot, pad_id, has_pad, null_id, has_null;
    int64_t init_mode, silu, zero_skipped, split, mode, chunk_tokens, prefetch;
} MbConv;

static inline int64_t mb_idx(const char* p, int is64, int64_t i) {
    return is64 ? ((const int64_t*)p)[i] : (int64_t)((const int32_t*)p)[i];
}

static inline void mb_request(const MbConv* a, int64_t b, int64_t* start, int64_t* len,
                              int64_t* slot, int* skip) {
    if (a->qsl) {
        *start = mb_idx(a->qsl, (int)a->q64, b);
        *len = mb_idx(a->qsl, (int)a->q64, b + 1) - *start;
    } else {
        *start = 0;
        *len = a->L;
    }
    *slot = a->slots ? mb_idx(a->slots, (int)a->i64, b * a->sslot) : b;
    *skip = a->slots && ((a->has_pad && *slot == a->pad_id) ||
                         (a->has_null && *slot == a->null_id));
}

static inline const char* mb_xrow(const MbConv* a, int64_t b, int64_t tok, int64_t c0) {
    return a->x + (b * a->sxb + tok * a->sxt + c0 * a->sxc) * mb_esize((int)a->xdt);
}

static inline char* mb_yrow(const MbConv* a, int64_t b, int64_t tok, int64_t c0) {
    return a->y + (b * a->syb + tok * a->syt + c0 * a->syc) * mb_esize((int)a->ydt);
}

static inline char* mb_scol(const MbConv* a, int64_t slot, int64_t c0, int64_t i) {
    return a->st + (slot * a->s0 + c0 * a->s1 + i * a->s2) * mb_esize((int)a->sdt);
}

/* silu(v) = v * sigmoid(v) on MB_VL lanes: the width-generic gate of the ISA headers (2^t
   by a degree-5 polynomial, 1 / (1 + e) by a reciprocal estimate and one Newton step on x86),
   about twice as fast as mb_vsilu (its exp and division sit on the decode loop's critical
   path); same non-finite values (-inf gives NaN, +inf stays inf, -0 below -88). */
MB_ALWAYS_INLINE mb_vf mb_conv_silu(mb_vf v) { return mb_vgate((mb_vf){0} + 1.0f, v); }

/* MB_VL bf16 values (raw bits) as fp32 */
MB_ALWAYS_INLINE mb_vf mb_widen_bf16(mb_vh h) {
    const mb_vu u = __builtin_convertvector(h, mb_vu) << 16;
    mb_vf v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Fast path: blocks of 64 channels as VB vectors of MB_VL lanes (mb_common.h), the window
   rotating in registers, for unit channel strides and x, y both fp32 or both bf16. */
#define VL MB_VL
#define VB (64 / MB_VL) /* vectors per token step: 64 channels */
#define MB_CONV_TG 8 /* tokens per group of the two-pass (bf16, SiLU) loop */

static inline __attribute__((always_inline)) void mb_vblock(
    const int K, const int dt, const int silu, const MbConv* a, int64_t b, int64_t start,
    int64_t slot, int use_init, int64_t t0, int64_t t1, int64_t c, int write_state) {
    const float* wf = a->wf + c;
    const int64_t dim = a->dim;
    mb_vf w[KMAX + 1][VB], h[KMAX + 1][VB], bias[VB];
    for (int j = 0; j < VB; ++j) {
        for (int k = 0; k <= K; ++k) memcpy(&w[k][j], wf + k * dim + j * VL, sizeof(mb_vf));
        memcpy(&bias[j], wf + (K + 1) * dim + j * VL, sizeof(mb_vf));
    }
    const int sfast = a->s1 == 1 && a->sdt < 2;
    const int64_t ses = mb_esize((int)a->sdt);
    for (int i = 0; i < K; ++i) {
        const int64_t p = t0 - K + i;
        for (int j = 0; j < VB; ++j) {
            const int64_t cj = c + j * VL;
            if (p >= 0) {
                h[i][j] = mb_vload(mb_xrow(a, b, start + p, cj), dt);
            } else if (!use_init) {
                h[i][j] = (mb_vf){0};
            } else if (sfast) {
                h[i][j] = mb_vload(mb_scol(a, slot, cj, K + p), (int)a->sdt);
            } else {
                float tmp[VL];
                mb_load_n(mb_scol(a, slot, cj, K + p), (int)a->sdt, a->s1, VL, tmp);
                memcpy(&h[i][j], tmp, sizeof tmp);
            }
        }
    }
    const int64_t es = dt == 0 ? 4 : 2, xs = a->sxt * es, ys = a->syt * es;
    const char* xp = mb_xrow(a, b, start + t0, c);
    char* yp = mb_yrow(a, b, start + t0, c);
    /* bf16 with SiLU: pre-activations of MB_CONV_TG tokens first, then the activation and
       bf16 rounding over them as one stream (the fused loop ran ~25% slower on AVX2: the
       activation's chain behind the taps' left too little independent work in flight);
       fp32 and no activation keep the fused loop (the two-pass form measured slower there).
       AVX-512 keeps the fused loop too (its 32 registers hold the block; not measured). */
    const int grouped = MB_VL < 16 && dt == MB_BF16 && silu;
    for (int64_t tg = t0; grouped && tg < t1; tg += MB_CONV_TG) {
        const int64_t nt = t1 - tg < MB_CONV_TG ? t1 - tg : MB_CONV_TG;
        mb_vf pre[MB_CONV_TG][VB];
        const char* xq = xp;
        for (int64_t i = 0; i < nt; ++i, xq += xs) {
            if (tg + i + a->prefetch < t1) __builtin_prefetch(xq + a->prefetch * xs);
            for (int j = 0; j < VB; ++j) {
                h[K][j] = mb_vload(xq + j * VL * es, dt);
                mb_vf v = bias[j] + w[0][j] * h[0][j];
                for (int k = 1; k <= K; ++k) v += w[k][j] * h[k][j];
                for (int k = 0; k < K; ++k) h[k][j] = h[k + 1][j];
                pre[i][j] = v;
            }
        }
        for (int64_t i = 0; i < nt; ++i, xp += xs, yp += ys)
            for (int j = 0; j < VB; ++j) mb_vstore(yp + j * VL * es, dt, mb_conv_silu(pre[i][j]));
    }
    for (int64_t t = t0; !grouped && t < t1; ++t, xp += xs, yp += ys) {
        if (t + a->prefetch < t1) __builtin_prefetch(xp + a->prefetch * xs);
        for (int j = 0; j < VB; ++j) {
            h[K][j] = mb_vload(xp + j * VL * es, dt);
            mb_vf v = bias[j] + w[0][j] * h[0][j];
            for (int k = 1; k <= K; ++k) v += w[k][j] * h[k][j];
            for (int k = 0; k < K; ++k) h[k][j] = h[k + 1][j];
            if (silu) v = mb_conv_silu(v);
            mb_vstore(yp + j * VL * es, dt, v);
        }
    }
    (void)ses;
    if (!write_state) return;
    for (int i = 0; i < K; ++i) {
        for (int j = 0; j < VB; ++j) {
            const int64_t cj = c + j * VL;
            if (sfast) {
                mb_vstore(mb_scol(a, slot, cj, i), (int)a->sdt, h[i][j]);
            } else {
                float tmp[VL];
                memcpy(tmp, &h[i][j], sizeof tmp);
                mb_store_n(mb_scol(a, slot, cj, i), (int)a->sdt, a->s1, VL, tmp);
            }
        }
    }
}

#define MB_VK(KK, DT, SI) mb_vblock(KK, DT, SI, a, b, start, slot, use_init, t0, t1, c, ws)

/* Channels [c0, c0 + nc) in blocks of VL; returns how many channels it handled. */
static int64_t mb_run_vec(const MbConv* a, int64_t b, int64_t start, int64_t slot,
                          int use_init, int64_t t0, int64_t t1, int64_t c0, int64_t nc,
                          int ws) {
    if (a->sxc != 1 || a->syc != 1 || a->xdt != a->ydt || a->xdt > 1 || a->K < 1) return 0;
    const int dt = (int)a->xdt, si = (int)a->silu, K = (int)a->K;
    int64_t c = c0;
    for (; c + VL * VB <= c0 + nc; c += VL * VB) {
        const int code = (K - 1) * 4 + dt * 2 + si;
        switch (code) {
            case 0: MB_VK(1, 0, 0); break;
            case 1: MB_VK(1, 0, 1); break;
            case 2: MB_VK(1, 1, 0); break;
            case 3: MB_VK(1, 1, 1); break;
            case 4: MB_VK(2, 0, 0); break;
            case 5: MB_VK(2, 0, 1); break;
            case 6: MB_VK(2, 1, 0); break;
            case 7: MB_VK(2, 1, 1); break;
            case 8: MB_VK(3, 0, 0); break;
            case 9: MB_VK(3, 0, 1); break;
            case 10: MB_VK(3, 1, 0); break;
            default: MB_VK(3, 1, 1); break;
        }
    }
    return c - c0;
}

/* One-token decode of request b (state read at use_init == 2): MB_VL channels a step, the new
   window written back as it is computed. ``same``: the state has x's dtype (a literal, as are
   K, dt and silu), so that the shifted window is stored as the bits it was read as (a copy,
   as the spec's concatenation is: no fp32 round trip, no bf16 rounding per column); else the
   state dtype is read at run time. Returns the channels handled (a multiple of VL). */
static inline __attribute__((always_inline)) int64_t mb_dec1(
    const int K, const int dt, const int same, const int silu, const MbConv* a, int64_t b,
    int64_t slot) {
    const int sdt = same ? dt : (int)a->sdt;
    const int64_t dim = a->dim, es = dt == 0 ? 4 : 2, ses = mb_esize(sdt);
    const char* xp = a->x + b * a->sxb * es;
    char* yp = a->y + b * a->syb * es;
    char* sp = a->st + slot * a->s0 * ses;
    const int64_t cs = a->s2 * ses;
    const float* wf = a->wf;
    int64_t c = 0;
    for (; c + VL <= dim; c += VL) {
        mb_vf h[KMAX + 1], w, v;
        if (same && dt == MB_BF16) {
            mb_vh raw[KMAX + 1];
            for (int k = 0; k < K; ++k) memcpy(&raw[k], sp + k * cs + c * 2, sizeof(mb_vh));
            memcpy(&raw[K], xp + c * 2, sizeof(mb_vh));
            for (int k = 0; k <= K; ++k) h[k] = mb_widen_bf16(raw[k]);
            for (int k = 0; k < K; ++k) memcpy(sp + k * cs + c * 2, &raw[k + 1], sizeof(mb_vh));
        } else {
            for (int k = 0; k < K; ++k) h[k] = mb_vload(sp + k * cs + c * ses, sdt);
            h[K] = mb_vload(xp + c * es, dt);
            for (int k = 0; k < K; ++k) mb_vstore(sp + k * cs + c * ses, sdt, h[k + 1]);
        }
        memcpy(&v, wf + (K + 1) * dim + c, sizeof v);
        for (int k = 0; k <= K; ++k) {
            memcpy(&w, wf + k * dim + c, sizeof w);
            v += w * h[k];
        }
        if (silu) v = mb_conv_silu(v);
        mb_vstore(yp + c * es, dt, v);
    }
    return c;
}

#define MB_D1(KK, DT, SI)                                                          \
    (a->sdt == (DT) ? mb_dec1(KK, DT, 1, SI, a, b, slot) : mb_dec1(KK, DT, 0, SI, a, b, slot))

static int64_t mb_dec1_any(const MbConv* a, int64_t b, int64_t slot) {
    const int code = ((int)a->K - 1) * 4 + (int)a->xdt * 2 + (int)a->silu;
    switch (code) {
        case 0: return MB_D1(1, 0, 0);
        case 1: return MB_D1(1, 0, 1);
        case 2: return MB_D1(1, 1, 0);
        case 3: return MB_D1(1, 1, 1);
        case 4: return MB_D1(2, 0, 0);
        case 5: return MB_D1(2, 0, 1);
        case 6: return MB_D1(2, 1, 0);
        case 7: return MB_D1(2, 1, 1);
        case 8: return MB_D1(3, 0, 0);
        case 9: return MB_D1(3, 0, 1);
        case 10: return MB_D1(3, 1, 0);
        default: return MB_D1(3, 1, 1);
    }
}

/* Tokens [t0, t1) of request b, channels [c0, c0 + nc); writes the state when write_state.
   The last KMAX + 1 inputs (fp32) live in a ring of row pieces; position p is row p & 3. */
static void mb_run(const MbConv* a, int64_t b, int64_t start, int64_t slot, int use_init,
                   int64_t t0, int64_t t1, int64_t c0, int64_t nc, int write_state) {
    const int64_t done = mb_run_vec(a, b, start, slot, use_init, t0, t1, c0, nc, write_state);
    if (done == nc) return;
    c0 += done;
    nc -= done;
    float ring[(KMAX + 1) * CG];
    float out[CG];
    const int64_t K = a->K;
    const float* wf = a->wf + c0;
    const float* rows[KMAX + 1];
    for (int64_t i = 0; i < K; ++i) {
        const int64_t p = t0 - K + i;
        float* row = ring + ((p + 4) & 3) * CG;
        if (p >= 0)
            mb_load_n(mb_xrow(a, b, start + p, c0), (int)a->xdt, a->sxc, nc, row);
        else if (use_init)
            mb_load_n(mb_scol(a, slot, c0, K + p), (int)a->sdt, a->s1, nc, row);
        else
            memset(row, 0, (size_t)nc * sizeof(float));
    }
    for (int64_t t = t0; t < t1; ++t) {
        mb_load_n(mb_xrow(a, b, start + t, c0), (int)a->xdt, a->sxc, nc, ring + (t & 3) * CG);
        for (int64_t k = 0; k <= K; ++k) rows[k] = ring + ((t - K + k + 4) & 3) * CG;
        switch (K) {
            case 0: mb_taps(0, nc, rows, wf, a->dim, out, (int)a->silu); break;
            case 1: mb_taps(1, nc, rows, wf, a->dim, out, (int)a->silu); break;
            case 2: mb_taps(2, nc, rows, wf, a->dim, out, (int)a->silu); break;
            default: mb_taps(3, nc, rows, wf, a->dim, out, (int)a->silu); break;
        }
        mb_store_n(mb_yrow(a, b, start + t, c0), (int)a->ydt, a->syc, nc, out);
    }
    if (write_state)
        for (int64_t i = 0; i < K; ++i)
            mb_store_n(mb_scol(a, slot, c0, i), (int)a->sdt, a->s1, nc,
                     ring + ((t1 - K + i + 4) & 3) * CG);
}

int mb_conv(const MbConvArgs* p, int64_t args_size) {
    MB_CHECK_ARGS(p, args_size);
    if (p->check_slots && p->slots) { /* before any write: a refused call changes nothing */
        const int ok = mb_slots_ok(p->slots, !p->i64, p->sslot, p->B, p->nslots, p->pad_id,
                                   (int)p->has_pad, p->null_id, (int)p->has_null, 1);
        if (ok != 1) return ok == 0 ? MB_EINDEX : ok;
    }
    MbConv a;
    a.x = (const char*)p->x; a.y = (char*)p->y; a.st = (char*)p->states;
    a.qsl = (const char*)p->qsl; a.slots = (const char*)p->slots; a.has_init = p->has_init;
    a.B = p->B; a.L = p->L; a.dim = p->dim; a.W = p->W; a.K = a.W - 1;
    a.xdt = p->xdt; a.sxb = p->sxb; a.sxt = p->sxt; a.sxc = p->sxc;
    a.ydt = p->ydt; a.syb = p->syb; a.syt = p->syt; a.syc = p->syc;
    a.sdt = p->sdt; a.s0 = p->s0; a.s1 = p->s1; a.s2 = p->s2;
    const void *w = p->weight, *bias = p->bias;
    const int64_t wdt = p->wdt, sw0 = p->sw0, sw1 = p->sw1, bdt = p->bdt, sb = p->sb;
    a.q64 = p->q64; a.i64 = p->i64; a.sslot = p->sslot; a.pad_id = p->pad_id;
    a.has_pad = p->has_pad; a.null_id = p->null_id; a.has_null = p->has_null;
    a.init_mode = p->init_mode; a.silu = p->silu; a.zero_skipped = p->zero_skipped;
    a.split = p->split; a.mode = p->mode;
    a.chunk_tokens = p->chunk_tokens > 0 ? p->chunk_tokens : 1;
    a.prefetch = p->prefetch;
    const int nthreads = (int)p->nthreads;
    const int64_t dim = a.dim, W = a.W, B = a.B;
    if (W < 1 || W > KMAX + 1 || B <= 0 || dim <= 0) return MB_OK;

    /* fp32 taps, (W, dim), then the bias row */
    float* wf = (float*)malloc((size_t)((W + 1) * dim) * sizeof(float));
    if (!wf) return MB_ENOMEM;
    for (int64_t k = 0; k < W; ++k)
        mb_load_n((const char*)w + k * sw1 * mb_esize((int)wdt), (int)wdt, sw0, dim,
                wf + k * dim);
    if (bias)
        mb_load_n((const char*)bias, (int)bdt, sb, dim, wf + W * dim);
    else
        memset(wf + W * dim, 0, (size_t)dim * sizeof(float));
    a.wf = wf;

    const int64_t nblk = (dim + CG - 1) / CG;
    if (a.mode == 1) {
        /* one token per request, unit channel strides, x and y both fp32 or both bf16 */
        const int dec1 = !a.qsl && a.L == 1 && a.init_mode == 2 && a.K >= 1 && a.sxc == 1 &&
                         a.syc == 1 && a.xdt == a.ydt && a.xdt < 2 && a.s1 == 1 && a.sdt < 2;
        #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
        for (int64_t b = 0; b < B; ++b) {
            int64_t start, len, slot;
            int skip;
            mb_request(&a, b, &start, &len, &slot, &skip);
            if (len <= 0 || skip) continue; /* decode: skipped rows untouched */
            const int use_init = a.init_mode == 2 || (a.init_mode == 1 && a.has_init[b]);
            const int64_t c0 = dec1 ? mb_dec1_any(&a, b, slot) : 0;
            for (int64_t c = c0; c < dim; c += CG) {
                const int64_t nc = dim - c < CG ? dim - c : CG;
                mb_run(&a, b, start, slot, use_init, 0, len, c, nc, 1);
            }
        }
        free(wf);
        return MB_OK;
    }

    /* mode 0: chunks; cs[b] = first chunk of request b */
    int64_t* cs = (int64_t*)malloc((size_t)(B + 1) * sizeof(int64_t));
    if (!cs) {
        free(wf);
        return MB_ENOMEM;
    }
    cs[0] = 0;
    for (int64_t b = 0; b < B; ++b) {
        int64_t start, len, slot;
        int skip;
        mb_request(&a, b, &start, &len, &slot, &skip);
        const int64_t ch = a.chunk_tokens;
        const int64_t nch = (a.split && len > ch) ? (len + ch - 1) / ch : 1;
        cs[b + 1] = cs[b] + nch;
    }
    const int64_t nitems = cs[B] * nblk;
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < nitems; ++item) {
            const int64_t g = item / nblk, blk = item % nblk;
            int64_t lo = 0, hi = B; /* last b with cs[b] <= g */
            while (hi - lo > 1) {
                int64_t mid = (lo + hi) / 2;
                if (cs[mid] <= g) lo = mid; else hi = mid;
            }
            const int64_t b = lo, nch = cs[b + 1] - cs[b], ci = g - cs[b];
            int64_t start, len, slot;
            int skip;
            mb_request(&a, b, &start, &len, &slot, &skip);
            if (len <= 0) continue;
            const int64_t c0 = blk * CG, nc = dim - c0 < CG ? dim - c0 : CG;
            const int64_t t0 = nch > 1 ? ci * a.chunk_tokens : 0;
            const int64_t t1 =
                nch > 1 ? (t0 + a.chunk_tokens < len ? t0 + a.chunk_tokens : len) : len;
            if (skip) {
                if (a.zero_skipped)
                    for (int64_t t = t0; t < t1; ++t)
                        mb_zero(mb_yrow(&a, b, start + t, c0), (int)a.ydt, a.syc, nc);
                continue;
            }
            const int use_init = a.init_mode == 2 || (a.init_mode == 1 && a.has_init[b]);
            mb_run(&a, b, start, slot, use_init, t0, t1, c0, nc, nch == 1);
        }
        /* implicit barrier: every initial state has been read */
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < B * nblk; ++item) {
            const int64_t b = item / nblk, blk = item % nblk;
            if (cs[b + 1] - cs[b] <= 1) continue;
            int64_t start, len, slot;
            int skip;
            mb_request(&a, b, &start, &len, &slot, &skip);
            if (skip || len < a.K) continue;
            const int64_t c0 = blk * CG, nc = dim - c0 < CG ? dim - c0 : CG;
            float tmp[CG];
            for (int64_t i = 0; i < a.K; ++i) {
                mb_load_n(mb_xrow(&a, b, start + len - a.K + i, c0), (int)a.xdt, a.sxc, nc, tmp);
                mb_store_n(mb_scol(&a, slot, c0, i), (int)a.sdt, a.s1, nc, tmp);
            }
        }
    }
    free(cs);
    free(wf);
    return MB_OK;
}
