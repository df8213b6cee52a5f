"""Spec: gated delta net (GDN) gating, chunked prefill and recurrent decode (vLLM 0.32 names).

The recurrence, per value head ``hv`` with its query/key head ``h = hv // (HV // H)`` (GVA by
block) and the state ``S`` of shape ``[V, K]`` (the mamba_backends layout ``[HV, V, K]``,
which is also vLLM 0.32's layout, so no conversion happens at the boundary)::

    S   <- exp(g_t) * S                      # gated decay, g_t <= 0 in practice
    d_t  = beta_t * (v_t - S @ k_t)          # delta rule: correct what S predicts for k_t
    S   <- S + outer(d_t, k_t)
    o_t  = S @ (scale * q_t)

With ``use_qk_l2norm_in_kernel`` q and k are first divided by ``sqrt(sum(x * x) + 1e-6)``
(the eps of vLLM/fla and HF). ``scale`` defaults to ``K ** -0.5``.

Everything here runs in float64 with plain loops over sequences and tokens. It is the oracle,
not a kernel. Arguments are checked before any state is written; the checks are public
(``check_*_args``) so that every backend applies the same rules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_offsets,
    check_slot_indices,
    check_tensor,
    check_writable_state,
)

#: eps inside the square root of the in-kernel q/k l2 norm (vLLM/fla and HF use 1e-6).
L2NORM_EPS = 1e-6

_F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Argument checks (shared with the CPU kernels)
# --------------------------------------------------------------------------------------------


def _fail(op: str, name: str, msg: str) -> ValueError:
    return ValueError(f"{op}: argument '{name}' {msg}")


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
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"{op}: arguments 'q', 'k', 'v' must share one dtype, got "
            f"{q.dtype}, {k.dtype}, {v.dtype}"
        )
    if H < 1 or HV < 1 or HV % H:
        raise _fail(op, "v", f"has HV={HV} value heads, which must be a multiple of H={H}")
    if K < 1 or V < 1:
        raise _fail(op, "q", f"needs K >= 1 and V >= 1, got K={K}, V={V}")
    check_tensor(op, "g", g, shape=(B, T, HV), dtypes=FLOAT_DTYPES, device=dev)
    if beta is not None:
        check_tensor(op, "beta", beta, ndim=(3, 4), dtypes=FLOAT_DTYPES, device=dev)
        if tuple(beta.shape) not in ((B, T, HV), (B, T, HV, V)):
            raise _fail(
                op,
                "beta",
                f"must have shape {(B, T, HV)} or {(B, T, HV, V)}, got {tuple(beta.shape)}",
            )
    return B, T, H, HV, K, V


def _check_scale(op: str, scale: float | None) -> None:
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise _fail(op, "scale", f"must be a positive number or None, got {scale!r}")


def _num_sequences(op: str, B: int, T: int, cu_seqlens: Tensor | None, dev: torch.device) -> int:
    if cu_seqlens is None:
        return B
    if B != 1:
        raise _fail(op, "q", f"must have batch size 1 when cu_seqlens is given, got B={B}")
    check_tensor(op, "cu_seqlens", cu_seqlens, ndim=1, dtypes=INDEX_DTYPES, device=dev)
    check_offsets(op, "cu_seqlens", cu_seqlens, T, check_values=True, start_at_zero=True)
    if int(cu_seqlens[-1]) != T:
        raise _fail(op, "cu_seqlens", f"must end at T={T}, got {int(cu_seqlens[-1])}")
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
        raise _fail(op, "beta", f"(the softplus beta) must be a positive number, got {beta!r}")
    if not isinstance(threshold, (int, float)):
        raise _fail(op, "threshold", f"must be a number, got {threshold!r}")
    return T, HV


def check_chunk_gated_delta_rule_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    core_attn_out: Tensor | None,
) -> tuple[int, int, int, int, int, int, int]:
    """Check the chunked prefill's arguments; returns ``(B, T, H, HV, K, V, N)``."""
    op = "chunk_gated_delta_rule"
    B, T, H, HV, K, V = _check_qkv_g_beta(op, q, k, v, g, beta)
    if beta.dim() != 3:
        raise _fail(op, "beta", f"must have shape [B, T, HV], got {tuple(beta.shape)}")
    _check_scale(op, scale)
    N = _num_sequences(op, B, T, cu_seqlens, q.device)
    if initial_state is not None:
        check_tensor(
            op,
            "initial_state",
            initial_state,
            shape=(N, HV, V, K),
            dtypes=FLOAT_DTYPES,
            device=q.device,
        )
    if core_attn_out is not None:
        check_tensor(
            op,
            "core_attn_out",
            core_attn_out,
            shape=(B, T, HV, V),
            dtypes=FLOAT_DTYPES,
            device=q.device,
        )
        check_writable_state(op, "core_attn_out", core_attn_out)
    return B, T, H, HV, K, V, N


