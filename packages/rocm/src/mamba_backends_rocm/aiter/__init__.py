"""AMD ``aiter`` ops behind the mamba-backends contract (optional: ``pip install amd-aiter``).

- :mod:`.ops`: the ops module of the aiter backends. Where aiter has an op whose arguments
  cover the call, it runs (adapted to the contract's layouts); every other op and call is the
  shared Triton kernel.
- :mod:`.backends`: ``rocm.aiter.short_conv`` and ``rocm.aiter.gdn``;
- :mod:`.probe`: the one-shape checks against the executable spec that gate them.

The aiter functions used, by module path (read from aiter's sources; not run here, no AMD GPU):

- ``aiter.ops.causal_conv1d_update.causal_conv1d_update(x, conv_state, weight, bias, out,
  use_silu, cache_seqlens, conv_state_indices, pad_slot_id)`` (HIP, JIT-built by aiter);
- ``aiter.ops.triton.gated_delta_net.chunk_gated_delta_rule(q, k, v, g, beta, scale,
  initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens)`` with states
  ``[N, H, K, V]`` (fla's layout) and no GVA.
"""

from __future__ import annotations

import importlib
from typing import Any

#: (module, function) of each aiter op an adapter calls.
AITER_CONV_UPDATE = ("aiter.ops.causal_conv1d_update", "causal_conv1d_update")
AITER_CHUNK_GDN = ("aiter.ops.triton.gated_delta_net", "chunk_gated_delta_rule")


def aiter_function(where: tuple[str, str]) -> Any:
    """The aiter function at ``(module, name)``; raises ImportError/AttributeError if absent."""
    module, name = where
    return getattr(importlib.import_module(module), name)
