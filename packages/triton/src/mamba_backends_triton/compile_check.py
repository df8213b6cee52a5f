"""Ahead-of-time compile every Triton kernel with every tuning config, for every GPU target.

``python -m mamba_backends_triton.compile_check`` (``nox -s compile-check``) needs no GPU:
Triton compiles to PTX/cubin and amdgcn/hsaco on the CPU. For each kernel module's
``COMPILE_CHECKS`` (see :mod:`mamba_backends_triton._aot`), each variant, each tuning config
of the kernel's op (``mamba_backends.tuning.configs``) and each target that config serves
(``default`` serves every target, ``cuda:default`` every NVIDIA one, ``cuda:sm90`` sm90 only),
it compiles the kernel and fails on:

- a compile error;
- shared memory (LDS on AMD) over the target's per-block limit;
- register spills: ``ptxas -v`` on the PTX for NVIDIA (``spill stores``/``spill loads``), the
  ``.vgpr_spill_count``/``.sgpr_spill_count`` of the amdgcn for AMD.

It prints one row per kernel x variant x target x config with registers, spills and shared
memory, and exits non-zero when any row fails.

Vendor launch options in a config (:data:`._options.VENDOR_OPTIONS`) are checked against the
entry's device (:func:`._options.check_config`: a misplaced key or a bad value is a failing
row) and handed to ``triton.compile(..., options=...)`` for the targets of their vendor, so a
``hip:`` entry with ``waves_per_eu`` is compiled with it; they are listed in the row's config
column. There is no offline Intel XPU target (the PyPI Triton wheel has no ``xpu`` backend), so
the ``xpu:`` entries and their ``grf_mode``/``warp_size`` are not compiled here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from mamba_backends_triton._options import check_config, for_backend

logger = logging.getLogger(__name__)

#: Kernel modules that declare ``COMPILE_CHECKS``.
KERNEL_MODULES = (
    "mamba_backends_triton.ops.conv1d.fn",
    "mamba_backends_triton.ops.conv1d.update",
    "mamba_backends_triton.ops.selective_scan.scan",
    "mamba_backends_triton.ops.state_update.update",
    "mamba_backends_triton.ops.ssd.combined",
    "mamba_backends_triton.ops.gdn.gating",
    "mamba_backends_triton.ops.gdn.recurrent",
    "mamba_backends_triton.ops.gdn.chunk",
    "mamba_backends_triton.ops.lightning.decode",
    "mamba_backends_triton.ops.lightning.prefill",
)


@dataclass(frozen=True)
class Target:
    """A GPU target and its per-block shared memory (LDS) limit in bytes."""

    name: str  # the tuning device name it stands for, e.g. "cuda:sm90"
    backend: str  # "cuda" | "hip"
    arch: int | str
    warp_size: int
    shared_limit: int


#: sm80: 163 KiB of opt-in shared memory per block (A100); sm90/sm100: 227 KiB (H100, B200).
#: gfx90a/gfx942: 64 KiB of LDS per workgroup (MI200, MI300); gfx950: 160 KiB (MI350).
TARGETS: tuple[Target, ...] = (
    Target("cuda:sm80", "cuda", 80, 32, 163 * 1024),
    Target("cuda:sm90", "cuda", 90, 32, 227 * 1024),
    Target("cuda:sm100", "cuda", 100, 32, 227 * 1024),
    Target("hip:gfx90a", "hip", "gfx90a", 64, 64 * 1024),
    Target("hip:gfx942", "hip", "gfx942", 64, 64 * 1024),
    Target("hip:gfx950", "hip", "gfx950", 64, 160 * 1024),
)


@dataclass
class Row:
    """One compile: what was compiled, what it costs, and whether it passed."""

    kernel: str
    variant: str
    target: str
    config_device: str
    config: str
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    ok: bool = False
    error: str = ""
    known_failure: str = ""  # why this row is expected to fail (KernelCheck.known_failures)

    @property
    def counts_as_failure(self) -> bool:
        """A failing row that is not a known failure, or a known failure that now passes."""
        return self.ok == bool(self.known_failure)

    @property
    def verdict(self) -> str:
        if self.known_failure:
            if self.ok:
                return f"XPASS (listed as known failure: {self.known_failure}; remove the entry)"
            return f"XFAIL {self.error} (known: {self.known_failure})"
        return "ok" if self.ok else f"FAIL {self.error}"


def targets_for(device: str, targets: Sequence[Target] = TARGETS) -> list[Target]:
    """The targets a tuning entry of ``device`` serves (see the module docstring)."""
    if device == "default":
        return list(targets)
    vendor, _, arch = device.partition(":")
    same = [t for t in targets if t.backend == vendor]
    return same if arch == "default" else [t for t in same if t.name == device]


def _signature(kernel: Any, pointers: Mapping[str, str], consts: Mapping[str, Any]) -> dict:
    sig: dict[str, str] = {}
    for p in kernel.params:
        name = p.name
        if p.is_constexpr or name in consts:
            if name not in consts:
                raise ValueError(f"{kernel.__name__}: no value for constexpr {name!r}")
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
        else:
            sig[name] = "i32"
    unknown = set(consts) - set(sig)
    if unknown:
        raise ValueError(f"{kernel.__name__}: constexprs {sorted(unknown)} are not parameters")
    return sig


def _ptxas() -> str:
    """ptxas that reads Triton's PTX (the wheel's ptxas-blackwell; the plain one is older)."""
    from triton.backends import nvidia

    for name in ("ptxas-blackwell", "ptxas"):
        path = os.path.join(os.path.dirname(nvidia.__file__), "bin", name)
        if os.path.exists(path):
            return path
    found = os.environ.get("TRITON_PTXAS_PATH") or shutil.which("ptxas")
    if not found:
        raise RuntimeError("no ptxas found (triton's backends/nvidia/bin, TRITON_PTXAS_PATH)")
    return found


def _nvidia_resources(ptx: str) -> tuple[int, int]:
    """(registers, spill bytes) of the kernel in ``ptx``, from ``ptxas -v``."""
    m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    if m is None:
        raise RuntimeError("no .target in the PTX")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [_ptxas(), "-v", "--gpu-name", m.group(1), src, "-o", os.path.join(tmp, "k.cubin")]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text.strip()[-500:]}")
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    if regs is None or stores is None or loads is None:
        raise RuntimeError(f"cannot read ptxas -v output: {text.strip()[-500:]}")
    return int(regs.group(1)), int(stores.group(1)) + int(loads.group(1))


def _amd_resources(amdgcn: str) -> tuple[int, int]:
    """(VGPRs, spill count) from the kernel's amdgcn metadata."""

    def field(name: str) -> int:
        m = re.search(rf"\.{name}:\s+(\d+)", amdgcn)
        if m is None:
            raise RuntimeError(f"no .{name} in the amdgcn")
        return int(m.group(1))

    return field("vgpr_count"), field("vgpr_spill_count") + field("sgpr_spill_count")


