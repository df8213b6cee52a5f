"""Cases, checks and results: the kit's vocabulary.

A :class:`Case` is one self-contained check of one op (its ``op``) of a backend: it builds its
inputs twice from one seed (on the backend's device, and on the CPU for the spec), calls the
backend's op and the spec's, and records comparisons in a :class:`Check`. :func:`run_case`
turns that into a :class:`CaseResult` (pass / fail / not_implemented / error / skipped).

Comparison (:meth:`Check.close`) is NaN-aware, elementwise against the spec's output:

- spec NaN  <=> backend NaN, at the same positions (a finite or infinite value where the spec
  is NaN fails, and so does a NaN where the spec is not);
- spec +/-inf: the backend gives the same infinity (sign included);
- spec finite: the backend is finite and within the case's tolerance
  (``|a - e| <= atol + rtol * |e|``, see :mod:`mamba_backends.testing.tolerances`).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from mamba_backends.backend import OP_NAMES, OPTIONAL_OPS, MambaBackend
from mamba_backends.contract import ContractError
from mamba_backends.testing._tensors import Factory, StatePool, changed_outside
from mamba_backends.testing.tolerances import Tolerance, tolerance_for

T = TypeVar("T")

DTYPE_NAMES = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}


class SpecError(RuntimeError):
    """The executable spec itself failed on a case (not implemented yet, or a kit/spec bug)."""


class Picker(Protocol):
    """Where a case's parameters come from: hypothesis (``data.draw``) or a seeded RNG."""

    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, lo: int, hi: int) -> int: ...


