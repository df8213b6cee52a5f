"""The Triton SSD kernel (``mamba_chunk_scan_combined_varlen``) against the float64 spec.

Beyond the kit's grid: sequences longer than one chunk and than one sub-block (chunk_size
above the kernel's BLOCK_L), T not a multiple of the chunk, resumed chunk alignment, several
sequences, strided initial states gathered from a pool, ngroups > 1, D per head and per
channel, z gating, dt_limit, intermediate states, vLLM 0.33's final_states_out scatter with pad
and null slots (bit-identical afterwards), a padded tail, the split invariant (two prefill
pieces with the final state fed back equal one shot), NaN locality, and what it refuses.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

import math

import pytest
import torch

from mamba_backends import reference as spec
from mamba_backends.contract import ContractError
from mamba_backends.metadata import compute_chunk_metadata
from mamba_backends_triton import interpreting
from mamba_backends_triton.ops import mamba_chunk_scan_combined_varlen as ssd

DEVICE = "cpu" if interpreting() else "cuda"
F32, F16 = torch.float32, torch.float16
TOL = {F32: 2e-4, F16: 5e-3}


def _rand(*shape: int, dtype=F32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _close(got, want, dtype, what):
    tol = TOL[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    ok = ~want.isnan()
    err = (got[ok] - want[ok]).abs() / (tol + tol * want[ok].abs())
    worst = float(err.max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max err ratio {worst}"


def _inputs(lens, H=4, P=8, N=16, G=2, dtype=F32, seed=0, ctx=None, chunk=16, D="h", z=True):
    T = sum(lens)
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    ctx_t = torch.tensor(ctx if ctx is not None else [0] * len(lens))
    cu, last, seq_idx = compute_chunk_metadata(qsl, ctx_t, chunk)
    a = {
        "x": _rand(T, H, P, dtype=dtype, seed=seed),
        "dt": _rand(T, H, dtype=dtype, seed=seed + 1, scale=0.5),
        "A": -(torch.rand(H, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5).to(DEVICE),
        "B": _rand(T, G, N, dtype=dtype, seed=seed + 2, scale=0.5),
        "C": _rand(T, G, N, dtype=dtype, seed=seed + 3, scale=0.5),
        "D": None if D is None else _rand(*((H,) if D == "h" else (H, P)), seed=seed + 4),
        "z": _rand(T, H, P, dtype=dtype, seed=seed + 5) if z else None,
        "dt_bias": _rand(H, seed=seed + 6, scale=0.5) - 1.5,
    }
    meta = {
        "chunk_size": chunk,
        "cu_seqlens": qsl.to(DEVICE),
        "cu_chunk_seqlens": cu.to(DEVICE),
        "last_chunk_indices": last.to(DEVICE),
        "seq_idx": seq_idx.to(DEVICE),
    }
    return a, meta


def _both(a, meta, T, H, P, dtype, **kw):
    """(out, result) of the spec and of the kernel on the same arguments."""
    res = []
    for fn in (spec.mamba_chunk_scan_combined_varlen, ssd):
        out = torch.full((T, H, P), 7.0, dtype=dtype, device=DEVICE)
        kwargs = dict(kw)
        if "final_states_out" in kwargs:
            kwargs["final_states_out"] = kwargs["final_states_out"].clone()
        r = fn(**a, **meta, out=out, dt_softplus=True, **kwargs)
        res.append((out, r, kwargs.get("final_states_out")))
    return res


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize(
    "lens,chunk,ctx,G,D",
    [
        ((5, 37, 13), 16, (0, 3, 20), 2, "h"),  # resumed alignment, G=2
        ((70,), 64, (0,), 1, "hp"),  # one sequence, two chunks, partial last chunk
        ((1, 130, 2), 256, (0, 0, 5), 4, None),  # chunk_size > BLOCK_L: sub-blocks
    ],
)
@pytest.mark.parametrize("P", [8, 16])  # 16: P fills BLOCK_P, the unmasked (EVEN_P) kernel
def test_matches_spec_with_initial_states(dtype, lens, chunk, ctx, G, D, P):
    H, N = 4, 16
    a, meta = _inputs(lens, H, P, N, G, dtype, seed=len(lens), ctx=ctx, chunk=chunk, D=D)
    # Initial states as a gathered view of a strided pool: (slots, N, P, H) transposed.
    pool = _rand(len(lens) + 2, N, P, H, seed=9).permute(0, 3, 2, 1)
    init = pool[torch.arange(len(lens), device=DEVICE) + 1]
    (o_ref, s_ref, _), (o, s, _) = _both(
        a, meta, sum(lens), H, P, dtype, initial_states=init, state_dtype=F32
    )
    _close(o, o_ref, dtype, "out")
    _close(s, s_ref, dtype, "final states")
    assert s.dtype == F32


def test_intermediate_states_dt_limit_no_z_and_state_dtype():
    lens, H, P, N = (9, 23), 2, 16, 16
    a, meta = _inputs(lens, H, P, N, G=1, seed=3, chunk=8, z=False, D=None)
    kw = {"return_intermediate_states": True, "dt_limit": (0.05, 0.3), "state_dtype": F16}
    (o_ref, s_ref, _), (o, s, _) = _both(a, meta, sum(lens), H, P, F32, **kw)
    _close(o, o_ref, F32, "out")
    assert s.shape == (meta["cu_chunk_seqlens"].numel() - 1, H, P, N) and s.dtype == F16
    _close(s, s_ref, F16, "chunk states")


def test_final_states_out_scatter_skips_pad_and_null_slots():
    lens, H, P, N = (6, 11, 3, 4), 4, 8, 16
    a, meta = _inputs(lens, H, P, N, G=2, seed=5, chunk=8)
    # A pool laid out (slots, N, H, P) and seen as (slots, H, P, N): any strides.
    pool = _rand(6, N, H, P, seed=11).permute(0, 2, 3, 1)
    idx = torch.tensor([3, -1, 5, 0], dtype=torch.int32, device=DEVICE)
    init = _rand(len(lens), H, P, N, seed=12)
    (o_ref, r_ref, p_ref), (o, r, p) = _both(
        a, meta, sum(lens), H, P, F32, initial_states=init,
        final_states_out=pool, final_state_indices=idx,
    )  # fmt: skip
    assert r is None and r_ref is None
    _close(o, o_ref, F32, "out")
    _close(p, p_ref, F32, "pool")
    for slot in (0, 1, 2, 4):  # null, untouched, untouched, untouched
        assert torch.equal(p[slot], pool[slot]), f"slot {slot} was written"
    # Without indices: slot b, slot 0 included.
    pool2 = torch.zeros(5, H, P, N, device=DEVICE)
    (_, _, q_ref), (_, _, q) = _both(a, meta, sum(lens), H, P, F32, final_states_out=pool2)
    _close(q, q_ref, F32, "pool without indices")


def test_padded_tail_is_left_alone():
    lens, H, P = (5, 9), 2, 8
    a, meta = _inputs(lens, H, P, 16, G=1, seed=7, chunk=8)
    T = sum(lens) + 3  # three padding tokens past cu_seqlens[-1]
    for k in ("x", "z"):
        a[k] = torch.cat([a[k], _rand(3, H, P, seed=8)])
    a["dt"] = torch.cat([a["dt"], _rand(3, H, seed=8)])
    a["B"] = torch.cat([a["B"], _rand(3, 1, 16, seed=8)])
    a["C"] = torch.cat([a["C"], _rand(3, 1, 16, seed=8)])
    (o_ref, s_ref, _), (o, s, _) = _both(a, meta, T, H, P, F32)
    _close(o, o_ref, F32, "out")
    assert bool((o[sum(lens) :] == 7.0).all())
    _close(s, s_ref, F32, "states")


@pytest.mark.parametrize("dtype", [F32, F16])
def test_split_prefill_equals_one_shot(dtype):
    """Two pieces, the first's final states fed back as initial states, equal one shot."""
    lens, cut, H, P, N, chunk = (21, 40), (13, 17), 4, 8, 16, 16
    a, meta = _inputs(lens, H, P, N, G=2, dtype=dtype, seed=21, chunk=chunk)
    T = sum(lens)
    out = torch.zeros(T, H, P, dtype=dtype, device=DEVICE)
    final = ssd(**a, **meta, out=out, dt_softplus=True, state_dtype=F32)
    starts = [0, lens[0]]
    rows1 = [r for s, c in zip(starts, cut, strict=True) for r in range(s, s + c)]
    rows2 = [r for s, c, n in zip(starts, cut, lens, strict=True) for r in range(s + c, s + n)]
    got = torch.zeros(T, H, P, dtype=dtype, device=DEVICE)
    state = None
    for rows, ctx in ((rows1, (0, 0)), (rows2, cut)):
        n_tok = [sum(1 for r in rows if s <= r < s + n) for s, n in zip(starts, lens, strict=True)]
        qsl = torch.tensor([0, *torch.tensor(n_tok).cumsum(0).tolist()], dtype=torch.int32)
        cu, last, si = compute_chunk_metadata(qsl, torch.tensor(ctx), chunk)
        part = {k: (v[rows] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
        o = torch.zeros(len(rows), H, P, dtype=dtype, device=DEVICE)
        state = ssd(
            **part, chunk_size=chunk, cu_seqlens=qsl.to(DEVICE), cu_chunk_seqlens=cu.to(DEVICE),
            last_chunk_indices=last.to(DEVICE), seq_idx=si.to(DEVICE), out=o,
            initial_states=state, dt_softplus=True, state_dtype=F32,
        )  # fmt: skip
        got[rows] = o
    _close(got, out, dtype, "out (split vs one shot)")
    _close(state, final, dtype, "final state (split vs one shot)")


def test_out_may_be_x_in_place():
    lens, H, P = (12, 7), 2, 8
    a, meta = _inputs(lens, H, P, 16, G=1, seed=13, chunk=8)
    want = torch.zeros(sum(lens), H, P, device=DEVICE)
    spec.mamba_chunk_scan_combined_varlen(**a, **meta, out=want, dt_softplus=True)
    a["x"] = a["x"].clone()
    ssd(**a, **meta, out=a["x"], dt_softplus=True)
    _close(a["x"], want, F32, "out written over x")


def test_nan_reaches_later_tokens_only():
    """A NaN in x at token t poisons its channel from t on (in the spec too), never before t,
    and never another sequence."""
    lens, H, P, chunk = (40, 9), 2, 8, 32
    a, meta = _inputs(lens, H, P, 16, G=1, seed=17, chunk=chunk, z=False)
    a["x"] = a["x"].clone()
    a["x"][20, 1, 3] = float("nan")
    a["x"][45, 0, 2] = float("inf")
    (o_ref, s_ref, _), (o, s, _) = _both(a, meta, sum(lens), H, P, F32)
    assert bool(o[:20].isfinite().all()) and bool(o[20:40, 1, 3].isnan().all())
    _close(o[:40], o_ref[:40], F32, "out of the NaN sequence")
    _close(o[40:45], o_ref[40:45], F32, "out of the other sequence before the inf")
    _close(s[0], s_ref[0], F32, "state after the NaN")


def test_refuses_what_it_cannot_honour():
    lens = (4,)
    a, meta = _inputs(lens, 2, 4, 8, G=1, seed=1, chunk=4)
    out = torch.zeros(4, 2, 4, device=DEVICE)
    with pytest.raises(NotImplementedError, match="float64"):
        ssd(**{**a, "x": a["x"].double()}, **meta, out=out.double())
    with pytest.raises(NotImplementedError, match="state_dtype"):
        ssd(**a, **meta, out=out, state_dtype=torch.float64)
    with pytest.raises(ContractError, match="final_states_out"):
        ssd(**a, **meta, out=out, final_states_out=torch.zeros(1, 2, 4, 8, device=DEVICE),
            return_intermediate_states=True)  # fmt: skip
    assert bool((out == 0).all())


def test_no_sequences():
    a, meta = _inputs((3,), 2, 4, 8, G=1, chunk=4)
    empty = {k: (v[:0] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
    zero = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    none = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    states = ssd(
        **empty, chunk_size=4, cu_seqlens=zero, cu_chunk_seqlens=zero, last_chunk_indices=none,
        seq_idx=none, out=torch.zeros(0, 2, 4, device=DEVICE),
    )  # fmt: skip
    assert states.shape == (0, 2, 4, 8)
    assert math.prod(states.shape) == 0


def test_mamba2_backend_is_registered_and_serves_the_ssd_op():
    from mamba_backends.selector import registered_backend_names, resolve_selected_backend
    from mamba_backends_triton.backends import TritonMamba2Backend

    assert registered_backend_names()["triton.mamba2"] == (
        "mamba_backends_triton.backends.TritonMamba2Backend"
    )
    assert resolve_selected_backend("triton.mamba2") is TritonMamba2Backend
    assert TritonMamba2Backend.mamba_type == "mamba2" and TritonMamba2Backend.chunk_size == 256
    assert "mamba_chunk_scan_combined_varlen" in TritonMamba2Backend.op_names()
    assert callable(TritonMamba2Backend.ops().mamba_chunk_scan_combined_varlen)
