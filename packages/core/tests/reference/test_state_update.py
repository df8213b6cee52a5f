"""Spec tests: selective_state_update (Mamba1 form, Mamba2 heads form, spec decoding)."""

from __future__ import annotations

import math

import pytest
import torch
from _ref_utils import close, gen, idx, randn

from mamba_backends.reference.ssd import mamba_chunk_scan_combined_varlen
from mamba_backends.reference.state_update import selective_state_update

F64 = torch.float64


def _heads_inputs(T: int, H: int, P: int, N: int, G: int, seed: int, tied: bool = True) -> dict:
    """Mamba2-style inputs; with ``tied``, dt/A/D/dt_bias are expanded over P (stride 0)."""
    g = gen(seed)
    if tied:
        dt = randn(T, H, g=g, dtype=F64)[:, :, None].expand(-1, -1, P)
        A = (-torch.rand(H, generator=g, dtype=F64) - 0.1)[:, None, None].expand(-1, P, N)
        D = randn(H, g=g, dtype=F64)[:, None].expand(-1, P)
        dt_bias = randn(H, g=g, dtype=F64)[:, None].expand(-1, P)
    else:
        dt = randn(T, H, P, g=g, dtype=F64)
        A = -torch.rand(H, P, N, generator=g, dtype=F64) - 0.1
        D, dt_bias = randn(H, P, g=g, dtype=F64), randn(H, P, g=g, dtype=F64)
    return {
        "x": randn(T, H, P, g=g, dtype=F64),
        "dt": dt,
        "A": A,
        "B": randn(T, G, N, g=g, dtype=F64),
        "C": randn(T, G, N, g=g, dtype=F64),
        "D": D,
        "dt_bias": dt_bias,
        "z": randn(T, H, P, g=g, dtype=F64),
    }


def _ssu(state: torch.Tensor, a: dict, out: torch.Tensor, **kw) -> torch.Tensor:
    return selective_state_update(
        state, a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["dt_bias"], z=a["z"],
        dt_softplus=True, out=out, **kw,
    )  # fmt: skip


def _rows(a: dict, rows: slice | list[int]) -> dict:
    per_token = ("x", "dt", "B", "C", "z")
    return {k: (v[rows] if k in per_token and v is not None else v) for k, v in a.items()}


def test_mamba1_scalar_by_hand() -> None:
    # s' = e^(A dt) s + dt B x = 2/e + 3 ; out = C s' + D x = 2 (2/e + 3) + 5
    state = torch.tensor([[[9.0]], [[2.0]]], dtype=F64)
    one = torch.ones(1, 1, dtype=F64)
    out = torch.zeros(1, 1, dtype=F64)
    res = selective_state_update(
        state, one, one, -torch.ones(1, 1, dtype=F64), 3 * one, 2 * one,
        torch.tensor([5.0], dtype=F64), None, state_batch_indices=idx(1), out=out,
    )  # fmt: skip
    assert res is out
    s1 = 2 / math.e + 3
    close(out, torch.tensor([[2 * s1 + 5]], dtype=F64))
    close(state[1], torch.tensor([[s1]], dtype=F64))
    assert state[0].item() == 9.0


def test_heads_form_tied_equals_untied_and_groups_by_block() -> None:
    T, H, P, N, G = 3, 4, 2, 3, 2
    a = _heads_inputs(T, H, P, N, G, seed=1)
    untied = {k: v.contiguous() for k, v in a.items()}
    s1 = randn(5, H, P, N, g=gen(2), dtype=F64)
    s2 = s1.clone()
    o1, o2 = torch.zeros(T, H, P, dtype=F64), torch.zeros(T, H, P, dtype=F64)
    _ssu(s1, a, o1, state_batch_indices=idx(4, 1, 2))
    _ssu(s2, untied, o2, state_batch_indices=idx(4, 1, 2))
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    # Head h reads group h // (H // G): zeroing group 1 of B leaves heads 2, 3 decaying only.
    s3 = s1.clone()
    b0 = {**untied, "B": untied["B"].clone()}
    b0["B"][:, 1] = 0.0
    _ssu(s3, b0, torch.zeros(T, H, P, dtype=F64), state_batch_indices=idx(4, 1, 2))
    dt = torch.nn.functional.softplus(untied["dt"] + untied["dt_bias"])  # (T, H, P)
    decay = torch.exp(untied["A"][None] * dt[..., None])
    close(s3[[4, 1, 2]][:, 2:], (s1[[4, 1, 2]] * decay)[:, 2:])