class Check:
    """Accumulates comparisons for one case: worst error, worst tolerance ratio, failures."""

    def __init__(self, tol: Tolerance) -> None:
        self.tol = tol
        self.max_abs_err = 0.0
        self.max_ratio = 0.0
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.fail(message)

    def close(self, what: str, actual: Any, expected: Tensor) -> None:
        """``actual`` matches ``expected`` (shape included), NaN-aware.

        Elementwise: where the spec is NaN, ``actual`` must be NaN; where the spec is +/-inf,
        ``actual`` must be the same infinity; where the spec is finite, ``actual`` must be
        finite and within the case's tolerance. ``expected`` is the spec's output.
        """
        if not isinstance(actual, Tensor):
            self.fail(f"{what}: expected a tensor, got {type(actual).__name__}")
            return
        if tuple(actual.shape) != tuple(expected.shape):
            self.fail(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
            return
        if actual.numel() == 0:
            return
        a = actual.detach().to("cpu", torch.float64)
        e = expected.detach().to("cpu", torch.float64)
        if not self._same_nonfinite(what, a, e):
            return
        err = torch.where(torch.isfinite(e), (a - e).abs(), torch.zeros_like(a))
        ratio = err / (self.tol.atol + self.tol.rtol * e.abs())
        worst = int(ratio.argmax())
        r = float(ratio.reshape(-1)[worst])
        self.max_abs_err = max(self.max_abs_err, float(err.max()))
        self.max_ratio = max(self.max_ratio, r)
        if r > 1.0:
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
            self.fail(
                f"{what}: max |err| {float(err.max()):.3g}; at {idx} got "
                f"{float(a.reshape(-1)[worst]):.6g}, spec {float(e.reshape(-1)[worst]):.6g} "
                f"({r:.2f}x the tolerance atol={self.tol.atol:g} rtol={self.tol.rtol:g})"
            )

    def _same_nonfinite(self, what: str, a: Tensor, e: Tensor) -> bool:
        """NaN exactly where the spec has NaN, and the spec's infinities (signs included)."""
        a_nan, e_nan = torch.isnan(a), torch.isnan(e)
        e_inf = torch.isinf(e)
        rules = (
            (e_nan & ~a_nan, "finite/inf values where the spec is NaN"),
            (a_nan & ~e_nan, "NaN values where the spec is not NaN"),
            (e_inf & (a != e) & ~a_nan, "values that differ from the spec's +/-inf"),
            (torch.isfinite(e) & torch.isinf(a), "infinite values where the spec is finite"),
        )
        for bad, message in rules:
            if bool(bad.any()):
                first = tuple(int(i) for i in bad.nonzero()[0])
                at = f"{float(a[first]):.6g} vs spec {float(e[first]):.6g}"
                self.fail(f"{what}: {int(bad.sum())} {message} (first at {first}: {at})")
                return False
        return True

    def dtype(self, what: str, actual: Any, dtype: torch.dtype) -> None:
        if isinstance(actual, Tensor) and actual.dtype != dtype:
            self.fail(f"{what}: dtype {actual.dtype}, expected {dtype}")

    def untouched(self, what: str, before: Tensor, pool: StatePool, slots: Sequence[int]) -> None:
        """Canary / in-place: nothing in ``pool.base`` changed outside ``slots``, bit for bit."""
        n = changed_outside(before, pool, slots)
        if n:
            self.fail(
                f"{what}: {n} elements changed outside the indexed slots {sorted(slots)} "
                "(pad/null/unrelated slots or page padding were written)"
            )


class _SpecOps:
    """The spec's ops; any failure inside the spec becomes :class:`SpecError`."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        from mamba_backends.reference import ops as ref_ops

        fn = getattr(ref_ops, name)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                raise SpecError(f"spec op {name} raised {type(e).__name__}: {e}") from e

        return call


@dataclass
class CaseContext:
    """What a case body sees: the ops under test, the spec, the device and its check."""

    ops: Any
    ref: Any
    device: torch.device
    check: Check
    seed: int

    def factories(self) -> tuple[Factory, Factory]:
        """Two factories with the case's seed: the backend's device, and the CPU (spec)."""
        return Factory(self.seed, self.device), Factory(self.seed, "cpu")


def _fmt(v: Any) -> str:
    if isinstance(v, torch.dtype):
        return DTYPE_NAMES.get(v, str(v))
    if isinstance(v, (tuple, list)):
        return "x".join(_fmt(x) for x in v) if v else "none"
    return str(v)


@dataclass(frozen=True)
class Case:
    """One conformance check of ``op``.

    ``kind`` is one of ``oneshot`` (vs the spec), ``split`` (k prefill pieces then decode steps
    vs the spec in one shot), ``batch`` (each sequence alone vs the spec on the batch),
    ``bad_input`` (raises ContractError naming the op and argument, writes no state),
    ``signature`` (the op's signature is the spec's). Every kind with states also
    checks the canary and in-place rules. ``requires`` lists every op the case calls.
    """

    op: str
    kind: str
    body: Callable[[CaseContext], None] = field(compare=False, repr=False)
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)
    dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype = torch.float32
    seed: int = 0
    requires: tuple[str, ...] = ()
    types: frozenset[str] | None = None
    quick: bool = False
    slow: bool = False

    @property
    def id(self) -> str:
        parts = [f"{k}={_fmt(v)}" for k, v in self.params.items()]
        dt = f"{_fmt(self.dtype)}/{_fmt(self.state_dtype)}"
        return f"{self.op}:{self.kind}[{dt},{','.join(parts)},seed={self.seed}]"

    def applies_to(self, mamba_type: str) -> bool:
        """Whether a backend of ``mamba_type`` serves every op this case calls."""
        names = OP_NAMES.get(mamba_type, ())
        if self.types is not None and mamba_type not in self.types:
            return False
        return all(op in names for op in (self.requires or (self.op,)))


@dataclass
class CaseResult:
    """The outcome of one case on one backend."""

    case_id: str
    op: str
    status: str  # pass | fail | not_implemented | error | skipped
    max_abs_err: float = 0.0
    max_ratio: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skipped")


def unsupported_reason(backend: type[MambaBackend] | None, case: Case) -> str | None:
    """Why ``backend`` declares it cannot run ``case`` (dtype not supported), else None."""
    if backend is None:
        return None
    if case.dtype not in backend.supported_dtypes:
        return f"{backend.get_name()} does not support activation dtype {case.dtype}"
    if case.state_dtype not in backend.supported_state_dtypes:
        return f"{backend.get_name()} does not support state dtype {case.state_dtype}"
    return None


def _missing_optional(ops: Any, case: Case) -> str | None:
    """The first optional op (:data:`~mamba_backends.backend.OPTIONAL_OPS`) of ``case`` that
    ``ops`` does not implement, else None."""
    implements = getattr(ops, "implements", None)
    if implements is None:
        return None
    for op in case.requires or (case.op,):
        if op in OPTIONAL_OPS and not implements(op):
            return op
    return None


def run_case(
    ops: Any,
    case: Case,
    device: torch.device | str,
    backend: type[MambaBackend] | None = None,
) -> CaseResult:
    """Run ``case`` against ``ops`` (a backend's op accessor) on ``device``."""
    reason = unsupported_reason(backend, case)
    if reason:
        return CaseResult(case.id, case.op, "skipped", message=reason)
    check = Check(tolerance_for(case.dtype, case.state_dtype))
    ctx = CaseContext(ops, _SpecOps(), torch.device(device), check, case.seed)
    try:
        case.body(ctx)
    except SpecError as e:
        return CaseResult(case.id, case.op, "error", message=str(e))
    except NotImplementedError as e:
        missing = _missing_optional(ops, case)
        if missing:
            msg = f"optional op {missing} not implemented by this backend (vLLM's kernel stays)"
            return CaseResult(case.id, case.op, "skipped", message=msg)
        return CaseResult(case.id, case.op, "not_implemented", message=str(e) or "")
    except Exception as e:  # noqa: BLE001 - any crash of the op is a reported result
        where = traceback.extract_tb(e.__traceback__)[-1]
        msg = f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})"
        return CaseResult(case.id, case.op, "error", check.max_abs_err, check.max_ratio, msg)
    status = "fail" if check.failures else "pass"
    return CaseResult(
        case.id, case.op, status, check.max_abs_err, check.max_ratio, "; ".join(check.failures)
    )


def expect_rejected(
    check: Check,
    call: Callable[[], Any],
    names: Sequence[str],
    pools: Sequence[tuple[str, Tensor, StatePool]],
    *,
    op: str | None = None,
) -> None:
    """Bad input: ``call`` raises :class:`~mamba_backends.contract.ContractError` whose ``arg``
    is one of ``names`` (and whose ``op`` is ``op``, when given); no state is written.

    ``pools`` holds ``(what, base_before, pool)`` for every state the op could write.
    NotImplementedError propagates (the op is missing, not wrong).
    """
    try:
        call()
    except NotImplementedError:
        raise
    except ContractError as e:
        if names and e.arg not in names:
            check.fail(f"error names argument {e.arg!r}, expected one of {list(names)}: {e}")
        if op is not None and e.op.split(" (")[0] != op:
            check.fail(f"error names op {e.op!r}, expected {op!r}: {e}")
    except Exception as e:  # noqa: BLE001 - a wrong exception type is the finding
        check.fail(
            f"raised {type(e).__name__} instead of mamba_backends.contract.ContractError "
            f"(the shared argument checks): {e}"
        )
    else:
        check.fail("accepted the bad input without raising ContractError")
    for what, before, pool in pools:
        check.untouched(what, before, pool, ())
