"""CPU kernels: gated delta net (gating, chunked prefill, recurrent decode)."""

from __future__ import annotations

from typing import Any



def fused_gdn_gating(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op fused_gdn_gating is not implemented yet")


def chunk_gated_delta_rule(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op chunk_gated_delta_rule is not implemented yet")


def fused_recurrent_gated_delta_rule(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op fused_recurrent_gated_delta_rule is not implemented yet")
