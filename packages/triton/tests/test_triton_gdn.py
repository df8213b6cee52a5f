"""The Triton GDN ops (``fused_gdn_gating``, ``chunk_gated_delta_rule``,
``fused_recurrent_gated_delta_rule``) against the spec.

The conformance kit's cases run in test_triton_conformance (``triton.gdn``); here is what the
kit's grid does not reach: tiles split into several value-row blocks and (prefill) several
chunks (tuning overrides), K/V that are not powers of two, varlen
multi-token sequences without indices, GVA, head-wise beta, per-token states with and without
an initial state, strided pools (transposed, inside pages), NaN-filled pad/null/spare slots
that stay bit-identical, reads-before-writes across sequences with 2-D indices, a padded tail,
strongly negative and infinite gates, NaN/inf inputs, and the custom-op checks.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from triton_test_helpers import DEVICE, F16, F32, close, cpu, ints, rand, same_bits, strided_states

from mamba_backends import reference as spec
from mamba_backends.contract import ContractError
from mamba_backends.library.checks import check_compiled, check_fake, op_cases, opcheck
from mamba_backends.testing._tensors import Factory
from mamba_backends.tuning import override
from mamba_backends_triton import backends
from mamba_backends_triton.ops import (
    chunk_gated_delta_rule,
    fused_gdn_gating,
    fused_recurrent_gated_delta_rule,
)

RECUR, GATING = "fused_recurrent_gated_delta_rule", "fused_gdn_gating"
CHUNK = "chunk_gated_delta_rule"
#: Small tiles: several value-row blocks per head even at tiny sizes.
SMALL = {"TILE": 64, "num_warps": 1, "num_stages": 1, "SNAP_BLOCK_R": 2, "SNAP_BLOCK": 32,
         "snap_num_warps": 1}  # fmt: skip


def _tokens(B, T, H, HV, K, V, dtype=F32, seed=0, beta_rows=False):
    q = rand(B, T, H, K, dtype=dtype, seed=seed)
    k = rand(B, T, H, K, dtype=dtype, seed=seed + 1)
    v = rand(B, T, HV, V, dtype=dtype, seed=seed + 2)
    g = -(rand(B, T, HV, seed=seed + 3).abs() * 0.5 + 0.01)
    bshape = (B, T, HV, V) if beta_rows else (B, T, HV)
    beta = torch.sigmoid(rand(*bshape, seed=seed + 4)).to(dtype)
    return q, k, v, g, beta


def _both(*args, **kw):
    """Ours on the given tensors, the spec on CPU copies; returns (ours, spec, spec's state)."""
    kw_cpu = {n: cpu(x) for n, x in kw.items()}
    want = spec.fused_recurrent_gated_delta_rule(*[cpu(a) for a in args], **kw_cpu)
    got = fused_recurrent_gated_delta_rule(*args, **kw)
    return got, want, kw_cpu.get("initial_state")


def _pool(layout: str, slots: int, HV: int, V: int, K: int, dtype=F32, seed=9):
    """A state pool ``(slots, HV, V, K)`` and its base tensor (see ``strided_states``)."""
    return strided_states(layout, slots, HV, V, K, dtype, seed)


# ------------------------------------------------------------------ gating


@pytest.mark.parametrize("dtype", [F32, F16])
def test_gating_strided_views_odd_heads_extremes(dtype):
    # a and b are column slices of one projection (row stride 2*HV + 3); HV=5 (a padded head
    # block) and T=37 over tiles of 8 elements (several programs, a partial last one); values
    # above the threshold, far below zero, and NaN/inf in a, b and A_log.
    T, HV = 37, 5
    proj = rand(T, 2 * HV + 3, dtype=dtype, seed=1, scale=6.0)
    a, b = proj[:, 1 : 1 + HV], proj[:, 2 + HV : 2 + 2 * HV]
    a[3, 1], a[4, 2], a[5, 0], a[6, 4] = float("nan"), float("inf"), -float("inf"), 3e4
    b[7, 3], b[8, 0], b[9, 1] = float("nan"), float("inf"), -float("inf")
    A_log = rand(HV, seed=2)
    A_log[2] = float("nan")
    dt_bias = rand(HV, seed=3)
    for kw in ({}, {"beta": 0.5, "threshold": 1e4}, {"beta": 2.0, "threshold": 5.0}):
        with override(GATING, {"TILE": 8, "num_warps": 1, "num_stages": 1}):
            g, beta = fused_gdn_gating(A_log, a, b, dt_bias, **kw)
        g_e, beta_e = spec.fused_gdn_gating(*(cpu(x) for x in (A_log, a, b, dt_bias)), **kw)
        assert g.dtype == F32 and beta.dtype == dtype and g.shape == (1, T, HV)
        close(g, g_e, F32, f"g {kw}")  # computed in float32 from the inputs' values
        close(beta, beta_e, dtype, f"beta {kw}")


def test_gating_rejects_what_the_contract_rejects():
    with pytest.raises(ContractError):
        fused_gdn_gating(rand(3), rand(4, 3), rand(4, 2), rand(3))
    with pytest.raises(NotImplementedError, match="float64"):
        fused_gdn_gating(rand(3), rand(4, 3, dtype=torch.float64), rand(4, 3), rand(3))


# ------------------------------------------------------------------ recurrent


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("layout", ["contig", "transposed", "page"])
def test_varlen_gva_1d_indices_pad_null_odd_sizes(layout, dtype):
    # Six sequences of 1..3 tokens (one empty), H=2 -> HV=6 (GVA 3), K=24, V=40 (neither a
    # power of two), value rows in blocks of 16 (3 per head, the last partial); a pad (-1) and
    # the null block (0) among the indices; every slot no sequence reads holds NaN, which
    # must neither leak nor change.
    lens = [2, 1, 3, 0, 1, 2]
    idx = [4, -1, 7, 2, 0, 1]
    T, H, HV, K, V, slots = sum(lens), 2, 6, 24, 40, 9
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, dtype, seed=3)
    state, base = _pool(layout, slots, HV, V, K, dtype)
    read = [s for s, n in zip(idx, lens, strict=True) if s > 0 and n > 0]
    for s in range(slots):
        if s not in read:
            state[s] = float("nan")
    before = base.clone()
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    kw = dict(initial_state=state, cu_seqlens=ints(cu), ssm_state_indices=ints(idx),
              use_qk_l2norm_in_kernel=True)  # fmt: skip
    with override(RECUR, {**SMALL, "TILE": 512}):
        (o, ret), (o_e, _), theirs = _both(q, k, v, g, beta, **kw)
    assert ret is state and o.dtype == dtype
    close(o, o_e, dtype, "o")
    close(state[read], theirs[read], dtype, "written slots")
    rest = [s for s in range(slots) if s not in read]
    assert same_bits(base.view(slots, -1)[rest], before.view(slots, -1)[rest]), "slot changed"
    if layout == "page":  # the page bytes around each state are never written
        assert same_bits(base[:, :5], before[:, :5]) and same_bits(base[:, -6:], before[:, -6:])


