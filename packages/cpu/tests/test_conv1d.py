"""CPU causal conv1d (prefill and decode) against the spec (float64, loop level).

Every test that calls the ops runs twice (``path``): through the fused C kernel
(``native/conv.py``) and through the PyTorch fallback. Channel counts of 64 and more reach the
kernel's 16-lane vector path (blocks of 64 channels); the rest run its scalar path.
"""

from __future__ import annotations

import pytest
import torch
from cpu_checks import CountOps, close, pool, qsl_of

from mamba_backends.reference import conv1d as spec
from mamba_backends_cpu.native import conv as _native_conv
from mamba_backends_cpu.native import entry as _entry
from mamba_backends_cpu.ops import conv1d as cpu

CASES = [  # (lens, slots, has_init); slot -1 = pad, 0 = null block
    ([1], [3], [True]),
    ([63], [2], [False]),
    ([140, 1, 133], [5, -1, 1], [True, True, False]),  # > 128 tokens: chunked prefill
    ([7, 2, 0, 30], [4, 0, 6, 2], [False, True, True, True]),
    ([1, 2, 3], [7, 3, 5], [True, True, True]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dim", [24, 80])
def test_fn_matches_spec(path, dtype, state_dtype, W, case, dim) -> None:
    lens, slots, init = CASES[case]
    gen = torch.Generator().manual_seed(case * 10 + W)
    T = sum(lens)
    x = torch.randn(T, dim, generator=gen).to(dtype).t()  # channel-last, as vLLM hands it
    weight = torch.randn(dim, W, generator=gen).to(dtype)
    bias = torch.randn(dim, generator=gen).to(dtype)
    layout = "sd" if case % 2 == 0 else "contig"
    states = pool(9, dim, W - 1, state_dtype, layout, gen)
    ref_states = states.clone()
    before = states.clone()
    qsl, idx, hi = qsl_of(lens), torch.tensor(slots, dtype=torch.int32), torch.tensor(init)
    out = cpu.causal_conv1d_fn(x, weight, bias, states, qsl, idx, hi, activation="silu")
    ref = spec.causal_conv1d_fn(x, weight, bias, ref_states, qsl, idx, hi, activation="silu")
    assert out.dtype == dtype and out.shape == x.shape
    close(out, ref, dtype)
    close(states, ref_states, state_dtype)
    written = {s for s, n in zip(slots, lens, strict=True) if s > 0 and n > 0}
    for s in range(9):  # canaries: pad/null/unused slots bit-identical
        if s not in written:
            assert torch.equal(states[s], before[s]), f"slot {s} changed"


def test_fn_state_len_longer_than_window_and_no_activation(path) -> None:
    gen = torch.Generator().manual_seed(1)
    dim, W = 8, 3
    x = torch.randn(dim, 10, generator=gen)
    weight, bias = torch.randn(dim, W, generator=gen), None
    states = torch.randn(4, dim, 5, generator=gen)  # state_len 5 > W-1: only [:2] used
    ref_states = states.clone()
    qsl = torch.tensor([0, 4, 10], dtype=torch.int32)
    hi = torch.tensor([True, False])
    out = cpu.causal_conv1d_fn(x, weight, bias, states, qsl, None, hi, activation=None)
    ref = spec.causal_conv1d_fn(x, weight, bias, ref_states, qsl, None, hi, activation=None)
    close(out, ref, torch.float32)
    assert torch.equal(states[:, :, 2:], ref_states[:, :, 2:])
    close(states, ref_states, torch.float32)


@pytest.mark.parametrize("form", ["2d", "2d_t", "3d", "varlen"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("use_out", [False, True])
@pytest.mark.parametrize(("dim", "W", "layout"), [(16, 4, "sd"), (80, 4, "sd"), (72, 3, "contig")])
def test_update_matches_spec(path, form, state_dtype, dtype, use_out, dim, W, layout) -> None:
    gen = torch.Generator().manual_seed(7)
    b = 5
    slots = torch.tensor([3, 0, 6, -1, 2], dtype=torch.int32)
    if form == "2d":
        x, qsl = torch.randn(b, dim, generator=gen).to(dtype), None
    elif form == "2d_t":  # (batch, dim) view with a non-unit channel stride (Mamba1 mixer)
        x, qsl = torch.randn(dim, b, generator=gen).to(dtype).t(), None
    elif form == "3d":
        x, qsl = torch.randn(b, dim, 3, generator=gen).to(dtype), None
    else:
        qsl = torch.tensor([0, 2, 3, 3, 5, 9], dtype=torch.int32)
        x = torch.randn(9, dim, generator=gen).to(dtype)
    weight = torch.randn(dim, W, generator=gen)
    bias = torch.randn(dim, generator=gen)
    states = pool(8, dim, W - 1, state_dtype, layout, gen)
    before, ref_states = states.clone(), states.clone()
    x_ref = x.clone()
    out = torch.full_like(x, 7.0) if use_out else None
    out_ref = torch.full_like(x, 7.0) if use_out else None
    res = cpu.causal_conv1d_update(
        x, states, weight, bias, "silu", slots, query_start_loc=qsl, out=out
    )
    ref = spec.causal_conv1d_update(
        x_ref, ref_states, weight, bias, "silu", slots, query_start_loc=qsl, out=out_ref
    )
    assert res is (out if use_out else x)  # in place into x when out is omitted
    close(res, ref, dtype)  # skipped (null/pad) rows untouched in both
    close(states, ref_states, state_dtype)
    for s in (0, 1, 4, 5, 7):
        assert torch.equal(states[s], before[s])


@pytest.mark.parametrize("form", ["2d", "3d", "varlen"])
def test_update_large_batch_matches_spec(path, form) -> None:
    """Batches of at least 4 x threads run whole requests per thread in the kernel."""
    gen = torch.Generator().manual_seed(11)
    dim, W, b = 88, 4, 12  # 88 = 5 x 16 + 8: vector lanes and a scalar tail
    slots = torch.tensor([5, 0, 9, 1, -1, 12, 3, 7, 2, 11, 6, 4], dtype=torch.int64)
    if form == "2d":
        x, qsl = torch.randn(b, dim, generator=gen).to(torch.bfloat16), None
    elif form == "3d":
        x, qsl = torch.randn(b, dim, 2, generator=gen).to(torch.bfloat16), None
    else:
        lens = [1, 2, 0, 3, 1, 1, 2, 1, 1, 4, 1, 1]
        qsl = qsl_of(lens)
        x = torch.randn(sum(lens), dim, generator=gen).to(torch.bfloat16)
    weight, bias = torch.randn(dim, W, generator=gen), torch.randn(dim, generator=gen)
    states = pool(14, dim, W - 1, torch.bfloat16, "sd", gen)
    before, ref_states, x_ref = states.clone(), states.clone(), x.clone()
    res = cpu.causal_conv1d_update(x, states, weight, bias, "silu", slots, query_start_loc=qsl)
    ref = spec.causal_conv1d_update(
        x_ref, ref_states, weight, bias, "silu", slots, query_start_loc=qsl
    )
    close(res, ref, torch.bfloat16)
    close(states, ref_states, torch.bfloat16)
    for s in (0, 8, 10, 13):
        assert torch.equal(states[s], before[s])


def test_split_prefill_then_decode_equals_one_shot(path) -> None:
    gen = torch.Generator().manual_seed(3)
    dim, W, T = 12, 4, 40
    x = torch.randn(dim, T, generator=gen)
    weight, bias = torch.randn(dim, W, generator=gen), torch.randn(dim, generator=gen)
    one = torch.zeros(3, dim, W - 1)
    y_one = cpu.causal_conv1d_fn(x, weight, bias, one, torch.tensor([0, T]), torch.tensor([1]))
    st = torch.zeros(3, W - 1, dim).transpose(1, 2)
    idx = torch.tensor([1])
    pieces = []
    for a, b, init in ((0, 1, False), (1, 17, True), (17, 35, True)):
        pieces.append(
            cpu.causal_conv1d_fn(
                x[:, a:b], weight, bias, st, torch.tensor([0, b - a]), idx, torch.tensor([init])
            )
        )
    for t in range(35, T):
        pieces.append(
            cpu.causal_conv1d_update(x[:, t][None].clone(), st, weight, bias, "silu", idx).t()
        )
    close(torch.cat(pieces, dim=1), y_one, torch.float32)
    close(st, one, torch.float32)


def test_batch_equals_per_sequence(path) -> None:
    gen = torch.Generator().manual_seed(4)
    dim, W, lens = 10, 3, [5, 1, 9]
    x = torch.randn(dim, sum(lens), generator=gen)
    weight, bias = torch.randn(dim, W, generator=gen), torch.randn(dim, generator=gen)
    init = torch.randn(4, dim, W - 1, generator=gen)
    st_b = init.clone()
    idx = torch.tensor([2, 3, 1], dtype=torch.int32)
    hi = torch.tensor([True, False, True])
    y_b = cpu.causal_conv1d_fn(x, weight, bias, st_b, qsl_of(lens), idx, hi)
    st_s = init.clone()
    q = qsl_of(lens)
    for i in range(3):
        y = cpu.causal_conv1d_fn(
            x[:, q[i] : q[i + 1]],
            weight,
            bias,
            st_s,
            qsl_of([lens[i]]),
            idx[i : i + 1],
            hi[i : i + 1],
        )
        torch.testing.assert_close(y, y_b[:, q[i] : q[i + 1]], rtol=1e-6, atol=1e-6)
    assert torch.equal(st_s, st_b)  # states are copies of inputs: exact


def test_bad_input_raises_before_any_write(path) -> None:
    dim, W = 8, 4
    x = torch.randn(dim, 6)
    weight = torch.randn(dim, W)
    st = torch.randn(4, dim, W - 1)
    before = st.clone()
    qsl = torch.tensor([0, 3, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="cache_indices"):
        cpu.causal_conv1d_fn(x, weight, None, st, qsl, torch.tensor([1, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="query_start_loc"):
        cpu.causal_conv1d_fn(x, weight, None, st, torch.tensor([0, 7], dtype=torch.int32))
    with pytest.raises(ValueError, match="weight"):
        cpu.causal_conv1d_fn(x, weight[:4], None, st, qsl)
    with pytest.raises(ValueError, match="conv_state_indices"):
        cpu.causal_conv1d_update(
            torch.randn(2, dim), st, weight, None, None, torch.tensor([1, 4], dtype=torch.int32)
        )
    with pytest.raises(NotImplementedError, match="initial_state_idx"):
        cpu.causal_conv1d_fn(x, weight, None, st, qsl, initial_state_idx=torch.zeros(2))
    assert torch.equal(st, before)


@pytest.mark.parametrize("entry", ["1", "0"])
def test_native_calls_dispatch_only_the_output_allocation(monkeypatch, entry) -> None:
    """vLLM's prefill and decode arguments (channel-last x, int32 offsets and slots, bool
    has_initial_state, the (W-1, dim) state page) reach the C kernel with no ATen op but the
    prefill output's allocation: no dtype conversion, no copy, no view, no scalar read. Decode
    is one call of the torch-op entry when it is on, else no op at all (ctypes)."""
    monkeypatch.setenv("MAMBA_BACKENDS_CPU_NATIVE", "1")
    monkeypatch.setenv(_entry.ENV_ENTRY, entry)
    if entry == "1" and _entry.ops() is None:
        pytest.skip(f"torch-op entry unavailable: {_entry.status()['reason']}")
    if _native_conv.lib() is None:
        pytest.skip("native conv library unavailable")
    gen = torch.Generator().manual_seed(0)
    dim, K, lens = 80, 3, [5, 9]
    states = pool(4, dim, K, torch.bfloat16, "sd", gen)
    x = torch.randn(sum(lens), dim, generator=gen).to(torch.bfloat16).t()  # (dim, T), channel-last
    w = torch.randn(dim, K + 1, generator=gen).to(torch.bfloat16)
    qsl = qsl_of(lens).to(torch.int32)
    slots = torch.tensor([1, 3], dtype=torch.int32)
    has_init = torch.tensor([True, False])
    prefill = dict(x=x, weight=w, bias=None, conv_states=states, query_start_loc=qsl,
                   cache_indices=slots, has_initial_state=has_init, activation="silu")  # fmt: skip
    cpu.causal_conv1d_fn(**prefill)
    with CountOps() as seen:
        cpu.causal_conv1d_fn(**prefill)
    assert seen.ops == ["empty_strided"]
    xd = torch.randn(2, dim, generator=gen).to(torch.bfloat16)
    with CountOps() as seen:
        cpu.causal_conv1d_update(xd, states, w, None, "silu", slots)
    assert seen.ops == (["conv_update"] if entry == "1" else [])
