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
not a kernel. Arguments are checked by :mod:`mamba_backends.contract.gdn` before any state is
written, as every backend does.

``cu_seqlens`` may end before ``T`` (a padded tail, as vLLM's CUDA-graph decode batches are):
the output rows past its end are zero (and so are their rows of the per-token states).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba_backends.contract.gdn import (
    check_chunk_gated_delta_rule_args,
    check_fused_gdn_gating_args,
    check_fused_recurrent_gated_delta_rule_args,
)

#: eps inside the square root of the in-kernel q/k l2 norm (vLLM/fla and HF use 1e-6).
L2NORM_EPS = 1e-6

_F64 = torch.float64


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
    ``beta * x > threshold`` (torch's and vLLM's rule). The logarithm is the exact value for
    every finite input, whatever the threshold: it is evaluated as
    ``max(y, 0) + log1p(exp(-|y|))`` with ``y = beta * x``, which never overflows
    (``log1p(exp(y))`` itself overflows once ``y`` passes the exponent range, 88 in fp32, 11 in
    fp16, 709 here). Everything is computed in float64 from the inputs' values, whatever their
    dtype; only ``g`` is rounded, to float32, at the end. NaN in any input gives NaN.

    Returns ``(g, beta_output)``, both ``[1, T, HV]``: ``g`` in float32, ``beta_output`` in
    ``b.dtype`` (as vLLM's ``fused_gdn_gating`` and ``fused_gdn_gating_cpu``).
    """
    check_fused_gdn_gating_args(A_log, a, b, dt_bias, beta, threshold)
    x = a.to("cpu", _F64) + dt_bias.to("cpu", _F64)  # [T, HV]
    y = beta * x
    log1p_exp = y.clamp(min=0.0) + torch.log1p(torch.exp(-y.abs()))
    softplus = torch.where(y > threshold, x, log1p_exp / beta)
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
        q, k, v, g, beta, scale, initial_state, cu_seqlens, core_attn_out, check_values=True
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
        check_values=True,
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