@pytest.mark.parametrize("beta_rows", [False, True])
def test_batch_rows_without_indices_multi_token(beta_rows):
    # No cu_seqlens: B=3 rows of T=4 tokens, state n is sequence n; head-wise beta (B,T,HV,V)
    # or per head; no l2 norm; an explicit scale; non-contiguous q (a transposed copy).
    B, T, H, HV, K, V = 3, 4, 1, 2, 16, 8
    q, k, v, g, beta = _tokens(B, T, H, HV, K, V, seed=5, beta_rows=beta_rows)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    state = rand(B, HV, V, K, seed=6)
    with override(RECUR, SMALL):
        (o, _), (o_e, _), theirs = _both(q, k, v, g, beta, scale=0.3, initial_state=state)
    close(o, o_e, F32, "o")
    close(state, theirs, F32, "states")


@pytest.mark.parametrize("with_state", [False, True])
def test_per_token_states_leave_the_pool_alone(with_state):
    # inplace_final_state=False: a new (B*T, HV, V, K) of the state after each token, zeros
    # for the skipped sequence and the padded tail; the pool is only read; beta None (ones).
    lens = [2, 3, 1]
    T, H, HV, K, V = sum(lens) + 2, 2, 4, 8, 12  # a tail of 2 padding tokens
    q, k, v, g, _ = _tokens(1, T, H, HV, K, V, seed=7)
    kw: dict[str, Any] = {"inplace_final_state": False, "cu_seqlens": ints([0, 2, 5, 6])}
    if with_state:
        state = rand(5, HV, V, K, seed=8)
        kw.update(initial_state=state, ssm_state_indices=ints([3, 0, 1]))
        before = state.clone()
    (o, per), (o_e, per_e), _ = _both(q, k, v, g, None, **kw)
    assert per.shape == (T, HV, V, K) and per.dtype == F32
    close(o, o_e, F32, "o")
    close(per, per_e, F32, "per-token states")
    if with_state:
        assert same_bits(state, before), "the pool changed"
        assert not per[2:5].any() and not o[:, 2:5].any(), "skipped sequence not zero"
    assert not per[-2:].any() and not o[:, -2:].any(), "padded tail not zero"