def compile_one(job: tuple[str, int, int, str, dict[str, Any], str]) -> Row:
    """Compile kernel ``k`` of module ``mod``, variant ``v``, for one target and config."""
    mod_name, k, v, config_device, config, target_name = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    check = importlib.import_module(mod_name).COMPILE_CHECKS[k]
    variant = check.variants[v]
    target = next(t for t in TARGETS if t.name == target_name)
    kernel_name = check.kernel.__name__
    row = Row(kernel_name, variant.name, target.name, config_device, json.dumps(config))
    row.known_failure = next(
        (why for prefix, why in check.known_failures.items() if target.name.startswith(prefix)), ""
    )
    try:
        check_config(check.op, config_device, config)
        blocks, options = check.launch(config, variant.constexprs)
        row.config = " ".join(f"{k}={v}" for k, v in {**blocks, **options}.items())
        options = for_backend(check.op, config_device, options, target.backend + ":")
        consts = {**variant.constexprs, **blocks}
        sig = _signature(check.kernel, variant.pointers, consts)
        aligned = {
            (i,): [["tt.divisibility", 16]] for i, p in enumerate(check.kernel.params)
            if sig[p.name].startswith("*") or (p.name in variant.divisible and sig[p.name] == "i32")
        }  # fmt: skip
        src = ASTSource(fn=check.kernel, signature=sig, constexprs=consts, attrs=aligned)
        gpu = GPUTarget(target.backend, target.arch, target.warp_size)
        compiled = triton.compile(src, target=gpu, options=options)
        row.shared_bytes = int(compiled.metadata.shared)
        if target.backend == "cuda":
            row.registers, row.spill_bytes = _nvidia_resources(compiled.asm["ptx"])
        else:
            row.registers, row.spill_bytes = _amd_resources(compiled.asm["amdgcn"])
        problems = []
        if row.shared_bytes > target.shared_limit:
            problems.append(f"shared {row.shared_bytes} B > limit {target.shared_limit} B")
        if row.spill_bytes:
            problems.append(f"spills {row.spill_bytes}")
        row.ok = not problems
        row.error = "; ".join(problems)
    except Exception as e:  # noqa: BLE001 - a failed compile is a failing row
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e) else ''}"
    return row


