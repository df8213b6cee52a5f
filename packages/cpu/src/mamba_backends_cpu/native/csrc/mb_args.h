/* The argument block of every kernel: one struct per kernel, passed by pointer together with
   the caller's sizeof. Each struct is mirrored field for field by a ctypes.Structure in
   mamba_backends_cpu.native (same name); mb_abi_sizeof() reports the sizes here, the loader
   compares them at load time, and every kernel refuses a block whose size differs
   (MB_EABI), so a stale mirror fails loudly instead of reading past the block.

   Conventions: pointers are void* or typed; every integer is int64_t (no padding between
   fields); floats come last. Strides are in elements. Dtype codes: 0 fp32, 1 bf16, 2 fp16.
   Change a struct here and in its Python mirror together, and bump MB_ABI_VERSION. */
#ifndef MB_ARGS_H
#define MB_ARGS_H

#include <stdint.h>

#define MB_ABI_VERSION 5
#define MB_OK 0
#define MB_EABI (-1)   /* argument block of the wrong size */
#define MB_ENOMEM (-2) /* an allocation failed */
#define MB_ENONFINITE (-3) /* check_finite found a NaN/inf input; nothing was written */
#define MB_EINDEX (-4)     /* check_slots found a slot out of range or written twice; nothing
                              was written */

/* mb_scan_f32: u, dt, y (T, Dm); B, C (T, G, N); A (Dm, N); h (S, Dm, N) in/out; all
   contiguous fp32. */
typedef struct {
    const float *u, *dt, *A, *B, *C;
    float *h, *y;
    const int64_t* qsl; /* (S + 1,) */
    int64_t S, Dm, N, G, nthreads;
} MbScanArgs;

/* mb_scan_varlen (see scan.c): u, z, delta (Dm, T) in `dtype` (fp32 or bf16) and B, C
   (G, N, T) fp32, through strides. */
typedef struct {
    const void* u;
    const float *delta_bias, *A, *B, *C, *D;
    void *z, *delta;
    float* h;
    const uint8_t* run;
    const int64_t* qsl;
    int64_t S, Dm, N, G, softplus, nthreads;
    int64_t prefetch;                 /* tokens ahead for strided rows (tunable) */
    int64_t dtype;                    /* storage dtype of u, z, delta: 0 fp32, 1 bf16 */
    int64_t su[2], sz[2], sdelta[2];  /* (d, t) */
    int64_t sB[3], sC[3];             /* (g, n, t) */
} MbScanVarlenArgs;

/* mb_ssd_f32 (see ssd.c): all fp32 contiguous. */
typedef struct {
    const float *x, *dt, *A, *B, *C, *D, *z, *init;
    float *y, *final_states;
    const int64_t *qsl, *cuc, *chunk_first;
    float* chunk_states;
    int64_t S, H, P, N, G, nthreads;
} MbSsdArgs;

/* mb_ssu (see ssu.c): one decode token per request, every tensor through strides. */
typedef struct {
    void* state;
    const void *src, *dst; /* (R,) int32 (idx32) or int64 slots, or NULL */
    const void *x, *dt, *dt_bias, *A, *B, *C, *D, *z;
    void* out;
    int64_t dtype, idx32, pad_id, null_id, has_null, softplus, tied;
    int64_t R, H, P, N, G, nthreads;
    /* element strides, in this order (the kernel reads them as one array k[29]) */
    int64_t s_state[4], s_dt[3], s_dt_bias[2], s_A[3], s_B[2], s_C[2], s_D[2], s_z[3];
    int64_t s_out[3], s_x[3], s_src, s_dst;
    /* dtype codes (MB_F32/MB_BF16/MB_F16) of x, dt, dt_bias, A, B, C, D, z, out; A is fp32
       unless tied, B and C are fp32 when N > MB_SSU_NMAX */
    int64_t dts[9];
    int64_t check_slots, nslots; /* refuse (MB_EINDEX) a live src/dst slot outside
                                    [0, nslots) or a live dst written twice */
} MbSsuArgs;
#define MB_SSU_NMAX 4096

/* mb_conv (see conv.c): causal depthwise conv1d, prefill and decode. */
typedef struct {
    const void* x;
    void *y, *states;
    const void *weight, *bias, *qsl, *slots;
    const uint8_t* has_init;
    int64_t B, L, dim, W;
    int64_t xdt, sxb, sxt, sxc;         /* x dtype, strides (request, token, channel) */
    int64_t ydt, syb, syt, syc;         /* y */
    int64_t sdt, s0, s1, s2;            /* states (slot, channel, column) */
    int64_t wdt, sw0, sw1, bdt, sb;     /* weight (channel, tap), bias */
    int64_t q64, i64, sslot;            /* qsl / slots int64 (else int32), slot stride */
    int64_t pad_id, has_pad, null_id, has_null;
    int64_t init_mode, silu, zero_skipped, split, mode, nthreads;
    int64_t chunk_tokens;               /* prefill tokens per work item with split (tunable) */
    int64_t prefetch;                   /* tokens ahead (tunable) */
    int64_t check_slots, nslots;        /* refuse (MB_EINDEX) a live slot outside [0, nslots)
                                           or written twice */
} MbConvArgs;

/* mb_gdn_rows / mb_gdn_tiles (see gdn.c). The block from N to sso[3] is read by the kernels
   as one int64 array prm[37]. */
typedef struct {
    const void *q, *k, *v, *g, *beta;
    void* o;
    const void* state_in;
    void* state_out;
    const int64_t *seq, *dst2d;
    int64_t N, H, HV, K, V, l2norm, dst_mode, ncol;
    int64_t dq, dk, dv, dg, dbeta, dout, dstate_in, dstate_out; /* dtype codes */
    int64_t sq[2], sk[2], sv[2], sg[2], sbeta[3], so[2];         /* (t, h[, v]) */
    int64_t sstate_in[4], sstate_out[4];                         /* (slot, hv, v, k) */
    int64_t nthreads;
    int64_t token_block; /* tile kernel: tokens prepared per block (tunable, >= 1) */
    int64_t check_finite; /* refuse (MB_ENONFINITE) a NaN/inf q/k/v/beta or NaN/+inf g of a
                             token that runs, before anything is written */
    float scale;
} MbGdnArgs;

/* mb_gdn_gating (see gdn.c) */
typedef struct {
    const void *A_log, *a, *b, *dt_bias;
    float* g;
    void* beta_out;
    int64_t T, HV, dA, da, db, dd;
    int64_t sa[2], sb[2], sdt_bias, sA_log;
    float beta, threshold;
} MbGatingArgs;

#define MB_CHECK_ARGS(a, size) \
    do { if ((size) != (int64_t)sizeof(*(a))) return MB_EABI; } while (0)

#endif /* MB_ARGS_H */