@pytest.mark.parametrize(
    ("table", "accepted", "lens"),
    [
        # no aliasing (vLLM's speculative decoding); the last sequence accepted all 3
        ([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [1, 2, 3], [3, 2, 1]),
        # sequence 0 writes slot 5 (seq 1's source) at its 2nd token and slot 9 (seq 2's) at
        # its 3rd; sequence 1 writes seq 0's source; null/pad columns are never written
        ([[2, 5, 9], [5, 2, 0], [9, -1, 7]], [1, 1, 1], [3, 2, 2]),
        # a skipped sequence (pad source) whose columns hold another's source: no effect
        ([[3, 6, 7], [-1, 3, 3], [8, 1, 2]], [1, 1, 2], [2, 2, 1]),
    ],
)
@pytest.mark.parametrize("use_accepted", [True, False])
def test_2d_indices_reads_before_writes(table, accepted, lens, use_accepted):
    T, H, HV, K, V, slots = sum(lens), 1, 2, 8, 6, 11
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=11)
    state = rand(slots, HV, V, K, seed=12)
    state[0] = float("nan")
    before = state.clone()
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    kw = dict(initial_state=state, cu_seqlens=ints(cu), ssm_state_indices=ints(table),
              num_accepted_tokens=ints(accepted) if use_accepted else None,
              use_qk_l2norm_in_kernel=True)  # fmt: skip
    with override(RECUR, SMALL):
        (o, _), (o_e, _), theirs = _both(q, k, v, g, beta, **kw)
    cols = [a - 1 for a in accepted] if use_accepted else [0] * len(lens)
    live = [n for n in range(len(lens)) if table[n][cols[n]] > 0]
    rows = [t for n in live for t in range(cu[n], cu[n + 1])]
    close(o[:, rows], o_e[:, rows], F32, "o")
    dead = [t for t in range(T) if t not in rows]
    assert not o[:, dead].any(), "skipped sequence's outputs not zero"
    written = sorted({table[n][t] for n in live for t in range(lens[n])} - {0, -1})
    close(state[written], theirs[written], F32, "written slots")
    rest = [s for s in range(slots) if s not in written]
    assert same_bits(state[rest], before[rest]), "a slot outside the destinations changed"


@pytest.mark.parametrize("inplace", [True, False])
def test_int64_offsets_path(monkeypatch, inplace):
    # The kernel's int64 element offsets (taken when a stride product could pass 2^31, which
    # no interpreter-sized tensor reaches): forced on, with 2-D indices and num_accepted_tokens.
    from mamba_backends_triton.ops.gdn import recurrent

    monkeypatch.setattr(recurrent, "_needs_int64", lambda *a: True)
    lens, table, accepted = [2, 1], [[2, 5], [5, 3]], [1, 2]
    T, H, HV, K, V = sum(lens), 1, 2, 12, 6
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=21, beta_rows=True)
    state = rand(6, HV, V, K, seed=22)
    kw = dict(initial_state=state, inplace_final_state=inplace, cu_seqlens=ints([0, 2, 3]),
              ssm_state_indices=ints(table), num_accepted_tokens=ints(accepted),
              use_qk_l2norm_in_kernel=True)  # fmt: skip
    with override(RECUR, SMALL):
        (o, fin), (o_e, fin_e), theirs = _both(q, k, v, g, beta, **kw)
    close(o, o_e, F32, "o")
    if inplace:
        close(state[[2, 5, 3]], theirs[[2, 5, 3]], F32, "written slots")
    else:
        close(fin, fin_e, F32, "per-token states")


