"""Spec tests: causal_conv1d_fn / causal_conv1d_update (hand cases, invariants, serving rules)."""

from __future__ import annotations

import math

import pytest
import torch
from _ref_utils import close, gen, idx, randn, sd_conv_states

from mamba_backends.reference.conv1d import causal_conv1d_fn, causal_conv1d_update

F64 = torch.float64


def silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------


def test_fn_width2_by_hand() -> None:
    # y[t] = 1 * x[t-1] + 2 * x[t] (+ bias), x[-1] = initial state (or 0).
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    w = torch.tensor([[1.0, 2.0]], dtype=F64)
    states = torch.tensor([[[10.0]], [[-1.0]]], dtype=F64)  # slots 0, 1
    out = causal_conv1d_fn(
        x, w, None, states, idx(0, 3), idx(1), torch.tensor([False]), None, null_block_id=None
    )
    assert out.tolist() == [[2.0, 5.0, 8.0]]
    assert states[1].tolist() == [[3.0]]
    assert states[0].tolist() == [[10.0]]
    states[1, 0, 0] = 10.0
    out = causal_conv1d_fn(
        x, w, torch.tensor([0.5], dtype=F64), states, idx(0, 3), idx(1), torch.tensor([True]),
        "silu", null_block_id=None,
    )  # fmt: skip
    close(out, torch.tensor([[silu(12.5), silu(5.5), silu(8.5)]], dtype=F64))
    assert states[1].tolist() == [[3.0]]


def test_fn_short_sequence_keeps_initial_columns() -> None:
    # W=4: state (a, b, c) + one token d -> y = w0 a + w1 b + w2 c + w3 d; new state (b, c, d).
    w = torch.tensor([[1.0, 10.0, 100.0, 1000.0]], dtype=F64)
    states = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]]], dtype=F64)
    x = torch.tensor([[4.0]], dtype=F64)
    out = causal_conv1d_fn(x, w, None, states, idx(0, 1), idx(0), torch.tensor([True]), None,
                           null_block_id=None)  # fmt: skip
    assert out.tolist() == [[1 + 20 + 300 + 4000.0]]
    assert states[0].tolist() == [[2.0, 3.0, 4.0]]
    # Without initial state: zeros are shifted in front of the token.
    out = causal_conv1d_fn(x, w, None, states, idx(0, 1), idx(0), torch.tensor([False]), None,
                           null_block_id=None)  # fmt: skip
    assert out.tolist() == [[4000.0]]
    assert states[0].tolist() == [[0.0, 0.0, 4.0]]


def test_update_by_hand_single_and_multi_token() -> None:
    w = torch.tensor([[1.0, 10.0, 100.0]], dtype=F64)
    state = torch.tensor([[[1.0, 2.0]]], dtype=F64)
    x = torch.tensor([[3.0]], dtype=F64)  # (batch, dim)
    out = causal_conv1d_update(x, state, w, None, None)
    assert out is x and x.tolist() == [[1 + 20 + 300.0]]  # written in place
    assert state.tolist() == [[[2.0, 3.0]]]
    x3 = torch.tensor([[[4.0, 5.0]]], dtype=F64)  # (batch, dim, S=2)
    out3 = torch.zeros_like(x3)
    causal_conv1d_update(x3, state, w, None, None, out=out3)
    assert out3.tolist() == [[[2 + 30 + 400.0, 3 + 40 + 500.0]]]
    assert x3.tolist() == [[[4.0, 5.0]]]  # out= leaves x alone
    assert state.tolist() == [[[4.0, 5.0]]]


def test_update_spec_decode_by_hand() -> None:
    # W=3, 3 draft tokens: the state holds W-2+S = 4 columns.
    w = torch.tensor([[1.0, 10.0, 100.0]], dtype=F64)
    state = torch.tensor([[[1.0, 2.0, 0.0, 0.0]]], dtype=F64)
    x = torch.tensor([[[3.0, 4.0, 5.0]]], dtype=F64)
    out = causal_conv1d_update(x.clone(), state, w, None, None,
                               num_accepted_tokens=idx(1))  # fmt: skip
    assert out.tolist() == [[[321.0, 432.0, 543.0]]]
    assert state.tolist() == [[[2.0, 3.0, 4.0, 5.0]]]
    # Two of the drafts were accepted: the window must end at token 4 -> (3, 4).
    x2 = torch.tensor([[[6.0, 7.0, 8.0]]], dtype=F64)
    out = causal_conv1d_update(x2, state, w, None, None, num_accepted_tokens=idx(2))
    assert out.tolist() == [[[3 + 40 + 600.0, 4 + 60 + 700.0, 6 + 70 + 800.0]]]
    assert state.tolist() == [[[4.0, 6.0, 7.0, 8.0]]]


