"""The Triton conv1d kernels against the spec, on what the kit's grid does not reach.

Tiles: channel counts and token counts that leave partial tiles, and many short sequences
inside one token tile (the prefill kernel finds each token's sequence by itself). Serving
conventions: zero-length sequences, a padded tail past ``query_start_loc[-1]``, pad and null
slots that must stay bit-identical, states with extra columns, has_initial_state as ints, 2-D
conv_state_indices, varlen speculative decode, in-place results, NaN propagation.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

import pytest
import torch

from mamba_backends import reference as spec
from mamba_backends_triton import interpreting
from mamba_backends_triton.ops import causal_conv1d_fn, causal_conv1d_update

DEVICE = "cpu" if interpreting() else "cuda"
F32, F16 = torch.float32, torch.float16
TOL = {F32: 2e-5, F16: 4e-3}


def _rand(*shape: int, dtype: torch.dtype = F32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _ints(vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype, device=DEVICE)


def _qsl(lens, dtype=torch.int32):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return _ints(out, dtype)


def _sd_states(slots: int, dim: int, cols: int, dtype=F32, seed: int = 1):
    """A (slots, dim, cols) view of a (slots, cols, dim) buffer, as vLLM lays conv states out."""
    base = _rand(slots, cols, dim, dtype=dtype, seed=seed)
    return base.transpose(1, 2), base


def _close(got, want, dtype, what):
    tol = TOL[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    err = (got - want).abs() / (tol + tol * want.abs())
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    worst = float(err[~want.isnan()].max()) if want.numel() else 0.0
    assert worst <= 1.0, f"{what}: max err ratio {worst}"


def _live_tokens(lens, slots, skip=(-1, 0), total=None):
    keep = torch.zeros(total if total is not None else sum(lens), dtype=torch.bool)
    pos = 0
    for n, s in zip(lens, slots, strict=True):
        if s not in skip:
            keep[pos : pos + n] = True
        pos += n
    return keep


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("W", [2, 3, 4])
def test_fn_many_short_sequences_odd_sizes(W, dtype):
    # 67 channels: a full and a partial channel block; 14 sequences share the first tiles,
    # with zero-length ones, a pad slot (-1), a null block (0), and a padded tail of 5 tokens.
    lens = [1, 2, 0, 3, 1, 5, 0, 2, 40, 1, 1, 7, 2, 33]
    slots = [4, 9, -1, 2, 0, 11, 6, 13, 1, 7, 3, 12, 5, 8]
    init = [1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1]
    dim, tail = 67, 5
    T = sum(lens) + tail
    x = _rand(T, dim, dtype=dtype, seed=W).t()
    w = _rand(dim, W, dtype=dtype, seed=10 + W, scale=W**-0.5)
    b = _rand(dim, dtype=dtype, seed=20 + W)
    ours, base = _sd_states(16, dim, W - 1, dtype)
    theirs = ours.clone()
    before = base.clone()
    args = dict(cache_indices=_ints(slots), has_initial_state=_ints(init, torch.int32))
    out = causal_conv1d_fn(x, w, b, ours, _qsl(lens), activation="silu", **args)
    ref = spec.causal_conv1d_fn(
        x.cpu(),
        w.cpu(),
        b.cpu(),
        theirs.cpu(),
        _qsl(lens).cpu(),
        activation="silu",
        **{k: v.cpu() for k, v in args.items()},
    )
    keep = _live_tokens(lens, slots, total=T)
    _close(out[:, keep], ref[:, keep], dtype, "out")
    assert not out[:, ~keep].any(), "skipped and padded-tail tokens must be zeros (the spec's)"
    written = [s for n, s in zip(lens, slots, strict=True) if n and s not in (-1, 0)]
    _close(ours[written], theirs[written], dtype, "states")
    untouched = [s for s in range(16) if s not in written]
    assert torch.equal(base[untouched], before[untouched]), "a pad/null/unused slot was written"


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_fn_no_indices_no_initial_state_contiguous_x(idx_dtype):
    # x contiguous (dim, T): tokens are the unit-stride axis; slot b per sequence.
    lens, dim, W = [37, 3, 0, 29], 9, 4
    x = _rand(dim, sum(lens), seed=3)
    w, states = _rand(dim, W, seed=4), _rand(4, dim, W - 1, seed=5)
    ref_states = states.clone().cpu()
    out = causal_conv1d_fn(x, w, None, states, _qsl(lens, idx_dtype), activation=None)
    ref = spec.causal_conv1d_fn(
        x.cpu(), w.cpu(), None, ref_states, _qsl(lens, idx_dtype).cpu(), activation=None
    )
    _close(out, ref, F32, "out")
    _close(states, ref_states, F32, "states")


def test_fn_state_with_extra_columns_and_short_sequences():
    # A state pool with 5 columns for W=4: only columns [0, 3) are read and written. Sequences
    # shorter than W-1 keep the tail of their old columns in front of their tokens.
    lens, dim, W = [1, 2, 1, 6], 10, 4
    slots, init = [3, 1, 2, 5], [True, True, False, True]
    x = _rand(sum(lens), dim, seed=6).t()
    w = _rand(dim, W, seed=7)
    states = _rand(6, dim, 5, seed=8)[:, :, :]
    ref_states = states.clone().cpu()
    kw = dict(cache_indices=_ints(slots), has_initial_state=torch.tensor(init, device=DEVICE))
    out = causal_conv1d_fn(x, w, None, states, _qsl(lens), **kw)
    ref = spec.causal_conv1d_fn(
        x.cpu(), w.cpu(), None, ref_states, _qsl(lens).cpu(), **{k: v.cpu() for k, v in kw.items()}
    )
    _close(out, ref, F32, "out")
    _close(states, ref_states, F32, "states")
    assert torch.equal(states[:, :, 3:].cpu(), ref_states[:, :, 3:]), "extra columns changed"


def test_fn_split_into_pieces_equals_one_shot():
    # Prefill of 70 tokens per sequence as pieces 33 + 1 + 36 (pieces continue from the state).
    dim, W, n = 20, 4, 3
    x = _rand(70 * n, dim, seed=9)  # (T, dim), sequence-major
    w, b = _rand(dim, W, seed=10), _rand(dim, seed=11)
    pieces, _ = _sd_states(n, dim, W - 1, seed=12)
    one = pieces.clone().cpu()
    idx = _ints([2, 0, 1])
    null = None  # slot 0 is a real slot here
    want = spec.causal_conv1d_fn(
        x.t().cpu(), w.cpu(), b.cpu(), one, _qsl([70] * n).cpu(), idx.cpu(), null_block_id=null
    )
    got = torch.empty(want.shape, dtype=want.dtype, device=DEVICE)
    pos = 0
    for k, m in enumerate((33, 1, 36)):
        rows = [s * 70 + pos + i for s in range(n) for i in range(m)]
        init = torch.full((n,), k > 0, dtype=torch.bool, device=DEVICE)
        got[:, rows] = causal_conv1d_fn(
            x[rows].t(), w, b, pieces, _qsl([m] * n), idx, init, null_block_id=null
        )
        pos += m
    _close(got, want, F32, "out (pieces vs one shot)")
    _close(pieces, one, F32, "states")


def test_fn_nan_propagates_like_the_spec():
    lens, dim, W = [6, 5], 8, 3
    x = _rand(sum(lens), dim, seed=13).t().contiguous()
    x[2, 1] = float("nan")  # sequence 0: poisons tokens 1..1+W-1 of channel 2
    states = _rand(2, dim, W - 1, seed=14)
    states[1, 5, 0] = float("nan")  # sequence 1's initial state: poisons its first token
    ref_states = states.clone().cpu()
    w = _rand(dim, W, seed=15)
    init = torch.ones(2, dtype=torch.bool, device=DEVICE)
    out = causal_conv1d_fn(x, w, None, states, _qsl(lens), has_initial_state=init)
    ref = spec.causal_conv1d_fn(
        x.cpu(), w.cpu(), None, ref_states, _qsl(lens).cpu(), has_initial_state=init.cpu()
    )
    assert int(ref.isnan().sum()) == W + 1
    _close(out, ref, F32, "out")


def test_fn_rejects_float64_naming_the_argument():
    x = _rand(4, 6, dtype=torch.float64)
    w = _rand(4, 3)
    states = _rand(1, 4, 2)
    with pytest.raises(NotImplementedError, match="'x'"):
        causal_conv1d_fn(x, w, None, states, _qsl([6]))


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("form", ["2d", "3d", "varlen"])
def test_update_forms_pads_and_in_place(form, W):
    # 300 channels: two channel blocks of the default table (256), one partial.
    dim, slots = 300, 7
    idx = [5, -1, 2, 0, 6]  # pad and null rows are skipped, their rows left as they were
    lens = [1] * 5 if form == "2d" else ([3] * 5 if form == "3d" else [2, 1, 4, 3, 0])
    if form == "2d":
        x = _rand(5, dim + 4, seed=W)[:, 2 : 2 + dim]  # a column slice of a wider buffer
    elif form == "3d":
        x = _rand(5, 3, dim, seed=W).transpose(1, 2)
    else:
        x = _rand(sum(lens), dim, seed=W)
    w, b = _rand(dim, W, seed=30 + W), _rand(dim, seed=40 + W)
    states, base = _sd_states(slots, dim, W - 1, seed=50 + W)
    ref_states, before = states.clone().cpu(), base.clone()
    x_before = x.clone()
    kw = {"query_start_loc": _qsl(lens)} if form == "varlen" else {}
    got = causal_conv1d_update(x, states, w, b, "silu", _ints(idx), **kw)
    assert got.data_ptr() == x.data_ptr(), "without out= the result is written into x"
    ref = spec.causal_conv1d_update(
        x_before.cpu(),
        ref_states,
        w.cpu(),
        b.cpu(),
        "silu",
        _ints(idx).cpu(),
        **{k: v.cpu() for k, v in kw.items()},
    )
    _close(got, ref, F32, "out (skipped rows keep x)")
    _close(states, ref_states, F32, "states")
    live = [s for s in idx if s not in (-1, 0)]
    others = [s for s in range(slots) if s not in live]
    assert torch.equal(base[others], before[others]), "a pad/null/unused slot was written"


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("W", [2, 4])
def test_update_speculative_varlen_2d_indices_out(W, dtype):
    # Speculative decode: the window starts at column accepted-1; afterwards the slot holds the
    # window minus its oldest column, then every input. 2-D indices: column 0 is the slot.
    dim, lens = 33, [3, 1, 0, 4, 2]
    acc = [2, 1, 1, 3, 1]
    idx = _ints([[4, 9], [1, 9], [2, 9], [0, 9], [6, 9]])  # row 3 is the null block
    cols = W - 2 + max(lens) + max(acc)
    states = _rand(8, dim, cols, dtype=dtype, seed=60)
    ref_states = states.clone().cpu()
    x = _rand(sum(lens), dim, dtype=dtype, seed=61)
    w = _rand(dim, W, dtype=dtype, seed=62)
    out = torch.full_like(x, float("nan"))
    kw = dict(conv_state_indices=idx, num_accepted_tokens=_ints(acc), query_start_loc=_qsl(lens))
    got = causal_conv1d_update(x, states, w, None, None, out=out, **kw)
    ref = spec.causal_conv1d_update(
        x.cpu(),
        ref_states,
        w.cpu(),
        None,
        None,
        out=out.cpu().clone(),
        **{k: v.cpu() for k, v in kw.items()},
    )
    assert got is out
    _close(out, ref, dtype, "out= (skipped rows stay NaN)")
    _close(states, ref_states, dtype, "states")


def test_update_decode_continues_a_prefill():
    # Prefill then 5 decode steps equals one prefill of all tokens (W=3, fp16 states).
    dim, W, n, steps = 24, 3, 2, 5
    x = _rand(n * (6 + steps), dim, seed=70)
    w = _rand(dim, W, seed=71)
    split, _ = _sd_states(n, dim, W - 1, F16, seed=72)
    one = split.clone().cpu()
    idx = _ints([1, 0])
    want = spec.causal_conv1d_fn(
        x.t().cpu(), w.cpu(), None, one, _qsl([6 + steps] * n).cpu(), idx.cpu(), null_block_id=None
    )
    rows = [s * (6 + steps) + i for s in range(n) for i in range(6)]
    got = torch.empty(want.shape, dtype=want.dtype, device=DEVICE)
    got[:, rows] = causal_conv1d_fn(
        x[rows].t(), w, None, split, _qsl([6] * n), idx, null_block_id=None
    )
    for k in range(steps):
        rows = [s * (6 + steps) + 6 + k for s in range(n)]
        got[:, rows] = causal_conv1d_update(
            x[rows].clone(), split, w, None, "silu", idx, null_block_id=None
        ).t()
    _close(got, want, F16, "out (prefill + decode vs one shot)")
    _close(split, one, F16, "states")
