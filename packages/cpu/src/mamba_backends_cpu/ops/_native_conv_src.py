"""C source of the causal depthwise conv1d kernels (prefill and decode), see ``_native_conv``."""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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
   with split, a request is cut in chunks of CH tokens (the window of a chunk is read from x),
   and the state of a request of several chunks is written after a barrier, so that no chunk
   reads an initial state after it was overwritten. mode 1: item = one request, all groups.
   Inside a group, blocks of 64 channels run on 16-lane GCC vectors with the window kept in
   registers (mb_vblock; unit channel strides, x and y both fp32 or both bf16), one-token
   decode runs a fused load-compute-shift loop (mb_dec1), and the rest (fp16, strided
   channels, a tail of < 64 channels) a scalar ring of fp32 rows (mb_run). AVX-512 (F, BF16)
   intrinsics replace a few portable operations where the compiler targets them. */

#define CG 512 /* channels per work item */
#define CH 128 /* prefill tokens per work item */
#define KMAX 3

typedef _Float16 mb_half;

static inline float mb_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t mb_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; /* nearest, ties to even */
    uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? quiet : rounded);
}

/* exp for the SiLU: n = round(v / ln2), r = v - n ln2 (two-part ln2), degree-7 Taylor
   polynomial of e^r on |r| <= ln2/2 (relative error ~1e-7), times 2^n built in the exponent. */
static inline float mb_exp(float v) {
    v = v < -87.0f ? -87.0f : v; /* not fminf/fmaxf: those stay libm calls (NaN rules) */
    v = v > 88.0f ? 88.0f : v;
    /* round to nearest by the 1.5 * 2^23 shift (floorf is a libm call without fast-math) */
    float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = v - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

static inline int64_t mb_esize(int dt) { return dt == 0 ? 4 : 2; }

/* d[i] = p[i * s] as fp32, i < n */
static void mb_load(const char* p, int dt, int64_t s, int64_t n, float* restrict d) {
    if (dt == 0) {
        const float* q = (const float*)p;
        if (s == 1) {
            memcpy(d, q, (size_t)n * sizeof(float));
        } else {
            for (int64_t i = 0; i < n; ++i) d[i] = q[i * s];
        }
    } else if (dt == 1) {
        const uint16_t* q = (const uint16_t*)p;
        if (s == 1) {
            #pragma omp simd
            for (int64_t i = 0; i < n; ++i) d[i] = mb_bf16_to_f32(q[i]);
        } else {
            for (int64_t i = 0; i < n; ++i) d[i] = mb_bf16_to_f32(q[i * s]);
        }
    } else {
        const mb_half* q = (const mb_half*)p;
        if (s == 1) {
            #pragma omp simd
            for (int64_t i = 0; i < n; ++i) d[i] = (float)q[i];
        } else {
            for (int64_t i = 0; i < n; ++i) d[i] = (float)q[i * s];
        }
    }
}

/* p[i * s] = v[i] in dtype dt, i < n */
static void mb_store(char* p, int dt, int64_t s, int64_t n, const float* restrict v) {
    if (dt == 0) {
        float* q = (float*)p;
        if (s == 1) {
            memcpy(q, v, (size_t)n * sizeof(float));
        } else {
            for (int64_t i = 0; i < n; ++i) q[i * s] = v[i];
        }
    } else if (dt == 1) {
        uint16_t* q = (uint16_t*)p;
        if (s == 1) {
            #pragma omp simd
            for (int64_t i = 0; i < n; ++i) q[i] = mb_f32_to_bf16(v[i]);
        } else {
            for (int64_t i = 0; i < n; ++i) q[i * s] = mb_f32_to_bf16(v[i]);
        }
    } else {
        mb_half* q = (mb_half*)p;
        if (s == 1) {
            #pragma omp simd
            for (int64_t i = 0; i < n; ++i) q[i] = (mb_half)v[i];
        } else {
            for (int64_t i = 0; i < n; ++i) q[i * s] = (mb_half)v[i];
        }
    }
}

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
            o[c] = v / (1.0f + mb_exp(-v));
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
    int64_t init_mode, silu, zero_skipped, split, mode;
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

/* Fast path: 16 channels in GCC vector registers, the window rotating in registers, for
   unit channel strides and x, y both fp32 or both bf16. */
typedef float mb_v16 __attribute__((vector_size(64)));
typedef int32_t mb_i16 __attribute__((vector_size(64)));
typedef uint32_t mb_u16 __attribute__((vector_size(64)));
typedef uint16_t mb_h16 __attribute__((vector_size(32)));
#define VL 16
#define VB 4 /* vectors per token step: 64 channels */
#define PF 8 /* prefetch distance, tokens */

static inline __attribute__((always_inline)) mb_v16 mb_vload(const char* p, const int dt) {
    mb_v16 v;
    if (dt == 0) {
        memcpy(&v, p, sizeof v);
    } else {
        mb_h16 h;
        memcpy(&h, p, sizeof h);
        mb_u16 u = __builtin_convertvector(h, mb_u16) << 16;
        memcpy(&v, &u, sizeof v);
    }
    return v;
}

static inline __attribute__((always_inline)) void mb_vstore(char* p, const int dt, mb_v16 v) {
    if (dt == 0) {
        memcpy(p, &v, sizeof v);
        return;
    }
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    __m256bh hb = _mm512_cvtneps_pbh((__m512)v); /* nearest-even, NaN stays NaN */
    memcpy(p, &hb, sizeof hb);
#else
    mb_u16 u;
    memcpy(&u, &v, sizeof u);
    mb_u16 nan = (mb_u16)((u & 0x7fffffffu) > 0x7f800000u);
    mb_u16 r = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16 & ~nan) | (((u >> 16) | 0x40u) & nan);
    mb_h16 h = __builtin_convertvector(r, mb_h16);
    memcpy(p, &h, sizeof h);
#endif
}

