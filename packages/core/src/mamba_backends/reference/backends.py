"""Reference backends: the executable spec served as a backend of last resort.

The spec's ops run wherever torch runs (float64 internally, loop level, slow), and the
conformance kit calls them directly (:mod:`mamba_backends.reference.ops`) as the oracle on any
device. As *backends* they declare only the CPU: a float64 loop with per-token host
round-trips is a test oracle there, not a serving backend on an accelerator, and the spec reads
index values, so it cannot trace on ``meta`` either. They are what the default map points at
when no platform claims a mamba type; the vLLM plugin never routes a layer to the default map.
"""

from __future__ import annotations

import torch

from mamba_backends.backend import MambaBackend


class _ReferenceBackend(MambaBackend):
    supported_devices = ("cpu",)
    supported_dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    supported_state_dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    ops_module = "mamba_backends.reference.ops"


class ReferenceMamba1Backend(_ReferenceBackend):
    """Spec backend for Mamba1 (``MambaMixer``)."""

    name = "reference.mamba1"
    mamba_type = "mamba1"


class ReferenceMamba2Backend(_ReferenceBackend):
    """Spec backend for Mamba2 (``MambaMixer2``)."""

    name = "reference.mamba2"
    mamba_type = "mamba2"
    chunk_size = 256


class ReferenceShortConvBackend(_ReferenceBackend):
    """Spec backend for LFM2's short conv (``ShortConv``)."""

    name = "reference.short_conv"
    mamba_type = "short_conv"


class ReferenceGDNBackend(_ReferenceBackend):
    """Spec backend for the gated delta net (Qwen3-Next ``GatedDeltaNet``)."""

    name = "reference.gdn"
    mamba_type = "gdn"
    #: The seed's route: ``get_mamba_backend("linear_attention", "reference.gdn")``.
    also_serves = ("linear_attention",)
    chunk_size = 64


class ReferenceLinearAttentionBackend(_ReferenceBackend):
    """Spec backend for lightning/linear attention (MiniMax, Bailing-linear)."""

    name = "reference.linear_attention"
    mamba_type = "linear_attention"
