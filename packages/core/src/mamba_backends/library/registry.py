"""Backend ops as ``torch.library`` custom ops, behind wrappers that keep the spec's signature.

For one op of one ops module (``mamba_backends_cpu.ops`` ...), :func:`custom_op_wrapper`
registers ``mamba_backends::<module>__<op>`` (e.g. ``mamba_backends::cpu_ops__causal_conv1d_fn``;
backends that share an ops module share its ops) and returns a Python function with exactly the
op's signature that calls it. Under ``torch.compile`` the op is one opaque node whose fake
implementation gives the result's shapes; vLLM compiles its models and captures CUDA graphs.

The schema is derived once per family from the spec's annotations
(:mod:`mamba_backends.reference.ops`), so every backend's op of a family has the same schema,
the same declared mutations and the same fake (:mod:`mamba_backends.library.families`). What a
schema cannot carry is normalised by the wrapper:

- ``activation`` (``bool | str | None``) becomes ``str?`` (``True`` -> ``"silu"``,
  ``False`` -> None, as :func:`mamba_backends.contract.normalize_activation` reads them);
- ``dt_limit`` (a tuple) becomes ``float[]``, and back to a tuple for the op;
- ``metadata`` (``Any``, a launch-grid hint every op ignores) is not passed: the op gets None;
- the result: the registered op returns only its fresh tensors; arguments the op returns after
  writing them (``out``, ``x``, ``z``, ``initial_state``, ...) are returned by the wrapper.

A call whose arguments the schema cannot carry (a wrong type: a list for a tensor, an int for
``activation``) goes to the backend's function as it is, which rejects it with the contract's
error. Registration is lazy (first access of the op), thread safe and idempotent; a different
function under the same module and op (a reload, a test's monkeypatch) gets its own op, so a
wrapper always calls the function it was made for.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamba_backends.library.families import OP_FAMILIES, New, OpFamily, Plan

logger = logging.getLogger(__name__)

#: The ``torch.library`` namespace of every registered op (``torch.ops.mamba_backends``).
NAMESPACE = "mamba_backends"

_BAD = object()  # a value the schema cannot carry
_P = inspect.Parameter


# --------------------------------------------------------------------------------------------
# The schema of a family, from the spec's signature
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arg:
    """One spec parameter: how it crosses the schema (``kind``) and its schema type."""

    name: str
    kind: str  # tensor | int | float | bool | dtype | activation | floats | drop
    optional: bool
    default: Any

    @property
    def annotation(self) -> Any:
        base = {
            "tensor": Tensor,
            "int": int,
            "float": float,
            "bool": bool,
            "dtype": torch.dtype,
            "activation": str,
            "floats": list[float],
        }[self.kind]
        return base | None if self.optional else base


def _kind(op: str, name: str, ann: Any) -> tuple[str, bool]:
    if ann is Any or ann is object:
        return "drop", True
    members = set(typing.get_args(ann)) if isinstance(ann, types.UnionType) else {ann}
    optional = type(None) in members
    members.discard(type(None))
    if members == {str, bool}:
        return "activation", True
    if typing.get_origin(ann) is tuple and set(typing.get_args(ann)) == {float}:
        return "floats", False
    simple = {Tensor: "tensor", int: "int", float: "float", bool: "bool", torch.dtype: "dtype"}
    if len(members) == 1 and (m := next(iter(members))) in simple:
        return simple[m], optional
    raise TypeError(f"{op}: no custom-op schema type for argument {name!r} ({ann!r})")


_SPEC_ARGS: dict[str, tuple[_Arg, ...]] = {}


def spec_args(op: str) -> tuple[_Arg, ...]:
    """The spec's parameters of ``op``, with their schema kinds (cached)."""
    found = _SPEC_ARGS.get(op)
    if found is None:
        from mamba_backends.reference import ops as ref_ops

        fn = getattr(ref_ops, op)
        hints = typing.get_type_hints(fn)
        found = tuple(
            _Arg(p.name, *_kind(op, p.name, hints[p.name]), p.default)
            for p in inspect.signature(fn).parameters.values()
        )
        _SPEC_ARGS[op] = found
    return found


