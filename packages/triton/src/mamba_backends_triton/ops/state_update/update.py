"""Selective state update (decode), Mamba1 and Mamba2 heads form: ``selective_state_update``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.selective_state_update`,
vLLM 0.32's): one recurrent step per token, ``state_batch_indices`` 1-D or 2-D,
``dst_state_batch_indices``, pad/null slots skipped (never read or written), ``cu_seqlens``
(varlen multi-token requests), ``num_accepted_tokens`` (speculative decoding: the state after
token ``t`` goes to ``dst[r, t]``), ``out`` (may be ``x`` or ``z`` itself: each program reads a
token's inputs before it writes that token's output).

**All state reads happen before any state write**, across requests too. A GPU grid has no
barrier, so the launcher picks one of two paths from the arguments alone (no host sync):

- *single pass* (one launch): no destination indices, or the destination tensor *is* the source
  tensor, without ``num_accepted_tokens``. Every request then reads and writes only its own
  slot (the contract makes real slots unique), and each program reads its tile before writing
  it. Cost: one read and one write of each state byte, nothing else.
- *snapshot* (two launches): destinations given as another tensor, or speculative decoding
  (it reads column ``a-1`` and writes columns ``0..S-1``, which may be another request's
  source). :func:`~.kernels._ssu_snapshot_kernel` flags every request whose source slot another
  active request writes (chains ``dst[r] == src[r']``, swaps) and copies those source slots into
  a snapshot; the update kernel reads flagged requests from it. Cost when nothing aliases (the
  serving case: vLLM's APC and speculative paths): one extra launch of ``R`` small programs that
  each compare their source with the ``R x S`` destination ids (``R^2 S`` int compares, from
  L2), and an *untouched* scratch allocation of ``R x H x P x N`` states (from the caching
  allocator, so no device work). Each aliased request costs one extra read and write of its
  state. Two requests that write the same slot (the contract forbids it without
  ``num_accepted_tokens``) leave either one's state there.

Offsets are int64 wherever a product can pass 2^31; every load is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID
from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes, skip_ids
from mamba_backends_triton.ops.state_update.kernels import _ssu_kernel, _ssu_snapshot_kernel

OP = "selective_state_update"
#: Requests compared per step of the snapshot kernel's scan over the batch.
SNAP_BLOCK_R = 128


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The update kernel: ``TILE`` state elements per program, ``BLOCK_P = TILE / BLOCK_N``
    channels (so one config keeps its register budget at every N)."""
    blocks = {"BLOCK_P": max(int(cfg["TILE"]) // int(feats["BLOCK_N"]), 1)}
    return blocks, launch_options(cfg)


def _snap_launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The snapshot kernel: ``SNAP_BLOCK`` elements per copy step."""
    blocks = {"BLOCK_R": SNAP_BLOCK_R, "BLOCK_E": cfg["SNAP_BLOCK"]}
    return blocks, launch_options(cfg, "snap_num_warps", None)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
    )


def _strides(t: Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * n


def selective_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    z: Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: Tensor | None = None,
    dst_state_batch_indices: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID,
    out: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    is_blackwell: bool = False,
    enable_stochastic_rounding: bool = False,
    cache_philox_rounds: int = 0,
) -> Tensor:
    """One SSM step per token (vLLM 0.32's signature; see the module docstring).

    Heads form: state (slots, H, P, N), any strides, updated in place; x/dt/z/out (T, H, P);
    A (H, P, N); B/C (T, G, N); D/dt_bias (H, P). Mamba1 form: no H axis. Indices (R,) or
    (R, K); cu_seqlens (R+1,); num_accepted_tokens (R,). Returns ``out`` (a new tensor like x
    when omitted). ``is_blackwell`` and ``cache_philox_rounds`` do not change the math.
    """
    if enable_stochastic_rounding:
        raise NotImplementedError(
            f"{OP}: argument 'enable_stochastic_rounding' is not supported by the Triton kernel "
            "(it rounds states deterministically)"
        )
    _contract.check_selective_state_update_args(
        state, x, dt, A, B, C, D, dt_bias, z, state_batch_indices, dst_state_batch_indices,
        null_block_id, out, num_accepted_tokens, cu_seqlens, pad_slot_id=PAD_SLOT_ID,
    )  # fmt: skip
    check_kernel_dtypes(
        OP, state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias, z=z, out=out
    )
    if out is None:
        out = torch.empty_like(x)
    if state.dim() == 3:  # Mamba1 form: one "head" of dim channels, one group
        st, xs, dts, As, Bs, Cs = (
            state.unsqueeze(1), x.unsqueeze(1), dt.unsqueeze(1), A.unsqueeze(0),
            B.unsqueeze(1), C.unsqueeze(1),
        )  # fmt: skip
        Ds = D.unsqueeze(0) if D is not None else None
        biases = dt_bias.unsqueeze(0) if dt_bias is not None else None
        zs = z.unsqueeze(1) if z is not None else None
        outs = out.unsqueeze(1)
    else:
        st, xs, dts, As, Bs, Cs, Ds, biases, zs, outs = (
            state, x, dt, A, B, C, D, dt_bias, z, out
        )  # fmt: skip
    num_slots, H, P, N = st.shape
    G = Bs.shape[1]
    varlen = cu_seqlens is not None
    R = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else xs.shape[0]
    if R == 0 or xs.shape[0] == 0 or H * P * N == 0:
        return out

    src = state_batch_indices
    spec = num_accepted_tokens is not None
    dst = dst_state_batch_indices if dst_state_batch_indices is not None else src
    snap = src is not None and dst is not None and (spec or not _same_tensor(dst, src))
    _, null = skip_ids(PAD_SLOT_ID, null_block_id)  # (the pad slot, -1, is out of range)
    feats = {
        "HAS_D": Ds is not None, "HAS_BIAS": biases is not None, "HAS_Z": zs is not None,
        "SOFTPLUS": bool(dt_softplus), "HAS_IDX": src is not None, "SPEC": spec,
        "VARLEN": varlen, "SNAP": snap, "A_ROW": As.stride(2) == 0 or N == 1,
        "EVEN_N": N == triton.next_power_of_2(N), "BLOCK_N": triton.next_power_of_2(N),
    }  # fmt: skip
    cfg = launch_config(OP, x.device, dstate=N, headdim=P)
    blocks, options = _launch(cfg, feats)
    blocks["BLOCK_P"] = min(blocks["BLOCK_P"], triton.next_power_of_2(P))

    def idx_strides(t: Tensor | None) -> tuple[int, int]:
        if t is None:
            return 0, 0
        return t.stride(0), (t.stride(1) if t.dim() == 2 else 0)

    dummy = src if src is not None else (cu_seqlens if cu_seqlens is not None else xs)
    src_arg = src if src is not None else dummy
    dst_arg = dst if dst is not None else dummy
    acc_arg = num_accepted_tokens if num_accepted_tokens is not None else dummy
    cu_arg = cu_seqlens if cu_seqlens is not None else dummy
    s_strides = (st.stride(0), st.stride(1), st.stride(2), st.stride(3))
    if snap:
        assert dst is not None
        snapshot = torch.empty((R, H * P * N), dtype=state.dtype, device=state.device)
        flags = torch.empty((R,), dtype=torch.int32, device=state.device)
        dst_cols = dst.shape[1] if dst.dim() == 2 else 1
        sblocks, soptions = _snap_launch(cfg, feats)
        _ssu_snapshot_kernel[(R,)](
            st, src_arg, dst_arg, acc_arg, cu_arg, snapshot, flags,
            R, H, P, N, num_slots, dst_cols, null, *s_strides,
            *idx_strides(src), *idx_strides(dst), snapshot.stride(0),
            SPEC=spec, VARLEN=varlen, **sblocks, **soptions,
        )  # fmt: skip
        snap_arg, flag_arg = snapshot, flags
    else:
        snap_arg, flag_arg = st, dummy
    grid = (R, H, triton.cdiv(P, blocks["BLOCK_P"]))
    _ssu_kernel[grid](
        st, xs, dts, As, Bs, Cs,
        Ds if Ds is not None else As, biases if biases is not None else As,
        zs if zs is not None else xs, outs,
        src_arg, dst_arg, acc_arg, cu_arg, snap_arg, flag_arg,
        P, N, H // G, num_slots, null, *s_strides,
        *xs.stride(), *dts.stride(), *As.stride(), *Bs.stride(), *Cs.stride(),
        *_strides(Ds, 2), *_strides(biases, 2), *_strides(zs, 3), *outs.stride(),
        *idx_strides(src), *idx_strides(dst),
        **feats, **blocks, **options,
    )  # fmt: skip
    return out


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): vLLM's Mamba2
# decode (bf16 activations, fp32 contiguous states, tied per-head A/dt/D, N=128, destination
# indices: the snapshot path), vLLM's Mamba1 decode (fp16, full A (dim, N), N=16, in place),
# fp32 speculative varlen with 2-D int64 indices and a full A tile at N=128 (state and A
# tiles), and an in-place call whose sizes and strides the JIT cannot prove divisible by 16.
_MAMBA2 = {
    "state_ptr": "fp32", "x_ptr": "bf16", "dt_ptr": "bf16", "A_ptr": "fp32", "B_ptr": "bf16",
    "C_ptr": "bf16", "D_ptr": "fp32", "bias_ptr": "fp32", "z_ptr": "bf16", "out_ptr": "bf16",
    "src_ptr": "i32", "dst_ptr": "i32", "acc_ptr": "i32", "cu_ptr": "i32", "snap_ptr": "fp32",
    "flag_ptr": "i32",
}  # fmt: skip
_MAMBA1 = {
    **_MAMBA2,
    **{k: "fp16" for k in ("state_ptr", "x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr")},
    "snap_ptr": "fp16",
}
_SPEC = {
    **{k: "fp32" for k in _MAMBA2 if k not in ("src_ptr", "dst_ptr", "acc_ptr", "cu_ptr")},
    **{k: "i64" for k in ("src_ptr", "dst_ptr", "acc_ptr", "cu_ptr")},
    "flag_ptr": "i32",
}
_UNIT = {"stride_s_n": 1, "stride_x_p": 1, "stride_z_p": 1, "stride_o_p": 1, "stride_B_n": 1,
         "stride_C_n": 1}  # fmt: skip
#: vLLM's tied per-head parameters: dt (T, H, P) expanded from (T, H); A, D, dt_bias from (H,).
_TIED = {"stride_dt_h": 1, "stride_A_h": 1, "stride_D_h": 1, "stride_bias_h": 1}
#: Untied contiguous parameters: dt (T, H, P), A (H, P, N), D and dt_bias (H, P).
_UNTIED = {"stride_dt_p": 1, "stride_A_n": 1, "stride_D_p": 1, "stride_bias_p": 1}
#: What the JIT sees as multiples of 16 in vLLM's Mamba2 call (N=128, P=64, rows of the
#: in_proj output; the tied parameters' zero strides).
_VLLM_DIVISIBLE = (
    "P", "N", "stride_s_slot", "stride_s_h", "stride_s_p", "stride_x_t", "stride_x_h",
    "stride_dt_t", "stride_dt_p", "stride_A_p", "stride_A_n", "stride_B_t", "stride_B_g",
    "stride_C_t", "stride_C_g", "stride_D_p", "stride_bias_p", "stride_z_t", "stride_z_h",
    "stride_o_t", "stride_o_h",
)  # fmt: skip


def _variant(
    name: str, ptrs: dict[str, str], N: int, flags: str, unit: dict[str, int], div: tuple = ()
) -> Variant:
    """``flags``: letters of the features on (d: D, b: dt_bias, z, s: softplus, i: indices,
    p: speculative, v: varlen, n: snapshot, a: A constant along N)."""
    letters = (
        ("HAS_D", "d"), ("HAS_BIAS", "b"), ("HAS_Z", "z"), ("SOFTPLUS", "s"), ("HAS_IDX", "i"),
        ("SPEC", "p"), ("VARLEN", "v"), ("SNAP", "n"), ("A_ROW", "a"),
    )  # fmt: skip
    feats = {f: c in flags for f, c in letters}
    consts = {**feats, "EVEN_N": True, "BLOCK_N": N, **_UNIT, **unit}
    return Variant(name, ptrs, consts, tuple(d for d in div if d not in consts))


def _snap_only(v: Variant) -> Variant:
    """The snapshot kernel's share of a variant."""
    keep = ("state_ptr", "src_ptr", "dst_ptr", "acc_ptr", "cu_ptr", "snap_ptr", "flag_ptr")
    consts = {k: v.constexprs[k] for k in ("SPEC", "VARLEN")}
    consts["stride_s_n"] = 1
    return Variant(v.name, {k: v.pointers[k] for k in keep}, consts)


_VARIANTS = (
    _variant("Mamba2 bf16, fp32 state, tied A, N128, dst", _MAMBA2, 128, "dbzsina", _TIED,
             _VLLM_DIVISIBLE),
    _variant("Mamba1 fp16 state, full A, N16, in place", _MAMBA1, 16, "dbzsi", _UNTIED,
             _VLLM_DIVISIBLE),
    _variant("fp32 spec varlen, 2-D i64 idx, full A, N128", _SPEC, 128, "dbzsipvn", _UNTIED,
             _VLLM_DIVISIBLE),
    # odd sizes and strides (nothing divisible by 16: scalar accesses, the most registers)
    _variant("fp16 odd strides, full A, N32, in place", _MAMBA1, 32, "dbzsi", _UNTIED),
)  # fmt: skip


COMPILE_CHECKS = (
    KernelCheck(_ssu_kernel, OP, _VARIANTS, _launch),
    KernelCheck(
        _ssu_snapshot_kernel,
        OP,
        tuple(_snap_only(v) for v in _VARIANTS if v.constexprs["SNAP"]),
        _snap_launch,
    ),
)
