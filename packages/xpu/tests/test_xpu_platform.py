"""The XPU probe and platform, and the Triton selection per mamba type (simulated torch.xpu)."""

from __future__ import annotations

import types

import pytest
import torch

from mamba_backends import get_current_platform, reset_current_platform, select_mamba_backend
from mamba_backends.types import MAMBA_TYPES
from mamba_backends_xpu import platform_path
from mamba_backends_xpu.platform import XPU_BACKENDS, XpuPlatform

TRITON = "mamba_backends_triton.backends."


@pytest.fixture
def xpu_torch(monkeypatch):
    """This CPU torch with a usable ``torch.xpu`` (and no CUDA/ROCm device)."""
    fake = types.SimpleNamespace(
        is_available=lambda: True,
        get_device_name=lambda *a: "Intel(R) Data Center GPU Max 1550 (simulated)",
    )
    monkeypatch.setattr(torch, "xpu", fake, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("MAMBA_BACKENDS_PLATFORM", raising=False)
    reset_current_platform()
    yield monkeypatch
    reset_current_platform()


def test_probe(monkeypatch):
    monkeypatch.setattr(
        torch, "xpu", types.SimpleNamespace(is_available=lambda: True), raising=False
    )
    assert platform_path() == "mamba_backends_xpu.platform.XpuPlatform"
    monkeypatch.setattr(torch, "xpu", types.SimpleNamespace(is_available=lambda: False))
    assert platform_path() is None
    monkeypatch.delattr(torch, "xpu")  # a torch build without torch.xpu
    assert platform_path() is None


def test_platform_facts():
    p = XpuPlatform()
    assert (p.name, p.device_type, p.is_accelerator) == ("xpu", "xpu", True)


def test_every_type_has_its_triton_backend():
    assert XPU_BACKENDS == {
        "mamba1": TRITON + "TritonMamba1Backend",
        "mamba2": TRITON + "TritonMamba2Backend",
        "short_conv": TRITON + "TritonShortConvBackend",
        "gdn": TRITON + "TritonGdnBackend",
        "linear_attention": TRITON + "TritonLinearAttentionBackend",
    }
    p = XpuPlatform()
    for t in MAMBA_TYPES:
        assert p.get_mamba_backend_cls(t, None) == XPU_BACKENDS[t]
        assert p.get_mamba_backend_cls(t, "cpu.mamba1") is None  # the user's call


def test_xpu_torch_makes_xpu_the_current_platform(xpu_torch):
    assert isinstance(get_current_platform(), XpuPlatform)
    assert get_current_platform().describe()["available"] is True
    for mamba_type, name in (("mamba1", "triton.mamba1"), ("mamba2", "triton.mamba2"),
                             ("short_conv", "triton.short_conv")):  # fmt: skip
        choice = select_mamba_backend(mamba_type)
        assert (choice.rule, choice.backend.get_name()) == ("platform", name)
        assert "xpu" in choice.backend.supported_devices
