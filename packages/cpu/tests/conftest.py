"""Fixtures of the CPU op tests: the two execution paths. Helpers live in ``cpu_checks``."""

from __future__ import annotations

import pytest

from mamba_backends_cpu.native import _build


@pytest.fixture(params=["native", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ops run through the fused C kernels, or through the pure-PyTorch fallback.

    The native run is skipped where no C compiler is installed; a build failure with one is
    caught by the ``test_native_builds_here`` tests, not skipped here."""
    native = request.param == "native"
    monkeypatch.setenv("MAMBA_BACKENDS_CPU_NATIVE", "1" if native else "0")
    if native and _build.compiler() is None:
        pytest.skip("no C compiler: native kernels unavailable")
    return str(request.param)
