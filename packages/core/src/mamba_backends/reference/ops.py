"""The spec's ops, gathered under vLLM's op names (the ``ops_module`` of reference backends)."""

from __future__ import annotations

from mamba_backends.reference.checkpoint import store_prefill_checkpoint
from mamba_backends.reference.conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_backends.reference.gdn import (
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_recurrent_gated_delta_rule,
)
from mamba_backends.reference.lightning import lightning_attention, linear_decode_forward
from mamba_backends.reference.selective_scan import selective_scan_fn
from mamba_backends.reference.short_conv import short_conv_mixer
from mamba_backends.reference.ssd import mamba_chunk_scan_combined_varlen
from mamba_backends.reference.state_update import selective_state_update

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "chunk_gated_delta_rule",
    "fused_gdn_gating",
    "fused_recurrent_gated_delta_rule",
    "lightning_attention",
    "linear_decode_forward",
    "mamba_chunk_scan_combined_varlen",
    "selective_scan_fn",
    "selective_state_update",
    "short_conv_mixer",
    "store_prefill_checkpoint",
]
