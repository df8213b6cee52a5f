"""Spec tests: mamba_chunk_scan_combined_varlen (Mamba2 SSD varlen prefill)."""

from __future__ import annotations

import math

import pytest
import torch
from _ref_utils import close, gen, idx, randn

from mamba_backends.metadata import compute_chunk_metadata
from mamba_backends.reference.ssd import mamba_chunk_scan_combined_varlen

F64 = torch.float64


def _inputs(T: int, H: int, P: int, N: int, G: int, seed: int, dtype: torch.dtype = F64) -> dict:
    g = gen(seed)
    return {
        "x": randn(T, H, P, g=g, dtype=dtype),
        "dt": randn(T, H, g=g, dtype=dtype),
        "A": (-torch.rand(H, generator=g, dtype=F64) - 0.1).to(dtype),
        "B": randn(T, G, N, g=g, dtype=dtype),
        "C": randn(T, G, N, g=g, dtype=dtype),
        "D": randn(H, g=g, dtype=dtype),
        "z": randn(T, H, P, g=g, dtype=dtype),
        "dt_bias": randn(H, g=g, dtype=dtype),
    }


def _ssd(a: dict, lens: list[int], chunk: int, init=None, ctx=None, out=None, **kw):
    qsl = idx(*[sum(lens[:i]) for i in range(len(lens) + 1)])
    ctx = torch.tensor(ctx if ctx is not None else [0] * len(lens))
    cu, last, seq_idx = compute_chunk_metadata(qsl, ctx, chunk)
    if out is None:
        out = torch.zeros(a["x"].shape, dtype=a["x"].dtype)
    kw = {"dt_softplus": True, **kw}
    states = mamba_chunk_scan_combined_varlen(
        a["x"], a["dt"], a["A"], a["B"], a["C"], chunk, qsl, cu, last, seq_idx, out,
        D=a["D"], z=a["z"], dt_bias=a["dt_bias"], initial_states=init, **kw,
    )  # fmt: skip
    return out, states, (cu, last)


def test_scalar_recurrence_by_hand() -> None:
    one = torch.ones(2, 1, 1, dtype=F64)
    a = {"x": one, "dt": torch.ones(2, 1, dtype=F64), "A": -torch.ones(1, dtype=F64),
         "B": one, "C": one, "D": None, "z": None, "dt_bias": None}  # fmt: skip
    out, states, _ = _ssd(a, [2], 4, dt_softplus=False)
    close(out[:, 0, 0], torch.tensor([1.0, 1.0 + math.exp(-1)], dtype=F64))
    close(states[0, 0, 0, 0], torch.tensor(1.0 + math.exp(-1), dtype=F64))
    # dt_limit clamps dt (after softplus/bias): dt = 1 -> 0.5.
    out, states, _ = _ssd(a, [2], 4, dt_softplus=False, dt_limit=(0.0, 0.5))
    h1 = 0.5
    close(out[:, 0, 0], torch.tensor([h1, h1 * math.exp(-0.5) + 0.5], dtype=F64))


def test_result_does_not_depend_on_chunking() -> None:
    T, H, P, N, G = 21, 4, 2, 3, 2
    a = _inputs(T, H, P, N, G, seed=1)
    init = randn(2, H, P, N, g=gen(2), dtype=F64)
    ref_out, ref_states, _ = _ssd(a, [12, 9], 64, init)
    for chunk, ctx in ((4, [0, 0]), (8, [3, 5]), (2, [1, 7])):
        out, states, _ = _ssd(a, [12, 9], chunk, init, ctx)
        assert torch.equal(out, ref_out) and torch.equal(states, ref_states)


def test_intermediate_states_are_prefix_states() -> None:
    T, H, P, N = 11, 2, 2, 2
    a = _inputs(T, H, P, N, 1, seed=3)
    _, per_chunk, (cu, last) = _ssd(a, [11], 4, return_intermediate_states=True)
    _, final, _ = _ssd(a, [11], 4)
    assert per_chunk.shape == (3, H, P, N)
    assert torch.equal(per_chunk[last[0]], final[0])
    for k, end in enumerate(cu[1:].tolist()):
        prefix = {
            key: (v[:end] if key in ("x", "dt", "B", "C", "z") else v) for key, v in a.items()
        }
        _, st, _ = _ssd(prefix, [end], 4)
        close(per_chunk[k], st[0])


