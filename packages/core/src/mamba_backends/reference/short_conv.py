"""Spec: LFM2 short-conv mixer core (``B*x``, causal conv, ``C*y``), as vLLM's ``ShortConv`` does.

vLLM's layer (``vllm/model_executor/layers/mamba/short_conv.py``) projects the hidden states
to ``B, C, x = in_proj(h).chunk(3, -1)``, runs the causal conv (no activation) over ``B*x`` and
multiplies by ``C`` before ``out_proj``. This op is everything between the two projections.

``short_conv_mixer(B, C, x, weight, bias, conv_state, query_start_loc_p=None,
state_indices_p=None, has_initial_states_p=None, state_indices_d=None,
num_accepted_tokens=None, query_start_loc_d=None, null_block_id=NULL_BLOCK_ID) -> y``

- ``B``, ``C``, ``x``: ``(T, dim)``. As in vLLM, the batch holds its decode tokens first, then
  its prefill tokens; rows after the last one of either are padding and are not read;
- ``weight``: ``(dim, W)``; ``bias``: ``(dim,)`` or None;
- ``conv_state``: ``(slots, dim, >= W-1)``, any strides, updated in place;
- decodes: ``state_indices_d`` ``(Bd,)`` (one token each), or ``(Bd, K)`` with
  ``num_accepted_tokens`` ``(Bd,)`` and ``query_start_loc_d`` ``(Bd+1,)`` (speculative
  decoding, as :func:`causal_conv1d_update`);
- prefills: ``query_start_loc_p`` ``(Bp+1,)`` (offsets from the first prefill token, starting
  at 0), ``state_indices_p`` ``(Bp,)``, ``has_initial_states_p`` ``(Bp,)``;
- returns ``y``: ``(Td + Tp, dim)`` in ``x``'s dtype, ``y = C * conv(B * x)``.

``B * x`` is formed in ``x``'s dtype (as the layer does), the conv runs through the spec's
:func:`causal_conv1d_fn` / :func:`causal_conv1d_update` in float64, and ``C * conv`` is taken in
float64 before the final cast. Pad/null slots are skipped as in those ops; their rows of ``y``
are zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mamba_backends.contract import (
    ContractError,
    check_causal_conv1d_fn_args,
    check_causal_conv1d_update_args,
    check_tensor,
)
from mamba_backends.reference.conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_backends.types import NULL_BLOCK_ID

F64 = torch.float64

#: conv op/argument names -> this op's (errors name what the caller passed).
_PREFILL_NAMES = {
    "causal_conv1d_fn": "short_conv_mixer (prefill)",
    "conv_states": "conv_state",
    "cache_indices": "state_indices_p",
    "has_initial_state": "has_initial_states_p",
    "query_start_loc": "query_start_loc_p",
}
_DECODE_NAMES = {
    "causal_conv1d_update": "short_conv_mixer (decode)",
    "conv_state_indices": "state_indices_d",
    "query_start_loc": "query_start_loc_d",
}


@contextmanager
def _renamed(names: dict[str, str]) -> Iterator[None]:
    """Re-raise a conv checker's error under this op's argument names."""
    try:
        yield
    except ContractError as e:
        raise ContractError(names.get(e.op, e.op), names.get(e.arg, e.arg), e.detail) from e


def short_conv_mixer(
    B: Tensor,
    C: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    conv_state: Tensor,
    query_start_loc_p: Tensor | None = None,
    state_indices_p: Tensor | None = None,
    has_initial_states_p: Tensor | None = None,
    state_indices_d: Tensor | None = None,
    num_accepted_tokens: Tensor | None = None,
    query_start_loc_d: Tensor | None = None,
    null_block_id: int | None = NULL_BLOCK_ID,
) -> Tensor:
    """LFM2 short-conv core over a decode-then-prefill batch; see the module docstring."""
    op = "short_conv_mixer"
    check_tensor(op, "x", x, ndim=2)
    for name, t in (("B", B), ("C", C)):
        check_tensor(op, name, t, shape=tuple(x.shape), device=x.device)
    if (query_start_loc_p is None) != (state_indices_p is None):
        missing = "state_indices_p" if state_indices_p is None else "query_start_loc_p"
        raise ContractError(op, missing, "is required for prefills")
    if num_accepted_tokens is not None and (state_indices_d is None or query_start_loc_d is None):
        raise ContractError(
            op, "num_accepted_tokens", "needs state_indices_d and query_start_loc_d"
        )
    if query_start_loc_d is not None and state_indices_d is None:
        raise ContractError(op, "query_start_loc_d", "needs state_indices_d")
    if state_indices_d is None:
        num_decode_tokens = 0
    elif query_start_loc_d is not None:
        num_decode_tokens = int(query_start_loc_d[-1])
    else:
        num_decode_tokens = state_indices_d.shape[0]
    num_prefill_tokens = int(query_start_loc_p[-1]) if query_start_loc_p is not None else 0
    total = num_decode_tokens + num_prefill_tokens
    if total > x.shape[0]:
        raise ContractError(op, "x", f"has {x.shape[0]} rows but the metadata needs {total}")
    # B*x in x's dtype, as the layer forms it; the conv then runs in float64.
    Bx = (B[:total] * x[:total]).to(F64)
    Bx_d, Bx_p = Bx[:num_decode_tokens], Bx[num_decode_tokens:].T  # (Td, dim), (dim, Tp)
    # Validate both halves before either writes a state; errors name this op's arguments.
    if num_prefill_tokens:
        assert query_start_loc_p is not None
        with _renamed(_PREFILL_NAMES):
            check_causal_conv1d_fn_args(
                Bx_p, weight, bias, conv_state, query_start_loc_p, state_indices_p,
                has_initial_states_p, None, null_block_id=null_block_id, check_values=True,
            )  # fmt: skip
    if num_decode_tokens:
        with _renamed(_DECODE_NAMES):
            check_causal_conv1d_update_args(
                Bx_d, conv_state, weight, bias, None, state_indices_d, num_accepted_tokens,
                query_start_loc_d, null_block_id, None, check_values=True,
            )  # fmt: skip
    conv = torch.zeros(total, x.shape[1], dtype=F64, device=x.device)
    if num_decode_tokens:
        # Skipped (pad/null) decode rows keep the zeros of `out`.
        causal_conv1d_update(
            Bx_d, conv_state, weight, bias, None, state_indices_d, num_accepted_tokens,
            query_start_loc_d, null_block_id=null_block_id, out=conv[:num_decode_tokens],
        )  # fmt: skip
    if num_prefill_tokens:
        assert query_start_loc_p is not None
        conv[num_decode_tokens:] = causal_conv1d_fn(
            Bx_p, weight, bias, conv_state, query_start_loc_p, state_indices_p,
            has_initial_states_p, None, null_block_id=null_block_id,
        ).T  # fmt: skip
    y = C[:total].to(F64) * conv
    return y.to(x.dtype)
