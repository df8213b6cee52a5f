"""Mamba1 selective scan over a varlen (or batched) prefill: ``selective_scan_fn``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.selective_scan_fn`,
vLLM 0.32's). Per sequence, channel ``d``, state index ``n`` and token ``t``::

    dt   = softplus?(delta[d, t] + delta_bias[d])
    h[n] = exp(A[d, n] * dt) * h[n] + dt * B[g(d), n, t] * u[d, t]
    y    = sum_n C[g(d), n, t] * h[n] + D[d] * u[d, t]        -> delta[d, t]  (in place)
    y    = y * silu(z[d, t])                                   -> z[d, t]      (with z)

The op returns ``z`` when given, else ``delta``: like vLLM's kernel, ``delta`` receives the
ungated output and ``z`` the gated one.

One program per (sequence, block of ``BLOCK_D`` channels), grid ``(B, cdiv(dim, BLOCK_D))``:
the ``(BLOCK_D, N)`` state tile lives in registers while the program walks the sequence's
tokens in order; each step's loads are issued one token ahead (the next token's ``u``,
``delta``, ``z``, ``B``, ``C`` are in flight while this token computes). The slot is read once,
only when ``has_initial_state`` says so (a slot without an initial state is never read: NaN
garbage in it cannot leak), and written once at the end; slots are unique per sequence, so
no program reads what another writes. Pad/null slots and empty sequences are skipped: their
state and output columns are untouched; so are the columns of a padded tail.

Offsets are int64 (tokens x strides, slots x strides); every load is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import triton
import triton.language as tl
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes, flag_tensor, skip_ids
from mamba_backends_triton.ops.state_update.kernels import softplus

OP = "selective_scan_fn"


@triton.jit
def _token(
    u_row, dl_row, z_row, B_row, C_row, t, ok, bc_ok,
    stride_u_t, stride_dl_t, stride_z_t, stride_B_t, stride_C_t, HAS_Z: tl.constexpr,
):  # fmt: skip
    """The loads of token ``t`` (masked by ``ok`` / ``bc_ok``), as float32."""
    u = tl.load(u_row + t * stride_u_t, mask=ok, other=0.0).to(tl.float32)
    dl = tl.load(dl_row + t * stride_dl_t, mask=ok, other=0.0).to(tl.float32)
    if HAS_Z:
        zt = tl.load(z_row + t * stride_z_t, mask=ok, other=0.0).to(tl.float32)
    else:
        zt = u
    Bt = tl.load(B_row + t * stride_B_t, mask=bc_ok, other=0.0).to(tl.float32)
    Ct = tl.load(C_row + t * stride_C_t, mask=bc_ok, other=0.0).to(tl.float32)
    return u, dl, zt, Bt, Ct


@triton.jit
def _selective_scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, state_ptr,
    qsl_ptr, idx_ptr, init_ptr,
    dim, N, seqlen, batch, channels_per_group, num_slots, pad_slot_id, null_block_id,
    stride_u_b, stride_u_d, stride_u_t, stride_dl_b, stride_dl_d, stride_dl_t,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_t, stride_C_b, stride_C_g, stride_C_n, stride_C_t,
    stride_z_b, stride_z_d, stride_z_t, stride_s_slot, stride_s_d, stride_s_n,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_IDX: tl.constexpr, HAS_INIT: tl.constexpr, VARLEN: tl.constexpr,
    ONE_GROUP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Sequence ``pid0``, channels ``pid1 * BLOCK_D + [0, BLOCK_D)``.

    ``ONE_GROUP``: the whole channel block reads one group of B/C (one group, or a group size
    that BLOCK_D divides), so B/C are ``(N,)`` vectors per token; otherwise ``(BLOCK_D, N)``
    gathers. The batched form has batch strides and ``seqlen`` tokens per row; the varlen form
    zero batch strides and the sequence's range in ``query_start_loc``.
    """
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BLOCK_D
    d = d0 + tl.arange(0, BLOCK_D)
    nn = tl.arange(0, BLOCK_N)
    d_ok = d < dim
    n_ok = nn < N
    d64 = d.to(tl.int64)
    n64 = nn.to(tl.int64)
    in_b = b < batch
    if VARLEN:
        start = tl.load(qsl_ptr + b, mask=in_b, other=0).to(tl.int64)
        n_tok = tl.load(qsl_ptr + b + 1, mask=in_b, other=0).to(tl.int64) - start
    else:
        start = b * 0
        n_tok = b * 0 + seqlen
    if HAS_IDX:
        slot = tl.load(idx_ptr + b, mask=in_b, other=-1).to(tl.int64)
        run = in_b & (slot != pad_slot_id) & (slot != null_block_id)
        run = run & (slot >= 0) & (slot < num_slots)
    else:
        slot = b
        run = in_b
    run = run & (n_tok > 0)
    n_tok = tl.where(run, n_tok, 0)
    tile_ok = d_ok[:, None] & n_ok[None, :]
    m = tl.where(run, tile_ok, False)  # (the interpreter cannot '&' a scalar and a block)
    s_tile = (
        state_ptr + slot * stride_s_slot + d64[:, None] * stride_s_d + n64[None, :] * stride_s_n
    )
    if HAS_INIT:
        init = run & (tl.load(init_ptr + b, mask=in_b, other=0) != 0)
        h = tl.load(s_tile, mask=tl.where(init, m, False), other=0.0).to(tl.float32)
    else:  # no initial states: the slot is never read
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    A = tl.load(
        A_ptr + d64[:, None] * stride_A_d + n64[None, :] * stride_A_n, mask=tile_ok, other=0.0
    ).to(tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)

    ok = tl.where(run, d_ok, False)
    u_row = u_ptr + b * stride_u_b + start * stride_u_t + d64 * stride_u_d
    dl_row = delta_ptr + b * stride_dl_b + start * stride_dl_t + d64 * stride_dl_d
    z_row = z_ptr + b * stride_z_b + start * stride_z_t + d64 * stride_z_d
    if ONE_GROUP:
        g = d0 // channels_per_group
        B_row = B_ptr + b * stride_B_b + g * stride_B_g + start * stride_B_t + n64 * stride_B_n
        C_row = C_ptr + b * stride_C_b + g * stride_C_g + start * stride_C_t + n64 * stride_C_n
        bc_ok = tl.where(run, n_ok, False)
    else:
        g = (d // channels_per_group).to(tl.int64)[:, None]
        B_row = B_ptr + b * stride_B_b + g * stride_B_g + start * stride_B_t
        B_row = B_row + n64[None, :] * stride_B_n
        C_row = C_ptr + b * stride_C_b + g * stride_C_g + start * stride_C_t
        C_row = C_row + n64[None, :] * stride_C_n
        bc_ok = m
    u, dl, zt, Bt, Ct = _token(
        u_row, dl_row, z_row, B_row, C_row, 0, ok, bc_ok,
        stride_u_t, stride_dl_t, stride_z_t, stride_B_t, stride_C_t, HAS_Z,
    )  # fmt: skip
    for i in range(n_tok):
        # Token i+1's loads go out before token i computes (none past the sequence's end).
        more = i + 1 < n_tok
        u1, dl1, zt1, Bt1, Ct1 = _token(
            u_row, dl_row, z_row, B_row, C_row, i + 1,
            tl.where(more, ok, False), tl.where(more, bc_ok, False),
            stride_u_t, stride_dl_t, stride_z_t, stride_B_t, stride_C_t, HAS_Z,
        )  # fmt: skip
        dt = dl
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = softplus(dt)
        if ONE_GROUP:
            Bn = Bt[None, :]
            Cn = Ct[None, :]
        else:
            Bn = Bt
            Cn = Ct
        h = tl.exp(A * dt[:, None]) * h + (dt * u)[:, None] * Bn
        y = tl.sum(h * Cn, axis=1)
        if HAS_D:
            y += D * u
        tl.store(dl_row + i * stride_dl_t, y.to(delta_ptr.dtype.element_ty), mask=ok)
        if HAS_Z:
            y = y * (zt * tl.sigmoid(zt))
            tl.store(z_row + i * stride_z_t, y.to(z_ptr.dtype.element_ty), mask=ok)
        u, dl, zt, Bt, Ct = u1, dl1, zt1, Bt1, Ct1
    tl.store(s_tile, h.to(state_ptr.dtype.element_ty), mask=m)


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``TILE`` state elements per program: ``BLOCK_D = TILE / BLOCK_N`` channels (one config
    keeps its register budget at every N)."""
    blocks = {"BLOCK_D": max(int(cfg["TILE"]) // int(feats["BLOCK_N"]), 1)}
    return blocks, launch_options(cfg)


def selective_scan_fn(
    u: Tensor,
    ssm_states: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    query_start_loc: Tensor | None = None,
    cache_indices: Tensor | None = None,
    has_initial_state: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID,
    block_size: int = 1024,
    block_idx_first_scheduled_token: Tensor | None = None,
    block_idx_last_scheduled_token: Tensor | None = None,
    initial_state_idx: Tensor | None = None,
    cu_chunk_seqlen: Tensor | None = None,
    last_chunk_indices: Tensor | None = None,
) -> Tensor:
    """Mamba1 prefill scan (vLLM 0.32's signature; see the module docstring).

    Varlen: u/delta/z (dim, T), any strides; B/C (N, T) or (G, N, T); query_start_loc (B+1,).
    Batched: u/delta/z (B, dim, L); B/C (B, N, L) or (B, G, N, L). A (dim, N); D, delta_bias
    (dim,); ssm_states (slots, dim, N), any strides, updated in place; cache_indices (B,) or
    None (slot b); has_initial_state (B,) or None (no initial states). Writes delta (and z) in
    place and returns z if given, else delta. ``block_size``, ``cu_chunk_seqlen`` and
    ``last_chunk_indices`` only matter with prefix caching, whose arguments raise.
    """
    _contract.check_not_supported(
        OP,
        block_idx_first_scheduled_token=block_idx_first_scheduled_token,
        block_idx_last_scheduled_token=block_idx_last_scheduled_token,
        initial_state_idx=initial_state_idx,
    )
    _contract.check_selective_scan_args(
        u, ssm_states, delta, A, B, C, D, z, delta_bias, query_start_loc, cache_indices,
        has_initial_state, null_block_id, pad_slot_id=PAD_SLOT_ID,
    )  # fmt: skip
    check_kernel_dtypes(
        OP, u=u, ssm_states=ssm_states, delta=delta, A=A, B=B, C=C, D=D, z=z,
        delta_bias=delta_bias,
    )  # fmt: skip
    target = z if z is not None else delta
    varlen = query_start_loc is not None
    dim, N = A.shape
    L = u.shape[-1]
    if varlen:
        assert query_start_loc is not None
        batch = query_start_loc.shape[0] - 1
        us, dls, zs = u.unsqueeze(0), delta.unsqueeze(0), z.unsqueeze(0) if z is not None else None
        Bs, Cs = B.unsqueeze(0), C.unsqueeze(0)
    else:
        batch = u.shape[0]
        us, dls, zs, Bs, Cs = u, delta, z, B, C
    if Bs.dim() == 3:  # (batch, N, L): one group
        Bs, Cs = Bs.unsqueeze(1), Cs.unsqueeze(1)
    G = Bs.shape[1]
    if batch == 0 or dim == 0 or L == 0:
        return target
    pad, null = skip_ids(PAD_SLOT_ID, null_block_id)
    init = flag_tensor(has_initial_state)
    idx = cache_indices
    BLOCK_N = triton.next_power_of_2(max(N, 1))
    cfg = launch_config(OP, u.device, dim=dim, dstate=N)
    blocks, options = _launch(cfg, {"BLOCK_N": BLOCK_N})
    blocks["BLOCK_D"] = min(blocks["BLOCK_D"], triton.next_power_of_2(dim))
    cpg = dim // G
    feats = {
        "HAS_D": D is not None, "HAS_BIAS": delta_bias is not None, "HAS_Z": z is not None,
        "SOFTPLUS": bool(delta_softplus), "HAS_IDX": idx is not None,
        "HAS_INIT": init is not None, "VARLEN": varlen,
        "ONE_GROUP": G == 1 or cpg % blocks["BLOCK_D"] == 0, "BLOCK_N": BLOCK_N,
    }  # fmt: skip
    dummy = query_start_loc if query_start_loc is not None else (idx if idx is not None else u)

    def batch_stride(t: Tensor) -> int:
        return 0 if varlen else t.stride(0)

    zs_arg = zs if zs is not None else us
    grid = (batch, triton.cdiv(dim, blocks["BLOCK_D"]))
    _selective_scan_kernel[grid](
        us, dls, A, Bs, Cs, D if D is not None else A,
        delta_bias if delta_bias is not None else A, zs_arg, ssm_states,
        dummy, idx if idx is not None else dummy, init if init is not None else dummy,
        dim, N, L, batch, cpg, ssm_states.shape[0], pad, null,
        batch_stride(us), us.stride(1), us.stride(2),
        batch_stride(dls), dls.stride(1), dls.stride(2),
        A.stride(0), A.stride(1),
        batch_stride(Bs), *Bs.stride()[1:], batch_stride(Cs), *Cs.stride()[1:],
        batch_stride(zs_arg), zs_arg.stride(1), zs_arg.stride(2),
        *ssm_states.stride(),
        **feats, **blocks, **options,
    )  # fmt: skip
    return target


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): vLLM's Mamba1
# prefill (bf16 (dim, T) views of (T, dim) rows, B/C (N, T) views of (T, N), fp32 A/D/bias and
# states, N=16), fp16 contiguous (dim, T) with G=2 groups gathered per channel and N=64, and
# fp32 batched without optional inputs at N=128 (the largest tiles of B/C gathers).
_VLLM = {
    "u_ptr": "bf16", "delta_ptr": "bf16", "A_ptr": "fp32", "B_ptr": "bf16", "C_ptr": "bf16",
    "D_ptr": "fp32", "bias_ptr": "fp32", "z_ptr": "bf16", "state_ptr": "fp32",
    "qsl_ptr": "i32", "idx_ptr": "i32", "init_ptr": "u8",
}  # fmt: skip
_HALF = {
    **_VLLM,
    **{k: "fp16" for k in ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "state_ptr")},
    **{k: "i64" for k in ("qsl_ptr", "idx_ptr")},
}
_F32 = {k: "fp32" for k in _VLLM}
_CL = {"stride_u_d": 1, "stride_dl_d": 1, "stride_z_d": 1, "stride_B_n": 1, "stride_C_n": 1}
_CONTIG = {"stride_u_t": 1, "stride_dl_t": 1, "stride_z_t": 1, "stride_B_t": 1, "stride_C_t": 1}


#: What the JIT sees as multiples of 16 in vLLM's Mamba1 call (dim 5120, N=16, rows of the
#: in_proj / x_proj / dt_proj outputs).
_VLLM_DIVISIBLE = (
    "dim", "N", "channels_per_group", "stride_u_t", "stride_dl_t", "stride_z_t", "stride_A_d",
    "stride_B_t", "stride_C_t", "stride_s_slot", "stride_s_d",
)  # fmt: skip


def _variant(
    name: str, ptrs: dict[str, str], N: int, flags: str, unit: dict[str, int], div: tuple = ()
) -> Variant:
    """``flags``: letters of the features on (d: D, b: delta_bias, z, s: softplus, i: indices,
    n: has_initial_state, v: varlen, o: one group per channel block)."""
    letters = (
        ("HAS_D", "d"), ("HAS_BIAS", "b"), ("HAS_Z", "z"), ("SOFTPLUS", "s"), ("HAS_IDX", "i"),
        ("HAS_INIT", "n"), ("VARLEN", "v"), ("ONE_GROUP", "o"),
    )  # fmt: skip
    feats = {f: c in flags for f, c in letters}
    consts = {**feats, "BLOCK_N": N, "stride_s_n": 1, "stride_A_n": 1, **unit}
    return Variant(name, ptrs, consts, tuple(d for d in div if d not in consts))


COMPILE_CHECKS = (
    KernelCheck(
        _selective_scan_kernel,
        OP,
        (
            _variant(
                "bf16 (dim, T) rows, fp32 state, N16", _VLLM, 16, "dbzsinvo", _CL, _VLLM_DIVISIBLE
            ),  # fmt: skip
            _variant("fp16 contiguous, G=2 gathered, N64", _HALF, 64, "dbzsinv", _CONTIG),
            _variant("fp32 batched, no optionals, N128", _F32, 128, "o", _CONTIG),
        ),
        _launch,
    ),
)
