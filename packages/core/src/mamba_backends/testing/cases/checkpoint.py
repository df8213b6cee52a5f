"""Cases for ``store_prefill_checkpoint`` (prefix caching: a mid-prefill state into a block).

The kit plays ``MambaMixer2`` in vLLM's ``align`` mode: ``x`` is the ``(dim, T)`` transposed view
of the packed pre-conv activations, the conv state pool is strided (contiguous, vLLM's SD
layout, or a page), the chunk states are what the SSD scan returned. Rows mix checkpoints
(offset >= ``state_len``) and rows without one (offset 0); destinations mix real blocks with
pad (-1) and null (0) entries, which must be skipped. Only the destination slots change, only
in the conv state's first ``state_len`` columns; every input stays bit-identical.

``pipeline`` runs the SSD scan with a chunk end placed on each checkpoint
(``return_intermediate_states=True``) and then the store: the stored SSM state is the state
after the first ``o`` tokens of the row, so it equals the final state of the scan over those
tokens alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import (
    CONV_LAYOUTS,
    SSM_LAYOUTS,
    Factory,
    StatePool,
    bits,
    conv_state_pool,
    offsets,
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
from mamba_backends.types import NULL_BLOCK_ID, PAD_SLOT_ID

OPS = ("store_prefill_checkpoint",)
CKPT = OPS[0]
SSD = "mamba_chunk_scan_combined_varlen"
TYPES = ("mamba2",)


@dataclass(frozen=True)
class CkptParams:
    lens: tuple[int, ...]  # query length per row
    offs: tuple[int, ...]  # checkpoint offset per row (0: none)
    dsts: tuple[str, ...] = ()  # per row: "real" | "pad" | "null" (default all real)
    dim: int = 6
    W: int = 4
    spec_cols: int = 0  # extra conv state columns (speculative decoding widens the state)
    H: int = 2
    P: int = 3
    N: int = 4
    conv_layout: str = "sd"
    ssm_layout: str = "contig"
    tail: int = 0  # padded tokens after query_start_loc[-1]

    def show(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lens": self.lens, "offs": self.offs, "dim": self.dim, "W": self.W}
        d.update(H=self.H, P=self.P, N=self.N, conv=self.conv_layout, ssm=self.ssm_layout)
        if self.dsts:
            d["dsts"] = self.dsts
        if self.spec_cols:
            d["spec_cols"] = self.spec_cols
        if self.tail:
            d["tail"] = self.tail
        return d


@dataclass
class CkptInputs:
    x: Tensor
    chunk_states: Tensor
    conv: StatePool
    ssm: StatePool
    qsl: Tensor
    offs: Tensor
    chunk_idx: Tensor
    slots: Tensor


def _slots(p: CkptParams, seed: int) -> tuple[list[int], int]:
    """Destination per row (distinct real blocks >= 1, pad/null where asked) and pool size."""
    kinds = p.dsts or ("real",) * len(p.lens)
    n_real = sum(k == "real" for k in kinds)
    num_slots = n_real + 3  # spare blocks that nobody writes
    real = iter(random.Random(seed * 31 + 7).sample(range(1, num_slots), n_real))
    fixed = {"pad": PAD_SLOT_ID, "null": NULL_BLOCK_ID}
    return [next(real) if k == "real" else fixed[k] for k in kinds], num_slots


def build(
    f: Factory, p: CkptParams, dt: torch.dtype, sdt: torch.dtype, seed: int, nchunks: int = 0
) -> CkptInputs:
    """Random inputs for ``p``; ``chunk_states`` has ``nchunks`` rows (default 2 per row)."""
    T = sum(p.lens) + p.tail
    slots, num_slots = _slots(p, seed)
    nch = nchunks or 2 * len(p.lens) + 1
    # x as the layer has it: the (dim, T) transpose of a (T, dim) slice of a wider buffer.
    x = f.randn(T, p.dim + 4, dtype=dt)[:, 2 : 2 + p.dim].t()
    chunk_states = f.randn(nch, p.H, p.P, p.N, dtype=sdt)
    conv = conv_state_pool(f, num_slots, p.dim, p.W, sdt, p.conv_layout, p.W - 1 + p.spec_cols)
    ssm = ssm_state_pool(f, num_slots, (p.H, p.P, p.N), sdt, p.ssm_layout)
    rng = random.Random(seed)
    idx = [rng.randrange(nch) if o else 0 for o in p.offs]
    return CkptInputs(
        x, chunk_states, conv, ssm, f.ints(offsets(p.lens)), f.ints(p.offs), f.ints(idx),
        f.ints(slots, torch.int64),
    )  # fmt: skip


def call(ops: Any, a: CkptInputs, state_len: int) -> Any:
    return ops.store_prefill_checkpoint(
        a.x, a.chunk_states, a.conv.view, a.ssm.view, a.qsl, a.offs, a.chunk_idx, a.slots,
        state_len,
    )  # fmt: skip


def _written(p: CkptParams, slots: Tensor) -> list[int]:
    return [int(s) for s, o in zip(slots.tolist(), p.offs, strict=True) if o and s > 0]


def _oneshot(p: CkptParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    fa, fe = ctx.factories()
    a, e = build(fa, p, dt, sdt, seed), build(fe, p, dt, sdt, seed)
    before = (a.conv.base.clone(), a.ssm.base.clone())
    snaps = [(n, t, bits(t)) for n, t in (("x", a.x), ("chunk_states", a.chunk_states))]
    c = ctx.check
    res = call(ctx.ops, a, p.W - 1)
    call(ctx.ref, e, p.W - 1)
    c.require(res is None, f"returned {type(res).__name__}, expected None")
    for name, t, snap in snaps:
        c.require(torch.equal(bits(t), snap), f"{name} was modified (the op only writes states)")
    written = _written(p, a.slots.cpu())
    compare_slots(c, "conv_state", a.conv, e.conv, written)
    compare_slots(c, "ssm_state", a.ssm, e.ssm, written)
    c.untouched("conv_state", before[0], a.conv, written)
    c.untouched("ssm_state", before[1], a.ssm, written)
    if written and p.spec_cols:  # the columns past state_len of a written slot stay as well
        ka = torch.stack([a.conv.view[s, :, p.W - 1 :].cpu() for s in written])
        kb = torch.stack([e.conv.view[s, :, p.W - 1 :] for s in written])
        c.require(torch.equal(bits(ka), bits(kb)), "conv_state columns >= state_len changed")


def _chunks(lens: tuple[int, ...], offs: tuple[int, ...], chunk: int):
    """Chunk metadata with a chunk end on every checkpoint (as vLLM's builder places them)."""
    cu, seq_idx, last, ckpt_idx, pos = [0], [], [], [], 0
    for b, (n, o) in enumerate(zip(lens, offs, strict=True)):
        for seg_len, is_ckpt in (((o, True),) if o else ()) + ((n - o, False),):
            left = seg_len
            while left > 0:
                step = min(chunk, left)
                pos += step
                left -= step
                cu.append(pos)
                seq_idx.append(b)
            if is_ckpt:
                ckpt_idx.append(len(cu) - 2)
        last.append(len(cu) - 2)
        if not o:
            ckpt_idx.append(0)
    return cu, seq_idx, last, ckpt_idx


def _ssd_inputs(f: Factory, T: int, H: int, P: int, N: int, dt: torch.dtype) -> dict[str, Any]:
    return {
        "x": f.randn(T, H, P, dtype=dt),
        "dt": f.randn(T, H, dtype=dt, scale=0.5),
        "A": -f.uniform(0.5, 2.0, H, dtype=f32),
        "B": f.randn(T, 1, N, dtype=dt, scale=0.5),
        "C": f.randn(T, 1, N, dtype=dt, scale=0.5),
        "D": f.randn(H, dtype=f32),
        "dt_bias": f.uniform(-2.0, -1.0, H, dtype=f32),
    }


def _pipeline(p: CkptParams, dt: torch.dtype, sdt: torch.dtype, seed: int, ctx: CaseContext):
    chunk = 4
    cu, seq_idx, last, ckpt_idx = _chunks(p.lens, p.offs, chunk)
    fa = Factory(seed, ctx.device)
    a = build(fa, p, dt, sdt, seed, nchunks=len(cu) - 1)
    T = sum(p.lens)
    s = _ssd_inputs(Factory(seed + 1, ctx.device), T, p.H, p.P, p.N, dt)
    out = torch.zeros(T, p.H, p.P, dtype=dt, device=ctx.device)
    meta = {
        "chunk_size": chunk, "cu_seqlens": a.qsl, "cu_chunk_seqlens": fa.ints(cu),
        "last_chunk_indices": fa.ints(last), "seq_idx": fa.ints(seq_idx), "out": out,
        "dt_softplus": True, "state_dtype": sdt,
    }  # fmt: skip
    states = ctx.ops.mamba_chunk_scan_combined_varlen(**s, **meta, return_intermediate_states=True)
    a.chunk_states, a.chunk_idx = states, fa.ints(ckpt_idx)
    call(ctx.ops, a, p.W - 1)
    # Oracle: the spec's final state of each row's first o tokens, alone.
    starts = offsets(p.lens)
    for b, o in enumerate(p.offs):
        slot = int(a.slots[b])
        if not o or slot <= 0:
            continue
        rows = slice(starts[b], starts[b] + o)
        sub = {k: (v[rows] if k in ("x", "dt", "B", "C") else v) for k, v in s.items()}
        sub = {k: v.cpu() for k, v in sub.items()}
        n_ch = (o + chunk - 1) // chunk
        sub_cu = [min(i * chunk, o) for i in range(n_ch + 1)]
        want = ctx.ref.mamba_chunk_scan_combined_varlen(
            **sub, chunk_size=chunk, cu_seqlens=torch.tensor([0, o], dtype=torch.int32),
            cu_chunk_seqlens=torch.tensor(sub_cu, dtype=torch.int32),
            last_chunk_indices=torch.tensor([n_ch - 1], dtype=torch.int32),
            seq_idx=torch.zeros(n_ch, dtype=torch.int32),
            out=torch.zeros(o, p.H, p.P, dtype=dt), dt_softplus=True, state_dtype=sdt,
        )  # fmt: skip
        ctx.check.close(
            f"ssm_state[{slot}] (state after {o} tokens)", a.ssm.view[slot].cpu(), want[0]
        )
        window = a.x[:, starts[b] + o - (p.W - 1) : starts[b] + o].cpu().to(sdt)
        ctx.check.close(
            f"conv_state[{slot}] (last W-1 inputs)", a.conv.view[slot, :, : p.W - 1].cpu(), window
        )


# A mismatch between two arguments may be reported on either side: every side is named.
_BAD: dict[str, tuple[str, ...]] = {
    "offset_below_state_len": ("checkpoint_offsets",),
    "offset_past_row": ("checkpoint_offsets",),
    "chunk_idx_range": ("checkpoint_chunk_idx",),
    "slot_range": ("state_indices",),
    "slot_twice": ("state_indices",),
    "conv_dim": ("conv_state", "x"),
    "ssm_shape": ("ssm_state", "chunk_states"),
    "offsets_len": ("checkpoint_offsets", "query_start_loc"),
    "slots_dtype": ("state_indices",),
    "conv_expanded": ("conv_state",),
    "state_len": ("state_len", "conv_state"),
}


def _bad(what: str, seed: int, ctx: CaseContext) -> None:
    p = CkptParams(lens=(7, 9, 6), offs=(4, 0, 5))
    f = Factory(seed, ctx.device)
    a = build(f, p, f32, f32, seed)
    state_len = p.W - 1
    if what == "offset_below_state_len":
        a.offs = f.ints((2, 0, 5))
    elif what == "offset_past_row":
        a.offs = f.ints((8, 0, 5))
    elif what == "chunk_idx_range":
        a.chunk_idx = f.ints((a.chunk_states.shape[0], 0, 0))
    elif what == "slot_range":
        a.slots = f.ints((int(a.conv.view.shape[0]), 1, 2), torch.int64)
    elif what == "slot_twice":
        a.slots = f.ints((2, 1, 2), torch.int64)
    elif what == "conv_dim":
        a.conv = conv_state_pool(f, a.conv.view.shape[0], p.dim + 1, p.W, f32, "contig")
    elif what == "ssm_shape":
        a.ssm = ssm_state_pool(f, a.ssm.view.shape[0], (p.H, p.P, p.N + 1), f32, "contig")
    elif what == "offsets_len":
        a.offs = f.ints((4, 0))
    elif what == "slots_dtype":
        a.slots = a.slots.float()
    elif what == "conv_expanded":
        v = a.conv.view
        a.conv = StatePool(v.narrow(2, 0, 1).expand(v.shape), a.conv.base)
    elif what == "state_len":
        state_len = p.W  # more columns than the conv state holds
    pools = [("conv_state", a.conv.base.clone(), a.conv), ("ssm_state", a.ssm.base.clone(), a.ssm)]
    expect_rejected(ctx.check, partial(call, ctx.ops, a, state_len), _BAD[what], pools, op=CKPT)


def make_case(
    kind: str,
    p: CkptParams,
    dt: torch.dtype = f32,
    sdt: torch.dtype = f32,
    seed: int = 0,
    **kw: Any,
) -> Case:
    body = _pipeline if kind == "pipeline" else _oneshot
    requires = (CKPT, SSD) if kind == "pipeline" else ()
    return Case(
        op=CKPT, kind=kind, body=partial(body, p, dt, sdt, seed), params=p.show(), dtype=dt,
        state_dtype=sdt, seed=seed, requires=requires, **kw,
    )  # fmt: skip


_BASE = CkptParams(lens=(9, 5, 17, 12, 8), offs=(4, 0, 16, 3, 8), dsts=("real",) * 5)


def fixed_cases() -> list[Case]:
    cases: list[Case] = []
    for i, (dt, sdt) in enumerate(DTYPE_PAIRS):
        cl = CONV_LAYOUTS[i % len(CONV_LAYOUTS)]
        sl = SSM_LAYOUTS[i % len(SSM_LAYOUTS)]
        p = replace(_BASE, conv_layout=cl, ssm_layout=sl)
        cases.append(make_case("oneshot", p, dt, sdt, seed=i, quick=(dt, sdt) in QUICK_PAIRS))
    # Pad and null destinations (skipped), rows without a checkpoint, a padded tail, W=2,
    # speculative-widened conv state, one row, no row with a checkpoint.
    pads = replace(_BASE, dsts=("pad", "real", "null", "real", "real"))
    cases.append(make_case("oneshot", pads, seed=20, quick=True))
    cases.append(make_case("oneshot", replace(_BASE, tail=5, conv_layout="page"), seed=21))
    cases.append(make_case("oneshot", replace(_BASE, W=2, offs=(1, 0, 16, 1, 0)), seed=22))
    cases.append(make_case("oneshot", replace(_BASE, spec_cols=2, conv_layout="contig"), seed=23))
    cases.append(make_case("oneshot", CkptParams(lens=(6,), offs=(6,)), bf16, f32, seed=24))
    cases.append(make_case("oneshot", replace(_BASE, offs=(0,) * 5), seed=25))
    cases.append(make_case("oneshot", replace(_BASE, H=1, P=1, N=1, dim=1), f16, f16, seed=26))
    # SSD with a chunk end on the checkpoint, then the store: the checkpoint is the state
    # after the first o tokens.
    pipe = CkptParams(lens=(11, 6, 14), offs=(8, 0, 5), dsts=("real", "real", "real"))
    cases.append(make_case("pipeline", pipe, seed=30, quick=True))
    cases.append(make_case("pipeline", replace(pipe, dsts=("real", "pad", "null")), bf16, f32, 31))
    for what in _BAD:
        cases.append(
            Case(op=CKPT, kind="bad_input", body=partial(_bad, what, 0), params={"bad": what})
        )
    return cases


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    dt, sdt = pick_dtypes(pick)
    seed = pick.integer(0, 2**16)
    W = pick.choice((2, 3, 4))
    rows = pick.integer(1, 5)
    lens = tuple(pick.integer(W - 1, 20) for _ in range(rows))
    offs = tuple(pick.choice((0, pick.integer(W - 1, n))) for n in lens)
    dsts = tuple(pick.choice(("real", "real", "real", "pad", "null")) for _ in lens)
    p = CkptParams(
        lens=lens, offs=offs, dsts=dsts, W=W, dim=pick.choice((1, 4, 6)),
        H=pick.choice((1, 2)), P=pick.choice((1, 3)), N=pick.choice((2, 4)),
        conv_layout=pick.choice(CONV_LAYOUTS), ssm_layout=pick.choice(SSM_LAYOUTS),
        spec_cols=pick.choice((0, 0, 2)), tail=pick.choice((0, 0, 3)),
    )  # fmt: skip
    kind = pick.choice(("oneshot", "oneshot", "pipeline"))
    if kind == "pipeline":
        p = replace(p, W=min(W, min(lens) + 1))
    return make_case(kind, p, dt, sdt, seed)