def jobs(
    modules: Sequence[str] = KERNEL_MODULES,
    targets: Sequence[Target] = TARGETS,
    kernels: Sequence[str] = (),
) -> Iterator[tuple[str, int, int, str, dict[str, Any], str]]:
    """Every (module, kernel, variant, config device, config, target) to compile (only the
    kernels named in ``kernels``, when given)."""
    from mamba_backends.tuning import configs

    for mod_name in modules:
        for k, check in enumerate(importlib.import_module(mod_name).COMPILE_CHECKS):
            if kernels and check.kernel.__name__ not in kernels:
                continue
            entries = configs(check.op)
            if not entries:
                raise RuntimeError(f"{mod_name}: no tuning configs for op {check.op!r}")
            for v in range(len(check.variants)):
                for device, cfg in entries:
                    for t in targets_for(device, targets):
                        yield mod_name, k, v, device, cfg, t.name


def _table(rows: Sequence[Row]) -> str:
    head = ("kernel", "variant", "target", "config from", "config", "regs", "spill", "shared", "")
    body = [
        (
            r.kernel, r.variant, r.target, r.config_device, r.config,
            "-" if r.registers is None else str(r.registers),
            "-" if r.spill_bytes is None else str(r.spill_bytes),
            "-" if r.shared_bytes is None else str(r.shared_bytes),
            r.verdict,
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1]
        )
    return "\n".join(lines)


def _prepare_env() -> None:
    """The kernels must be real ``JITFunction`` s: the interpreter's cannot be compiled."""
    from triton.runtime.jit import JITFunction

    os.environ["TRITON_INTERPRET"] = "0"
    for name in KERNEL_MODULES:
        mod = sys.modules.get(name)
        for check in getattr(mod, "COMPILE_CHECKS", ()):
            if not isinstance(check.kernel, JITFunction):
                raise RuntimeError(
                    f"{name} was imported under TRITON_INTERPRET=1; run the check in a new process"
                )


#: Target backend -> the ``mamba_backends.tuning`` entry point (vendor package) whose tables
#: its targets prove: without it, only the ``default`` tables would be compiled for them.
TABLE_SOURCES: Mapping[str, tuple[str, str]] = {
    "cuda": ("cuda", "mamba-backends-cuda"),
    "hip": ("rocm", "mamba-backends-rocm"),
}


def missing_table_sources(targets: Sequence[Target]) -> list[str]:
    """The vendor packages whose tables ``targets`` need but that are not installed."""
    from mamba_backends._resolve import entry_points
    from mamba_backends.tuning import GROUP

    have = {ep.name for ep in entry_points(GROUP)}
    need = {TABLE_SOURCES[t.backend] for t in targets if t.backend in TABLE_SOURCES}
    return sorted(f"{dist} (tuning entry point {ep!r})" for ep, dist in need if ep not in have)


def run(
    targets: Sequence[Target] = TARGETS, workers: int = 1, kernels: Sequence[str] = ()
) -> list[Row]:
    """Compile everything (or ``kernels``); one :class:`Row` per compile, in job order.

    Raises when a vendor package whose tables the targets need is not installed.
    """
    _prepare_env()
    missing = missing_table_sources(targets)
    if missing:
        raise RuntimeError(
            f"install {', '.join(missing)}: its tables are what these targets must compile"
        )
    todo = list(jobs(targets=targets, kernels=kernels))
    if not todo:
        raise RuntimeError(f"nothing to compile (kernels {list(kernels)})")
    if workers <= 1:
        return [compile_one(j) for j in todo]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_one, todo, chunksize=4))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamba_backends_triton.compile_check")
    parser.add_argument("--target", action="append", choices=[t.name for t in TARGETS],
                        help="only these targets (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--kernel", action="append", default=[],
                        help="only this kernel, by function name (repeatable)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compile in this many processes")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    chosen = [t for t in TARGETS if not args.target or t.name in args.target]
    rows = run(chosen, workers=args.jobs, kernels=args.kernel)
    sys.stdout.write(_table(rows) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    bad = [r for r in rows if r.counts_as_failure]
    known = sum(1 for r in rows if r.known_failure and not r.ok)
    logger.info(
        "compile check: %d compiles, %d failed, %d known failures (XFAIL)",
        len(rows),
        len(bad),
        known,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
