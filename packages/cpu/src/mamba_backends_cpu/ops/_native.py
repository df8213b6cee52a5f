"""Optional fused C kernels where the pure-PyTorch form cannot reach vLLM-CPU's speed.

Measured on the 2-core dev machine (see the package report), chains of PyTorch ops lose to
one fused pass whenever a state is touched per token or per step:

- decode (``selective_state_update``, ``causal_conv1d_update``): every state byte is read and
  written once per step; gather/compute/scatter in PyTorch moves the states about nine times;
- the Mamba1 scan keeps a ``(D, N)`` state per token, and materialising it costs more than
  the scan itself;
- the Mamba2 SSD recurrence with the ``(P, N)`` state in cache beats the matmul form, whose
  intermediates do not stay in cache on a CPU.

The kernels are small C loops (source in ``_native_src``), compiled on first use with the
system C compiler into a per-user cache (``MAMBA_BACKENDS_CPU_CACHE``, default
``~/.cache/mamba_backends_cpu``; keyed by source, flags and CPU features) and loaded with
:mod:`ctypes`: no PyTorch headers, about a second to build. The pure-PyTorch paths stay the
fallback: when no compiler is found, the build fails, or ``MAMBA_BACKENDS_CPU_NATIVE=0`` is
set, :func:`available` is False and callers use them.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamba_backends_cpu.ops._native_src import SOURCE as _SOURCE

logger = logging.getLogger(__name__)


_CC = os.environ.get("CC", "cc")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno"]
_lib: ctypes.CDLL | None = None
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _cache_dir() -> Path:
    root = os.environ.get("MAMBA_BACKENDS_CPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mamba_backends_cpu"
    )
    return Path(root)


def _cpu_id() -> str:
    """The CPU's feature flags: ``-march=native`` builds must not be shared across CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def build_library(name: str, source: str, signatures: dict[str, list[Any]]) -> ctypes.CDLL:
    """Compile ``source`` (C) into a cached shared library and bind ``signatures``.

    Args:
        name: short library name, part of the cached file name.
        source: the C source.
        signatures: C function name -> ctypes argument types (all return void).

    Raises:
        OSError / RuntimeError / SubprocessError when no compiler is found or the build fails.
    """
    ident = source + " ".join([_CC, *_FLAGS]) + _cpu_id()
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    d = _cache_dir()
    so = d / f"mb_{name}_{key}.so"
    if not so.exists():
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src = Path(tmp) / f"mb_{name}.c"
            src.write_text(source)
            out = Path(tmp) / so.name
            proc = subprocess.run(
                [_CC, *_FLAGS, str(src), "-o", str(out), "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            os.replace(out, so)  # atomic: concurrent builders race safely
    lib = ctypes.CDLL(str(so))
    for fn, argtypes in signatures.items():
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = None
    return lib


_libs: dict[str, ctypes.CDLL | None] = {}


def load_library(name: str, source: str, signatures: dict[str, list[Any]]) -> ctypes.CDLL | None:
    """The library ``name``, built once per process; None when disabled or unbuildable.

    ``MAMBA_BACKENDS_CPU_NATIVE=0`` disables every native library; a failed build logs one
    warning and callers fall back to their PyTorch paths.
    """
    if os.environ.get("MAMBA_BACKENDS_CPU_NATIVE", "1") == "0":
        return None
    if name not in _libs:
        try:
            _libs[name] = build_library(name, source, signatures)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            # No compiler, read-only cache, sandbox, ...: fall back to PyTorch.
            logger.warning(
                "mamba_backends_cpu: native %s kernels unavailable (%s); using PyTorch", name, exc
            )
            _libs[name] = None
    return _libs[name]


def _ssm_signatures() -> dict[str, list[Any]]:
    i64, vp, ci = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    ssu_args: list[Any] = [vp, ci, vp, vp, vp, ci, i64, i64, ci, vp, vp, vp, ci] + [vp] * 6
    ssu_args += [i64] * 5 + [ci, ci]
    return {
        "mb_scan_f32": [vp] * 8 + [i64] * 4 + [ci],
        "mb_ssu": ssu_args,
        "mb_ssd_f32": [vp] * 14 + [i64] * 5 + [ci],
        "mb_scan_varlen": [vp, vp, ci] + [vp] * 10 + [i64] * 4 + [ci],
    }


def available() -> bool:
    """Whether the native SSM kernels are built and enabled (builds them on first call)."""
    global _lib
    if _lib is not None and os.environ.get("MAMBA_BACKENDS_CPU_NATIVE", "1") != "0":
        return True  # decode calls this every step: skip the loader
    _lib = load_library("ssm", _SOURCE, _ssm_signatures())
    return _lib is not None


def _p(t: Tensor) -> int:
    return t.data_ptr()


def selective_scan(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, qsl: Tensor
) -> tuple[Tensor, Tensor]:
    """Fused Mamba1 scan (fp32). Shapes as in ``selective_scan._scan_torch``."""
    assert _lib is not None
    T, Dm = u.shape
    N = A.shape[1]
    G = B.shape[1]
    u, dt, A, B, C = (t.contiguous() for t in (u, dt, A, B, C))
    h = h0.contiguous().clone()
    q = qsl.to(torch.int64).contiguous()
    y = torch.empty(T, Dm, dtype=torch.float32)
    S = q.numel() - 1
    _lib.mb_scan_f32(
        _p(u), _p(dt), _p(A), _p(B), _p(C), _p(h), _p(y), _p(q), S, Dm, N, G,
        torch.get_num_threads(),
    )  # fmt: skip
    return y, h


def ssu_supported(state: Tensor) -> bool:
    """Whether :func:`ssu` handles this state tensor."""
    return state.dtype in _DTYPE_CODE and state.dim() == 4 and state.device.type == "cpu"


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _row_major_last(t: Tensor) -> Tensor:
    """fp32 with a unit stride on the last axis (B and C rows are read as vectors)."""
    t = _f32(t)
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def ssu(
    state: Tensor,
    src: Tensor | None,
    dst: Tensor | None,
    pad_id: int,
    null_id: int | None,
    x: Tensor,
    dt: Tensor,
    dt_bias: Tensor | None,
    softplus: bool,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    out: Tensor,
    tied: bool,
) -> None:
    """One fused decode step in place on ``state`` ``(slots, H, P, N)`` (any strides).

    ``src``/``dst``: ``(R,)`` int32/int64 slots (any stride) or None (slot ``r``); a pad/null
    source skips the request (its ``out`` rows untouched), a pad/null destination is not
    written. ``x``, ``dt``, ``z``: ``(R, H, P)``; ``dt_bias``, ``D``: ``(H, P)``; ``A``:
    ``(H, P, N)``; ``B``, ``C``: ``(R, G, N)``; ``out``: ``(R, H, P)`` fp32, written in place.
    Any strides (zero included): with ``tied``, ``dt``/``dt_bias``/``A`` are read at
    ``p = n = 0`` only.
    """
    assert _lib is not None
    R, H, P = x.shape
    N = state.shape[-1]
    G = B.shape[1]
    x, dt, A = _f32(x), _f32(dt), _f32(A)
    B, C = _row_major_last(B), _row_major_last(C)
    dtb = _f32(dt_bias) if dt_bias is not None else None
    Df = _f32(D) if D is not None else None
    zf = _f32(z) if z is not None else None
    zero2, zero3 = (0, 0), (0, 0, 0)
    if src is not None and dst is not None and src.dtype != dst.dtype:
        src, dst = src.to(torch.int64), dst.to(torch.int64)
    idx = src if src is not None else dst
    idx32 = idx is not None and idx.dtype == torch.int32
    k = (ctypes.c_int64 * 29)(
        *state.stride(), *dt.stride(), *(dtb.stride() if dtb is not None else zero2),
        *A.stride(), *B.stride()[:2], *C.stride()[:2],
        *(Df.stride() if Df is not None else zero2),
        *(zf.stride() if zf is not None else zero3), *out.stride(), *x.stride(),
        src.stride(0) if src is not None else 0, dst.stride(0) if dst is not None else 0,
    )  # fmt: skip

    def opt(t: Tensor | None) -> int | None:
        return t.data_ptr() if t is not None else None

    _lib.mb_ssu(
        _p(state), _DTYPE_CODE[state.dtype], k, opt(src), opt(dst), int(idx32), pad_id,
        null_id if null_id is not None else 0, int(null_id is not None), _p(x), _p(dt),
        opt(dtb), int(softplus), _p(A), _p(B), _p(C), opt(Df), opt(zf), _p(out), R, H, P, N,
        G, int(tied), torch.get_num_threads(),
    )  # fmt: skip


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    init: Tensor | None,
    qsl: Tensor,
    cuc: Tensor,
    chunk_first: Tensor,
    want_chunks: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mamba2 SSD by recurrence (fp32). ``dt`` is already biased/softplussed/clamped; ``D`` is
    ``(H, P)``. Returns ``y (T, H, P)``, final states ``(S, H, P, N)`` and, when
    ``want_chunks``, the state after every chunk ``(nch, H, P, N)``."""
    assert _lib is not None
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    S = qsl.numel() - 1
    f32 = torch.float32
    x, dt, A, B, C = (t.to(f32).contiguous() for t in (x, dt, A, B, C))
    Df = D.to(f32).contiguous() if D is not None else None
    zf = z.to(f32).contiguous() if z is not None else None
    init_f = init.to(f32).contiguous() if init is not None else None
    q, cu, cf = (t.to(torch.int64).contiguous() for t in (qsl, cuc, chunk_first))
    y = torch.empty(T, H, P, dtype=f32)
    final = torch.empty(S, H, P, N, dtype=f32)
    chunks = torch.empty(cu.numel() - 1, H, P, N, dtype=f32) if want_chunks else None

    def opt(t: Tensor | None) -> int | None:
        return t.data_ptr() if t is not None else None

    _lib.mb_ssd_f32(
        _p(x), _p(dt), _p(A), _p(B), _p(C), opt(Df), opt(zf), opt(init_f), _p(y), _p(final),
        _p(q), _p(cu), _p(cf), opt(chunks), S, H, P, N, G, torch.get_num_threads(),
    )  # fmt: skip
    return y, final, chunks


def scan_varlen(
    u: Tensor,
    delta_bias: Tensor | None,
    softplus: bool,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta: Tensor,
    h: Tensor,
    run: Tensor,
    qsl: Tensor,
) -> None:
    """Mamba1 varlen scan in place (all fp32): ``u``, ``z``, ``delta`` ``(Dm, T)`` any strides,
    ``B``/``C`` ``(G, N, T)`` any strides, ``A`` ``(Dm, N)``, ``D``/``delta_bias`` ``(Dm,)``.
    ``dt = softplus(delta + delta_bias)`` is formed per element inside the kernel. Writes ``y``
    to ``delta`` and ``y*silu(z)`` to ``z``; ``h`` ``(S, Dm, N)`` contiguous holds the initial
    states and receives the final ones; ``run[s] == 0`` skips sequence ``s``."""
    assert _lib is not None
    Dm, T = u.shape
    G, N = B.shape[0], B.shape[1]
    assert h.is_contiguous() and int(qsl[-1]) == T
    Ac = A.to(torch.float32).contiguous()
    Df = D.reshape(-1).to(torch.float32).contiguous() if D is not None else None
    db = delta_bias.reshape(-1).to(torch.float32).contiguous() if delta_bias is not None else None
    # The kernel reads a token's B and C rows as vectors: make n the unit-stride axis.
    B = B if B.stride(1) == 1 else B.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    C = C if C.stride(1) == 1 else C.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    zs = z.stride() if z is not None else (0, 0)
    k = torch.tensor(
        [*u.stride(), *zs, *delta.stride(), *B.stride(), *C.stride()], dtype=torch.int64
    )
    q = qsl.to(torch.int64).contiguous()
    r = run.to(torch.uint8).contiguous()
    _lib.mb_scan_varlen(
        _p(u), db.data_ptr() if db is not None else None, int(softplus), _p(Ac), _p(B), _p(C),
        Df.data_ptr() if Df is not None else None, z.data_ptr() if z is not None else None,
        _p(delta), _p(h), _p(r), _p(q), _p(k), q.numel() - 1, Dm, N, G,
        torch.get_num_threads(),
    )  # fmt: skip
