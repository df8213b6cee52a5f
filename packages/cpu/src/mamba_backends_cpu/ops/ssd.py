"""CPU kernels: Mamba2 SSD chunk scan (varlen prefill)."""

from __future__ import annotations

from typing import Any



def mamba_chunk_scan_combined_varlen(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cpu op mamba_chunk_scan_combined_varlen is not implemented yet")
