"""The CPU ops, gathered under vLLM's op names (the ``ops_module`` of CPU backends)."""

from __future__ import annotations

from mamba_backends_cpu.ops.checkpoint import store_prefill_checkpoint
from mamba_backends_cpu.ops.conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_backends_cpu.ops.gdn import (
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_recurrent_gated_delta_rule,
)
from mamba_backends_cpu.ops.lightning import lightning_attention, linear_decode_forward
from mamba_backends_cpu.ops.selective_scan import selective_scan_fn
from mamba_backends_cpu.ops.ssd import mamba_chunk_scan_combined_varlen
from mamba_backends_cpu.ops.state_update import selective_state_update

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
    "store_prefill_checkpoint",
]