# ------------------------------------------------------------------------------------------
# Invariants
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("W", [2, 3, 4])
def test_split_prefill_then_decode_equals_one_shot(W: int) -> None:
    g = gen(W)
    dim, T, slots = 5, 9, 4
    x = randn(T, dim, g=g, dtype=F64).T  # channel-last (dim, T)
    w, b = randn(dim, W, g=g, dtype=F64), randn(dim, g=g, dtype=F64)
    s_one = sd_conv_states(slots, dim, W, g, F64)
    s_split = s_one.clone()
    ref = causal_conv1d_fn(x, w, b, s_one, idx(0, T), idx(2), torch.tensor([False]), "silu")
    # prefill 4 tokens, then 2 more as a continued prefill, then 3 single-token decodes
    y1 = causal_conv1d_fn(x[:, :4], w, b, s_split, idx(0, 4), idx(2), torch.tensor([False]))
    y2 = causal_conv1d_fn(x[:, 4:6], w, b, s_split, idx(0, 2), idx(2), torch.tensor([True]))
    ys = [y1, y2]
    for t in range(6, T):
        ys.append(causal_conv1d_update(x[:, t][None].clone(), s_split, w, b, "silu",
                                       conv_state_indices=idx(2)).T)  # fmt: skip
    close(torch.cat(ys, dim=1), ref)
    close(s_split, s_one)


def test_batch_equals_sequences_alone_and_pad_null_untouched() -> None:
    g = gen(1)
    dim, W, slots = 6, 4, 8
    lens = [5, 1, 2, 3, 4]
    qsl = idx(*[sum(lens[:i]) for i in range(len(lens) + 1)])
    T = sum(lens)
    x = randn(T, dim, g=g).T
    w, b = randn(dim, W, g=g), randn(dim, g=g)
    cache = idx(3, 6, -1, 0, 1)  # a pad slot and the null block among them
    has_init = torch.tensor([True, True, False, True, False])
    states = sd_conv_states(slots, dim, W, g)
    before = states.clone()
    out = causal_conv1d_fn(x, w, b, states, qsl, cache, has_init, "silu")
    for i in (2, 3):  # skipped sequences: zero output, their slots bit-identical
        assert bool((out[:, qsl[i] : qsl[i + 1]] == 0).all())
    assert torch.equal(states[0], before[0])
    untouched = [s for s in range(slots) if s not in (3, 6, 1)]
    assert torch.equal(states[untouched], before[untouched])
    for i in (0, 1, 4):
        alone = before.clone()
        y = causal_conv1d_fn(x[:, qsl[i] : qsl[i + 1]], w, b, alone, idx(0, lens[i]),
                             cache[i : i + 1], has_init[i : i + 1], "silu")  # fmt: skip
        # a batch vs a sequence alone: computed values, equal up to rounding (AVX2 vs AVX-512)
        close(y, out[:, qsl[i] : qsl[i + 1]], torch.float32)
        close(alone[cache[i]], states[cache[i]], torch.float32)


def test_strided_states_equal_contiguous() -> None:
    g = gen(2)
    dim, W, slots = 7, 3, 5
    x = randn(6, dim, g=g).T
    w = randn(dim, W, g=g)
    sd = sd_conv_states(slots, dim, W, g)
    cont = sd.contiguous()
    i64 = torch.tensor([4, 2], dtype=torch.int64)  # int64 indices and offsets work the same
    o1 = causal_conv1d_fn(x, w, None, sd, idx(0, 2, 6).long(), i64, torch.tensor([True, False]))
    o2 = causal_conv1d_fn(x, w, None, cont, idx(0, 2, 6), idx(4, 2), torch.tensor([True, False]))
    assert torch.equal(o1, o2) and torch.equal(sd, cont)
    assert o1.stride() == x.stride()  # channel-last in, channel-last out (as vLLM's empty_like)
    xd = randn(2, dim, g=g)
    o1 = causal_conv1d_update(xd.clone(), sd, w, None, "silu", conv_state_indices=idx(1, 3))
    o2 = causal_conv1d_update(xd.clone(), cont, w, None, "silu", conv_state_indices=idx(1, 3))
    assert torch.equal(o1, o2) and torch.equal(sd, cont)


def test_update_varlen_equals_per_request_and_skips_null() -> None:
    g = gen(3)
    dim, W, slots = 4, 4, 6
    w, b = randn(dim, W, g=g), randn(dim, g=g)
    lens = [2, 3, 1]
    x = randn(sum(lens), dim, g=g)  # (T, dim)
    states = sd_conv_states(slots, dim, W, g)
    before = states.clone()
    qsl = idx(0, 2, 5, 6)
    out = causal_conv1d_update(x.clone(), states, w, b, True, conv_state_indices=idx(5, 0, 2),
                               query_start_loc=qsl, max_query_len=3)  # fmt: skip
    assert torch.equal(out[2:5], x[2:5])  # null slot: rows untouched (x was overwritten in place)
    assert torch.equal(states[0], before[0])
    for i, slot in ((0, 5), (2, 2)):
        alone = before.clone()
        xi = x[qsl[i] : qsl[i + 1]].T[None].contiguous()  # (1, dim, S)
        yi = causal_conv1d_update(xi, alone, w, b, "silu", conv_state_indices=idx(slot))
        close(out[qsl[i] : qsl[i + 1]], yi[0].T, torch.float32)
        close(alone[slot], states[slot], torch.float32)


