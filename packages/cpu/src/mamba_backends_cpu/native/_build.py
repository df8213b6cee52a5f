"""Build, cache and load the native kernel libraries.

Each library is a few C translation units under ``csrc/`` (plus the shared headers), compiled
in parallel with the system C compiler on first use and linked into one shared object in a
per-user cache:

- cache folder: ``MAMBA_BACKENDS_CPU_CACHE``, default ``$XDG_CACHE_HOME/mamba_backends_cpu``
  (``~/.cache/mamba_backends_cpu``);
- cache key: the bytes of every source and header, the compiler (path and version), every
  compile and link flag, and the CPU's feature flags;
- target ISA: ``-march=$MAMBA_BACKENDS_CPU_MARCH`` (default ``native``; for example
  ``x86-64-v3`` gives an AVX2 build on an AVX-512 machine);
- OpenMP: the library links the ``libgomp`` that torch ships when there is one, so that a
  process holds a single OpenMP runtime (and a single thread pool);
- ``MAMBA_BACKENDS_CPU_NATIVE=0`` disables every library; so do a missing compiler (one
  warning) and a failed build (one warning with the compiler's message). Callers then take
  their PyTorch paths.

Kernels take one argument struct (``csrc/mb_args.h``) mirrored by a :class:`ctypes.Structure`;
the sizes are compared when a library loads (:func:`check_abi`), and every kernel refuses a
block of the wrong size as well.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mamba_backends._env import getenv

logger = logging.getLogger(__name__)

#: Folder of the C sources (package data).
CSRC = Path(__file__).parent / "csrc"
#: Must equal ``MB_ABI_VERSION`` in ``csrc/mb_args.h``.
ABI_VERSION = 5

ENV_NATIVE = "MAMBA_BACKENDS_CPU_NATIVE"
ENV_CACHE = "MAMBA_BACKENDS_CPU_CACHE"
ENV_MARCH = "MAMBA_BACKENDS_CPU_MARCH"

_CFLAGS = ["-O3", "-std=gnu11", "-fPIC", "-fopenmp", "-fno-math-errno", "-Wall"]
_OK = 0
#: ``MB_ENONFINITE``: a kernel asked to check its inputs found a NaN/inf and wrote nothing.
NONFINITE = -3
#: ``MB_EINDEX``: a kernel asked to check its slot table found a bad slot and wrote nothing.
BADINDEX = -4
_ERRORS = {
    -1: "argument block of the wrong size",
    -2: "out of memory",
    NONFINITE: "non-finite input",
    BADINDEX: "slot index out of range or written twice",
}


class NativeABIError(RuntimeError):
    """A library's argument structs differ from their Python mirrors (never call it then)."""


class NativeKernelError(RuntimeError):
    """A kernel returned an error code."""


class NativeBuildError(RuntimeError):
    """The compiler failed; the message holds the tail of its output."""


@dataclass(frozen=True)
class Library:
    """One shared library: its C sources (relative to ``csrc/``) and exported kernels.

    ``kernels`` maps each exported function to the ``ctypes.Structure`` it takes; every
    kernel is ``int fn(const Args*, int64_t sizeof_args)`` returning 0 on success.
    ``source_flags`` adds flags to one source (e.g. ``-O2`` where ``-O3`` buys nothing
    measured but doubles the compile time).
    """

    name: str
    sources: tuple[str, ...]
    kernels: dict[str, type[ctypes.Structure]] = field(hash=False)
    source_flags: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)


@dataclass
class _State:
    cdll: ctypes.CDLL | None = None
    reason: str | None = None
    path: Path | None = None
    isa: str | None = None  # the level the loaded build targets (mb_isa_level)


LIBRARIES: dict[str, Library] = {}
_state: dict[str, _State] = {}
_lock = threading.Lock()
_warned_no_compiler = False


def register(lib: Library) -> Library:
    """Make ``lib`` known to :func:`status` (done by each wrapper module at import)."""
    LIBRARIES[lib.name] = lib
    return lib


def enabled() -> bool:
    """False when ``MAMBA_BACKENDS_CPU_NATIVE=0`` (read at every call: tests flip it)."""
    return getenv(ENV_NATIVE) != "0"


