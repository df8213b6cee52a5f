"""Serving hazards of the conv1d, Mamba1 scan and selective-state-update families.

The batches a serving engine really hands these ops, each of which broke a backend once:

- **zero-length sequences** anywhere in the batch (at the end included), a **padded tail**
  (offsets end before the token count) and **pad/null slots** (``-1`` / ``0``);
- **poison**: every state slot the op must not read (a sequence without initial state, pad and
  null slots, spare slots, page padding), and every input token of a skipped sequence or of
  the tail, is NaN. vLLM reuses freed blocks, so their contents are arbitrary: a NaN there
  must not reach any output or written state;
- **non-finite inputs** (``spoil``): NaN and +/-inf at random positions of real tokens. The
  comparison is NaN-aware (:meth:`~mamba_backends.testing.case.Check.close`): the backend
  gives NaN exactly where the spec does, and the spec's infinities;
- ``selective_state_update`` **destination aliasing**: one row's destination slot is another
  row's source (``swap``, ``chain``, a random ``mix``; copy-on-write blocks do this). The spec
  reads every state before it writes any;
- ``selective_state_update`` varlen (``cu_seqlens``) with ``out`` being ``x`` itself.

Every output is compared whole against the spec, skipped rows and tail included: what the spec
leaves untouched must stay as it was (NaN stays NaN), and ``causal_conv1d_fn`` returns zeros
in the columns of skipped sequences and of the tail, in a tensor with ``x``'s strides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import (
    CONV_LAYOUTS,
    SSM_LAYOUTS,
    SlotPlan,
    StatePool,
    conv_state_pool,
    offsets,
    plan_slots,
    ssm_state_pool,
)
from mamba_backends.testing.case import Case, CaseContext, Picker
from mamba_backends.testing.cases._common import DTYPE_PAIRS, compare_slots, f16, f32, is_tensor
from mamba_backends.testing.cases.selective_scan import ScanParams, build_scan, call_scan
from mamba_backends.testing.cases.state_update import SsuParams, build_ssu
from mamba_backends.types import NULL_BLOCK_ID

FN, UPDATE, SCAN, SSU = (
    "causal_conv1d_fn", "causal_conv1d_update", "selective_scan_fn", "selective_state_update",
)  # fmt: skip
OPS = (FN, UPDATE, SCAN, SSU)
NAN = float("nan")
_BAD_VALUES = (NAN, float("inf"), float("-inf"))


@dataclass(frozen=True)
class Hazard:
    """One hazardous batch. ``lens``: tokens per entry (zeros allowed), pads included."""

    lens: tuple[int, ...]
    n_pad: int = 0
    tail: int = 0  # padding tokens past the last offset (varlen forms)
    poison: bool = True  # NaN in every slot and token the op must not read
    spoil: int = 0  # non-finite values injected at random positions of real tokens
    inf: bool = False  # spoil with +-inf as well as NaN
    layout: str = "contig"  # state layout (CONV_LAYOUTS / SSM_LAYOUTS)
    init: str = "random"  # random | none (has_initial_state=None) | all
    extra: tuple[tuple[str, Any], ...] = field(default=())  # op-specific knobs

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lens": self.lens, "pad": self.n_pad, "tail": self.tail}
        d.update(poison=self.poison, spoil=self.spoil, inf=self.inf, state=self.layout)
        d.update(init=self.init, **dict(self.extra))
        return d


def _plan(h: Hazard, seed: int) -> SlotPlan:
    all_init = {"random": None, "none": False, "all": True}[h.init]
    return plan_slots(len(h.lens) - h.n_pad, h.n_pad, seed, all_init=all_init)


def _read_slots(plan: SlotPlan, lens: tuple[int, ...], h: Hazard) -> set[int]:
    """The slots the op may read: live, with tokens, with an initial state."""
    use_init = plan.has_init if h.init != "none" else (False,) * len(lens)
    return {
        s
        for s, n, i in zip(plan.slots, lens, use_init, strict=True)
        if s > NULL_BLOCK_ID and n > 0 and i
    }


def _poison_pool(pool: StatePool, keep: set[int]) -> None:
    """Everything in the pool's buffer is NaN except the slots in ``keep``."""
    saved = {s: pool.view[s].clone() for s in keep}
    pool.base.fill_(NAN)
    for s, v in saved.items():
        pool.view[s] = v


def _dead_cols(lens: tuple[int, ...], plan: SlotPlan, T: int) -> list[int]:
    """Token columns of skipped (pad/null) sequences and of the tail."""
    starts = offsets(lens)
    cols = [t for i, s in enumerate(plan.slots) if s <= NULL_BLOCK_ID
            for t in range(starts[i], starts[i + 1])]  # fmt: skip
    return cols + list(range(starts[-1], T))


