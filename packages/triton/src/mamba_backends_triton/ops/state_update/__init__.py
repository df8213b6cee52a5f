"""Selective state update (decode; Mamba1 and Mamba2 heads form): :mod:`.update` launches the
kernels of :mod:`.kernels`."""

from __future__ import annotations

from mamba_backends_triton.ops.state_update.update import selective_state_update

__all__ = ["selective_state_update"]
