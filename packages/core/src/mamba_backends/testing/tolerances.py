"""The conformance kit's tolerances: one table, keyed by dtype.

A case's tolerance is the loosest entry among its activation dtype and its state dtype. A value
``a`` (the backend's) matches ``e`` (the spec's) when ``|a - e| <= atol + rtol * |e|``
elementwise; the kit reports the worst ratio ``|a - e| / (atol + rtol * |e|)`` (pass: <= 1).

Why these numbers. The spec computes in float64 and rounds where the op's contract rounds (the
output to the activation dtype, the state to the state dtype), so a backend that computes in
fp32 differs from it by its own fp32 accumulation error plus, at most, a unit or two in the last
place of the stored dtype. Inputs are O(1) and states stay O(10) by construction (negative A,
dt in [0.001, 0.5]). The split invariant stores a low-precision state between pieces where the
one-shot run does not, which adds a few roundings on recurrences of at most tens of steps.

- fp32: fp32 accumulation over chunked/matmul forms of up to a few hundred terms: 1e-5-ish,
  with 20x headroom;
- fp16: one fp16 ulp is 2^-10 (9.8e-4); allow ~5 ulps;
- bf16: one bf16 ulp is 2^-7 (7.8e-3); allow ~4 ulps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """Elementwise closeness bound ``|actual - expected| <= atol + rtol * |expected|``."""

    atol: float
    rtol: float


#: The one tolerance table (data): dtype -> bound.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(atol=1e-9, rtol=1e-9),
    torch.float32: Tolerance(atol=2e-4, rtol=2e-4),
    torch.float16: Tolerance(atol=5e-3, rtol=5e-3),
    torch.bfloat16: Tolerance(atol=3e-2, rtol=3e-2),
}


def tolerance_for(*dtypes: torch.dtype) -> Tolerance:
    """The loosest table entry among ``dtypes`` (activation and state dtypes of a case)."""
    if not dtypes:
        raise ValueError("tolerance_for needs at least one dtype")
    bounds = []
    for dtype in dtypes:
        if dtype not in TOLERANCES:
            raise ValueError(f"no tolerance for dtype {dtype}; the table has {list(TOLERANCES)}")
        bounds.append(TOLERANCES[dtype])
    return Tolerance(atol=max(b.atol for b in bounds), rtol=max(b.rtol for b in bounds))