def _live_cols(lens: tuple[int, ...], plan: SlotPlan) -> list[int]:
    starts = offsets(lens)
    return [t for i, s in enumerate(plan.slots) if s > NULL_BLOCK_ID
            for t in range(starts[i], starts[i + 1])]  # fmt: skip


def _spoil(h: Hazard, seed: int, tensors: list[tuple[Tensor, int]], cols: list[int]) -> None:
    """Put ``h.spoil`` NaN (and +-inf) values at token columns ``cols`` of the tensors.

    ``tensors`` holds ``(t, axis)``: ``axis`` is the token axis of ``t``. Deterministic in the
    seed, so the backend's and the spec's inputs get the same values at the same places.
    """
    if not h.spoil or not cols or not tensors:
        return
    rng = random.Random(seed * 31 + 5)
    values = _BAD_VALUES if h.inf else (NAN,)
    for _ in range(h.spoil):
        t, axis = tensors[rng.randrange(len(tensors))]
        tok = t.movedim(axis, 0)[rng.choice(cols)]
        flat = [rng.randrange(n) for n in tok.shape]
        tok[tuple(flat)] = rng.choice(values)


def _kill(tensors: list[tuple[Tensor | None, int]], cols: list[int]) -> None:
    """NaN in token columns ``cols`` (skipped sequences and tail) of each tensor."""
    for t, axis in tensors:
        if t is not None and cols:
            t.movedim(axis, 0)[cols] = NAN


# --------------------------------------------------------------------------------------------
# causal_conv1d_fn / causal_conv1d_update
# --------------------------------------------------------------------------------------------


def _conv_fn(h: Hazard, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext) -> None:
    plan = _plan(h, seed)
    dim, W = h.get("dim", 8), h.get("W", 4)
    T = sum(h.lens) + h.tail
    reads = _read_slots(plan, h.lens, h)
    built = []
    for f in ctx.factories():
        x = f.randn(T, dim, dtype=dt).t()  # channel-last, as vLLM hands it
        if h.get("x") == "contig":
            x = x.contiguous()
        w = f.randn(dim, W, dtype=dt, scale=W**-0.5)
        bias = f.randn(dim, dtype=dt, scale=0.5)
        pool = conv_state_pool(f, plan.num_slots, dim, W, sdt, h.layout)
        if h.poison:
            _poison_pool(pool, reads)
            _kill([(x, 1)], _dead_cols(h.lens, plan, T))
        _spoil(h, seed, [(x, 1)], _live_cols(h.lens, plan))
        init = None if h.init == "none" else f.bools(plan.has_init)
        kw = {
            "conv_states": pool.view,
            "query_start_loc": f.ints(offsets(h.lens)),
            "cache_indices": f.ints(plan.slots),
            "has_initial_state": init,
            "activation": "silu",
        }
        built.append((x, w, bias, pool, kw))
    (x, w, bias, pool, kw), (xe, we, be, pe, kwe) = built
    before = pool.base.clone()
    out = ctx.ops.causal_conv1d_fn(x, w, bias, **kw)
    ref = ctx.ref.causal_conv1d_fn(xe, we, be, **kwe)
    c = ctx.check
    if is_tensor(c, "out", out, (dim, T)):
        c.dtype("out", out, dt)
        c.require(
            out.stride() == x.stride(),
            f"out strides {out.stride()} differ from x's {x.stride()} (vLLM returns x's layout)",
        )
        c.close("out (all tokens: skipped sequences and tail are zero)", out.cpu(), ref)
    written = [s for s, n in zip(plan.slots, h.lens, strict=True) if s > NULL_BLOCK_ID and n]
    compare_slots(c, "conv_states", pool, pe, written)
    c.untouched("conv_states", before, pool, written)


