"""The ROCm probe and platform, and the Triton selection per mamba type (simulated ROCm torch)."""

from __future__ import annotations

import pytest
import torch

from mamba_backends import get_current_platform, select_mamba_backend
from mamba_backends.types import MAMBA_TYPES
from mamba_backends_rocm import platform_path
from mamba_backends_rocm.platform import NATIVE_BACKENDS, ROCM_BACKENDS, RocmPlatform

TRITON = "mamba_backends_triton.backends."


def test_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert platform_path() == "mamba_backends_rocm.platform.RocmPlatform"
    monkeypatch.setattr(torch.version, "hip", None)  # CUDA torch: not ours
    assert platform_path() is None
    monkeypatch.setattr(torch.version, "hip", "6.2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # ROCm torch, no device
    assert platform_path() is None


def test_platform_facts():
    p = RocmPlatform()
    assert (p.name, p.device_type, p.is_accelerator) == ("rocm", "cuda", True)


def test_every_type_has_its_triton_backend():
    assert set(ROCM_BACKENDS) == set(MAMBA_TYPES)
    assert ROCM_BACKENDS == {
        "mamba1": TRITON + "TritonMamba1Backend",
        "mamba2": TRITON + "TritonMamba2Backend",
        "short_conv": TRITON + "TritonShortConvBackend",
        "gdn": TRITON + "TritonGdnBackend",
        "linear_attention": TRITON + "TritonLinearAttentionBackend",
    }


@pytest.mark.parametrize("mamba_type", sorted(MAMBA_TYPES))
def test_without_aiter_each_type_takes_triton(rocm_torch, no_aiter, mamba_type):
    p = RocmPlatform()
    assert p.get_mamba_backend_cls(mamba_type, None) == ROCM_BACKENDS[mamba_type]
    assert p.get_mamba_backend_cls(mamba_type, "cpu.mamba2") is None  # the user's call


def test_rocm_torch_makes_rocm_the_current_platform(rocm_torch, no_aiter):
    sel = get_current_platform()
    assert isinstance(sel, RocmPlatform)
    # End to end through the selector: the platform rule, the Triton backends.
    for mamba_type, name in (("mamba1", "triton.mamba1"), ("mamba2", "triton.mamba2"),
                             ("short_conv", "triton.short_conv")):  # fmt: skip
        choice = select_mamba_backend(mamba_type)
        assert (choice.rule, choice.backend.get_name()) == ("platform", name)
        assert "cuda" in choice.backend.supported_devices


def test_describe_reports_the_vendor_native_probes(rocm_torch, no_aiter):
    p = RocmPlatform()
    assert p.describe()["vendor_native"] == "not probed yet"
    p.get_mamba_backend_cls("short_conv", None)
    status = p.describe()["vendor_native"]
    (key,) = [k for k in status if "AiterShortConvBackend" in k]
    assert key.endswith(" on cpu") and "not importable" in status[key]
    assert set(NATIVE_BACKENDS) == {"gdn", "short_conv"}
