"""The bench's ``torch`` baseline runs the CPU backend's own PyTorch path, native kernels off."""

from __future__ import annotations

import os
from typing import Any

import torch

from mamba_backends.bench import baselines as bl
from mamba_backends.bench.inputs import conv1d_update
from mamba_backends_cpu.backends import CpuMamba2Backend
from mamba_backends_cpu.native import conv as native_conv


def test_torch_baseline_switches_native_off_only_inside_the_call(monkeypatch: Any) -> None:
    seen: list[tuple[str | None, bool]] = []
    real = native_conv.lib

    def spy() -> Any:
        lib = real()
        seen.append((os.environ.get("MAMBA_BACKENDS_CPU_NATIVE"), lib is not None))
        return lib

    monkeypatch.setattr(native_conv, "lib", spy)
    monkeypatch.delenv("MAMBA_BACKENDS_CPU_NATIVE", raising=False)
    impl = bl.pytorch_path_impl(CpuMamba2Backend, "causal_conv1d_update")
    assert impl.call is not None and not impl.unavailable
    inputs = conv1d_update({"dim": 16, "W": 4, "batch": 3}, torch.float32, torch.device("cpu"))
    fresh = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.args.items()}
    out = impl.call(dict(inputs.args)).clone()
    assert seen == [("0", False)]  # the native library was off for this call only
    assert "MAMBA_BACKENDS_CPU_NATIVE" not in os.environ
    native = bl.ops_impl("ours", CpuMamba2Backend.ops(), "causal_conv1d_update").call
    assert native is not None
    ref = native(fresh)
    assert seen[-1][0] is None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cpu_backends_declare_their_pytorch_path() -> None:
    assert CpuMamba2Backend.pytorch_path_env == {"MAMBA_BACKENDS_CPU_NATIVE": "0"}
