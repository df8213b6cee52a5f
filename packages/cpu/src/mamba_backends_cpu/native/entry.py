"""Torch-op entries for the decode kernels (``csrc/entry.cpp``), built against this torch.

A decode call of ``causal_conv1d_update`` is about 25 us of kernel at a 32-request batch;
checking its arguments in Python and packing the ctypes block cost 15-20 us more. The entry is
one ``torch.ops.mamba_backends_cpu.*`` call (about 2.5 us) that reads sizes and strides in C++,
accepts only the common form of a call and runs the kernel whose address it is given (the ISA
build that :mod:`._build` loaded). Any other form, or a bad slot, comes back as a code and the
op takes its Python path, where the contract names the argument. So the entry only ever makes
an accepted call faster: it has no errors of its own.

Built with the C++ compiler (``$CXX``, default ``c++``) against torch's headers and libraries
on first use and cached beside the C libraries (the key: the sources, the compiler, the flags
and torch's version). ``MAMBA_BACKENDS_CPU_ENTRY=0`` disables it (the ctypes path serves, as it
does when the build fails or no C++ compiler exists); so does ``MAMBA_BACKENDS_CPU_NATIVE=0``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from mamba_backends._env import getenv
from mamba_backends_cpu.native import _build

logger = logging.getLogger(__name__)

ENV_ENTRY = "MAMBA_BACKENDS_CPU_ENTRY"
SOURCE = "entry.cpp"
#: The ``torch.library`` namespace the entries register (``TORCH_LIBRARY`` in the source).
NAMESPACE = "mamba_backends_cpu"
#: The entry's code for "not this form: nothing was read or written" (``MB_ENTRY_DECLINED``).
DECLINED = 1

_CXXFLAGS = ["-O2", "-std=c++17", "-fPIC", "-Wall", "-Wno-unused-parameter"]


class _Loaded:
    ops: Any = None  # torch.ops.<NAMESPACE> once loaded
    tried = False
    reason: str | None = "not built yet"
    path: Path | None = None


_loaded = _Loaded()
_lock = threading.Lock()
_addresses: dict[tuple[int, str], int] = {}


def enabled() -> bool:
    """False when ``MAMBA_BACKENDS_CPU_ENTRY=0`` or the native kernels are off."""
    return getenv(ENV_ENTRY) != "0" and _build.enabled()


def compiler() -> list[str] | None:
    """The C++ compiler command (``$CXX``, default ``c++``), or None when not installed."""
    return _build.compiler("CXX", "c++")


def _torch_dirs() -> tuple[list[Path], Path]:
    root = Path(torch.__file__).parent
    return [root / "include", root / "include" / "torch" / "csrc" / "api" / "include"], root / "lib"


def flags() -> list[str]:
    """Compile and link flags: torch's headers, its C++ ABI, its ``c10`` and ``torch_cpu``."""
    includes, libdir = _torch_dirs()
    abi = int(bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)))
    return [
        *_CXXFLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{p}" for p in includes),
        f"-I{_build.CSRC}",
        "-shared",
        f"-L{libdir}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{libdir}",
    ]


def library_path(cxx: list[str]) -> Path:
    """Cache path of the entry library for this compiler, flags, sources and torch."""
    h = hashlib.sha256()
    for p in (_build.CSRC / SOURCE, _build.CSRC / "mb_args.h"):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    ident = [_build._compiler_id(tuple(cxx)), *flags(), torch.__version__]
    h.update("\0".join(ident).encode())
    return _build.cache_dir() / f"mb_entry_{h.hexdigest()[:16]}.so"


def build(out: Path, cxx: list[str]) -> None:
    """Compile ``csrc/entry.cpp`` into ``out`` (atomic).

    Raises:
        NativeBuildError: with the compiler's message when it fails.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-entry-") as tmp:
        tmp_so = Path(tmp) / out.name
        cmd = [*cxx, str(_build.CSRC / SOURCE), *flags(), "-o", str(tmp_so)]
        res = _build._run(cmd)
        if res.returncode != 0:
            raise _build.NativeBuildError(f"{' '.join(cmd)}\n{res.stderr[-3000:]}")
        os.replace(tmp_so, out)


def _load() -> None:
    cxx = compiler()
    if cxx is None:
        _loaded.reason = f"no C++ compiler ({os.environ.get('CXX', 'c++')} not found)"
        logger.info(
            "mamba_backends_cpu: %s: the decode ops call their kernels via ctypes", _loaded.reason
        )
        return
    so = _loaded.path = library_path(cxx)
    if not so.exists():
        t0 = time.perf_counter()
        try:
            build(so, cxx)
        except (OSError, subprocess.SubprocessError, _build.NativeBuildError) as exc:
            _loaded.reason = f"build error: {exc}"
            logger.warning(
                "mamba_backends_cpu: building the torch-op entries failed; the decode ops "
                "call their kernels via ctypes (%s)",
                exc,
            )
            return
        logger.info(
            "mamba_backends_cpu: built the torch-op entries in %.1f s", time.perf_counter() - t0
        )
    try:
        torch.ops.load_library(str(so))
    except (OSError, RuntimeError) as exc:
        _loaded.reason = f"load error: {exc}"
        logger.warning("mamba_backends_cpu: loading %s failed; using ctypes (%s)", so, exc)
        return
    _loaded.ops = getattr(torch.ops, NAMESPACE)
    _loaded.reason = None


def ops() -> Any:
    """``torch.ops.mamba_backends_cpu`` with the entries loaded, or None (disabled, no C++
    compiler, build or load failure: then the ctypes path serves)."""
    if not enabled():
        return None
    if not _loaded.tried:
        with _lock:
            if not _loaded.tried:
                _load()
                _loaded.tried = True
    return _loaded.ops


def address(cdll: ctypes.CDLL, name: str) -> int:
    """The address of kernel ``name`` in a loaded library (what an entry is given to call)."""
    key = (id(cdll), name)
    addr = _addresses.get(key)
    if addr is None:
        addr = _addresses[key] = int(ctypes.cast(getattr(cdll, name), ctypes.c_void_p).value or 0)
    return addr


def status() -> dict[str, Any]:
    """Whether the entries are active (``active``, ``reason``), the compiler and the cache."""
    cxx = compiler()
    path = _loaded.path or (library_path(cxx) if cxx is not None else None)
    if not enabled():
        reason: str | None = f"disabled by {ENV_ENTRY}=0 or {_build.ENV_NATIVE}=0"
    else:
        reason = _loaded.reason
    return {
        "active": _loaded.ops is not None and enabled(),
        "reason": reason,
        "compiler": _build._compiler_id(tuple(cxx)) if cxx is not None else None,
        "cache": str(path) if path is not None else None,
        "cached": bool(path is not None and path.exists()),
        "sources": [SOURCE],
    }
