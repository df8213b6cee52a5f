"""aarch64 cross build of the native kernels (issue 14): compile-verified only, never run.

A smoke run at ``-O0`` here (every library, every aarch64 target, warnings are errors; a few
seconds); the ``cross-aarch64`` nox session builds the same at the real ``-O3`` flags. Skipped
where Debian's ``gcc-aarch64-linux-gnu`` is not installed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from mamba_backends_cpu.native import _build, cross

CC = "aarch64-linux-gnu-gcc"
pytestmark = pytest.mark.skipif(
    shutil.which(CC) is None,
    reason=f"no {CC} (Debian: apt-get install gcc-aarch64-linux-gnu); "
    "CI runs the full cross build in the cross-aarch64 nox session",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[cross.Result]]:
    """Every library for every aarch64 target at -O0 (per-source -O flags dropped: a smoke
    build; the flags themselves are the nox session's)."""
    out = tmp_path_factory.mktemp("cross")
    libs = [dataclasses.replace(lib, source_flags={}) for lib in cross.libraries()]
    cc = [str(shutil.which(CC))]
    return out, cross.cross_build(cc, out_dir=out, extra_cflags=("-O0",), libs=libs)


def test_every_library_cross_compiles_for_every_aarch64_target(
    built: tuple[Path, list[cross.Result]],
) -> None:
    _, results = built
    assert {(r.library, r.march) for r in results} == {
        (lib, m) for lib in _build.LIBRARIES for m in cross.AARCH64_TARGETS
    }
    for r in results:
        assert not r.errors, f"{r.library} for {r.march}: {r.errors}"
        assert r.exported == len(_build.LIBRARIES[r.library].kernels) + len(cross.ABI_SYMBOLS)
        assert r.level == ("sve" if "+sve" in r.march else "neon")
        assert r.bf16 == ("+bf16" in r.march)


def test_symbol_reader_agrees_with_nm(built: tuple[Path, list[cross.Result]]) -> None:
    nm = shutil.which("aarch64-linux-gnu-nm")
    if nm is None:
        pytest.skip("no aarch64-linux-gnu-nm (binutils-aarch64-linux-gnu)")
    for r in built[1]:
        out = subprocess.run(
            [nm, "-D", "--defined-only", str(r.path)], capture_output=True, text=True, check=True
        ).stdout
        funcs = {f[2] for f in (ln.split() for ln in out.splitlines()) if len(f) == 3}
        funcs = {s for s in funcs if s.startswith("mb_")}
        mine = {s for s in cross.read_elf(r.path).defined if s.startswith("mb_")}
        assert mine == funcs, r.path


def test_check_reports_a_missing_kernel_and_a_wrong_machine(
    built: tuple[Path, list[cross.Result]],
) -> None:
    r = built[1][0]
    lib = _build.LIBRARIES[r.library]
    fake = dataclasses.replace(lib, kernels={**lib.kernels, "mb_no_such_kernel": ctypes.Structure})
    res = cross.check(fake, r.path, r.march, r.level)
    assert any("mb_no_such_kernel" in e for e in res.errors)
    res = cross.check(lib, r.path, r.march, r.level, machine=62)  # x86-64
    assert any("e_machine 183" in e for e in res.errors)
    assert not cross.check(lib, r.path, r.march, r.level).errors


def test_a_warning_fails_the_cross_build(tmp_path: Path) -> None:
    src = tmp_path / "warn.c"
    src.write_text("int mb_warn(int a) { int unused; return a; }\n")
    lib = _build.Library(name="warn", sources=(str(src),), kernels={})
    (res,) = cross.cross_build(
        [str(shutil.which(CC))], ("armv8-a",), tmp_path / "out", ("-O0",), libs=[lib]
    )
    assert res.errors and "unused" in res.errors[0]