#if defined(__AVX512F__)
static inline mb_v16 mb_vclamp(mb_v16 v, float lo, float hi) {
    return (mb_v16)_mm512_min_ps(_mm512_max_ps((__m512)v, _mm512_set1_ps(lo)),
                                 _mm512_set1_ps(hi));
}
/* 1 / d: 14-bit estimate and one Newton step (relative error ~1e-8) */
static inline mb_v16 mb_vrcp(mb_v16 d) {
    mb_v16 r = (mb_v16)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
}
#else
static inline mb_v16 mb_vclamp(mb_v16 v, float lo, float hi) {
    mb_i16 bits = (mb_i16)v;
    mb_i16 below = v < lo, above = v > hi;
    mb_i16 vlo = (mb_i16)((mb_v16){0} + lo), vhi = (mb_i16)((mb_v16){0} + hi);
    bits = (bits & ~below) | (vlo & below);
    bits = (bits & ~above) | (vhi & above);
    return (mb_v16)bits;
}
static inline mb_v16 mb_vrcp(mb_v16 d) { return 1.0f / d; }
#endif

/* e^v on 16 lanes: as mb_exp with a degree-6 polynomial (relative error ~2e-7) */
static inline mb_v16 mb_vexp(mb_v16 v) {
    v = mb_vclamp(v, -87.0f, 88.0f);
#if defined(__AVX512F__)
    mb_v16 n = (mb_v16)_mm512_roundscale_ps((__m512)(v * 1.44269504088896341f),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    mb_v16 n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
#endif
    mb_v16 r = v - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-6f;
    mb_v16 q = r * (1.0f / 720.0f) + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
#if defined(__AVX512F__)
    return (mb_v16)_mm512_scalef_ps((__m512)q, (__m512)n); /* q * 2^n */
#else
    mb_i16 e = (__builtin_convertvector(n, mb_i16) + 127) << 23;
    return q * (mb_v16)e;
#endif
}

static inline __attribute__((always_inline)) void mb_vblock(
    const int K, const int dt, const int silu, const MbConv* a, int64_t b, int64_t start,
    int64_t slot, int use_init, int64_t t0, int64_t t1, int64_t c, int write_state) {
    const float* wf = a->wf + c;
    const int64_t dim = a->dim;
    mb_v16 w[KMAX + 1][VB], h[KMAX + 1][VB], bias[VB];
    for (int j = 0; j < VB; ++j) {
        for (int k = 0; k <= K; ++k) memcpy(&w[k][j], wf + k * dim + j * VL, sizeof(mb_v16));
        memcpy(&bias[j], wf + (K + 1) * dim + j * VL, sizeof(mb_v16));
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
                h[i][j] = (mb_v16){0};
            } else if (sfast) {
                h[i][j] = mb_vload(mb_scol(a, slot, cj, K + p), (int)a->sdt);
            } else {
                float tmp[VL];
                mb_load(mb_scol(a, slot, cj, K + p), (int)a->sdt, a->s1, VL, tmp);
                memcpy(&h[i][j], tmp, sizeof tmp);
            }
        }
    }
    const int64_t es = dt == 0 ? 4 : 2, xs = a->sxt * es, ys = a->syt * es;
    const char* xp = mb_xrow(a, b, start + t0, c);
    char* yp = mb_yrow(a, b, start + t0, c);
    for (int64_t t = t0; t < t1; ++t, xp += xs, yp += ys) {
        if (t + PF < t1) __builtin_prefetch(xp + PF * xs);
        for (int j = 0; j < VB; ++j) {
            h[K][j] = mb_vload(xp + j * VL * es, dt);
            mb_v16 v = bias[j] + w[0][j] * h[0][j];
            for (int k = 1; k <= K; ++k) v += w[k][j] * h[k][j];
            for (int k = 0; k < K; ++k) h[k][j] = h[k + 1][j];
            if (silu) v = v * mb_vrcp(1.0f + mb_vexp(-v));
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
                mb_store(mb_scol(a, slot, cj, i), (int)a->sdt, a->s1, VL, tmp);
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

/* One-token decode of request b (state read at use_init == 2): 16 channels a step, the new
   window written back as it is computed. Returns the channels handled (a multiple of VL). */
static inline __attribute__((always_inline)) int64_t mb_dec1(
    const int K, const int dt, const int silu, const MbConv* a, int64_t b, int64_t slot) {
    const int64_t dim = a->dim, es = dt == 0 ? 4 : 2, ses = mb_esize((int)a->sdt);
    const int sdt = (int)a->sdt;
    const char* xp = a->x + b * a->sxb * es;
    char* yp = a->y + b * a->syb * es;
    char* sp = a->st + slot * a->s0 * ses;
    const int64_t cs = a->s2 * ses;
    const float* wf = a->wf;
    int64_t c = 0;
    for (; c + VL <= dim; c += VL) {
        mb_v16 h[KMAX + 1], w, v;
        for (int k = 0; k < K; ++k) h[k] = mb_vload(sp + k * cs + c * ses, sdt);
        h[K] = mb_vload(xp + c * es, dt);
        memcpy(&v, wf + (K + 1) * dim + c, sizeof v);
        for (int k = 0; k <= K; ++k) {
            memcpy(&w, wf + k * dim + c, sizeof w);
            v += w * h[k];
        }
        for (int k = 0; k < K; ++k) mb_vstore(sp + k * cs + c * ses, sdt, h[k + 1]);
        if (silu) v = v * mb_vrcp(1.0f + mb_vexp(-v));
        mb_vstore(yp + c * es, dt, v);
    }
    return c;
}

static int64_t mb_dec1_any(const MbConv* a, int64_t b, int64_t slot) {
    const int code = ((int)a->K - 1) * 4 + (int)a->xdt * 2 + (int)a->silu;
    switch (code) {
        case 0: return mb_dec1(1, 0, 0, a, b, slot);
        case 1: return mb_dec1(1, 0, 1, a, b, slot);
        case 2: return mb_dec1(1, 1, 0, a, b, slot);
        case 3: return mb_dec1(1, 1, 1, a, b, slot);
        case 4: return mb_dec1(2, 0, 0, a, b, slot);
        case 5: return mb_dec1(2, 0, 1, a, b, slot);
        case 6: return mb_dec1(2, 1, 0, a, b, slot);
        case 7: return mb_dec1(2, 1, 1, a, b, slot);
        case 8: return mb_dec1(3, 0, 0, a, b, slot);
        case 9: return mb_dec1(3, 0, 1, a, b, slot);
        case 10: return mb_dec1(3, 1, 0, a, b, slot);
        default: return mb_dec1(3, 1, 1, a, b, slot);
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
            mb_load(mb_xrow(a, b, start + p, c0), (int)a->xdt, a->sxc, nc, row);
        else if (use_init)
            mb_load(mb_scol(a, slot, c0, K + p), (int)a->sdt, a->s1, nc, row);
        else
            memset(row, 0, (size_t)nc * sizeof(float));
    }
    for (int64_t t = t0; t < t1; ++t) {
        mb_load(mb_xrow(a, b, start + t, c0), (int)a->xdt, a->sxc, nc, ring + (t & 3) * CG);
        for (int64_t k = 0; k <= K; ++k) rows[k] = ring + ((t - K + k + 4) & 3) * CG;
        switch (K) {
            case 0: mb_taps(0, nc, rows, wf, a->dim, out, (int)a->silu); break;
            case 1: mb_taps(1, nc, rows, wf, a->dim, out, (int)a->silu); break;
            case 2: mb_taps(2, nc, rows, wf, a->dim, out, (int)a->silu); break;
            default: mb_taps(3, nc, rows, wf, a->dim, out, (int)a->silu); break;
        }
        mb_store(mb_yrow(a, b, start + t, c0), (int)a->ydt, a->syc, nc, out);
    }
    if (write_state)
        for (int64_t i = 0; i < K; ++i)
            mb_store(mb_scol(a, slot, c0, i), (int)a->sdt, a->s1, nc,
                     ring + ((t1 - K + i + 4) & 3) * CG);
}

/* prm: B, L, dim, W, xdt, sxb, sxt, sxc, ydt, syb, syt, syc, sdt, s0, s1, s2, wdt, sw0, sw1,
   bdt, sb, q64, i64, sslot, pad_id, has_pad, null_id, has_null, init_mode, silu,
   zero_skipped, split, mode */
void mb_conv(const void* x, void* y, void* st, const void* w, const void* bias,
             const void* qsl, const void* slots, const uint8_t* has_init, const int64_t* prm,
             int nthreads) {
    MbConv a;
    a.x = (const char*)x; a.y = (char*)y; a.st = (char*)st;
    a.qsl = (const char*)qsl; a.slots = (const char*)slots; a.has_init = has_init;
    a.B = prm[0]; a.L = prm[1]; a.dim = prm[2]; a.W = prm[3]; a.K = a.W - 1;
    a.xdt = prm[4]; a.sxb = prm[5]; a.sxt = prm[6]; a.sxc = prm[7];
    a.ydt = prm[8]; a.syb = prm[9]; a.syt = prm[10]; a.syc = prm[11];
    a.sdt = prm[12]; a.s0 = prm[13]; a.s1 = prm[14]; a.s2 = prm[15];
    const int64_t wdt = prm[16], sw0 = prm[17], sw1 = prm[18], bdt = prm[19], sb = prm[20];
    a.q64 = prm[21]; a.i64 = prm[22]; a.sslot = prm[23]; a.pad_id = prm[24];
    a.has_pad = prm[25]; a.null_id = prm[26]; a.has_null = prm[27]; a.init_mode = prm[28];
    a.silu = prm[29]; a.zero_skipped = prm[30]; a.split = prm[31]; a.mode = prm[32];
    const int64_t dim = a.dim, W = a.W, B = a.B;
    if (W < 1 || W > KMAX + 1 || B <= 0 || dim <= 0) return;

    /* fp32 taps, (W, dim), then the bias row */
    float* wf = (float*)malloc((size_t)((W + 1) * dim) * sizeof(float));
    if (!wf) return;
    for (int64_t k = 0; k < W; ++k)
        mb_load((const char*)w + k * sw1 * mb_esize((int)wdt), (int)wdt, sw0, dim,
                wf + k * dim);
    if (bias)
        mb_load((const char*)bias, (int)bdt, sb, dim, wf + W * dim);
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
        return;
    }

    /* mode 0: chunks; cs[b] = first chunk of request b */
    int64_t* cs = (int64_t*)malloc((size_t)(B + 1) * sizeof(int64_t));
    if (!cs) { free(wf); return; }
    cs[0] = 0;
    for (int64_t b = 0; b < B; ++b) {
        int64_t start, len, slot;
        int skip;
        mb_request(&a, b, &start, &len, &slot, &skip);
        int64_t nch = (a.split && len > CH) ? (len + CH - 1) / CH : 1;
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
            const int64_t t0 = nch > 1 ? ci * CH : 0;
            const int64_t t1 = nch > 1 ? (t0 + CH < len ? t0 + CH : len) : len;
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
                mb_load(mb_xrow(&a, b, start + len - a.K + i, c0), (int)a.xdt, a.sxc, nc, tmp);
                mb_store(mb_scol(&a, slot, c0, i), (int)a.sdt, a.s1, nc, tmp);
            }
        }
    }
    free(cs);
    free(wf);
}
"""
