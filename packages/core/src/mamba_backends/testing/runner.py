"""Running the kit outside pytest: backends and devices resolved, results summed per op."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mamba_backends._resolve import resolve_qualname
from mamba_backends.backend import OP_NAMES, MambaBackend
from mamba_backends.platform import Platform
from mamba_backends.testing import cases as registry
from mamba_backends.testing.case import Case, CaseResult, run_case
from mamba_backends.types import MAMBA_TYPES

logger = logging.getLogger(__name__)

#: Environment override of the device every case runs on (e.g. ``cuda:1``).
DEVICE_ENV = "MAMBA_BACKENDS_TEST_DEVICE"

BackendTarget = Any  # a backend class, a dotted path, a Platform (instance or class), or a list


def _device_usable(device_type: str) -> bool:
    if device_type == "cpu":
        return True
    if device_type == "meta":
        return False  # nothing to compare on meta tensors
    mod = getattr(torch, device_type, None)
    is_available = getattr(mod, "is_available", None)
    try:
        return bool(is_available()) if callable(is_available) else False
    except Exception:  # noqa: BLE001 - a broken accelerator stack means not usable
        return False


def backend_device(
    backend: type[MambaBackend], override: str | torch.device | None = None
) -> torch.device | None:
    """The device the kit runs ``backend`` on: ``override``, ``$MAMBA_BACKENDS_TEST_DEVICE``,
    else the first of its ``supported_devices`` that this torch can use (None if none)."""
    chosen = override if override is not None else os.environ.get(DEVICE_ENV)
    if chosen:
        return torch.device(chosen)
    for device_type in backend.supported_devices:
        if _device_usable(device_type):
            return torch.device(device_type)
    return None


def _as_backend(obj: Any) -> type[MambaBackend]:
    if isinstance(obj, str):
        obj = resolve_qualname(obj)
    if not (isinstance(obj, type) and issubclass(obj, MambaBackend)):
        raise TypeError(f"{obj!r} is not a MambaBackend subclass (or a dotted path to one)")
    if obj.mamba_type not in OP_NAMES:
        raise ValueError(f"backend {obj.get_name()!r} has invalid mamba_type {obj.mamba_type!r}")
    return obj


def resolve_backends(target: BackendTarget) -> list[type[MambaBackend]]:
    """Backend classes from a class, a dotted path, a Platform, or an iterable of those.

    A platform contributes the backend it claims for each mamba type (types it defers on are
    not its own, so they are left out).
    """
    if isinstance(target, Platform) or (isinstance(target, type) and issubclass(target, Platform)):
        platform = target() if isinstance(target, type) else target
        found = []
        for t in MAMBA_TYPES:
            path = platform.get_mamba_backend_cls(t, None)
            if path:
                found.append(_as_backend(path))
        return found
    if isinstance(target, (str, type)):
        return [_as_backend(target)]
    if isinstance(target, Iterable):
        out: list[type[MambaBackend]] = []
        for item in target:
            out.extend(resolve_backends(item))
        return out
    raise TypeError(f"cannot make backends out of {target!r}")


def cases_for(backend: type[MambaBackend], *, quick: bool = False) -> list[Case]:
    """The fixed cases that apply to ``backend``'s mamba type."""
    return registry.fixed_cases(backend.mamba_type, quick=quick)


@dataclass
class OpSummary:
    """One row of ``mamba-backends check``: a backend's op over its cases."""

    mamba_type: str
    backend: str
    op: str
    status: str  # pass | FAIL | not implemented | error | skipped | no cases
    passed: int = 0
    total: int = 0
    max_abs_err: float = 0.0
    max_ratio: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def summarize(mamba_type: str, backend: str, op: str, results: Sequence[CaseResult]) -> OpSummary:
    """Fold the case results of one op into a row (any failing case fails the op)."""
    ran = [r for r in results if r.status != "skipped"]
    s = OpSummary(mamba_type, backend, op, "pass", total=len(ran))
    s.passed = sum(r.status == "pass" for r in ran)
    s.max_abs_err = max((r.max_abs_err for r in ran), default=0.0)
    s.max_ratio = max((r.max_ratio for r in ran), default=0.0)
    bad = [r for r in ran if r.status != "pass"]
    if not results:
        s.status, s.detail = "no cases", "the kit has no cases for this op yet"
    elif not ran:
        s.status, s.detail = "skipped", results[0].message
    elif any(r.status == "not_implemented" for r in bad):
        s.status = "not implemented"
        s.detail = next(r.message for r in bad if r.status == "not_implemented")
    elif bad:
        s.status = "FAIL" if any(r.status == "fail" for r in bad) else "error"
        s.detail = f"{bad[0].case_id}: {bad[0].message}"
    return s


def check_backend(
    backend: type[MambaBackend],
    *,
    quick: bool = True,
    device: str | torch.device | None = None,
    cases: Sequence[Case] | None = None,
) -> list[OpSummary]:
    """Run the (quick) fixed cases on ``backend``: one summary per op of its mamba type."""
    name = backend.get_name()
    dev = backend_device(backend, device)
    ops_names = backend.op_names()
    if dev is None:
        reason = f"no usable device among {backend.supported_devices}"
        return [
            OpSummary(backend.mamba_type, name, op, "skipped", detail=reason) for op in ops_names
        ]
    todo = list(cases) if cases is not None else cases_for(backend, quick=quick)
    try:
        ops = backend.ops()
    except Exception as e:  # noqa: BLE001 - an op module that fails to import is a row
        msg = f"{type(e).__name__}: {e}"
        status = "not implemented" if isinstance(e, NotImplementedError) else "error"
        return [OpSummary(backend.mamba_type, name, op, status, detail=msg) for op in ops_names]
    rows = []
    for op in ops_names:
        results = []
        for case in (c for c in todo if c.op == op):
            r = run_case(ops, case, dev, backend)
            logger.info("%s %s: %s %s", name, r.case_id, r.status, r.message)
            results.append(r)
        rows.append(summarize(backend.mamba_type, name, op, results))
    return rows
