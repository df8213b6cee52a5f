"""Gated delta net (GDN): the gating (:mod:`.gating`), the chunked prefill (:mod:`.chunk`,
kernel in :mod:`.chunk_kernels`) and the recurrent decode (:mod:`.recurrent`, kernels in
:mod:`.recurrent_kernels`)."""

from __future__ import annotations

from mamba_backends_triton.ops.gdn.chunk import chunk_gated_delta_rule
from mamba_backends_triton.ops.gdn.gating import fused_gdn_gating
from mamba_backends_triton.ops.gdn.recurrent import fused_recurrent_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "fused_gdn_gating", "fused_recurrent_gated_delta_rule"]
