"""Cases for the gated delta net: ``fused_gdn_gating``, ``chunk_gated_delta_rule`` (prefill)
and ``fused_recurrent_gated_delta_rule`` (decode and speculative multi-token steps).

Shapes (vLLM 0.32): q/k ``(1, T, H, K)``, v ``(1, T, HV, V)``, g/beta ``(1, T, HV)``, states
``(slots, HV, V, K)``; value head ``hv`` reads q/k head ``hv // (HV / H)`` (GVA by block).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import (
    SSM_LAYOUTS,
    Factory,
    bits,
    offsets,
    plan_slots,
    ssm_state_pool,
)
from mamba_backends.testing.case import Case, CaseContext, Picker, expect_rejected
from mamba_backends.testing.cases._common import (
    DTYPE_PAIRS,
    QUICK_PAIRS,
    bf16,
    compare_slots,
    f16,
    f32,
    is_tensor,
    pick_dtypes,
)
from mamba_backends.testing.cases._nonfinite import (
    POISONS,
    fill_unread,
    inject_one_of,
    strong_log_decays,
)

OPS = ("fused_gdn_gating", "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule")
TYPES = ("gdn",)
GATING, CHUNK, RECUR = OPS
f64 = torch.float64


@dataclass(frozen=True)
class GdnParams:
    lens: tuple[int, ...] = (5,)
    H: int = 1
    HV: int = 2
    K: int = 8
    V: int = 4
    l2: bool = True
    layout: str = "contig"
    n_pad: int = 0
    spec_cols: int = 0  # > 0: 2-D ssm_state_indices with this many columns (spec decode)
    gate: str = "normal"  # normal | strong (log decays down to -1e3 per token, one -inf)
    poison: str = ""  # see _nonfinite.POISONS
    tail: int = 0  # chunk: padded tail of this many NaN tokens past cu_seqlens[-1]

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lens": self.lens, "H": self.H, "HV": self.HV, "K": self.K}
        d.update(V=self.V, l2=self.l2, state=self.layout, pad=self.n_pad, cols=self.spec_cols)
        for k, v, default in (("gate", self.gate, "normal"), ("poison", self.poison, "")):
            if v != default:
                d[k] = v
        if self.tail:
            d["tail"] = self.tail
        return d


def tokens(f: Factory, T: int, p: GdnParams, dt: torch.dtype) -> list[Tensor]:
    """q, k, v, g, beta for ``T`` packed tokens (k unit-norm when the op does not normalise)."""
    q = f.randn(1, T, p.H, p.K, dtype=f64)
    k = f.randn(1, T, p.H, p.K, dtype=f64)
    if not p.l2:
        q = q / q.norm(dim=-1, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
    v = f.randn(1, T, p.HV, p.V, dtype=dt)
    g = -f.uniform(0.01, 0.7, 1, T, p.HV, dtype=f32)
    if p.gate == "strong":
        g = strong_log_decays(f.gen, 1, T, p.HV).to(f.device, f32)
        if T > 2:
            g[0, T // 2, 0] = float("-inf")  # a gate that overflowed upstream: a full reset
    beta = f.uniform(0.05, 1.0, 1, T, p.HV, dtype=dt)
    return [q.to(dt), k.to(dt), v, g, beta]


def poison_tokens(t: list[Tensor], p: GdnParams, seed: int, lens: list[int]) -> None:
    """NaN/inf into one of q, k, v, g, beta (``p.poison``; ``nan_last``: last tokens)."""
    cu = offsets(lens)
    rows = [cu[i + 1] - 1 for i in range(len(lens)) if lens[i]] if p.poison == "nan_last" else None
    named = [(n, x, 1) for n, x in zip(("q", "k", "v", "g", "beta"), t, strict=True)]
    inject_one_of(named, seed, p.poison, rows)


def _rows(t: Tensor, idx: list[int]) -> Tensor:
    return t[:, idx]


# ------------------------------------------------------------------ gating


def _gating(p: GdnParams, dt: torch.dtype, ctx: CaseContext) -> None:
    """``strong``: half-precision ``a``/``b`` up to the fp16 range and a softplus threshold
    far above where ``exp`` overflows (fp32 at 88, fp16 at 11): the spec's softplus is the
    exact ``log(1 + e^(beta x)) / beta``, finite for every finite input."""
    T = sum(p.lens)
    strong = p.gate == "strong"
    args = []
    for f in ctx.factories():
        A_log = f.randn(p.HV, dtype=f32, scale=2.0 if strong else 0.5)
        # some above the softplus threshold
        a = f.randn(T, p.HV, dtype=dt, scale=2e4 if strong else 8.0)
        b = f.randn(T, p.HV, dtype=dt, scale=2e4 if strong else 1.0)
        dt_bias = f.randn(p.HV, dtype=f32)
        named = [("A_log", A_log, 0), ("a", a, 0), ("b", b, 0), ("dt_bias", dt_bias, 0)]
        inject_one_of(named, 7, p.poison)
        args.append((A_log, a, b, dt_bias))
    kw = {"beta": 0.5, "threshold": 1e4} if strong else {}
    g1, b1 = ctx.ops.fused_gdn_gating(*args[0], **kw)
    g2, b2 = ctx.ref.fused_gdn_gating(*args[1], **kw)
    c = ctx.check
    c.dtype("g", g1, f32)
    c.dtype("beta", b1, dt)
    if is_tensor(c, "g", g1, (1, T, p.HV)):
        c.close("g", g1.cpu(), g2)
    if is_tensor(c, "beta", b1, (1, T, p.HV)):
        c.close("beta", b1.cpu(), b2)


# ------------------------------------------------------------------ chunked prefill


def _chunk(
    p: GdnParams, dt: torch.dtype, sdt: torch.dtype, seed: int, kind: str, ctx: CaseContext
) -> None:
    N, T = len(p.lens), sum(p.lens) + p.tail
    cu = offsets(p.lens)
    built = []
    for f in ctx.factories():
        h0 = ssm_state_pool(f, N, (p.HV, p.V, p.K), sdt, p.layout)
        t = tokens(f, T, p, dt)
        poison_tokens(t, p, seed, list(p.lens))
        for x in t:
            x[:, T - p.tail :] = float("nan")  # padding past cu_seqlens[-1]: never read
        built.append((t, h0, f.ints(cu)))
    (ta, ha, cua), (te, he, cue) = built
    snap = bits(ha.base)
    c = ctx.check
    o_e, fin_e = ctx.ref.chunk_gated_delta_rule(
        *te,
        initial_state=he.view,
        output_final_state=True,
        cu_seqlens=cue,
        use_qk_l2norm_in_kernel=p.l2,
    )
    if kind == "batch":  # every sequence alone
        for n in range(N):
            rows = list(range(cu[n], cu[n + 1]))
            o, fin = ctx.ops.chunk_gated_delta_rule(
                *(_rows(t, rows) for t in ta),
                initial_state=ha.view[n : n + 1],
                output_final_state=True,
                use_qk_l2norm_in_kernel=p.l2,
            )
            if is_tensor(c, f"o[seq {n}]", o, (1, len(rows), p.HV, p.V)):
                c.close(f"o[seq {n}]", o.cpu(), o_e[:, rows])
            if is_tensor(c, f"final_state[seq {n}]", fin, (1, p.HV, p.V, p.K)):
                c.close(f"final_state[seq {n}]", fin.cpu(), fin_e[n : n + 1])
    else:
        out = torch.full((1, T, p.HV, p.V), float("nan"), dtype=dt, device=ctx.device)
        o, fin = ctx.ops.chunk_gated_delta_rule(
            *ta,
            initial_state=ha.view,
            output_final_state=True,
            cu_seqlens=cua,
            use_qk_l2norm_in_kernel=p.l2,
            core_attn_out=out,
        )
        c.require(o is out, "o: not returned in core_attn_out")
        c.dtype("o", o, dt)
        c.dtype("final_state", fin, f32)
        c.close("o", out.cpu(), o_e)
        if is_tensor(c, "final_state", fin, (N, p.HV, p.V, p.K)):
            c.close("final_state", fin.cpu(), fin_e)
    c.require(torch.equal(bits(ha.base), snap), "initial_state was modified (it is read only)")


def _split(p: GdnParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext) -> None:
    """Two chunked prefill pieces, then decode steps through a pool == the spec in one shot."""
    N, T = len(p.lens), sum(p.lens)
    cu = offsets(p.lens)
    rng = random.Random(seed)
    cut1 = [rng.randint(1, max(1, n - 2)) for n in p.lens]
    cut2 = [min(n - 1, c + rng.randint(1, 70)) for n, c in zip(p.lens, cut1, strict=True)]
    fa, fe = ctx.factories()
    ta, te = tokens(fa, T, p, dt), tokens(fe, T, p, dt)
    pool = ssm_state_pool(fa, N + 2, (p.HV, p.V, p.K), sdt, p.layout)
    slots = list(range(2, N + 2))
    fill_unread(pool, slots)
    before = pool.base.clone()
    o_e, fin_e = ctx.ref.chunk_gated_delta_rule(
        *te, output_final_state=True, cu_seqlens=fe.ints(cu), use_qk_l2norm_in_kernel=p.l2
    )
    got = torch.full((1, T, p.HV, p.V), float("nan"), dtype=dt)
    state = None
    for lo, hi in ((None, cut1), (cut1, cut2)):
        starts = [cu[n] + (0 if lo is None else lo[n]) for n in range(N)]
        ends = [cu[n] + hi[n] for n in range(N)]
        rows = [t for s, e in zip(starts, ends, strict=True) for t in range(s, e)]
        piece_cu = offsets([e - s for s, e in zip(starts, ends, strict=True)])
        o, state = ctx.ops.chunk_gated_delta_rule(
            *(_rows(t, rows) for t in ta),
            initial_state=state,
            output_final_state=True,
            cu_seqlens=fa.ints(piece_cu),
            use_qk_l2norm_in_kernel=p.l2,
        )
        got[:, rows] = o.cpu()
    assert state is not None
    for n, s in enumerate(slots):
        pool.view[s] = state[n].to(sdt)
    step = 0
    while True:
        live = [n for n in range(N) if cut2[n] + step < p.lens[n]]
        if not live:
            break
        rows = [cu[n] + cut2[n] + step for n in live]
        o, _ = ctx.ops.fused_recurrent_gated_delta_rule(
            *(_rows(t, rows) for t in ta),
            initial_state=pool.view,
            cu_seqlens=fa.ints(range(len(live) + 1)),
            ssm_state_indices=fa.ints([slots[n] for n in live]),
            use_qk_l2norm_in_kernel=p.l2,
        )
        got[:, rows] = o.cpu()
        step += 1
    c = ctx.check
    c.close("o (pieces + decode)", got, o_e)
    c.close("final states", torch.stack([pool.view[s].cpu() for s in slots]), fin_e)
    c.untouched("state pool", before, pool, slots)


# ------------------------------------------------------------------ recurrent / decode


def _decode(p: GdnParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext) -> None:
    c = ctx.check
    if p.spec_cols:
        N = len(p.lens)
        rng = random.Random(seed)
        num_slots = 1 + N * p.spec_cols + 2
        free = rng.sample(range(1, num_slots), N * p.spec_cols)
        table = [free[n * p.spec_cols : (n + 1) * p.spec_cols] for n in range(N)]
        accepted = [rng.randint(1, p.spec_cols) for _ in range(N)]
        lens = list(p.lens)
        written = [table[n][t] for n in range(N) for t in range(lens[n])]
    else:
        plan = plan_slots(len(p.lens) - p.n_pad, p.n_pad, seed, all_init=True)
        num_slots, lens = plan.num_slots, [1] * len(plan.slots)
        written = plan.active_slots
    read = [table[n][accepted[n] - 1] for n in range(N)] if p.spec_cols else written
    T = sum(lens)
    built = []
    for f in ctx.factories():
        pool = ssm_state_pool(f, num_slots, (p.HV, p.V, p.K), sdt, p.layout)
        fill_unread(pool, read)  # pad/null/spare slots hold NaN: never read
        kw: dict[str, Any] = {"cu_seqlens": f.ints(offsets(lens))}
        if p.spec_cols:
            kw["ssm_state_indices"] = f.ints([s for row in table for s in row]).view(N, -1)
            kw["num_accepted_tokens"] = f.ints(accepted)
        else:
            kw["ssm_state_indices"] = f.ints(plan.slots)
        t = tokens(f, T, p, dt)
        poison_tokens(t, p, seed, lens)
        built.append((t, pool, kw))
    (ta, pa, kwa), (te, pe, kwe) = built
    before = pa.base.clone()
    o, ret = ctx.ops.fused_recurrent_gated_delta_rule(
        *ta, initial_state=pa.view, use_qk_l2norm_in_kernel=p.l2, **kwa
    )
    o_e, _ = ctx.ref.fused_recurrent_gated_delta_rule(
        *te, initial_state=pe.view, use_qk_l2norm_in_kernel=p.l2, **kwe
    )
    c.require(ret is pa.view, "final_state: not the initial_state pool (in place)")
    c.dtype("o", o, dt)
    keep = list(range(T)) if p.spec_cols else [i for i, a in enumerate(plan.active) if a]
    if is_tensor(c, "o", o, (1, T, p.HV, p.V)):
        c.close("o (non-pad rows)", o.cpu()[:, keep], o_e[:, keep])
    compare_slots(c, "state", pa, pe, written)
    c.untouched("state", before, pa, written)


# ------------------------------------------------------------------ bad input

_BAD = {
    "heads": (CHUNK, ("v", "q", "H", "HV")),
    "g_shape": (CHUNK, ("g",)),
    "cu_past_end": (CHUNK, ("cu_seqlens",)),  # ending before T is a legal padded tail
    "h0_shape": (CHUNK, ("initial_state",)),
    "slot_range": (RECUR, ("ssm_state_indices",)),
    "slot_dtype": (RECUR, ("ssm_state_indices",)),
}


def _bad(what: str, ctx: CaseContext) -> None:
    op, names = _BAD[what]
    p = GdnParams(lens=(3,), H=2, HV=4)
    f = Factory(0, ctx.device)
    q, k, v, g, beta = tokens(f, 3, p, f32)
    pool = ssm_state_pool(f, 4, (p.HV, p.V, p.K), f32, "contig")
    before = pool.base.clone()
    if op == CHUNK:
        kw: dict[str, Any] = {"cu_seqlens": f.ints([0, 3])}
        if what == "heads":
            v = f.randn(1, 3, 3, p.V, dtype=f32)
            g, beta = g[..., :3], beta[..., :3]
        elif what == "g_shape":
            g = g[:, :2]
        elif what == "cu_past_end":
            kw["cu_seqlens"] = f.ints([0, 4])
        elif what == "h0_shape":
            kw["initial_state"] = f.randn(2, p.HV, p.V, p.K, dtype=f32)
        call = partial(ctx.ops.chunk_gated_delta_rule, q, k, v, g, beta, **kw)
    else:
        idx = f.ints([1, 9, 2]) if what == "slot_range" else f.ints([1, 2, 3]).float()
        call = partial(
            ctx.ops.fused_recurrent_gated_delta_rule,
            q,
            k,
            v,
            g,
            beta,
            initial_state=pool.view,
            cu_seqlens=f.ints([0, 1, 2, 3]),
            ssm_state_indices=idx,
        )
    expect_rejected(ctx.check, call, names, [("state", before, pool)], op=op)


# ------------------------------------------------------------------ the grid


def make_case(
    op: str,
    kind: str,
    p: GdnParams,
    dt: torch.dtype = f32,
    sdt: torch.dtype = f32,
    seed: int = 0,
    **kw: Any,
) -> Case:
    if op == GATING:
        body = partial(_gating, p, dt)
    elif op == CHUNK and kind == "split":
        body = partial(_split, p, dt, sdt, seed)
        kw.setdefault("requires", (CHUNK, RECUR))
    elif op == CHUNK:
        body = partial(_chunk, p, dt, sdt, seed, kind)
    else:
        body = partial(_decode, p, dt, sdt, seed)
    return Case(
        op=op, kind=kind, body=body, params=p.show(), dtype=dt, state_dtype=sdt, seed=seed, **kw
    )


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        quick = (dt, sdt) in QUICK_PAIRS
        layout = SSM_LAYOUTS[i % len(SSM_LAYOUTS)]
        p = GdnParams(lens=(1, 63, 0, 65), H=2, HV=4, layout=layout)
        cases.append(make_case(CHUNK, "oneshot", p, dt, sdt, seed=i, quick=quick))
        pd = GdnParams(lens=(1,) * 5, H=2, HV=4, layout=layout, n_pad=2)
        cases.append(make_case(RECUR, "oneshot", pd, dt, sdt, seed=i, quick=quick))
        if i < 3:
            gp = GdnParams(lens=(7,), HV=6)
            cases.append(make_case(GATING, "oneshot", gp, dt, sdt, quick=quick))
    cases.append(make_case(CHUNK, "oneshot", GdnParams(lens=(130,), l2=False), seed=10))
    cases.append(
        make_case(CHUNK, "oneshot", GdnParams(lens=(64, 1), H=1, HV=1, K=4), bf16, bf16, seed=11)
    )
    cases.append(
        make_case(CHUNK, "batch", GdnParams(lens=(3, 70, 1), H=2, HV=4), seed=12, quick=True)
    )
    cases.append(make_case(CHUNK, "batch", GdnParams(lens=(9, 66)), f16, f32, seed=13))
    sp = GdnParams(lens=(150, 80), H=2, HV=4, layout="page")
    cases.append(make_case(CHUNK, "split", sp, seed=14, quick=True))
    cases.append(make_case(CHUNK, "split", replace(sp, l2=False), bf16, bf16, seed=15))
    spec = GdnParams(lens=(3, 2, 1), H=1, HV=2, spec_cols=3, layout="transposed")
    cases.append(make_case(RECUR, "oneshot", spec, seed=16, quick=True))
    cases.append(make_case(RECUR, "oneshot", spec, bf16, f32, seed=17))
    # numerics: gates over a model's whole range, NaN/inf inputs, NaN padding, NaN slots
    strong = GdnParams(lens=(64, 130, 1), H=2, HV=4, gate="strong")
    cases.append(make_case(CHUNK, "oneshot", strong, seed=20, quick=True))
    cases.append(make_case(CHUNK, "oneshot", strong, bf16, f32, seed=21))
    cases.append(make_case(CHUNK, "split", replace(strong, lens=(150, 80)), seed=22))
    sd = GdnParams(lens=(1,) * 5, H=2, HV=4, n_pad=2, gate="strong")
    cases.append(make_case(RECUR, "oneshot", sd, seed=23))
    for j, poison in enumerate(POISONS[1:]):
        pp = GdnParams(lens=(64, 40, 130), H=2, HV=4, poison=poison, tail=2 * j)
        cases.append(make_case(CHUNK, "oneshot", pp, seed=24 + j, quick=poison == "nan_last"))
        cases.append(make_case(CHUNK, "oneshot", replace(pp, l2=False), f16, f32, seed=27 + j))
        cases.append(
            make_case(RECUR, "oneshot", replace(sd, gate="normal", poison=poison), seed=30 + j)
        )
        cases.append(make_case(RECUR, "oneshot", replace(spec, poison=poison), seed=33 + j))
    for j, dt in enumerate((f16, bf16)):
        gp = GdnParams(lens=(9,), HV=6, gate="strong")
        cases.append(make_case(GATING, "oneshot", gp, dt, f32, quick=j == 0))
        cases.append(make_case(GATING, "oneshot", replace(gp, poison="inf"), dt, f32, seed=1))
    for what in _BAD:
        op = _BAD[what][0]
        cases.append(Case(op=op, kind="bad_input", body=partial(_bad, what), params={"bad": what}))
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    H, HV = pick.choice(((1, 1), (1, 2), (2, 4), (2, 6)))
    p = GdnParams(
        H=H,
        HV=HV,
        K=pick.choice((4, 8, 16)),
        V=pick.choice((4, 8)),
        l2=pick.choice((True, False)),
        layout=pick.choice(SSM_LAYOUTS),
        gate=pick.choice(("normal", "normal", "strong")),
    )
    poison = pick.choice(("", "", *POISONS[1:]))
    if op == GATING:
        lens: tuple[int, ...] = (pick.integer(1, 9),)
        return make_case(op, "oneshot", replace(p, lens=lens, poison=poison), dt, sdt, seed)
    if op == CHUNK:
        kind = pick.choice(("oneshot", "oneshot", "batch", "split"))
        lens = tuple(pick.integer(3 if kind == "split" else 0, 140) for _ in range(2))
        p = replace(p, lens=lens)
        if kind == "oneshot":
            p = replace(p, poison=poison, tail=pick.choice((0, 0, 1, 3)))
        return make_case(op, kind, p, dt, sdt, seed)
    p = replace(p, poison=poison)
    if pick.choice((True, False)):
        cols = pick.integer(1, 3)
        lens = tuple(pick.integer(1, cols) for _ in range(pick.integer(1, 3)))
        return make_case(op, "oneshot", replace(p, lens=lens, spec_cols=cols), dt, sdt, seed)
    n_pad = pick.integer(0, 2)
    lens = (1,) * (pick.integer(1, 4) + n_pad)
    return make_case(op, "oneshot", replace(p, lens=lens, n_pad=n_pad), dt, sdt, seed)
