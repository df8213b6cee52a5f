"""Small helpers shared by the spec tests (inputs and layouts; no expected values)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Absolute/relative tolerance of a result computed in float64 and stored in ``dtype``.
TOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 2e-2,
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, g: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def sd_conv_states(
    slots: int, dim: int, W: int, g: torch.Generator, dtype: torch.dtype = torch.float32
) -> Tensor:
    """vLLM's layout: a ``(slots, dim, W-1)`` view of a ``(slots, W-1, dim)`` buffer."""
    buf = randn(slots, W - 1, dim, g=g, dtype=dtype)
    view = buf.transpose(1, 2)
    assert view.stride(-2) == 1
    return view


def idx(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.int32)


def close(a: Tensor, b: Tensor, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> None:
    tol = TOL[dtype] * scale
    torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), atol=tol, rtol=tol)