def _conv_update(h: Hazard, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    plan = _plan(h, seed)
    dim, W, s = h.get("dim", 8), h.get("W", 4), h.lens[0]
    b = len(h.lens)
    reads = {sl for sl in plan.slots if sl > NULL_BLOCK_ID}
    built = []
    for f in ctx.factories():
        x = f.randn(b, s, dim, dtype=dt).transpose(1, 2)  # (b, dim, s)
        x = x[:, :, 0] if h.get("x2d", s == 1) and s == 1 else x
        w = f.randn(dim, W, dtype=dt, scale=W**-0.5)
        bias = f.randn(dim, dtype=dt, scale=0.5)
        pool = conv_state_pool(f, plan.num_slots, dim, W, sdt, h.layout)
        pads = [i for i, sl in enumerate(plan.slots) if sl <= NULL_BLOCK_ID]
        if h.poison:
            _poison_pool(pool, reads)
            _kill([(x, 0)], pads)
        _spoil(h, seed, [(x, 0)], [i for i in range(b) if i not in pads])
        built.append((x, w, bias, pool, f.ints(plan.slots)))
    (x, w, bias, pool, idx), (xe, we, be, pe, idxe) = built
    out = torch.full_like(x, NAN) if h.get("out") else None
    before = pool.base.clone()
    got = ctx.ops.causal_conv1d_update(x, pool.view, w, bias, "silu", idx, out=out)
    out_e = torch.full_like(xe, NAN) if out is not None else None
    ref = ctx.ref.causal_conv1d_update(xe, pe.view, we, be, "silu", idxe, out=out_e)
    c = ctx.check
    if is_tensor(c, "out", got, tuple(xe.shape)):
        c.close("out (all rows: skipped rows keep their values)", got.cpu(), ref)
    compare_slots(c, "conv_state", pool, pe, sorted(reads))
    c.untouched("conv_state", before, pool, sorted(reads))


# --------------------------------------------------------------------------------------------
# selective_scan_fn
# --------------------------------------------------------------------------------------------


def _scan(h: Hazard, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext) -> None:
    plan = _plan(h, seed)
    T = sum(h.lens) + h.tail
    p = ScanParams(lens=(T,), dim=h.get("dim", 6), N=h.get("N", 4), z=h.get("z", True),
                   layout=h.layout, init_arg=h.init != "none")  # fmt: skip
    reads = _read_slots(plan, h.lens, h)
    built = []
    for f in ctx.factories():
        a = build_scan(f, p, replace(plan, slots=(1,), has_init=(True,)), dt, sdt)
        a.qsl, a.idx = f.ints(offsets(h.lens)), f.ints(plan.slots)
        a.init = f.bools(plan.has_init) if p.init_arg else None
        tok = [(a.u, 1), (a.delta, 1), (a.z, 1), (a.B, -1), (a.C, -1)]
        if h.poison:
            _poison_pool(a.pool, reads)
            _kill(tok, _dead_cols(h.lens, plan, T))
        _spoil(h, seed, [(t, ax) for t, ax in tok if t is not None], _live_cols(h.lens, plan))
        built.append(a)
    a, e = built
    before = a.pool.base.clone()
    out = call_scan(ctx.ops, a, p.softplus)
    ref = call_scan(ctx.ref, e, p.softplus)
    c = ctx.check
    if is_tensor(c, "out", out, (p.dim, T)):
        c.close("out (all tokens: skipped ones keep their values)", out.cpu(), ref)
    written = [s for s, n in zip(plan.slots, h.lens, strict=True) if s > NULL_BLOCK_ID and n]
    compare_slots(c, "ssm_states", a.pool, e.pool, written)
    c.untouched("ssm_states", before, a.pool, written)


# --------------------------------------------------------------------------------------------
# selective_state_update
# --------------------------------------------------------------------------------------------


def _ssu_dst(how: str, plan: SlotPlan, seed: int) -> tuple[list[int], int]:
    """Destination slots for the rows of ``plan`` (distinct), and the pool size they need."""
    src = list(plan.slots)
    live = [i for i, s in enumerate(src) if s > NULL_BLOCK_ID]
    fresh = list(range(plan.num_slots, plan.num_slots + len(src)))
    dst = list(src)
    real = [src[i] for i in live]
    if how == "swap":  # rotate the live rows' slots: every destination is another's source
        new = real[1:] + real[:1]
    elif how == "chain":  # row i writes row i+1's source; the last row writes a fresh slot
        new = real[1:] + fresh[:1]
    elif how == "mix":
        new = random.Random(seed * 13 + 1).sample(real + fresh, len(real))
    else:
        new = real
    for i, s in zip(live, new, strict=True):
        dst[i] = s
    return dst, plan.num_slots + len(src)


def _ssu(h: Hazard, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext) -> None:
    varlen = h.get("varlen", False)
    lens = h.lens if varlen else (1,) * len(h.lens)
    plan = _plan(replace(h, init="all"), seed)
    dst, num_slots = _ssu_dst(h.get("dst", "same"), plan, seed)
    plan = replace(plan, num_slots=num_slots)
    T = sum(lens) + (h.tail if varlen else 0)
    form = h.get("form", "mamba2")
    H, G = (1, 1) if form == "mamba1" else (4, 2)
    p = SsuParams(rows=T, form=form, H=H, P=h.get("P", 4), N=h.get("N", 8), G=G,
                  layout=h.layout)  # fmt: skip
    live = [i for i, s in enumerate(plan.slots) if s > NULL_BLOCK_ID and lens[i]]
    reads = {plan.slots[i] for i in live}
    written = [dst[i] for i in live if dst[i] > NULL_BLOCK_ID]
    rows_plan = replace(plan, slots=(1,) * T, has_init=(True,) * T)
    built = []
    for f in ctx.factories():
        a = build_ssu(f, p, rows_plan, [1] * T, dt, sdt)
        a.state = ssm_state_pool(f, num_slots, a.state.view.shape[1:], sdt, h.layout)
        a.src, a.dst = f.ints(plan.slots), f.ints(dst)
        if h.get("out_is_x"):
            a.out = a.x
        tok = [(a.x, 0), (a.B, 0), (a.C, 0), (a.z, 0)]
        if h.poison:
            _poison_pool(a.state, reads)
            _kill([*tok, (a.out, 0)], _dead_cols(lens, plan, T))
        # dt may be an expanded (tied) view: it only gets NaN through its own storage.
        _spoil(h, seed, [(t, 0) for t, _ in tok if t is not None], _live_cols(lens, plan))
        for name, row in h.get("nan_at", ()):  # NaN in a whole token row of one input
            getattr(a, name)[row] = NAN
        built.append(a)
    a, e = built
    before = a.state.base.clone()

    def call(ops: Any, s: Any) -> Any:
        return ops.selective_state_update(
            s.state.view, s.x, s.dt, s.A, s.B, s.C, D=s.D, dt_bias=s.dt_bias, z=s.z,
            dt_softplus=True, state_batch_indices=s.src, dst_state_batch_indices=s.dst,
            out=s.out, cu_seqlens=e_cu(s) if varlen else None,
        )  # fmt: skip

    def e_cu(s: Any) -> Tensor:
        return torch.tensor(offsets(lens), dtype=torch.int32, device=s.x.device)

    got = call(ctx.ops, a)
    call(ctx.ref, e)
    c = ctx.check
    c.require(got is a.out, "the op must return its out argument")
    c.close("out (all rows: skipped rows keep their values)", a.out.cpu(), e.out)
    compare_slots(c, "state", a.state, e.state, written)
    c.untouched("state", before, a.state, written)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

_BODIES = {FN: _conv_fn, UPDATE: _conv_update, SCAN: _scan, SSU: _ssu}


def make_case(
    op: str, h: Hazard, dt: torch.dtype = f32, sdt: torch.dtype = f32, seed: int = 0, **kw: Any
) -> Case:
    return Case(
        op=op,
        kind="hazard",
        body=partial(_BODIES[op], h, dt, sdt, seed),
        params=h.show(),
        dtype=dt,
        state_dtype=sdt,
        seed=seed,
        **kw,
    )


def _x(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kw.items()))


