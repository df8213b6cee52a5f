/* AVX2 + FMA (+ F16C) forms of the shared helpers: included by mb_common.h when __AVX2__ and
   __FMA__ are defined and __AVX512F__ is not (x86-64-v3: Haswell and later, AMD Zen 1-3).
   mb_vf is then 8 lanes, the same register as __m256.

   These are the AVX2 implementations of the width-generic vector helpers (mb_vpow2,
   mb_vsoftplus, mb_vgate, mb_vtranspose, mb_vload_part, ...; the portable forms are in
   mb_common.h, the AVX-512 ones in mb_avx512.h). Kernels written over the generic helpers
   take them unchanged. */
#ifndef MB_AVX2_H
#define MB_AVX2_H

#define MB_VHELPERS 1 /* the generic vector helpers are defined here */

/* min(v, c) and max(v, c); a NaN in v stays NaN (min/max return their second operand when
   one is NaN: v goes second) */
MB_ALWAYS_INLINE mb_vf mb_vmin(mb_vf v, float c) {
    return (mb_vf)_mm256_min_ps(_mm256_set1_ps(c), (__m256)v);
}
MB_ALWAYS_INLINE mb_vf mb_vmax(mb_vf v, float c) {
    return (mb_vf)_mm256_max_ps(_mm256_set1_ps(c), (__m256)v);
}

/* 2^r for |r| <= 1/2: the degree-5 minimax polynomial of mb_avx512.h (relative error 2.4e-7) */
MB_ALWAYS_INLINE __m256 mb_pow2_poly8(__m256 r) {
    __m256 p = _mm256_set1_ps(1.327647129073739e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.675540961325169e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.550713092088699e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.4022120237350464e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.931469440460205e-1f));
    return _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0000001192092896f));
}

/* 2^t for |t| <= 125 (NaN stays NaN; no clamps): t = n + r with n integer and |r| <= 1/2.
   n is read off the low bits of t + 1.5 * 2^23 (that sum is exact: its ulp is 1), and 2^n is
   applied by an integer add of n << 23 to the exponent field of 2^r (in [2^-1/2, 2^1/2], so
   the result stays a normal float for |n| <= 125): one multiply fewer on the FMA ports. The
   empty asm keeps t in a register, so that the compiler does not fuse t = dt * a into the
   rounding add (an FMA there moves work from the add ports to the busier FMA ports). */
MB_ALWAYS_INLINE mb_vf mb_vpow2_nc(mb_vf t) {
    __m256 tc = (__m256)t;
    __asm__("" : "+x"(tc));
    const __m256 mg = _mm256_add_ps(tc, _mm256_set1_ps(12582912.0f));
    const __m256 r = _mm256_sub_ps(tc, _mm256_sub_ps(mg, _mm256_set1_ps(12582912.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(mg), 23);
    return (mb_vf)_mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_castps_si256(mb_pow2_poly8(r)), e));
}

/* 2^t for any t: t is first clamped to [-127, 128] (NaN stays NaN) and 2^n built in the
   exponent bits of n + 127 (read off t + 1.5 * 2^23 + 127), then multiplied in, so that the
   result saturates as AVX-512's scalef does: 0 for t <= -127 (the bit pattern 0), inf for
   t >= 128 (the pattern of inf); t = -inf gives 0, +inf gives inf. */
MB_ALWAYS_INLINE mb_vf mb_vpow2(mb_vf t) {
    const __m256 tc = (__m256)mb_vmax(mb_vmin(t, 128.0f), -127.0f);
    const __m256 mg = _mm256_add_ps(tc, _mm256_set1_ps(12583039.0f));
    const __m256 r = _mm256_sub_ps(tc, _mm256_sub_ps(mg, _mm256_set1_ps(12583039.0f)));
    const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(mg), 23));
    return (mb_vf)_mm256_mul_ps(mb_pow2_poly8(r), s);
}

/* 1 / d for finite d >= 1 (the helpers' denominators): 12-bit estimate and one Newton step
   (relative error ~1e-7), much cheaper than a division */
MB_ALWAYS_INLINE __m256 mb_rcp8(__m256 d) {
    const __m256 r = _mm256_rcp_ps(d);
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));
}

