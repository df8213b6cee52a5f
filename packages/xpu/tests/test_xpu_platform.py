"""The XPU probe claims the machine only when torch.xpu is usable."""

from __future__ import annotations

import types

import torch

from mamba_backends_xpu import platform_path
from mamba_backends_xpu.platform import XpuPlatform


def test_probe(monkeypatch):
    monkeypatch.setattr(torch, "xpu", types.SimpleNamespace(is_available=lambda: True))
    assert platform_path() == "mamba_backends_xpu.platform.XpuPlatform"
    monkeypatch.setattr(torch, "xpu", types.SimpleNamespace(is_available=lambda: False))
    assert platform_path() is None
    monkeypatch.delattr(torch, "xpu")
    assert platform_path() is None


def test_platform_facts():
    p = XpuPlatform()
    assert (p.name, p.device_type, p.is_accelerator) == ("xpu", "xpu", True)
