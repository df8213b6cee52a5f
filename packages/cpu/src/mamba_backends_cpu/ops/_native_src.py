"""C source of the fused CPU kernels (built and loaded by ``_native``).

Plain C99 + OpenMP, no PyTorch headers; every loop that matters is written so that GCC/Clang
vectorise it (``-O3 -march=native``). Kept apart from the loader so that both stay readable.
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

/* exp for x <= 0 (clamped at -87), branch-free so that loops vectorise. */
static inline float fexp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float t = x * 1.44269504088896341f;
    float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest, |t| < 2^22 */
    float r = x - n * 0.693145751953125f - n * 1.42860682030941723212e-6f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } u;
    u.i = ((int32_t)n + 127) << 23;
    return p * u.f;
}

#define ID(v) (v)
#define F16L(v) ((float)(v))
#define F16S(v) ((_Float16)(v))

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), log1p(y) = 2 atanh(y / (2 + y)) by its odd
   series (y in (0, 1], so the ratio is at most 1/3: error below 1e-7). Branch-free. */
static inline float fsoftplus(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float y = fexp(-ax);
    const float r = y / (2.0f + y), r2 = r * r;
    float p = 1.0f / 11.0f;
    p = p * r2 + 1.0f / 9.0f;
    p = p * r2 + 1.0f / 7.0f;
    p = p * r2 + 1.0f / 5.0f;
    p = p * r2 + 1.0f / 3.0f;
    p = p * r2 + 1.0f;
    return (x > 0.0f ? x : 0.0f) + 2.0f * r * p;
}

static inline float bf16_to_f(uint16_t v) {
    union { uint32_t i; float f; } u; u.i = ((uint32_t)v) << 16; return u.f;
}
static inline uint16_t f_to_bf16(float f) {
    union { uint32_t i; float f; } u; u.f = f;
    uint32_t r = u.i + 0x7FFFu + ((u.i >> 16) & 1u);
    return (uint16_t)(r >> 16);
}

/* Mamba1 scan: u, dt, y (T, Dm); B, C (T, G, N); A (Dm, N); h (S, Dm, N) in/out.
   Work item = (sequence, group, block of DB channels); tokens in order inside an item.
   The block's state is kept transposed, (N, DB), so the inner loop runs over channels. */
#define DB 16
void mb_scan_f32(const float* u, const float* dt, const float* A, const float* B,
                 const float* C, float* h, float* y, const int64_t* qsl, int64_t S,
                 int64_t Dm, int64_t N, int64_t G, int nthreads) {
    const int64_t Dg = Dm / G;
    const int64_t nblk = (Dg + DB - 1) / DB;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = 0; item < S * G * nblk; ++item) {
        const int64_t s = item / (G * nblk), g = (item / nblk) % G;
        const int64_t d0 = g * Dg + (item % nblk) * DB;
        const int64_t d1 = d0 + DB < (g + 1) * Dg ? d0 + DB : (g + 1) * Dg;
        const int64_t nd = d1 - d0;
        float* hl = (float*)malloc(sizeof(float) * (size_t)(2 * N * DB));
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
                    float v = fexp(dtv[k] * an[k]) * hn[k] + xu[k] * bn;
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
}

/* Mamba1 scan in vLLM's varlen layout, in place. Element (d, t) of u, z, delta at
   d*k[0] + t*k[1] (u), d*k[2] + t*k[3] (z), d*k[4] + t*k[5] (delta); dt = delta + dbias[d]
   (dbias may be NULL), softplussed when asked, is read before delta[d, t] is overwritten;
   B/C element (g, n, t) at g*k[6] + n*k[7] + t*k[8] (B) and g*k[9] + n*k[10] + t*k[11] (C).
   y = h C + D u goes to delta; with z, y * silu(z) goes to z. h: (S, Dm, N) contiguous
   in/out; run[s] = 0 skips sequence s entirely. */
void mb_scan_varlen(const float* u, const float* dbias, int softplus, const float* A,
                    const float* B, const float* C, const float* Dp, float* z, float* delta,
                    float* h, const uint8_t* run, const int64_t* qsl, const int64_t* k_in,
                    int64_t S, int64_t Dm, int64_t N, int64_t G, int nthreads) {
    int64_t k[12];
    memcpy(k, k_in, sizeof(k));
    const int64_t Dg = Dm / G;
    const int64_t nblk = (Dg + DB - 1) / DB;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = 0; item < S * G * nblk; ++item) {
        const int64_t s = item / (G * nblk), g = (item / nblk) % G;
        if (!run[s]) continue;
        const int64_t d0 = g * Dg + (item % nblk) * DB;
        const int64_t d1 = d0 + DB < (g + 1) * Dg ? d0 + DB : (g + 1) * Dg;
        const int64_t nd = d1 - d0;
        float* hl = (float*)malloc(sizeof(float) * (size_t)(3 * N * DB));
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
                dtv[q] = delta[d * k[4] + t * k[5]] + (dbias ? dbias[d] : 0.0f);
                xu[q] = u[d * k[0] + t * k[1]];
                acc[q] = 0.0f;
            }
            if (softplus) {
                #pragma omp simd
                for (int64_t q = 0; q < DB; ++q) dtv[q] = fsoftplus(dtv[q]);
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
                    float v = fexp(dtv[q] * an[q]) * hn[q] + xu[q] * bn;
                    hn[q] = v;
                    acc[q] += v * cn;
                }
            }
            for (int64_t q = 0; q < nd; ++q) {
                const int64_t d = d0 + q;
                const float uv = u[d * k[0] + t * k[1]];
                const float yv = acc[q] + (Dp ? Dp[d] * uv : 0.0f);
                delta[d * k[4] + t * k[5]] = yv;
                if (z) {
                    float* zp = z + d * k[2] + t * k[3];
                    const float zv = *zp;
                    *zp = yv * (zv / (1.0f + fexp(-zv)));
                }
            }
        }
        for (int64_t n = 0; n < N; ++n)
            for (int64_t q = 0; q < nd; ++q) hs[(d0 + q) * N + n] = hl[n * DB + q];
        free(hl);
    }
}

/* SSD epilogue for one token and head: y = (acc + D x) * silu(z). */
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

/* Causal conv1d decode, one token per request. State element (slot, d, j) lives at
   slot*s0 + d*s1 + j*s2 (any strides; vLLM's SD layout has s1 == 1). x: (R, dim) rows of
   stride sx; wT: (W, dim) contiguous; bias: (dim,) or NULL; out: (R, dim) rows of stride so.
   slots: (R,) or NULL (slot = r); pad/null slots are skipped (out rows untouched). */
#define CB 64
#define CONV_BODY(LOAD, STORE)                                                          \
    {                                                                                   \
        T_* st = (T_*)state + slot * s0;                                                \
        for (int64_t i = 0; i < nd; ++i) acc[i] = bias ? bias[d0 + i] : 0.0f;           \
        for (int64_t j = 0; j < K; ++j) {                                               \
            const float* wj = wT + j * dim + d0;                                        \
            const T_* sj = st + j * s2 + d0 * s1;                                       \
            if (s1 == 1) {                                                              \
                _Pragma("omp simd")                                                     \
                for (int64_t i = 0; i < nd; ++i) acc[i] += wj[i] * LOAD(sj[i]);         \
            } else {                                                                    \
                for (int64_t i = 0; i < nd; ++i) acc[i] += wj[i] * LOAD(sj[i * s1]);    \
            }                                                                           \
        }                                                                               \
        for (int64_t j = 0; j + 1 < K; ++j) {                                           \
            T_* sj = st + j * s2 + d0 * s1;                                             \
            const T_* sn = st + (j + 1) * s2 + d0 * s1;                                 \
            for (int64_t i = 0; i < nd; ++i) sj[i * s1] = sn[i * s1];                   \
        }                                                                               \
        T_* last = st + (K - 1) * s2 + d0 * s1;                                         \
        for (int64_t i = 0; i < nd; ++i) last[i * s1] = STORE(xr[i]);                   \
    }

void mb_conv_update(void* state, int dtype, int64_t s0, int64_t s1, int64_t s2,
                    const int64_t* slots, int64_t pad_id, int64_t null_id, int has_null,
                    const float* x, int64_t sx, const float* wT, const float* bias,
                    float* out, int64_t so, int64_t R, int64_t dim, int64_t W, int silu,
                    int nthreads) {
    const int64_t K = W - 1, nblk = (dim + CB - 1) / CB;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < R * nblk; ++item) {
        const int64_t r = item / nblk, d0 = (item % nblk) * CB;
        const int64_t nd = d0 + CB < dim ? CB : dim - d0;
        const int64_t slot = slots ? slots[r] : r;
        if (slots && (slot == pad_id || (has_null && slot == null_id))) continue;
        float acc[CB];
        const float* xr = x + r * sx + d0;
        if (dtype == 0) {
            typedef float T_;
            CONV_BODY(ID, ID)
        } else if (dtype == 1) {
            typedef uint16_t T_;
            CONV_BODY(bf16_to_f, f_to_bf16)
        } else {
            typedef _Float16 T_;
            CONV_BODY(F16L, F16S)
        }
        const float* wl = wT + K * dim + d0;
        float* o = out + r * so + d0;
        #pragma omp simd
        for (int64_t i = 0; i < nd; ++i) {
            float v = acc[i] + wl[i] * xr[i];
            o[i] = silu ? v / (1.0f + fexp(-v)) : v;
        }
    }
}

/* Selective state update, one token per request, everything addressed through strides
   (vLLM's tied Mamba2 layout has zero strides; nothing is copied on the Python side).
   k[] holds element strides: state 0-3 (slot, h, p, n), dt 4-6 (r, h, p), dt_bias 7-8 (h, p),
   A 9-11 (h, p, n), B 12-13 (r, g; n contiguous), C 14-15, D 16-17 (h, p), z 18-20 (r, h, p),
   out 21-23 (r, h, p), x 24-26 (r, h, p).
   src/dst: (R,) int64 slots or NULL (slot = r); a source equal to pad/null skips the request
   (no state read or written, out rows untouched); a destination equal to pad/null is not
   written. dt_bias/D/z may be NULL. tied: dt, dt_bias and A are read once per (r, h). */
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

#define SSU_DISPATCH(LOAD, STORE)                                                      \
    if (tied && wr && sn == 1 && N == 128) SSU_TIED_FAST(128, LOAD, STORE)             \
    else if (tied && wr && sn == 1 && N == 64) SSU_TIED_FAST(64, LOAD, STORE)          \
    else SSU_LOOP(LOAD, STORE)

void mb_ssu(void* state, int dtype, const int64_t* k_in, const int64_t* src_slot,
            const int64_t* dst_slot, int64_t pad_id, int64_t null_id, int has_null,
            const float* x, const float* dt, const float* dtb, int sp_, const float* A,
            const float* B, const float* C, const float* Dp, const float* z, float* out,
            int64_t R, int64_t H, int64_t P, int64_t N, int64_t G, int tied, int nthreads) {
    int64_t k[27];
    memcpy(k, k_in, sizeof(k)); /* local copy: provably not aliased by the stores */
    const int64_t rep = H / G, sn = k[3], an = k[11];
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t item = 0; item < R * H; ++item) {
        const int64_t r = item / H, hh = item % H;
        const int64_t src = src_slot ? src_slot[r] : r;
        const int64_t dst = dst_slot ? dst_slot[r] : src;
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
            SSU_DISPATCH(ID, ID)
        } else if (dtype == 1) {
            typedef uint16_t T_; T_* base = (T_*)state;
            SSU_DISPATCH(bf16_to_f, f_to_bf16)
        } else {
            typedef _Float16 T_; T_* base = (T_*)state;
            SSU_DISPATCH(F16L, F16S)
        }
    }
}
"""
