"""The CUDA probe claims the machine only with a usable non-ROCm CUDA torch."""

from __future__ import annotations

import torch

from mamba_backends_cuda import platform_path
from mamba_backends_cuda.platform import CudaPlatform


def test_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert platform_path() == "mamba_backends_cuda.platform.CudaPlatform"
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert platform_path() is None
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert platform_path() is None


def test_platform_facts():
    p = CudaPlatform()
    assert (p.name, p.device_type, p.is_accelerator) == ("cuda", "cuda", True)
    assert p.get_mamba_backend_cls("gdn", None) == "mamba_backends_triton.backends.TritonGdnBackend"


def test_short_conv_takes_the_triton_backend_without_importing_triton():
    import sys

    from mamba_backends._resolve import resolve_qualname

    p = CudaPlatform()
    path = p.get_mamba_backend_cls("short_conv", None)
    assert path == "mamba_backends_triton.backends.TritonShortConvBackend"
    backend = resolve_qualname(path)
    assert backend.mamba_type == "short_conv" and "cuda" in backend.supported_devices
    assert p.get_mamba_backend_cls("short_conv", "cpu.short_conv") is None  # the user's call
    if "triton" not in sys.modules:  # (another test may have imported it)
        assert "mamba_backends_triton.ops" not in sys.modules


def test_mamba1_takes_the_triton_backend():
    from mamba_backends._resolve import resolve_qualname

    p = CudaPlatform()
    path = p.get_mamba_backend_cls("mamba1", None)
    assert path == "mamba_backends_triton.backends.TritonMamba1Backend"
    backend = resolve_qualname(path)
    assert backend.mamba_type == "mamba1" and "cuda" in backend.supported_devices
    assert p.get_mamba_backend_cls("mamba1", "cpu.mamba1") is None  # the user's call


def test_mamba2_takes_the_triton_backend():
    p = CudaPlatform()
    path = p.get_mamba_backend_cls("mamba2", None)
    assert path == "mamba_backends_triton.backends.TritonMamba2Backend"
    assert p.get_mamba_backend_cls("mamba2", "cpu.mamba2") is None  # the user's call
