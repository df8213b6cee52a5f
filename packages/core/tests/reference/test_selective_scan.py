"""Spec tests: selective_scan_fn (Mamba1 varlen prefill)."""

from __future__ import annotations

import math

import pytest
import torch
from _ref_utils import close, gen, idx, randn

from mamba_backends.reference.selective_scan import selective_scan_fn
from mamba_backends.reference.state_update import selective_state_update

F64 = torch.float64


def _inputs(dim: int, N: int, T: int, G: int, seed: int, dtype: torch.dtype = F64) -> dict:
    g = gen(seed)
    return {
        "u": randn(dim, T, g=g, dtype=dtype),
        "delta": randn(dim, T, g=g, dtype=dtype),
        "A": -torch.rand(dim, N, generator=g, dtype=F64).to(dtype) - 0.1,
        "B": randn(G, N, T, g=g, dtype=dtype),
        "C": randn(G, N, T, g=g, dtype=dtype),
        "D": randn(dim, g=g, dtype=dtype),
        "z": randn(dim, T, g=g, dtype=dtype),
        "delta_bias": randn(dim, g=g, dtype=dtype),
    }


def _run(inp: dict, states: torch.Tensor, qsl, cache, has_init, **kw) -> torch.Tensor:
    a = {k: (v.clone() if k in ("delta", "z") and v is not None else v) for k, v in inp.items()}
    return selective_scan_fn(
        a["u"], states, a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
        delta_softplus=True, query_start_loc=qsl, cache_indices=cache, has_initial_state=has_init,
        **kw,
    )  # fmt: skip


def test_scalar_recurrence_by_hand() -> None:
    # dim = N = 1, A = -1, dt = 1, B = C = 1, u = 1: h1 = 1, h2 = e^-1 + 1; y += D u; y *= silu(z)
    u = torch.ones(1, 2, dtype=F64)
    delta = torch.ones(1, 2, dtype=F64)
    A = -torch.ones(1, 1, dtype=F64)
    B = torch.ones(1, 1, 2, dtype=F64)
    C = torch.ones(1, 1, 2, dtype=F64)
    states = torch.full((2, 1, 1), 7.0, dtype=F64)
    no_init = torch.tensor([False])
    y = selective_scan_fn(u, states, delta, A, B, C, query_start_loc=idx(0, 2),
                          cache_indices=idx(1), has_initial_state=no_init)  # fmt: skip
    assert y is delta
    close(y, torch.tensor([[1.0, 1.0 + math.exp(-1)]], dtype=F64))
    close(states[1], torch.tensor([[1.0 + math.exp(-1)]], dtype=F64))
    assert states[0].item() == 7.0
    # With initial state h0 = 2, D = 3 and gate z = 1.
    states[1] = 2.0
    z = torch.ones(1, 2, dtype=F64)
    y = selective_scan_fn(u, states, torch.ones(1, 2, dtype=F64), A, B, C,
                          D=torch.tensor([3.0], dtype=F64), z=z, query_start_loc=idx(0, 2),
                          cache_indices=idx(1), has_initial_state=torch.tensor([True]))  # fmt: skip
    h1 = 2 * math.exp(-1) + 1
    h2 = h1 * math.exp(-1) + 1
    gate = 1 / (1 + math.exp(-1))
    assert y is z
    close(y, torch.tensor([[(h1 + 3) * gate, (h2 + 3) * gate]], dtype=F64))
    close(states[1], torch.tensor([[h2]], dtype=F64))


def test_groups_map_to_channels_by_block() -> None:
    dim, N, T, G = 4, 3, 5, 2
    inp = _inputs(dim, N, T, G, seed=1)
    inp["B"][1] = 0.0  # group 1 feeds channels 2 and 3 only
    inp["z"] = None
    states = torch.zeros(1, dim, N, dtype=F64)
    y = _run(inp, states, idx(0, T), None, None)
    close(y[2:], inp["D"][2:, None] * inp["u"][2:])  # no state contribution
    assert bool((states[0, 2:] == 0).all()) and bool((states[0, :2] != 0).all())


def test_split_and_decode_equal_one_shot() -> None:
    dim, N, T = 6, 4, 9
    inp = _inputs(dim, N, T, 1, seed=2)
    s_one = randn(3, dim, N, g=gen(9), dtype=F64).transpose(1, 2).contiguous().transpose(1, 2)
    s_split = s_one.clone()
    ref = _run(inp, s_one, idx(0, T), idx(2), torch.tensor([True]))

    def piece(a: int, b: int) -> dict:
        return {k: v[..., a:b] if k in ("u", "delta", "B", "C", "z") else v for k, v in inp.items()}

    y1 = _run(piece(0, 4), s_split, idx(0, 4), idx(2), torch.tensor([True]))
    y2 = _run(piece(4, 7), s_split, idx(0, 3), idx(2), torch.tensor([True]))
    ys = [y1, y2]
    for t in range(7, T):  # Mamba1 decode through selective_state_update
        p = piece(t, t + 1)
        out = torch.empty(1, dim, dtype=F64)
        selective_state_update(
            s_split, p["u"].T, p["delta"].T, inp["A"], p["B"][0].T, p["C"][0].T, inp["D"],
            inp["delta_bias"], z=p["z"].T, dt_softplus=True, state_batch_indices=idx(2),
            dst_state_batch_indices=idx(2), out=out,
        )  # fmt: skip
        ys.append(out.T)
    close(torch.cat(ys, dim=1), ref, scale=10)
    close(s_split, s_one, scale=10)


