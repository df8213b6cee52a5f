"""Lightning / linear attention: the chunked prefill (:mod:`.prefill`) and the decode step
(:mod:`.decode`)."""

from __future__ import annotations

from mamba_backends_triton.ops.lightning.decode import linear_decode_forward
from mamba_backends_triton.ops.lightning.prefill import lightning_attention

__all__ = ["lightning_attention", "linear_decode_forward"]