def test_strong_gates_and_nonfinite_inputs_follow_the_spec():
    # Log decays down to -1e3, one -inf (a full reset), one +inf (0 * inf in the spec); NaN in
    # one q element, inf in one v and one k element; K=24 (padded columns must stay clean).
    lens = [3, 4, 2, 3]
    T, H, HV, K, V = sum(lens), 2, 4, 24, 8
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=13)
    g = -torch.exp(rand(1, T, HV, seed=14).abs() * 4.0)
    g[0, 1, 0], g[0, 4, 2], g[0, 8, 3] = float("-inf"), float("inf"), -1e3
    q[0, 2, 1, 5] = float("nan")
    v[0, 5, 1, 3] = float("inf")
    k[0, 10, 0, 7] = -float("inf")
    state = rand(6, HV, V, K, seed=15)
    kw = dict(initial_state=state, cu_seqlens=ints([0, 3, 7, 9, 12]),
              ssm_state_indices=ints([5, 1, 3, 2]))  # fmt: skip
    for l2 in (True, False):
        st = state.clone()
        kw["initial_state"] = st
        with override(RECUR, SMALL):
            (o, _), (o_e, _), theirs = _both(q, k, v, g, beta, use_qk_l2norm_in_kernel=l2, **kw)
        close(o, o_e, F32, f"o (l2={l2})")
        close(st[[5, 1, 3, 2]], theirs[[5, 1, 3, 2]], F32, f"states (l2={l2})")


def test_padded_columns_keep_an_infinite_output_infinite():
    # K=3 (BLOCK_K=4): v=+inf with positive k and q from a zero state gives S = +inf k^T and
    # o = +inf in the spec; a padded column holding inf * 0 = NaN would turn o into NaN.
    T, H, HV, K, V = 2, 1, 1, 3, 2
    q = torch.full((1, T, H, K), 0.5, device=DEVICE)
    k = torch.full((1, T, H, K), 0.7, device=DEVICE)
    v = torch.ones(1, T, HV, V, device=DEVICE)
    v[0, 0, 0, 1] = float("inf")
    g = torch.full((1, T, HV), -0.1, device=DEVICE)
    state = torch.zeros(2, HV, V, K, device=DEVICE)
    (o, _), (o_e, _), theirs = _both(
        q, k, v, g, None, initial_state=state, cu_seqlens=ints([0, 1]),
        ssm_state_indices=ints([1]),
    )  # fmt: skip
    assert o_e[0, 0, 0, 1] == float("inf")
    close(o, o_e, F32, "o")
    close(state, theirs, F32, "states")


def test_padded_tail_and_empty_batch():
    T, H, HV, K, V = 6, 1, 1, 4, 4
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=16)
    state = rand(3, HV, V, K, seed=17)
    (o, _), (o_e, _), _ = _both(
        q, k, v, g, beta, initial_state=state, cu_seqlens=ints([0, 2, 2]),
        ssm_state_indices=ints([1, 2]),
    )  # fmt: skip
    close(o, o_e, F32, "o")
    assert not o[:, 2:].any(), "tail not zero"
    # no sequences at all (cu_seqlens = [0]): every row is tail
    o, ret = fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=state[:0], cu_seqlens=ints([0])
    )
    assert ret.shape[0] == 0 and not o.any()


def test_recurrent_rejects_what_the_contract_rejects():
    q, k, v, g, beta = _tokens(1, 2, 1, 2, 4, 4)
    state = rand(3, 2, 4, 4)
    with pytest.raises(ContractError):
        fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state[:, :1])
    with pytest.raises(NotImplementedError, match="float64"):
        fused_recurrent_gated_delta_rule(
            q, k, v, g, beta, initial_state=state.double(), cu_seqlens=ints([0, 1, 2]),
            ssm_state_indices=ints([1, 2]),
        )  # fmt: skip


# ------------------------------------------------------------------ chunked prefill

#: Chunks of 16 tokens and value rows in blocks of 16: several of each at tiny sizes.
CHUNK_SMALL = {"BLOCK_T": 16, "BLOCK_V": 16, "num_warps": 1, "num_stages": 1}


