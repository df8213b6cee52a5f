/* AVX-512 forms of the shared helpers (included by mb_common.h when __AVX512F__ is defined;
   mb_vf is then 16 lanes, the same register as __m512). Kernels use these in their
   `#ifdef MB_V512` blocks, and the width-generic vector helpers of mb_common.h (mb_vpow2,
   mb_vsoftplus, mb_vgate, mb_vtranspose, ...) are defined here on top of them. */
#ifndef MB_AVX512_H
#define MB_AVX512_H

#define MB_V512 1
#define MB_VHELPERS 1 /* the generic vector helpers are defined here */

static inline __m512 vexp(__m512 x) { return (__m512)mb_vexp((mb_vf)x); }
static inline __m512 vrcp(__m512 x) { return (__m512)mb_vrcp((mb_vf)x); }

/* 16 state elements of each storage dtype to and from fp32 */
static inline __m512 ld16_f32(const void* p) { return _mm512_loadu_ps((const float*)p); }
static inline void st16_f32(void* p, __m512 v) { _mm512_storeu_ps((float*)p, v); }
static inline __m512 ld16_bf16(const void* p) { return (__m512)mb_vload(p, MB_BF16); }
static inline void st16_bf16(void* p, __m512 v) { mb_vstore_bf16(p, (mb_vf)v); }
static inline __m512 ld16_f16(const void* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
}
static inline void st16_f16(void* p, __m512 v) {
    _mm256_storeu_si256((__m256i*)p,
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* 2^t: t = n + r with n integer and |r| <= 1/2, 2^r by a degree-5 minimax polynomial
   (relative error 2.4e-7 in fp32), 2^n by scalef. Valid for finite |t| < 2^100 (for
   |t| >= 2^23, r = 0 and scalef saturates to 0 or inf); vexp2 clamps t below at -126. */
static inline __m512 vexp2_nc(__m512 t) {
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.327647129073739e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.675540961325169e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.550713092088699e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022120237350464e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931469440460205e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0000001192092896f));
    return _mm512_scalef_ps(p, n);
}
static inline __m512 vexp2(__m512 t) { return vexp2_nc(_mm512_max_ps(_mm512_set1_ps(-126.0f), t)); }

/* y * silu(z) = y * z / (1 + exp(-z)); exp(-z) is capped at 2^100 so that 1/(1 + e) stays
   finite (the gate is then below 1e-30 anyway). Below z = -88 the gate is taken as 0, so
   that, as in the spec, y * z * 0 is NaN where y * z is not finite (z = -inf included). */
static inline __m512 vgate(__m512 y, __m512 z) {
    const __m512 t = _mm512_min_ps(_mm512_set1_ps(100.0f),
                                   _mm512_mul_ps(z, _mm512_set1_ps(-MB_LOG2E)));
    const __m512 yz = _mm512_mul_ps(y, z);
    const __m512 g = _mm512_mul_ps(yz, vrcp(_mm512_add_ps(_mm512_set1_ps(1.0f), vexp2(t))));
    const __mmask16 tiny = _mm512_cmp_ps_mask(z, _mm512_set1_ps(-88.0f), _CMP_LT_OQ);
    return _mm512_mask_mul_ps(g, tiny, yz, _mm512_setzero_ps());
}

/* mb_softplus on 16 lanes: max(x, 0) + log1p(e^-|x|) by the series of mb_log1p_exp. Above
   the threshold (20) the series term is below 2.1e-9, under half an ulp of x, so the sum is x
   exactly, as the thresholded form gives. */
static inline __m512 vsoftplus(__m512 x) {
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 y = vexp2(_mm512_mul_ps(ax, _mm512_set1_ps(-MB_LOG2E)));
    const __m512 r = _mm512_mul_ps(y, vrcp(_mm512_add_ps(y, _mm512_set1_ps(2.0f))));
    const __m512 r2 = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(1.0f / 11.0f);
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / 9.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / 7.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / 5.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / 3.0f));
    p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f));
    const __m512 sp =
        _mm512_fmadd_ps(_mm512_add_ps(r, r), p, _mm512_max_ps(_mm512_setzero_ps(), x));
    /* as mb_softplus: 0 below -87 (softplus(-inf) = 0 exactly) */
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    return _mm512_mask_mov_ps(sp, tiny, _mm512_setzero_ps());
}

/* ------------------------------------------------------------------ generic helpers */
/* min(v, c), max(v, c); a NaN in v stays NaN */
MB_ALWAYS_INLINE mb_vf mb_vmin(mb_vf v, float c) {
    return (mb_vf)_mm512_min_ps(_mm512_set1_ps(c), (__m512)v);
}
MB_ALWAYS_INLINE mb_vf mb_vmax(mb_vf v, float c) {
    return (mb_vf)_mm512_max_ps(_mm512_set1_ps(c), (__m512)v);
}
/* 2^t for any t, infinite included (scalef saturates to 0 / inf past the clamp) */
MB_ALWAYS_INLINE mb_vf mb_vpow2(mb_vf t) {
    return (mb_vf)vexp2_nc((__m512)mb_vmax(mb_vmin(t, 256.0f), -256.0f));
}
/* 2^t for every finite t (no clamps; scalef saturates to 0 / inf) */
#define MB_VPOW2_ANY_FINITE 1
MB_ALWAYS_INLINE mb_vf mb_vpow2_nc(mb_vf t) { return (mb_vf)vexp2_nc((__m512)t); }
/* whether every lane of v is below c (false where a lane is NaN) */
MB_ALWAYS_INLINE int mb_vall_lt(mb_vf v, float c) {
    return _mm512_cmp_ps_mask((__m512)v, _mm512_set1_ps(c), _CMP_LT_OQ) == 0xffff;
}
MB_ALWAYS_INLINE mb_vf mb_vsoftplus(mb_vf x) { return (mb_vf)vsoftplus((__m512)x); }
MB_ALWAYS_INLINE mb_vf mb_vgate(mb_vf y, mb_vf z) { return (mb_vf)vgate((__m512)y, (__m512)z); }

/* In-register transpose of a 16x16 tile: r[i] lane j <- r[j] lane i. */
MB_ALWAYS_INLINE void mb_vtranspose(mb_vf* rv) {
    __m512* r = (__m512*)rv;
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

/* lanes i < n of p[i * st] (0 < n <= 16), the others 0 */
MB_ALWAYS_INLINE mb_vf mb_vload_part(const float* p, int64_t st, int64_t n) {
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    if (st == 1) return (mb_vf)_mm512_maskz_loadu_ps(m, p);
    float __attribute__((aligned(64))) b[16] = {0};
    for (int64_t i = 0; i < n; ++i) b[i] = p[i * st];
    return (mb_vf)_mm512_load_ps(b);
}
/* p[i * st] = lane i of v, i < n (0 < n <= 16) */
MB_ALWAYS_INLINE void mb_vstore_part(float* p, int64_t st, int64_t n, mb_vf v) {
    const __mmask16 m = (__mmask16)((1u << n) - 1u);
    if (st == 1) { _mm512_mask_storeu_ps(p, m, (__m512)v); return; }
    float __attribute__((aligned(64))) b[16];
    _mm512_store_ps(b, (__m512)v);
    for (int64_t i = 0; i < n; ++i) p[i * st] = b[i];
}

#endif /* MB_AVX512_H */
