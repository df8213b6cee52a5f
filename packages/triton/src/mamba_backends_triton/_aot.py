"""What a kernel module declares for the compile check (:mod:`.compile_check`): data only.

Each kernel module lists, next to its kernels, a ``COMPILE_CHECKS`` tuple of
:class:`KernelCheck`: the kernel, the tuning op whose configs launch it, a few representative
:class:`Variant` specialisations (argument dtypes, layout and feature constexprs), and how a
tuning config becomes the kernel's block constexprs and Triton launch options (the launcher
uses the same mapping, so what is checked is what runs; the options come from
:func:`._options.launch_options`, vendor options included).

Arguments a variant does not name are ``i32`` scalars, as the JIT types small ints. An int
argument listed in ``constexprs`` is specialised to that value, as the JIT does for ints equal
to 1 (a unit stride). Pointers are taken as 16-byte aligned (what the JIT sees for torch
allocations); int arguments named in ``divisible`` are taken as multiples of 16, as the JIT
specialises ints such as the strides and sizes of real shapes (N=128: vectorised accesses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mamba_backends_triton._options import launch_options

#: ``(config, feature constexprs) -> (block constexprs, launch options)`` of one kernel.
LaunchOf = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class Variant:
    """One specialisation of a kernel: ``pointers`` maps pointer arguments to element types
    (``"bf16"``, ``"fp32"``, ``"i32"``, ``"u8"``...); ``constexprs`` gives the kernel's
    feature constexprs and any int argument specialised to a value; ``divisible`` names the
    int arguments the JIT would see as multiples of 16."""

    name: str
    pointers: Mapping[str, str]
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    divisible: tuple[str, ...] = ()


@dataclass(frozen=True)
class KernelCheck:
    """A kernel, the tuning op whose configs launch it, its variants and its config mapping."""

    kernel: Any  # a triton JITFunction
    op: str
    variants: tuple[Variant, ...]
    launch: LaunchOf
    #: target-name prefix (``"hip:"``, ``"cuda:sm80"``) -> why it is known to fail there. Such
    #: rows are reported ``XFAIL`` and do not fail the check; one that passes (``XPASS``) does,
    #: so that a fixed kernel loses its entry. Data, visible in the table and the README.
    known_failures: Mapping[str, str] = field(default_factory=dict)


def blocks_and_options(
    cfg: Mapping[str, Any], constexprs: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plain mapping: upper-case config keys are block constexprs; ``num_warps`` and
    ``num_stages`` (where present) and the vendor options are launch options."""
    consts = {k: v for k, v in cfg.items() if k.isupper()}
    warps = "num_warps" if "num_warps" in cfg else None
    stages = "num_stages" if "num_stages" in cfg else None
    return consts, launch_options(cfg, warps, stages)
