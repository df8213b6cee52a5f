"""Simulated ROCm torch for the platform tests, and fake ``aiter`` modules.

``rocm_torch`` makes this CPU torch look like ROCm torch with a device (``torch.version.hip``
set, ``torch.cuda.is_available()`` true) and forgets the current platform, the backend cache
and the vendor-native probe answers before and after, so each test discovers afresh.
``fake_aiter(conv_update=..., chunk=...)`` installs modules under aiter's real module paths.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from mamba_backends import reset_current_platform
from mamba_backends_rocm._native import clear_native_status
from mamba_backends_rocm.aiter import AITER_CHUNK_GDN, AITER_CONV_UPDATE


def _forget() -> None:
    clear_native_status()
    reset_current_platform()


@pytest.fixture
def rocm_torch(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "AMD Instinct MI300X (simulated)")
    monkeypatch.delenv("MAMBA_BACKENDS_PLATFORM", raising=False)
    monkeypatch.delenv("MAMBA_BACKENDS_ROCM_NATIVE", raising=False)
    # The vendor-native probes run on this CPU (the kernels under test are fakes).
    from mamba_backends_rocm.platform import RocmPlatform

    monkeypatch.setattr(RocmPlatform, "probe_device", "cpu")
    _forget()
    yield monkeypatch
    _forget()


@pytest.fixture
def no_aiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import aiter`` fails, as on a machine without amd-aiter."""
    for name in list(sys.modules):
        if name == "aiter" or name.startswith("aiter."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aiter", None)  # None in sys.modules: ImportError


@pytest.fixture
def fake_aiter(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def install(conv_update: Callable[..., Any] | None = None,
                chunk: Callable[..., Any] | None = None) -> None:  # fmt: skip
        for name in ("aiter", "aiter.ops", "aiter.ops.triton"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        for (module, fn_name), fn in ((AITER_CONV_UPDATE, conv_update), (AITER_CHUNK_GDN, chunk)):
            mod = types.ModuleType(module)
            if fn is not None:
                setattr(mod, fn_name, fn)
            monkeypatch.setitem(sys.modules, module, mod)

    return install
