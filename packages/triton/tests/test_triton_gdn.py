"""The Triton GDN decode ops (``fused_gdn_gating``, ``fused_recurrent_gated_delta_rule``)
against the spec.

No Triton backend serves the ``gdn`` type yet (the chunked prefill kernel is missing), so the
conformance kit's fixed and drawn cases of these two ops run here through a test-only
declaration of the Triton dtypes/devices; then what the kit's grid does not reach: tiles split
into several value-row blocks (tuning overrides), K/V that are not powers of two, varlen
multi-token sequences without indices, GVA, head-wise beta, per-token states with and without
an initial state, strided pools (transposed, inside pages), NaN-filled pad/null/spare slots
that stay bit-identical, reads-before-writes across sequences with 2-D indices, a padded tail,
strongly negative and infinite gates, NaN/inf inputs, and the custom-op checks.

Runs in Triton's interpreter on CPU without a GPU (see conftest), fp32/fp16 only there.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from mamba_backends import reference as spec
from mamba_backends.contract import ContractError
from mamba_backends.library.checks import check_compiled, check_fake, op_cases, opcheck
from mamba_backends.testing import cases as registry
from mamba_backends.testing._tensors import Factory
from mamba_backends.testing.case import run_case
from mamba_backends.tuning import override
from mamba_backends_triton import backends, interpreting
from mamba_backends_triton.ops import fused_gdn_gating, fused_recurrent_gated_delta_rule

DEVICE = "cpu" if interpreting() else "cuda"
F32, F16 = torch.float32, torch.float16
TOL = {F32: 3e-5, F16: 5e-3}
RECUR, GATING = "fused_recurrent_gated_delta_rule", "fused_gdn_gating"
#: Small tiles: several value-row blocks per head even at tiny sizes.
SMALL = {"TILE": 64, "num_warps": 1, "num_stages": 1, "SNAP_BLOCK_R": 2, "SNAP_BLOCK": 32,
         "snap_num_warps": 1}  # fmt: skip


class _DecodeOps(backends._TritonBackend):
    """The Triton dtypes and devices under the ``gdn`` type, for running the kit's cases of the
    two decode ops only (not a backend: it is registered nowhere)."""

    name = "triton.gdn-decode-ops (test only)"
    mamba_type = "gdn"


# ------------------------------------------------------------------ the kit's cases


def _kit_cases() -> list[Any]:
    return registry.fixed_cases("gdn", ops=(GATING, RECUR))


@pytest.mark.parametrize("case", _kit_cases(), ids=lambda c: c.id)
def test_kit_fixed_case(case: Any) -> None:
    result = run_case(_DecodeOps.ops(), case, DEVICE, _DecodeOps)
    if result.status == "skipped":
        pytest.skip(result.message)
    assert result.ok, f"{case.id}: {result.status}: {result.message}"


class _Seeded:
    """A :class:`~mamba_backends.testing.case.Picker` over a seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Any) -> Any:
        return self.rng.choice(list(options))

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


@pytest.mark.parametrize("op", [GATING, RECUR])
@pytest.mark.parametrize("seed", range(6))
def test_kit_drawn_case(op: str, seed: int) -> None:
    case = registry.draw_case(op, _Seeded(1000 * seed + 7), "gdn")
    result = run_case(_DecodeOps.ops(), case, DEVICE, _DecodeOps)
    if result.status == "skipped":
        pytest.skip(result.message)
    assert result.ok, f"{case.id}: {result.status}: {result.message}"


# ------------------------------------------------------------------ helpers


