"""Mamba1 selective scan (varlen or batched prefill): :mod:`.scan`."""

from __future__ import annotations

from mamba_backends_triton.ops.selective_scan.scan import selective_scan_fn

__all__ = ["selective_scan_fn"]
