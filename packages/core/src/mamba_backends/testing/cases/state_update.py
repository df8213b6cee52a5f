"""Cases for ``selective_state_update`` (decode), in the three forms vLLM's layers use.

- ``mamba1``: state ``(S, dim, N)``, x/dt/z ``(b, dim)``, A ``(dim, N)``, B/C ``(b, N)``;
- ``mamba2``: state ``(S, H, P, N)`` with the tied per-head form of ``MambaMixer2``: dt, A, D
  and dt_bias are per-head values expanded over ``P`` (and ``N``) with stride 0;
- ``full``: the heads form with untied ``(H, P, N)`` A and ``(b, H, P)`` dt.

B/C have ``G`` groups mapped to heads by block: head ``h`` reads group ``h // (H / G)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import (
    SSM_LAYOUTS,
    Factory,
    SlotPlan,
    StatePool,
    bits,
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
    pick_dtypes,
)
from mamba_backends.types import NULL_BLOCK_ID

OPS = ("selective_state_update",)
SSU = OPS[0]


@dataclass(frozen=True)
class SsuParams:
    rows: int  # decode rows, pads included
    form: str = "mamba2"  # mamba1 | mamba2 | full
    H: int = 4
    P: int = 4  # head dim (mamba1: dim = H * P, one "head")
    N: int = 8
    G: int = 2
    z: bool = True
    softplus: bool = True
    layout: str = "contig"
    n_pad: int = 0
    dst: str = "same"  # same | other (read one slot, write another)
    drafts: int = 0  # speculative: tokens per request (rows = requests), 2-D slot indices
    accepted: tuple[int, ...] = ()  # speculative: num_accepted_tokens, cycled over requests

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"form": self.form, "rows": self.rows, "H": self.H, "P": self.P}
        d.update(N=self.N, G=self.G, z=self.z, softplus=self.softplus, state=self.layout)
        d.update(pad=self.n_pad, dst=self.dst)
        if self.drafts:
            d.update(drafts=self.drafts, num_accepted_tokens=self.accepted)
        return d


@dataclass
class SsuInputs:
    state: StatePool
    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    dt_bias: Tensor
    z: Tensor | None
    out: Tensor
    src: Tensor
    dst: Tensor


def build_ssu(
    f: Factory,
    p: SsuParams,
    plan: SlotPlan,
    dst_slots: list[int],
    dt: torch.dtype,
    sdt: torch.dtype,
) -> SsuInputs:
    """Random decode inputs for ``p``; ``dst_slots`` are where the rows' states are written."""
    b, H, P, N, G = p.rows, p.H, p.P, p.N, p.G
    num_slots = max([plan.num_slots, *[s + 1 for s in dst_slots]])
    if p.form == "mamba1":
        dim = H * P
        state = ssm_state_pool(f, num_slots, (dim, N), sdt, p.layout)
        x = f.randn(b, dim, dtype=dt)
        dtv = (
            f.randn(b, dim, dtype=dt, scale=0.5)
            if p.softplus
            else f.uniform(0.0, 0.4, b, dim, dtype=dt)
        )
        A = -f.uniform(0.2, 2.0, dim, N, dtype=f32)
        B = f.randn(b, N, dtype=dt, scale=0.5)
        C = f.randn(b, N, dtype=dt, scale=0.5)
        D = f.randn(dim, dtype=f32)
        dt_bias = (
            f.uniform(-1.5, -0.5, dim, dtype=f32)
            if p.softplus
            else f.uniform(0.0, 0.1, dim, dtype=f32)
        )
        z = f.randn(b, dim, dtype=dt) if p.z else None
        out = torch.full((b, dim), float("nan"), dtype=dt, device=f.device)
    else:
        state = ssm_state_pool(f, num_slots, (H, P, N), sdt, p.layout)
        # x is a column slice of a wider projection, as in the layer.
        x = f.randn(b, H * P + 6, dtype=dt)[:, 3 : 3 + H * P].view(b, H, P)
        if p.form == "mamba2":
            dt_h = f.randn(b, H, dtype=dt, scale=0.5)
            dtv = dt_h[:, :, None].expand(b, H, P)
            A = (-f.uniform(0.5, 4.0, H, dtype=f32))[:, None, None].expand(H, P, N)
            D = f.randn(H, dtype=f32)[:, None].expand(H, P)
            dt_bias = f.uniform(-2.5, -1.0, H, dtype=f32)[:, None].expand(H, P)
        else:
            dtv = f.randn(b, H, P, dtype=dt, scale=0.5)
            A = -f.uniform(0.5, 4.0, H, P, N, dtype=f32)
            D = f.randn(H, P, dtype=f32)
            dt_bias = f.uniform(-2.5, -1.0, H, P, dtype=f32)
        if not p.softplus:
            dtv = dtv.abs() * 0.3
            dt_bias = dt_bias.abs() * 0.05
        B = f.randn(b, G, N, dtype=dt, scale=0.5)
        C = f.randn(b, G, N, dtype=dt, scale=0.5)
        z = f.randn(b, H, P, dtype=dt) if p.z else None
        out = torch.full((b, H, P), float("nan"), dtype=dt, device=f.device)
    return SsuInputs(
        state, x, dtv, A, B, C, D, dt_bias, z, out, f.ints(plan.slots), f.ints(dst_slots)
    )