def check_fused_recurrent_gated_delta_rule_args(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None,
    scale: float | None,
    initial_state: Tensor | None,
    inplace_final_state: bool,
    cu_seqlens: Tensor | None,
    ssm_state_indices: Tensor | None,
    num_accepted_tokens: Tensor | None,
) -> tuple[int, int, int, int, int, int, int]:
    """Check the recurrent op's arguments; returns ``(B, T, H, HV, K, V, N)``."""
    op = "fused_recurrent_gated_delta_rule"
    B, T, H, HV, K, V = _check_qkv_g_beta(op, q, k, v, g, beta)
    _check_scale(op, scale)
    dev = q.device
    N = _num_sequences(op, B, T, cu_seqlens, dev)
    if initial_state is None:
        if inplace_final_state:
            raise _fail(op, "initial_state", "is required when inplace_final_state=True")
        if ssm_state_indices is not None:
            raise _fail(op, "initial_state", "is required when ssm_state_indices is given")
    else:
        check_tensor(op, "initial_state", initial_state, ndim=4, dtypes=FLOAT_DTYPES, device=dev)
        if tuple(initial_state.shape[1:]) != (HV, V, K):
            raise _fail(
                op,
                "initial_state",
                f"must have shape [*, {HV}, {V}, {K}] "
                f"([slots, HV, V, K]), got {tuple(initial_state.shape)}",
            )
        if ssm_state_indices is None and initial_state.shape[0] != N:
            raise _fail(
                op,
                "initial_state",
                f"must hold one state per sequence (N={N}) "
                f"when ssm_state_indices is None, got {initial_state.shape[0]}",
            )
        if inplace_final_state:
            check_writable_state(op, "initial_state", initial_state)
    if ssm_state_indices is not None:
        assert initial_state is not None
        check_tensor(
            op, "ssm_state_indices", ssm_state_indices, ndim=(1, 2), dtypes=INDEX_DTYPES, device=dev
        )
        if ssm_state_indices.shape[0] != N:
            raise _fail(
                op,
                "ssm_state_indices",
                f"must have N={N} rows, got {tuple(ssm_state_indices.shape)}",
            )
        num_slots = initial_state.shape[0]
        check_slot_indices(
            op,
            "ssm_state_indices",
            ssm_state_indices,
            num_slots,
            pad_slot_id=-1,
            null_block_id=0,
            check_values=True,
            unique=inplace_final_state and ssm_state_indices.dim() == 1,
        )
        if ssm_state_indices.dim() == 2:
            lens = _seq_lens(B, T, cu_seqlens)
            if inplace_final_state and max(lens, default=0) > ssm_state_indices.shape[1]:
                raise _fail(
                    op,
                    "ssm_state_indices",
                    f"has {ssm_state_indices.shape[1]} columns "
                    f"but a sequence has {max(lens)} tokens (one slot per token)",
                )
    if num_accepted_tokens is not None:
        if ssm_state_indices is None or ssm_state_indices.dim() != 2:
            raise _fail(op, "num_accepted_tokens", "needs 2-D ssm_state_indices [N, slots]")
        check_tensor(
            op,
            "num_accepted_tokens",
            num_accepted_tokens,
            shape=(N,),
            dtypes=INDEX_DTYPES,
            device=dev,
        )
        cols = ssm_state_indices.shape[1]
        if N and bool(((num_accepted_tokens < 1) | (num_accepted_tokens > cols)).any()):
            raise _fail(
                op,
                "num_accepted_tokens",
                f"values must lie in [1, {cols}], got {num_accepted_tokens.tolist()}",
            )
    return B, T, H, HV, K, V, N


def _seq_lens(B: int, T: int, cu_seqlens: Tensor | None) -> list[int]:
    if cu_seqlens is None:
        return [T] * B
    c = cu_seqlens.tolist()
    return [c[i + 1] - c[i] for i in range(len(c) - 1)]


