"""The spec's ops, gathered under vLLM's op names (the ``ops_module`` of reference backends)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "selective_scan_fn",
    "selective_state_update",
    "mamba_chunk_scan_combined_varlen",
    "fused_gdn_gating",
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "lightning_attention",
    "linear_decode_forward",
]


def _not_yet(name: str) -> Any:
    def op(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"reference op {name!r} is not implemented yet")

    op.__name__ = name
    return op


causal_conv1d_fn = _not_yet("causal_conv1d_fn")
causal_conv1d_update = _not_yet("causal_conv1d_update")
selective_scan_fn = _not_yet("selective_scan_fn")
selective_state_update = _not_yet("selective_state_update")
mamba_chunk_scan_combined_varlen = _not_yet("mamba_chunk_scan_combined_varlen")
fused_gdn_gating = _not_yet("fused_gdn_gating")
chunk_gated_delta_rule = _not_yet("chunk_gated_delta_rule")
fused_recurrent_gated_delta_rule = _not_yet("fused_recurrent_gated_delta_rule")
lightning_attention = _not_yet("lightning_attention")
linear_decode_forward = _not_yet("linear_decode_forward")