def _rand(*shape: int, dtype: torch.dtype = F32, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _ints(vals, dtype=torch.int32):
    return torch.tensor(vals, dtype=dtype, device=DEVICE)


def _close(got, want, dtype, what):
    tol = TOL[dtype]
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ"
    inf, fin = want.isinf(), want.isfinite()
    assert torch.equal(got[inf], want[inf]), f"{what}: inf values differ"
    err = (got[fin] - want[fin]).abs() / (tol + tol * want[fin].abs())
    worst = float(err.max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max err ratio {worst}"


def _same_bits(a, b) -> bool:
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    width = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a.view(width), b.view(width))


def _tokens(B, T, H, HV, K, V, dtype=F32, seed=0, beta_rows=False):
    q = _rand(B, T, H, K, dtype=dtype, seed=seed)
    k = _rand(B, T, H, K, dtype=dtype, seed=seed + 1)
    v = _rand(B, T, HV, V, dtype=dtype, seed=seed + 2)
    g = -(_rand(B, T, HV, seed=seed + 3).abs() * 0.5 + 0.01)
    bshape = (B, T, HV, V) if beta_rows else (B, T, HV)
    beta = torch.sigmoid(_rand(*bshape, seed=seed + 4)).to(dtype)
    return q, k, v, g, beta


def _cpu(x):
    return x.detach().cpu().clone() if isinstance(x, torch.Tensor) else x


def _both(*args, **kw):
    """Ours on the given tensors, the spec on CPU copies; returns (ours, spec, spec's state)."""
    kw_cpu = {n: _cpu(x) for n, x in kw.items()}
    want = spec.fused_recurrent_gated_delta_rule(*[_cpu(a) for a in args], **kw_cpu)
    got = fused_recurrent_gated_delta_rule(*args, **kw)
    return got, want, kw_cpu.get("initial_state")


def _pool(layout: str, slots: int, HV: int, V: int, K: int, dtype=F32, seed=9):
    """A state pool ``(slots, HV, V, K)`` and its base tensor: contiguous, a transposed view,
    or inside wider pages."""
    if layout == "transposed":
        base = _rand(slots, HV, K, V, dtype=dtype, seed=seed)
        return base.transpose(-1, -2), base
    if layout == "page":
        base = _rand(slots, HV * V * K + 11, dtype=dtype, seed=seed)
        return base[:, 5 : 5 + HV * V * K].view(slots, HV, V, K), base
    base = _rand(slots, HV, V, K, dtype=dtype, seed=seed)
    return base, base


# ------------------------------------------------------------------ gating


@pytest.mark.parametrize("dtype", [F32, F16])
def test_gating_strided_views_odd_heads_extremes(dtype):
    # a and b are column slices of one projection (row stride 2*HV + 3); HV=5 (a padded head
    # block) and T=37 over tiles of 8 elements (several programs, a partial last one); values
    # above the threshold, far below zero, and NaN/inf in a, b and A_log.
    T, HV = 37, 5
    proj = _rand(T, 2 * HV + 3, dtype=dtype, seed=1, scale=6.0)
    a, b = proj[:, 1 : 1 + HV], proj[:, 2 + HV : 2 + 2 * HV]
    a[3, 1], a[4, 2], a[5, 0], a[6, 4] = float("nan"), float("inf"), -float("inf"), 3e4
    b[7, 3], b[8, 0], b[9, 1] = float("nan"), float("inf"), -float("inf")
    A_log = _rand(HV, seed=2)
    A_log[2] = float("nan")
    dt_bias = _rand(HV, seed=3)
    for kw in ({}, {"beta": 0.5, "threshold": 1e4}, {"beta": 2.0, "threshold": 5.0}):
        with override(GATING, {"TILE": 8, "num_warps": 1, "num_stages": 1}):
            g, beta = fused_gdn_gating(A_log, a, b, dt_bias, **kw)
        g_e, beta_e = spec.fused_gdn_gating(*(_cpu(x) for x in (A_log, a, b, dt_bias)), **kw)
        assert g.dtype == F32 and beta.dtype == dtype and g.shape == (1, T, HV)
        _close(g, g_e, F32, f"g {kw}")  # computed in float32 from the inputs' values
        _close(beta, beta_e, dtype, f"beta {kw}")


def test_gating_rejects_what_the_contract_rejects():
    with pytest.raises(ContractError):
        fused_gdn_gating(_rand(3), _rand(4, 3), _rand(4, 2), _rand(3))
    with pytest.raises(NotImplementedError, match="float64"):
        fused_gdn_gating(_rand(3), _rand(4, 3, dtype=torch.float64), _rand(4, 3), _rand(3))


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
    kw = dict(initial_state=state, cu_seqlens=_ints(cu), ssm_state_indices=_ints(idx),
              use_qk_l2norm_in_kernel=True)  # fmt: skip
    with override(RECUR, {**SMALL, "TILE": 512}):
        (o, ret), (o_e, _), theirs = _both(q, k, v, g, beta, **kw)
    assert ret is state and o.dtype == dtype
    _close(o, o_e, dtype, "o")
    _close(state[read], theirs[read], dtype, "written slots")
    rest = [s for s in range(slots) if s not in read]
    assert _same_bits(base.view(slots, -1)[rest], before.view(slots, -1)[rest]), "slot changed"
    if layout == "page":  # the page bytes around each state are never written
        assert _same_bits(base[:, :5], before[:, :5]) and _same_bits(base[:, -6:], before[:, -6:])


@pytest.mark.parametrize("beta_rows", [False, True])
def test_batch_rows_without_indices_multi_token(beta_rows):
    # No cu_seqlens: B=3 rows of T=4 tokens, state n is sequence n; head-wise beta (B,T,HV,V)
    # or per head; no l2 norm; an explicit scale; non-contiguous q (a transposed copy).
    B, T, H, HV, K, V = 3, 4, 1, 2, 16, 8
    q, k, v, g, beta = _tokens(B, T, H, HV, K, V, seed=5, beta_rows=beta_rows)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    state = _rand(B, HV, V, K, seed=6)
    with override(RECUR, SMALL):
        (o, _), (o_e, _), theirs = _both(q, k, v, g, beta, scale=0.3, initial_state=state)
    _close(o, o_e, F32, "o")
    _close(state, theirs, F32, "states")


@pytest.mark.parametrize("with_state", [False, True])
def test_per_token_states_leave_the_pool_alone(with_state):
    # inplace_final_state=False: a new (B*T, HV, V, K) of the state after each token, zeros
    # for the skipped sequence and the padded tail; the pool is only read; beta None (ones).
    lens = [2, 3, 1]
    T, H, HV, K, V = sum(lens) + 2, 2, 4, 8, 12  # a tail of 2 padding tokens
    q, k, v, g, _ = _tokens(1, T, H, HV, K, V, seed=7)
    kw: dict[str, Any] = {"inplace_final_state": False, "cu_seqlens": _ints([0, 2, 5, 6])}
    if with_state:
        state = _rand(5, HV, V, K, seed=8)
        kw.update(initial_state=state, ssm_state_indices=_ints([3, 0, 1]))
        before = state.clone()
    (o, per), (o_e, per_e), _ = _both(q, k, v, g, None, **kw)
    assert per.shape == (T, HV, V, K) and per.dtype == F32
    _close(o, o_e, F32, "o")
    _close(per, per_e, F32, "per-token states")
    if with_state:
        assert _same_bits(state, before), "the pool changed"
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
    state = _rand(slots, HV, V, K, seed=12)
    state[0] = float("nan")
    before = state.clone()
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    kw = dict(initial_state=state, cu_seqlens=_ints(cu), ssm_state_indices=_ints(table),
              num_accepted_tokens=_ints(accepted) if use_accepted else None,
              use_qk_l2norm_in_kernel=True)  # fmt: skip
    with override(RECUR, SMALL):
        (o, _), (o_e, _), theirs = _both(q, k, v, g, beta, **kw)
    cols = [a - 1 for a in accepted] if use_accepted else [0] * len(lens)
    live = [n for n in range(len(lens)) if table[n][cols[n]] > 0]
    rows = [t for n in live for t in range(cu[n], cu[n + 1])]
    _close(o[:, rows], o_e[:, rows], F32, "o")
    dead = [t for t in range(T) if t not in rows]
    assert not o[:, dead].any(), "skipped sequence's outputs not zero"
    written = sorted({table[n][t] for n in live for t in range(lens[n])} - {0, -1})
    _close(state[written], theirs[written], F32, "written slots")
    rest = [s for s in range(slots) if s not in written]
    assert _same_bits(state[rest], before[rest]), "a slot outside the destinations changed"


@pytest.mark.parametrize("inplace", [True, False])
def test_int64_offsets_path(monkeypatch, inplace):
    # The kernel's int64 element offsets (taken when a stride product could pass 2^31, which
    # no interpreter-sized tensor reaches): forced on, with 2-D indices and num_accepted_tokens.
    from mamba_backends_triton.ops.gdn import recurrent

    monkeypatch.setattr(recurrent, "_needs_int64", lambda *a: True)
    lens, table, accepted = [2, 1], [[2, 5], [5, 3]], [1, 2]
    T, H, HV, K, V = sum(lens), 1, 2, 12, 6
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=21, beta_rows=True)
    state = _rand(6, HV, V, K, seed=22)
    kw = dict(initial_state=state, inplace_final_state=inplace, cu_seqlens=_ints([0, 2, 3]),
              ssm_state_indices=_ints(table), num_accepted_tokens=_ints(accepted),
              use_qk_l2norm_in_kernel=True)  # fmt: skip
    with override(RECUR, SMALL):
        (o, fin), (o_e, fin_e), theirs = _both(q, k, v, g, beta, **kw)
    _close(o, o_e, F32, "o")
    if inplace:
        _close(state[[2, 5, 3]], theirs[[2, 5, 3]], F32, "written slots")
    else:
        _close(fin, fin_e, F32, "per-token states")


