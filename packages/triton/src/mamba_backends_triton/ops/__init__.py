"""The Triton ops under vLLM's names, one folder per op family (as fla lays them out).

This module is the ``ops_module`` of the Triton backends; importing it imports triton.
"""

from __future__ import annotations

from mamba_backends_triton.ops.conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_backends_triton.ops.gdn import (
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_recurrent_gated_delta_rule,
)
from mamba_backends_triton.ops.lightning import lightning_attention, linear_decode_forward
from mamba_backends_triton.ops.selective_scan import selective_scan_fn
from mamba_backends_triton.ops.ssd import mamba_chunk_scan_combined_varlen
from mamba_backends_triton.ops.state_update import selective_state_update

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
]
