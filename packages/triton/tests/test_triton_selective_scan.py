"""The Triton ``selective_scan_fn`` against the spec, on what the kit's grid does not reach.

Tiles: channel counts that leave several partial ``BLOCK_D`` blocks (small tiles forced through
a tuning override), N below its power of two, groups read per channel block or gathered per
channel. Serving conventions: zero-length sequences, pad/null slots bit-identical, slots without
an initial state never read (NaN in them must not leak), a padded tail left as it was, strided
state pools, the batched form, split prefill, outputs in place into delta (ungated) and z
(gated), NaN propagation.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

import pytest
import torch

from mamba_backends import reference as spec
from mamba_backends.tuning import override
from mamba_backends_triton import interpreting
from mamba_backends_triton.ops import selective_scan_fn

DEVICE = "cpu" if interpreting() else "cuda"
F32, F16 = torch.float32, torch.float16
TOL = {F32: 3e-5, F16: 5e-3}
OP = "selective_scan_fn"
#: Small tiles: BLOCK_D = 32 / next_pow2(N) channels, several blocks even at tiny dims.
SMALL = {"TILE": 32, "num_warps": 1, "num_stages": 1}


def _rand(*shape: int, dtype: torch.dtype = F32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _ints(vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype, device=DEVICE)


def _qsl(lens):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return _ints(out)


def _close(got, want, dtype, what):
    tol = TOL[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    err = (got - want).abs() / (tol + tol * want.abs())
    worst = float(err[~want.isnan()].max()) if want.numel() else 0.0
    assert worst <= 1.0, f"{what}: max err ratio {worst}"


def _inputs(dim, N, T, G, dtype=F32, seed=0, bc3d=True, cl=True):
    """u/delta/z (dim, T) (``cl``: transposes of (T, dim) rows, as the layer passes them)."""

    def tokens_last(s, scale=1.0):
        if cl:
            return _rand(T, dim, dtype=dtype, seed=s, scale=scale).t()
        return _rand(dim, T, dtype=dtype, seed=s, scale=scale)

    u, delta, z = tokens_last(seed), tokens_last(seed + 1, 0.5), tokens_last(seed + 2)
    A = -_rand(dim, N, seed=seed + 3).abs() - 0.2
    if bc3d:
        B = _rand(G, N, T, dtype=dtype, seed=seed + 4, scale=0.5)
        C = _rand(G, N, T, dtype=dtype, seed=seed + 5, scale=0.5)
    else:
        B = _rand(T, N, dtype=dtype, seed=seed + 4, scale=0.5).t()
        C = _rand(T, N, dtype=dtype, seed=seed + 5, scale=0.5).t()
    D = _rand(dim, seed=seed + 6)
    bias = -_rand(dim, seed=seed + 7).abs() - 0.5
    return u, delta, A, B, C, D, z, bias


def _cpu(v):
    return v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v


def _both(u, states, delta, A, B, C, D, z, bias, **kw):
    """Ours in place; the spec on copies. Returns (ours, spec, spec delta, spec states)."""
    s_ref, d_ref, z_ref = _cpu(states), _cpu(delta), _cpu(z)
    want = spec.selective_scan_fn(
        _cpu(u), s_ref, d_ref, _cpu(A), _cpu(B), _cpu(C), _cpu(D), z_ref, _cpu(bias),
        **{k: _cpu(v) for k, v in kw.items()},
    )  # fmt: skip
    got = selective_scan_fn(u, states, delta, A, B, C, D, z, bias, **kw)
    return got, want, d_ref, s_ref


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("G", [1, 3])
def test_varlen_odd_sizes_slots_and_nan_in_uninitialised_slots(G, dtype):
    # dim=15 in blocks of 4 (N=5 -> BLOCK_N=8): 4 channel blocks, the last partial; with G=3
    # groups of 5 channels a block straddles two groups (gathered per channel). Sequences: a
    # zero-length one, a pad slot (-1), the null block (0); slots without an initial state hold
    # NaN, which must not leak; a padded tail of 3 tokens keeps its old values.
    lens = [6, 0, 1, 9, 2, 4]
    slots = [3, 5, -1, 1, 0, 6]
    init = [True, True, True, False, True, False]
    dim, N, tail = 15, 5, 3
    T = sum(lens) + tail
    u, delta, A, B, C, D, z, bias = _inputs(dim, N, T, G, dtype, seed=G)
    states = _rand(8, dim, N, dtype=dtype, seed=20)
    states[[1, 6, 0]] = float("nan")
    before, z_before = states.clone(), z.clone()
    kw = dict(delta_softplus=True, query_start_loc=_qsl(lens), cache_indices=_ints(slots),
              has_initial_state=torch.tensor(init, device=DEVICE))  # fmt: skip
    with override(OP, SMALL):
        got, want, d_ref, s_ref = _both(u, states, delta, A, B, C, D, z, bias, **kw)
    assert got is z
    live = torch.zeros(T, dtype=torch.bool)
    pos = 0
    for n, s in zip(lens, slots, strict=True):
        live[pos : pos + n] = s > 0
        pos += n
    _close(got[:, live], want[:, live], dtype, "out (z)")
    _close(delta[:, live], d_ref[:, live], dtype, "delta (ungated y)")
    assert torch.equal(z[:, ~live].cpu(), z_before[:, ~live].cpu()), "skipped/tail z written"
    written = [3, 1, 6]
    _close(states[written], s_ref[written], dtype, "states")
    assert not states[written].isnan().any(), "a slot without initial state was read"
    rest = [0, 2, 4, 5, 7]
    assert torch.equal(states[rest].nan_to_num(), before[rest].nan_to_num())
    assert torch.equal(states[rest].isnan(), before[rest].isnan())


@pytest.mark.parametrize("layout", ["transposed", "page"])
def test_strided_states_contiguous_inputs_no_optionals(layout):
    # (dim, T) contiguous inputs, B/C (N, T), no D, z, bias or softplus: the output goes to
    # delta and delta is returned; no cache_indices (slot b) and no has_initial_state.
    lens, dim, N = [5, 3], 6, 4
    T = sum(lens)
    u, delta, A, B, C, _, _, _ = _inputs(dim, N, T, 1, seed=4, bc3d=False, cl=False)
    delta = delta.abs() * 0.3
    if layout == "transposed":
        base = _rand(2, N, dim, seed=5)
        states = base.transpose(1, 2)
    else:
        base = _rand(2, dim * N + 9, seed=5)
        states = base[:, 4 : 4 + dim * N].view(2, dim, N)
    before = base.clone()
    got, want, _, s_ref = _both(
        u, states, delta, A, B, C, None, None, None, query_start_loc=_qsl(lens)
    )
    assert got is delta
    _close(got, want, F32, "out (delta)")
    _close(states, s_ref, F32, "states")
    if layout == "page":
        assert torch.equal(base[:, :4], before[:, :4]) and torch.equal(base[:, -5:], before[:, -5:])


@pytest.mark.parametrize("bc3d", [False, True])
def test_batched_form(bc3d):
    # u (B, dim, L), B/C (B, N, L) or (B, G, N, L); slots through cache_indices, int64.
    Bt, dim, N, L, G = 3, 8, 3, 7, 2 if bc3d else 1
    u = _rand(Bt, dim, L, seed=6)
    delta = _rand(Bt, dim, L, seed=7, scale=0.5)
    z = _rand(Bt, L, dim, seed=8).transpose(1, 2)
    A = -_rand(dim, N, seed=9).abs() - 0.2
    shape = (Bt, G, N, L) if bc3d else (Bt, N, L)
    B, C = _rand(*shape, seed=10), _rand(*shape, seed=11)
    D, bias = _rand(dim, seed=12), -_rand(dim, seed=13).abs()
    states = _rand(5, dim, N, seed=14)
    kw = dict(delta_softplus=True, cache_indices=_ints([4, 1, 2], torch.int64),
              has_initial_state=_ints([1, 0, 1]))  # fmt: skip
    with override(OP, SMALL):
        got, want, d_ref, s_ref = _both(u, states, delta, A, B, C, D, z, bias, **kw)
    _close(got, want, F32, "out")
    _close(delta, d_ref, F32, "delta")
    _close(states, s_ref, F32, "states")


def test_split_prefill_continues_from_the_state():
    # Two sequences of 23 tokens, as pieces 9 + 1 + 13 (each piece continues from the state)
    # against one shot; dim=20 in blocks of 8 (N=4).
    dim, N, n = 20, 4, 2
    u, delta, A, B, C, D, z, bias = _inputs(dim, N, 23 * n, 1, seed=15, bc3d=False)
    states = _rand(3, dim, N, seed=16)
    idx = _ints([2, 1])
    one = states.clone().cpu()
    want = spec.selective_scan_fn(
        _cpu(u), one, *[_cpu(t) for t in (delta, A, B, C, D, z, bias)], delta_softplus=True,
        query_start_loc=_qsl([23] * n).cpu(), cache_indices=idx.cpu(),
        has_initial_state=torch.tensor([True, False]),
    )  # fmt: skip
    got = torch.empty(want.shape, dtype=want.dtype, device=DEVICE)
    pos = 0
    for k, m in enumerate((9, 1, 13)):
        cols = [s * 23 + pos + i for s in range(n) for i in range(m)]
        init = torch.tensor([True, k > 0], device=DEVICE)
        piece = [t[..., cols].contiguous() for t in (u, delta, B, C, z)]
        got[:, cols] = selective_scan_fn(
            piece[0], states, piece[1], A, piece[2], piece[3], D, piece[4], bias, True,
            _qsl([m] * n), idx, init,
        )  # fmt: skip
        pos += m
    _close(got, want, F32, "out (pieces vs one shot)")
    _close(states, one, F32, "states")


def test_nan_and_large_steps_propagate_like_the_spec():
    lens, dim, N = [4], 4, 2
    u, delta, A, B, C, D, z, bias = _inputs(dim, N, 4, 1, seed=17)
    delta = delta.clone()
    delta[0, 1] = 50.0
    delta[1, 2] = -50.0
    u = u.clone()
    u[2, 3] = float("nan")
    states = _rand(1, dim, N, seed=18)
    got, want, _, s_ref = _both(
        u, states, delta, A, B, C, D, z, bias, delta_softplus=True, query_start_loc=_qsl(lens)
    )
    _close(got, want, F32, "out")
    _close(states, s_ref, F32, "states")


def test_prefix_caching_arguments_are_refused():
    u, delta, A, B, C, D, z, bias = _inputs(4, 2, 3, 1)
    states = _rand(1, 4, 2)
    with pytest.raises(NotImplementedError, match="block_idx_last_scheduled_token"):
        selective_scan_fn(
            u, states, delta, A, B, C, query_start_loc=_qsl([3]),
            block_idx_last_scheduled_token=_ints([0]),
        )  # fmt: skip
