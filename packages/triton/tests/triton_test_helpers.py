"""Helpers shared by the Triton op tests (not a test module): the device, seeded tensors,
closeness to the spec and bit-exact comparisons.

Runs the kernels in Triton's interpreter on CPU without a GPU (see conftest), where only
fp32/fp16 are meaningful (the interpreter computes bf16 wrongly).
"""

from __future__ import annotations

from typing import Any

import torch

from mamba_backends_triton import interpreting

DEVICE = "cpu" if interpreting() else "cuda"
F32, F16 = torch.float32, torch.float16
TOL = {F32: 3e-5, F16: 5e-3}


def rand(*shape: int, dtype: torch.dtype = F32, seed: int = 0, scale: float = 1.0) -> Any:
    """Seeded normal values (drawn in float64), on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def ints(vals: Any, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return torch.tensor(vals, dtype=dtype, device=DEVICE)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """``got`` matches the spec's ``want``: the same NaN positions and infinities, the finite
    values within ``TOL[dtype]`` (absolute plus relative)."""
    tol = TOL[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    inf, fin = want.isinf(), want.isfinite()
    assert torch.equal(got[inf], want[inf]), f"{what}: inf values differ"
    err = (got[fin] - want[fin]).abs() / (tol + tol * want[fin].abs())
    worst = float(err.max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max err ratio {worst}"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN payloads included)."""
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    width = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a.view(width), b.view(width))


def cpu(x: Any) -> Any:
    """A detached CPU copy of a tensor (anything else as is), for the spec."""
    return x.detach().cpu().clone() if isinstance(x, torch.Tensor) else x


def strided_states(
    layout: str,
    slots: int,
    heads: int,
    rows: int,
    cols: int,
    dtype: torch.dtype = F32,
    seed: int = 9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A state pool ``(slots, heads, rows, cols)`` and its base tensor: contiguous, a
    transposed view, or inside wider pages (5 elements before, 6 after each)."""
    if layout == "transposed":
        base = rand(slots, heads, cols, rows, dtype=dtype, seed=seed)
        return base.transpose(-1, -2), base
    if layout == "page":
        base = rand(slots, heads * rows * cols + 11, dtype=dtype, seed=seed)
        return base[:, 5 : 5 + heads * rows * cols].view(slots, heads, rows, cols), base
    base = rand(slots, heads, rows, cols, dtype=dtype, seed=seed)
    return base, base
