"""CPU selective_state_update (decode) against the spec, native and pure-PyTorch paths."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
import torch
from cpu_checks import CountOps, close

from mamba_backends.reference import state_update as spec
from mamba_backends_cpu.native import ssm as _native
from mamba_backends_cpu.ops import state_update as cpu


def test_native_builds_here() -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    if os.environ.get("MAMBA_BACKENDS_CPU_NATIVE", "1") == "0":
        pytest.skip("native kernels disabled by MAMBA_BACKENDS_CPU_NATIVE=0")
    assert _native.available()


def state_pool(slots: int, H: int, P: int, N: int, dtype, layout: str, gen) -> torch.Tensor:
    """``(slots, H, P, N)`` with a contiguous, paged (slot stride > state size) or transposed
    (``P``/``N`` swapped in memory) layout."""
    if layout == "page":
        page = torch.randn(slots, H * P * N + 5, generator=gen).to(dtype)
        return page[:, 3 : 3 + H * P * N].unflatten(1, (H, P, N))
    if layout == "transposed":
        return torch.randn(slots, H, N, P, generator=gen).to(dtype).transpose(2, 3)
    return torch.randn(slots, H, P, N, generator=gen).to(dtype)


def inputs(b: int, H: int, P: int, N: int, G: int, dtype, tied: bool, gen, z: bool = True):
    x = torch.randn(b, H, P, generator=gen).to(dtype)
    if tied:  # Mamba2: per-head dt/A/D/dt_bias broadcast over P (and N) with stride 0
        dt = torch.randn(b, H, generator=gen).to(dtype)[:, :, None].expand(b, H, P)
        A = (-torch.rand(H, generator=gen) * 3)[:, None, None].expand(H, P, N)
        D = torch.randn(H, generator=gen)[:, None].expand(H, P)
        dt_bias = torch.randn(H, generator=gen)[:, None].expand(H, P)
    else:
        dt = torch.randn(b, H, P, generator=gen).to(dtype)
        A = -torch.rand(H, P, N, generator=gen) * 3
        D = torch.randn(H, P, generator=gen)
        dt_bias = torch.randn(H, P, generator=gen)
    B = torch.randn(b, G, N, generator=gen).to(dtype)
    C = torch.randn(b, G, N, generator=gen).to(dtype)
    zz = torch.randn(b, H, P, generator=gen).to(dtype) if z else None
    return x, dt, A, B, C, D, dt_bias, zz


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("layout", ["contig", "page", "transposed"])
@pytest.mark.parametrize("N", [16, 128])  # 128 takes the kernel's unrolled fast rows
def test_heads_form_matches_spec(path, dtype, state_dtype, tied, layout, N) -> None:
    gen = torch.Generator().manual_seed(11)
    b, H, P, G = 5, 4, 8, 2
    state = state_pool(9, H, P, N, state_dtype, layout, gen)
    x, dt, A, B, C, D, dt_bias, z = inputs(b, H, P, N, G, dtype, tied, gen)
    idx = torch.tensor([3, 0, 7, -1, 2], dtype=torch.int32)  # null and pad entries
    before, ref_state = state.clone(), state.clone()
    out = torch.full((b, H, P), 5.0, dtype=dtype)
    out_ref = out.clone()
    args = (x, dt, A, B, C, D, dt_bias)
    kw: dict[str, Any] = dict(
        z=z, dt_softplus=True, state_batch_indices=idx, dst_state_batch_indices=idx
    )
    res = cpu.selective_state_update(state, *args, **kw, out=out)
    spec.selective_state_update(ref_state, *args, **kw, out=out_ref)
    assert res is out
    close(out, out_ref, dtype)
    assert torch.equal(out[1], torch.full_like(out[1], 5.0))  # null row untouched
    assert torch.equal(out[3], torch.full_like(out[3], 5.0))  # pad row untouched
    close(state, ref_state, state_dtype)
    for s in (0, 1, 4, 5, 6, 8):
        assert torch.equal(state[s], before[s]), f"slot {s} changed"


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_mamba1_form_and_dst_slots(path, state_dtype) -> None:
    gen = torch.Generator().manual_seed(12)
    b, Dm, N = 4, 24, 16
    state = torch.randn(8, Dm, N, generator=gen).to(state_dtype)
    # (batch, dim) views with a non-unit channel stride, as vLLM's Mamba1 mixer passes them
    x, dt, z = (torch.randn(Dm, b, generator=gen).t() for _ in range(3))
    A = -torch.exp(torch.rand(Dm, N, generator=gen) * 2)
    B, C = torch.randn(b, N, generator=gen), torch.randn(b, N, generator=gen)
    D, dt_bias = torch.randn(Dm, generator=gen), torch.randn(Dm, generator=gen)
    src = torch.tensor([5, 2, 3, 1], dtype=torch.int32)
    dst = torch.tensor([6, 0, 4, 7], dtype=torch.int32)  # dst null: computed, not written
    ref_state, before = state.clone(), state.clone()
    args = (x, dt, A, B, C, D, dt_bias)
    kw: dict[str, Any] = dict(
        z=z, dt_softplus=True, state_batch_indices=src, dst_state_batch_indices=dst
    )
    out = torch.zeros(Dm, b).t()
    res = cpu.selective_state_update(state, *args, **kw, out=out)
    ref = spec.selective_state_update(ref_state, *args, **kw, out=torch.zeros(b, Dm))
    assert res is out
    close(out, ref, torch.float32)
    close(state, ref_state, state_dtype)
    for s in (0, 1, 2, 3, 5):
        assert torch.equal(state[s], before[s])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("N", [16, 4100])  # 4100: rows wider than the kernel's B/C buffer
def test_params_in_model_dtype_and_strided_rows(path, dtype, tied, N) -> None:
    """vLLM's Mamba2 mixer keeps D and dt_bias in the model dtype (A in fp32): every input is
    read in its own dtype, B/C rows with a non-unit stride, and ``out`` written in x's."""
    gen = torch.Generator().manual_seed(17)
    b, H, P, G = 3, 2, 4, 1
    state = state_pool(6, H, P, N, torch.float32, "contig", gen)
    x, dt, A, B, C, D, dt_bias, z = inputs(b, H, P, N, G, dtype, tied, gen)
    D, dt_bias = D.to(dtype), dt_bias.to(dtype)
    if not tied:
        A = A.to(dtype)
    B = torch.randn(b, G, 2 * N, generator=gen).to(dtype)[..., ::2]  # n stride 2
    C = torch.randn(b, G, N, 2, generator=gen).to(dtype)[..., 1]
    idx = torch.tensor([4, -1, 1], dtype=torch.int64)
    ref_state, before = state.clone(), state.clone()
    args = (x, dt, A, B, C, D, dt_bias)
    kw: dict[str, Any] = dict(z=z, dt_softplus=True, state_batch_indices=idx)
    out = torch.full((b, H, P), 5.0, dtype=dtype)
    cpu.selective_state_update(state, *args, **kw, out=out)
    ref = spec.selective_state_update(
        ref_state, *args, **kw, out=torch.full((b, H, P), 5.0, dtype=dtype)
    )
    close(out, ref, dtype)
    close(state, ref_state, torch.float32)
    assert torch.equal(out[1], torch.full_like(out[1], 5.0))  # pad row untouched
    for s in (0, 2, 3, 5):
        assert torch.equal(state[s], before[s]), f"slot {s} changed"