def test_strong_gates_and_nonfinite_inputs_follow_the_spec():
    # Log decays down to -1e3, one -inf (a full reset), one +inf (0 * inf in the spec); NaN in
    # one q element, inf in one v and one k element; K=24 (padded columns must stay clean).
    lens = [3, 4, 2, 3]
    T, H, HV, K, V = sum(lens), 2, 4, 24, 8
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=13)
    g = -torch.exp(_rand(1, T, HV, seed=14).abs() * 4.0)
    g[0, 1, 0], g[0, 4, 2], g[0, 8, 3] = float("-inf"), float("inf"), -1e3
    q[0, 2, 1, 5] = float("nan")
    v[0, 5, 1, 3] = float("inf")
    k[0, 10, 0, 7] = -float("inf")
    state = _rand(6, HV, V, K, seed=15)
    kw = dict(initial_state=state, cu_seqlens=_ints([0, 3, 7, 9, 12]),
              ssm_state_indices=_ints([5, 1, 3, 2]))  # fmt: skip
    for l2 in (True, False):
        st = state.clone()
        kw["initial_state"] = st
        with override(RECUR, SMALL):
            (o, _), (o_e, _), theirs = _both(q, k, v, g, beta, use_qk_l2norm_in_kernel=l2, **kw)
        _close(o, o_e, F32, f"o (l2={l2})")
        _close(st[[5, 1, 3, 2]], theirs[[5, 1, 3, 2]], F32, f"states (l2={l2})")


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
        q, k, v, g, None, initial_state=state, cu_seqlens=_ints([0, 1]),
        ssm_state_indices=_ints([1]),
    )  # fmt: skip
    assert o_e[0, 0, 0, 1] == float("inf")
    _close(o, o_e, F32, "o")
    _close(state, theirs, F32, "states")


