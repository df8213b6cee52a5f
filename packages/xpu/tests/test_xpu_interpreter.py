"""The kit's quick subset on the Triton backends XpuPlatform chooses, under the Triton
interpreter, with this package's ``xpu:default`` tuning tables: every config it ships launches
and matches the spec (fp32/fp16). ``nox -s test-xpu`` runs this file with ``TRITON_INTERPRET=1``
when no Intel GPU is present; it skips otherwise."""

from __future__ import annotations

import pytest
from test_xpu_conformance import _chosen

from mamba_backends import tuning
from mamba_backends_triton import interpreting
from mamba_backends_triton._launch import TUNING_DEVICE_ENV, device_name
from mamba_backends_triton.testing import tuned_conformance_tests

pytestmark = pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1")


def test_the_launchers_read_the_xpu_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tuning device reaches the launchers, and this package has tables for it."""
    import torch

    monkeypatch.setenv(TUNING_DEVICE_ENV, "xpu:default")
    assert device_name(torch.device("cpu")) == "xpu:default"
    assert "xpu:default" in {d for d, _ in tuning.configs("causal_conv1d_fn", "xpu:")}


if interpreting():
    TestXpuDefault = tuned_conformance_tests(_chosen(), "xpu:default")