/* whether every lane of v is below c (false where a lane is NaN) */
MB_ALWAYS_INLINE int mb_vall_lt(mb_vf v, float c) {
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)v, _mm256_set1_ps(c), _CMP_LT_OQ)) == 0xff;
}

/* mb_softplus on 8 lanes: max(x, 0) + log1p(e^-|x|) by the series of mb_log1p_exp. Above
   the threshold (20) the series term is below 2.1e-9, under half an ulp of x, so the sum is x
   exactly, as the thresholded form gives; 0 below -87 (softplus(-inf) = 0 exactly); NaN
   stays NaN. */
MB_ALWAYS_INLINE mb_vf mb_vsoftplus(mb_vf xv) {
    const __m256 x = (__m256)xv;
    const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    /* e^-|x| by the saturating 2^t (denormal where AVX-512's vexp2 clamps: both under
       1.2e-38, and 0 below x = -87 anyway) */
    const __m256 y = (__m256)mb_vpow2((mb_vf)_mm256_mul_ps(ax, _mm256_set1_ps(-MB_LOG2E)));
    const __m256 r = _mm256_mul_ps(y, mb_rcp8(_mm256_add_ps(y, _mm256_set1_ps(2.0f))));
    const __m256 r2 = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(1.0f / 11.0f);
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 9.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 7.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 5.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 3.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f));
    const __m256 sp =
        _mm256_fmadd_ps(_mm256_add_ps(r, r), p, _mm256_max_ps(_mm256_setzero_ps(), x));
    const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    return (mb_vf)_mm256_andnot_ps(tiny, sp);
}

/* y * silu(z) = y * z / (1 + exp(-z)); exp(-z) is capped at 2^100 so that 1 / (1 + e) stays
   finite (the gate is then below 1e-30 anyway). Below z = -88 the gate is taken as 0, so that, as in the spec, y * z * 0 is NaN
   where y * z is not finite (z = -inf included). */
MB_ALWAYS_INLINE mb_vf mb_vgate(mb_vf yv, mb_vf zv) {
    const __m256 y = (__m256)yv, z = (__m256)zv;
    const mb_vf t = mb_vmin((mb_vf)_mm256_mul_ps(z, _mm256_set1_ps(-MB_LOG2E)), 100.0f);
    const __m256 yz = _mm256_mul_ps(y, z);
    const __m256 g = _mm256_mul_ps(yz, mb_rcp8(_mm256_add_ps(_mm256_set1_ps(1.0f), (__m256)mb_vpow2(t))));
    const __m256 tiny = _mm256_cmp_ps(z, _mm256_set1_ps(-88.0f), _CMP_LT_OQ);
    return (mb_vf)_mm256_blendv_ps(g, _mm256_mul_ps(yz, _mm256_setzero_ps()), tiny);
}

/* In-register transpose of an 8x8 tile: r[i] lane j <- r[j] lane i. */
MB_ALWAYS_INLINE void mb_vtranspose(mb_vf* r) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps((__m256)r[2 * i], (__m256)r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps((__m256)r[2 * i], (__m256)r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        s[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
        r[j] = (mb_vf)_mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
        r[4 + j] = (mb_vf)_mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
    }
}

/* lanes i < n of p[i * st] (0 < n <= 8), the others 0 */
MB_ALWAYS_INLINE mb_vf mb_vload_part(const float* p, int64_t st, int64_t n) {
    if (st == 1) {
        if (n == MB_VL) return (mb_vf)_mm256_loadu_ps(p);
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        return (mb_vf)_mm256_maskload_ps(p, m);
    }
    float __attribute__((aligned(32))) b[MB_VL] = {0};
    for (int64_t i = 0; i < n; ++i) b[i] = p[i * st];
    return (mb_vf)_mm256_load_ps(b);
}

/* p[i * st] = lane i of v, i < n (0 < n <= 8) */
MB_ALWAYS_INLINE void mb_vstore_part(float* p, int64_t st, int64_t n, mb_vf v) {
    if (st == 1) {
        if (n == MB_VL) { _mm256_storeu_ps(p, (__m256)v); return; }
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(p, m, (__m256)v);
        return;
    }
    float __attribute__((aligned(32))) b[MB_VL];
    _mm256_store_ps(b, (__m256)v);
    for (int64_t i = 0; i < n; ++i) p[i * st] = b[i];
}

#endif /* MB_AVX2_H */