def call_ssu(ops: Any, a: SsuInputs, softplus: bool, rows: slice | None = None) -> Any:
    """Call the op on all rows (or a slice of them, for the batch invariant)."""
    r = rows if rows is not None else slice(None)
    return ops.selective_state_update(
        a.state.view,
        a.x[r],
        a.dt[r],
        a.A,
        a.B[r],
        a.C[r],
        D=a.D,
        dt_bias=a.dt_bias,
        z=a.z[r] if a.z is not None else None,
        dt_softplus=softplus,
        state_batch_indices=a.src[r],
        dst_state_batch_indices=a.dst[r],
        out=a.out[r],
    )


def _dst_slots(p: SsuParams, plan: SlotPlan) -> list[int]:
    if p.dst == "same":
        return list(plan.slots)
    nxt = iter(range(plan.num_slots, plan.num_slots + len(plan.slots)))
    return [next(nxt) if s > NULL_BLOCK_ID else s for s in plan.slots]


def _oneshot(
    p: SsuParams, dt: torch.dtype, sdt: torch.dtype, seed: int, kind: str, ctx: CaseContext
):
    n_real = p.rows - p.n_pad
    plan = plan_slots(n_real, p.n_pad, seed, all_init=True)
    dst = _dst_slots(p, plan)
    written = [s for s in dst if s > NULL_BLOCK_ID]
    fa, fe = ctx.factories()
    a, e = (build_ssu(f, p, plan, dst, dt, sdt) for f in (fa, fe))
    before = a.state.base.clone()
    named = (("x", a.x), ("dt", a.dt), ("A", a.A), ("B", a.B), ("C", a.C), ("z", a.z))
    inputs = [(n, t, bits(t)) for n, t in named if t is not None]
    if kind == "batch":
        for i in range(p.rows):
            call_ssu(ctx.ops, a, p.softplus, slice(i, i + 1))
    else:
        call_ssu(ctx.ops, a, p.softplus)
    call_ssu(ctx.ref, e, p.softplus)
    keep = torch.tensor(plan.active)
    c = ctx.check
    for name, t, snap in inputs:
        c.require(torch.equal(bits(t), snap), f"{name} was modified (the op may only write out)")
    c.close("out (non-pad rows)", a.out.cpu()[keep], e.out[keep])
    compare_slots(c, "state", a.state, e.state, written)
    c.untouched("state", before, a.state, written)


