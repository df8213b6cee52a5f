/* Helpers shared by every kernel, each written once: storage dtypes (fp32 / bf16 / fp16) to
   and from fp32, the exp family, softplus, and a portable vector type whose width follows
   the instruction set the compiler targets.

   Plain C11 (GNU vector extensions) + OpenMP, no PyTorch headers. ISA-specific forms of these
   helpers live in isa/ and are included at the end, guarded by the compiler's feature macros
   (isa/mb_avx512.h under __AVX512F__, isa/mb_avx2.h under __AVX2__ + __FMA__ without
   __AVX512F__): a build for a CPU without them never sees their vector types.

   Width-generic vector helpers (mb_vmin, mb_vmax, mb_vpow2, mb_vpow2_nc, mb_vall_lt,
   mb_vsoftplus, mb_vgate, mb_vtranspose, mb_vload_part, mb_vstore_part) work on mb_vf of any
   width: each ISA header defines them (and MB_VHELPERS); the portable forms at the end of
   this file serve every other target (SSE, NEON, ...). A kernel written over them is one code
   path for every ISA. mb_vpow2_nc is valid for |t| <= 125 everywhere; where it is exact for
   every finite t (AVX-512's scalef), MB_VPOW2_ANY_FINITE is defined. */
#ifndef MB_COMMON_H
#define MB_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "mb_args.h"

/* Storage dtype codes, as the Python side passes them. */
#define MB_F32 0
#define MB_BF16 1
#define MB_F16 2

typedef _Float16 mb_half;

/* a helper called from many places: one out-of-line copy per translation unit (inlining it
   everywhere multiplies the compile time and buys nothing measurable) */
#define MB_OUTLINE static __attribute__((unused))

static inline int64_t mb_esize(int dt) { return dt == MB_F32 ? 4 : 2; }

/* ------------------------------------------------------------------ scalar conversions */
static inline float mb_bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* fp32 -> bf16, round to nearest, ties to even; a NaN stays a (quiet) NaN, it never rounds
   into inf. */
static inline uint16_t mb_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? quiet : rounded);
}

/* element i of a dtype-coded array, as fp32 */
static inline float mb_ld(const void* p, int dt, int64_t i) {
    if (dt == MB_F32) return ((const float*)p)[i];
    if (dt == MB_BF16) return mb_bf16_to_f32(((const uint16_t*)p)[i]);
    return (float)((const mb_half*)p)[i];
}

static inline void mb_st(void* p, int dt, int64_t i, float v) {
    if (dt == MB_F32) ((float*)p)[i] = v;
    else if (dt == MB_BF16) ((uint16_t*)p)[i] = mb_f32_to_bf16(v);
    else ((mb_half*)p)[i] = (mb_half)v;
}

MB_OUTLINE int mb_cmp_i64(const void* a, const void* b) {
    const int64_t x = *(const int64_t*)a, y = *(const int64_t*)b;
    return (x > y) - (x < y);
}

/* The slot table rule of every op that writes states in place: each of the n slots (int32 when
   is32, else int64, at element stride s) is pad/null (skipped) or lies in [0, nslots), and with
   unique no live slot repeats. 1 when the table holds to it, 0 when not, MB_ENOMEM. Runs before
   a kernel's first write, so a refused call changes nothing. */
MB_OUTLINE int mb_slots_ok(const void* idx, int is32, int64_t s, int64_t n, int64_t nslots,
                           int64_t pad_id, int has_pad, int64_t null_id, int has_null,
                           int unique) {
    int64_t live = 0;
    int64_t* v = NULL;
    if (unique && n > 32) {
        v = (int64_t*)malloc((size_t)n * sizeof(int64_t));
        if (!v) return MB_ENOMEM;
    }
    int64_t small[32];
    for (int64_t i = 0; i < n; ++i) {
        const int64_t x = is32 ? (int64_t)((const int32_t*)idx)[i * s]
                               : ((const int64_t*)idx)[i * s];
        if ((has_pad && x == pad_id) || (has_null && x == null_id)) continue;
        if (x < 0 || x >= nslots) { free(v); return 0; }
        if (!unique) continue;
        if (v) {
            v[live++] = x;
        } else {
            for (int64_t j = 0; j < live; ++j)
                if (small[j] == x) return 0;
            small[live++] = x;
        }
    }
    int ok = 1;
    if (v) {
        qsort(v, (size_t)live, sizeof(int64_t), mb_cmp_i64);
        for (int64_t j = 1; j < live && ok; ++j) ok = v[j] != v[j - 1];
        free(v);
    }
    return ok;
}

