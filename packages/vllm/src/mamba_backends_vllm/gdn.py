"""Gated delta net (Qwen3-Next, Qwen3.5) on mamba-backends ops: an OOT GDN layer.

Why a subclass and not rebinding: vLLM's CPU GDN path (``forward_cpu``) calls the opaque custom
op ``torch.ops.vllm.cpu_gdn_attention_core``, which asserts bf16 and calls fused CPU kernels
through ``vllm._custom_ops`` on a packed conv weight; its CUDA path calls fused kernels
(``fused_post_conv_prep``, ``fused_sigmoid_gating_delta_rule_update``) that have no op of ours.
So :class:`RoutedQwenGatedDeltaNetAttention` overrides only ``forward_cpu``: the projections,
the q/k/v/z/b/a unpacking (``prepare_gdn_attention_core_inputs``), the q/k/v split
(``rearrange_mixed_qkv``) and the gated norm + output projection (``_output_projection``) stay
vLLM's; the core in between is composed from the backend's five GDN ops and runs behind our own
custom op ``torch.ops.vllm.mamba_backends_gdn_core`` (opaque to ``torch.compile``, like vLLM's).

Caches (vLLM's layout): ``kv_cache[0]`` is the conv state ``(slots, dim, W-1)`` (or its
transpose when the layout is not dim-first), ``kv_cache[1]`` the recurrent state
``(slots, HV, V, K)``. Speculative decoding is not supported (NotImplementedError).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import QwenGatedDeltaNetAttention
from vllm.model_executor.layers.mamba.mamba_utils import is_conv_state_dim_first
from vllm.utils.torch_utils import (
    LayerNameType,
    _encode_layer_name,
    _resolve_layer_name,
    direct_register_custom_op,
)
from vllm.v1.attention.backends.gdn_attn import GDNAttentionMetadata

from mamba_backends_vllm import _plugin

#: Name of our core op under ``torch.ops.vllm``.
CORE_OP = "mamba_backends_gdn_core"

_registered = False


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


def gdn_core(
    layer: Any,
    md: GDNAttentionMetadata,
    mixed_qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    core_attn_out: torch.Tensor,
) -> None:
    """Conv + gating + delta rule for one step's tokens, decodes first, then prefills.

    ``mixed_qkv: (T, 2*H*K + HV*V)``, ``b, a: (T, HV)``; writes ``core_attn_out: (T, HV, V)``
    and updates the layer's conv and recurrent states in place.
    """
    if md.spec_sequence_masks is not None or md.num_accepted_tokens is not None:
        raise NotImplementedError("mamba-backends GDN layer: speculative decoding (num_spec > 0)")
    ops = _plugin.ops_for("gdn")
    conv_state = layer.kv_cache[0]
    if not is_conv_state_dim_first():
        conv_state = conv_state.transpose(-1, -2)  # (slots, dim, W-1)
    ssm_state = layer.kv_cache[1]  # (slots, HV, V, K)
    if conv_state.size(-1) != layer.conv1d.weight.size(-1) - 1:
        raise NotImplementedError("mamba-backends GDN layer: a widened (spec decode) conv state")
    w = conv_weight(layer)
    idx = md.non_spec_state_indices_tensor
    qsl = md.non_spec_query_start_loc
    assert idx is not None and qsl is not None
    nd, ndt, n_p = md.num_decodes, md.num_decode_tokens, md.num_prefills
    n = md.num_actual_tokens

    if nd > 0:
        x = ops.causal_conv1d_update(
            mixed_qkv[:ndt],
            conv_state,
            w,
            layer.conv1d.bias,
            layer.activation,
            conv_state_indices=idx[:nd],
        )
        q, k, v = layer.rearrange_mixed_qkv(x)  # (1, T, H, K), (1, T, H, K), (1, T, HV, V)
        g, beta = ops.fused_gdn_gating(layer.A_log, a[:ndt], b[:ndt], layer.dt_bias)
        o, _ = ops.fused_recurrent_gated_delta_rule(
            q,
            k,
            v,
            g,
            beta,
            initial_state=ssm_state,
            inplace_final_state=True,
            cu_seqlens=qsl[: nd + 1],
            ssm_state_indices=idx[:nd],
            use_qk_l2norm_in_kernel=True,
        )
        core_attn_out[:ndt] = o[0]

    if n_p > 0:
        has_initial_state = md.has_initial_state
        assert has_initial_state is not None
        qsl_p = qsl[nd : nd + n_p + 1] - ndt
        idx_p = idx[nd : nd + n_p]
        x = ops.causal_conv1d_fn(
            mixed_qkv[ndt:n].transpose(0, 1),
            w,
            layer.conv1d.bias,
            conv_states=conv_state,
            query_start_loc=qsl_p,
            cache_indices=idx_p,
            has_initial_state=has_initial_state[nd : nd + n_p],
            activation=layer.activation,
        ).transpose(0, 1)
        q, k, v = layer.rearrange_mixed_qkv(x)
        g, beta = ops.fused_gdn_gating(layer.A_log, a[ndt:n], b[ndt:n], layer.dt_bias)
        h0 = ssm_state[idx_p]  # a copy: (n_p, HV, V, K)
        h0[~has_initial_state[nd : nd + n_p]] = 0
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
        core_attn_out[ndt:n] = o[0]


def _core_op(
    mixed_qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    core_attn_out: torch.Tensor,
    layer_name: LayerNameType,
) -> None:
    ctx = get_forward_context()
    layer = ctx.no_compile_layers[_resolve_layer_name(layer_name)]
    md_all = ctx.attn_metadata
    if md_all is None:  # profiling / warm-up run
        return
    assert isinstance(md_all, dict)
    md = md_all[layer.prefix]
    assert isinstance(md, GDNAttentionMetadata)
    if md.num_actual_tokens == 0:
        return
    gdn_core(layer, md, mixed_qkv, b, a, core_attn_out)


def register_core_op() -> None:
    """Register ``torch.ops.vllm.mamba_backends_gdn_core`` once per process."""
    global _registered
    if not _registered:
        direct_register_custom_op(op_name=CORE_OP, op_func=_core_op, mutates_args=["core_attn_out"])
        _registered = True


def _eager(fn: Any) -> Any:
    """The function under a ``torch.compile`` decorator (``fn`` itself when undecorated).

    vLLM compiles ``prepare_gdn_attention_core_inputs`` (views and a cat) with inductor. On an
    AVX-512 CPU, torch 2.13's generated code for it corrupts the heap in fp32 ("double free or
    corruption", found by test_qwen3_next_e2e.py's fp32 engine; the same code with
    ``ATEN_CPU_CAPABILITY=avx2`` runs clean). The routed layer runs it eagerly: it only moves
    data, so the values are the same and the cost is a few small ops per layer.
    """
    return getattr(fn, "_torchdynamo_orig_callable", fn)


class RoutedQwenGatedDeltaNetAttention(QwenGatedDeltaNetAttention):
    """``QwenGatedDeltaNetAttention`` whose CPU forward runs the mamba-backends GDN ops.

    ``hidden_states: (T, hidden)`` -> ``(T, hidden)``. Any dtype the backend supports (fp32
    included, which vLLM-CPU's own path refuses).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        register_core_op()

    def forward_cpu(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "in_proj_qkv"):
            raise NotImplementedError(
                "mamba-backends GDN layer: split in_proj_qkv/in_proj_z (LoRA)"
            )
        mixed_qkvz, _ = self.in_proj_qkvz(hidden_states)
        ba, _ = self.in_proj_ba(hidden_states)
        T = hidden_states.size(0)
        mixed_qkv, z, b, a = _eager(type(self).prepare_gdn_attention_core_inputs)(
            self, mixed_qkvz, ba, T
        )
        core_attn_out = torch.zeros(
            (T, self.num_v_heads // self.tp_size, self.head_v_dim),
            dtype=hidden_states.dtype,
            device=hidden_states.device,
        )
        getattr(torch.ops.vllm, CORE_OP)(
            mixed_qkv, b, a, core_attn_out, _encode_layer_name(self.prefix)
        )
        return self._output_projection(core_attn_out, z)
