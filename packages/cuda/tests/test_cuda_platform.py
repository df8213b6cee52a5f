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
    assert p.get_mamba_backend_cls("mamba2", None) is None  # defers until kernels land
