"""Lightning / linear attention: the decode step (:mod:`.decode`). The chunked prefill
(``lightning_attention``) has no Triton kernel yet."""

from __future__ import annotations

from mamba_backends_triton.ops.lightning.decode import linear_decode_forward

__all__ = ["linear_decode_forward"]
