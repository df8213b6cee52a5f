"""Cases for Mamba1's ``selective_scan_fn`` (varlen prefill), as ``MambaMixer`` calls it.

``u``/``delta``/``z`` are ``(dim, T)``; ``B``/``C`` are ``(N, T)`` (one group, the layer's form)
or ``(G, N, T)`` with channel ``d`` reading group ``d // (dim / G)``; the SSM state pool is
``(S, dim, N)``. The split case continues the prefill with ``selective_state_update`` decode
steps (the layer's decode path).
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
    offsets,
    plan_slots,
    ssm_state_pool,
    token_mask,
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
    pick_lens,
)

OPS = ("selective_scan_fn",)
SCAN = OPS[0]
SSU = "selective_state_update"


@dataclass(frozen=True)
class ScanParams:
    lens: tuple[int, ...]
    dim: int = 8
    N: int = 4
    G: int = 1
    bc: str = "2d"  # 2d: (N, T) (G must be 1); 3d: (G, N, T)
    z: bool = True
    D: bool = True
    softplus: bool = True
    layout: str = "contig"
    n_pad: int = 0
    u_layout: str = "cl"  # cl: transpose of (T, dim); contig
    init_arg: bool = True  # False: has_initial_state=None (no stored states)
    pieces: tuple[tuple[int, ...], ...] = ()
    decode_steps: int = 0

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lens": self.lens, "dim": self.dim, "N": self.N, "G": self.G}
        d.update(bc=self.bc, z=self.z, D=self.D, softplus=self.softplus, state=self.layout)
        d.update(pad=self.n_pad, u=self.u_layout)
        if not self.init_arg:
            d["has_initial_state"] = None
        if self.pieces:
            d.update(pieces=tuple(sum(p) for p in self.pieces), decode=self.decode_steps)
        return d


@dataclass
class ScanInputs:
    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None
    z: Tensor | None
    delta_bias: Tensor
    pool: StatePool
    qsl: Tensor
    idx: Tensor
    init: Tensor | None


def _tokens_last(
    f: Factory, rows: int, T: int, dtype: torch.dtype, layout: str, **kw: Any
) -> Tensor:
    if layout == "contig":
        return f.randn(rows, T, dtype=dtype, **kw)
    return f.randn(T, rows, dtype=dtype, **kw).t()


def build_scan(
    f: Factory, p: ScanParams, plan: SlotPlan, dt: torch.dtype, sdt: torch.dtype
) -> ScanInputs:
    T = sum(p.lens)
    u = _tokens_last(f, p.dim, T, dt, p.u_layout)
    if p.softplus:
        delta = _tokens_last(f, p.dim, T, dt, p.u_layout, scale=0.5)
        delta_bias = f.uniform(-1.5, -0.5, p.dim, dtype=f32)
    else:
        delta = f.uniform(0.0, 0.4, T, p.dim, dtype=dt).t()
        delta_bias = f.uniform(0.0, 0.1, p.dim, dtype=f32)
    A = -f.uniform(0.2, 2.0, p.dim, p.N, dtype=f32)
    if p.bc == "2d":
        B = f.randn(T, p.N, dtype=dt, scale=0.5).t()  # the layer's B_p.transpose(-2, -1)
        C = f.randn(T, p.N, dtype=dt, scale=0.5).t()
    else:
        B = f.randn(p.G, p.N, T, dtype=dt, scale=0.5)
        C = f.randn(p.G, p.N, T, dtype=dt, scale=0.5)
    D = f.randn(p.dim, dtype=f32) if p.D else None
    z = _tokens_last(f, p.dim, T, dt, p.u_layout) if p.z else None
    pool = ssm_state_pool(f, plan.num_slots, (p.dim, p.N), sdt, p.layout)
    return ScanInputs(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        pool,
        f.ints(offsets(p.lens)),
        f.ints(plan.slots),
        f.bools(plan.has_init) if p.init_arg else None,
    )


def call_scan(ops: Any, a: ScanInputs, softplus: bool) -> Any:
    return ops.selective_scan_fn(
        a.u,
        a.pool.view,
        a.delta,
        a.A,
        a.B,
        a.C,
        D=a.D,
        z=a.z,
        delta_bias=a.delta_bias,
        delta_softplus=softplus,
        query_start_loc=a.qsl,
        cache_indices=a.idx,
        has_initial_state=a.init,
    )


def _cols(
    a: ScanInputs, cols: list[int], init: Tensor | None, qsl: Tensor, idx: Tensor
) -> ScanInputs:
    """The inputs restricted to token columns ``cols`` (a piece of each sequence)."""

    def take(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[..., cols].contiguous()

    B, C = take(a.B), take(a.C)
    assert B is not None and C is not None
    u, delta = take(a.u), take(a.delta)
    assert u is not None and delta is not None
    return ScanInputs(u, delta, a.A, B, C, a.D, take(a.z), a.delta_bias, a.pool, qsl, idx, init)


def _run(p: ScanParams, dt: torch.dtype, sdt: torch.dtype, seed: int, kind: str, ctx: CaseContext):
    n_pad = p.n_pad if kind == "oneshot" else 0
    plan = plan_slots(len(p.lens) - n_pad, n_pad, seed)
    fa, fe = ctx.factories()
    a, e = (build_scan(f, p, plan, dt, sdt) for f in (fa, fe))
    before = a.pool.base.clone()
    ref = call_scan(ctx.ref, e, p.softplus)
    T = sum(p.lens)
    c = ctx.check
    keep = token_mask(p.lens, plan.active)
    dev = a.u.device
    if kind == "oneshot":
        # vLLM writes the output into delta (or z): those two may change, nothing else.
        named = (("u", a.u), ("A", a.A), ("B", a.B), ("C", a.C), ("D", a.D))
        inputs = [(n, t, bits(t)) for n, t in named if t is not None]
        out = call_scan(ctx.ops, a, p.softplus)
        for name, t, snap in inputs:
            c.require(torch.equal(bits(t), snap), f"{name} was modified")
        if is_tensor(c, "out", out, (p.dim, T)):
            c.dtype("out", out, dt)
            c.close("out (non-pad tokens)", out.cpu()[:, keep], ref[:, keep])
    else:
        got = torch.full((p.dim, T), float("nan"), dtype=torch.float64)
        starts = offsets(p.lens)
        n = len(p.lens)
        if kind == "batch":
            for i in range(n):
                cols = list(range(starts[i], starts[i + 1]))
                qsl = torch.tensor([0, len(cols)], dtype=torch.int32, device=dev)
                init = None if a.init is None else a.init[i : i + 1]
                one = _cols(a, cols, init, qsl, a.idx[i : i + 1])
                out = call_scan(ctx.ops, one, p.softplus)
                if not is_tensor(c, f"out[seq {i}]", out, (p.dim, len(cols))):
                    return
                got[:, cols] = out.cpu().double()
        else:  # split: prefill pieces, then decode steps with selective_state_update
            pos = [0] * n
            for k, piece in enumerate(p.pieces):
                cols = []
                for i, m in enumerate(piece):
                    cols += range(starts[i] + pos[i], starts[i] + pos[i] + m)
                    pos[i] += m
                init = a.init if k == 0 else torch.ones(n, dtype=torch.bool, device=dev)
                qsl = torch.tensor(offsets(piece), dtype=torch.int32, device=dev)
                out = call_scan(ctx.ops, _cols(a, cols, init, qsl, a.idx), p.softplus)
                if not is_tensor(c, f"out[piece {k}]", out, (p.dim, len(cols))):
                    return
                got[:, cols] = out.cpu().double()
            for d in range(p.decode_steps):
                cols = [starts[i] + pos[i] + d for i in range(n)]
                step = _cols(a, cols, a.init, a.qsl, a.idx)
                y = torch.full((n, p.dim), float("nan"), dtype=dt, device=dev)
                ctx.ops.selective_state_update(
                    a.pool.view,
                    step.u.t(),
                    step.delta.t(),
                    a.A,
                    step.B.t() if p.bc == "2d" else step.B[0].t(),
                    step.C.t() if p.bc == "2d" else step.C[0].t(),
                    D=a.D if a.D is not None else torch.zeros(p.dim, device=dev),
                    dt_bias=a.delta_bias,
                    z=step.z.t() if step.z is not None else None,
                    dt_softplus=p.softplus,
                    state_batch_indices=a.idx,
                    dst_state_batch_indices=a.idx,
                    out=y,
                )
                got[:, cols] = y.cpu().double().t()
        label = "split vs one shot" if kind == "split" else "each sequence alone vs the batch"
        c.close(f"out ({label})", got, ref)
    compare_slots(c, "ssm_states", a.pool, e.pool, plan.active_slots)
    c.untouched("ssm_states", before, a.pool, plan.active_slots)


# A mismatch between two arguments may be reported on either side: every side is named.
_BAD = {
    "delta_len": ("delta", "u", "z"),
    "A_dim": ("A", "u", "ssm_states", "D", "delta_bias"),
    "cache_indices_len": ("cache_indices",),
    "ssm_states_dim": ("ssm_states", "u", "A"),
    "B_dstate": ("B", "A", "C"),
}


def _bad(what: str, seed: int, ctx: CaseContext) -> None:
    p = ScanParams(lens=(3, 4))
    plan = plan_slots(2, 0, seed)
    f = Factory(seed, ctx.device)
    a = build_scan(f, p, plan, f32, f32)
    if what == "delta_len":
        a.delta = f.randn(p.dim, 8, dtype=f32)
    elif what == "A_dim":
        a.A = -f.uniform(0.2, 2.0, p.dim + 1, p.N, dtype=f32)
    elif what == "cache_indices_len":
        a.idx = f.ints(plan.slots[:-1])
    elif what == "ssm_states_dim":
        a.pool = ssm_state_pool(f, plan.num_slots, (p.dim + 1, p.N), f32, "contig")
    elif what == "B_dstate":
        a.B = f.randn(p.N + 1, 7, dtype=f32)
    before = a.pool.base.clone()
    call = partial(call_scan, ctx.ops, a, True)
    expect_rejected(ctx.check, call, _BAD[what], [("ssm_states", before, a.pool)], op=SCAN)


def make_case(
    kind: str,
    p: ScanParams,
    dt: torch.dtype = f32,
    sdt: torch.dtype = f32,
    seed: int = 0,
    **kw: Any,
) -> Case:
    if kind == "split":
        n = len(p.pieces[0])
        lens = tuple(sum(pc[i] for pc in p.pieces) + p.decode_steps for i in range(n))
        p = replace(p, lens=lens, n_pad=0)
    return Case(
        op=SCAN,
        kind=kind,
        body=partial(_run, p, dt, sdt, seed, kind),
        params=p.show(),
        dtype=dt,
        state_dtype=sdt,
        seed=seed,
        requires=(SCAN, SSU) if kind == "split" else (SCAN,),
        **kw,
    )


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        quick = (dt, sdt) in QUICK_PAIRS
        p = ScanParams(lens=(5, 1, 9), n_pad=1 if i % 2 else 0)
        cases.append(make_case("oneshot", p, dt, sdt, seed=i, quick=quick))
    for j, layout in enumerate(SSM_LAYOUTS):
        p = ScanParams(lens=(1, 63, 2), dim=6, N=3, layout=layout, u_layout="contig")
        cases.append(make_case("oneshot", p, seed=20 + j))
    cases.append(make_case("oneshot", ScanParams(lens=(7, 4), G=2, bc="3d", n_pad=1), seed=30))
    cases.append(make_case("oneshot", ScanParams(lens=(4, 6), G=1, bc="3d"), bf16, f32, seed=31))
    p = ScanParams(lens=(5, 3), z=False, D=False, softplus=False)
    cases.append(make_case("oneshot", p, f16, f32, seed=32))
    cases.append(make_case("oneshot", ScanParams(lens=(2, 5), init_arg=False), seed=34))
    long = ScanParams(lens=(200, 1, 299), dim=4, N=4, n_pad=1)
    cases.append(make_case("oneshot", long, seed=33))
    cases.append(make_case("batch", ScanParams(lens=(4, 1, 9)), seed=40, quick=True))
    cases.append(make_case("batch", ScanParams(lens=(3, 6), layout="page"), bf16, bf16, seed=41))
    split = ScanParams(lens=(), pieces=((3, 1, 4), (2, 5, 1)), decode_steps=3)
    cases.append(make_case("split", split, seed=50, quick=True))
    cases.append(make_case("split", replace(split, layout="transposed"), bf16, f32, seed=51))
    cases.append(make_case("split", replace(split, z=False), f16, f16, seed=52))
    for what in _BAD:
        cases.append(
            Case(op=SCAN, kind="bad_input", body=partial(_bad, what, 0), params={"bad": what})
        )
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    G = pick.choice((1, 1, 2))
    p = ScanParams(
        lens=(),
        dim=pick.choice((4, 6, 8)) if G == 1 else 8,
        N=pick.choice((2, 4)),
        G=G,
        bc="3d" if G > 1 else pick.choice(("2d", "3d")),
        z=pick.choice((True, False)),
        D=pick.choice((True, False)),
        softplus=pick.choice((True, False)),
        layout=pick.choice(SSM_LAYOUTS),
        u_layout=pick.choice(("cl", "contig")),
    )
    kind = pick.choice(("oneshot", "oneshot", "batch", "split"))
    if kind == "split" and G == 1:
        n = pick.integer(1, 3)
        pieces = tuple(pick_lens(pick, n, 6) for _ in range(pick.integer(1, 3)))
        return make_case(
            "split", replace(p, pieces=pieces, decode_steps=pick.integer(0, 3)), dt, sdt, seed
        )
    kind = "batch" if kind == "split" else kind
    n_pad = pick.integer(0, 2) if kind == "oneshot" else 0
    lens = pick_lens(pick, pick.integer(1, 3) + n_pad, 20)
    return make_case(kind, replace(p, lens=lens, n_pad=n_pad), dt, sdt, seed)
