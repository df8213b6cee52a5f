"""CPU kernels: lightning / linear attention (prefill and decode)."""

from __future__ import annotations

from typing import Any



def lightning_attention(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op lightning_attention is not implemented yet")


def linear_decode_forward(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op linear_decode_forward is not implemented yet")
