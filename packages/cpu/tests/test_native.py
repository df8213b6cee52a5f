"""The native build/cache/load layer: C sources as files, one struct per kernel checked at load,
one OpenMP runtime, status(), the AVX2 build, and the shared C helpers."""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamba_backends_cpu import native
from mamba_backends_cpu.native import _build, conv, gdn, ssm

PKG = Path(native.__file__).parent.parent
LIBS = (ssm.LIBRARY, conv.LIBRARY, gdn.LIBRARY)
#: A source that does not compile (tests/csrc/broken.c).
BROKEN_C = Path(__file__).parent / "csrc" / "broken.c"

needs_cc = pytest.mark.skipif(_build.compiler() is None, reason="no C compiler here")
linux = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private cache folder and loader state (the process-wide libraries stay untouched)."""
    monkeypatch.setenv(_build.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv(_build.ENV_NATIVE, "1")
    monkeypatch.setattr(_build, "_state", {})
    monkeypatch.setattr(_build, "_warned_no_compiler", False)
    return tmp_path


def _loaded(lib: _build.Library) -> ctypes.CDLL:
    if os.environ.get(_build.ENV_NATIVE, "1") == "0" or _build.compiler() is None:
        pytest.skip("native kernels disabled or no compiler")
    cdll = _build.load(lib)
    assert cdll is not None, native.status()[lib.name]
    return cdll


def test_no_c_source_in_python_files() -> None:
    offenders = [str(p) for p in PKG.rglob("*.py") if "#include <" in p.read_text()]
    assert offenders == []


def test_sources_are_package_files() -> None:
    for lib in LIBS:
        for src in lib.sources:
            assert (_build.CSRC / src).is_file()
    assert (_build.CSRC / "mb_common.h").is_file() and (_build.CSRC / "mb_args.h").is_file()


@needs_cc
def test_abi_check_refuses_a_wrong_struct_size() -> None:
    cdll = _loaded(conv.LIBRARY)
    _build.check_abi(cdll, [conv.MbConvArgs], "conv")  # the real mirror passes

    class MbConvArgs(ctypes.Structure):  # a stale mirror: one field short
        _fields_ = conv.MbConvArgs._fields_[:-1]

    with pytest.raises(native.NativeABIError, match="MbConvArgs"):
        _build.check_abi(cdll, [MbConvArgs], "conv")

    class MbNoSuchArgs(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int64)]

    with pytest.raises(native.NativeABIError, match="MbNoSuchArgs"):
        _build.check_abi(cdll, [MbNoSuchArgs], "conv")


@needs_cc
def test_every_mirror_matches_its_library() -> None:
    for lib in LIBS:
        _build.check_abi(_loaded(lib), list(lib.kernels.values()), lib.name)


@needs_cc
def test_kernel_refuses_a_block_of_the_wrong_size() -> None:
    cdll = _loaded(conv.LIBRARY)
    args = conv.MbConvArgs()  # all zero: the kernel must not look past the size check
    assert cdll.mb_conv(ctypes.byref(args), ctypes.sizeof(args) - 8) == -1

    def short_call(p: object, size: int) -> int:
        return int(cdll.mb_conv(p, size - 8))

    with pytest.raises(native.NativeKernelError, match="wrong size"):
        _build.call(short_call, args)


def test_status_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.ENV_NATIVE, "0")
    st = native.status()
    assert set(st) >= {"ssm", "conv", "gdn"}
    for entry in st.values():
        assert entry["active"] is False
        assert entry["reason"] == "disabled by MAMBA_BACKENDS_CPU_NATIVE=0"
        assert {"march", "cache", "cflags", "compiler", "openmp", "cached"} <= set(entry)
    json.dumps(st)  # info prints it


@needs_cc
def test_status_when_active() -> None:
    _loaded(ssm.LIBRARY)
    entry = native.status()["ssm"]
    assert entry["active"] is True and entry["reason"] is None and entry["cached"] is True
    assert entry["march"] == _build.march()
    assert f"-march={_build.march()}" in entry["cflags"]


def test_no_compiler_warns_once(
    fresh: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    with caplog.at_level(logging.WARNING, logger=_build.__name__):
        assert _build.load(conv.LIBRARY) is None
        assert _build.load(gdn.LIBRARY) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C compiler" in warnings[0].getMessage()
    st = native.status()
    assert st["conv"]["active"] is False and st["conv"]["reason"].startswith("no C compiler")
    assert st["ssm"]["reason"] == "no C compiler"  # never tried


@needs_cc
def test_build_error_is_reported(
    fresh: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    csrc = fresh / "csrc"
    csrc.mkdir()
    shutil.copy(BROKEN_C, csrc / "broken.c")
    monkeypatch.setattr(_build, "CSRC", csrc)
    lib = _build.Library("broken", ("broken.c",), {})
    with caplog.at_level(logging.WARNING, logger=_build.__name__):
        assert _build.load(lib) is None
    assert "missing_symbol" in _build.library_status(lib)["reason"]
    assert _build.library_status(lib)["reason"].startswith("build error")
    assert any("failed" in r.getMessage() for r in caplog.records)


@needs_cc
def test_first_build_logs_one_line_and_its_time(
    fresh: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=_build.__name__):
        assert _build.load(gdn.LIBRARY) is not None
        assert _build.load(gdn.LIBRARY) is not None  # cached in the process: silent
    msgs = [r.getMessage() for r in caplog.records]
    assert [m for m in msgs if "building native kernels gdn (first use, cached in" in m]
    assert len([m for m in msgs if m.startswith("mamba_backends_cpu: building")]) == 1
    assert [m for m in msgs if "built native kernels gdn in" in m]
    assert list(fresh.glob("mb_gdn_*.so"))


@needs_cc
def test_cache_key_covers_headers_march_and_flags(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(_build.ENV_MARCH, raising=False)
    csrc = fresh / "csrc"
    shutil.copytree(_build.CSRC, csrc)
    monkeypatch.setattr(_build, "CSRC", csrc)
    cc = _build.compiler()
    assert cc is not None
    base = _build.library_path(conv.LIBRARY, cc)
    assert _build.library_path(conv.LIBRARY, cc, "x86-64-v3") != base
    monkeypatch.setenv(_build.ENV_MARCH, "x86-64-v3")
    assert "-march=x86-64-v3" in _build.cflags()
    assert _build.library_path(conv.LIBRARY, cc) != base
    monkeypatch.delenv(_build.ENV_MARCH)
    with (csrc / "isa" / "mb_avx512.h").open("a") as f:
        f.write("/* edited */\n")
    assert _build.library_path(conv.LIBRARY, cc) != base


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 only")
def test_every_source_compiles_for_avx2_without_abi_warnings(tmp_path: Path) -> None:
    """An AVX2 target (x86-64-v3) must see no vector type wider than its registers."""
    cc = _build.compiler()
    assert cc is not None
    for lib in LIBS:
        out = tmp_path / f"{lib.name}.so"
        _build.build(lib, out, cc, "x86-64-v3", ("-Wextra", "-Werror"))
        assert out.is_file()


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 only")
@pytest.mark.parametrize(("arch", "level"), [("x86-64-v3", "avx2"), ("x86-64", "portable")])
def test_build_reports_its_isa_level(tmp_path: Path, arch: str, level: str) -> None:
    """mb_isa_level() names the level the -march value gives, whatever CPU builds it."""
    cc = _build.compiler()
    assert cc is not None
    lib = _build.Library(name="abi", sources=("abi.c",), kernels={})
    out = tmp_path / f"abi_{level}.so"
    _build.build(lib, out, cc, arch)
    assert _build.isa_level(ctypes.CDLL(str(out))) == level


@needs_cc
def test_loaded_library_status_and_info_show_its_isa() -> None:
    from mamba_backends_cpu import _info
    from mamba_backends_cpu.isa import LEVELS

    _loaded(ssm.LIBRARY)
    level = native.status()["ssm"]["isa"]
    assert level in LEVELS
    if _build.march() == "x86-64-v3":
        assert level == "avx2"
    section = _info.info_section()
    assert any(
        line.startswith("ssm ") and line.endswith(f", {level} build") for line in section.lines
    )


@needs_cc
@linux
def test_one_openmp_runtime(tmp_path: Path) -> None:
    """Our library loaded before torch still takes torch's libgomp; a kernel run after that
    leaves one libgomp mapped."""
    so = Path(native.status()["conv"]["cache"])
    _loaded(conv.LIBRARY)
    script = f"""
