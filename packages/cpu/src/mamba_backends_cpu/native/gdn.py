"""Fused C kernels for gated delta net (``csrc/gdn.c``), loaded with ctypes.

Built on first use by :mod:`._build`; when that fails or is disabled, :func:`available` is
False and the ops keep their PyTorch paths. fp32 / bf16 / fp16 tensors are read in place
through their strides (unit stride on the feature axis of ``q``, ``k``, ``v`` and the output);
all math is fp32.
"""

from __future__ import annotations

import ctypes
import itertools
from array import array

import torch
from torch import Tensor

from mamba_backends.reference.gdn import L2NORM_EPS
from mamba_backends_cpu.native import _build
from mamba_backends_cpu.tuning import cpu_config

#: The tuning table of the per-CPU tunables (``rows_max_tokens``: the rows (decode) kernel
#: runs when no sequence has more tokens than this, else the tile kernel; ``token_block``:
#: tokens the tile kernel prepares per block), in ``mamba_backends_cpu/tuning/native_gdn.json``.
TUNING_OP = "native_gdn"

DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

assert L2NORM_EPS == 1e-6  # hard-coded in the C source

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class MbGdnArgs(ctypes.Structure):
    """Mirror of ``MbGdnArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        *((n, _P) for n in ("q", "k", "v", "g", "beta", "o", "state_in", "state_out")),
        ("seq", _P),
        ("dst2d", _P),
        *((n, _I) for n in ("N", "H", "HV", "K", "V", "l2norm", "dst_mode", "ncol")),
        *((n, _I) for n in ("dq", "dk", "dv", "dg", "dbeta", "dout", "dstate_in")),
        ("dstate_out", _I),
        *((n, _I * 2) for n in ("sq", "sk", "sv", "sg")),
        ("sbeta", _I * 3),
        ("so", _I * 2),
        ("sstate_in", _I * 4),
        ("sstate_out", _I * 4),
        ("nthreads", _I),
        ("token_block", _I),
        ("check_finite", _I),
        ("scale", _F),
    ]


_pack_gdn = _build.packer(MbGdnArgs)


class MbGatingArgs(ctypes.Structure):
    """Mirror of ``MbGatingArgs`` in ``csrc/mb_args.h``."""

    _fields_ = [
        *((n, _P) for n in ("A_log", "a", "b", "dt_bias", "g", "beta_out")),
        *((n, _I) for n in ("T", "HV", "dA", "da", "db", "dd")),
        ("sa", _I * 2),
        ("sb", _I * 2),
        ("sdt_bias", _I),
        ("sA_log", _I),
        ("beta", _F),
        ("threshold", _F),
    ]


LIBRARY = _build.register(
    _build.Library(
        name="gdn",
        sources=("gdn.c", "abi.c"),
        kernels={
            "mb_gdn_rows": MbGdnArgs,
            "mb_gdn_tiles": MbGdnArgs,
            "mb_gdn_gating": MbGatingArgs,
        },
    )
)


def _lib() -> ctypes.CDLL | None:
    return _build.load(LIBRARY)


def available() -> bool:
    """Whether the native GDN kernels are built and enabled (builds them on first call)."""
    return _lib() is not None


def supported(*tensors: Tensor | None) -> bool:
    """Whether every given tensor is a CPU tensor of a dtype the kernels read."""
    return all(t is None or (t.dtype in DTYPE_CODE and t.device.type == "cpu") for t in tensors)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _code(t: Tensor | None) -> int:
    return 0 if t is None else DTYPE_CODE[t.dtype]


def _tokens(x: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` read as ``shape`` (tokens first), and its strides there: ``x`` itself when it only
    adds leading size-1 axes (vLLM's ``[1, T, ...]``: no view op, each costs microseconds),
    else a reshape."""
    if x.shape == shape:
        return x, x.stride()
    n = x.dim() - len(shape)
    if n > 0 and tuple(x.shape[n:]) == shape and all(s == 1 for s in x.shape[:n]):
        return x, x.stride()[n:]
    y = x.reshape(shape)
    return y, y.stride()


