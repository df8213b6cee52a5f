"""Shared by the CPU op tests: input helpers and the comparison against the spec.

Comparison is the conformance kit's own (:meth:`mamba_backends.testing.case.Check.close`:
elementwise ``|a - e| <= atol + rtol * |e|``, NaN-aware) with the kit's tolerance table
(:func:`mamba_backends.testing.tolerance_for`) for bf16 and fp16, and the stricter
:data:`STRICT` bounds for fp32 and fp64.

Imported by the test modules (``from cpu_checks import close``): a module of its own, not
``conftest``, so that it never collides with another package's conftest in one pytest run.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mamba_backends.testing import Tolerance, tolerance_for
from mamba_backends.testing.case import Check

#: fp32 and fp64 are held tighter than the kit's entries (fp32 2e-4, fp64 1e-9: headroom for
#: any backend, GPU reductions included). The CPU kernels accumulate in fp32 in the spec's
#: order or in short chunks and measure within a few 1e-6 of the float64 spec at these sizes
#: (fp64: ~1e-15), so a regression under the kit's bound (a lost fp32 accumulation, an fp16
#: intermediate) still fails here. These are the files' former fp32 / fp64 factors, now as
#: elementwise bounds. bf16 and fp16 use the kit's entries, which are set by the dtype's ulp.
STRICT: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=1e-5, rtol=1e-5),
    torch.float64: Tolerance(atol=1e-10, rtol=1e-10),
}


def tol_of(*dtypes: torch.dtype, fp32: Tolerance | None = None) -> Tolerance:
    """The bound of a comparison at the precision of ``dtypes``: :data:`STRICT` for fp32 or
    fp64 alone (``fp32`` replaces the fp32 entry), else the kit's ``tolerance_for(*dtypes)``."""
    strict = {**STRICT, **({torch.float32: fp32} if fp32 is not None else {})}
    if len(set(dtypes)) == 1 and dtypes[0] in strict:
        return strict[dtypes[0]]
    return tolerance_for(*dtypes)


def close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *dtypes: torch.dtype,
    fp32: Tolerance | None = None,
) -> None:
    """``actual`` matches the spec's ``expected`` by the kit's comparison (shape, NaN and inf
    positions, then elementwise) within :func:`tol_of` of ``dtypes`` (the precision of the
    compared values)."""
    check = Check(tol_of(*dtypes, fp32=fp32))
    check.close("value", actual, expected)
    assert not check.failures, "; ".join(check.failures)


def qsl_of(lens: list[int]) -> torch.Tensor:
    """``query_start_loc`` / ``cu_seqlens`` ``(len(lens) + 1,)`` int32 of sequence lengths."""
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


class CountOps(TorchDispatchMode):
    """The ATen ops a call dispatches (each costs tens of microseconds with cold caches)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def pool(slots: int, dim: int, K: int, dtype: torch.dtype, layout: str, gen: torch.Generator):
    """A conv state pool ``(slots, dim, K)``: contiguous, or vLLM's SD layout (a transposed
    view of a ``(slots, K, dim)`` buffer, so ``stride(-2) == 1``)."""
    if layout == "sd":
        return torch.randn(slots, K, dim, generator=gen).to(dtype).transpose(1, 2)
    return torch.randn(slots, dim, K, generator=gen).to(dtype)
