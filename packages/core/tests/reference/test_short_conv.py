"""Spec tests: short_conv_mixer (LFM2 core: B*x, causal conv, C*y)."""

from __future__ import annotations

import pytest
import torch
from _ref_utils import close, gen, idx, randn, sd_conv_states

from mamba_backends.reference.short_conv import short_conv_mixer

F64 = torch.float64


def test_by_hand() -> None:
    # dim 1, W 2, weight (1, 2): conv(v)[t] = v[t-1] + 2 v[t]; B = 2, C = 3, x = (1, 2).
    B = torch.full((2, 1), 2.0, dtype=F64)
    C = torch.full((2, 1), 3.0, dtype=F64)
    x = torch.tensor([[1.0], [2.0]], dtype=F64)
    w = torch.tensor([[1.0, 2.0]], dtype=F64)
    state = torch.zeros(2, 1, 1, dtype=F64)
    y = short_conv_mixer(B, C, x, w, None, state, idx(0, 2), idx(1), torch.tensor([False]))
    assert y.tolist() == [[3 * (2 * 2.0)], [3 * (2.0 + 2 * 4.0)]]
    assert state[1].tolist() == [[4.0]]
    # one decode token with that state: Bx = 2 * 5 = 10 -> 3 * (4 + 2 * 10)
    y = short_conv_mixer(B[:1], C[:1], torch.tensor([[5.0]], dtype=F64), w, None, state,
                         state_indices_d=idx(1))  # fmt: skip
    assert y.tolist() == [[3 * (4.0 + 20.0)]]
    assert state[1].tolist() == [[10.0]]


def test_mixed_batch_equals_decode_and_prefill_apart() -> None:
    g = gen(1)
    dim, W, slots = 6, 3, 7
    Td, lens_p = 2, [4, 1]
    T = Td + sum(lens_p) + 2  # two padding rows at the end
    B, C, x = (randn(T, dim, g=g) for _ in range(3))
    w, b = randn(dim, W, g=g), randn(dim, g=g)
    states = sd_conv_states(slots, dim, W, g)
    before = states.clone()
    qsl_p, si_p, hi_p = idx(0, 4, 5), idx(3, 0), torch.tensor([True, False])
    y = short_conv_mixer(B, C, x, w, b, states, qsl_p, si_p, hi_p, state_indices_d=idx(5, 1))
    assert y.shape == (Td + 5, dim)
    apart = before.clone()
    y_d = short_conv_mixer(B[:Td], C[:Td], x[:Td], w, b, apart, state_indices_d=idx(5, 1))
    y_p = short_conv_mixer(B[Td:], C[Td:], x[Td:], w, b, apart, qsl_p, si_p, hi_p)
    close(y, torch.cat([y_d, y_p]), torch.float32)  # computed: up to rounding
    close(states, apart, torch.float32)
    assert bool((y[Td + 4] == 0).all())  # prefill on the null block: skipped, zero output
    keep = [0, 2, 4, 6]
    assert torch.equal(states[keep], before[keep])


def test_prefill_then_decode_equals_one_shot() -> None:
    g = gen(2)
    dim, W, T = 4, 4, 7
    B, C, x = (randn(T, dim, g=g, dtype=F64) for _ in range(3))
    w = randn(dim, W, g=g, dtype=F64)
    s1 = torch.zeros(2, dim, W - 1, dtype=F64)
    s2 = s1.clone()
    y = short_conv_mixer(B, C, x, w, None, s1, idx(0, T), idx(1), torch.tensor([False]))
    ys = [short_conv_mixer(B[:4], C[:4], x[:4], w, None, s2, idx(0, 4), idx(1), None)]
    for t in range(4, T):
        ys.append(short_conv_mixer(B[t : t + 1], C[t : t + 1], x[t : t + 1], w, None, s2,
                                   state_indices_d=idx(1)))  # fmt: skip
    close(torch.cat(ys), y)
    close(s2, s1)


def test_bad_input_raises_before_any_write() -> None:
    g = gen(3)
    dim, W = 4, 3
    B, C, x = (randn(5, dim, g=g) for _ in range(3))
    w = randn(dim, W, g=g)
    states = sd_conv_states(4, dim, W, g)
    before = states.clone()
    with pytest.raises(ValueError, match="state_indices_p"):  # the prefill half is bad
        short_conv_mixer(B, C, x, w, None, states, idx(0, 3), idx(9), None,
                         state_indices_d=idx(2, 3))  # fmt: skip
    with pytest.raises(ValueError, match="state_indices_p"):
        short_conv_mixer(B, C, x, w, None, states, idx(0, 3))
    with pytest.raises(ValueError, match="state_indices_d"):
        short_conv_mixer(B, C, x, w, None, states, state_indices_d=idx(1, 1))
    with pytest.raises(ValueError, match="'C'"):
        short_conv_mixer(B, C[:, :2], x, w, None, states, state_indices_d=idx(1))
    assert torch.equal(states, before)