def test_update_multi_token_equals_fn_with_initial_state() -> None:
    g = gen(4)
    dim, W, S = 3, 4, 5
    w = randn(dim, W, g=g, dtype=F64)
    s1 = sd_conv_states(2, dim, W, g, F64)
    s2 = s1.clone()
    x = randn(1, dim, S, g=g, dtype=F64)
    y_upd = causal_conv1d_update(x.clone(), s1, w, None, None, conv_state_indices=idx(1))
    y_fn = causal_conv1d_fn(x[0], w, None, s2, idx(0, S), idx(1), torch.tensor([True]), None)
    close(y_upd[0], y_fn)
    close(s1, s2)


def test_spec_decode_matches_plain_decode_of_accepted_tokens() -> None:
    g = gen(5)
    dim, W, S = 4, 4, 3
    w = randn(dim, W, g=g, dtype=F64)
    spec = torch.zeros(1, dim, W - 2 + S, dtype=F64)
    spec[0, :, : W - 1] = randn(dim, W - 1, g=g, dtype=F64)
    plain = spec[:, :, : W - 1].clone()
    drafts = randn(1, dim, S, g=g, dtype=F64)
    y = causal_conv1d_update(drafts.clone(), spec, w, None, None, num_accepted_tokens=idx(1))
    for a in range(1, S + 1):  # whichever prefix is accepted, the next window is right
        p = plain.clone()
        y_plain = causal_conv1d_update(drafts[:, :, :a].clone(), p, w, None, None)
        close(y[:, :, :a], y_plain)
        nxt = randn(1, dim, 1, g=g, dtype=F64)
        s = spec.clone()
        close(
            causal_conv1d_update(nxt.clone(), s, w, None, None, num_accepted_tokens=idx(a)),
            causal_conv1d_update(nxt.clone(), p, w, None, None),
        )


@pytest.mark.parametrize(
    ("x_dtype", "state_dtype"),
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
)
def test_dtypes(x_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
    g = gen(6)
    dim, W, T = 8, 4, 7
    x, w = randn(T, dim, g=g, dtype=x_dtype).T, randn(dim, W, g=g, dtype=x_dtype)
    states = sd_conv_states(3, dim, W, g, state_dtype)
    ref_states = states.to(F64)
    out = causal_conv1d_fn(x, w, None, states, idx(0, T), idx(1), torch.tensor([True]))
    ref = causal_conv1d_fn(x.to(F64), w.to(F64), None, ref_states, idx(0, T), idx(1),
                           torch.tensor([True]))  # fmt: skip
    assert out.dtype == x_dtype and states.dtype == state_dtype
    close(out, ref, x_dtype, scale=4)
    close(states, ref_states, state_dtype)


def test_bad_input_names_argument_and_writes_nothing() -> None:
    g = gen(7)
    dim, W = 4, 3
    x, w = randn(5, dim, g=g).T, randn(dim, W, g=g)
    states = sd_conv_states(3, dim, W, g)
    before = states.clone()
    with pytest.raises(ValueError, match="cache_indices"):
        causal_conv1d_fn(x, w, None, states, idx(0, 2, 5), idx(1, 3), None)
    with pytest.raises(ValueError, match="cache_indices"):
        causal_conv1d_fn(x, w, None, states, idx(0, 2, 5), idx(1, 1), None)
    with pytest.raises(ValueError, match="query_start_loc"):
        causal_conv1d_fn(x, w, None, states, idx(0, 4, 3), idx(1, 2), None)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fn(x, w[:3], None, states, idx(0, 5), idx(1), None)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, w, None, states, idx(0, 5), idx(1), None, "relu")
    with pytest.raises(NotImplementedError, match="initial_state_idx"):
        causal_conv1d_fn(x, w, None, states, idx(0, 5), idx(1), None, initial_state_idx=idx(0))
    xd = randn(2, dim, g=g)
    with pytest.raises(ValueError, match="num_accepted_tokens"):
        causal_conv1d_update(xd, states, w, num_accepted_tokens=idx(0, 1),
                             conv_state_indices=idx(1, 2))  # fmt: skip
    with pytest.raises(ValueError, match="conv_state_indices"):
        causal_conv1d_update(xd, states, w, conv_state_indices=idx(1, 7))
    with pytest.raises(ValueError, match="out"):
        causal_conv1d_update(xd, states, w, out=torch.zeros(3, dim))
    assert torch.equal(states, before)