def _same_signature(fn: Callable[..., Any], args: tuple[_Arg, ...]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return [(p.name, p.kind, p.default) for p in params] == [
        (a.name, _P.POSITIONAL_OR_KEYWORD, a.default) for a in args
    ]


# --------------------------------------------------------------------------------------------
# Crossing the schema: Python values <-> schema values
# --------------------------------------------------------------------------------------------

_INTS = (int, torch.SymInt)
_FLOATS = (float, int, torch.SymFloat, torch.SymInt)


def _to_schema(kind: str, v: Any) -> Any:
    """``v`` as the schema carries it, or ``_BAD``. None was handled by the caller."""
    if kind == "tensor":
        return v if isinstance(v, Tensor) else _BAD
    if isinstance(v, bool):
        if kind == "bool":
            return v
        return ("silu" if v else None) if kind == "activation" else _BAD
    if kind == "int":
        return v if isinstance(v, _INTS) else _BAD
    if kind == "float":
        return v if isinstance(v, _FLOATS) else _BAD
    if kind == "activation":
        return v if isinstance(v, str) else _BAD
    if kind == "bool":
        return v if isinstance(v, torch.SymBool) else _BAD
    if kind == "dtype":
        return v if isinstance(v, torch.dtype) else _BAD
    if kind == "floats" and isinstance(v, (tuple, list)):
        ok = all(isinstance(e, _FLOATS) and not isinstance(e, bool) for e in v)
        return [float(e) if isinstance(e, int) else e for e in v] if ok else _BAD
    return _BAD


def _fresh(op: str, plan: Plan, result: Any, args: dict[str, Any], out: list[Tensor]) -> None:
    """Collect the result's fresh tensors into ``out`` in their planned layouts; check the
    rest of the result against the plan."""
    if isinstance(plan, New):
        if not isinstance(result, Tensor):
            raise RuntimeError(f"{op}: expected a new tensor in its result, got {result!r}")
        if plan.like is None:
            result = result.contiguous()
        elif result.stride() != (like := args[plan.like]).stride():
            result = torch.empty_like(like).copy_(result)
        out.append(result)
    elif isinstance(plan, str):
        arg = args[plan]
        same = result is arg or (
            isinstance(result, Tensor)
            and result.data_ptr() == arg.data_ptr()
            and result.shape == arg.shape
        )
        if not same:
            raise RuntimeError(f"{op}: must return its argument {plan!r} (written in place)")
    elif plan is None:
        if result is not None:
            raise RuntimeError(f"{op}: expected None in its result, got {type(result).__name__}")
    else:
        if not isinstance(result, (tuple, list)) or len(result) != len(plan):
            raise RuntimeError(f"{op}: expected a {len(plan)}-tuple, got {type(result).__name__}")
        for p, r in zip(plan, result, strict=True):
            _fresh(op, p, r, args, out)


def _rebuild(plan: Plan, fresh: list[Tensor], args: dict[str, Any], i: list[int]) -> Any:
    """The spec's result from the registered op's fresh tensors and the arguments."""
    if isinstance(plan, New):
        t = fresh[i[0]]
        i[0] += 1
        return t
    if isinstance(plan, str):
        return args[plan]
    if plan is None:
        return None
    return tuple(_rebuild(p, fresh, args, i) for p in plan)


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


@dataclass
class Registered:
    """One registered op: the function it runs, its ``torch.ops`` overload, its wrappers.

    ``wrapper`` calls ``fn`` directly in eager mode and the registered op when traced;
    ``dispatching`` calls the registered op always (``MAMBA_BACKENDS_CUSTOM_OPS=always``).
    """

    name: str
    fn: Callable[..., Any]
    overload: torch._ops.OpOverload
    wrapper: Callable[..., Any]
    dispatching: Callable[..., Any]


_LOCK = threading.RLock()
_REGISTERED: dict[tuple[str, str], list[Registered]] = {}
_NAMES: set[str] = set()
_LIB: torch.library.Library | None = None  # kept alive: its registrations die with it
_dispatch_stack_len: Callable[[], int] = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def tracing() -> bool:
    """Whether a call is being traced: ``torch.compile``/``export``, or a dispatch mode
    (``FakeTensorMode``, ``make_fx``, functionalization) is active."""
    return torch.compiler.is_compiling() or _dispatch_stack_len() > 0


def _library() -> torch.library.Library:
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
    return _LIB


def op_base_name(module_name: str, op: str) -> str:
    """``mamba_backends_cpu.ops`` + ``causal_conv1d_fn`` -> ``cpu_ops__causal_conv1d_fn``."""
    stem = re.sub(r"^mamba_backends(?=[._])[._]?", "", module_name)
    return f"{re.sub(r'[^0-9A-Za-z]+', '_', stem).strip('_')}__{op}"


def _padded(fresh: list[Tensor], n: int, args: dict[str, Any], anchor: str) -> Any:
    """The registered op's fixed returns: ``fresh`` then empty placeholders, ``n`` in all."""
    while len(fresh) < n:
        fresh.append(args[anchor].new_empty(0))
    return None if n == 0 else fresh[0] if n == 1 else tuple(fresh)


def _register(module_name: str, op: str, fn: Callable[..., Any]) -> Registered:
    family: OpFamily = OP_FAMILIES[op]
    args = spec_args(op)
    crossing = tuple(a for a in args if a.kind != "drop")
    dropped = {a.name: a.default for a in args if a.kind == "drop"}
    names = tuple(a.name for a in crossing)
    floats = tuple(a.name for a in crossing if a.kind == "floats")
    anchor = next(a.name for a in crossing if a.kind == "tensor" and not a.optional)
    n = family.returns

    def spec_kwargs(schema_args: tuple[Any, ...]) -> dict[str, Any]:
        a = dict(zip(names, schema_args, strict=True))
        for f in floats:
            if a[f] is not None:
                a[f] = tuple(a[f])
        a.update(dropped)
        return a

    def impl(*schema_args: Any) -> Any:
        a = spec_kwargs(schema_args)
        fresh: list[Tensor] = []
        _fresh(op, family.result(a), fn(**a), a, fresh)
        return _padded(fresh, n, a, anchor)

    def fake(*schema_args: Any) -> Any:
        a = spec_kwargs(schema_args)
        return _padded(family.fake(a), n, a, anchor)

    params = [_P(a.name, _P.POSITIONAL_OR_KEYWORD, annotation=a.annotation) for a in crossing]
    returns: Any = (None, Tensor, tuple[Tensor, Tensor])[n]
    impl.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    schema = torch.library.infer_schema(impl, mutates_args=family.mutates)
    base = op_base_name(module_name, op)
    name, k = base, 1
    while name in _NAMES or hasattr(getattr(torch.ops, NAMESPACE), name):
        k += 1
        name = f"{base}_v{k}"
    lib = _library()
    lib.define(name + schema)
    # One Python kernel for every device; the C++ autograd fallback bumps the version counters
    # of the mutated arguments. (torch.library.custom_op adds Python autograd and
    # ADInplaceOrView layers that cost ~40-150 us per eager call at these argument counts.)
    lib.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=lib)
    _NAMES.add(name)
    overload = getattr(getattr(torch.ops, NAMESPACE), name).default
    dispatching = _make_wrapper(op, fn, family, crossing, overload)
    logger.debug("registered %s::%s%s for %s.%s", NAMESPACE, name, schema, module_name, op)
    return Registered(name, fn, overload, _eager_first(fn, dispatching), dispatching)


