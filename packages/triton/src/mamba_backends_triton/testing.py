"""The conformance kit on Triton backends under the interpreter with a vendor's tuning tables.

On a machine without the vendor's GPU, ``TRITON_INTERPRET=1`` runs the kernels on CPU tensors,
and :data:`~mamba_backends_triton._launch.TUNING_DEVICE_ENV` makes their launchers look the
tuning tables up under a device name such as ``hip:gfx942``: every block size, warp count and
stage count of that architecture's tables is then launched and held to the spec. (The compile
check proves the same configs compile for the real target; this proves they compute right.)
"""

from __future__ import annotations

from typing import Any

import pytest

from mamba_backends.testing import conformance_tests
from mamba_backends_triton._launch import TUNING_DEVICE_ENV


def tuned_conformance_tests(backends: Any, tuning_device: str, *, quick: bool = True) -> type:
    """A pytest test class: the kit (its quick fixed subset by default, no drawn cases) on
    ``backends`` on CPU tensors, with every launch configured from ``tuning_device``'s tables.
    Meant for ``TRITON_INTERPRET=1``; bind the result to a ``Test*`` name."""
    base: Any = conformance_tests(backends, device="cpu", quick=quick, drawn=False)

    class TunedConformance(base):
        @pytest.fixture(autouse=True)
        def _tuning_device(self, monkeypatch: pytest.MonkeyPatch) -> None:
            monkeypatch.setenv(TUNING_DEVICE_ENV, tuning_device)

    TunedConformance.__doc__ = f"The kit with the {tuning_device} tuning tables (interpreter)."
    return TunedConformance
