"""The kit's quick subset on the Triton backends RocmPlatform chooses, under the Triton
interpreter, with each AMD architecture's tuning tables: every config this package ships for
gfx90a, gfx942 and gfx950 launches and matches the spec (fp32/fp16). ``nox -s test-rocm`` runs
this file with ``TRITON_INTERPRET=1`` when no AMD GPU is present; it skips otherwise."""

from __future__ import annotations

import pytest
from test_rocm_conformance import _chosen

from mamba_backends import tuning
from mamba_backends_rocm.platform import RocmPlatform
from mamba_backends_triton import interpreting
from mamba_backends_triton._launch import TUNING_DEVICE_ENV, device_name
from mamba_backends_triton.testing import tuned_conformance_tests

ARCHS = ("gfx90a", "gfx942", "gfx950")
pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1")


def test_the_launchers_read_the_amd_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuning device reaches the launchers, and this package has tables for each arch."""
    import torch

    assert RocmPlatform().get_mamba_backend_cls("short_conv", None)
    monkeypatch.setenv(TUNING_DEVICE_ENV, "hip:gfx942")
    assert device_name(torch.device("cpu")) == "hip:gfx942"
    devices = {d for d, _ in tuning.configs("causal_conv1d_fn", "hip:")}
    assert {f"hip:{a}" for a in ARCHS} <= devices, devices


if interpreting():
    TestGfx90a = tuned_conformance_tests(_chosen(), "hip:gfx90a")
    TestGfx942 = tuned_conformance_tests(_chosen(), "hip:gfx942")
    TestGfx950 = tuned_conformance_tests(_chosen(), "hip:gfx950")
