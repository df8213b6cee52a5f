"""Cases for Mamba2's ``mamba_chunk_scan_combined_varlen`` (SSD, varlen prefill).

The op holds no state pool: it reads ``initial_states (B, H, P, N)`` and returns the final
states, and the layer gathers/scatters them. The kit plays the layer: chunk metadata comes
from :func:`mamba_backends.metadata.compute_chunk_metadata` (chunks aligned to absolute
positions, as after a resumed prefill), ``x``/``B``/``C`` are column slices of one projection
buffer, and in the split case the final states go back into a strided pool between pieces and
the sequences end with ``selective_state_update`` decode steps in ``MambaMixer2``'s tied form.
In-place rule: only ``out`` is written; every input stays bit-identical.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.metadata import compute_chunk_metadata
from mamba_backends.testing._tensors import (
    SSM_LAYOUTS,
    Factory,
    bits,
    offsets,
    plan_slots,
    ssm_state_pool,
)
from mamba_backends.testing.case import Case, CaseContext, Check, Picker, expect_rejected
from mamba_backends.testing.cases._common import (
    DTYPE_PAIRS,
    QUICK_PAIRS,
    bf16,
    f16,
    f32,
    is_tensor,
    pick_dtypes,
    pick_lens,
)
from mamba_backends.testing.cases._nonfinite import POISONS, fill_unread, inject_one_of

OPS = ("mamba_chunk_scan_combined_varlen",)
SSD = OPS[0]
SSU = "selective_state_update"


@dataclass(frozen=True)
class SsdParams:
    lens: tuple[int, ...]
    H: int = 4
    P: int = 4
    N: int = 8
    G: int = 2
    chunk: int = 8
    D: str = "h"  # h: (H,); hp: (H, P); none
    z: bool = False
    init: str = "some"  # none | some | all
    packed: bool = True  # x, B, C as column slices of one (T, conv_dim) buffer
    layout: str = "contig"  # initial_states / split pool layout
    pieces: tuple[tuple[int, ...], ...] = ()
    decode_steps: int = 0
    gate: str = "normal"  # normal | strong (dt * A down to about -1e4 per token)
    poison: str = ""  # see _nonfinite.POISONS
    tail: int = 0  # padded tail of this many NaN tokens past cu_seqlens[-1]

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lens": self.lens, "H": self.H, "P": self.P, "N": self.N}
        d.update(G=self.G, chunk=self.chunk, D=self.D, z=self.z, init=self.init)
        d.update(packed=self.packed, state=self.layout)
        if self.pieces:
            d.update(pieces=tuple(sum(p) for p in self.pieces), decode=self.decode_steps)
        for k, v, default in (("gate", self.gate, "normal"), ("poison", self.poison, "")):
            if v != default:
                d[k] = v
        if self.tail:
            d["tail"] = self.tail
        return d


@dataclass
class SsdInputs:
    x: Tensor  # (T, H, P)
    dt: Tensor  # (T, H)
    A: Tensor  # (H,)
    B: Tensor  # (T, G, N)
    C: Tensor
    D: Tensor | None
    z: Tensor | None
    dt_bias: Tensor
    init: Tensor | None  # (nseq, H, P, N)
    ctx_lens: list[int]


def build_ssd(f: Factory, p: SsdParams, dt: torch.dtype, sdt: torch.dtype, seed: int) -> SsdInputs:
    T, H, P, N, G = sum(p.lens) + p.tail, p.H, p.P, p.N, p.G
    if p.packed:
        width = H * P + 2 * G * N
        xBC = f.randn(T, width + 3, dtype=dt)[:, :width]
        x = xBC[:, : H * P].view(T, H, P)
        B = xBC[:, H * P : H * P + G * N].view(T, G, N)
        C = xBC[:, H * P + G * N :].view(T, G, N)
    else:
        x = f.randn(T, H, P, dtype=dt)
        B = f.randn(T, G, N, dtype=dt, scale=0.5)
        C = f.randn(T, G, N, dtype=dt, scale=0.5)
    strong = p.gate == "strong"
    # strong: softplus(dt + dt_bias) from ~0 to ~20 and |A| up to 500, so dt * A spans
    # -1e-4 .. -1e4 from one token to the next
    dtv = f.randn(T, H, dtype=dt, scale=6.0 if strong else 0.5)
    A = -f.uniform(0.5, 500.0 if strong else 4.0, H, dtype=f32)
    D = {"h": lambda: f.randn(H, dtype=f32), "hp": lambda: f.randn(H, P, dtype=f32)}.get(
        p.D, lambda: None
    )()
    z = f.randn(T, H, P, dtype=dt) if p.z else None
    dt_bias = f.uniform(-2.5, -1.0, H, dtype=f32)
    rng = random.Random(seed)
    n = len(p.lens)
    has = [p.init == "all" or (p.init == "some" and rng.random() < 0.6) for _ in range(n)]
    init = None
    if p.init != "none":
        pool = ssm_state_pool(f, n, (H, P, N), sdt, p.layout)
        init = pool.view * torch.tensor(has, device=f.device)[:, None, None, None].to(sdt)
        init = pool.view.copy_(init)  # zeros where a sequence has no initial state (the layer)
    ctx_lens = [rng.randint(1, 2 * p.chunk) if h else 0 for h in has]
    starts = offsets(p.lens)
    last = [starts[i + 1] - 1 for i in range(n)] if p.poison == "nan_last" else None
    named = [("x", x, 0), ("dt", dtv, 0), ("B", B, 0), ("C", C, 0), ("z", z, 0)]
    if p.poison != "nan_last":
        named.append(("initial_states", init, 0))
    inject_one_of(named, seed, p.poison, last)  # anywhere (the padded tail is NaN anyway)
    for t in (x, dtv, B, C, z):
        if t is not None and p.tail:
            t[starts[-1] :] = float("nan")  # padding past cu_seqlens[-1]: never read
    return SsdInputs(x, dtv, A, B, C, D, z, dt_bias, init, ctx_lens)


def call_ssd(
    ops: Any,
    a: SsdInputs,
    lens: tuple[int, ...] | list[int],
    chunk: int,
    out: Tensor,
    sdt: torch.dtype,
    rows: list[int] | None = None,
    init: Tensor | None = None,
    ctx_lens: list[int] | None = None,
) -> Any:
    """Call the op on token ``rows`` (default: all), grouped into sequences of ``lens``."""

    def take(t: Tensor | None) -> Tensor | None:
        return t if (t is None or rows is None) else t[rows]

    qsl = torch.tensor(offsets(lens), dtype=torch.int32, device=a.x.device)
    ctx = torch.tensor(ctx_lens if ctx_lens is not None else a.ctx_lens, dtype=torch.int32)
    cu, last, seq_idx = compute_chunk_metadata(qsl, ctx.to(qsl.device), chunk)
    return ops.mamba_chunk_scan_combined_varlen(
        take(a.x),
        take(a.dt),
        a.A,
        take(a.B),
        take(a.C),
        chunk_size=chunk,
        cu_seqlens=qsl,
        cu_chunk_seqlens=cu,
        last_chunk_indices=last,
        seq_idx=seq_idx,
        out=out,
        D=a.D,
        z=take(a.z),
        dt_bias=a.dt_bias,
        initial_states=init if rows is not None else a.init,
        dt_softplus=True,
        dt_limit=(0.0, float("inf")),
        state_dtype=sdt,
    )


def _inputs_untouched(check: Check, a: SsdInputs, snap: list[Tensor | None]) -> None:
    now = [a.x, a.dt, a.B, a.C, a.z, a.init]
    names = ["x", "dt", "B", "C", "z", "initial_states"]
    for name, t, s in zip(names, now, snap, strict=True):
        if t is not None and s is not None and not torch.equal(bits(t), s):
            check.fail(f"{name} was modified (the op may only write out)")


def _run(p: SsdParams, dt: torch.dtype, sdt: torch.dtype, seed: int, kind: str, ctx: CaseContext):
    fa, fe = ctx.factories()
    a, e = (build_ssd(f, p, dt, sdt, seed) for f in (fa, fe))
    T, n = sum(p.lens) + p.tail, len(p.lens)
    shape = (T, p.H, p.P)
    dev = a.x.device
    ref_out = torch.full(shape, float("nan"), dtype=dt)
    ref_states = call_ssd(ctx.ref, e, p.lens, p.chunk, ref_out, sdt)
    c = ctx.check
    snap = [None if t is None else bits(t) for t in (a.x, a.dt, a.B, a.C, a.z, a.init)]
    starts = offsets(p.lens)
    if kind == "oneshot":
        out = torch.full(shape, float("nan"), dtype=dt, device=dev)
        states = call_ssd(ctx.ops, a, p.lens, p.chunk, out, sdt)
        c.close("out", out.cpu(), ref_out)
        if is_tensor(c, "returned states", states, (n, p.H, p.P, p.N)):
            c.dtype("returned states", states, sdt)
            c.close("returned states", states.cpu(), ref_states)
        _inputs_untouched(c, a, snap)
        return
    if kind == "batch":
        got = torch.full(shape, float("nan"), dtype=torch.float64)
        for i in range(n):
            rows = list(range(starts[i], starts[i + 1]))
            out = torch.full((len(rows), p.H, p.P), float("nan"), dtype=dt, device=dev)
            init = None if a.init is None else a.init[i : i + 1]
            st = call_ssd(ctx.ops, a, [len(rows)], p.chunk, out, sdt, rows, init, [a.ctx_lens[i]])
            got[rows] = out.cpu().double()
            if is_tensor(c, f"states[seq {i}]", st, (1, p.H, p.P, p.N)):
                c.close(f"states[seq {i} alone]", st.cpu()[0], ref_states[i])
        c.close("out (each sequence alone vs the batch)", got, ref_out)
        _inputs_untouched(c, a, snap)
        return
    # split: SSD on pieces through a strided state pool, then tied-form decode steps.
    plan = plan_slots(n, 0, seed, all_init=True)
    pool = ssm_state_pool(Factory(seed + 1, dev), plan.num_slots, (p.H, p.P, p.N), sdt, p.layout)
    slots = list(plan.slots)
    fill_unread(pool, slots)  # the null block and spare slots hold NaN: never read
    before = pool.base.clone()
    idx = torch.tensor(slots, device=dev)
    if a.init is not None:
        pool.view[idx] = a.init
    pos = [0] * n
    ctx_lens = list(a.ctx_lens)
    got = torch.full(shape, float("nan"), dtype=torch.float64)
    for k, piece in enumerate(p.pieces):
        rows = []
        for i, m in enumerate(piece):
            rows += range(starts[i] + pos[i], starts[i] + pos[i] + m)
            pos[i] += m
        init = pool.view[idx] if (k > 0 or a.init is not None) else None
        out = torch.full((len(rows), p.H, p.P), float("nan"), dtype=dt, device=dev)
        st = call_ssd(ctx.ops, a, list(piece), p.chunk, out, sdt, rows, init, ctx_lens)
        if not is_tensor(c, f"states[piece {k}]", st, (n, p.H, p.P, p.N)):
            return
        pool.view[idx] = st.to(sdt)
        got[rows] = out.cpu().double()
        ctx_lens = [cl + m for cl, m in zip(ctx_lens, piece, strict=True)]
    hpn = (p.H, p.P, p.N)
    A = a.A[:, None, None].expand(*hpn)
    D = a.D if a.D is None or a.D.dim() == 2 else a.D[:, None].expand(p.H, p.P)
    for d in range(p.decode_steps):
        rows = [starts[i] + pos[i] + d for i in range(n)]
        y = torch.full((n, p.H, p.P), float("nan"), dtype=dt, device=dev)
        ctx.ops.selective_state_update(
            pool.view,
            a.x[rows],
            a.dt[rows][:, :, None].expand(n, p.H, p.P),
            A,
            a.B[rows],
            a.C[rows],
            D=D if D is not None else torch.zeros(p.H, p.P, device=dev),
            dt_bias=a.dt_bias[:, None].expand(p.H, p.P),
            z=a.z[rows] if a.z is not None else None,
            dt_softplus=True,
            state_batch_indices=idx.to(torch.int32),
            dst_state_batch_indices=idx.to(torch.int32),
            out=y,
        )
        got[rows] = y.cpu().double()
    c.close("out (split vs one shot)", got, ref_out)
    final = torch.stack([pool.view[s].cpu() for s in slots])
    c.close("final states (split vs one shot)", final, ref_states)
    c.untouched("state pool", before, pool, slots)
    _inputs_untouched(c, a, snap)


# A mismatch between two arguments may be reported on either side: every side is named.
_BAD = {
    "dt_heads": ("dt", "x", "A", "dt_bias"),
    "C_dstate": ("C", "B", "initial_states"),
    "initial_states_batch": ("initial_states",),
    "out_shape": ("out",),
    "seq_idx_dtype": ("seq_idx",),
}


def _bad(what: str, seed: int, ctx: CaseContext) -> None:
    p = SsdParams(lens=(5, 3), init="all")
    f = Factory(seed, ctx.device)
    a = build_ssd(f, p, f32, f32, seed)
    T = sum(p.lens)
    out = torch.full((T, p.H, p.P), 7.0, device=ctx.device)
    qsl = torch.tensor(offsets(p.lens), dtype=torch.int32, device=ctx.device)
    cu, last, seq_idx = compute_chunk_metadata(
        qsl, torch.tensor(a.ctx_lens, device=ctx.device), p.chunk
    )
    if what == "dt_heads":
        a.dt = f.randn(T, p.H + 1, dtype=f32)
    elif what == "C_dstate":
        a.C = f.randn(T, p.G, p.N + 1, dtype=f32)
    elif what == "initial_states_batch":
        a.init = f.randn(3, p.H, p.P, p.N, dtype=f32)
    elif what == "out_shape":
        out = torch.full((T, p.H, p.P + 1), 7.0, device=ctx.device)
    elif what == "seq_idx_dtype":
        seq_idx = seq_idx.float()
    snap = out.clone()

    def call() -> Any:
        return ctx.ops.mamba_chunk_scan_combined_varlen(
            a.x, a.dt, a.A, a.B, a.C, chunk_size=p.chunk, cu_seqlens=qsl,
            cu_chunk_seqlens=cu, last_chunk_indices=last, seq_idx=seq_idx, out=out,
            D=a.D, dt_bias=a.dt_bias, initial_states=a.init, dt_softplus=True,
        )  # fmt: skip

    expect_rejected(ctx.check, call, _BAD[what], [], op=SSD)
    ctx.check.require(torch.equal(bits(out), bits(snap)), "out was written before the error")


def make_case(
    kind: str, p: SsdParams, dt: torch.dtype = f32, sdt: torch.dtype = f32, seed: int = 0, **kw: Any
) -> Case:
    if kind == "split":
        n = len(p.pieces[0])
        p = replace(p, lens=tuple(sum(pc[i] for pc in p.pieces) + p.decode_steps for i in range(n)))
    return Case(
        op=SSD,
        kind=kind,
        body=partial(_run, p, dt, sdt, seed, kind),
        params=p.show(),
        dtype=dt,
        state_dtype=sdt,
        seed=seed,
        requires=(SSD, SSU) if kind == "split" else (SSD,),
        **kw,
    )


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        quick = (dt, sdt) in QUICK_PAIRS
        cases.append(make_case("oneshot", SsdParams(lens=(5, 1, 13)), dt, sdt, seed=i, quick=quick))
    for j, (H, G) in enumerate(((4, 1), (6, 3), (4, 4), (8, 2))):
        p = SsdParams(lens=(1, 63, 2), H=H, G=G, P=2, N=4, layout=SSM_LAYOUTS[j % 3], chunk=16)
        cases.append(make_case("oneshot", p, seed=20 + j))
    cases.append(make_case("oneshot", SsdParams(lens=(9, 4), D="hp", z=True, init="all"), seed=30))
    cases.append(
        make_case("oneshot", SsdParams(lens=(6,), D="none", init="none", packed=False), seed=31)
    )
    cases.append(
        make_case("oneshot", SsdParams(lens=(1,), chunk=4, init="all"), bf16, f32, seed=32)
    )
    cases.append(make_case("oneshot", SsdParams(lens=(20, 7), chunk=256), f16, f32, seed=33))
    long = SsdParams(lens=(200, 1, 299), H=2, P=2, N=4, G=1, chunk=64)
    cases.append(make_case("oneshot", long, bf16, f32, seed=34))
    cases.append(make_case("batch", SsdParams(lens=(4, 1, 10), chunk=4), seed=40, quick=True))
    cases.append(make_case("batch", SsdParams(lens=(6, 9), z=True, layout="page"), bf16, bf16, 41))
    split = SsdParams(lens=(), pieces=((3, 9, 1), (6, 2, 4)), decode_steps=3, chunk=4)
    cases.append(make_case("split", split, seed=50, quick=True))
    cases.append(make_case("split", replace(split, layout="page", init="all"), bf16, f32, seed=51))
    cases.append(
        make_case("split", replace(split, layout="transposed", z=True, D="hp"), f16, f16, 52)
    )
    # numerics: dt * A over a model's whole range, NaN/inf inputs, a padded NaN tail
    strong = SsdParams(lens=(64, 130, 1), H=4, G=2, chunk=64, gate="strong", init="all")
    cases.append(make_case("oneshot", strong, seed=60, quick=True))
    cases.append(make_case("oneshot", replace(strong, z=True, D="hp"), bf16, f32, seed=61))
    cases.append(make_case("split", replace(split, gate="strong"), seed=62))
    # found by the drawn cases: an inf state meeting a decay that underflows (inf * 0 = NaN)
    tiny = SsdParams(lens=(5,), H=2, P=2, N=4, G=1, chunk=4, init="none", gate="strong")
    cases.append(make_case("oneshot", replace(tiny, poison="inf"), seed=1))
    # and one that only fp32 underflows: the spec's inf * e^-100 stays inf
    cases.append(make_case("oneshot", replace(tiny, lens=(2,), poison="inf"), seed=1))
    # found by the drawn cases (stop 20): one token, an inf among x/dt/B/C/z, gated by z
    one = SsdParams(lens=(1,), H=2, P=2, N=4, G=1, chunk=4, z=True, init="none")
    cases.append(make_case("oneshot", replace(one, poison="inf"), seed=29))
    for j, poison in enumerate(POISONS[1:]):
        pp = SsdParams(lens=(64, 40, 70), chunk=64, z=True, init="all", poison=poison, tail=j)
        cases.append(make_case("oneshot", pp, seed=63 + j, quick=poison == "nan_last"))
        cases.append(make_case("oneshot", replace(pp, chunk=16), f16, f32, seed=66 + j))
    for what in _BAD:
        cases.append(
            Case(op=SSD, kind="bad_input", body=partial(_bad, what, 0), params={"bad": what})
        )
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    H, G = pick.choice(((2, 1), (4, 2), (6, 3), (4, 4)))
    p = SsdParams(
        lens=(),
        H=H,
        G=G,
        P=pick.choice((2, 4)),
        N=pick.choice((4, 8)),
        chunk=pick.choice((4, 8, 16)),
        D=pick.choice(("h", "hp", "none")),
        z=pick.choice((False, True)),
        init=pick.choice(("none", "some", "all")),
        packed=pick.choice((True, False)),
        layout=pick.choice(SSM_LAYOUTS),
        gate=pick.choice(("normal", "normal", "strong")),
    )
    kind = pick.choice(("oneshot", "oneshot", "batch", "split"))
    if kind == "oneshot":
        p = replace(p, poison=pick.choice(("", "", *POISONS[1:])), tail=pick.choice((0, 0, 2)))
    if kind == "split":
        n = pick.integer(1, 3)
        pieces = tuple(pick_lens(pick, n, 10) for _ in range(pick.integer(1, 3)))
        return make_case(
            "split", replace(p, pieces=pieces, decode_steps=pick.integer(0, 3)), dt, sdt, seed
        )
    lens = pick_lens(pick, pick.integer(1, 3), 30)
    return make_case(kind, replace(p, lens=lens), dt, sdt, seed)