def _unit_last(x: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` as ``[tokens, heads, F]`` with a unit stride on ``F`` (no copy when possible)."""
    x, st = _tokens(x, shape)
    if st[-1] == 1 or shape[-1] == 1:
        return x, st
    y = x.reshape(shape).contiguous()
    return y, y.stride()


def gating(
    A_log: Tensor, a: Tensor, b: Tensor, dt_bias: Tensor, beta: float, threshold: float
) -> tuple[Tensor, Tensor]:
    """Fused GDN gating: ``A_log, dt_bias [HV]``, ``a, b [T, HV]``; returns ``g: [1, T, HV]``
    fp32 and ``beta: [1, T, HV]`` in ``b.dtype``."""
    lib = _lib()
    assert lib is not None
    T, HV = a.shape
    g = torch.empty(1, T, HV, dtype=torch.float32)
    bo = torch.empty(1, T, HV, dtype=b.dtype)
    args = MbGatingArgs(
        _ptr(A_log), _ptr(a), _ptr(b), _ptr(dt_bias), _ptr(g), _ptr(bo), T, HV,
        _code(A_log), _code(a), _code(b), _code(dt_bias), a.stride(), b.stride(),
        dt_bias.stride(0), A_log.stride(0), float(beta), float(threshold),
    )  # fmt: skip
    _build.call(lib.mb_gdn_gating, args)
    return g, bo


#: Up to this many sequences the table is built on host lists (tens of microseconds);
#: above it, a dozen torch ops cost less than a Python loop over the sequences.
SEQ_TABLE_LIST_MAX = 64


def seq_table(
    B: int,
    T: int,
    cu_seqlens: Tensor | None,
    ssm_state_indices: Tensor | None,
    num_accepted_tokens: Tensor | None,
    has_state: bool,
) -> tuple[Tensor | array[int], int]:
    """The ``seq: [N, 4]`` int64 table of :func:`delta_rule` (an ``array("q")`` of ``N * 4``
    up to :data:`SEQ_TABLE_LIST_MAX` sequences, else a tensor) and the longest run length.

    Row ``n``: first token (in the flattened ``B * T``), tokens to run (0 for a skipped
    sequence: empty, or a pad (< 0) / null (0) source slot when ``ssm_state_indices`` is
    given), source slot (``-1`` without states), destination slot (``-1`` when skipped or
    without states). The source slot is ``ssm_state_indices[n]`` (1-D), column
    ``num_accepted_tokens[n] - 1`` (or 0) of row ``n`` (2-D), or ``n``.
    """
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if N <= SEQ_TABLE_LIST_MAX:
        return _seq_table_lists(B, T, cu_seqlens, ssm_state_indices, num_accepted_tokens, has_state)
    i64 = torch.int64
    if cu_seqlens is None:
        starts = torch.arange(0, B * T, T, dtype=i64)
        lens = torch.full((B,), T, dtype=i64)
    else:
        cu = cu_seqlens.to(i64)
        starts, lens = cu[:-1], cu[1:] - cu[:-1]
    if ssm_state_indices is None:
        src = torch.arange(N, dtype=i64)
    elif ssm_state_indices.dim() == 1:
        src = ssm_state_indices.to(i64)
    else:
        col = torch.zeros(N, dtype=i64)
        if num_accepted_tokens is not None:
            col = num_accepted_tokens.to(i64) - 1
        src = ssm_state_indices.to(i64).gather(1, col[:, None])[:, 0]
    keep = lens > 0
    if ssm_state_indices is not None:
        keep &= src > 0
    run = lens * keep
    s = src if has_state else torch.full_like(src, -1)
    return torch.stack([starts, run, s, torch.where(keep, s, -1)], 1), int(run.max())


def _seq_table_lists(
    B: int,
    T: int,
    cu_seqlens: Tensor | None,
    ssm_state_indices: Tensor | None,
    num_accepted_tokens: Tensor | None,
    has_state: bool,
) -> tuple[Tensor | array[int], int]:
    """:func:`seq_table` for decode-sized batches, on host lists."""
    if cu_seqlens is None:
        starts = [b * T for b in range(B)]
        lens = [T] * B
    else:
        cu = cu_seqlens.tolist()
        starts, lens = cu[:-1], [b - a for a, b in itertools.pairwise(cu)]
    N = len(starts)
    if ssm_state_indices is None:
        src = list(range(N))
    elif ssm_state_indices.dim() == 1:
        src = ssm_state_indices.tolist()
    else:
        rows = ssm_state_indices.tolist()
        cols = (
            [0] * N
            if num_accepted_tokens is None
            else [c - 1 for c in num_accepted_tokens.tolist()]
        )
        src = [r[c] for r, c in zip(rows, cols, strict=True)]
    gated = ssm_state_indices is not None
    flat: list[int] = []
    max_len = 0
    for n in range(N):
        keep = lens[n] > 0 and (not gated or src[n] > 0)
        run = lens[n] if keep else 0
        max_len = max(max_len, run)
        s = src[n] if has_state else -1
        flat += (starts[n], run, s, s if keep else -1)
    return array("q", flat), max_len


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None,
    o: Tensor,
    scale: float,
    l2norm: bool,
    seq: Tensor | array[int],
    state_in: Tensor | None,
    state_out: Tensor | None,
    dst_mode: int,
    dst2d: Tensor | None,
    max_len: int,
    check_finite: bool = False,
) -> bool:
    """Run the delta-rule recurrence for every sequence, in one fused pass.

    ``q, k: [BT, H, K]``; ``v: [BT, HV, V]``; ``g: [B, T, HV]``; ``beta: [B, T, HV]`` or
    ``[B, T, HV, V]`` or None (ones); ``o: [BT, HV, V]`` written (unit stride on ``V``); q, k,
    v and o may also be given as ``[B, T, ...]`` (read in place when they merge);
    ``state_in``/``state_out``: ``[slots, HV, V, K]`` any strides (may be the same tensor);
    ``seq: [N, 4]`` int64 rows (first token, count, source slot, destination slot), see
    ``csrc/gdn.c`` for ``dst_mode`` and ``dst2d: [N, ncol]`` int64. The tile kernel runs when
    ``max_len`` exceeds the table's ``rows_max_tokens`` (:data:`TUNING_OP`), the rows kernel
    otherwise. With ``check_finite`` the kernel first reads the inputs of every token that
    runs and, on a NaN/inf (``g = -inf`` allowed), returns False having written nothing (the
    fused forms match the spec's order of operations on finite inputs only).
    """
    lib = _lib()
    assert lib is not None
    H, K = q.shape[-2], q.shape[-1]
    HV, V = v.shape[-2], v.shape[-1]
    BT = v.numel() // (HV * V) if HV * V else q.numel() // max(H * K, 1)
    q, sq = _unit_last(q, (BT, H, K))
    k, sk = _unit_last(k, (BT, H, K))
    v, sv = _unit_last(v, (BT, HV, V))
    o, so = _tokens(o, (BT, HV, V))
    assert so[-1] == 1 or V == 1
    g2, sg = _tokens(g, (BT, HV))
    b_st: tuple[int, ...] = (0, 0, 0)
    b3 = None
    if beta is not None:
        bv = V if beta.dim() == 4 else 1
        b3, bst = _tokens(beta, (BT, HV, bv))
        b_st = (bst[0], bst[1], bst[2] if bv > 1 else 0)
    cfg = cpu_config(TUNING_OP, K=K, V=V)
    if isinstance(seq, Tensor):
        n_seq, seq_ptr = seq.shape[0], seq.data_ptr()
    else:  # array('q') of N * 4 (decode batches: no torch op to build it)
        n_seq, seq_ptr = len(seq) // 4, seq.buffer_info()[0]
    args = _pack_gdn(
        _addr(q), _addr(k), _addr(v), _addr(g2), _addr(b3), _addr(o), _addr(state_in),
        _addr(state_out), seq_ptr, _addr(dst2d),
        n_seq, H, HV, K, V, int(l2norm), dst_mode,
        0 if dst2d is None else dst2d.shape[1],
        _code(q), _code(k), _code(v), _code(g2), _code(b3), _code(o), _code(state_in),
        _code(state_out), *sq[:2], *sk[:2], *sv[:2], *sg, *b_st, *so[:2],
        *((0,) * 4 if state_in is None else state_in.stride()),
        *((0,) * 4 if state_out is None else state_out.stride()), torch.get_num_threads(),
        cfg["token_block"], int(check_finite), float(scale),
    )  # fmt: skip
    fn = lib.mb_gdn_tiles if max_len > cfg["rows_max_tokens"] else lib.mb_gdn_rows
    return _build.call(fn, args, allow=(_build.NONFINITE,)) == 0