def test_native_decode_converts_nothing(path) -> None:
    """vLLM's Mamba2 decode step (bf16 activations and D/dt_bias, fp32 A and pool, stride-0
    expansions, int32 slots, preallocated out) reaches the C kernel without a conversion copy
    or an allocation: the kernel reads every input in its own dtype. Each ATen op costs tens
    of microseconds with cold caches."""
    if path != "native":
        pytest.skip("the native path's dispatch count")
    gen = torch.Generator().manual_seed(18)
    b, H, P, N, G = 4, 3, 8, 16, 1
    bf = torch.bfloat16
    state = state_pool(6, H, P, N, torch.float32, "contig", gen)
    x, dt, A, B, C, D, dt_bias, _ = inputs(b, H, P, N, G, bf, True, gen, z=False)
    D = torch.randn(H, generator=gen).to(bf)[:, None].expand(H, P)
    dt_bias = torch.randn(H, generator=gen).to(bf)[:, None].expand(H, P)
    kw: dict[str, Any] = dict(
        D=D, dt_bias=dt_bias, dt_softplus=True,
        state_batch_indices=torch.tensor([5, 0, 2, 3], dtype=torch.int32),
        out=torch.empty(b, H, P, dtype=bf),
    )  # fmt: skip
    cpu.selective_state_update(state, x, dt, A, B, C, **kw)
    with CountOps() as seen:
        cpu.selective_state_update(state, x, dt, A, B, C, **kw)
    assert set(seen.ops) <= {"slice", "select", "view"}, seen.ops


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("N", [8, 48])  # 48: an odd count of 16-lane vectors; 8: none
def test_2d_strided_indices_distinct_dst(path, state_dtype, index_dtype, N) -> None:
    """(R, T) index tables (column 0 is a strided view) in either int dtype, dst != src."""
    gen = torch.Generator().manual_seed(16)
    b, H, P, G = 4, 3, 5, 1
    state = state_pool(12, H, P, N, state_dtype, "contig", gen)
    x, dt, A, B, C, D, dt_bias, z = inputs(b, H, P, N, G, torch.float32, True, gen)
    src = torch.tensor([[4, 1, 1], [9, 2, 2], [0, 3, 3], [6, 5, 5]], dtype=index_dtype)
    dst = torch.tensor([[7, 1, 1], [10, 2, 2], [11, 3, 3], [-1, 5, 5]], dtype=index_dtype)
    ref_state, before = state.clone(), state.clone()
    kw: dict[str, Any] = dict(
        z=z, dt_softplus=True, state_batch_indices=src, dst_state_batch_indices=dst
    )
    out = torch.full((b, H, P), 5.0)
    cpu.selective_state_update(state, x, dt, A, B, C, D, dt_bias, **kw, out=out)
    ref = spec.selective_state_update(
        ref_state, x, dt, A, B, C, D, dt_bias, **kw, out=torch.full((b, H, P), 5.0)
    )
    close(out, ref, torch.float32)
    close(state, ref_state, state_dtype)
    assert torch.equal(out[2], torch.full_like(out[2], 5.0))  # null source: row untouched
    for s in (0, 1, 2, 3, 4, 5, 6, 8, 9):
        assert torch.equal(state[s], before[s]), f"slot {s} changed"


