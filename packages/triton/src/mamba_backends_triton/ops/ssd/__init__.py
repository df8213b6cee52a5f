"""Mamba2 SSD (chunked state-space duality) varlen prefill: ``mamba_chunk_scan_combined_varlen``.

:mod:`.chunk_scan` holds the fused kernel, :mod:`.combined` the launcher under vLLM's name.
"""

from __future__ import annotations

from mamba_backends_triton.ops.ssd.combined import mamba_chunk_scan_combined_varlen

__all__ = ["mamba_chunk_scan_combined_varlen"]