def fixed_cases() -> list[Case]:
    H = Hazard
    cases = [
        # conv: zero-length sequences (between, first, last, all), pads, tail, poison.
        make_case(FN, H(lens=(4, 0, 6, 0), n_pad=1, layout="sd"), seed=1),
        make_case(FN, H(lens=(0, 3, 0), init="all"), seed=2),
        make_case(FN, H(lens=(0, 0), tail=3), seed=3),
        make_case(FN, H(lens=(5, 2, 7), n_pad=1, tail=4, layout="page"), torch.bfloat16, f32, 4),
        make_case(FN, H(lens=(6,), init="none", extra=_x(x="contig")), seed=5),
        make_case(FN, H(lens=(5, 1, 8), n_pad=1, spoil=4, inf=True), seed=6, quick=True),
        make_case(FN, H(lens=(9, 3), spoil=3, extra=_x(W=2)), f16, f16, seed=7),
        make_case(UPDATE, H(lens=(1,) * 5, n_pad=2, layout="sd"), seed=10, quick=True),
        make_case(
            UPDATE, H(lens=(3,) * 3, n_pad=1, spoil=3, inf=True, extra=_x(out=True)), seed=11
        ),  # fmt: skip
        make_case(UPDATE, H(lens=(1,) * 4, n_pad=1, spoil=2), torch.bfloat16, f32, seed=12),
        # scan: zero-length sequences, pads, tail, poison (no-initial-state slots are NaN).
        make_case(SCAN, H(lens=(4, 0, 5, 0), n_pad=1), seed=20, quick=True),
        make_case(SCAN, H(lens=(6, 3), init="none", tail=2, layout="page"), seed=21),
        make_case(SCAN, H(lens=(7, 2, 4), n_pad=1, spoil=4, inf=True), seed=22),
        make_case(SCAN, H(lens=(5, 0, 3), spoil=3, extra=_x(z=False)), torch.bfloat16, f32, 23),
        # SSU: destination aliasing (swap, chain, mix), varlen zero-length tail, out=x.
        make_case(SSU, H(lens=(1,) * 3, extra=_x(dst="swap")), seed=30),
        make_case(SSU, H(lens=(1,) * 4, n_pad=1, extra=_x(dst="chain")), seed=31),
        make_case(SSU, H(lens=(1,) * 5, n_pad=1, extra=_x(dst="mix", form="mamba1")), seed=32),
        make_case(SSU, H(lens=(1,) * 3, extra=_x(dst="swap")), torch.bfloat16, f16, seed=33),
        make_case(SSU, H(lens=(2, 3, 0, 0), extra=_x(varlen=True)), seed=34, quick=True),
        make_case(SSU, H(lens=(0, 2, 0, 3), n_pad=1, tail=2, extra=_x(varlen=True)), seed=35),
        make_case(SSU, H(lens=(3, 1, 2), extra=_x(varlen=True, out_is_x=True)), seed=36),
        # out=x: request 0 ends after one token whose output is NaN (C is NaN there); later
        # steps must not read that row back for it.
        make_case(
            SSU, H(lens=(1, 3), extra=_x(varlen=True, out_is_x=True, nan_at=(("C", 0),))), seed=40
        ),  # fmt: skip
        make_case(SSU, H(lens=(1,) * 3, extra=_x(out_is_x=True, dst="swap")), seed=37),
        make_case(SSU, H(lens=(1,) * 4, n_pad=1, spoil=4, inf=True), seed=38),
        make_case(SSU, H(lens=(2, 0, 3), spoil=3, inf=True, extra=_x(varlen=True)), seed=39),
    ]
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    """A random hazardous batch for ``op``: everything above, mixed."""
    dt, sdt = pick.choice(DTYPE_PAIRS)
    seed = pick.integer(0, 2**16)
    n_pad = pick.integer(0, 2)
    n = pick.integer(1, 4) + n_pad
    spoil = pick.choice((0, 0, 1, 3))
    base = Hazard(
        lens=(1,),
        n_pad=n_pad,
        poison=pick.choice((True, True, False)),
        spoil=spoil,
        inf=pick.choice((False, True)),
        init=pick.choice(("random", "random", "none", "all")),
    )
    if op == FN:
        lens = tuple(pick.choice((0, 0, 1, 2, 3, 5, 9)) for _ in range(n))
        extra = _x(W=pick.choice((2, 3, 4)), dim=pick.choice((4, 8)),
                   x=pick.choice(("cl", "contig")))  # fmt: skip
        h = replace(base, lens=lens, tail=pick.choice((0, 0, 3)), extra=extra,
                    layout=pick.choice(CONV_LAYOUTS))  # fmt: skip
    elif op == UPDATE:
        s = pick.choice((1, 1, 2, 3))
        extra = _x(W=pick.choice((2, 3, 4)), out=pick.choice((False, True)))
        h = replace(base, lens=(s,) * n, extra=extra, layout=pick.choice(CONV_LAYOUTS))
    elif op == SCAN:
        lens = tuple(pick.choice((0, 0, 1, 2, 4, 7)) for _ in range(n))
        extra = _x(z=pick.choice((True, False)), N=pick.choice((2, 4)))
        h = replace(base, lens=lens, tail=pick.choice((0, 0, 2)), extra=extra,
                    layout=pick.choice(SSM_LAYOUTS))  # fmt: skip
    else:
        varlen = pick.choice((False, True))
        lens = tuple(pick.choice((0, 1, 2, 3)) for _ in range(n)) if varlen else (1,) * n
        form = "mamba1" if mamba_type == "mamba1" else pick.choice(("mamba2", "mamba1"))
        extra = _x(varlen=varlen, form=form, dst=pick.choice(("same", "swap", "chain", "mix")),
                   out_is_x=pick.choice((False, True)))  # fmt: skip
        h = replace(base, lens=lens, tail=pick.choice((0, 2)) if varlen else 0, extra=extra,
                    layout=pick.choice(SSM_LAYOUTS), init="all")  # fmt: skip
    return make_case(op, h, dt, sdt, seed)
