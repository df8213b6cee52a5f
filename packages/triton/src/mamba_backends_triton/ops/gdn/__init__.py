"""Gated delta net (GDN): the gating (:mod:`.gating`) and the recurrent decode
(:mod:`.recurrent`, kernels in :mod:`.recurrent_kernels`). The chunked prefill
(``chunk_gated_delta_rule``) has no Triton kernel yet."""

from __future__ import annotations

from mamba_backends_triton.ops.gdn.gating import fused_gdn_gating
from mamba_backends_triton.ops.gdn.recurrent import fused_recurrent_gated_delta_rule

__all__ = ["fused_gdn_gating", "fused_recurrent_gated_delta_rule"]