import ctypes, json, torch
ctypes.CDLL({str(so)!r})
import torch
from mamba_backends_cpu.ops.conv1d import causal_conv1d_update
x = torch.randn(2, 64)
state = torch.randn(2, 64, 3)
causal_conv1d_update(x, state, torch.randn(64, 4), None, "silu")
maps = {{line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}}
print(json.dumps(sorted(maps)))
"""
    script = script.replace("import ctypes, json, torch\n", "import ctypes, json\n", 1)
    env = {**os.environ, _build.ENV_NATIVE: "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    maps = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(maps) == 1, maps
    omp = _build.torch_openmp()
    if omp is not None:
        assert os.path.realpath(maps[0]) == os.path.realpath(omp)
    # and in this process, after a kernel ran
    x = torch.randn(1, 64)
    from mamba_backends_cpu.ops.conv1d import causal_conv1d_update

    causal_conv1d_update(x, torch.randn(1, 64, 3), torch.randn(64, 4), None, "silu")
    here = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()}
    assert len({p for p in here if "libgomp" in p}) == 1


#: C probe of the shared helpers (tests/csrc/probe.c), built with the libraries' flags.
PROBE_C = Path(__file__).parent / "csrc" / "probe.c"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cc = _build.compiler()
    if cc is None:
        pytest.skip("no C compiler here")
    d = tmp_path_factory.mktemp("probe")
    so = d / "probe.so"
    flags = [f for f in _build.cflags() if f != "-fopenmp"]
    subprocess.run([*cc, *flags, "-shared", str(PROBE_C), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    f, u16 = ctypes.c_float, ctypes.c_uint16
    for name, args, res in [
        ("t_exp", [f], f),
        ("t_softplus", [f], f),
        ("t_softplus_beta", [f, f, f], f),
        ("t_bf16", [f], u16),
        ("t_vl", [], ctypes.c_int),
    ]:
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = res
    lib.t_vstore_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _f32_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def test_exp_accuracy(probe: ctypes.CDLL) -> None:
    for x in torch.arange(-87 * 7, 88 * 7).div(7.0).float().tolist():  # fp32 inputs
        assert probe.t_exp(x) == pytest.approx(math.exp(x), rel=4e-7)
    assert math.isnan(probe.t_exp(float("nan")))


def test_softplus_matches_the_spec(probe: ctypes.CDLL) -> None:
    xs = torch.linspace(-100, 40, 2801).double()  # fp32 inputs
    ref = torch.nn.functional.softplus(xs)  # threshold 20, as the spec's
    got = torch.tensor([probe.t_softplus(float(x)) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=3e-7, atol=2e-38)
    assert probe.t_softplus(25.0) == 25.0 and probe.t_softplus(20.5) == 20.5
    assert math.isnan(probe.t_softplus(float("nan")))
    ref_b = torch.nn.functional.softplus(xs, beta=2.0, threshold=15.0)
    got_b = torch.tensor([probe.t_softplus_beta(float(x), 2.0, 15.0) for x in xs])
    torch.testing.assert_close(got_b.double(), ref_b, rtol=3e-7, atol=2e-38)


def test_bf16_rounding_and_nan(probe: ctypes.CDLL) -> None:
    xs = torch.randn(4096, dtype=torch.float32) * 1e3
    ref = xs.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    got = torch.tensor([probe.t_bf16(float(x)) for x in xs], dtype=torch.int64)
    assert torch.equal(got, ref)
    for bits in (0x7FFFFFFF, 0x7F80FFFF, 0xFFFFFFFF, 0x7FC00000):  # NaNs that round up
        h = probe.t_bf16(_f32_from_bits(bits))
        assert (h & 0x7F80) == 0x7F80 and (h & 0x7F) != 0, hex(h)  # still a NaN
    # the vector form agrees with the scalar one, NaNs included
    vl = probe.t_vl()
    vals = [_f32_from_bits(0x7FFFFFFF), float("inf"), -0.0, 1.00390625, *xs[: vl - 4].tolist()]
    buf = torch.tensor(vals[:vl], dtype=torch.float32)
    out = torch.zeros(vl, dtype=torch.int16)
    probe.t_vstore_bf16(buf.data_ptr(), out.data_ptr())
    scalar = [probe.t_bf16(float(v)) for v in buf.tolist()]
    assert (out.to(torch.int64) & 0xFFFF).tolist() == scalar
