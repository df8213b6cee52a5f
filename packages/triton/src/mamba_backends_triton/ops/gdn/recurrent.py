"""Recurrent gated delta rule (decode and speculative multi-token steps):
``fused_recurrent_gated_delta_rule``.

Semantics and signature are the spec's (:func:`mamba_backends.reference.
fused_recurrent_gated_delta_rule`, vLLM 0.32's): varlen ``cu_seqlens`` (a padded tail past
``cu_seqlens[-1]`` gets zero outputs), GVA (value head ``hv`` reads q/k head
``hv // (HV // H)``), in-kernel q/k l2 norm, ``beta`` per head or per value row,
``ssm_state_indices`` 1-D (sequence ``n`` reads and writes ``idx[n]``) or 2-D (it reads column
``num_accepted_tokens[n] - 1``, or 0, and writes the state after token ``t`` to ``idx[n, t]``),
pad (-1) and null (0) slots skipped and never written (their outputs are zero), states
``[slots, HV, V, K]`` with any strides in any float dtype (computed in float32), and
``inplace_final_state=False`` (a new ``[B * T, HV, V, K]`` tensor of per-token states; the pool
is only read).

**All state reads happen before any state write.** Without indices or with 1-D indices every
sequence reads and writes only its own slot (the contract makes real slots unique), and each
program reads its tile before writing it: one launch, one read and one write of each state
byte. With 2-D indices written in place a sequence may write another's source slot, so a
snapshot launch (:func:`~.recurrent_kernels._gdn_snapshot_kernel`) first copies every such
source aside; when nothing aliases (vLLM's speculative decoding) that costs ``N`` small
programs comparing ``N x S`` slot ids and an untouched ``N x HV x V x K`` scratch allocation
from the caching allocator. Two sequences that write the same slot leave either's state there.

Slot, head, batch-row and first-token offsets are int64; the offsets of the elements within
them and of the tokens from a sequence's first are int32 unless a product could pass 2^31
(:func:`_needs_int64`, from the shapes and strides; int32 halves their registers, which matters
on AMD at odd strides). Every load is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
from torch import Tensor

from mamba_backends_triton import _contract
from mamba_backends_triton._aot import KernelCheck, Variant
from mamba_backends_triton._launch import launch_config
from mamba_backends_triton._options import launch_options
from mamba_backends_triton.ops.conv1d._common import check_kernel_dtypes
from mamba_backends_triton.ops.gdn.recurrent_kernels import (
    _gdn_recurrent_kernel,
    _gdn_snapshot_kernel,
)

OP = "fused_recurrent_gated_delta_rule"


def _launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The update kernel: ``TILE`` state elements per program, ``BLOCK_V = TILE / BLOCK_K``
    value rows (so one config keeps its register budget at every K)."""
    blocks = {"BLOCK_V": max(int(cfg["TILE"]) // int(feats["BLOCK_K"]), 1)}
    return blocks, launch_options(cfg)


def _snap_launch(
    cfg: Mapping[str, Any], feats: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The snapshot kernel: ``SNAP_BLOCK_R`` sequences compared per step, ``SNAP_BLOCK``
    elements per copy step."""
    blocks = {"BLOCK_R": cfg["SNAP_BLOCK_R"], "BLOCK_E": cfg["SNAP_BLOCK"]}
    return blocks, launch_options(cfg, "snap_num_warps", None)


def _needs_int64(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor | None, state: Tensor | None
) -> bool:
    """Whether an offset the kernel keeps in int32 can pass 2^31: within one (token, head) row
    of q/k/v/beta, within one (slot, head) of the state or one ``V x K`` state of the
    snapshot/per-token outputs, or ``i * stride`` from a sequence's first token to its last
    (bounded by the ``T`` tokens of a row)."""
    T, HV, V, K = q.shape[1], v.shape[2], v.shape[3], q.shape[3]
    ext = [(K - 1) * abs(q.stride(3)), (K - 1) * abs(k.stride(3)), (V - 1) * abs(v.stride(3))]
    ext += [V * K, T * HV * V]
    ext += [T * abs(t.stride(1)) for t in (q, k, v, g)]
    if beta is not None:
        ext.append(T * abs(beta.stride(1)))
        if beta.dim() == 4:
            ext.append((V - 1) * abs(beta.stride(3)))
    if state is not None:
        ext.append((V - 1) * abs(state.stride(2)) + (K - 1) * abs(state.stride(3)))
    return max(ext) >= 2**31


def fused_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    inplace_final_state: bool = True,
    cu_seqlens: Tensor | None = None,
    ssm_state_indices: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[Tensor, Tensor]:
    """Recurrent GDN (vLLM 0.32's signature; see the module docstring).

    ``q, k: [B, T, H, K]``; ``v: [B, T, HV, V]``; ``g: [B, T, HV]``; ``beta`` ``[B, T, HV]``,
    ``[B, T, HV, V]`` or ``None`` (ones); ``initial_state: [slots, HV, V, K]``;
    ``cu_seqlens: [N + 1]`` (``B == 1``); ``ssm_state_indices: [N]`` or ``[N, S]``;
    ``num_accepted_tokens: [N]``. Returns ``(o [B, T, HV, V] in q.dtype, final_state)``:
    ``initial_state`` itself (written in place) or the new per-token states.
    """
    B, T, H, HV, K, V, N = _contract.check_fused_recurrent_gated_delta_rule_args(
        q, k, v, g, beta, scale, initial_state, inplace_final_state, cu_seqlens,
        ssm_state_indices, num_accepted_tokens,
    )  # fmt: skip
    check_kernel_dtypes(OP, q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state)
    o = torch.empty((B, T, HV, V), dtype=q.dtype, device=q.device)
    per_token = not inplace_final_state
    if per_token:
        sdt = torch.float32 if initial_state is None else initial_state.dtype
        final = torch.zeros((B * T, HV, V, K), dtype=sdt, device=q.device)
    else:
        assert initial_state is not None
        final = initial_state
    if B * T == 0:
        return o, final
    idx = ssm_state_indices
    idx_2d = idx is not None and idx.dim() == 2
    snap = idx_2d and not per_token
    varlen = cu_seqlens is not None
    beta_kind = 0 if beta is None else (1 if beta.dim() == 3 else 2)
    block_k = triton.next_power_of_2(K)
    feats = {
        "HAS_INIT": initial_state is not None, "HAS_IDX": idx is not None, "IDX_2D": idx_2d,
        "SPEC": num_accepted_tokens is not None, "VARLEN": varlen, "PER_TOKEN": per_token,
        "SNAP": snap, "L2NORM": bool(use_qk_l2norm_in_kernel), "BETA": beta_kind,
        "EVEN_K": K == block_k, "OFF64": _needs_int64(q, k, v, g, beta, initial_state),
        "BLOCK_K": block_k,
    }  # fmt: skip
    cfg = launch_config(OP, q.device, K=K, V=V)
    blocks, options = _launch(cfg, feats)
    blocks["BLOCK_V"] = min(blocks["BLOCK_V"], triton.next_power_of_2(V))

    dummy = cu_seqlens if cu_seqlens is not None else (idx if idx is not None else o)
    state = initial_state if initial_state is not None else o
    num_slots = initial_state.shape[0] if initial_state is not None else N
    s_strides = tuple(initial_state.stride()) if initial_state is not None else (0, 0, 0, 0)
    idx_strides = (0, 0)
    if idx is not None:
        idx_strides = (idx.stride(0), idx.stride(1) if idx_2d else 0)
    idx_arg = idx if idx is not None else dummy
    acc_arg = num_accepted_tokens if num_accepted_tokens is not None else dummy
    cu_arg = cu_seqlens if cu_seqlens is not None else dummy
    if snap:
        assert idx is not None and initial_state is not None
        snapshot = torch.empty((N, HV * V * K), dtype=state.dtype, device=q.device)
        flags = torch.empty((max(N, 1),), dtype=torch.int32, device=q.device)
        if N:
            sblocks, soptions = _snap_launch(cfg, feats)
            _gdn_snapshot_kernel[(N,)](
                state, idx_arg, acc_arg, cu_arg, snapshot, flags,
                N, T, HV, K, V, num_slots, idx.shape[1], *s_strides, *idx_strides,
                SPEC=feats["SPEC"], VARLEN=varlen, **sblocks, **soptions,
            )  # fmt: skip
        snap_arg, flag_arg = snapshot, flags
    else:
        snap_arg, flag_arg = state, dummy
    beta_arg = beta if beta is not None else g
    beta_strides: tuple[int, ...] = (0, 0, 0, 0)
    if beta is not None:
        beta_strides = (*beta.stride()[:3], beta.stride(3) if beta.dim() == 4 else 0)
    sc = K**-0.5 if scale is None else float(scale)
    grid = (N + int(varlen), HV, triton.cdiv(V, blocks["BLOCK_V"]))
    _gdn_recurrent_kernel[grid](
        q, k, v, g, beta_arg, o, state, final, idx_arg, acc_arg, cu_arg, snap_arg, flag_arg,
        N, T, HV, K, V, num_slots, HV // H, sc,
        *q.stride(), *k.stride(), *v.stride(), *g.stride(), *beta_strides, *s_strides,
        *idx_strides, **feats, **blocks, **options,
    )  # fmt: skip
    return o, final


# Compile-check specialisations (:mod:`mamba_backends_triton.compile_check`): Qwen3-Next's
# decode (bf16 q/k/v and beta, fp32 g and states, H=16 -> HV=32, K=V=128, 1-D indices,
# varlen, in-kernel l2 norm), its speculative decode (2-D indices, num_accepted_tokens: the
# snapshot path; also with int64 element offsets), fp16 states with head-wise beta and
# per-token outputs, and K=40 (padded columns; V >= 64, so that every block the configs give
# is one a launch uses) with strides the JIT cannot prove divisible by 16, with 1-D and with
# 2-D indices.
_QWEN = {
    "q_ptr": "bf16", "k_ptr": "bf16", "v_ptr": "bf16", "g_ptr": "fp32", "beta_ptr": "bf16",
    "o_ptr": "bf16", "s_ptr": "fp32", "out_ptr": "fp32", "idx_ptr": "i32", "acc_ptr": "i32",
    "cu_ptr": "i32", "snap_ptr": "fp32", "flag_ptr": "i32",
}  # fmt: skip
_HALF = {
    **_QWEN,
    **{k: "fp16" for k in ("q_ptr", "k_ptr", "v_ptr", "beta_ptr", "o_ptr", "s_ptr", "out_ptr")},
    "snap_ptr": "fp16",
    "idx_ptr": "i64",
    "acc_ptr": "i64",
    "cu_ptr": "i64",
}
_UNIT = {"stride_q_k": 1, "stride_k_k": 1, "stride_v_v": 1, "stride_s_k": 1}
_DIVISIBLE = (
    "K", "V", "stride_q_b", "stride_q_t", "stride_q_h", "stride_k_b", "stride_k_t", "stride_k_h",
    "stride_v_b", "stride_v_t", "stride_v_h", "stride_g_b", "stride_g_t", "stride_beta_b",
    "stride_beta_t", "stride_s_slot", "stride_s_h", "stride_s_v",
)  # fmt: skip


def _variant(
    name: str, ptrs: dict[str, str], K: int, flags: str, beta: int, div: tuple = ()
) -> Variant:
    """``flags``: letters of the features on (h: initial state, i: indices, 2: 2-D indices,
    p: num_accepted_tokens, v: varlen, t: per-token states, n: snapshot, l: l2 norm,
    w: int64 element offsets)."""
    letters = (
        ("HAS_INIT", "h"), ("HAS_IDX", "i"), ("IDX_2D", "2"), ("SPEC", "p"), ("VARLEN", "v"),
        ("PER_TOKEN", "t"), ("SNAP", "n"), ("L2NORM", "l"), ("OFF64", "w"),
    )  # fmt: skip
    feats: dict[str, Any] = {f: c in flags for f, c in letters}
    block_k = triton.next_power_of_2(K)
    consts = {**feats, "BETA": beta, "EVEN_K": K == block_k, "BLOCK_K": block_k, **_UNIT}
    if beta == 2:
        consts["stride_beta_v"] = 1
    return Variant(name, ptrs, consts, tuple(d for d in div if d not in consts))


def _snap_only(v: Variant) -> Variant:
    """The snapshot kernel's share of a variant."""
    keep = ("s_ptr", "idx_ptr", "acc_ptr", "cu_ptr", "snap_ptr", "flag_ptr")
    consts = {k: v.constexprs[k] for k in ("SPEC", "VARLEN")}
    consts["stride_s_k"] = 1
    return Variant(v.name, {k: v.pointers[k] for k in keep}, consts)


_VARIANTS = (
    _variant("Qwen3-Next bf16, fp32 state, K128, idx, varlen, l2", _QWEN, 128, "hivl", 1,
             _DIVISIBLE),
    _variant("Qwen3-Next spec decode, 2-D idx, accepted", _QWEN, 128, "hi2pvnl", 1, _DIVISIBLE),
    _variant("Qwen3-Next spec decode, int64 offsets", _QWEN, 128, "hi2pvnlw", 1, _DIVISIBLE),
    _variant("fp16 state, head-wise beta, per-token, K64", _HALF, 64, "ht", 2, _DIVISIBLE),
    # odd sizes and strides (nothing divisible by 16: scalar accesses, padded K columns)
    _variant("fp16 K40 odd strides, 1-D idx", _HALF, 40, "hivl", 1),
    _variant("fp16 K40 odd strides, 2-D idx", _HALF, 40, "hi2pvnl", 1),
)  # fmt: skip

COMPILE_CHECKS = (
    KernelCheck(_gdn_recurrent_kernel, OP, _VARIANTS, _launch),
    KernelCheck(
        _gdn_snapshot_kernel,
        OP,
        tuple(
            _snap_only(v) for v in _VARIANTS if v.constexprs["SNAP"] and not v.constexprs["OFF64"]
        ),
        _snap_launch,
    ),
)
