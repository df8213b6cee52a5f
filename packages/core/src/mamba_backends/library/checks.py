"""Checks of a backend's custom ops, for the test suites of core and of every vendor package.

- :func:`ops_of`: the ops of some backends, by name, as ``ops()`` hands them out;
- :func:`op_cases`: small seeded inputs for every op, in each form that changes what the op
  writes or returns (``out`` given or not, states returned or scattered, ...);
- :func:`opcheck`: ``torch.library.opcheck`` on the registered op (schema and mutations, fake
  vs real, AOT dispatch);
- :func:`check_compiled`: ``torch.compile(fullgraph=True)`` of a call equals the eager call,
  result and every tensor written in place;
- :func:`check_fake`: the fake implementation on ``meta`` tensors, and the wrapper under
  ``FakeTensorMode``, give the real result's shapes, dtypes and devices.

Each check takes the op as :meth:`mamba_backends.MambaBackend.ops` hands it out (the wrapper)
and a case; expectations come from running the backend's own function eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamba_backends.testing._tensors import Factory
from mamba_backends.testing.cases import contract as kit

f32 = torch.float32
Kwargs = dict[str, Any]


@dataclass(frozen=True)
class OpCase:
    """One op in one form, with a seeded builder of its keyword arguments."""

    op: str
    form: str
    build: Callable[[Factory], Kwargs]

    @property
    def id(self) -> str:
        return f"{self.op}[{self.form}]"


def _kit(builder: Callable[[Factory], tuple[Kwargs, tuple[str, ...]]]) -> Callable[..., Kwargs]:
    return lambda f: builder(f)[0]


def _edit(build: Callable[[Factory], Kwargs], fn: Callable[[Factory, Kwargs], None]) -> Any:
    def b(f: Factory) -> Kwargs:
        kw = build(f)
        fn(f, kw)
        return kw

    return b


def _pop(*names: str) -> Callable[[Factory, Kwargs], None]:
    def fn(f: Factory, kw: Kwargs) -> None:
        for n in names:
            kw.pop(n)

    return fn


def _set(**values: Any) -> Callable[[Factory, Kwargs], None]:
    def fn(f: Factory, kw: Kwargs) -> None:
        for n, v in values.items():
            kw[n] = v(f, kw) if callable(v) else v

    return fn


def _gating(f: Factory) -> Kwargs:
    T, HV = 5, 4
    return {
        "A_log": f.randn(HV, dtype=f32, scale=0.5), "a": f.randn(T, HV, dtype=f32),
        "b": f.randn(T, HV, dtype=f32), "dt_bias": f.randn(HV, dtype=f32, scale=0.3),
    }  # fmt: skip


def _lightning(f: Factory) -> Kwargs:
    b, h, n, d, e = 2, 2, 6, 3, 4  # two blocks of 4 tokens, the last one partial
    return {
        "q": f.randn(b, h, n, d, dtype=f32), "k": f.randn(b, h, n, d, dtype=f32),
        "v": f.randn(b, h, n, e, dtype=f32), "ed": f.uniform(0.1, 0.9, h, dtype=f32),
        "block_size": 4, "kv_history": f.randn(b, h, d, e, dtype=f32, scale=0.3),
    }  # fmt: skip


def _linear_decode(f: Factory) -> Kwargs:
    B, H, D = 3, 2, 4  # the second request is a pad slot: skipped, its cache row untouched
    return {
        "q": f.randn(B, H, 1, D, dtype=f32), "k": f.randn(B, H, 1, D, dtype=f32),
        "v": f.randn(B, H, 1, D, dtype=f32), "kv_caches": f.randn(5, H, D, D, dtype=f32),
        "slope_rate": f.uniform(0.1, 0.9, H, dtype=f32), "slot_idx": f.ints([2, -1, 4]),
    }  # fmt: skip


def _like(name: str) -> Callable[[Factory, Kwargs], Tensor]:
    return lambda f, kw: f.randn(*kw[name].shape, dtype=kw[name].dtype)


def _ssu_single_tokens(f: Factory, kw: Kwargs) -> None:
    """One token per request, every row of the new ``out`` written (no pad rows to leave)."""
    for n in ("x", "dt", "B", "C", "z"):
        kw[n] = kw[n][:3]
    kw["state_batch_indices"] = f.ints([3, 1, 2])
    del kw["cu_seqlens"], kw["out"]


_CONV_UPDATE = _kit(kit._conv_update)
_SCAN = _kit(kit._scan)
_SSU = _kit(kit._ssu)
_SSD = _kit(kit._ssd_tail)
_GDN_CHUNK = _kit(kit._gdn_chunk)
_GDN_RECURRENT = _kit(kit._gdn_recurrent)

_CASES: tuple[OpCase, ...] = (
    OpCase("causal_conv1d_fn", "varlen", _kit(kit._conv_fn)),
    OpCase("causal_conv1d_update", "x_in_place", _CONV_UPDATE),
    OpCase("causal_conv1d_update", "out", _edit(_CONV_UPDATE, _set(out=_like("x")))),
    OpCase("selective_scan_fn", "z", _SCAN),
    OpCase("selective_scan_fn", "delta", _edit(_SCAN, _pop("z"))),
    OpCase("selective_state_update", "out", _SSU),
    OpCase("selective_state_update", "new_out", _edit(_SSU, _ssu_single_tokens)),
    OpCase("mamba_chunk_scan_combined_varlen", "states", _SSD),
    OpCase(
        "mamba_chunk_scan_combined_varlen",
        "intermediate",
        _edit(_SSD, _set(return_intermediate_states=True, dt_limit=(0.0, 4.0))),
    ),
    OpCase("mamba_chunk_scan_combined_varlen", "final_states_out", _kit(kit._ssd_scatter)),
    OpCase("store_prefill_checkpoint", "in_place", _kit(kit._checkpoint)),
    OpCase("fused_gdn_gating", "gates", _gating),
    OpCase("chunk_gated_delta_rule", "final_state", _GDN_CHUNK),
    OpCase(
        "chunk_gated_delta_rule",
        "core_attn_out",
        _edit(
            _GDN_CHUNK,
            _set(
                output_final_state=False,
                core_attn_out=lambda f, kw: f.randn(*kw["v"].shape, dtype=f32),
            ),
        ),
    ),
    OpCase("fused_recurrent_gated_delta_rule", "in_place", _GDN_RECURRENT),
    OpCase(
        "fused_recurrent_gated_delta_rule",
        "per_token",
        _edit(_GDN_RECURRENT, _set(inplace_final_state=False)),
    ),
    OpCase("lightning_attention", "history", _lightning),
    OpCase("linear_decode_forward", "pad_slot", _linear_decode),
)


def op_cases(ops: Iterable[str] | None = None) -> list[OpCase]:
    """The cases of ``ops`` (default: every op), at least one per op."""
    wanted = None if ops is None else set(ops)
    return [c for c in _CASES if wanted is None or c.op in wanted]


def ops_of(*backends: Any) -> dict[str, Callable[..., Any]]:
    """Every op of ``backends`` (``MambaBackend`` classes) as ``ops()`` hands it out, by name;
    an op served by several backends is taken from the first. Optional ops a backend does not
    implement are left out."""
    from mamba_backends.backend import OPTIONAL_OPS

    found: dict[str, Callable[..., Any]] = {}
    for backend in backends:
        ops = backend.ops()
        for name in ops.names:
            if name in OPTIONAL_OPS and not ops.implements(name):
                continue  # left to vLLM's kernel by this backend
            if name not in found:
                found[name] = getattr(ops, name)
    return found


def _clone(kw: Kwargs) -> Kwargs:
    """Deep copy of the tensors, keeping each one's strides (views keep their layout)."""
    out = {}
    for n, v in kw.items():
        if isinstance(v, Tensor):
            c = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
            out[n] = c.copy_(v)
        else:
            out[n] = v
    return out