/* pointer to element i of a dtype-coded array (const-ness is the caller's, as strchr) */
static inline char* mb_elem(const void* p, int dt, int64_t i) {
    return (char*)p + i * mb_esize(dt);
}

/* d[i] = p[i * s] as fp32, i < n */
MB_OUTLINE void mb_load_n(const void* p, int dt, int64_t s, int64_t n, float* restrict d) {
    if (dt == MB_F32) {
        const float* q = (const float*)p;
        if (s == 1) {
            memcpy(d, q, (size_t)n * sizeof(float));
        } else {
            for (int64_t i = 0; i < n; ++i) d[i] = q[i * s];
        }
    } else if (dt == MB_BF16) {
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
MB_OUTLINE void mb_store_n(void* p, int dt, int64_t s, int64_t n, const float* restrict v) {
    if (dt == MB_F32) {
        float* q = (float*)p;
        if (s == 1) {
            memcpy(q, v, (size_t)n * sizeof(float));
        } else {
            for (int64_t i = 0; i < n; ++i) q[i * s] = v[i];
        }
    } else if (dt == MB_BF16) {
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

/* ------------------------------------------------------------------ the exp family */
/* Cody-Waite range reduction x = n ln2 + r (two-part ln2), a degree-6 polynomial of e^r on
   |r| <= ln2/2 (relative error ~2e-7), 2^n built in the exponent. Inputs are clamped to
   [-87, 88], so the result is a normal float; NaN stays NaN. Branch-free: loops vectorise
   (fminf/fmaxf would stay libm calls without -ffast-math). */
#define MB_LOG2E 1.44269504088896341f
#define MB_LN2_HI 0.693145751953125f
#define MB_LN2_LO 1.42860682030941723212e-6f
#define MB_EXP_P0 1.9875691500E-4f
#define MB_EXP_P1 1.3981999507E-3f
#define MB_EXP_P2 8.3334519073E-3f
#define MB_EXP_P3 4.1665795894E-2f
#define MB_EXP_P4 1.6666665459E-1f
#define MB_EXP_P5 5.0000001201E-1f

static inline float mb_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float n = (x * MB_LOG2E + 12582912.0f) - 12582912.0f; /* nearest, |n| < 2^22 */
    const float r = x - n * MB_LN2_HI - n * MB_LN2_LO;
    float p = MB_EXP_P0;
    p = p * r + MB_EXP_P1;
    p = p * r + MB_EXP_P2;
    p = p * r + MB_EXP_P3;
    p = p * r + MB_EXP_P4;
    p = p * r + MB_EXP_P5;
    p = p * r * r + r + 1.0f;
    const int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

/* log(1 + e^y) = max(y, 0) + log1p(e^-|y|), log1p(u) = 2 atanh(u / (2 + u)) by its odd series
   (u in (0, 1], so the ratio is at most 1/3: error below 1e-7). Branch-free. */
static inline float mb_log1p_exp(float y) {
    const float ay = y < 0.0f ? -y : y;
    const float u = mb_exp(-ay);
    const float r = u / (2.0f + u), r2 = r * r;
    float p = 1.0f / 11.0f;
    p = p * r2 + 1.0f / 9.0f;
    p = p * r2 + 1.0f / 7.0f;
    p = p * r2 + 1.0f / 5.0f;
    p = p * r2 + 1.0f / 3.0f;
    p = p * r2 + 1.0f;
    return (y > 0.0f ? y : 0.0f) + 2.0f * r * p;
}

/* The spec's softplus (torch.nn.functional.softplus): log(1 + e^(beta x)) / beta, and x
   itself where beta x > threshold. */
#define MB_SOFTPLUS_THRESHOLD 20.0f
/* Below beta x = -87 the value (under 1.7e-38) is taken as 0, so softplus(-inf) is exactly 0
   as in the spec (then 0 * inf is NaN there too). NaN stays NaN. */
static inline float mb_softplus_beta(float x, float beta, float threshold) {
    const float bx = beta * x;
    return bx > threshold ? x : (bx < -87.0f ? 0.0f : mb_log1p_exp(bx) / beta);
}

/* softplus with beta = 1, threshold = 20 (the defaults the ops use) */
static inline float mb_softplus(float x) {
    return x > MB_SOFTPLUS_THRESHOLD ? x : (x < -87.0f ? 0.0f : mb_log1p_exp(x));
}

/* x * sigmoid(x), with the spec's (torch's) non-finite values: silu(-inf) = -inf * 0 = NaN,
   silu(+inf) = +inf, NaN stays NaN. Below x = -88 sigmoid(x) is taken as 0 (x * 0 = -0, the
   spec's value rounds to a denormal there), which also turns -inf into NaN. Branch-free. */
static inline float mb_silu(float x) {
    const float s = 1.0f / (1.0f + mb_exp(-x));
    return x * (x < -88.0f ? 0.0f : s);
}

/* ------------------------------------------------------------------ portable vectors */
/* MB_VL fp32 lanes: the target's native register width, so that no vector type wider than
   the target's registers ever crosses a function boundary (that changes the ABI). */
#if defined(__AVX512F__)
#define MB_VL 16
#elif defined(__AVX__)
#define MB_VL 8
#else
#define MB_VL 4
#endif

typedef float mb_vf __attribute__((vector_size(4 * MB_VL)));
typedef float mb_vfu __attribute__((vector_size(4 * MB_VL), aligned(4))); /* unaligned */
typedef int32_t mb_vi __attribute__((vector_size(4 * MB_VL)));
typedef uint32_t mb_vu __attribute__((vector_size(4 * MB_VL)));
typedef uint16_t mb_vh __attribute__((vector_size(2 * MB_VL)));

#define MB_ALWAYS_INLINE static inline __attribute__((always_inline))

static inline float mb_vsum(mb_vf x) {
    float s = 0.0f;
    for (int i = 0; i < MB_VL; ++i) s += x[i];
    return s;
}

/* s[i] = the lane sum of v[i], i < 8, by a tree of lane shuffles: each level adds the two
   halves of every segment of two vectors (the sums of 8 vectors in about 3 log2(MB_VL) vector
   operations instead of 8 serial MB_VL-term scalar chains). The summation order differs from
   mb_vsum's (a tree, not left to right). */
#define MB_FOLD(a, b, LO, HI) (__builtin_shuffle((a), (b), (mb_vi)LO) + __builtin_shuffle((a), (b), (mb_vi)HI))
MB_ALWAYS_INLINE void mb_vsum8(const mb_vf* v, float* s) {
#if MB_VL == 16
#define L1 {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}
#define H1 {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}
#define L2 {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}
#define H2 {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}
#define L3 {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29}
#define H3 {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}
#define L4 {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#define H4 {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}
    const mb_vf c0 = MB_FOLD(v[0], v[1], L1, H1), c1 = MB_FOLD(v[2], v[3], L1, H1);
    const mb_vf c2 = MB_FOLD(v[4], v[5], L1, H1), c3 = MB_FOLD(v[6], v[7], L1, H1);
    const mb_vf d0 = MB_FOLD(c0, c1, L2, H2), d1 = MB_FOLD(c2, c3, L2, H2);
    const mb_vf e = MB_FOLD(d0, d1, L3, H3);
    const mb_vf f = MB_FOLD(e, e, L4, H4);
    for (int i = 0; i < 8; ++i) s[i] = f[i];
#elif MB_VL == 8
#define L1 {0, 1, 2, 3, 8, 9, 10, 11}
#define H1 {4, 5, 6, 7, 12, 13, 14, 15}
#define L2 {0, 1, 4, 5, 8, 9, 12, 13}
#define H2 {2, 3, 6, 7, 10, 11, 14, 15}
#define L3 {0, 2, 4, 6, 8, 10, 12, 14}
#define H3 {1, 3, 5, 7, 9, 11, 13, 15}
    const mb_vf c0 = MB_FOLD(v[0], v[1], L1, H1), c1 = MB_FOLD(v[2], v[3], L1, H1);
    const mb_vf c2 = MB_FOLD(v[4], v[5], L1, H1), c3 = MB_FOLD(v[6], v[7], L1, H1);
    const mb_vf d0 = MB_FOLD(c0, c1, L2, H2), d1 = MB_FOLD(c2, c3, L2, H2);
    const mb_vf e = MB_FOLD(d0, d1, L3, H3);
    for (int i = 0; i < 8; ++i) s[i] = e[i];
#else
#define L1 {0, 1, 4, 5}
#define H1 {2, 3, 6, 7}
#define L2 {0, 2, 4, 6}
#define H2 {1, 3, 5, 7}
    const mb_vf c0 = MB_FOLD(v[0], v[1], L1, H1), c1 = MB_FOLD(v[2], v[3], L1, H1);
    const mb_vf c2 = MB_FOLD(v[4], v[5], L1, H1), c3 = MB_FOLD(v[6], v[7], L1, H1);
    const mb_vf d0 = MB_FOLD(c0, c1, L2, H2), d1 = MB_FOLD(c2, c3, L2, H2);
    for (int i = 0; i < 4; ++i) { s[i] = d0[i]; s[4 + i] = d1[i]; }
#endif
#undef L1
#undef H1
#undef L2
#undef H2
#undef L3
#undef H3
#undef L4
#undef H4
}
#undef MB_FOLD

#if defined(__AVX512F__)
MB_ALWAYS_INLINE mb_vf mb_vclamp(mb_vf v, float lo, float hi) {
    /* min/max return their second operand when one is NaN: v goes second (NaN stays NaN) */
    return (mb_vf)_mm512_min_ps(_mm512_set1_ps(hi),
                                _mm512_max_ps(_mm512_set1_ps(lo), (__m512)v));
}
/* 1 / d for finite d > 0: 14-bit estimate and one Newton step (relative error ~1e-8) */
MB_ALWAYS_INLINE mb_vf mb_vrcp(mb_vf d) {
    const mb_vf r = (mb_vf)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
}
#elif defined(__AVX2__) && defined(__FMA__)
MB_ALWAYS_INLINE mb_vf mb_vclamp(mb_vf v, float lo, float hi) {
    /* as above: v second, so that NaN stays NaN */
    return (mb_vf)_mm256_min_ps(_mm256_set1_ps(hi),
                                _mm256_max_ps(_mm256_set1_ps(lo), (__m256)v));
}
MB_ALWAYS_INLINE mb_vf mb_vrcp(mb_vf d) { return 1.0f / d; }
#else
MB_ALWAYS_INLINE mb_vf mb_vclamp(mb_vf v, float lo, float hi) {
    mb_vi bits = (mb_vi)v;
    const mb_vi below = v < lo, above = v > hi;
    const mb_vi vlo = (mb_vi)((mb_vf){0} + lo), vhi = (mb_vi)((mb_vf){0} + hi);
    bits = (bits & ~below) | (vlo & below);
    bits = (bits & ~above) | (vhi & above);
    return (mb_vf)bits;
}
MB_ALWAYS_INLINE mb_vf mb_vrcp(mb_vf d) { return 1.0f / d; }
#endif

/* mb_exp on MB_VL lanes (same reduction, polynomial and clamp) */
MB_ALWAYS_INLINE mb_vf mb_vexp(mb_vf x) {
    x = mb_vclamp(x, -87.0f, 88.0f);
#if defined(__AVX512F__)
    const mb_vf n = (mb_vf)_mm512_roundscale_ps((__m512)(x * MB_LOG2E),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    const mb_vf n = (x * MB_LOG2E + 12582912.0f) - 12582912.0f;
#endif
    const mb_vf r = x - n * MB_LN2_HI - n * MB_LN2_LO;
    mb_vf p = r * MB_EXP_P0 + MB_EXP_P1;
    p = p * r + MB_EXP_P2;
    p = p * r + MB_EXP_P3;
    p = p * r + MB_EXP_P4;
    p = p * r + MB_EXP_P5;
    p = p * r * r + r + 1.0f;
#if defined(__AVX512F__)
    return (mb_vf)_mm512_scalef_ps((__m512)p, (__m512)n); /* p * 2^n */
#else
    const mb_vi e = (__builtin_convertvector(n, mb_vi) + 127) << 23;
    return p * (mb_vf)e;
#endif
}

/* mb_silu on MB_VL lanes (same non-finite values) */
MB_ALWAYS_INLINE mb_vf mb_vsilu(mb_vf v) {
    const mb_vf s = v * mb_vrcp(1.0f + mb_vexp(-v));
    const mb_vi tiny = v < -88.0f;
    const mb_vf zero = v * 0.0f; /* -0, or NaN for -inf */
    return (mb_vf)(((mb_vi)s & ~tiny) | ((mb_vi)zero & tiny));
}

/* MB_VL fp32 (dt 0) or bf16 (dt 1) values from p */
MB_ALWAYS_INLINE mb_vf mb_vload(const void* p, const int dt) {
    mb_vf v;
    if (dt == MB_F32) {
        memcpy(&v, p, sizeof v);
    } else {
        mb_vh h;
        memcpy(&h, p, sizeof h);
        const mb_vu u = __builtin_convertvector(h, mb_vu) << 16;
        memcpy(&v, &u, sizeof v);
    }
    return v;
}

/* mb_f32_to_bf16 on MB_VL lanes (nearest-even, NaN stays NaN) */
MB_ALWAYS_INLINE void mb_vstore_bf16(void* p, mb_vf v) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    const __m256bh hb = _mm512_cvtneps_pbh((__m512)v);
    memcpy(p, &hb, sizeof hb);
#else
    mb_vu u;
    memcpy(&u, &v, sizeof u);
    const mb_vu nan = (mb_vu)((u & 0x7fffffffu) > 0x7f800000u);
    const mb_vu r = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16 & ~nan) | (((u >> 16) | 0x40u) & nan);
    const mb_vh h = __builtin_convertvector(r, mb_vh);
    memcpy(p, &h, sizeof h);
#endif
}

MB_ALWAYS_INLINE void mb_vstore(void* p, const int dt, mb_vf v) {
    if (dt == MB_F32) memcpy(p, &v, sizeof v);
    else mb_vstore_bf16(p, v);
}

#if defined(__AVX512F__)
#include "isa/mb_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__)
#include "isa/mb_avx2.h"
#endif

#ifndef MB_VHELPERS
/* ------------------------------------------------------------------ portable vector helpers */
/* The width-generic helpers in plain GNU vector code, for targets without an isa/ header
   (SSE-only x86, NEON, others); same values as the ISA forms (see isa/mb_avx2.h). */
#define MB_VHELPERS 1

/* min(v, c), max(v, c); a NaN in v stays NaN */
MB_ALWAYS_INLINE mb_vf mb_vmin(mb_vf v, float c) {
    const mb_vi above = v > c;
    return (mb_vf)(((mb_vi)v & ~above) | ((mb_vi)((mb_vf){0} + c) & above));
}
MB_ALWAYS_INLINE mb_vf mb_vmax(mb_vf v, float c) {
    const mb_vi below = v < c;
    return (mb_vf)(((mb_vi)v & ~below) | ((mb_vi)((mb_vf){0} + c) & below));
}

/* 2^r for |r| <= 1/2 (the polynomial of isa/mb_avx512.h) */
MB_ALWAYS_INLINE mb_vf mb_vpow2_poly(mb_vf r) {
    mb_vf p = r * 1.327647129073739e-3f + 9.675540961325169e-3f;
    p = p * r + 5.550713092088699e-2f;
    p = p * r + 2.4022120237350464e-1f;
    p = p * r + 6.931469440460205e-1f;
    return p * r + 1.0000001192092896f;
}

/* 2^t for |t| <= 125, no clamps (NaN stays NaN): n read off t + 1.5 * 2^23, 2^n added to
   the exponent bits of 2^r (see isa/mb_avx2.h) */
MB_ALWAYS_INLINE mb_vf mb_vpow2_nc(mb_vf t) {
    const mb_vf mg = t + 12582912.0f;
    const mb_vf r = t - (mg - 12582912.0f);
    return (mb_vf)((mb_vu)mb_vpow2_poly(r) + ((mb_vu)mg << 23));
}

/* 2^t for any t (0 for t <= -127, inf for t >= 128, NaN stays NaN): 2^n built from the bits
   of n + 127 and multiplied in (see isa/mb_avx2.h) */
MB_ALWAYS_INLINE mb_vf mb_vpow2(mb_vf t) {
    t = mb_vmax(mb_vmin(t, 128.0f), -127.0f);
    const mb_vf mg = t + 12583039.0f;
    const mb_vf r = t - (mg - 12583039.0f);
    return mb_vpow2_poly(r) * (mb_vf)((mb_vu)mg << 23);
}

/* whether every lane of v is below c (false where a lane is NaN) */
MB_ALWAYS_INLINE int mb_vall_lt(mb_vf v, float c) {
    int ok = 1;
    for (int i = 0; i < MB_VL; ++i) ok &= v[i] < c;
    return ok;
}

/* mb_softplus on MB_VL lanes (threshold 20, 0 below -87, NaN stays NaN) */
MB_ALWAYS_INLINE mb_vf mb_vsoftplus(mb_vf x) {
    const mb_vf ax = (mb_vf)((mb_vi)x & 0x7fffffff);
    const mb_vf y = mb_vpow2(ax * -MB_LOG2E);
    const mb_vf r = y / (y + 2.0f), r2 = r * r;
    mb_vf p = r2 * (1.0f / 11.0f) + 1.0f / 9.0f;
    p = p * r2 + 1.0f / 7.0f;
    p = p * r2 + 1.0f / 5.0f;
    p = p * r2 + 1.0f / 3.0f;
    p = p * r2 + 1.0f;
    const mb_vf sp = (r + r) * p + mb_vmax(x, 0.0f);
    const mb_vi tiny = x < -87.0f;
    return (mb_vf)((mb_vi)sp & ~tiny);
}

/* y * silu(z) (gate 0 below z = -88, so y * z * 0 is NaN where y * z is not finite) */
MB_ALWAYS_INLINE mb_vf mb_vgate(mb_vf y, mb_vf z) {
    const mb_vf yz = y * z;
    const mb_vf g = yz / (1.0f + mb_vpow2(mb_vmin(z * -MB_LOG2E, 100.0f)));
    const mb_vi tiny = z < -88.0f;
    return (mb_vf)(((mb_vi)g & ~tiny) | ((mb_vi)(yz * 0.0f) & tiny));
}

/* r[i] lane j <- r[j] lane i, through memory (MB_VL x MB_VL floats) */
MB_ALWAYS_INLINE void mb_vtranspose(mb_vf* r) {
    float __attribute__((aligned(64))) b[MB_VL][MB_VL];
    for (int i = 0; i < MB_VL; ++i) memcpy(b[i], &r[i], sizeof(mb_vf));
    for (int i = 0; i < MB_VL; ++i)
        for (int j = 0; j < MB_VL; ++j) r[i][j] = b[j][i];
}

/* lanes i < n of p[i * st] (0 < n <= MB_VL), the others 0 */
MB_ALWAYS_INLINE mb_vf mb_vload_part(const float* p, int64_t st, int64_t n) {
    mb_vf v = {0};
    if (st == 1 && n == MB_VL) {
        memcpy(&v, p, sizeof v);
        return v;
    }
    for (int64_t i = 0; i < n; ++i) v[i] = p[i * st];
    return v;
}

/* p[i * st] = lane i of v, i < n (0 < n <= MB_VL) */
MB_ALWAYS_INLINE void mb_vstore_part(float* p, int64_t st, int64_t n, mb_vf v) {
    if (st == 1 && n == MB_VL) {
        memcpy(p, &v, sizeof v);
        return;
    }
    for (int64_t i = 0; i < n; ++i) p[i * st] = v[i];
}
#endif /* MB_VHELPERS */

#endif /* MB_COMMON_H */
