"""Cases for the argument contract, across op families (:mod:`mamba_backends.contract`).

- ``signature``: every op's ``inspect.signature`` equals the spec's: names, order, defaults
  and kinds (annotations are free);
- ``padded_tail``: every varlen op with offsets that end before the token count, as vLLM's
  CUDA-graph batches are. Every output and every tensor the op writes (tail rows included)
  must equal the spec's: what the spec leaves untouched, the backend leaves untouched;
- ``final_states_out``: vLLM 0.33's SSD form, which scatters the final states into a pool
  (pad ``-1`` and null ``0`` entries skipped) and returns None;
- ``bad_input`` (layout): outputs and in-place arguments with a zero stride (an ``expand``-ed
  view), and outputs that partially overlap an input, raise ContractError naming the op and
  the argument before anything is written (every state stays bit-identical).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mamba_backends.backend import OP_NAMES
from mamba_backends.metadata import compute_chunk_metadata
from mamba_backends.testing._tensors import Factory, StatePool
from mamba_backends.testing.case import Case, CaseContext, expect_rejected

f32 = torch.float32
OPS: tuple[str, ...] = tuple(dict.fromkeys(op for ops in OP_NAMES.values() for op in ops))

Built = tuple[dict[str, Any], tuple[str, ...]]  # op kwargs, names of the tensors it writes
Builder = Callable[[Factory], Built]


def _signature(op: str, ctx: CaseContext) -> None:
    def shape(fn: Any) -> list[tuple[str, str, Any]]:
        return [(p.name, str(p.kind), p.default) for p in inspect.signature(fn).parameters.values()]

    got, want = shape(getattr(ctx.ops, op)), shape(getattr(ctx.ref, op))
    if got != want:
        diff = [f"{g} != spec {w}" for g, w in zip(got, want, strict=False) if g != w]
        if len(got) != len(want):
            diff.append(f"{len(got)} parameters, the spec has {len(want)}")
        ctx.check.fail(f"{op} signature differs from the spec's: {'; '.join(diff[:3])}")


# --------------------------------------------------------------------------------------------
# Builders: the same seeded inputs on any device
# --------------------------------------------------------------------------------------------


def _ints(f: Factory, *v: int) -> Tensor:
    return f.ints(v)


def _conv_fn(f: Factory) -> Built:
    dim, W, T = 6, 4, 11  # sequences of 3 and 5 tokens, then 3 pad tokens
    kw = {
        "x": f.randn(T, dim, dtype=f32).t(),
        "weight": f.randn(dim, W, dtype=f32),
        "bias": f.randn(dim, dtype=f32),
        "conv_states": f.randn(5, W - 1, dim, dtype=f32).transpose(1, 2),
        "query_start_loc": _ints(f, 0, 3, 8),
        "cache_indices": _ints(f, 2, 4),
        "has_initial_state": f.bools([True, False]),
        "activation": "silu",
    }
    return kw, ("conv_states",)


def _conv_update(f: Factory) -> Built:
    dim, W, T = 6, 3, 5  # two requests of 2 and 1 tokens, then 2 pad tokens
    kw = {
        "x": f.randn(T, dim, dtype=f32),
        "conv_state": f.randn(5, dim, W - 1, dtype=f32),
        "weight": f.randn(dim, W, dtype=f32),
        "bias": f.randn(dim, dtype=f32),
        "activation": "silu",
        "conv_state_indices": _ints(f, 1, 3),
        "query_start_loc": _ints(f, 0, 2, 3),
    }
    return kw, ("x", "conv_state")


def _scan(f: Factory) -> Built:
    dim, N, T = 4, 3, 9  # sequences of 3 and 4 tokens, then 2 pad tokens
    kw = {
        "u": f.randn(dim, T, dtype=f32),
        "ssm_states": f.randn(4, dim, N, dtype=f32),
        "delta": f.randn(dim, T, dtype=f32, scale=0.5),
        "A": -f.uniform(0.5, 2.0, dim, N, dtype=f32),
        "B": f.randn(2, N, T, dtype=f32),
        "C": f.randn(2, N, T, dtype=f32),
        "D": f.randn(dim, dtype=f32),
        "z": f.randn(dim, T, dtype=f32),
        "delta_bias": f.randn(dim, dtype=f32, scale=0.3),
        "delta_softplus": True,
        "query_start_loc": _ints(f, 0, 3, 7),
        "cache_indices": _ints(f, 1, 3),
        "has_initial_state": f.bools([True, False]),
    }
    return kw, ("delta", "z", "ssm_states")


def _ssu(f: Factory) -> Built:
    T, H, P, N, G = 5, 4, 2, 3, 2  # requests of 2 and 1 tokens, then 2 pad tokens
    kw = {
        "state": f.randn(4, H, P, N, dtype=f32),
        "x": f.randn(T, H, P, dtype=f32),
        "dt": f.randn(T, H, P, dtype=f32, scale=0.5),
        "A": -f.uniform(0.5, 2.0, H, P, N, dtype=f32),
        "B": f.randn(T, G, N, dtype=f32),
        "C": f.randn(T, G, N, dtype=f32),
        "D": f.randn(H, P, dtype=f32),
        "dt_bias": f.randn(H, P, dtype=f32, scale=0.3),
        "z": f.randn(T, H, P, dtype=f32),
        "dt_softplus": True,
        "state_batch_indices": _ints(f, 1, 2),
        "out": f.randn(T, H, P, dtype=f32),
        "cu_seqlens": _ints(f, 0, 2, 3),
    }
    return kw, ("state", "out")


def _ssd(f: Factory, lens: tuple[int, ...] = (5, 9), pad: int = 3) -> dict[str, Any]:
    T, H, P, N, G, chunk = sum(lens) + pad, 4, 2, 3, 2, 4
    offs = [0]
    for n in lens:
        offs.append(offs[-1] + n)
    qsl = f.ints(offs)
    cu, last, seq_idx = compute_chunk_metadata(qsl, f.ints([2] * len(lens)), chunk)
    return {
        "x": f.randn(T, H, P, dtype=f32), "dt": f.randn(T, H, dtype=f32, scale=0.5),
        "A": -f.uniform(0.5, 2.0, H, dtype=f32), "B": f.randn(T, G, N, dtype=f32),
        "C": f.randn(T, G, N, dtype=f32), "chunk_size": chunk, "cu_seqlens": qsl,
        "cu_chunk_seqlens": cu, "last_chunk_indices": last, "seq_idx": seq_idx,
        "out": f.randn(T, H, P, dtype=f32), "D": f.randn(H, dtype=f32),
        "z": f.randn(T, H, P, dtype=f32), "dt_bias": f.randn(H, dtype=f32, scale=0.3),
        "initial_states": f.randn(len(lens), H, P, N, dtype=f32), "dt_softplus": True,
        "state_dtype": f32,
    }  # fmt: skip


def _ssd_tail(f: Factory) -> Built:
    return _ssd(f), ("out",)


def _ssd_scatter(f: Factory) -> Built:
    kw = _ssd(f, lens=(5, 2, 9, 3), pad=0)
    kw["final_states_out"] = f.randn(6, 4, 2, 3, dtype=f32)
    kw["final_state_indices"] = _ints(f, 3, -1, 0, 1)  # pad and null entries are skipped
    return kw, ("out", "final_states_out")


def _checkpoint(f: Factory) -> Built:
    dim, W, T = 5, 4, 20  # rows of 6, 9 and 2 tokens, then 3 pad tokens
    kw = {
        "x": f.randn(T, dim, dtype=f32).t(),
        "chunk_states": f.randn(6, 2, 3, 4, dtype=f32),
        "conv_state": f.randn(6, W - 1, dim, dtype=f32).transpose(1, 2),
        "ssm_state": f.randn(6, 2, 3, 4, dtype=f32),
        "query_start_loc": _ints(f, 0, 6, 15, 17),
        "checkpoint_offsets": _ints(f, 4, 9, 0),
        "checkpoint_chunk_idx": _ints(f, 1, 3, 0),
        "state_indices": f.ints([5, 2, 0], torch.int64),
        "state_len": W - 1,
    }
    return kw, ("conv_state", "ssm_state")


def _gdn_tokens(f: Factory, T: int, H: int = 2, HV: int = 4, K: int = 4) -> dict[str, Any]:
    return {
        "q": f.randn(1, T, H, K, dtype=f32), "k": f.randn(1, T, H, K, dtype=f32),
        "v": f.randn(1, T, HV, K, dtype=f32), "g": -f.uniform(0.05, 1.0, 1, T, HV, dtype=f32),
        "beta": f.uniform(0.1, 0.9, 1, T, HV, dtype=f32), "use_qk_l2norm_in_kernel": True,
    }  # fmt: skip


def _gdn_chunk(f: Factory) -> Built:
    kw = _gdn_tokens(f, 9)  # sequences of 3 and 4 tokens, then 2 pad tokens
    kw.update(
        initial_state=f.randn(2, 4, 4, 4, dtype=f32, scale=0.3),
        output_final_state=True,
        cu_seqlens=_ints(f, 0, 3, 7),
    )
    return kw, ()


def _gdn_recurrent(f: Factory) -> Built:
    kw = _gdn_tokens(f, 5)  # three decodes, a zero-length pad request, then 2 pad tokens
    kw.update(
        initial_state=f.randn(5, 4, 4, 4, dtype=f32, scale=0.3),
        inplace_final_state=True,
        cu_seqlens=_ints(f, 0, 1, 2, 3, 3),
        ssm_state_indices=_ints(f, 1, 4, 2, -1),
    )
    return kw, ("initial_state",)


def _compare(ctx: CaseContext, what: str, got: Any, want: Any) -> None:
    if isinstance(want, Tensor):
        ctx.check.close(what, got.cpu() if isinstance(got, Tensor) else got, want)
    elif isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            ctx.check.fail(f"{what}: expected a {len(want)}-tuple, got {type(got).__name__}")
            return
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _compare(ctx, f"{what}[{i}]", g, w)
    elif want is None and got is not None:
        ctx.check.fail(f"{what}: expected None, got {type(got).__name__}")


def _against_spec(op: str, build: Builder, ctx: CaseContext) -> None:
    fa, fe = ctx.factories()
    (ka, written), (ke, _) = build(fa), build(fe)
    _compare(ctx, "result", getattr(ctx.ops, op)(**ka), getattr(ctx.ref, op)(**ke))
    for name in written:
        ctx.check.close(f"{name} (written in place, tail rows included)", ka[name].cpu(), ke[name])


# --------------------------------------------------------------------------------------------
# Zero strides and overlaps: rejected before anything is written
# --------------------------------------------------------------------------------------------


def _expanded(t: Tensor, dim: int) -> Tensor:
    return t.narrow(dim, 0, 1).expand(t.shape)


def _layout_bad(op: str, build: Builder, arg: str, how: str, ctx: CaseContext) -> None:
    kw, written = build(Factory(ctx.seed, ctx.device))
    if how == "expand":
        kw[arg] = _expanded(kw[arg], kw[arg].dim() - 1 if arg != "final_states_out" else 0)
    elif how == "overlap":  # out = x shifted by one row inside one buffer
        buf = torch.cat([kw["x"], kw["x"][:1]])
        kw["x"], kw[arg] = buf[:-1], buf[1:]
        written = (*written, arg)
    snaps = [(n, kw[n], kw[n].clone()) for n in written if n != arg and n in kw]
    pools = [(n, before, StatePool(t, t)) for n, t, before in snaps]
    expect_rejected(ctx.check, lambda: getattr(ctx.ops, op)(**kw), (arg,), pools, op=op)


def _without(build: Builder, *names: str) -> Builder:
    def b(f: Factory) -> Built:
        kw, written = build(f)
        for n in names:
            kw.pop(n, None)
        return kw, tuple(w for w in written if w not in names)

    return b


_TAIL: dict[str, Builder] = {
    "causal_conv1d_fn": _conv_fn,
    "causal_conv1d_update": _conv_update,
    "selective_scan_fn": _scan,
    "selective_state_update": _ssu,
    "mamba_chunk_scan_combined_varlen": _ssd_tail,
    "store_prefill_checkpoint": _checkpoint,
    "chunk_gated_delta_rule": _gdn_chunk,
    "fused_recurrent_gated_delta_rule": _gdn_recurrent,
}

_LAYOUT_BAD: tuple[tuple[str, Builder, str, str], ...] = (
    ("selective_scan_fn", _scan, "z", "expand"),
    ("selective_scan_fn", _without(_scan, "z"), "delta", "expand"),
    ("causal_conv1d_update", _conv_update, "x", "expand"),
    ("causal_conv1d_update", _conv_update, "out", "overlap"),
    ("selective_state_update", _ssu, "out", "expand"),
    ("selective_state_update", _ssu, "out", "overlap"),
    ("mamba_chunk_scan_combined_varlen", _ssd_scatter, "final_states_out", "expand"),
    ("mamba_chunk_scan_combined_varlen", _ssd_tail, "out", "overlap"),
    ("store_prefill_checkpoint", _checkpoint, "conv_state", "expand"),
    ("store_prefill_checkpoint", _checkpoint, "ssm_state", "expand"),
)


def fixed_cases() -> list[Case]:
    cases = [Case(op=op, kind="signature", body=partial(_signature, op), quick=True) for op in OPS]
    for op, build in _TAIL.items():
        body = partial(_against_spec, op, build)
        cases.append(Case(op=op, kind="padded_tail", body=body))
    ssd = "mamba_chunk_scan_combined_varlen"
    body = partial(_against_spec, ssd, _ssd_scatter)
    cases.append(Case(op=ssd, kind="final_states_out", body=body))
    for op, build, arg, how in _LAYOUT_BAD:
        body = partial(_layout_bad, op, build, arg, how)
        cases.append(Case(op=op, kind="bad_input", body=body, params={"bad": f"{arg}_{how}"}))
    return cases