def test_no_indices_no_z_no_D(path) -> None:
    gen = torch.Generator().manual_seed(13)
    b, H, P, N = 3, 2, 4, 8
    state = torch.randn(b, H, P, N, generator=gen)
    ref_state = state.clone()
    x, dt, A, B, C, _, _, _ = inputs(b, H, P, N, 1, torch.float32, True, gen, z=False)
    out = cpu.selective_state_update(state, x, dt, A, B, C)
    ref = spec.selective_state_update(ref_state, x, dt, A, B, C)
    close(out, ref, torch.float32)
    close(state, ref_state, torch.float32)


def test_varlen_and_speculative_decoding() -> None:
    gen = torch.Generator().manual_seed(14)
    H, P, N = 2, 4, 8
    cu = torch.tensor([0, 3, 4, 6], dtype=torch.int32)
    T = 6
    x, dt, A, B, C, D, dt_bias, z = inputs(T, H, P, N, 1, torch.float32, True, gen)
    # varlen, non-spec: column 0 in and out
    state = torch.randn(10, H, P, N, generator=gen)
    ref_state = state.clone()
    idx = torch.tensor([4, 0, 6], dtype=torch.int32)
    kw: dict[str, Any] = dict(z=z, dt_softplus=True, state_batch_indices=idx, cu_seqlens=cu)
    out = cpu.selective_state_update(
        state, x, dt, A, B, C, D, dt_bias, **kw, out=torch.zeros(T, H, P)
    )
    ref = spec.selective_state_update(
        ref_state, x, dt, A, B, C, D, dt_bias, **kw, out=torch.zeros(T, H, P)
    )
    close(out, ref, torch.float32)
    close(state, ref_state, torch.float32)
    # speculative: read column a-1, write every token's state to its dst column
    state = torch.randn(16, H, P, N, generator=gen)
    ref_state, before = state.clone(), state.clone()
    src = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.int32)
    dst = torch.tensor([[10, 11, 12], [13, 0, 0], [14, 15, 0]], dtype=torch.int32)
    acc = torch.tensor([2, 1, 3], dtype=torch.int32)
    kw = dict(
        z=z, dt_softplus=True, state_batch_indices=src, dst_state_batch_indices=dst,
        num_accepted_tokens=acc, cu_seqlens=cu,
    )  # fmt: skip
    out = cpu.selective_state_update(state, x, dt, A, B, C, D, dt_bias, **kw)
    ref = spec.selective_state_update(ref_state, x, dt, A, B, C, D, dt_bias, **kw)
    close(out, ref, torch.float32)
    close(state, ref_state, torch.float32)
    assert torch.equal(state[:10], before[:10])


def test_bad_input_raises_before_any_write(path) -> None:
    gen = torch.Generator().manual_seed(15)
    b, H, P, N = 2, 2, 4, 8
    state = torch.randn(4, H, P, N, generator=gen)
    before = state.clone()
    x, dt, A, B, C, D, dt_bias, z = inputs(b, H, P, N, 1, torch.float32, True, gen)
    with pytest.raises(ValueError, match="state_batch_indices"):
        cpu.selective_state_update(
            state, x, dt, A, B, C, D, dt_bias, state_batch_indices=torch.tensor([1, 4])
        )
    with pytest.raises(ValueError, match="'B'"):
        cpu.selective_state_update(state, x, dt, A, B[:, :, :4], C, D, dt_bias)
    with pytest.raises(ValueError, match="'state'"):
        cpu.selective_state_update(state.expand(4, H, P, N)[:, :1].expand(4, H, P, N), x, dt, A,
                                   B, C, D, dt_bias)  # fmt: skip
    with pytest.raises(NotImplementedError, match="enable_stochastic_rounding"):
        cpu.selective_state_update(state, x, dt, A, B, C, D, enable_stochastic_rounding=True)
    assert torch.equal(state, before)