def test_split_with_initial_state_equals_one_shot() -> None:
    T, H, P, N = 13, 2, 3, 2
    a = _inputs(T, H, P, N, 1, seed=4)
    init = randn(1, H, P, N, g=gen(5), dtype=F64)
    out, final, _ = _ssd(a, [T], 8, init)
    first = {k: (v[:6] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
    rest = {k: (v[6:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
    o1, s1, _ = _ssd(first, [6], 8, init)
    o2, s2, _ = _ssd(rest, [T - 6], 8, s1, ctx=[6])
    close(torch.cat([o1, o2]), out)
    close(s2, final)


def test_batch_equals_sequences_alone_and_out_outside_untouched() -> None:
    T, H, P, N, G = 12, 4, 2, 2, 2
    lens = [5, 1, 4]
    a = _inputs(T, H, P, N, G, seed=6)
    init = randn(3, H, P, N, g=gen(7), dtype=F64)
    out = torch.full((T, H, P), 9.0, dtype=F64)
    out, states, _ = _ssd(a, lens, 4, init, out=out)
    assert bool((out[10:] == 9.0).all())  # tokens past cu_seqlens[-1] untouched
    start = 0
    for b, n in enumerate(lens):
        sub = {
            k: (v[start : start + n] if k in ("x", "dt", "B", "C", "z") else v)
            for k, v in a.items()
        }
        o, s, _ = _ssd(sub, [n], 4, init[b : b + 1])
        close(o, out[start : start + n])  # computed: equal up to rounding, not bit for bit
        close(s[0], states[b])
        start += n


def test_D_per_head_equals_expanded_and_z_gates() -> None:
    T, H, P, N = 5, 2, 3, 2
    a = _inputs(T, H, P, N, 1, seed=8)
    o1, _, _ = _ssd(a, [T], 4)
    o2, _, _ = _ssd({**a, "D": a["D"][:, None].expand(H, P).contiguous()}, [T], 4)
    assert torch.equal(o1, o2)
    o3, _, _ = _ssd({**a, "z": None}, [T], 4)
    close(o1, o3 * torch.nn.functional.silu(a["z"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_state_dtype(dtype: torch.dtype) -> None:
    T, H, P, N = 6, 2, 2, 3
    a = _inputs(T, H, P, N, 1, seed=9, dtype=dtype)
    out, states, _ = _ssd(a, [T], 4)
    ref_out, ref_states, _ = _ssd({k: v.to(F64) for k, v in a.items()}, [T], 4)
    assert out.dtype == dtype and states.dtype == dtype  # default: C's dtype
    close(out, ref_out, dtype, scale=4)
    close(states, ref_states, dtype, scale=4)
    _, s32, _ = _ssd(a, [T], 4, state_dtype=torch.float32)
    assert s32.dtype == torch.float32


def test_bad_input_names_argument_and_writes_nothing() -> None:
    T, H, P, N = 6, 2, 2, 3
    a = _inputs(T, H, P, N, 1, seed=10)
    qsl = idx(0, 2, 6)
    cu, last, seq_idx = compute_chunk_metadata(qsl, torch.tensor([0, 0]), 4)
    out = torch.zeros(T, H, P, dtype=F64)

    def call(**over):
        kw = {"cu_seqlens": qsl, "cu_chunk_seqlens": cu, "last_chunk_indices": last,
              "seq_idx": seq_idx, "chunk_size": 4, **over}  # fmt: skip
        mamba_chunk_scan_combined_varlen(
            a["x"], a["dt"], a["A"], a["B"], a["C"], kw.pop("chunk_size"), kw.pop("cu_seqlens"),
            kw.pop("cu_chunk_seqlens"), kw.pop("last_chunk_indices"), kw.pop("seq_idx"), out,
            **kw,
        )  # fmt: skip

    with pytest.raises(ValueError, match="chunk_size"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match="cu_chunk_seqlens"):
        call(chunk_size=2)  # chunks of 4 tokens are longer than chunk_size
    with pytest.raises(ValueError, match="last_chunk_indices"):
        call(last_chunk_indices=idx(1, 1))
    with pytest.raises(ValueError, match="seq_idx"):
        call(seq_idx=idx(0, 0, 0))
    with pytest.raises(ValueError, match="cu_seqlens"):
        call(cu_seqlens=idx(0, 2, 7))
    with pytest.raises(ValueError, match="initial_states"):
        call(initial_states=torch.zeros(3, H, P, N, dtype=F64))
    with pytest.raises(ValueError, match="dt_limit"):
        call(dt_limit=(1.0, 0.0))
    with pytest.raises(ValueError, match="'D'"):
        call(D=torch.zeros(H, P + 1, dtype=F64))
    assert bool((out == 0).all())