def test_mamba1_form_equals_heads_form_with_one_head() -> None:
    T, dim, N = 3, 5, 4
    a = _heads_inputs(T, 1, dim, N, 1, seed=3, tied=False)
    m1 = {k: v[:, 0] if k in ("x", "dt", "B", "C", "z") else v[0] for k, v in a.items()}
    s_heads = randn(4, 1, dim, N, g=gen(4), dtype=F64)
    s_m1 = s_heads[:, 0].clone()
    o_h, o_1 = torch.zeros(T, 1, dim, dtype=F64), torch.zeros(T, dim, dtype=F64)
    _ssu(s_heads, a, o_h, state_batch_indices=idx(3, 1, 2))
    _ssu(s_m1, m1, o_1, state_batch_indices=idx(3, 1, 2))
    close(o_h[:, 0], o_1)  # different shapes: equal up to rounding, not bit for bit
    close(s_heads[:, 0], s_m1)


def test_decode_steps_equal_ssd_prefill() -> None:
    T, H, P, N, G = 6, 4, 3, 2, 2
    a = _heads_inputs(T, H, P, N, G, seed=5)
    init = randn(1, H, P, N, g=gen(6), dtype=F64)
    out_ssd = torch.zeros(T, H, P, dtype=F64)
    final = mamba_chunk_scan_combined_varlen(
        a["x"], a["dt"][:, :, 0], a["A"][:, 0, 0], a["B"], a["C"], 4, idx(0, T), idx(0, 4, T),
        idx(1), idx(0, 0), out_ssd, D=a["D"][:, 0], z=a["z"], dt_bias=a["dt_bias"][:, 0],
        initial_states=init, dt_softplus=True,
    )  # fmt: skip
    state = torch.zeros(3, H, P, N, dtype=F64)
    state[2] = init[0]
    out = torch.zeros(T, H, P, dtype=F64)
    for t in range(T):
        _ssu(state, _rows(a, [t]), out[t : t + 1], state_batch_indices=idx(2))
    close(out, out_ssd, scale=10)
    close(state[2], final[0], scale=10)


def test_null_pad_skipped_and_dst_indices() -> None:
    T, H, P, N = 4, 2, 2, 3
    a = _heads_inputs(T, H, P, N, 1, seed=7)
    state = randn(8, H, P, N, g=gen(8), dtype=F64)
    before = state.clone()
    out = torch.full((T, H, P), 5.0, dtype=F64)
    _ssu(
        state,
        a,
        out,
        state_batch_indices=idx(3, 0, -1, 4),
        dst_state_batch_indices=idx(6, 0, -1, 7),
    )
    assert bool((out[1:3] == 5.0).all())  # skipped rows untouched
    unchanged = [0, 1, 2, 3, 4, 5]  # sources are read, not written; null/pad never written
    assert torch.equal(state[unchanged], before[unchanged])
    ref = before.clone()
    o_ref = torch.zeros(T, H, P, dtype=F64)
    _ssu(ref, a, o_ref, state_batch_indices=idx(3, 5, 1, 4))  # in place, slots 3 and 4
    assert torch.equal(state[6], ref[3]) and torch.equal(state[7], ref[4])
    assert torch.equal(out[[0, 3]], o_ref[[0, 3]])


