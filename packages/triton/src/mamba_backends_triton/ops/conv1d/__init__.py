"""Causal depthwise conv1d: prefill over a varlen batch (:mod:`.fn`) and decode (:mod:`.update`)."""

from __future__ import annotations

from mamba_backends_triton.ops.conv1d.fn import causal_conv1d_fn
from mamba_backends_triton.ops.conv1d.update import causal_conv1d_update

__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
