"""Cases for the causal depthwise conv1d: ``causal_conv1d_fn`` and ``causal_conv1d_update``.

Layouts follow vLLM's layers: ``x`` for the prefill is ``(dim, T)``, usually the transpose of a
``(T, dim)`` buffer (channel-last); the conv state pool is ``(S, dim, W-1)``, usually a view of
a ``(S, W-1, dim)`` buffer or of a larger per-slot page.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import (
    CONV_LAYOUTS,
    Factory,
    SlotPlan,
    StatePool,
    bits,
    conv_state_pool,
    offsets,
    plan_slots,
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

OPS = ("causal_conv1d_fn", "causal_conv1d_update")
FN, UPDATE = OPS


@dataclass(frozen=True)
class ConvParams:
    lens: tuple[int, ...]  # tokens per entry (prefill) / per decode row (update), pads included
    dim: int = 8
    W: int = 4
    layout: str = "sd"
    bias: bool = True
    activation: str | None = "silu"
    n_pad: int = 0
    x_layout: str = "cl"  # cl: transpose of (T, dim); contig: (dim, T); sliced: wider buffer
    use_out: bool = False  # update: pass a preallocated out=
    init_arg: bool = True  # False: has_initial_state=None (no sequence has a stored state)
    pieces: tuple[tuple[int, ...], ...] = ()  # split: prefill piece lengths, per piece per seq
    decode_steps: int = 0  # split: decode steps after the pieces
    accepted: tuple[int, ...] = ()  # update: num_accepted_tokens per row (speculative decoding)

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lens": self.lens, "dim": self.dim, "W": self.W}
        d.update(state=self.layout, bias=self.bias, act=self.activation, pad=self.n_pad)
        d["x"] = self.x_layout
        if self.use_out:
            d["out"] = True
        if not self.init_arg:
            d["has_initial_state"] = None
        if self.accepted:
            d["num_accepted_tokens"] = self.accepted
        if self.pieces:
            d.update(pieces=tuple(sum(p) for p in self.pieces), decode=self.decode_steps)
        return d


@dataclass
class ConvInputs:
    x: Tensor  # prefill (dim, T); update (b, dim) or (b, dim, s)
    weight: Tensor
    bias: Tensor | None
    pool: StatePool
    idx: Tensor
    init: Tensor | None
    qsl: Tensor
    accepted: Tensor | None = None


def _x_prefill(f: Factory, dim: int, T: int, dtype: torch.dtype, layout: str) -> Tensor:
    if layout == "contig":
        return f.randn(dim, T, dtype=dtype)
    if layout == "sliced":
        return f.randn(T, dim + 5, dtype=dtype)[:, 2 : 2 + dim].t()
    return f.randn(T, dim, dtype=dtype).t()


def _build(
    f: Factory, p: ConvParams, plan: SlotPlan, dtype: torch.dtype, sdtype: torch.dtype, kind: str
) -> ConvInputs:
    T = sum(p.lens)
    if kind == "prefill":
        x = _x_prefill(f, p.dim, T, dtype, p.x_layout)
    else:
        b, s = len(p.lens), p.lens[0]
        if s == 1 and p.x_layout != "3d":
            x = f.randn(b, p.dim + 3, dtype=dtype)[:, 1 : 1 + p.dim]
            if p.x_layout == "contig":
                x = x.contiguous()
        else:
            x = f.randn(b, s, p.dim, dtype=dtype).transpose(1, 2)
    weight = f.randn(p.dim, p.W, dtype=dtype, scale=p.W**-0.5)
    bias = f.randn(p.dim, dtype=dtype, scale=0.5) if p.bias else None
    # Speculative decoding: the state keeps W-2+S columns (the window may end at any draft).
    cols = p.W - 2 + p.lens[0] if p.accepted else None
    pool = conv_state_pool(f, plan.num_slots, p.dim, p.W, sdtype, p.layout, cols)
    init = f.bools(plan.has_init) if p.init_arg else None
    acc = f.ints(list(p.accepted)) if p.accepted else None
    slots, qsl = f.ints(plan.slots), f.ints(offsets(p.lens))
    return ConvInputs(x, weight, bias, pool, slots, init, qsl, acc)


def _call_fn(ops: Any, a: ConvInputs, activation: str | None) -> Any:
    return ops.causal_conv1d_fn(
        a.x,
        a.weight,
        a.bias,
        conv_states=a.pool.view,
        query_start_loc=a.qsl,
        cache_indices=a.idx,
        has_initial_state=a.init,
        activation=activation,
    )


def _call_update(ops: Any, a: ConvInputs, activation: str | None, out: Tensor | None) -> Any:
    kw: dict[str, Any] = {"out": out} if out is not None else {}
    if a.accepted is not None:
        kw["num_accepted_tokens"] = a.accepted
    return ops.causal_conv1d_update(
        x=a.x,
        conv_state=a.pool.view,
        weight=a.weight,
        bias=a.bias,
        activation=activation,
        conv_state_indices=a.idx,
        **kw,
    )


def _fn_oneshot(p: ConvParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    plan = plan_slots(len(p.lens) - p.n_pad, p.n_pad, seed)
    fa, fe = ctx.factories()
    a, e = (_build(f, p, plan, dt, sdt, "prefill") for f in (fa, fe))
    before = a.pool.base.clone()
    inputs = [
        (n, t, bits(t))
        for n, t in (("x", a.x), ("weight", a.weight), ("bias", a.bias))
        if t is not None
    ]
    out = _call_fn(ctx.ops, a, p.activation)
    ref = _call_fn(ctx.ref, e, p.activation)
    c = ctx.check
    for name, t, snap in inputs:
        c.require(torch.equal(bits(t), snap), f"{name} was modified (the op may only write out)")
    if is_tensor(c, "out", out, e.x.shape):
        c.dtype("out", out, dt)
        keep = token_mask(p.lens, plan.active)
        c.close("out (non-pad tokens)", out.cpu()[:, keep], ref[:, keep])
    compare_slots(c, "conv_states", a.pool, e.pool, plan.active_slots)
    c.untouched("conv_states", before, a.pool, plan.active_slots)


def _fn_batch(p: ConvParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    """Each sequence alone (same slot, same initial state) equals the spec on the batch."""
    plan = plan_slots(len(p.lens), 0, seed)
    fa, fe = ctx.factories()
    a, e = (_build(f, p, plan, dt, sdt, "prefill") for f in (fa, fe))
    before = a.pool.base.clone()
    ref = _call_fn(ctx.ref, e, p.activation)
    starts = offsets(p.lens)
    xt = a.x.t()
    for i, n in enumerate(p.lens):
        one = ConvInputs(
            xt[starts[i] : starts[i + 1]].contiguous().t(),
            a.weight,
            a.bias,
            a.pool,
            a.idx[i : i + 1],
            None if a.init is None else a.init[i : i + 1],
            torch.tensor([0, n], dtype=torch.int32, device=a.x.device),
        )
        out = _call_fn(ctx.ops, one, p.activation)
        if is_tensor(ctx.check, f"out[seq {i}]", out, (p.dim, n)):
            ctx.check.close(f"out[seq {i} alone]", out.cpu(), ref[:, starts[i] : starts[i + 1]])
    compare_slots(ctx.check, "conv_states", a.pool, e.pool, plan.active_slots)
    ctx.check.untouched("conv_states", before, a.pool, plan.active_slots)


def _update_oneshot(p: ConvParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    plan = plan_slots(len(p.lens) - p.n_pad, p.n_pad, seed)
    fa, fe = ctx.factories()
    a, e = (_build(f, p, plan, dt, sdt, "decode") for f in (fa, fe))
    shape = tuple(a.x.shape)
    out_buf = torch.full(shape, float("nan"), dtype=dt, device=a.x.device) if p.use_out else None
    before = a.pool.base.clone()
    out = _call_update(ctx.ops, a, p.activation, out_buf)
    ref = _call_update(ctx.ref, e, p.activation, None)
    c = ctx.check
    keep = torch.tensor(plan.active)
    if is_tensor(c, "out", out, shape):
        c.dtype("out", out, dt)
        c.close("out (non-pad rows)", out.cpu()[keep], ref[keep])
        if out_buf is not None:
            c.close("out= buffer (non-pad rows)", out_buf.cpu()[keep], ref[keep])
    compare_slots(c, "conv_state", a.pool, e.pool, plan.active_slots)
    c.untouched("conv_state", before, a.pool, plan.active_slots)


def _split(p: ConvParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    """Prefill in pieces, then decode step by step, equals the spec in one shot."""
    n = len(p.lens)
    plan = plan_slots(n, 0, seed)
    fa, fe = ctx.factories()
    a, e = (_build(f, p, plan, dt, sdt, "prefill") for f in (fa, fe))
    before = a.pool.base.clone()
    ref = _call_fn(ctx.ref, e, p.activation)
    starts = offsets(p.lens)
    xt = a.x.t()  # (T, dim)
    got = torch.full((p.dim, sum(p.lens)), float("nan"), dtype=torch.float64)
    pos = [0] * n
    dev = a.x.device
    for k, piece in enumerate(p.pieces):
        rows: list[int] = []
        for i, m in enumerate(piece):
            rows += range(starts[i] + pos[i], starts[i] + pos[i] + m)
            pos[i] += m
        init = a.init if k == 0 else torch.ones(n, dtype=torch.bool, device=dev)
        qsl = torch.tensor(offsets(piece), dtype=torch.int32, device=dev)
        step = ConvInputs(xt[rows].contiguous().t(), a.weight, a.bias, a.pool, a.idx, init, qsl)
        out = _call_fn(ctx.ops, step, p.activation)
        if not is_tensor(ctx.check, f"out[piece {k}]", out, (p.dim, len(rows))):
            return
        got[:, rows] = out.cpu().double()
    for d in range(p.decode_steps):
        rows = [starts[i] + pos[i] + d for i in range(n)]
        step = ConvInputs(xt[rows].contiguous(), a.weight, a.bias, a.pool, a.idx, a.init, a.qsl)
        out = _call_update(ctx.ops, step, p.activation, None)
        if not is_tensor(ctx.check, f"out[decode {d}]", out, (n, p.dim)):
            return
        got[:, rows] = out.cpu().double().t()
    ctx.check.close("out (split vs one shot)", got, ref)
    compare_slots(ctx.check, "conv_states (split)", a.pool, e.pool, plan.active_slots)
    ctx.check.untouched("conv_states", before, a.pool, plan.active_slots)


# A mismatch between two arguments may be reported on either side: every side is named.
_BAD_FN = {
    "weight_dim": ("weight", "x", "conv_states"),
    "conv_states_dim": ("conv_states", "x"),
    "cache_indices_len": ("cache_indices",),
    "has_initial_state_len": ("has_initial_state",),
    "cache_indices_dtype": ("cache_indices",),
}
_BAD_UPDATE = {
    "weight_dim": ("weight", "x", "conv_state"),
    "conv_state_dim": ("conv_state", "x"),
    "conv_state_indices_len": ("conv_state_indices",),
    "conv_state_indices_dtype": ("conv_state_indices",),
    # slot values: refused before any state is written (a kernel may check them itself)
    "conv_state_indices_range": ("conv_state_indices",),
    "conv_state_indices_twice": ("conv_state_indices",),
}


def _bad(op: str, what: str, p: ConvParams, seed: int, ctx: CaseContext) -> None:
    plan = plan_slots(len(p.lens), 0, seed)
    f = Factory(seed, ctx.device)
    kind = "prefill" if op == FN else "decode"
    a = _build(f, p, plan, f32, f32, kind)
    if what == "weight_dim":
        a.weight = f.randn(p.dim + 1, p.W, dtype=f32)
    elif what in ("conv_states_dim", "conv_state_dim"):
        a.pool = conv_state_pool(f, plan.num_slots, p.dim + 1, p.W, f32, p.layout)
    elif what in ("cache_indices_len", "conv_state_indices_len"):
        a.idx = f.ints(plan.slots[:-1])
    elif what in ("cache_indices_dtype", "conv_state_indices_dtype"):
        a.idx = a.idx.float()
    elif what == "conv_state_indices_range":
        a.idx = f.ints([plan.num_slots, *plan.slots[1:]])
    elif what == "conv_state_indices_twice":
        a.idx = f.ints([plan.slots[0], plan.slots[0], *plan.slots[2:]])
    elif what == "has_initial_state_len":
        a.init = f.bools(plan.has_init[:-1])
    before = a.pool.base.clone()
    names = (_BAD_FN if op == FN else _BAD_UPDATE)[what]
    if op == FN:
        call = partial(_call_fn, ctx.ops, a, "silu")
    else:
        call = partial(_call_update, ctx.ops, a, "silu", None)
    expect_rejected(ctx.check, call, names, [("conv state", before, a.pool)], op=op)


def make_case(
    op: str,
    kind: str,
    p: ConvParams,
    dt: torch.dtype = f32,
    sdt: torch.dtype = f32,
    seed: int = 0,
    **flags: Any,
) -> Case:
    body = {
        (FN, "oneshot"): _fn_oneshot,
        (FN, "batch"): _fn_batch,
        (UPDATE, "oneshot"): _update_oneshot,
        (UPDATE, "split"): _split,
    }[(op, kind)]
    if kind == "split":
        pieces = p.pieces
        lens = tuple(sum(pc[i] for pc in pieces) + p.decode_steps for i in range(len(pieces[0])))
        p = replace(p, lens=lens)
    requires = (FN, UPDATE) if kind == "split" else (op,)
    return Case(
        op=op,
        kind=kind,
        body=partial(body, p, dt, sdt, seed),
        params=p.show(),
        dtype=dt,
        state_dtype=sdt,
        seed=seed,
        requires=requires,
        **flags,
    )


def bad_case(op: str, what: str, seed: int = 0) -> Case:
    p = ConvParams(lens=(3, 5) if op == FN else (1, 1, 1), dim=8, W=4)

    def body(ctx: CaseContext) -> None:
        _bad(op, what, p, seed, ctx)

    return Case(op=op, kind="bad_input", body=body, params={"bad": what}, seed=seed)


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    # The dtype matrix on a small varlen batch with pads, both ops.
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        quick = (dt, sdt) in QUICK_PAIRS
        p = ConvParams(lens=(5, 1, 9, 3), n_pad=1)
        cases.append(make_case(FN, "oneshot", p, dt, sdt, seed=i, quick=quick))
        pu = ConvParams(lens=(1,) * 5, n_pad=2)
        cases.append(make_case(UPDATE, "oneshot", pu, dt, sdt, seed=i, quick=quick))
    # Odd sizes, widths, layouts, activations.
    for W in (2, 3, 4):
        for j, layout in enumerate(CONV_LAYOUTS):
            p = ConvParams(lens=(1, 63, 2), dim=12, W=W, layout=layout, n_pad=0)
            cases.append(make_case(FN, "oneshot", p, seed=10 * W + j))
            pu = ConvParams(lens=(1,) * 3, dim=12, W=W, layout=layout, n_pad=1, x_layout="contig")
            cases.append(make_case(UPDATE, "oneshot", pu, seed=10 * W + j))
    cases.append(
        make_case(FN, "oneshot", ConvParams(lens=(1,), n_pad=0, x_layout="contig"), seed=40)
    )
    cases.append(
        make_case(FN, "oneshot", ConvParams(lens=(2, 2, 2), bias=False, activation=None), seed=41)
    )
    cases.append(make_case(FN, "oneshot", ConvParams(lens=(7, 4), x_layout="sliced"), seed=42))
    p = ConvParams(lens=(3, 6), n_pad=1, init_arg=False)
    cases.append(make_case(FN, "oneshot", p, seed=44))
    long = ConvParams(lens=(200, 1, 299), dim=16, n_pad=1)
    cases.append(make_case(FN, "oneshot", long, bf16, f32, seed=43))
    for s, form in ((2, "3d"), (3, "3d"), (1, "3d")):
        pu = ConvParams(lens=(s,) * 3, n_pad=1, x_layout=form)
        cases.append(make_case(UPDATE, "oneshot", pu, seed=50 + s))
    pu = ConvParams(lens=(1,) * 4, n_pad=1, use_out=True)
    cases.append(make_case(UPDATE, "oneshot", pu, f16, f32, seed=55))
    cases.append(make_case(UPDATE, "oneshot", pu, seed=56, quick=True))
    # Speculative decoding: S tokens per row, the window picked by num_accepted_tokens.
    pu = ConvParams(lens=(3,) * 4, n_pad=1, x_layout="3d", accepted=(1, 3, 2, 1))
    cases.append(make_case(UPDATE, "oneshot", pu, seed=57, quick=True))
    pu = ConvParams(lens=(2,) * 3, dim=12, W=3, layout="page", x_layout="3d", accepted=(2, 1, 2))
    cases.append(make_case(UPDATE, "oneshot", pu, bf16, f32, seed=58))
    # Invariants.
    cases.append(make_case(FN, "batch", ConvParams(lens=(4, 1, 11)), seed=60, quick=True))
    cases.append(make_case(FN, "batch", ConvParams(lens=(3, 8), layout="page"), bf16, bf16, 61))
    split = ConvParams(lens=(), pieces=((2, 1, 5), (1, 3, 1), (4, 1, 2)), decode_steps=3)
    cases.append(make_case(UPDATE, "split", split, seed=62, quick=True))
    cases.append(make_case(UPDATE, "split", replace(split, W=2, layout="page"), bf16, f32, 63))
    cases.append(make_case(UPDATE, "split", replace(split, W=3), f16, f16, seed=64))
    for what in _BAD_FN:
        cases.append(bad_case(FN, what))
    for what in _BAD_UPDATE:
        cases.append(bad_case(UPDATE, what))
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    W = pick.choice((2, 3, 4))
    dim = pick.choice((4, 8, 12))
    layout = pick.choice(CONV_LAYOUTS)
    bias = pick.choice((True, False))
    act = pick.choice(("silu", None))
    base = ConvParams(lens=(1,), dim=dim, W=W, layout=layout, bias=bias, activation=act)
    if op == FN:
        n_pad = pick.integer(0, 2)
        lens = pick_lens(pick, pick.integer(1, 3) + n_pad, 24)
        kind = pick.choice(("oneshot", "oneshot", "batch"))
        x_layout = pick.choice(("cl", "contig", "sliced"))
        p = replace(base, lens=lens, n_pad=0 if kind == "batch" else n_pad, x_layout=x_layout)
        return make_case(FN, kind, p, dt, sdt, seed)
    kind = pick.choice(("oneshot", "split"))
    if kind == "split":
        n, k = pick.integer(1, 3), pick.integer(1, 3)
        pieces = tuple(pick_lens(pick, n, 6) for _ in range(k))
        p = replace(base, lens=(), pieces=pieces, decode_steps=pick.integer(0, 4))
        return make_case(UPDATE, "split", p, dt, sdt, seed)
    n_pad = pick.integer(0, 2)
    s = pick.choice((1, 1, 2, 3))
    form = "3d" if s > 1 else pick.choice(("2d", "contig", "3d"))
    p = replace(base, lens=(s,) * (pick.integer(1, 4) + n_pad), n_pad=n_pad, x_layout=form)
    p = replace(p, use_out=pick.choice((False, True)))
    return make_case(UPDATE, "oneshot", p, dt, sdt, seed)
