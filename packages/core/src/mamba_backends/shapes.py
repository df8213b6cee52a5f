"""State shape and dtype calculators per mamba type, with the tensor-parallel split.

The formulas follow vLLM 0.32 so that a backend's states drop into vLLM's cache pages:

- conv states hold ``W - 1`` columns (plus ``num_spec`` speculative tokens); HF keeps ``W``;
- Mamba2 replicates groups when TP does not divide ``n_groups`` (``n_groups == 1``: each rank
  gets its own copy), so ``conv_dim = intermediate + 2 * n_groups' * N``;
- the GDN recurrent state is ``(HV / tp, V, K)``;
- the conv state is *stored* ``(W-1, dim)`` per slot ("SD", vLLM's default) and handed to the
  ops as a ``(dim, W-1)`` view with ``stride(-2) == 1``; "DS" stores ``(dim, W-1)``.

Every function returns the per-slot shapes in the chosen storage layout, as vLLM does.
"""

from __future__ import annotations

from typing import Literal

import torch

ConvLayout = Literal["SD", "DS"]

_STR_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
}


def _div(n: int, tp_size: int, what: str) -> int:
    if tp_size < 1:
        raise ValueError(f"tp_size must be >= 1, got {tp_size}")
    if n % tp_size:
        raise ValueError(f"{what}={n} is not divisible by tp_size={tp_size}")
    return n // tp_size


def _conv_shape(dim: int, state_len: int, layout: ConvLayout) -> tuple[int, int]:
    if layout == "SD":
        return (state_len, dim)
    if layout == "DS":
        return (dim, state_len)
    raise ValueError(f"layout must be 'SD' or 'DS', got {layout!r}")


def extra_groups_for_head_shards(n_groups: int, tp_size: int) -> int:
    """Groups added so that every head shard carries the groups it reads.

    Zero when ``tp_size`` divides ``n_groups``; otherwise the single group is replicated
    ``tp_size`` times (``tp_size - n_groups`` extra).
    """
    if n_groups % tp_size == 0:
        return 0
    return tp_size - n_groups


def mamba1_state_shape(
    tp_size: int,
    intermediate_size: int,
    state_size: int,
    conv_kernel: int,
    layout: ConvLayout = "SD",
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(conv, ssm)``: conv ``(W-1, D/tp)`` (SD), ssm ``(D/tp, N)``."""
    dim = _div(intermediate_size, tp_size, "intermediate_size")
    return _conv_shape(dim, conv_kernel - 1, layout), (dim, state_size)


def mamba2_state_shape(
    tp_size: int,
    intermediate_size: int,
    n_groups: int,
    num_heads: int,
    head_dim: int,
    state_size: int,
    conv_kernel: int,
    num_spec: int = 0,
    layout: ConvLayout = "SD",
) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """``(conv, ssm)``: conv ``(W-1+spec, conv_dim/tp)`` (SD), ssm ``(H/tp, P, N)``."""
    groups = n_groups + extra_groups_for_head_shards(n_groups, tp_size)
    conv_dim = intermediate_size + 2 * groups * state_size
    conv = _conv_shape(_div(conv_dim, tp_size, "conv_dim"), conv_kernel - 1 + num_spec, layout)
    return conv, (_div(num_heads, tp_size, "num_heads"), head_dim, state_size)


def short_conv_state_shape(
    tp_size: int, conv_dim: int, conv_kernel: int, num_spec: int = 0, layout: ConvLayout = "SD"
) -> tuple[tuple[int, int]]:
    """``(conv,)``: ``(L-1+spec, conv_dim/tp)`` (SD). LFM2: ``conv_dim = hidden_size``."""
    return (_conv_shape(_div(conv_dim, tp_size, "conv_dim"), conv_kernel - 1 + num_spec, layout),)


def gdn_state_shape(
    tp_size: int,
    num_k_heads: int,
    num_v_heads: int,
    head_k_dim: int,
    head_v_dim: int,
    conv_kernel: int,
    num_spec: int = 0,
    layout: ConvLayout = "SD",
) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """``(conv, recurrent)``: conv over ``q, k, v`` channels, recurrent ``(HV/tp, V, K)``."""
    conv_dim = 2 * num_k_heads * head_k_dim + num_v_heads * head_v_dim
    conv = _conv_shape(_div(conv_dim, tp_size, "conv_dim"), conv_kernel - 1 + num_spec, layout)
    return conv, (_div(num_v_heads, tp_size, "num_v_heads"), head_v_dim, head_k_dim)


def linear_attention_state_shape(
    tp_size: int, num_heads: int, head_dim: int
) -> tuple[tuple[int, int, int]]:
    """``(kv,)``: ``(H/tp, D, D)``."""
    return ((_div(num_heads, tp_size, "num_heads"), head_dim, head_dim),)


def _as_dtype(dtype: str | torch.dtype, what: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _STR_DTYPES:
        return _STR_DTYPES[dtype]
    raise ValueError(f"{what}={dtype!r} is not a dtype; use one of {sorted(_STR_DTYPES)}")


def state_dtypes(
    mamba_type: str,
    model_dtype: str | torch.dtype,
    cache_dtype: str | torch.dtype = "auto",
    ssm_cache_dtype: str | torch.dtype = "auto",
) -> tuple[torch.dtype, ...]:
    """State dtypes in the order of the shape calculators.

    The conv state (and the only state of ``short_conv``/``linear_attention``) uses
    ``cache_dtype`` or the model dtype; the SSM/recurrent state uses ``ssm_cache_dtype`` or
    else the conv state's dtype.
    """
    from mamba_backends.types import check_mamba_type

    check_mamba_type(mamba_type)
    model = _as_dtype(model_dtype, "model_dtype")
    conv = model if cache_dtype == "auto" else _as_dtype(cache_dtype, "cache_dtype")
    if mamba_type in ("short_conv", "linear_attention"):
        return (conv,)
    ssm = conv if ssm_cache_dtype == "auto" else _as_dtype(ssm_cache_dtype, "ssm_cache_dtype")
    return (conv, ssm)