def _bounds(B: int, T: int, cu_seqlens: Tensor | None) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of every sequence in the ``[B, T]`` token grid."""
    if cu_seqlens is None:
        return [(n, 0, T) for n in range(B)]
    c = cu_seqlens.tolist()
    return [(0, c[i], c[i + 1]) for i in range(len(c) - 1)]


# --------------------------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------------------------


def fused_gdn_gating(
    A_log: Tensor,
    a: Tensor,
    b: Tensor,
    dt_bias: Tensor,
    beta: float = 1.0,
    threshold: float = 20.0,
) -> tuple[Tensor, Tensor]:
    """GDN gates: ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``.

    Shapes: ``A_log, dt_bias: [HV]``; ``a, b: [T, HV]`` (one row per token).
    ``softplus(x) = log(1 + exp(beta * x)) / beta``, and ``x`` itself where
    ``beta * x > threshold`` (torch's and vLLM's rule).

    Returns ``(g, beta_output)``, both ``[1, T, HV]``: ``g`` in float32, ``beta_output`` in
    ``b.dtype`` (as vLLM's ``fused_gdn_gating`` and ``fused_gdn_gating_cpu``).
    """
    check_fused_gdn_gating_args(A_log, a, b, dt_bias, beta, threshold)
    x = a.to("cpu", _F64) + dt_bias.to("cpu", _F64)  # [T, HV]
    softplus = torch.where(beta * x > threshold, x, torch.log1p(torch.exp(beta * x)) / beta)
    g = -torch.exp(A_log.to("cpu", _F64)) * softplus
    s = 1.0 / (1.0 + torch.exp(-b.to("cpu", _F64)))
    g, s = g[None], s[None]
    return g.to(a.device, torch.float32), s.to(b.device, b.dtype)


def _l2norm(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def _gdn_step(
    S: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, group: int
) -> tuple[Tensor, Tensor]:
    """One token for every value head. ``S: [HV, V, K]``, ``q, k: [H, K]`` (already normalised
    and, for q, scaled), ``v: [HV, V]``, ``g: [HV]``, ``beta: [HV]`` or ``[HV, V]``.

    Returns ``(S_new, o)`` with ``o: [HV, V]``.
    """
    k_v = k.repeat_interleave(group, dim=0)  # [HV, K]: head hv reads q/k head hv // group
    q_v = q.repeat_interleave(group, dim=0)
    S = S * torch.exp(g)[:, None, None]
    b = beta if beta.dim() == 2 else beta[:, None]
    delta = b * (v - torch.einsum("hvk,hk->hv", S, k_v))
    S = S + delta[:, :, None] * k_v[:, None, :]
    o = torch.einsum("hvk,hk->hv", S, q_v)
    return S, o


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_indices: Tensor | None = None,
    chunk_offsets: Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    core_attn_out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Prefill: the gated delta rule over whole sequences (vLLM's ``chunk_gated_delta_rule``).

    Shapes: ``q, k: [B, T, H, K]``; ``v: [B, T, HV, V]`` (GVA when ``HV > H``: value head
    ``hv`` reads q/k head ``hv // (HV // H)``); ``g`` (log decay), ``beta: [B, T, HV]``;
    ``initial_state: [N, HV, V, K]`` (any float dtype, not modified); ``cu_seqlens: [N + 1]``
    with ``B == 1`` for packed sequences, else ``N == B`` rows of length ``T``.

    ``chunk_indices``/``chunk_offsets`` are vLLM's precomputed chunk metadata; they are a
    function of ``cu_seqlens`` and cannot change the result, so they are accepted and unused.

    Returns ``(o, final_state)``: ``o: [B, T, HV, V]`` in ``q.dtype`` (written into and
    returned as ``core_attn_out`` when given), ``final_state: [N, HV, V, K]`` float32 when
    ``output_final_state`` else ``None``.
    """
    B, T, H, HV, K, V, N = check_chunk_gated_delta_rule_args(
        q, k, v, g, beta, scale, initial_state, cu_seqlens, core_attn_out
    )
    sc = K**-0.5 if scale is None else float(scale)
    group = HV // H
    o = torch.zeros(B, T, HV, V, dtype=_F64)
    final = torch.zeros(N, HV, V, K, dtype=_F64)
    for n, (row, start, end) in enumerate(_bounds(B, T, cu_seqlens)):
        S = torch.zeros(HV, V, K, dtype=_F64)
        if initial_state is not None:
            S = initial_state[n].to("cpu", _F64).clone()
        for t in range(start, end):
            qt = q[row, t].to("cpu", _F64)
            kt = k[row, t].to("cpu", _F64)
            if use_qk_l2norm_in_kernel:
                qt, kt = _l2norm(qt), _l2norm(kt)
            S, o[row, t] = _gdn_step(
                S,
                qt * sc,
                kt,
                v[row, t].to("cpu", _F64),
                g[row, t].to("cpu", _F64),
                beta[row, t].to("cpu", _F64),
                group,
            )
        final[n] = S
    out = o.to(q.device, q.dtype)
    if core_attn_out is not None:
        core_attn_out.copy_(o)
        out = core_attn_out
    return out, (final.to(q.device, torch.float32) if output_final_state else None)


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
    """Decode / multi-token recurrent GDN (vLLM's ``fused_recurrent_gated_delta_rule``).

    Shapes: ``q, k: [B, T, H, K]``; ``v: [B, T, HV, V]``; ``g: [B, T, HV]``; ``beta``
    ``[B, T, HV]`` or head-wise ``[B, T, HV, V]`` (``None``: ones); ``cu_seqlens: [N + 1]``
    with ``B == 1``, else ``N == B`` rows of ``T`` tokens.

    State source ``initial_state: [slots, HV, V, K]`` (any strides, any float dtype):

    - ``ssm_state_indices is None``: slot ``n`` is sequence ``n`` (``slots == N``);
    - ``ssm_state_indices: [N]``: sequence ``n`` reads and writes slot ``indices[n]``;
    - ``ssm_state_indices: [N, S]`` (speculative decoding): sequence ``n`` starts from slot
      ``indices[n, num_accepted_tokens[n] - 1]`` (column 0 without ``num_accepted_tokens``)
      and the state after its token ``t`` is written to slot ``indices[n, t]``.

    A sequence whose starting slot is ``PAD_SLOT_ID`` (-1) or ``NULL_BLOCK_ID`` (0) is skipped:
    its outputs are zeros and no state is written. A per-token slot <= 0 is not written.

    ``inplace_final_state=True`` writes the final state(s) into ``initial_state`` (cast to its
    dtype) and returns it. ``False`` returns a new ``[B * T, HV, V, K]`` tensor (dtype of
    ``initial_state``, float32 without one) holding the state after every token (zeros for
    skipped sequences) and leaves ``initial_state`` untouched.

    Returns ``(o, final_state)`` with ``o: [B, T, HV, V]`` in ``q.dtype``.

    Divergences from vLLM's Triton kernel, which are fixes of undefined behaviour: skipped
    sequences get zero outputs (vLLM leaves them uninitialised); without indices, or with 1-D
    indices and several tokens per sequence, state ``n`` belongs to sequence ``n`` (vLLM's
    kernel offsets by token, which only agrees when every sequence has one token).
    """
    B, T, H, HV, K, V, N = check_fused_recurrent_gated_delta_rule_args(
        q,
        k,
        v,
        g,
        beta,
        scale,
        initial_state,
        inplace_final_state,
        cu_seqlens,
        ssm_state_indices,
        num_accepted_tokens,
    )
    sc = K**-0.5 if scale is None else float(scale)
    group = HV // H
    o = torch.zeros(B, T, HV, V, dtype=_F64)
    per_token: Tensor | None = None
    if not inplace_final_state:
        per_token = torch.zeros(B * T, HV, V, K, dtype=_F64)
    writes: list[tuple[int, Tensor]] = []  # (slot, state), applied after the loop
    for n, (row, start, end) in enumerate(_bounds(B, T, cu_seqlens)):
        # where the sequence starts from
        src: int | None = n
        if ssm_state_indices is not None:
            col = 0
            if num_accepted_tokens is not None:
                col = int(num_accepted_tokens[n]) - 1
            src = int(
                ssm_state_indices[n] if ssm_state_indices.dim() == 1 else ssm_state_indices[n, col]
            )
            if src <= 0:
                continue  # pad or null slot: skipped, never written
        if start == end:
            continue
        S = torch.zeros(HV, V, K, dtype=_F64)
        if initial_state is not None:
            S = initial_state[src].to("cpu", _F64).clone()
        for i, t in enumerate(range(start, end)):
            qt = q[row, t].to("cpu", _F64)
            kt = k[row, t].to("cpu", _F64)
            if use_qk_l2norm_in_kernel:
                qt, kt = _l2norm(qt), _l2norm(kt)
            bt = torch.ones(HV, dtype=_F64) if beta is None else beta[row, t].to("cpu", _F64)
            S, o[row, t] = _gdn_step(
                S, qt * sc, kt, v[row, t].to("cpu", _F64), g[row, t].to("cpu", _F64), bt, group
            )
            if per_token is not None:
                per_token[row * T + t] = S
            elif ssm_state_indices is not None and ssm_state_indices.dim() == 2:
                dst = int(ssm_state_indices[n, i])
                if dst > 0:
                    writes.append((dst, S))
        if per_token is None and (ssm_state_indices is None or ssm_state_indices.dim() == 1):
            assert src is not None
            writes.append((src, S))
    out = o.to(q.device, q.dtype)
    if per_token is not None:
        dtype = torch.float32 if initial_state is None else initial_state.dtype
        return out, per_token.to(q.device, dtype)
    assert initial_state is not None
    for slot, S in writes:
        initial_state[slot].copy_(S)
    return out, initial_state
