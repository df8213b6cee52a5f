"""CPU kernels: Mamba1 selective scan (varlen prefill)."""

from __future__ import annotations

from typing import Any



def selective_scan_fn(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op selective_scan_fn is not implemented yet")
