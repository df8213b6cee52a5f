"""The core argument checkers the Triton launchers call: the one place that names their module.

The checkers read index *values* only when the tensors live on the CPU (no device sync), unless
the caller forces them (``validate_data=True``) or ``MAMBA_BACKENDS_CHECK_VALUES=1``.
"""

from __future__ import annotations

from mamba_backends.contract import (
    check_causal_conv1d_fn_args,
    check_causal_conv1d_update_args,
    check_chunk_gated_delta_rule_args,
    check_fused_gdn_gating_args,
    check_fused_recurrent_gated_delta_rule_args,
    check_lightning_attention_args,
    check_linear_decode_forward_args,
    check_not_supported,
    check_selective_scan_args,
    check_selective_state_update_args,
    check_ssd_varlen_args,
    normalize_activation,
)

__all__ = [
    "check_causal_conv1d_fn_args",
    "check_causal_conv1d_update_args",
    "check_chunk_gated_delta_rule_args",
    "check_fused_gdn_gating_args",
    "check_fused_recurrent_gated_delta_rule_args",
    "check_lightning_attention_args",
    "check_linear_decode_forward_args",
    "check_not_supported",
    "check_selective_scan_args",
    "check_selective_state_update_args",
    "check_ssd_varlen_args",
    "normalize_activation",
]
