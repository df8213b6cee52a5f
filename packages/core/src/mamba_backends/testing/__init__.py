"""The conformance kit: checks any backend's ops against the executable spec.

Every case builds its inputs from a seed, calls the backend's op (``Backend.ops().<name>``,
vLLM 0.32's signatures) and the spec's (:mod:`mamba_backends.reference`, float64), and compares
them within the tolerance table (:data:`TOLERANCES`, one entry per dtype). It covers:

- the dtype matrix: fp32/bf16/fp16 activations x fp32/bf16/fp16 states;
- odd sizes: T = 1, 63 and 500 (as several sequences), W = 2..4, ngroups > 1 with the
  group -> head mapping by block (``h // (H / G)``);
- serving layouts: conv state pools as ``(dim, W-1)`` views of ``(W-1, dim)`` buffers or of a
  larger page; SSM state pools as strided views of a page or with transposed inner dims;
  inputs as column slices of a projection buffer;
- invariants: *split* (prefill in k pieces, then decode step by step, equals one shot),
  *batch* (each sequence alone equals the batch), *canary* (pad ``-1`` and null block ``0``
  entries are skipped: every slot not indexed, and page padding, stays bit-identical),
  *in-place* (the indexed slots are updated in place, nothing else is written);
- the contract (:mod:`mamba_backends.contract`): bad input (a wrong shape or dtype, an
  ``expand``-ed output or state, an output overlapping an input) raises ``ContractError``
  naming the op and the argument, and no state is written; every op's signature equals the
  spec's; offsets with a padded tail (``query_start_loc[-1] < T``) behave as the spec's;
- a fixed grid, and cases drawn by hypothesis.

Vendor usage, one line in the vendor package's tests::

    from mamba_backends.testing import conformance_tests

    TestConformance = conformance_tests([
        "mamba_backends_cpu.backends.CpuMamba1Backend",
        "mamba_backends_cpu.backends.CpuMamba2Backend",
    ])

``backends`` may also be a backend class, or a :class:`~mamba_backends.Platform` (every backend
it claims). Cases run on the first usable device of each backend's ``supported_devices``;
override it with ``device=`` or ``MAMBA_BACKENDS_TEST_DEVICE=cuda:1``. Cases whose dtypes a
backend does not declare in ``supported_dtypes``/``supported_state_dtypes`` are skipped.
``MAMBA_BACKENDS_CONFORMANCE_EXAMPLES`` sets the number of hypothesis examples per drawn test.

Outside pytest, :func:`check_backend` runs the (quick) grid and returns one row per op; the
``mamba-backends check`` command prints those rows for the current platform.

Cases live in :mod:`mamba_backends.testing.cases`, one module per op family, discovered
automatically (see that package's docstring to add a family).
"""

from __future__ import annotations

from typing import Any

from mamba_backends.testing.case import Case, CaseResult, run_case
from mamba_backends.testing.runner import (
    OpSummary,
    backend_device,
    check_backend,
    resolve_backends,
)
from mamba_backends.testing.tolerances import TOLERANCES, Tolerance, tolerance_for

__all__ = [
    "TOLERANCES",
    "Case",
    "CaseResult",
    "OpSummary",
    "Tolerance",
    "backend_device",
    "check_backend",
    "conformance_tests",
    "resolve_backends",
    "run_case",
    "tolerance_for",
]


def __getattr__(name: str) -> Any:
    # The pytest face imports pytest; load it only when asked for.
    if name == "conformance_tests":
        from mamba_backends.testing.suite import conformance_tests

        return conformance_tests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
