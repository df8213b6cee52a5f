"""Gated delta net (Qwen3-Next, Qwen3.5) on mamba-backends ops: an OOT GDN layer.

Why a subclass and not rebinding: vLLM's CPU GDN path (``forward_cpu``) calls the opaque custom
op ``torch.ops.vllm.cpu_gdn_attention_core``, which asserts bf16 and calls fused CPU kernels
through ``vllm._custom_ops`` on a packed conv weight; its CUDA path calls fused kernels
(``fused_post_conv_prep``, ``fused_sigmoid_gating_delta_rule_update``) that have no op of ours.
So :class:`RoutedQwenGatedDeltaNetAttention` overrides the platform forwards: the projections,
the q/k/v/z/b/a unpacking (``prepare_gdn_attention_core_inputs``), the q/k/v split
(``rearrange_mixed_qkv``) and the gated norm + output projection (``_output_projection``) stay
vLLM's; the core in between (:func:`gdn_core`, :mod:`mamba_backends_vllm._gdn_core`) is
composed from the backend's five GDN ops, on every platform the same way. On CPU it runs behind
our own custom op ``torch.ops.vllm.mamba_backends_gdn_core`` (opaque to ``torch.compile``, like
vLLM's); on CUDA, ROCm and XPU behind vLLM's ``qwen_gdn_attention_core`` op (a piecewise-graph
splitting op), whose ``_forward_core`` the subclass overrides.

Caches (vLLM's layout): ``kv_cache[0]`` is the conv state ``(slots, dim, W-1)``, widened to
``(slots, dim, W-1+num_spec)`` with speculative decoding (or its transpose when the layout is
not dim-first), ``kv_cache[1]`` the recurrent state ``(slots, HV, V, K)``. Speculative decoding
(vLLM's ``spec_*`` metadata, ``num_accepted_tokens``) is served by the same ops.
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

from mamba_backends_vllm import _gdn_core, _plugin

#: Name of our core op under ``torch.ops.vllm``.
CORE_OP = "mamba_backends_gdn_core"

_registered = False


def gdn_core(
    layer: Any,
    md: GDNAttentionMetadata,
    mixed_qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    core_attn_out: torch.Tensor,
) -> None:
    """:func:`mamba_backends_vllm._gdn_core.gdn_core` with the routed backend's ops and vLLM's
    conv state layout.

    ``mixed_qkv: (T, 2*H*K + HV*V)``, ``b, a: (T, HV)``; writes ``core_attn_out: (T, HV, V)``
    and updates the layer's conv and recurrent states in place (speculative steps included).
    """
    _gdn_core.gdn_core(
        layer,
        md,
        mixed_qkv,
        b,
        a,
        core_attn_out,
        ops=_plugin.ops_for("gdn"),
        conv_state_dim_first=is_conv_state_dim_first(),
    )


def _step_metadata(layer: Any) -> GDNAttentionMetadata | None:
    """This step's metadata for ``layer`` (None in profiling / warm-up runs)."""
    md_all = get_forward_context().attn_metadata
    if md_all is None:
        return None
    assert isinstance(md_all, dict)
    md = md_all.get(layer.prefix)
    if md is None:
        return None
    assert isinstance(md, GDNAttentionMetadata)
    return md


def _core_op(
    mixed_qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    core_attn_out: torch.Tensor,
    layer_name: LayerNameType,
) -> None:
    layer = get_forward_context().no_compile_layers[_resolve_layer_name(layer_name)]
    md = _step_metadata(layer)
    if md is None or md.num_actual_tokens == 0:  # profiling / warm-up run, empty step
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
    """``QwenGatedDeltaNetAttention`` whose core runs the mamba-backends GDN ops.

    ``hidden_states: (T, hidden)`` -> ``(T, hidden)``. Any dtype the backend supports (fp32
    included, which vLLM-CPU's own path refuses).

    vLLM's ``__init__`` binds ``self._forward_method`` by platform (``forward_xpu``,
    ``forward_cpu``, ``forward_hip``, ``forward_cuda``, in 0.32 and 0.33 alike), so overriding
    those four reaches every platform. CPU calls our own core op; CUDA, ROCm and XPU call vLLM's
    ``torch.ops.vllm.qwen_gdn_attention_core``, which is one of vLLM's piecewise-graph splitting
    ops, and which calls ``self._forward_core``: overridden here to run the same
    :func:`gdn_core`. When the layer was built while GDN was not routed (``_plugin``), every
    entry is vLLM's own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read once here: forward reads a plain bool (torch.compile guards on it, no lookup).
        self._mb_routed = bool(_plugin.backend_name_for("gdn"))
        register_core_op()

    def _projections(
        self, hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mixed_qkv, z, b, a, core_attn_out)`` for ``hidden_states (T, hidden)``."""
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
        return mixed_qkv, z, b, a, core_attn_out

    def forward_cpu(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._mb_routed:
            return super().forward_cpu(hidden_states)
        mixed_qkv, z, b, a, core_attn_out = self._projections(hidden_states)
        getattr(torch.ops.vllm, CORE_OP)(
            mixed_qkv, b, a, core_attn_out, _encode_layer_name(self.prefix)
        )
        return self._output_projection(core_attn_out, z)

    def _forward_gpu(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """CUDA / ROCm / XPU: vLLM's splitting op, whose ``_forward_core`` is ours."""
        mixed_qkv, z, b, a, core_attn_out = self._projections(hidden_states)
        torch.ops.vllm.qwen_gdn_attention_core(
            mixed_qkv,
            b.contiguous(),
            a.contiguous(),
            core_attn_out,
            layer_name=_encode_layer_name(self.prefix),
        )
        return self._output_projection(core_attn_out, z)

    def forward_cuda(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._mb_routed:
            return super().forward_cuda(hidden_states)
        return self._forward_gpu(hidden_states)

    def forward_hip(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._mb_routed:
            return super().forward_hip(hidden_states)
        return self._forward_gpu(hidden_states)

    def forward_xpu(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._mb_routed:
            return super().forward_xpu(hidden_states)
        return self._forward_gpu(hidden_states)

    def _forward_core(
        self,
        mixed_qkv: torch.Tensor,
        b: torch.Tensor,
        a: torch.Tensor,
        core_attn_out: torch.Tensor,
    ) -> None:
        """What vLLM's ``qwen_gdn_attention_core`` op calls (non-CPU): :func:`gdn_core`."""
        if not self._mb_routed:
            return super()._forward_core(mixed_qkv, b, a, core_attn_out)
        md = _step_metadata(self)
        if md is None or md.num_actual_tokens == 0:  # profiling / warm-up run, empty step
            return None
        gdn_core(self, md, mixed_qkv, b, a, core_attn_out)
        return None