@pytest.mark.parametrize("dtype", [F32, F16])
def test_chunk_varlen_gva_strided_odd_sizes_strong_gates(dtype):
    # Four sequences (one empty, one of 33 tokens over three chunks of 16) and a padded tail of
    # 3 NaN tokens; H=2 -> HV=6 (GVA 3); K=24, V=40 (padded columns, three value-row blocks);
    # a transposed initial state; core_attn_out a strided view whose tail must become zero;
    # per-token gates from -0.002 to -1100 (cumulative sums past -1e4 within a chunk), a tiny
    # gate right after a huge one, and one -inf (a full reset).
    lens = [5, 33, 0, 20]
    Tv, H, HV, K, V = sum(lens), 2, 6, 24, 40
    T = Tv + 3
    q, k, v, _, beta = _tokens(1, T, H, HV, K, V, dtype, seed=41)
    gen = torch.Generator().manual_seed(42)
    g = (-torch.exp(torch.rand(1, T, HV, generator=gen, dtype=torch.float64) * 13 - 6)).float()
    g[0, 10, 1], g[0, 11, 1], g[0, 30, 4] = -1100.0, -0.002, float("-inf")
    g = g.to(DEVICE)
    for x in (q, k, v, g, beta):
        x[:, Tv:] = float("nan")
    h0 = rand(len(lens), HV, K, V, dtype=dtype, seed=43).transpose(-1, -2)
    out_base = torch.full((1, T, HV, V + 3), float("nan"), dtype=dtype, device=DEVICE)
    out = out_base[..., 1 : V + 1]
    cu = [0, 5, 38, 38, Tv]
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    want, fin_e = spec.chunk_gated_delta_rule(
        *(cpu(x) for x in (q, k, v, g, beta)), cu_seqlens=torch.tensor(cu),
        **{n: cpu(x) for n, x in kw.items()},
    )  # fmt: skip
    with override(CHUNK, CHUNK_SMALL):
        o, fin = chunk_gated_delta_rule(
            q, k, v, g, beta, cu_seqlens=ints(cu), core_attn_out=out, **kw
        )
    assert o is out and fin.dtype == F32 and fin.shape == (len(lens), HV, V, K)
    close(o, want, dtype, "o")
    close(fin, fin_e, dtype, "final states")
    assert not o[:, Tv:].any(), "padded tail not zero"
    assert out_base[..., 0].isnan().all() and out_base[..., -2:].isnan().all(), "out of view"


def test_chunk_batch_rows_scale_without_state_and_nonfinite_inputs():
    # No cu_seqlens: B=2 rows of T=37 tokens (three chunks); an explicit scale, no initial
    # state, no l2 norm; then inf in one v element and NaN in one k element (the chunks that
    # hold them take the token path: earlier outputs of those chunks stay finite, later ones
    # follow the spec's NaN/inf).
    B, T, H, HV, K, V = 2, 37, 1, 2, 16, 20
    q, k, v, g, beta = _tokens(B, T, H, HV, K, V, seed=44)
    k = k / k.norm(dim=-1, keepdim=True)
    for poison in (False, True):
        if poison:
            v[0, 20, 1, 3] = float("inf")
            k[1, 5, 0, 7] = float("nan")
        want, fin_e = spec.chunk_gated_delta_rule(
            *(cpu(x) for x in (q, k, v, g, beta)), scale=0.3, output_final_state=True
        )
        with override(CHUNK, CHUNK_SMALL):
            o, fin = chunk_gated_delta_rule(q, k, v, g, beta, scale=0.3, output_final_state=True)
        close(o, want, F32, f"o (poison={poison})")
        close(fin, fin_e, F32, f"final states (poison={poison})")


def test_chunk_rejects_what_the_contract_rejects():
    q, k, v, g, beta = _tokens(1, 4, 1, 2, 4, 4)
    with pytest.raises(ContractError):
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=rand(1, 2, 4, 5))
    with pytest.raises(NotImplementedError, match="float64"):
        chunk_gated_delta_rule(q, k, v, g.double(), beta)


# ------------------------------------------------------------------ custom ops

PICKED = [(GATING, "gates"), (RECUR, "in_place"), (RECUR, "per_token"), (CHUNK, "final_state"),
          (CHUNK, "core_attn_out")]  # fmt: skip
CUSTOM = [c for c in op_cases() if (c.op, c.form) in PICKED]


@pytest.mark.parametrize("case", CUSTOM, ids=lambda c: c.id)
def test_custom_op_opcheck_compile_and_fake(case: Any) -> None:
    op = getattr(backends.TritonGdnBackend.ops(), case.op)
    assert op.custom_op.name() == f"mamba_backends::triton_ops__{case.op}"
    result = opcheck(op, case.build(Factory(0, DEVICE)))
    assert set(result.values()) == {"SUCCESS"}, result
    check_compiled(op, case.build(Factory(1, DEVICE)), backend="eager")
    check_fake(op, case.build(Factory(2, DEVICE)))