def _make_wrapper(
    op: str,
    fn: Callable[..., Any],
    family: OpFamily,
    crossing: tuple[_Arg, ...],
    overload: torch._ops.OpOverload,
) -> Callable[..., Any]:
    """A function with ``fn``'s signature that calls ``overload`` with schema arguments."""
    sig = inspect.signature(fn)
    names = tuple(sig.parameters)
    defaults = {n: p.default for n, p in sig.parameters.items() if p.default is not _P.empty}
    kinds = tuple((a.name, a.kind) for a in crossing)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Every parameter by name, as a plain call would bind them (plain Python: traceable)."""
        kw = dict(defaults)
        for name, v in zip(names, args, strict=False):
            kw[name] = v
        clash = any(name in kwargs for name in names[: len(args)])
        kw.update(kwargs)
        if clash or len(kw) != len(names) or len(args) > len(names):
            sig.bind(*args, **kwargs)  # raises the TypeError of a plain call
        return kw

    def schema_args(kw: dict[str, Any]) -> list[Any] | None:
        """The registered op's arguments, or None when the schema cannot carry one."""
        out = []
        for name, kind in kinds:
            v = kw[name]
            if v is not None:
                v = _to_schema(kind, v)
                if v is _BAD:
                    return None
            out.append(v)
        return out

    def dispatching(*args: Any, **kwargs: Any) -> Any:
        kw = bind(args, kwargs)
        sargs = schema_args(kw)
        if sargs is None:
            return fn(**kw)  # not representable: the op rejects it with its own error
        res = overload(*sargs)
        fresh = [] if res is None else [res] if isinstance(res, Tensor) else list(res)
        return _rebuild(family.result(kw), fresh, kw, [0])

    def as_schema_args(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """A call's arguments as the registered op takes them (for ``torch.library.opcheck``)."""
        sargs = schema_args(bind(args, kwargs))
        if sargs is None:
            raise TypeError(f"{op}: an argument has a type the custom op's schema cannot carry")
        return tuple(sargs)

    dispatching.__dict__.update(schema_args=as_schema_args, dispatching=dispatching)
    return _dress(dispatching, fn, overload, op)


def _eager_first(fn: Callable[..., Any], dispatching: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself in eager mode (no dispatcher overhead), ``dispatching`` when traced."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if tracing():
            return dispatching(*args, **kwargs)
        return fn(*args, **kwargs)

    w = _dress(wrapper, fn, dispatching.custom_op, dispatching.__name__)  # type: ignore[attr-defined]
    w.__dict__.update(schema_args=dispatching.schema_args, dispatching=dispatching)  # type: ignore[attr-defined]
    return w


def _dress(
    w: Callable[..., Any], fn: Callable[..., Any], overload: torch._ops.OpOverload, op: str
) -> Callable[..., Any]:
    w.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    w.__name__ = getattr(fn, "__name__", op)
    w.__qualname__ = getattr(fn, "__qualname__", op)
    w.__doc__ = getattr(fn, "__doc__", None)
    w.__module__ = getattr(fn, "__module__", __name__)
    w.__dict__.update(raw=fn, custom_op=overload)
    return w


def custom_op_wrapper(
    module_name: str, op: str, fn: Callable[..., Any], *, eager_dispatch: bool = False
) -> Callable[..., Any]:
    """``fn`` (op ``op`` of ops module ``module_name``) behind its registered custom op.

    The result has ``fn``'s signature and these attributes: ``raw`` (``fn``), ``custom_op``
    (the ``torch.ops.mamba_backends`` overload), ``dispatching`` (the wrapper that always calls
    it) and ``schema_args(*args, **kwargs)`` (a call's arguments as the overload takes them,
    e.g. for ``torch.library.opcheck``). It calls the registered op when traced (see
    :func:`tracing`), and ``fn`` directly in eager mode unless ``eager_dispatch``. ``fn`` is
    returned unchanged when ``op`` has no family, when ``fn`` is already a wrapper, or when its
    signature is not the spec's (the kit's signature case then says how it differs).
    """
    if op not in OP_FAMILIES or hasattr(fn, "custom_op"):
        return fn
    key = (module_name, op)
    with _LOCK:
        entry = next((e for e in _REGISTERED.get(key, ()) if e.fn is fn), None)
        if entry is None:
            if not _same_signature(fn, spec_args(op)):
                logger.warning(
                    "%s.%s: signature differs from the spec's; not registered as a custom op "
                    "(torch.compile traces into it)",
                    module_name,
                    op,
                )
                return fn
            entry = _register(module_name, op, fn)
            _REGISTERED.setdefault(key, []).append(entry)
    return entry.dispatching if eager_dispatch else entry.wrapper


def registered() -> list[Registered]:
    """Every op registered in this process so far."""
    with _LOCK:
        return [e for entries in _REGISTERED.values() for e in entries]
