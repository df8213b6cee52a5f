"""CpuPlatform serves this package's backends for every mamba type."""

from __future__ import annotations

import pytest

from mamba_backends import MAMBA_TYPES
from mamba_backends.backend import OP_NAMES
from mamba_backends_cpu.backends import (
    CpuGDNBackend,
    CpuLinearAttentionBackend,
    CpuMamba1Backend,
    CpuMamba2Backend,
    CpuShortConvBackend,
)
from mamba_backends_cpu.platform import CPU_BACKENDS, CpuPlatform

EXPECTED = {
    "mamba1": CpuMamba1Backend,
    "mamba2": CpuMamba2Backend,
    "short_conv": CpuShortConvBackend,
    "gdn": CpuGDNBackend,
    "linear_attention": CpuLinearAttentionBackend,
}


def test_every_mamba_type_is_served() -> None:
    assert set(EXPECTED) == set(MAMBA_TYPES) == set(CPU_BACKENDS)


@pytest.mark.parametrize("mamba_type", sorted(EXPECTED))
def test_platform_chooses_cpu_backend(mamba_type: str) -> None:
    path = CpuPlatform().get_mamba_backend_cls(mamba_type, None)
    assert path == CPU_BACKENDS[mamba_type]
    assert path == EXPECTED[mamba_type].qualname()


@pytest.mark.parametrize("mamba_type", sorted(EXPECTED))
def test_explicit_selection_is_the_users_call(mamba_type: str) -> None:
    assert CpuPlatform().get_mamba_backend_cls(mamba_type, "some.other.Backend") is None


@pytest.mark.parametrize("mamba_type", sorted(EXPECTED))
def test_backend_ops_are_implemented(mamba_type: str) -> None:
    ops = EXPECTED[mamba_type].ops()
    for name in OP_NAMES[mamba_type]:
        fn = getattr(ops, name)
        assert callable(fn) and fn.__module__.startswith("mamba_backends_cpu.ops.")
