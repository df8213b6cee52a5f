"""Cross-compile every native library for a foreign CPU, without loading it (issue 14).

The build is :func:`._build.build` itself: the same :data:`._build.LIBRARIES` (sources and
per-source flags), the same :func:`._build.cflags` for ``-march=<target>``, plus ``-Wextra
-Werror`` (any warning fails) and a link with the cross compiler's own OpenMP runtime
(``-fopenmp``; torch's ``libgomp`` is a host library). When the cross compiler has no
``libgomp.so`` the libraries link without one and say so: their ``GOMP_*`` symbols then stay
undefined, for the loading process to provide. Each shared object is then checked from its
ELF bytes: 64-bit little-endian, shared, the target's ``e_machine``, every kernel the Python
side binds (and the ``mb_abi_*``/``mb_isa_level`` entry points) defined in its dynamic symbol
table, and exactly one ISA level name (``csrc/abi.c``) in its read-only data, the one the
target's feature macros give (``sve`` where ``-march`` enables SVE, else ``neon``, on aarch64).

Command (exit status 1 on any compile error, warning or failed check)::

    python -m mamba_backends_cpu.native.cross --cc aarch64-linux-gnu-gcc \\
        --march armv8-a --march armv8.2-a+bf16 --march armv8.2-a+sve+bf16 [--out DIR]

Without ``--march`` it builds :data:`AARCH64_TARGETS`. These builds are compile-verified
only: nothing here runs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mamba_backends_cpu.isa import LEVELS
from mamba_backends_cpu.native import _build

logger = logging.getLogger(__name__)

#: The aarch64 targets CI proves: NEON baseline, NEON + bf16 (e.g. Graviton3 / Neoverse V1
#: run as NEON), SVE + bf16.
AARCH64_TARGETS = ("armv8-a", "armv8.2-a+bf16", "armv8.2-a+sve+bf16")
#: Entry points every library exports besides its kernels (``csrc/abi.c``).
ABI_SYMBOLS = ("mb_abi_version", "mb_abi_sizeof", "mb_isa_level")
#: Warnings are errors in a cross build (as in the AVX2 build test).
CROSS_CFLAGS = ("-Wextra", "-Werror")
EM_AARCH64 = 183
_ET_DYN, _SHT_DYNSYM, _SHT_DYNAMIC, _SHN_UNDEF, _DT_NEEDED, _STT_FUNC = 3, 11, 6, 0, 1, 2


@dataclass
class ElfInfo:
    """What :func:`read_elf` finds in a 64-bit little-endian shared object."""

    machine: int
    defined: set[str]  # defined global/weak function symbols of .dynsym
    undefined: set[str]
    needed: list[str]  # DT_NEEDED entries
    rodata: bytes


def _cstr(table: bytes, off: int) -> str:
    return table[off : table.index(b"\0", off)].decode()


def read_elf(path: Path) -> ElfInfo:
    """Parse ``path``'s ELF header, ``.dynsym``, ``.dynamic`` and ``.rodata`` (no tools).

    Raises:
        ValueError: not a 64-bit little-endian shared object.
    """
    b = path.read_bytes()
    if b[:4] != b"\x7fELF" or b[4] != 2 or b[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", b, 16)
    if e_type != _ET_DYN:
        raise ValueError(f"{path}: ELF type {e_type}, not a shared object")
    e_shoff = struct.unpack_from("<Q", b, 40)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", b, 58)
    secs = [struct.unpack_from("<IIQQQQIIQQ", b, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    names = b[secs[e_shstrndx][4] : secs[e_shstrndx][4] + secs[e_shstrndx][5]]

    def data(i: int) -> bytes:
        return b[secs[i][4] : secs[i][4] + secs[i][5]]

    defined: set[str] = set()
    undefined: set[str] = set()
    needed: list[str] = []
    rodata = b""
    for s in secs:
        name = _cstr(names, s[0])
        if s[1] == _SHT_DYNSYM:
            strtab = data(s[6])
            for off in range(0, s[5], 24):
                st_name, st_info, _, st_shndx = struct.unpack_from("<IBBH", b, s[4] + off)
                if not st_name:
                    continue
                sym = _cstr(strtab, st_name)
                if st_shndx == _SHN_UNDEF:
                    undefined.add(sym)
                elif st_info & 0xF == _STT_FUNC and st_info >> 4 in (1, 2):  # GLOBAL, WEAK
                    defined.add(sym)
        elif s[1] == _SHT_DYNAMIC:
            strtab = data(s[6])
            for off in range(0, s[5], 16):
                tag, val = struct.unpack_from("<qQ", b, s[4] + off)
                if tag == _DT_NEEDED:
                    needed.append(_cstr(strtab, val))
        elif name == ".rodata":
            rodata = b[s[4] : s[4] + s[5]]
    return ElfInfo(e_machine, defined, undefined, needed, rodata)


def target_macros(cc: list[str], march: str) -> set[str]:
    """The feature macros ``cc -march=<march>`` predefines (``__ARM_FEATURE_SVE``, ...)."""
    out = subprocess.run(
        [*cc, f"-march={march}", "-dM", "-E", "-x", "c", os.devnull],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return {ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("#define ")}


def expected_level(macros: set[str]) -> str:
    """The ``mb_isa_level()`` of an aarch64 build with these macros (as ``csrc/abi.c``)."""
    if "__ARM_FEATURE_SVE" in macros:
        return "sve"
    return "neon" if "__ARM_NEON" in macros else "portable"


def levels_in(rodata: bytes) -> list[str]:
    """The ISA level names present as C strings in a library's read-only data (only the one
    ``mb_isa_level`` returns survives the preprocessor)."""
    strings = set(rodata.split(b"\0"))
    return [lv for lv in LEVELS if lv.encode() in strings]


@dataclass
class Result:
    """One library built for one target, and what its check found."""

    library: str
    march: str
    path: Path
    seconds: float
    errors: list[str] = field(default_factory=list)
    exported: int = 0  # kernel + ABI symbols found
    level: str | None = None
    openmp: str = ""
    bf16: bool = False  # the target has bf16 vector instructions (__ARM_FEATURE_BF16_...)


def openmp_runtime(cc: list[str]) -> Path | None:
    """The cross compiler's ``libgomp.so`` (``-print-file-name``), or None when it has none."""
    try:
        out = subprocess.run(
            [*cc, "-print-file-name=libgomp.so"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    p = Path(out)
    return p if p.is_absolute() and p.exists() else None


def libraries() -> list[_build.Library]:
    """Every registered library (importing the wrapper modules registers them)."""
    from mamba_backends_cpu.native import conv, gdn, ssm  # noqa: F401

    return list(_build.LIBRARIES.values())


def check(
    lib: _build.Library, so: Path, march: str, level: str | None, machine: int = EM_AARCH64
) -> Result:
    """The ELF checks of the module docstring on ``so`` (``level``: the ``mb_isa_level``
    string it must hold, None: any one); failures listed in ``errors``."""
    res = Result(lib.name, march, so, 0.0)
    try:
        elf = read_elf(so)
    except (OSError, ValueError) as exc:
        res.errors.append(str(exc))
        return res
    if elf.machine != machine:
        res.errors.append(f"e_machine {elf.machine}, expected {machine}")
    want = [*lib.kernels, *ABI_SYMBOLS]
    missing = [s for s in want if s not in elf.defined]
    if missing:
        res.errors.append(f"missing exported symbols: {', '.join(missing)}")
    res.exported = len(want) - len(missing)
    found = levels_in(elf.rodata)
    res.level = found[0] if len(found) == 1 else None
    if len(found) != 1 or level not in (None, found[0]):
        res.errors.append(f"ISA level strings {found}, expected [{level!r}]")
    omp = [n for n in elf.needed if "gomp" in n]
    gomp_undef = sorted(s for s in elf.undefined if s.startswith("GOMP_"))
    res.openmp = omp[0] if omp else f"not linked ({len(gomp_undef)} GOMP_* undefined)"
    return res


def cross_build(
    cc: list[str],
    marchs: tuple[str, ...] = AARCH64_TARGETS,
    out_dir: Path | None = None,
    extra_cflags: tuple[str, ...] = (),
    jobs: int | None = None,
    machine: int = EM_AARCH64,
    libs: list[_build.Library] | None = None,
) -> list[Result]:
    """Build and check every library (``libs``, default :func:`libraries`) for every
    ``-march`` in ``marchs`` (``machine``: the ELF ``e_machine`` they must have; the ISA level
    is checked on aarch64 only).

    Shared objects go to ``out_dir/<march>/mb_<lib>.so`` (a temporary folder, removed, when
    None). A compile error or warning is a :class:`._build.NativeBuildError` caught into the
    result's ``errors``; nothing raises for a bad build.
    """
    omp = openmp_runtime(cc)
    if omp is None:
        logger.warning(
            "mamba_backends_cpu: %s has no libgomp.so: linking without OpenMP "
            "(GOMP_* symbols stay undefined)",
            cc[0],
        )
    link = [*_build.ldflags(torch_omp=False, openmp=omp is not None), "-Wl,--fatal-warnings"]
    flags = (*CROSS_CFLAGS, *extra_cflags)
    macros = {m: target_macros(cc, m) for m in marchs}
    with tempfile.TemporaryDirectory(prefix="mb-cross-") as tmp:
        root = out_dir or Path(tmp)

        def one(job: tuple[_build.Library, str]) -> Result:
            lib, march = job
            so = root / march / f"mb_{lib.name}.so"
            t0 = time.perf_counter()
            try:
                _build.build(lib, so, cc, march, flags, link=link)
            except (OSError, subprocess.SubprocessError, _build.NativeBuildError) as exc:
                return Result(lib.name, march, so, time.perf_counter() - t0, [str(exc)])
            level = expected_level(macros[march]) if machine == EM_AARCH64 else None
            res = check(lib, so, march, level, machine)
            res.seconds = time.perf_counter() - t0
            res.bf16 = "__ARM_FEATURE_BF16_VECTOR_ARITHMETIC" in macros[march]
            return res

        todo = [(lib, m) for m in marchs for lib in (libraries() if libs is None else libs)]
        workers = max(1, min(len(todo), jobs or os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as ex:
            return list(ex.map(one, todo))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mamba_backends_cpu.native.cross", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--cc", default="aarch64-linux-gnu-gcc", help="cross C compiler command")
    ap.add_argument(
        "--march", action="append", help=f"-march target, repeatable (default {AARCH64_TARGETS})"
    )
    ap.add_argument("--out", type=Path, help="keep the shared objects here (default: a temp dir)")
    ap.add_argument("--cflags", default="", help="extra compile flags (e.g. -O0 for a smoke run)")
    ap.add_argument("-j", "--jobs", type=int, help="libraries built at once (default: CPUs)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv_cc = shlex.split(a.cc)
    exe = shutil.which(argv_cc[0]) if argv_cc else None
    if exe is None:
        logger.error(
            "cross compiler %r not found (Debian: apt-get install gcc-aarch64-linux-gnu)", a.cc
        )
        return 1
    cc = [exe, *argv_cc[1:]]
    marchs = tuple(a.march or AARCH64_TARGETS)
    logger.info("cross build with %s for %s", _build._compiler_id(tuple(cc)), ", ".join(marchs))
    t0 = time.perf_counter()
    results = cross_build(cc, marchs, a.out, tuple(shlex.split(a.cflags)), a.jobs)
    bad = 0
    for r in results:
        state = "FAIL" if r.errors else "ok"
        logger.info(
            "%-4s %-20s %-4s %5.1f s  isa=%s bf16=%s  symbols=%d  openmp=%s",
            state, r.march, r.library, r.seconds, r.level, r.bf16, r.exported, r.openmp,
        )  # fmt: skip
        for e in r.errors:
            logger.error("     %s", e.strip().replace("\n", "\n     "))
        bad += bool(r.errors)
    logger.info(
        "%d of %d builds failed, %.1f s wall (compile-verified only: nothing was run)",
        bad,
        len(results),
        time.perf_counter() - t0,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
