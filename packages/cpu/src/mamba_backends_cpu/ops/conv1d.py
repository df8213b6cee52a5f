"""CPU kernels: causal depthwise conv1d, prefill (varlen) and decode."""

from __future__ import annotations

from typing import Any



def causal_conv1d_fn(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op causal_conv1d_fn is not implemented yet")


def causal_conv1d_update(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op causal_conv1d_update is not implemented yet")