def test_padded_tail_and_empty_batch():
    T, H, HV, K, V = 6, 1, 1, 4, 4
    q, k, v, g, beta = _tokens(1, T, H, HV, K, V, seed=16)
    state = _rand(3, HV, V, K, seed=17)
    (o, _), (o_e, _), _ = _both(
        q, k, v, g, beta, initial_state=state, cu_seqlens=_ints([0, 2, 2]),
        ssm_state_indices=_ints([1, 2]),
    )  # fmt: skip
    _close(o, o_e, F32, "o")
    assert not o[:, 2:].any(), "tail not zero"
    # no sequences at all (cu_seqlens = [0]): every row is tail
    o, ret = fused_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=state[:0], cu_seqlens=_ints([0])
    )
    assert ret.shape[0] == 0 and not o.any()


def test_recurrent_rejects_what_the_contract_rejects():
    q, k, v, g, beta = _tokens(1, 2, 1, 2, 4, 4)
    state = _rand(3, 2, 4, 4)
    with pytest.raises(ContractError):
        fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state[:, :1])
    with pytest.raises(NotImplementedError, match="float64"):
        fused_recurrent_gated_delta_rule(
            q, k, v, g, beta, initial_state=state.double(), cu_seqlens=_ints([0, 1, 2]),
            ssm_state_indices=_ints([1, 2]),
        )  # fmt: skip


# ------------------------------------------------------------------ custom ops

PICKED = [(GATING, "gates"), (RECUR, "in_place"), (RECUR, "per_token")]
CUSTOM = [c for c in op_cases() if (c.op, c.form) in PICKED]


@pytest.mark.parametrize("case", CUSTOM, ids=lambda c: c.id)
def test_custom_op_opcheck_compile_and_fake(case: Any) -> None:
    op = getattr(_DecodeOps.ops(), case.op)
    assert op.custom_op.name() == f"mamba_backends::triton_ops__{case.op}"
    result = opcheck(op, case.build(Factory(0, DEVICE)))
    assert set(result.values()) == {"SUCCESS"}, result
    check_compiled(op, case.build(Factory(1, DEVICE)), backend="eager")
    check_fake(op, case.build(Factory(2, DEVICE)))
