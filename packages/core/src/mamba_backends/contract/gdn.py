"""Contract of the gated delta net ops (gating, chunked prefill, recurrent decode)."""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.generic import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_no_alias,
    check_offsets,
    check_slot_indices,
    check_tensor,
    check_writable,
    fail,
    values_enabled,
)
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID


def _check_qkv_g_beta(
    op: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor | None
) -> tuple[int, int, int, int, int, int]:
    """Shapes of ``q, k: [B, T, H, K]``, ``v: [B, T, HV, V]``, ``g, beta: [B, T, HV]``."""
    check_tensor(op, "q", q, ndim=4, dtypes=FLOAT_DTYPES)
    B, T, H, K = q.shape
    dev = q.device
    check_tensor(op, "k", k, shape=(B, T, H, K), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(op, "v", v, shape=(B, T, None, None), dtypes=FLOAT_DTYPES, device=dev)
    HV, V = v.shape[2], v.shape[3]
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise fail(op, name, f"must have q's dtype {q.dtype}, got {t.dtype}")
    if H < 1 or HV < 1 or HV % H:
        raise fail(op, "v", f"has HV={HV} value heads, which must be a multiple of H={H}")
    if K < 1 or V < 1:
        raise fail(op, "q", f"needs K >= 1 and V >= 1, got K={K}, V={V}")
    check_tensor(op, "g", g, shape=(B, T, HV), dtypes=FLOAT_DTYPES, device=dev)
    if beta is not None:
        check_tensor(op, "beta", beta, ndim=(3, 4), dtypes=FLOAT_DTYPES, device=dev)
        if tuple(beta.shape) not in ((B, T, HV), (B, T, HV, V)):
            raise fail(
                op,
                "beta",
                f"must have shape {(B, T, HV)} or {(B, T, HV, V)}, got {tuple(beta.shape)}",
            )
    return B, T, H, HV, K, V


def _check_scale(op: str, scale: float | None) -> None:
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise fail(op, "scale", f"must be a positive number or None, got {scale!r}")


def _num_sequences(
    op: str, B: int, T: int, cu_seqlens: Tensor | None, dev: torch.device, values: bool
) -> int:
    """``cu_seqlens`` (N+1,) from 0, non-decreasing, ending at or before T (padded tail)."""
    if cu_seqlens is None:
        return B
    if B != 1:
        raise fail(op, "q", f"must have batch size 1 when cu_seqlens is given, got B={B}")
    check_tensor(op, "cu_seqlens", cu_seqlens, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    check_offsets(op, "cu_seqlens", cu_seqlens, T, check_values=values)
    return cu_seqlens.numel() - 1


def check_fused_gdn_gating_args(
    A_log: Tensor, a: Tensor, b: Tensor, dt_bias: Tensor, beta: float, threshold: float
) -> tuple[int, int]:
    """``A_log, dt_bias: [HV]``, ``a, b: [T, HV]``; returns ``(T, HV)``."""
    op = "fused_gdn_gating"
    check_tensor(op, "a", a, ndim=2, dtypes=FLOAT_DTYPES)
    T, HV = a.shape
    check_tensor(op, "b", b, shape=(T, HV), dtypes=FLOAT_DTYPES, device=a.device)
    check_tensor(op, "A_log", A_log, shape=(HV,), dtypes=FLOAT_DTYPES, device=a.device)
    check_tensor(op, "dt_bias", dt_bias, shape=(HV,), dtypes=FLOAT_DTYPES, device=a.device)
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise fail(op, "beta", f"(the softplus beta) must be a positive number, got {beta!r}")
    if not isinstance(threshold, (int, float)):
        raise fail(op, "threshold", f"must be a number, got {threshold!r}")
    return T, HV


def check_chunk_gated_delta_rule_args(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None,
    initial_state: Tensor | None, cu_seqlens: Tensor | None, core_attn_out: Tensor | None, *,
    check_values: bool | None = None,
) -> tuple[int, int, int, int, int, int, int]:  # fmt: skip
    """Check the chunked prefill's arguments; returns ``(B, T, H, HV, K, V, N)``.

    ``core_attn_out`` ``[B, T, HV, V]`` is written: writable, sharing memory with no input.
    """
    op = "chunk_gated_delta_rule"
    B, T, H, HV, K, V = _check_qkv_g_beta(op, q, k, v, g, beta)
    if beta.dim() != 3:
        raise fail(op, "beta", f"must have shape [B, T, HV], got {tuple(beta.shape)}")
    _check_scale(op, scale)
    dev = q.device
    N = _num_sequences(op, B, T, cu_seqlens, dev, values_enabled(check_values, cu_seqlens))
    if initial_state is not None:
        check_tensor(
            op, "initial_state", initial_state, shape=(N, HV, V, K), dtypes=FLOAT_DTYPES,
            device=dev,
        )  # fmt: skip
    if core_attn_out is not None:
        check_tensor(
            op, "core_attn_out", core_attn_out, shape=(B, T, HV, V), dtypes=FLOAT_DTYPES,
            device=dev,
        )  # fmt: skip
        check_writable(op, "core_attn_out", core_attn_out)
        reads = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state}
        check_no_alias(op, "core_attn_out", core_attn_out, reads)
    return B, T, H, HV, K, V, N


def check_fused_recurrent_gated_delta_rule_args(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor | None, scale: float | None,
    initial_state: Tensor | None, inplace_final_state: bool, cu_seqlens: Tensor | None,
    ssm_state_indices: Tensor | None, num_accepted_tokens: Tensor | None, *,
    check_values: bool | None = None,
) -> tuple[int, int, int, int, int, int, int]:  # fmt: skip
    """Check the recurrent op's arguments; returns ``(B, T, H, HV, K, V, N)``."""
    op = "fused_recurrent_gated_delta_rule"
    B, T, H, HV, K, V = _check_qkv_g_beta(op, q, k, v, g, beta)
    _check_scale(op, scale)
    dev = q.device
    values = values_enabled(check_values, cu_seqlens, ssm_state_indices, num_accepted_tokens)
    N = _num_sequences(op, B, T, cu_seqlens, dev, values)
    if initial_state is None:
        if inplace_final_state:
            raise fail(op, "initial_state", "is required when inplace_final_state=True")
        if ssm_state_indices is not None:
            raise fail(op, "initial_state", "is required when ssm_state_indices is given")
    else:
        check_tensor(op, "initial_state", initial_state, ndim=4, dtypes=FLOAT_DTYPES, device=dev)
        if tuple(initial_state.shape[1:]) != (HV, V, K):
            raise fail(
                op,
                "initial_state",
                f"must have shape [*, {HV}, {V}, {K}] "
                f"([slots, HV, V, K]), got {tuple(initial_state.shape)}",
            )
        if ssm_state_indices is None and initial_state.shape[0] != N:
            raise fail(
                op,
                "initial_state",
                f"must hold one state per sequence (N={N}) "
                f"when ssm_state_indices is None, got {initial_state.shape[0]}",
            )
        if inplace_final_state:
            check_writable(op, "initial_state", initial_state)
            reads = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
            check_no_alias(op, "initial_state", initial_state, reads)
    if ssm_state_indices is not None:
        assert initial_state is not None
        _check_state_indices(
            op, ssm_state_indices, initial_state.shape[0], N, B, T, cu_seqlens,
            inplace_final_state, dev, values,
        )  # fmt: skip
    if num_accepted_tokens is not None:
        if ssm_state_indices is None or ssm_state_indices.dim() != 2:
            raise fail(op, "num_accepted_tokens", "needs 2-D ssm_state_indices [N, slots]")
        check_tensor(
            op, "num_accepted_tokens", num_accepted_tokens, shape=(N,), dtypes=INDEX_DTYPES,
            device=dev,
        )  # fmt: skip
        cols = ssm_state_indices.shape[1]
        if values and N:
            acc = num_accepted_tokens.detach().to("cpu", torch.int64)
            if bool(((acc < 1) | (acc > cols)).any()):
                raise fail(
                    op, "num_accepted_tokens", f"values must lie in [1, {cols}], got {acc.tolist()}"
                )
    return B, T, H, HV, K, V, N


def _check_state_indices(
    op: str, idx: Tensor, num_slots: int, N: int, B: int, T: int, cu_seqlens: Tensor | None,
    inplace_final_state: bool, dev: torch.device, values: bool,
) -> None:  # fmt: skip
    """``ssm_state_indices`` ``[N]`` or ``[N, S]`` (one slot per token) into the pool."""
    name = "ssm_state_indices"
    check_tensor(op, name, idx, ndim=(1, 2), dtypes=INDEX_DTYPES, device=dev)
    if idx.shape[0] != N:
        raise fail(op, name, f"must have N={N} rows, got {tuple(idx.shape)}")
    check_slot_indices(
        op, name, idx, num_slots, pad_slot_id=PAD_SLOT_ID, null_block_id=NULL_BLOCK_ID,
        check_values=values, unique=inplace_final_state and idx.dim() == 1,
    )  # fmt: skip
    if idx.dim() != 2 or not inplace_final_state or not values:
        return
    if cu_seqlens is None:
        longest = T if B else 0
    else:
        c = cu_seqlens.detach().to("cpu", torch.int64)
        longest = int((c[1:] - c[:-1]).max()) if c.numel() > 1 else 0
    if longest > idx.shape[1]:
        raise fail(
            op,
            name,
            f"has {idx.shape[1]} columns but a sequence has {longest} tokens (one slot per token)",
        )
