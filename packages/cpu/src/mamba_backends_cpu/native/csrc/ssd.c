/* Mamba2 SSD prefill as a recurrence (mb_ssd_f32), the state of a (sequence, head) in cache. */
#include "mb_common.h"

/* exp(dt * A) of one token, zero exactly where the spec's float64 exp is (below -745.13):
   an infinite state times a vanished decay is NaN there (inf * 0), and stays inf where the
   decay is merely tiny (mb_exp clamps its input to -87: e^-87 stands in for anything
   smaller). NaN stays NaN. */
static inline float ssd_decay(float a) {
    return a < -745.13f ? 0.0f : (a > 88.0f ? INFINITY : mb_exp(a));
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
        for (int64_t p = 0; p < P; ++p) /* below -88 mb_exp saturates: z * 0 keeps -inf NaN */
            yv[p] *= zt[p] < -88.0f ? zt[p] * 0.0f : zt[p] / (1.0f + mb_exp(-zt[p]));
    }
    memcpy(yt, yv, sizeof(float) * (size_t)P);
}

/* Mamba2 SSD as a recurrence per (sequence, head), state (P, N) in cache; four tokens are
   applied per pass over the state (a quarter of the state traffic).
   x, y, z: (T, H, P); dt: (T, H) (biased, softplussed, clamped); A: (H,);
   B, C: (T, G, N); D: (H, P) or NULL; z may be NULL; init: (S, H, P, N) or NULL;
   final: (S, H, P, N) out; cuc: (nch+1,) chunk offsets, chunk_first: (S,) first chunk of each
   sequence, chunk_states: (nch, H, P, N) out or NULL (state after every chunk). */
int mb_ssd_f32(const MbSsdArgs* a, int64_t args_size) {
    MB_CHECK_ARGS(a, args_size);
    const float *x = a->x, *dt = a->dt, *A = a->A, *B = a->B, *C = a->C, *Dp = a->D;
    const float *zp = a->z, *init = a->init;
    float *y = a->y, *final_ = a->final_states, *chunk_states = a->chunk_states;
    const int64_t *qsl = a->qsl, *cuc = a->cuc, *chunk_first = a->chunk_first;
    const int64_t S = a->S, H = a->H, P = a->P, N = a->N, G = a->G;
    const int nthreads = (int)a->nthreads;
    int failed = 0;
    const int64_t rep = H / G, PN = P * N;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int64_t item = 0; item < S * H; ++item) {
        const int64_t s = item / H, h = item % H, g = h / rep;
        float* st = final_ + (s * H + h) * PN;
        if (init) memcpy(st, init + (s * H + h) * PN, sizeof(float) * (size_t)PN);
        else memset(st, 0, sizeof(float) * (size_t)PN);
        const float ah = A[h];
        const float* dh = Dp ? Dp + h * P : NULL;
        float* yv = (float*)malloc(sizeof(float) * (size_t)(4 * P));
        if (!yv) {
            _Pragma("omp atomic write")
            failed = 1;
            continue;
        }
        int64_t t = qsl[s];
        for (int64_t c = chunk_first[s]; t < qsl[s + 1]; ++c) {
            const int64_t t_end = cuc[c + 1];
            for (; t + 4 <= t_end; t += 4) {
                float dtv[4], dA[4];
                const float *b[4], *cc[4], *xt[4];
                for (int u = 0; u < 4; ++u) {
                    dtv[u] = dt[(t + u) * H + h];
                    dA[u] = ssd_decay(dtv[u] * ah);
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
                const float dA = ssd_decay(dtv * ah);
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
    return failed ? MB_ENOMEM : MB_OK;
}