def _flat(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _close(what: str, got: Any, want: Any) -> None:
    if isinstance(want, Tensor):
        assert isinstance(got, Tensor), f"{what}: expected a tensor, got {type(got).__name__}"
        torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{what}: {m}")
    else:
        assert got is None and want is None, f"{what}: expected {want!r}, got {got!r}"


def opcheck(op: Callable[..., Any], kwargs: Kwargs) -> dict[str, str]:
    """``torch.library.opcheck`` of ``op``'s registered op on a call with ``kwargs``."""
    schema_args = op.schema_args(**_clone(kwargs))  # type: ignore[attr-defined]
    return torch.library.opcheck(op.custom_op, schema_args)  # type: ignore[attr-defined]


def check_compiled(op: Callable[..., Any], kwargs: Kwargs, backend: str = "eager") -> None:
    """``torch.compile(fullgraph=True)`` of ``op(**kwargs)`` gives the eager result and writes.

    The compiled function also computes on the op's result (as a model does), so that the op's
    output feeds the graph. Raises AssertionError naming what differs.
    """
    import torch._dynamo
    import torch._inductor.config

    eager_kw, compiled_kw = _clone(kwargs), _clone(kwargs)
    want = op.raw(**eager_kw)  # type: ignore[attr-defined]

    def call(kw: Kwargs) -> tuple[Any, list[Any]]:
        res = op(**kw)
        return res, [2 * t if isinstance(t, Tensor) else t for t in _flat(res)]

    torch._dynamo.reset()
    # Inductor's FX graph cache keys on the machine, not on ATEN_CPU_CAPABILITY: a graph cached
    # by an AVX-512 run, loaded by an avx2 run on the same machine, computes garbage (torch 2.13).
    with torch._inductor.config.patch(fx_graph_cache=False):
        got, got_derived = torch.compile(call, fullgraph=True, backend=backend)(compiled_kw)
    for i, (g, w) in enumerate(zip(_flat(got), _flat(want), strict=True)):
        _close(f"result[{i}]", g, w)
        if isinstance(w, Tensor):
            _close(f"2 * result[{i}]", got_derived[i], 2 * w)
    for n, w in eager_kw.items():
        if isinstance(w, Tensor):
            _close(f"argument {n!r} after the call", compiled_kw[n], w)


def check_fake(op: Callable[..., Any], kwargs: Kwargs) -> None:
    """The fake implementation gives the real result's metadata: on ``meta`` tensors through
    the registered op, and under ``FakeTensorMode`` through the wrapper."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_kw = _clone(kwargs)
    real = [t for t in _flat(op.raw(**real_kw)) if t is not None]  # type: ignore[attr-defined]
    meta_kw = {n: v.to("meta") if isinstance(v, Tensor) else v for n, v in kwargs.items()}
    raw_out = op.custom_op(*op.schema_args(**meta_kw))  # type: ignore[attr-defined]
    fresh = [t for t in _flat(raw_out) if isinstance(t, Tensor) and t.numel() > 0]
    want_fresh = [t for t in real if not any(t is a for a in real_kw.values())]
    assert all(t.device.type == "meta" for t in fresh)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake_kw = {
            n: mode.from_tensor(v) if isinstance(v, Tensor) else v for n, v in kwargs.items()
        }
        got = [t for t in _flat(op(**fake_kw)) if t is not None]
    assert len(got) == len(real), f"{len(got)} results under FakeTensorMode, {len(real)} real"
    for i, (g, w) in enumerate(zip(got, real, strict=True)):
        assert (g.shape, g.dtype, g.device) == (w.shape, w.dtype, w.device), (
            f"result[{i}]: fake {tuple(g.shape)} {g.dtype} {g.device}, "
            f"real {tuple(w.shape)} {w.dtype} {w.device}"
        )
    for g in fresh:
        assert any(g.shape == w.shape and g.dtype == w.dtype for w in want_fresh), (
            f"meta result {tuple(g.shape)} {g.dtype} matches no fresh result of the real op"
        )