def march() -> str:
    """The ``-march`` value of the build (``MAMBA_BACKENDS_CPU_MARCH``, default native)."""
    return os.environ.get(ENV_MARCH, "").strip() or "native"


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mamba_backends_cpu"
    )
    return Path(root)


def compiler(env: str = "CC", default: str = "cc") -> list[str] | None:
    """The compiler command in ``$env`` (default: the C compiler, ``$CC`` or ``cc``), or None
    when it is not installed."""
    argv = shlex.split(os.environ.get(env, default)) or [default]
    exe = shutil.which(argv[0])
    return [exe, *argv[1:]] if exe else None


@lru_cache(maxsize=8)
def _compiler_id(cc: tuple[str, ...]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        version = out.stdout.splitlines()[0] if out.stdout else out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"unknown ({exc})"
    return f"{os.path.realpath(cc[0])} {' '.join(cc[1:])} {version}"


def _cpu_id() -> str:
    """The CPU's feature flags: ``-march=native`` builds must not be shared across CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def torch_openmp() -> Path | None:
    """The OpenMP runtime torch ships (``torch/lib/libgomp*.so*``), or None."""
    import torch

    libdir = Path(torch.__file__).parent / "lib"
    found = sorted(p for p in libdir.glob("libgomp*.so*") if p.is_file())
    return found[0] if found else None


def cflags(arch: str | None = None) -> list[str]:
    """Compile flags for ``-march=arch`` (default :func:`march`)."""
    return [*_CFLAGS, f"-march={arch or march()}", f"-I{CSRC}"]


def ldflags(torch_omp: bool = True, openmp: bool = True) -> list[str]:
    """Link flags: shared, libm, and torch's OpenMP runtime when it ships one.

    ``torch_omp=False`` links the compiler's own runtime (``-fopenmp``) instead, as a cross
    build for another CPU must; ``openmp=False`` links none (the ``GOMP_*`` symbols then stay
    undefined in the library, to be resolved by the process that loads it)."""
    omp = torch_openmp() if torch_omp and openmp else None
    if omp is None:
        return ["-shared", "-fopenmp", "-lm"] if openmp else ["-shared", "-lm"]
    # no -fopenmp here: it would add the system libgomp next to torch's
    return ["-shared", str(omp), f"-Wl,-rpath,{omp.parent}", "-lm"]


def _sources(lib: Library) -> list[Path]:
    headers = sorted(CSRC.rglob("*.h"))
    return [CSRC / s for s in lib.sources] + headers


def library_path(lib: Library, cc: list[str], arch: str | None = None) -> Path:
    """Cache path of ``lib``'s shared object for this compiler, flags, sources and CPU."""
    h = hashlib.sha256()
    for p in _sources(lib):
        h.update(str(p.relative_to(CSRC)).encode() + b"\0" + p.read_bytes() + b"\0")
    ident = [_compiler_id(tuple(cc)), *cflags(arch), *ldflags(), _cpu_id(), str(ABI_VERSION)]
    ident += [f"{src}: {' '.join(f)}" for src, f in sorted(lib.source_flags.items())]
    h.update("\0".join(ident).encode())
    return cache_dir() / f"mb_{lib.name}_{h.hexdigest()[:16]}.so"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def build(
    lib: Library,
    out: Path,
    cc: list[str],
    arch: str | None = None,
    extra_cflags: tuple[str, ...] = (),
    link: list[str] | None = None,
) -> None:
    """Compile ``lib``'s translation units in parallel and link them into ``out`` (atomic).

    ``extra_cflags`` go after :func:`cflags` (a source's own ``source_flags`` after them);
    ``link`` replaces :func:`ldflags` (a cross build links no torch runtime).

    Raises:
        NativeBuildError: with the compiler's message when a step fails.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [*cflags(arch), *extra_cflags]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".build-{lib.name}-") as tmp:
        objs = [Path(tmp) / (Path(s).stem + ".o") for s in lib.sources]
        cmds = [
            [*cc, *flags, *lib.source_flags.get(s, ()), "-c", str(CSRC / s), "-o", str(o)]
            for s, o in zip(lib.sources, objs, strict=True)
        ]
        with ThreadPoolExecutor(max_workers=max(1, min(len(cmds), os.cpu_count() or 1))) as ex:
            results = list(ex.map(_run, cmds))
        for cmd, res in zip(cmds, results, strict=True):
            if res.returncode != 0:
                raise NativeBuildError(f"{' '.join(cmd)}\n{res.stderr[-3000:]}")
            if res.stderr.strip():
                logger.debug("mamba_backends_cpu: %s: %s", cmd[-3], res.stderr.strip())
        tmp_so = Path(tmp) / out.name
        lflags = ldflags() if link is None else link
        res = _run([*cc, *(str(o) for o in objs), *lflags, "-o", str(tmp_so)])
        if res.returncode != 0:
            raise NativeBuildError(f"link of {lib.name}\n{res.stderr[-3000:]}")
        os.replace(tmp_so, out)  # atomic: concurrent builders race safely


def check_abi(cdll: Any, structs: list[type[ctypes.Structure]], name: str = "?") -> None:
    """Compare the library's struct sizes and ABI version with the Python mirrors.

    Raises:
        NativeABIError: naming the first struct whose size differs.
    """
    version = int(cdll.mb_abi_version())
    if version != ABI_VERSION:
        raise NativeABIError(
            f"mamba_backends_cpu: native library {name} has ABI version {version}, "
            f"the Python side expects {ABI_VERSION}; delete the cache ({cache_dir()})"
        )
    for s in structs:
        size = int(cdll.mb_abi_sizeof(s.__name__.encode()))
        if size != ctypes.sizeof(s):
            raise NativeABIError(
                f"mamba_backends_cpu: native library {name}: struct {s.__name__} is {size} "
                f"bytes in C (-1: unknown) but {ctypes.sizeof(s)} in its ctypes mirror; "
                "csrc/mb_args.h and the Python Structure must change together"
            )


def isa_level(cdll: Any) -> str:
    """The ISA level a loaded library was compiled for (``avx512-bf16``, ``avx512``, ``avx2``,
    ``sve``, ``neon`` or ``portable``: ``mb_isa_level()`` in ``csrc/abi.c``)."""
    cdll.mb_isa_level.argtypes = []
    cdll.mb_isa_level.restype = ctypes.c_char_p
    return bytes(cdll.mb_isa_level()).decode()


def _bind(cdll: ctypes.CDLL, lib: Library) -> None:
    cdll.mb_abi_version.argtypes = []
    cdll.mb_abi_version.restype = ctypes.c_int64
    cdll.mb_abi_sizeof.argtypes = [ctypes.c_char_p]
    cdll.mb_abi_sizeof.restype = ctypes.c_int64
    check_abi(cdll, list(dict.fromkeys(lib.kernels.values())), lib.name)
    for fn, block in lib.kernels.items():
        f = getattr(cdll, fn)
        f.argtypes = [ctypes.POINTER(block), ctypes.c_int64]
        f.restype = ctypes.c_int


def _open(lib: Library) -> _State:
    global _warned_no_compiler
    cc = compiler()
    if cc is None:
        name = os.environ.get("CC", "cc")
        if not _warned_no_compiler:
            _warned_no_compiler = True
            logger.warning(
                "mamba_backends_cpu: no C compiler found (CC=%s): the native CPU kernels are "
                "off and the slower PyTorch paths run. Install gcc (or clang with OpenMP) to "
                "enable them, or set %s=0 to choose the PyTorch paths and silence this.",
                name,
                ENV_NATIVE,
            )
        return _State(reason=f"no C compiler ({name} not found)")
    so = library_path(lib, cc)
    if not so.exists():
        logger.info(
            "mamba_backends_cpu: building native kernels %s (first use, cached in %s)",
            lib.name,
            so.parent,
        )
        t0 = time.perf_counter()
        try:
            build(lib, so, cc)
        except (OSError, subprocess.SubprocessError, NativeBuildError) as exc:
            logger.warning(
                "mamba_backends_cpu: building native kernels %s failed; using PyTorch (%s)",
                lib.name,
                exc,
            )
            return _State(reason=f"build error: {exc}", path=so)
        logger.info(
            "mamba_backends_cpu: built native kernels %s in %.1f s",
            lib.name,
            time.perf_counter() - t0,
        )
    try:
        cdll = ctypes.CDLL(str(so))
    except OSError as exc:
        logger.warning("mamba_backends_cpu: loading %s failed; using PyTorch (%s)", so, exc)
        return _State(reason=f"load error: {exc}", path=so)
    _bind(cdll, lib)  # NativeABIError propagates: a packaging bug must not pass silently
    isa = isa_level(cdll)
    logger.debug("mamba_backends_cpu: native kernels %s loaded (%s build)", lib.name, isa)
    return _State(cdll=cdll, path=so, isa=isa)


def load(lib: Library) -> ctypes.CDLL | None:
    """``lib`` built and loaded once per process; None when disabled or unbuildable."""
    if not enabled():
        return None
    st = _state.get(lib.name)
    if st is None:
        with _lock:
            st = _state.get(lib.name)
            if st is None:
                st = _state[lib.name] = _open(lib)
    return st.cdll


def packer(cls: type[ctypes.Structure]) -> Callable[..., ctypes.Structure]:
    """A builder of ``cls`` from its fields flattened in order (arrays element by element,
    pointers as ints, 0 for NULL): one ``struct.pack``, a third of the cost of ``cls(...)``
    with tuple-valued array fields (decode calls build one per kernel call)."""
    codes = []
    for _, ftype in cls._fields_:  # type: ignore[misc]
        n = getattr(ftype, "_length_", 1)
        base = getattr(ftype, "_type_", ftype) if n > 1 or hasattr(ftype, "_length_") else ftype
        code = {ctypes.c_void_p: "Q", ctypes.c_int64: "q", ctypes.c_float: "f"}[base]
        codes.append(code * n)
    fmt = "=" + "".join(codes)
    pad = ctypes.sizeof(cls) - struct.calcsize(fmt)
    fmt += "x" * pad
    assert struct.calcsize(fmt) == ctypes.sizeof(cls), (cls.__name__, fmt)
    pack = struct.Struct(fmt).pack
    make = cls.from_buffer_copy

    def build(*flat: int | float) -> ctypes.Structure:
        return make(pack(*flat))

    return build


def call(fn: Any, args: ctypes.Structure, allow: tuple[int, ...] = ()) -> int:
    """Run kernel ``fn`` on its argument block; return its code when it is 0 or in ``allow``,
    raise on any other."""
    return checked(fn, fn(ctypes.byref(args), ctypes.sizeof(args)), allow)


def checked(fn: Any, rc: int, allow: tuple[int, ...] = ()) -> int:
    """``rc`` when it is 0 or in ``allow``; raise :class:`NativeKernelError` naming kernel
    ``fn`` (a ctypes function or a name) on any other code."""
    if rc != _OK and rc not in allow:
        raise NativeKernelError(
            f"mamba_backends_cpu: native kernel {getattr(fn, '__name__', fn)} failed: "
            f"{_ERRORS.get(rc, f'error {rc}')}"
        )
    return int(rc)


def library_status(lib: Library) -> dict[str, Any]:
    """See :func:`mamba_backends_cpu.native.status`."""
    st = _state.get(lib.name)
    cc = compiler()
    path = st.path if st is not None and st.path is not None else None
    if path is None and cc is not None:
        path = library_path(lib, cc)
    reason: str | None
    if not enabled():
        active, reason = False, f"disabled by {ENV_NATIVE}=0"
    elif st is None:
        active, reason = False, "not built yet" if cc is not None else "no C compiler"
    else:
        active, reason = st.cdll is not None, st.reason
    return {
        "active": active,
        "reason": reason,
        "isa": st.isa if st is not None else None,
        "march": march(),
        "cflags": cflags(),
        "compiler": _compiler_id(tuple(cc)) if cc is not None else None,
        "openmp": str(torch_openmp() or "system libgomp (-fopenmp)"),
        "cache": str(path) if path is not None else str(cache_dir()),
        "cached": bool(path is not None and path.exists()),
        "sources": list(lib.sources),
    }