def test_batch_equals_alone_pad_null_untouched_strided_states() -> None:
    dim, N, slots = 4, 3, 7
    lens = [3, 2, 4, 1]
    T = sum(lens)
    qsl = idx(*[sum(lens[:i]) for i in range(len(lens) + 1)])
    inp = _inputs(dim, N, T, 2, seed=3)
    buf = randn(slots, N, dim, g=gen(4), dtype=F64)
    states = buf.transpose(1, 2)  # strided (slots, dim, N)
    before = states.clone()
    cache, has_init = idx(5, 0, 2, -1), torch.tensor([True, True, False, True])
    out = _run(inp, states, qsl, cache, has_init)
    keep = [0, 1, 3, 4, 6]
    assert torch.equal(states[keep], before[keep])  # null (0), pad (-1) and unused slots
    assert torch.equal(out[:, 3:5], inp["z"][:, 3:5])  # skipped sequence: output untouched
    for i in (0, 2):
        alone = before.clone()
        sub = {k: v[..., qsl[i] : qsl[i + 1]] if k in ("u", "delta", "B", "C", "z") else v
               for k, v in inp.items()}  # fmt: skip
        y = _run(sub, alone, idx(0, lens[i]), cache[i : i + 1], has_init[i : i + 1])
        # Computed values: a batch and a sequence alone may round differently by an ulp (torch's
        # AVX2 and AVX-512 kernels vectorise tensors of different lengths differently), so they
        # are compared at float64 precision; the canary slots above stay bit-identical.
        close(y, out[:, qsl[i] : qsl[i + 1]])
        close(alone[cache[i]], states[cache[i]])
        other = [s for s in range(slots) if s != int(cache[i])]
        assert torch.equal(alone[other], before[other])  # alone wrote only its own slot


def test_batched_layout_equals_varlen() -> None:
    dim, N, L, nb = 4, 2, 5, 2
    inp = _inputs(dim, N, L * nb, 1, seed=5)
    s1 = torch.zeros(2, dim, N, dtype=F64)
    s2 = s1.clone()
    y_var = _run(inp, s1, idx(0, L, 2 * L), idx(0, 1), None, null_block_id=None)
    bat = {k: v for k, v in inp.items()}
    for k in ("u", "delta", "z"):
        bat[k] = inp[k].reshape(dim, nb, L).transpose(0, 1).contiguous()
    bat["B"] = inp["B"][0].reshape(N, nb, L).transpose(0, 1).contiguous()  # (batch, N, L)
    bat["C"] = inp["C"][0].reshape(N, nb, L).transpose(0, 1).contiguous()
    y_bat = _run(bat, s2, None, None, None)
    close(y_bat.transpose(0, 1).reshape(dim, nb * L), y_var)
    close(s2, s1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype: torch.dtype) -> None:
    dim, N, T = 4, 3, 6
    inp = _inputs(dim, N, T, 1, seed=6, dtype=dtype)
    states = torch.zeros(1, dim, N, dtype=dtype)
    ref_states = states.to(F64)
    y = _run(inp, states, idx(0, T), None, None)
    ref = _run({k: v.to(F64) for k, v in inp.items()}, ref_states, idx(0, T), None, None)
    assert y.dtype == dtype and states.dtype == dtype
    close(y, ref, dtype, scale=4)
    close(states, ref_states, dtype, scale=4)


def test_bad_input_names_argument_and_writes_nothing() -> None:
    dim, N, T = 4, 3, 5
    inp = _inputs(dim, N, T, 1, seed=7)
    states = torch.zeros(3, dim, N, dtype=F64)
    z0 = inp["z"].clone()
    with pytest.raises(ValueError, match="cache_indices"):
        _run(inp, states, idx(0, 2, T), idx(1, 3), None)
    with pytest.raises(ValueError, match="'B'"):
        _run({**inp, "B": inp["B"][:, :, :4]}, states, idx(0, T), idx(1), None)
    with pytest.raises(ValueError, match="'B'"):
        bad = randn(3, N, T, g=gen(1), dtype=F64)  # 3 groups do not divide dim = 4
        _run({**inp, "B": bad, "C": bad}, states, idx(0, T), idx(1), None)
    with pytest.raises(TypeError, match="has_initial_state"):
        _run(inp, states, idx(0, T), idx(1), torch.tensor([0.5]))
    with pytest.raises(NotImplementedError, match="initial_state_idx"):
        _run(inp, states, idx(0, T), idx(1), None, initial_state_idx=idx(0))
    assert bool((states == 0).all()) and torch.equal(inp["z"], z0)
