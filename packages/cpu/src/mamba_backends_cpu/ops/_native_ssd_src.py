"""C source of the fused SSD recurrence and selective state update (decode) kernels.

Appended after ``_native_src``'s shared helpers (fexp, bf16 conversion, 16-lane vectors), which
it uses; built and loaded by ``_native``.
"""

SSD_SSU_SOURCE = r"""/* SSD epilogue for one token and head: y = (acc + D x) * silu(z). */
static inline void ssd_out(float* yt, float* yv, const float* xt, const float* dh,
                           const float* zt, int64_t P) {
    if (dh) {
        #pragma omp simd
        for (int64_t p = 0; p < P; ++p) yv[p] += dh[p] * xt[p];
    }
    if (zt) {
        #pragma omp simd
        for (int64_t p = 0; p < P; ++p) yv[p] *= zt[p] / (1.0f + fexp(-zt[p]));
    }
    memcpy(yt, yv, sizeof(float) * (size_t)P);
}

/* Mamba2 SSD as a recurrence per (sequence, head), state (P, N) in cache; four tokens are
   applied per pass over the state (a quarter of the state traffic).
   x, y, z: (T, H, P); dt: (T, H) (biased, softplussed, clamped); A: (H,);
   B, C: (T, G, N); D: (H, P) or NULL; z may be NULL; init: (S, H, P, N) or NULL;
   final: (S, H, P, N) out; cuc: (nch+1,) chunk offsets, chunk_first: (S,) first chunk of each
   sequence, chunk_states: (nch, H, P, N) out or NULL (state after every chunk). */
void mb_ssd_f32(const float* x, const float* dt, const float* A, const float* B,
                const float* C, const float* Dp, const float* zp, const float* init,
                float* y, float* final_, const int64_t* qsl, const int64_t* cuc,
                const int64_t* chunk_first, float* chunk_states, int64_t S, int64_t H,
                int64_t P, int64_t N, int64_t G, int nthreads) {
    const int64_t rep = H / G, PN = P * N;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = 0; item < S * H; ++item) {
        const int64_t s = item / H, h = item % H, g = h / rep;
        float* st = final_ + (s * H + h) * PN;
        if (init) memcpy(st, init + (s * H + h) * PN, sizeof(float) * (size_t)PN);
        else memset(st, 0, sizeof(float) * (size_t)PN);
        const float a = A[h];
        const float* dh = Dp ? Dp + h * P : NULL;
        float* yv = (float*)malloc(sizeof(float) * (size_t)(4 * P));
        int64_t t = qsl[s];
        for (int64_t c = chunk_first[s]; t < qsl[s + 1]; ++c) {
            const int64_t t_end = cuc[c + 1];
            for (; t + 4 <= t_end; t += 4) {
                float dtv[4], dA[4];
                const float *b[4], *cc[4], *xt[4];
                for (int u = 0; u < 4; ++u) {
                    dtv[u] = dt[(t + u) * H + h];
                    dA[u] = fexp(dtv[u] * a);
                    b[u] = B + ((t + u) * G + g) * N;
                    cc[u] = C + ((t + u) * G + g) * N;
                    xt[u] = x + ((t + u) * H + h) * P;
                }
                const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
                const float *c0 = cc[0], *c1 = cc[1], *c2 = cc[2], *c3 = cc[3];
                for (int64_t p = 0; p < P; ++p) {
                    const float x0 = xt[0][p] * dtv[0], x1 = xt[1][p] * dtv[1];
                    const float x2 = xt[2][p] * dtv[2], x3 = xt[3][p] * dtv[3];
                    float* sp = st + p * N;
                    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                    #pragma omp simd reduction(+:a0, a1, a2, a3)
                    for (int64_t n = 0; n < N; ++n) {
                        float v = sp[n] * dA[0] + x0 * b0[n];
                        a0 += v * c0[n];
                        v = v * dA[1] + x1 * b1[n];
                        a1 += v * c1[n];
                        v = v * dA[2] + x2 * b2[n];
                        a2 += v * c2[n];
                        v = v * dA[3] + x3 * b3[n];
                        a3 += v * c3[n];
                        sp[n] = v;
                    }
                    yv[p] = a0; yv[P + p] = a1; yv[2 * P + p] = a2; yv[3 * P + p] = a3;
                }
                for (int u = 0; u < 4; ++u)
                    ssd_out(y + ((t + u) * H + h) * P, yv + u * P, xt[u], dh,
                            zp ? zp + ((t + u) * H + h) * P : NULL, P);
            }
            for (; t < t_end; ++t) {
                const float dtv = dt[t * H + h];
                const float dA = fexp(dtv * a);
                const float* b = B + (t * G + g) * N;
                const float* cc = C + (t * G + g) * N;
                const float* xt = x + (t * H + h) * P;
                for (int64_t p = 0; p < P; ++p) {
                    const float xdt = xt[p] * dtv;
                    float* sp = st + p * N;
                    float acc = 0.0f;
                    #pragma omp simd reduction(+:acc)
                    for (int64_t n = 0; n < N; ++n) {
                        float v = sp[n] * dA + xdt * b[n];
                        sp[n] = v;
                        acc += v * cc[n];
                    }
                    yv[p] = acc;
                }
                ssd_out(y + (t * H + h) * P, yv, xt, dh, zp ? zp + (t * H + h) * P : NULL, P);
            }
            if (chunk_states)
                memcpy(chunk_states + (c * H + h) * PN, st, sizeof(float) * (size_t)PN);
        }
        free(yv);
    }
}

/* Selective state update, one token per request, everything addressed through strides
   (vLLM's tied Mamba2 layout has zero strides; nothing is copied on the Python side).
   k[] holds element strides: state 0-3 (slot, h, p, n), dt 4-6 (r, h, p), dt_bias 7-8 (h, p),
   A 9-11 (h, p, n), B 12-13 (r, g; n contiguous), C 14-15, D 16-17 (h, p), z 18-20 (r, h, p),
   out 21-23 (r, h, p), x 24-26 (r, h, p), src 27 and dst 28 (r).
   src/dst: (R,) int32 (idx32) or int64 slots or NULL (slot = r); a source equal to pad/null
   skips the request (no state read or written, out rows untouched); a destination equal to
   pad/null is not written. dt_bias/D/z may be NULL. tied: dt, dt_bias and A are read once
   per (r, h). */
static inline float softplus_f(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

#define SSU_LOOP(LOAD, STORE)                                                          \
    for (int64_t p = 0; p < P; ++p) {                                                  \
        float dtv = dt0;                                                               \
        if (!tied) {                                                                   \
            dtv = dt[r * k[4] + hh * k[5] + p * k[6]];                                 \
            if (dtb) dtv += dtb[hh * k[7] + p * k[8]];                                 \
            if (sp_) dtv = softplus_f(dtv);                                            \
        }                                                                              \
        const float xv = x[r * k[24] + hh * k[25] + p * k[26]];                        \
        const float xdt = xv * dtv;                                                    \
        const float* a = A + hh * k[9] + p * k[10];                                    \
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
                    float v = LOAD(in[n]) * fexp(dtv * a[n]) + xdt * b[n];             \
                    o[n] = STORE(v);                                                   \
                    acc += v * c[n];                                                   \
                }                                                                      \
            }                                                                          \
        } else {                                                                       \
            for (int64_t n = 0; n < N; ++n) {                                          \
                float dA = tied ? dAt : fexp(dtv * a[n * an]);                         \
                float v = LOAD(in[n * sn]) * dA + xdt * b[n];                          \
                if (wr) o[n * sn] = STORE(v);                                          \
                acc += v * c[n];                                                       \
            }                                                                          \
        }                                                                              \
        if (Dp) acc += Dp[hh * k[16] + p * k[17]] * xv;                                \
        if (z) {                                                                       \
            const float zv = z[r * k[18] + hh * k[19] + p * k[20]];                    \
            acc *= zv / (1.0f + fexp(-zv));                                            \
        }                                                                              \
        out[r * k[21] + hh * k[22] + p * k[23]] = acc;                                 \
    }


/* Tied (Mamba2) rows with a compile-time N: B and C are copied to locals (they cannot alias
   the state stores) and stay in registers across the P rows of a head. */
#define SSU_TIED_FAST(NN, LOAD, STORE)                                                 \
    {                                                                                  \
        float bl[NN], cl[NN];                                                          \
        for (int64_t n = 0; n < NN; ++n) { bl[n] = b[n]; cl[n] = c[n]; }               \
        for (int64_t p = 0; p < P; ++p) {                                              \
            const float xv = x[r * k[24] + hh * k[25] + p * k[26]];                    \
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
            if (Dp) acc += Dp[hh * k[16] + p * k[17]] * xv;                            \
            if (z) {                                                                   \
                const float zv = z[r * k[18] + hh * k[19] + p * k[20]];                \
                acc *= zv / (1.0f + fexp(-zv));                                        \
            }                                                                          \
            out[r * k[21] + hh * k[22] + p * k[23]] = acc;                             \
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
SSU_V512_FN(f16, _Float16)

/* The tied fast path of one (request, head) through ssu_rows_*: y rows, then D and z. */
#define SSU_V512_HEAD(SFX)                                                              \
    {                                                                                   \
        float yrow[1024];                                                               \
        ssu_rows_##SFX(base + src * k[0] + hh * k[1], base + dst * k[0] + hh * k[1],   \
                       k[2], b, c, dAt, dt0, x + r * k[24] + hh * k[25], k[26], yrow,  \
                       P, N);                                                           \
        for (int64_t p = 0; p < P; ++p) {                                               \
            const float xv = x[r * k[24] + hh * k[25] + p * k[26]];                    \
            float acc = yrow[p];                                                        \
            if (Dp) acc += Dp[hh * k[16] + p * k[17]] * xv;                            \
            if (z) {                                                                    \
                const float zv = z[r * k[18] + hh * k[19] + p * k[20]];                \
                acc *= zv / (1.0f + fexp(-zv));                                        \
            }                                                                           \
            out[r * k[21] + hh * k[22] + p * k[23]] = acc;                             \
        }                                                                               \
    }
#define SSU_V512_OK (tied && wr && sn == 1 && N % 16 == 0 && N <= 256 && P <= 1024)
#else
#define SSU_V512_OK 0
#define SSU_V512_HEAD(SFX) {}
#endif

#define SSU_DISPATCH(LOAD, STORE)                                                      \
    if (tied && wr && sn == 1 && N == 128) SSU_TIED_FAST(128, LOAD, STORE)             \
    else if (tied && wr && sn == 1 && N == 64) SSU_TIED_FAST(64, LOAD, STORE)          \
    else SSU_LOOP(LOAD, STORE)

static inline int64_t slot_at(const void* t, int is32, int64_t i) {
    return is32 ? (int64_t)((const int32_t*)t)[i] : ((const int64_t*)t)[i];
}

void mb_ssu(void* state, int dtype, const int64_t* k_in, const void* src_slot,
            const void* dst_slot, int idx32, int64_t pad_id, int64_t null_id, int has_null,
            const float* x, const float* dt, const float* dtb, int sp_, const float* A,
            const float* B, const float* C, const float* Dp, const float* z, float* out,
            int64_t R, int64_t H, int64_t P, int64_t N, int64_t G, int tied, int nthreads) {
    int64_t k[29];
    memcpy(k, k_in, sizeof(k)); /* local copy: provably not aliased by the stores */
    const int64_t rep = H / G, sn = k[3], an = k[11];
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < R * H; ++item) {
        const int64_t r = item / H, hh = item % H;
        const int64_t src = src_slot ? slot_at(src_slot, idx32, r * k[27]) : r;
        const int64_t dst = dst_slot ? slot_at(dst_slot, idx32, r * k[28]) : src;
        if (src_slot && (src == pad_id || (has_null && src == null_id))) continue;
        const int wr = !(dst_slot && (dst == pad_id || (has_null && dst == null_id)));
        const float* b = B + r * k[12] + (hh / rep) * k[13];
        const float* c = C + r * k[14] + (hh / rep) * k[15];
        float dt0 = 0.0f, dAt = 0.0f;
        if (tied) {
            dt0 = dt[r * k[4] + hh * k[5]];
            if (dtb) dt0 += dtb[hh * k[7]];
            if (sp_) dt0 = softplus_f(dt0);
            dAt = fexp(dt0 * A[hh * k[9]]);
        }
        if (dtype == 0) {
            typedef float T_; T_* base = (T_*)state;
            if (SSU_V512_OK) SSU_V512_HEAD(f32)
            else SSU_DISPATCH(ID, ID)
        } else if (dtype == 1) {
            typedef uint16_t T_; T_* base = (T_*)state;
            if (SSU_V512_OK) SSU_V512_HEAD(bf16)
            else SSU_DISPATCH(bf16_to_f, f_to_bf16)
        } else if (SSU_V512_OK) {
            typedef _Float16 T_; T_* base = (T_*)state;
            SSU_V512_HEAD(f16)
        } else {
            typedef _Float16 T_; T_* base = (T_*)state;
            SSU_DISPATCH(F16L, F16S)
        }
    }
}
"""