def _speculative(p: SsuParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    """Speculative decoding as vLLM runs it: ``p.drafts`` tokens per request (``cu_seqlens``),
    one 2-D slot table for sources and destinations, the source column picked by
    ``num_accepted_tokens`` (and overwritten by that token's own state: reads before writes),
    the state after each token written to its own slot. Pad requests (all-pad rows) are
    skipped; spare slots stay untouched."""
    R, S = p.rows, p.drafts
    plan = plan_slots(R - p.n_pad, p.n_pad, seed, all_init=True)
    table, rank = [], 0
    for slot in plan.slots:
        if slot > NULL_BLOCK_ID:
            table.append([1 + S * rank + t for t in range(S)])
            rank += 1
        else:
            table.append([slot] * S)
    written = [x for row in table for x in row if x > NULL_BLOCK_ID]
    pool_plan = SlotPlan(tuple(range(R * S)), (True,) * (R * S), max(written) + 3)
    accepted = [p.accepted[r % len(p.accepted)] for r in range(R)]
    fa, fe = ctx.factories()
    ins = []
    for f in (fa, fe):
        a = build_ssu(f, replace(p, rows=R * S), pool_plan, [0] * (R * S), dt, sdt)
        a.src = a.dst = torch.tensor(table, dtype=torch.int32, device=f.device)
        ins.append((a, f.ints(accepted), f.ints([S * r for r in range(R + 1)])))
    before = ins[0][0].state.base.clone()
    for ops, (a, acc, cu) in ((ctx.ops, ins[0]), (ctx.ref, ins[1])):
        ops.selective_state_update(
            a.state.view, a.x, a.dt, a.A, a.B, a.C, D=a.D, dt_bias=a.dt_bias, z=a.z,
            dt_softplus=p.softplus, state_batch_indices=a.src, dst_state_batch_indices=a.dst,
            out=a.out, num_accepted_tokens=acc, cu_seqlens=cu,
        )  # fmt: skip
    (a, _, _), (e, _, _) = ins
    keep = torch.tensor([live for live in plan.active for _ in range(S)])
    c = ctx.check
    c.close("out (tokens of non-pad requests)", a.out.cpu()[keep], e.out[keep])
    compare_slots(c, "state (every token's slot)", a.state, e.state, written)
    c.untouched("state", before, a.state, written)


# A mismatch between two arguments may be reported on either side: every side is named.
_BAD = {
    "B_dstate": ("B", "state", "C", "A"),
    "x_heads": ("x", "state", "dt", "out", "z"),
    "indices_len": ("state_batch_indices",),
    "heads_groups": ("B", "ngroups", "nheads"),
    "indices_dtype": ("state_batch_indices",),
    # slot values: refused before any state is written (a kernel may check them itself)
    "indices_range": ("state_batch_indices",),
    "indices_twice": ("state_batch_indices", "dst_state_batch_indices"),
    "dst_range": ("dst_state_batch_indices",),
}


def _bad(what: str, seed: int, ctx: CaseContext) -> None:
    p = SsuParams(rows=3, H=4, G=2)
    plan = plan_slots(3, 0, seed, all_init=True)
    f = Factory(seed, ctx.device)
    a = build_ssu(f, p, plan, list(plan.slots), f32, f32)
    if what == "B_dstate":
        a.B = f.randn(3, p.G, p.N + 1, dtype=f32)
    elif what == "x_heads":
        a.x = f.randn(3, p.H + 1, p.P, dtype=f32)
        a.out = torch.zeros_like(a.x)
    elif what == "indices_len":
        a.src = a.dst = f.ints(plan.slots[:-1])  # vLLM allows longer, never shorter
    elif what == "heads_groups":
        a.B = f.randn(3, 3, p.N, dtype=f32)
        a.C = f.randn(3, 3, p.N, dtype=f32)
    elif what == "indices_dtype":
        a.src = a.dst = a.src.float()
    elif what == "indices_range":
        a.src = a.dst = f.ints([plan.slots[0], plan.num_slots, plan.slots[2]])
    elif what == "indices_twice":  # in place: the sources are the destinations
        a.src = a.dst = f.ints([plan.slots[0], plan.slots[1], plan.slots[0]])
    elif what == "dst_range":
        a.dst = f.ints([plan.slots[0], plan.slots[1], -2])
    before = a.state.base.clone()
    call = partial(call_ssu, ctx.ops, a, True)
    expect_rejected(ctx.check, call, _BAD[what], [("state", before, a.state)], op=SSU)


def make_case(
    kind: str, p: SsuParams, dt: torch.dtype = f32, sdt: torch.dtype = f32, seed: int = 0, **kw: Any
) -> Case:
    body = partial(_speculative, p, dt, sdt, seed) if p.drafts else None
    return Case(
        op=SSU,
        kind=kind,
        body=body or partial(_oneshot, p, dt, sdt, seed, kind),
        params=p.show(),
        dtype=dt,
        state_dtype=sdt,
        seed=seed,
        **kw,
    )


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        quick = (dt, sdt) in QUICK_PAIRS
        p = SsuParams(rows=5, n_pad=2)
        cases.append(make_case("oneshot", p, dt, sdt, seed=i, quick=quick))
        if i < 3:
            p1 = SsuParams(rows=4, form="mamba1", H=1, P=12, N=6, G=1, n_pad=1)
            cases.append(make_case("oneshot", p1, dt, sdt, seed=i, quick=quick))
    # GQA-style groups, layouts, forms, untied, dst != src, no z / no softplus.
    for j, (H, G) in enumerate(((4, 1), (6, 3), (4, 4), (8, 2))):
        layout = SSM_LAYOUTS[j % len(SSM_LAYOUTS)]
        p = SsuParams(rows=3, H=H, G=G, P=3, N=5, layout=layout, n_pad=1)
        cases.append(make_case("oneshot", p, seed=20 + j))
    cases.append(make_case("oneshot", SsuParams(rows=4, form="full", n_pad=1), seed=30))
    cases.append(make_case("oneshot", SsuParams(rows=4, form="full", layout="page"), bf16, f32, 31))
    cases.append(make_case("oneshot", SsuParams(rows=3, z=False, softplus=False), seed=32))
    p1 = SsuParams(rows=3, form="mamba1", H=1, P=8, G=1, z=False, layout="transposed")
    cases.append(make_case("oneshot", p1, f16, f32, seed=33))
    cases.append(make_case("oneshot", SsuParams(rows=4, dst="other", n_pad=1), seed=34))
    cases.append(make_case("oneshot", SsuParams(rows=1), seed=35))
    # Speculative decoding (num_accepted_tokens, 2-D slot table, cu_seqlens).
    spec = SsuParams(rows=4, n_pad=1, drafts=3, accepted=(1, 3, 2))
    cases.append(make_case("speculative", spec, seed=36))
    spec = replace(spec, rows=3, n_pad=0, drafts=2, accepted=(2, 1), layout="page", G=1)
    cases.append(make_case("speculative", spec, bf16, f32, seed=37))
    cases.append(make_case("batch", SsuParams(rows=4, n_pad=1), seed=40, quick=True))
    cases.append(
        make_case("batch", SsuParams(rows=3, form="mamba1", H=1, P=8, G=1), bf16, bf16, 41)
    )
    for what in _BAD:
        cases.append(
            Case(op=SSU, kind="bad_input", body=partial(_bad, what, 0), params={"bad": what})
        )
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    n_pad = pick.integer(0, 2)
    rows = pick.integer(1, 4) + n_pad
    forms = ("mamba1",) if mamba_type == "mamba1" else ("mamba2", "full")
    form = pick.choice(forms)
    if form == "mamba1":
        p = SsuParams(rows=rows, form=form, H=1, P=pick.choice((4, 8, 12)), G=1)
    else:
        H, G = pick.choice(((2, 1), (4, 2), (6, 3), (4, 4), (6, 2)))
        p = SsuParams(rows=rows, form=form, H=H, G=G, P=pick.choice((2, 4)))
    p = replace(
        p,
        N=pick.choice((4, 8)),
        z=pick.choice((True, False)),
        softplus=pick.choice((True, False)),
        layout=pick.choice(SSM_LAYOUTS),
        n_pad=n_pad,
        dst=pick.choice(("same", "same", "other")),
    )
    kind = pick.choice(("oneshot", "oneshot", "batch"))
    return make_case(kind, p, dt, sdt, seed)
