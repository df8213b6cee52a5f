"""The Triton ``selective_state_update`` against the spec, on what the kit's grid does not reach.

Tiles: channel counts that leave several partial ``BLOCK_P`` blocks (small tiles forced through
a tuning override), N below its power of two. Serving conventions: pad/null slots that stay
bit-identical (and whose NaN contents never leak), skipped rows of ``out`` left as they were,
strided states, varlen multi-token requests, speculative decoding (``num_accepted_tokens``:
per-token writes to ``dst[r, t]``), vLLM's tied zero-stride A/dt/D, ``out`` being ``x`` or
``z``, and reads-before-writes across requests: destination chains, swaps and cycles, where a
kernel that wrote in place as it went would hand later requests the new states.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

import pytest
import torch

from mamba_backends import reference as spec
from mamba_backends.tuning import override
from mamba_backends_triton import interpreting
from mamba_backends_triton.ops import selective_state_update

DEVICE = "cpu" if interpreting() else "cuda"
F32, F16 = torch.float32, torch.float16
TOL = {F32: 3e-5, F16: 5e-3}
OP = "selective_state_update"
#: Small tiles: several channel blocks per head even at tiny sizes.
SMALL = {"TILE": 16, "num_warps": 1, "num_stages": 1, "SNAP_BLOCK": 32, "snap_num_warps": 1}


def _rand(*shape: int, dtype: torch.dtype = F32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _ints(vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype, device=DEVICE)


def _close(got, want, dtype, what):
    tol = TOL[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    err = (got - want).abs() / (tol + tol * want.abs())
    worst = float(err[~want.isnan()].max()) if want.numel() else 0.0
    assert worst <= 1.0, f"{what}: max err ratio {worst}"


def _heads_inputs(T, H, P, N, G, dtype=F32, seed=0, tied=False):
    """Decode inputs of the heads form; ``tied``: vLLM's per-head dt, A, D, dt_bias expanded
    over P (and N) with zero strides."""
    x = _rand(T, H, P, dtype=dtype, seed=seed)
    if tied:
        dt = _rand(T, H, dtype=dtype, seed=seed + 1, scale=0.5)[:, :, None].expand(T, H, P)
        A = (-_rand(H, seed=seed + 2).abs() - 0.5)[:, None, None].expand(H, P, N)
        D = _rand(H, seed=seed + 3)[:, None].expand(H, P)
        bias = (-_rand(H, seed=seed + 4).abs() - 1.0)[:, None].expand(H, P)
    else:
        dt = _rand(T, H, P, dtype=dtype, seed=seed + 1, scale=0.5)
        A = -_rand(H, P, N, seed=seed + 2).abs() - 0.5
        D = _rand(H, P, seed=seed + 3)
        bias = -_rand(H, P, seed=seed + 4).abs() - 1.0
    B = _rand(T, G, N, dtype=dtype, seed=seed + 5, scale=0.5)
    C = _rand(T, G, N, dtype=dtype, seed=seed + 6, scale=0.5)
    z = _rand(T, H, P, dtype=dtype, seed=seed + 7)
    return x, dt, A, B, C, D, bias, z


def _cpu(v):
    return v.cpu() if isinstance(v, torch.Tensor) else v


def _both(state, *args, **kw):
    """Run ours on ``state`` and the spec on a copy; returns (ours out, spec out, spec state)."""
    theirs = state.detach().cpu().clone()
    kw_cpu = {k: _cpu(v) for k, v in kw.items()}
    if kw.get("out") is not None:
        kw_cpu["out"] = kw["out"].detach().cpu().clone()
    want = spec.selective_state_update(theirs, *[_cpu(a) for a in args], **kw_cpu)
    got = selective_state_update(state, *args, **kw)
    return got, want, theirs


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("tied", [False, True])
def test_heads_form_partial_blocks_groups_pad_and_null(tied, dtype):
    # H=6 heads over G=3 groups, P=5 channels in blocks of 2 (3 blocks, the last partial),
    # N=7 (BLOCK_N=8); rows with a pad slot (-1) and the null block (0), whose states hold NaN.
    T, H, P, N, G = 5, 6, 5, 7, 3
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G, dtype, seed=1, tied=tied)
    state = _rand(9, H, P, N, dtype=dtype, seed=9)
    state[0] = float("nan")
    idx = _ints([4, -1, 7, 0, 2])
    out = torch.full((T, H, P), 5.0, dtype=dtype, device=DEVICE)
    before = state.clone()
    with override(OP, SMALL):
        got, want, theirs = _both(
            state, x, dt, A, B, C, D, bias, z, True, idx, None, out=out
        )  # fmt: skip
    live = [0, 2, 4]
    _close(got[live], want[live], dtype, "out")
    assert torch.equal(out[[1, 3]], torch.full_like(out[[1, 3]], 5.0)), "skipped rows written"
    _close(state[[4, 7, 2]], theirs[[4, 7, 2]], dtype, "states")
    untouched = [0, 1, 3, 5, 6, 8]
    assert torch.equal(state[untouched].isnan(), before[untouched].isnan())
    assert torch.equal(state[untouched].nan_to_num(), before[untouched].nan_to_num())


@pytest.mark.parametrize("layout", ["transposed", "page"])
def test_mamba1_form_strided_states_no_optionals(layout):
    # Mamba1 form (state (slots, dim, N)); states as a transposed view or inside wider pages;
    # no D, dt_bias, z or softplus; int64 indices; null_block_id=None makes slot 0 real.
    T, dim, N, slots = 4, 13, 6, 6
    x = _rand(T, dim, seed=2)
    dt = _rand(T, dim, seed=3).abs() * 0.3
    A = -_rand(dim, N, seed=4).abs() - 0.2
    B, C = _rand(T, N, seed=5), _rand(T, N, seed=6)
    if layout == "transposed":
        base = _rand(slots, N, dim, seed=7)
        state = base.transpose(1, 2)
    else:
        base = _rand(slots, dim * N + 11, seed=7)
        state = base[:, 5 : 5 + dim * N].view(slots, dim, N)
    before = base.clone()
    idx = _ints([3, 0, 5, 1], torch.int64)
    with override(OP, SMALL):
        got, want, theirs = _both(
            state, x, dt, A, B, C, state_batch_indices=idx, null_block_id=None
        )
    _close(got, want, F32, "out")
    _close(state[[3, 0, 5, 1]], theirs[[3, 0, 5, 1]], F32, "states")
    assert torch.equal(base[[2, 4]], before[[2, 4]])
    if layout == "page":  # the page bytes around each state are never written
        assert torch.equal(base[:, :5], before[:, :5]) and torch.equal(base[:, -6:], before[:, -6:])


def test_no_indices_uses_slot_r_and_out_may_be_x_or_z():
    T, H, P, N, G = 3, 2, 4, 8, 1
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G, seed=3, tied=True)
    state = _rand(4, H, P, N, seed=4)
    ref_state = state.clone().cpu()
    want = spec.selective_state_update(
        ref_state, *[_cpu(t) for t in (x, dt, A, B, C, D, bias, z)], dt_softplus=True
    )
    xo, zo = x.clone(), z.clone()
    got_x = selective_state_update(state.clone(), xo, dt, A, B, C, D, bias, z, True, out=xo)
    got_z = selective_state_update(state, x, dt, A, B, C, D, bias, zo, True, out=zo)
    assert got_x is xo and got_z is zo
    _close(xo, want, F32, "out=x")
    _close(zo, want, F32, "out=z")
    _close(state, ref_state, F32, "states (slot r)")


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ([1, 2], [2, 3]),  # chain: request 1 reads what request 0 writes
        ([1, 2, 3, 4], [2, 3, 4, 1]),  # a cycle through four slots
        ([5, 6, -1, 7], [6, 5, 3, 0]),  # a swap; a skipped row; a null destination
        ([3, 2, 2], [2, 4, 5]),  # two readers of one slot that another request overwrites
    ],
)
def test_destinations_that_are_other_requests_sources(src, dst):
    T, H, P, N, G = len(src), 2, 3, 4, 2
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G, seed=5)
    state = _rand(9, H, P, N, seed=6)
    before = state.clone()
    with override(OP, SMALL):
        got, want, theirs = _both(
            state, x, dt, A, B, C, D, bias, z, True, _ints(src), _ints(dst), out=torch.zeros_like(x)
        )  # fmt: skip
    live = [i for i, s in enumerate(src) if s > 0]
    _close(got[live], want[live], F32, "out")
    written = sorted({d for s, d in zip(src, dst, strict=True) if s > 0 and d > 0})
    _close(state[written], theirs[written], F32, "states")
    rest = [s for s in range(9) if s not in written]
    assert torch.equal(state[rest], before[rest]), "a slot outside the destinations changed"


@pytest.mark.parametrize("explicit_dst", [False, True])
def test_speculative_varlen_writes_every_token_state(explicit_dst):
    # Three requests of 3, 1 and 1 draft tokens with 2-D indices: the source is column
    # accepted-1 of a row, the state after token t goes to column t of the destination row.
    # Request 0 writes slot 2 at its second token, the source of request 2 (an alias across
    # requests that in-order programs would get wrong); request 1 accepted none (column 0).
    lens, accepted = [3, 1, 1], [2, 0, 2]
    src = [[4, 2, 9], [6, 7, 8], [3, 2, 5]]
    dst = [[10, 2, 12], [13, 14, 15], [0, 1, 11]] if explicit_dst else None
    T, H, P, N, G = sum(lens), 4, 3, 5, 2
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G, seed=7, tied=True)
    state = _rand(16, H, P, N, seed=8)
    before = state.clone()
    cu = _ints([0, 3, 4, 5])
    kw = dict(dst_state_batch_indices=_ints(dst) if dst else None,
              num_accepted_tokens=_ints(accepted), cu_seqlens=cu)  # fmt: skip
    got, want, theirs = _both(state, x, dt, A, B, C, D, bias, z, True, _ints(src), **kw)
    _close(got, want, F32, "out")
    rows = dst if dst else src
    written = sorted({rows[r][t] for r, n in enumerate(lens) for t in range(n)} - {0})
    _close(state[written], theirs[written], F32, "states")
    rest = [s for s in range(16) if s not in written]
    assert torch.equal(state[rest], before[rest])


def test_varlen_multi_token_with_empty_requests_and_padded_tail():
    # Requests of 4, 0 and 2 tokens, then a padded tail of 2 rows nobody owns (left as is).
    T, H, P, N, G = 8, 2, 3, 16, 1
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G, dtype=F16, seed=9)
    state = _rand(5, H, P, N, dtype=F16, seed=10)
    before = state.clone()
    out = torch.full((T, H, P), 7.0, dtype=F16, device=DEVICE)
    got, want, theirs = _both(
        state, x, dt, A, B, C, D, bias, z, True, _ints([3, 1, 4]), cu_seqlens=_ints([0, 4, 4, 6]),
        out=out,
    )  # fmt: skip
    _close(got[:6], want[:6], F16, "out")
    assert torch.equal(out[6:], torch.full_like(out[6:], 7.0)), "padded tail written"
    _close(state[[3, 4]], theirs[[3, 4]], F16, "states")
    assert torch.equal(state[[0, 1, 2]], before[[0, 1, 2]]), "an empty request's slot changed"


def test_large_time_step_and_nan_propagate_like_the_spec():
    T, H, P, N, G = 3, 1, 4, 4, 1
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G, seed=11)
    dt = dt.clone()
    dt[0, 0, 0] = 40.0  # softplus(x) = x there
    dt[1, 0, 1] = -40.0  # softplus underflows to ~0
    x = x.clone()
    x[2, 0, 2] = float("nan")
    state = _rand(3, H, P, N, seed=12)
    got, want, theirs = _both(state, x, dt, A, B, C, D, bias, z, True)
    _close(got, want, F32, "out")
    _close(state, theirs, F32, "states")


def test_stochastic_rounding_is_refused():
    T, H, P, N, G = 1, 1, 2, 2, 1
    x, dt, A, B, C, D, bias, z = _heads_inputs(T, H, P, N, G)
    state = _rand(1, H, P, N)
    with pytest.raises(NotImplementedError, match="enable_stochastic_rounding"):
        selective_state_update(state, x, dt, A, B, C, enable_stochastic_rounding=True)
