"""Cases for LFM2's short conv (``ShortConv``): the mixer core ``y = C * conv(B * x)``.

Two families, both compared with the spec's ``short_conv_mixer`` on a decode-then-prefill
batch whose ``B``, ``C``, ``x`` are the three column chunks of one ``in_proj`` output and whose
conv state pool is the transposed (sd) view of the layer's cache, with pad/null slots:

- ``layer``: the backend's ``causal_conv1d_fn`` / ``causal_conv1d_update`` called exactly as
  vLLM's ``ShortConv.forward_native`` calls them (positional arguments, ``activation=None``);
- ``short_conv_mixer`` itself (oneshot, split, bad input), for backends whose mamba type lists
  that op in :data:`~mamba_backends.backend.OP_NAMES` (inactive otherwise).
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
    conv_state_pool,
    offsets,
    plan_slots,
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

TYPES = ("short_conv",)
MIXER = "short_conv_mixer"
FN, UPDATE = "causal_conv1d_fn", "causal_conv1d_update"
OPS = (MIXER, FN)


@dataclass(frozen=True)
class MixParams:
    n_dec: int  # decode rows (one token each), pads included
    lens_p: tuple[int, ...]  # prefill lengths, pads included
    n_pad: int = 0  # pad/null entries among decodes + prefills
    dim: int = 8
    W: int = 3
    bias: bool = False
    layout: str = "sd"
    pieces: tuple[tuple[int, ...], ...] = ()  # split: prefill pieces per sequence
    decode_steps: int = 0

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dec": self.n_dec, "lens": self.lens_p, "pad": self.n_pad}
        d.update(dim=self.dim, W=self.W, bias=self.bias, state=self.layout)
        if self.pieces:
            d.update(pieces=tuple(sum(p) for p in self.pieces), decode=self.decode_steps)
        return d


@dataclass
class MixInputs:
    B: Tensor
    C: Tensor
    x: Tensor
    weight: Tensor
    bias: Tensor | None
    pool: StatePool
    plan: SlotPlan
    idx_d: Tensor
    idx_p: Tensor
    qsl_p: Tensor
    init_p: Tensor


def _build(
    f: Factory, p: MixParams, plan: SlotPlan, dt: torch.dtype, sdt: torch.dtype
) -> MixInputs:
    T = p.n_dec + sum(p.lens_p) + 2  # two trailing padding rows, never read
    BCx = f.randn(T, 3 * p.dim, dtype=dt)
    B, C, x = BCx.chunk(3, dim=-1)
    weight = f.randn(p.dim, p.W, dtype=dt, scale=p.W**-0.5)
    bias = f.randn(p.dim, dtype=dt, scale=0.5) if p.bias else None
    pool = conv_state_pool(f, plan.num_slots, p.dim, p.W, sdt, p.layout)
    slots = list(plan.slots)
    return MixInputs(
        B,
        C,
        x,
        weight,
        bias,
        pool,
        plan,
        f.ints(slots[: p.n_dec]),
        f.ints(slots[p.n_dec :]),
        f.ints(offsets(p.lens_p)),
        f.bools(plan.has_init[p.n_dec :]),
    )


def call_mixer(ops: Any, a: MixInputs, n_dec: int, n_pre: int) -> Any:
    return ops.short_conv_mixer(
        a.B,
        a.C,
        a.x,
        a.weight,
        a.bias,
        a.pool.view,
        query_start_loc_p=a.qsl_p if n_pre else None,
        state_indices_p=a.idx_p if n_pre else None,
        has_initial_states_p=a.init_p if n_pre else None,
        state_indices_d=a.idx_d if n_dec else None,
    )


def call_layer(ops: Any, a: MixInputs, n_dec: int, n_pre_tokens: int) -> Tensor:
    """vLLM's ``ShortConv.forward_native`` between its projections, with ``ops``' conv."""
    parts = []
    if n_dec:
        Bx_d = a.B[:n_dec] * a.x[:n_dec]
        out_d = ops.causal_conv1d_update(
            Bx_d, a.pool.view, a.weight, a.bias, activation=None, conv_state_indices=a.idx_d
        )
        parts.append(a.C[:n_dec] * out_d)
    if n_pre_tokens:
        rows = slice(n_dec, n_dec + n_pre_tokens)
        Bx_p = (a.B[rows] * a.x[rows]).transpose(0, 1)
        out_p = ops.causal_conv1d_fn(
            Bx_p, a.weight, a.bias, a.pool.view, a.qsl_p, a.idx_p, a.init_p, activation=None
        ).transpose(0, 1)
        parts.append(a.C[rows] * out_p)
    return torch.cat(parts)


def _keep_rows(p: MixParams, plan: SlotPlan) -> Tensor:
    active = plan.active
    keep = [active[i] for i in range(p.n_dec)]
    for j, n in enumerate(p.lens_p):
        keep += [active[p.n_dec + j]] * n
    return torch.tensor(keep, dtype=torch.bool)


def _oneshot(
    p: MixParams, dt: torch.dtype, sdt: torch.dtype, seed: int, layer: bool, ctx: CaseContext
) -> None:
    plan = plan_slots(p.n_dec + len(p.lens_p) - p.n_pad, p.n_pad, seed)
    fa, fe = ctx.factories()
    a, e = (_build(f, p, plan, dt, sdt) for f in (fa, fe))
    before = a.pool.base.clone()
    n_pre = sum(p.lens_p)
    if layer:
        y = call_layer(ctx.ops, a, p.n_dec, n_pre)
    else:
        y = call_mixer(ctx.ops, a, p.n_dec, len(p.lens_p))
    ref = call_mixer(ctx.ref, e, p.n_dec, len(p.lens_p))
    c = ctx.check
    if is_tensor(c, "y", y, (p.n_dec + n_pre, p.dim)):
        c.dtype("y", y, dt)
        keep = _keep_rows(p, plan)
        c.close("y (non-pad rows)", y.cpu()[keep], ref[keep])
    compare_slots(c, "conv_state", a.pool, e.pool, plan.active_slots)
    c.untouched("conv_state", before, a.pool, plan.active_slots)


def _split(p: MixParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext) -> None:
    """The mixer on prefill pieces, then one decode token per step, equals one shot."""
    n = len(p.lens_p)
    plan = plan_slots(n, 0, seed)
    fa, fe = ctx.factories()
    a, e = (_build(f, p, plan, dt, sdt) for f in (fa, fe))
    before = a.pool.base.clone()
    ref = call_mixer(ctx.ref, e, 0, n)
    starts = offsets(p.lens_p)
    got = torch.full((sum(p.lens_p), p.dim), float("nan"), dtype=torch.float64)
    pos = [0] * n
    dev = a.x.device
    for k, piece in enumerate(p.pieces):
        rows: list[int] = []
        for i, m in enumerate(piece):
            rows += range(starts[i] + pos[i], starts[i] + pos[i] + m)
            pos[i] += m
        init = a.init_p if k == 0 else torch.ones(n, dtype=torch.bool, device=dev)
        qsl = torch.tensor(offsets(piece), dtype=torch.int32, device=dev)
        step = replace(a, B=a.B[rows], C=a.C[rows], x=a.x[rows], qsl_p=qsl, init_p=init)
        y = call_mixer(ctx.ops, step, 0, n)
        if not is_tensor(ctx.check, f"y[piece {k}]", y, (len(rows), p.dim)):
            return
        got[rows] = y.cpu().double()
    for d in range(p.decode_steps):
        rows = [starts[i] + pos[i] + d for i in range(n)]
        step = replace(a, B=a.B[rows], C=a.C[rows], x=a.x[rows], idx_d=a.idx_p)
        y = call_mixer(ctx.ops, step, n, 0)
        if not is_tensor(ctx.check, f"y[decode {d}]", y, (n, p.dim)):
            return
        got[rows] = y.cpu().double()
    ctx.check.close("y (split vs one shot)", got, ref)
    compare_slots(ctx.check, "conv_state (split)", a.pool, e.pool, plan.active_slots)
    ctx.check.untouched("conv_state", before, a.pool, plan.active_slots)


_BAD = {
    "C_shape": ("C", "x"),
    "state_indices_p_len": ("state_indices_p",),
    "weight_dim": ("weight", "x", "conv_state"),
}


def _bad(what: str, seed: int, ctx: CaseContext) -> None:
    p = MixParams(n_dec=2, lens_p=(3, 4))
    plan = plan_slots(4, 0, seed)
    f = Factory(seed, ctx.device)
    a = _build(f, p, plan, f32, f32)
    if what == "C_shape":
        a.C = f.randn(a.x.shape[0], p.dim + 1, dtype=f32)
    elif what == "state_indices_p_len":
        a.idx_p = a.idx_p[:-1]
    elif what == "weight_dim":
        a.weight = f.randn(p.dim + 1, p.W, dtype=f32)
    before = a.pool.base.clone()
    call = partial(call_mixer, ctx.ops, a, p.n_dec, len(p.lens_p))
    expect_rejected(ctx.check, call, _BAD[what], [("conv_state", before, a.pool)], op=MIXER)


def make_case(
    kind: str,
    p: MixParams,
    dt: torch.dtype = f32,
    sdt: torch.dtype = f32,
    seed: int = 0,
    **kw: Any,
) -> Case:
    requires: tuple[str, ...]
    if kind == "layer":
        body = partial(_oneshot, p, dt, sdt, seed, True)
        op, requires = FN, (FN, UPDATE)
    elif kind == "split":
        n = len(p.pieces[0])
        lens = tuple(sum(pc[i] for pc in p.pieces) + p.decode_steps for i in range(n))
        p = replace(p, n_dec=0, lens_p=lens, n_pad=0)
        body, op, requires = partial(_split, p, dt, sdt, seed), MIXER, (MIXER,)
    else:
        body, op, requires = partial(_oneshot, p, dt, sdt, seed, False), MIXER, (MIXER,)
    return Case(
        op=op,
        kind=kind,
        body=body,
        params=p.show(),
        dtype=dt,
        state_dtype=sdt,
        seed=seed,
        requires=requires,
        types=frozenset(TYPES),
        **kw,
    )


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        quick = (dt, sdt) in QUICK_PAIRS
        p = MixParams(n_dec=3, lens_p=(4, 1, 6), n_pad=2)
        cases.append(make_case("layer", p, dt, sdt, seed=i, quick=quick))
        cases.append(make_case("oneshot", p, dt, sdt, seed=i, quick=quick))
    for j, layout in enumerate(CONV_LAYOUTS):
        p = MixParams(n_dec=2, lens_p=(1, 63), W=2 + j, layout=layout, bias=j == 1)
        cases.append(make_case("layer", p, seed=20 + j))
        cases.append(make_case("oneshot", p, seed=20 + j))
    cases.append(make_case("oneshot", MixParams(n_dec=4, lens_p=(), n_pad=1), seed=30))
    cases.append(make_case("oneshot", MixParams(n_dec=0, lens_p=(200, 300), dim=4), bf16, f32, 31))
    split = MixParams(n_dec=0, lens_p=(), pieces=((2, 5), (3, 1)), decode_steps=3)
    cases.append(make_case("split", split, seed=40, quick=True))
    cases.append(make_case("split", replace(split, layout="page"), f16, f16, seed=41))
    for what in _BAD:
        cases.append(
            Case(
                op=MIXER,
                kind="bad_input",
                body=partial(_bad, what, 0),
                params={"bad": what},
                requires=(MIXER,),
                types=frozenset(TYPES),
            )
        )
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    base = MixParams(
        n_dec=0,
        lens_p=(),
        dim=pick.choice((4, 8)),
        W=pick.choice((2, 3, 4)),
        bias=pick.choice((False, True)),
        layout=pick.choice(CONV_LAYOUTS),
    )
    kind = "layer" if op == FN else pick.choice(("oneshot", "split"))
    if kind == "split":
        n = pick.integer(1, 3)
        pieces = tuple(pick_lens(pick, n, 6) for _ in range(pick.integer(1, 2)))
        p = replace(base, pieces=pieces, decode_steps=pick.integer(0, 3))
        return make_case("split", p, dt, sdt, seed)
    n_pad = pick.integer(0, 2)
    n_dec = pick.integer(0, 3)
    lens = pick_lens(pick, pick.integer(0 if n_dec else 1, 3), 12)
    n_pad = min(n_pad, n_dec + len(lens))
    p = replace(base, n_dec=n_dec, lens_p=lens, n_pad=n_pad)
    return make_case(kind, p, dt, sdt, seed)