def test_varlen_and_spec_decode_equal_token_by_token() -> None:
    H, P, N, G = 2, 3, 2, 1
    lens = [3, 1, 2]
    cu = idx(0, 3, 4, 6)
    T = sum(lens)
    a = _heads_inputs(T, H, P, N, G, seed=9)
    base = randn(12, H, P, N, g=gen(10), dtype=F64)
    # Plain varlen multi-token: request r from slot src[r] back into it.
    s_var, o_var = base.clone(), torch.zeros(T, H, P, dtype=F64)
    _ssu(s_var, a, o_var, state_batch_indices=idx(1, 2, 3), cu_seqlens=cu)
    s_tok, o_tok = base.clone(), torch.zeros(T, H, P, dtype=F64)
    for r, slot in enumerate((1, 2, 3)):
        for t in range(int(cu[r]), int(cu[r + 1])):
            _ssu(s_tok, _rows(a, [t]), o_tok[t : t + 1], state_batch_indices=idx(slot))
    close(o_var, o_tok)
    close(s_var, s_tok)
    # Speculative: start from column a-1 of state_batch_indices, write each token's state.
    sbi = torch.tensor([[4, 5, 6], [7, 8, 9], [10, 11, 0]], dtype=torch.int32)
    acc = idx(2, 1, 3)
    s_spec, o_spec = base.clone(), torch.zeros(T, H, P, dtype=F64)
    _ssu(s_spec, a, o_spec, state_batch_indices=sbi, cu_seqlens=cu, num_accepted_tokens=acc)
    s_ref, o_ref = base.clone(), torch.zeros(T, H, P, dtype=F64)
    src = {0: 5, 1: 7, 2: 0}  # sbi[r, a-1]; request 2 starts from the null block: skipped
    for r in (0, 1):
        scratch = s_ref[src[r]].clone()
        for j, t in enumerate(range(int(cu[r]), int(cu[r + 1]))):
            tmp = torch.stack([scratch])
            _ssu(tmp, _rows(a, [t]), o_ref[t : t + 1], state_batch_indices=idx(0),
                 null_block_id=None)  # fmt: skip
            scratch = tmp[0]
            s_ref[sbi[r, j]] = scratch
    close(o_spec[:4], o_ref[:4])
    assert bool((o_spec[4:] == 0).all())
    close(s_spec, s_ref)


@pytest.mark.parametrize(("dtype", "state_dtype"), [(torch.bfloat16, torch.float32),
                                                    (torch.float16, torch.float16),
                                                    (torch.float32, torch.bfloat16)])  # fmt: skip
def test_dtypes(dtype: torch.dtype, state_dtype: torch.dtype) -> None:
    T, H, P, N = 2, 2, 4, 3
    a = {k: v.to(dtype) for k, v in _heads_inputs(T, H, P, N, 1, seed=11).items()}
    state = randn(3, H, P, N, g=gen(12), dtype=state_dtype)
    ref_state = state.to(F64)
    out, ref = torch.zeros(T, H, P, dtype=dtype), torch.zeros(T, H, P, dtype=F64)
    _ssu(state, a, out, state_batch_indices=idx(1, 2))
    _ssu(ref_state, {k: v.to(F64) for k, v in a.items()}, ref, state_batch_indices=idx(1, 2))
    close(out, ref, dtype, scale=4)
    close(state, ref_state, state_dtype, scale=4)


def test_bad_input_names_argument_and_writes_nothing() -> None:
    T, H, P, N = 2, 4, 2, 3
    a = _heads_inputs(T, H, P, N, 2, seed=13)
    state = randn(4, H, P, N, g=gen(14), dtype=F64)
    before = state.clone()
    out = torch.zeros(T, H, P, dtype=F64)
    with pytest.raises(ValueError, match="state_batch_indices"):
        _ssu(state, a, out, state_batch_indices=idx(1, 9))
    with pytest.raises(ValueError, match="dst_state_batch_indices"):
        _ssu(state, a, out, state_batch_indices=idx(1, 2), dst_state_batch_indices=idx(3, 3))
    with pytest.raises(ValueError, match="'B'"):
        _ssu(state, {**a, "B": a["B"][:, :, :2], "C": a["C"][:, :, :2]}, out)
    with pytest.raises(ValueError, match="'B'"):
        _ssu(state, {**a, "B": randn(T, 3, N, g=gen(0)), "C": randn(T, 3, N, g=gen(0))}, out)
    with pytest.raises(ValueError, match="num_accepted_tokens"):
        _ssu(state, a, out, state_batch_indices=idx(1, 2)[:, None], num_accepted_tokens=idx(1, 4))
    with pytest.raises(ValueError, match="'out'"):
        _ssu(state, a, torch.zeros(T, H, P + 1, dtype=F64))
    with pytest.raises(NotImplementedError, match="enable_stochastic_rounding"):
        _ssu(state, a, out, enable_stochastic_rounding=True)
    assert torch.equal(state, before) and bool((out == 0).all())
