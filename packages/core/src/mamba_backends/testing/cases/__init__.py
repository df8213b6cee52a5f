"""The registry of op-family case modules.

Every module in this package whose name does not start with ``_`` is discovered automatically
(no registry line to add). A family module defines:

- ``OPS``: the vLLM op names it has cases for (a case may call other ops too: see
  :attr:`~mamba_backends.testing.case.Case.requires`);
- ``fixed_cases() -> list[Case]``: its fixed grid (mark a handful ``quick=True``: fp32 and one
  half dtype, small shapes; those are what ``mamba-backends check`` runs);
- ``draw_case(op, pick, mamba_type) -> Case``: one case for ``op`` that a backend of
  ``mamba_type`` can run, with parameters drawn from ``pick``
  (:class:`~mamba_backends.testing.case.Picker`, backed by hypothesis or a seeded RNG);
- optionally ``TYPES``: the mamba types its cases are meant for (default: every type that
  serves the ops).

To add a family (e.g. ``gdn.py``), drop the module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from mamba_backends.testing.case import Case, Picker


def family_modules() -> list[ModuleType]:
    """The case modules of this package, by name."""
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "OPS") and hasattr(mod, "fixed_cases"):
            mods.append(mod)
    return mods


def _module_types(mod: ModuleType) -> frozenset[str] | None:
    types = getattr(mod, "TYPES", None)
    return frozenset(types) if types is not None else None


def fixed_cases(
    mamba_type: str | None = None,
    *,
    quick: bool = False,
    include_slow: bool = True,
    ops: tuple[str, ...] | None = None,
) -> list[Case]:
    """The fixed grid, filtered to what a backend of ``mamba_type`` serves."""
    out: list[Case] = []
    for mod in family_modules():
        types = _module_types(mod)
        if mamba_type is not None and types is not None and mamba_type not in types:
            continue
        for case in mod.fixed_cases():
            if mamba_type is not None and not case.applies_to(mamba_type):
                continue
            if quick and not case.quick:
                continue
            if not include_slow and case.slow:
                continue
            if ops is not None and case.op not in ops:
                continue
            out.append(case)
    return out


def drawable_ops(mamba_type: str) -> list[str]:
    """The ops of ``mamba_type`` for which some family can draw cases."""
    from mamba_backends.backend import OP_NAMES

    found: list[str] = []
    for mod in family_modules():
        types = _module_types(mod)
        if types is not None and mamba_type not in types:
            continue
        if not hasattr(mod, "draw_case"):
            continue
        for op in mod.OPS:
            if op in OP_NAMES[mamba_type] and op not in found:
                found.append(op)
    return found


def draw_case(op: str, pick: Picker, mamba_type: str) -> Case:
    """Draw one case of ``op`` for a backend of ``mamba_type``."""
    mods = [
        m
        for m in family_modules()
        if op in m.OPS
        and hasattr(m, "draw_case")
        and (_module_types(m) is None or mamba_type in (_module_types(m) or ()))
    ]
    if not mods:
        raise ValueError(f"no case family draws op {op!r} for mamba type {mamba_type!r}")
    mod = pick.choice(mods) if len(mods) > 1 else mods[0]
    case: Case = mod.draw_case(op, pick, mamba_type)
    return case
