"""The ROCm probe claims the machine only on ROCm torch with a usable device."""

from __future__ import annotations

import torch

from mamba_backends_rocm import platform_path
from mamba_backends_rocm.platform import RocmPlatform


def test_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert platform_path() == "mamba_backends_rocm.platform.RocmPlatform"
    monkeypatch.setattr(torch.version, "hip", None)
    assert platform_path() is None


def test_platform_facts():
    p = RocmPlatform()
    assert (p.name, p.device_type, p.is_accelerator) == ("rocm", "cuda", True)
    assert p.get_mamba_backend_cls("gdn", None) is None
