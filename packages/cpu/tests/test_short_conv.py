"""CPU LFM2 short_conv_mixer against the spec."""

from __future__ import annotations

import pytest
import torch

from mamba_backends.reference import short_conv as spec
from mamba_backends_cpu.ops import short_conv as cpu

TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a, e = actual.double(), expected.double()
    scale = max(e.abs().max().item(), 1e-3)
    err = (a - e).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max err {err:.3g} vs scale {scale:.3g} ({dtype})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("mix", ["decode", "prefill", "both"])
def test_matches_spec(dtype, state_dtype, W, mix) -> None:
    gen = torch.Generator().manual_seed(W)
    dim = 12
    kw: dict = {}
    Td = Tp = 0
    if mix in ("decode", "both"):
        kw["state_indices_d"] = torch.tensor([3, 0, 5], dtype=torch.int32)  # one null decode
        Td = 3
    if mix in ("prefill", "both"):
        lens = [4, 1, 9]
        kw["query_start_loc_p"] = torch.tensor([0, 4, 5, 14], dtype=torch.int32)
        kw["state_indices_p"] = torch.tensor([2, -1, 7], dtype=torch.int32)
        kw["has_initial_states_p"] = torch.tensor([True, False, False])
        Tp = sum(lens)
    T = Td + Tp + 2  # two padding rows at the end
    B, C, x = (torch.randn(T, dim, generator=gen).to(dtype) for _ in range(3))
    weight, bias = torch.randn(dim, W, generator=gen), torch.randn(dim, generator=gen)
    st = torch.randn(9, W - 1, dim, generator=gen).to(state_dtype).transpose(1, 2)
    ref_st, before = st.clone(), st.clone()
    y = cpu.short_conv_mixer(B, C, x, weight, bias, st, **kw)
    ref = spec.short_conv_mixer(B, C, x, weight, bias, ref_st, **kw)
    close(y, ref, dtype)
    close(st, ref_st, state_dtype)
    for s in (0, 1, 4, 6, 8):
        assert torch.equal(st[s], before[s])


def test_errors_name_the_op_argument_before_any_write() -> None:
    dim, W = 8, 4
    B = C = x = torch.randn(5, dim)
    weight = torch.randn(dim, W)
    st = torch.randn(4, dim, W - 1)
    before = st.clone()
    with pytest.raises(ValueError, match="state_indices_p"):
        cpu.short_conv_mixer(
            B, C, x, weight, None, st, query_start_loc_p=torch.tensor([0, 3], dtype=torch.int32),
            state_indices_p=torch.tensor([9], dtype=torch.int32),
            state_indices_d=torch.tensor([1, 2], dtype=torch.int32),
        )  # fmt: skip
    with pytest.raises(ValueError, match="state_indices_p"):
        cpu.short_conv_mixer(
            B, C, x, weight, None, st, query_start_loc_p=torch.tensor([0, 3], dtype=torch.int32)
        )
    assert torch.equal(st, before)
