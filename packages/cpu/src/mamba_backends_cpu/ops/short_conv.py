"""CPU kernels: LFM2 short-conv mixer core (``B*x``, causal conv, ``C*y``).

Everything between vLLM ``ShortConv``'s two projections, over a decode-then-prefill batch:
``y = C * conv(B * x)`` with no activation. ``B*x`` is formed in ``x``'s dtype (as the layer
does), the conv runs through this package's :func:`causal_conv1d_update` (decodes) and
:func:`causal_conv1d_fn` (prefills) in fp32, and ``C * conv`` is taken in fp32 before the final
cast. Both halves are validated before either writes a state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mamba_backends.types import NULL_BLOCK_ID
from mamba_backends.validate import (
    check_causal_conv1d_fn_args,
    check_causal_conv1d_update_args,
    check_tensor,
)
from mamba_backends_cpu.ops._common import compute_dtype
from mamba_backends_cpu.ops.conv1d import causal_conv1d_fn, causal_conv1d_update

_OP = "short_conv_mixer"
_PREFILL_NAMES = {
    "causal_conv1d_fn": f"{_OP} (prefill)",
    "'x'": "'x' (B*x)",
    "'conv_states'": "'conv_state'",
    "'cache_indices'": "'state_indices_p'",
    "'has_initial_state'": "'has_initial_states_p'",
    "'query_start_loc'": "'query_start_loc_p'",
}
_DECODE_NAMES = {
    "causal_conv1d_update": f"{_OP} (decode)",
    "'x'": "'x' (B*x)",
    "'conv_state_indices'": "'state_indices_d'",
    "'query_start_loc'": "'query_start_loc_d'",
}


@contextmanager
def _renamed(names: dict[str, str]) -> Iterator[None]:
    """Re-raise a conv validator's error under this op's argument names."""
    try:
        yield
    except (ValueError, TypeError) as e:
        msg = str(e)
        for old, new in names.items():
            msg = msg.replace(old, new)
        raise type(e)(msg) from e


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
    """LFM2 short-conv core: ``y = C * conv(B * x)``; ``conv_state`` updated in place.

    Args:
        B, C, x: ``(T, dim)``; decode tokens first, then prefill tokens; later rows are padding.
        weight: ``(dim, W)``; bias: ``(dim,)`` or None.
        conv_state: ``(slots, dim, >= W-1)``, any strides.
        query_start_loc_p: ``(Bp+1,)`` prefill offsets from the first prefill token.
        state_indices_p: ``(Bp,)``; has_initial_states_p: ``(Bp,)`` bool.
        state_indices_d: ``(Bd,)`` one token each (or ``(Bd, K)`` with ``query_start_loc_d``).
        num_accepted_tokens: speculative decoding; not supported (NotImplementedError).

    Returns:
        ``(Td + Tp, dim)`` in ``x``'s dtype; rows of pad/null requests are zero.
    """
    check_tensor(_OP, "x", x, ndim=2)
    for name, t in (("B", B), ("C", C)):
        check_tensor(_OP, name, t, shape=tuple(x.shape), device=x.device)
    if (query_start_loc_p is None) != (state_indices_p is None):
        missing = "state_indices_p" if state_indices_p is None else "query_start_loc_p"
        raise ValueError(f"{_OP}: argument '{missing}' is required for prefills")
    if num_accepted_tokens is not None and (state_indices_d is None or query_start_loc_d is None):
        raise ValueError(
            f"{_OP}: argument 'num_accepted_tokens' needs state_indices_d and query_start_loc_d"
        )
    if query_start_loc_d is not None and state_indices_d is None:
        raise ValueError(f"{_OP}: argument 'query_start_loc_d' needs state_indices_d")
    if num_accepted_tokens is not None:
        raise NotImplementedError(f"{_OP}: argument 'num_accepted_tokens' is not supported")
    if state_indices_d is None:
        Td = 0
    elif query_start_loc_d is not None:
        Td = int(query_start_loc_d[-1])
    else:
        Td = state_indices_d.shape[0]
    Tp = int(query_start_loc_p[-1]) if query_start_loc_p is not None else 0
    total = Td + Tp
    if total > x.shape[0]:
        raise ValueError(
            f"{_OP}: argument 'x' has {x.shape[0]} rows but the metadata needs {total}"
        )
    ctype = compute_dtype(x, B, C)
    Bx = (B[:total] * x[:total]).to(ctype)  # product in x's dtype, then exact upcast
    Bx_d, Bx_p = Bx[:Td], Bx[Td:].t()  # (Td, dim), (dim, Tp)
    if Tp:
        assert query_start_loc_p is not None
        with _renamed(_PREFILL_NAMES):
            check_causal_conv1d_fn_args(
                Bx_p, weight, bias, conv_state, query_start_loc_p, state_indices_p,
                has_initial_states_p, None, null_block_id=null_block_id,
            )  # fmt: skip
    if Td:
        with _renamed(_DECODE_NAMES):
            check_causal_conv1d_update_args(
                Bx_d, conv_state, weight, bias, None, state_indices_d, None,
                query_start_loc_d, null_block_id, None,
            )  # fmt: skip
    conv = torch.zeros(total, x.shape[1], dtype=ctype)
    if Td:
        causal_conv1d_update(
            Bx_d, conv_state, weight, bias, None, state_indices_d, None, query_start_loc_d,
            null_block_id=null_block_id, out=conv[:Td],
        )  # fmt: skip
    if Tp:
        assert query_start_loc_p is not None
        conv[Td:] = causal_conv1d_fn(
            Bx_p, weight, bias, conv_state, query_start_loc_p, state_indices_p,
            has_initial_states_p, None, null_block_id=null_block_id,
        ).t()  # fmt: skip
    return conv.mul_(C[:total].to(ctype)).to(x.dtype)
