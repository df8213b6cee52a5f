"""The benchmark rows, as data: op, mamba type, shape (from real models), baselines, dtype.

Tables are keyed by device type (``"cpu"``; accelerators fall back to ``"gpu"``) and by size
(``"full"``, ``"quick"`` for CI smoke). Shapes:

- Mamba2 130M-class layer (CPU): H=24, P=64, N=128, G=1, conv dim 1792 (= 1536 + 2*128), W=4;
  prefill T=2048 as 4 sequences of 512, SSD chunk 256. Mamba2-2.7B (GPU): H=80.
- Mamba1 130M-class: d_inner=1536, N=16.
- LFM2-1.2B-like short conv: hidden 2048, L_cache 3.
- Qwen3-Next GDN: H=4, HV=8, K=V=128 on CPU (a tensor-parallel slice of H=16, HV=32), full on GPU.
- Lightning (MiniMax / Bailing-linear): H=64, D=128 on GPU; on CPU a CPU-sized H=8, D=128 at
  T=256, because the only CPU baseline is the spec (a Python loop) and H=64 would take minutes.
- Decode: batch 32, and a batch ``"l3"`` whose state pool exceeds 64 MiB (2x a 32 MiB L3).

Baselines per row: ``"vllm"`` (the op vLLM-CPU's layer calls), ``"vllm-cpp"`` (vLLM-CPU's
C++ conv that its GDN layer uses: bf16, W=4), ``"hf"`` (transformers' Qwen3-Next torch GDN),
``"torch"`` (our own backend on its PyTorch path, native kernels off), ``"spec"`` (the
executable spec: small shapes only, it is a Python loop), ``"loop"`` (a per-token Python
loop, Mamba1 prefill only); on accelerators ``"vllm-triton"`` and ``"fla"`` (see
:mod:`mamba_backends.bench.gpu_baselines`), and rows tagged ``"roofline"`` also time a copy of
the bytes a prefill call moves. Every row also reports the best measured baseline (``ours/best``;
the spec and the loop count only when nothing stronger ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class CaseSpec:
    """One row of a table (before dtype expansion): ``op`` of ``mamba_type`` at ``params``."""

    op: str
    mamba_type: str
    params: dict[str, Any]
    baselines: tuple[str, ...]
    dtype: str = "bfloat16"
    model: str = ""
    note: str = ""
    tags: tuple[str, ...] = field(default=())


def shape_label(spec: CaseSpec, batch: int, state_bytes: int) -> str:
    """``model: k=v ...`` with sequences as ``T=4x512`` and a resolved decode batch."""
    parts = []
    for k, v in spec.params.items():
        if k == "seqlens":
            lens = tuple(v)
            same = all(n == lens[0] for n in lens)
            parts.append(f"T={len(lens)}x{lens[0]}" if same else f"T={'+'.join(map(str, lens))}")
        elif k == "batch":
            parts.append(f"B={batch}")
        elif k == "state_dtype":
            parts.append(f"state={str(v).removeprefix('torch.')}")
        else:
            parts.append(f"{k}={v}")
    if state_bytes >= 2**20:
        parts.append(f"({state_bytes / 2**20:.0f} MiB states)")
    label = " ".join(parts)
    return f"{spec.model}: {label}" if spec.model else label


_M2 = {"H": 24, "P": 64, "N": 128, "G": 1}
_PREFILL = (512, 512, 512, 512)
_SPEC_T = (64, 64)
_GDN = {"H": 4, "HV": 8, "K": 128, "V": 128}

_CPU_FULL: tuple[CaseSpec, ...] = (
    # Mamba2 130M-class layer, prefill T=2048 as 4x512.
    CaseSpec("causal_conv1d_fn", "mamba2", {"dim": 1792, "W": 4, "seqlens": _PREFILL},
             ("vllm", "vllm-cpp", "torch"), model="mamba2-130m conv"),
    CaseSpec("mamba_chunk_scan_combined_varlen", "mamba2", {**_M2, "chunk": 256,
             "seqlens": _PREFILL}, ("vllm", "torch"), model="mamba2-130m ssd"),
    CaseSpec("selective_scan_fn", "mamba1", {"dim": 1536, "N": 16, "seqlens": _PREFILL},
             ("vllm", "torch", "loop"), model="mamba-130m scan"),
    # Decode: fp32 states, batch 32 and a batch whose states exceed the L3.
    CaseSpec("selective_state_update", "mamba2", {**_M2, "batch": 32}, ("vllm", "torch"),
             model="mamba2-130m ssu"),
    CaseSpec("selective_state_update", "mamba2", {**_M2, "batch": "l3"}, ("vllm", "torch"),
             model="mamba2-130m ssu"),
    CaseSpec("causal_conv1d_update", "mamba2", {"dim": 1792, "W": 4, "batch": 32},
             ("vllm", "vllm-cpp", "torch"), model="mamba2-130m conv"),
    CaseSpec("causal_conv1d_update", "mamba2", {"dim": 1792, "W": 4, "batch": "l3"},
             ("vllm", "vllm-cpp", "torch"), model="mamba2-130m conv"),
    # LFM2-1.2B-like short conv.
    CaseSpec("causal_conv1d_fn", "short_conv", {"dim": 2048, "W": 3, "seqlens": _PREFILL},
             ("vllm", "torch"), model="lfm2-1.2b shortconv"),
    CaseSpec("causal_conv1d_update", "short_conv", {"dim": 2048, "W": 3, "batch": 32},
             ("vllm", "torch"), model="lfm2-1.2b shortconv"),
    # Qwen3-Next GDN (bf16: vLLM-CPU's GDN is bf16 only); its conv dim is 2*H*K + HV*V.
    CaseSpec("causal_conv1d_fn", "gdn", {"dim": 2048, "W": 4, "seqlens": (2048,)},
             ("vllm", "vllm-cpp", "torch"), model="qwen3-next gdn conv"),
    CaseSpec("causal_conv1d_update", "gdn", {"dim": 2048, "W": 4, "batch": 32},
             ("vllm", "vllm-cpp", "torch"), model="qwen3-next gdn conv"),
    CaseSpec("chunk_gated_delta_rule", "gdn", {**_GDN, "seqlens": (2048,)},
             ("vllm", "hf", "torch"), model="qwen3-next gdn", note="vLLM-CPU reference 5.75 ms"),
    CaseSpec("fused_recurrent_gated_delta_rule", "gdn", {**_GDN, "batch": 32},
             ("vllm", "hf", "torch"), model="qwen3-next gdn",
             note="vLLM fuses the gating into its call"),
    CaseSpec("chunk_gated_delta_rule", "gdn", {**_GDN, "seqlens": (2048,)}, ("hf", "torch"),
             dtype="float32", model="qwen3-next gdn", note="fp32: vLLM-CPU refuses it"),
    # Lightning, CPU-sized (see the module docstring), against the spec.
    CaseSpec("lightning_attention", "linear_attention", {"B": 1, "H": 8, "D": 128, "T": 256},
             ("spec",), dtype="float32", model="lightning (CPU-sized)"),
    CaseSpec("lightning_attention", "linear_attention", {"B": 1, "H": 8, "D": 128, "T": 256},
             ("spec",), model="lightning (CPU-sized)",
             note="bf16: products per ISA (tuning)"),
    CaseSpec("linear_decode_forward", "linear_attention", {"H": 8, "D": 128, "batch": 32},
             ("spec",), dtype="float32", model="lightning (CPU-sized)"),
    # The spec at small T (it is a Python loop), fp32; GDN fp32 has no vLLM-CPU baseline.
    CaseSpec("causal_conv1d_fn", "mamba2", {"dim": 1792, "W": 4, "seqlens": _SPEC_T},
             ("spec",), dtype="float32", model="mamba2-130m conv, small T for spec"),
    CaseSpec("mamba_chunk_scan_combined_varlen", "mamba2", {**_M2, "chunk": 256,
             "seqlens": _SPEC_T}, ("spec",), dtype="float32", model="mamba2-130m ssd, small T"),
    CaseSpec("selective_scan_fn", "mamba1", {"dim": 1536, "N": 16, "seqlens": _SPEC_T},
             ("spec",), dtype="float32", model="mamba-130m scan, small T"),
    CaseSpec("selective_state_update", "mamba2", {**_M2, "batch": 4}, ("spec",),
             dtype="float32", model="mamba2-130m ssu, small B"),
    CaseSpec("causal_conv1d_update", "mamba2", {"dim": 1792, "W": 4, "batch": 4}, ("spec",),
             dtype="float32", model="mamba2-130m conv, small B"),
    CaseSpec("chunk_gated_delta_rule", "gdn", {**_GDN, "seqlens": _SPEC_T}, ("spec",),
             dtype="float32", model="qwen3-next gdn, small T"),
    CaseSpec("fused_recurrent_gated_delta_rule", "gdn", {**_GDN, "batch": 4}, ("spec",),
             dtype="float32", model="qwen3-next gdn, small B"),
)  # fmt: skip

_QM2 = {"H": 4, "P": 16, "N": 16, "G": 1}
_QT = (16, 16)
_QGDN = {"H": 1, "HV": 2, "K": 128, "V": 128}  # vLLM-CPU GDN needs K=V=128
_ALL = ("vllm", "torch", "spec")

#: Tiny shapes, every baseline at once (CI smoke: seconds, not minutes).
_CPU_QUICK: tuple[CaseSpec, ...] = (
    CaseSpec("causal_conv1d_fn", "mamba2", {"dim": 64, "W": 4, "seqlens": _QT},
             (*_ALL, "vllm-cpp")),
    CaseSpec("mamba_chunk_scan_combined_varlen", "mamba2", {**_QM2, "chunk": 8,
             "seqlens": _QT}, _ALL),
    CaseSpec("selective_scan_fn", "mamba1", {"dim": 64, "N": 8, "seqlens": _QT},
             (*_ALL, "loop")),
    CaseSpec("selective_state_update", "mamba2", {**_QM2, "batch": 4}, _ALL),
    CaseSpec("causal_conv1d_update", "mamba2", {"dim": 64, "W": 4, "batch": 4},
             (*_ALL, "vllm-cpp")),
    CaseSpec("causal_conv1d_fn", "short_conv", {"dim": 64, "W": 3, "seqlens": _QT}, _ALL),
    CaseSpec("causal_conv1d_update", "short_conv", {"dim": 64, "W": 3, "batch": 4}, _ALL),
    CaseSpec("chunk_gated_delta_rule", "gdn", {**_QGDN, "seqlens": _QT}, (*_ALL, "hf")),
    CaseSpec("fused_recurrent_gated_delta_rule", "gdn", {**_QGDN, "batch": 4}, (*_ALL, "hf")),
    CaseSpec("lightning_attention", "linear_attention", {"B": 1, "H": 2, "D": 32, "T": 32,
             "block": 16}, ("spec",), dtype="float32"),
    CaseSpec("linear_decode_forward", "linear_attention", {"H": 2, "D": 32, "batch": 4},
             ("spec",), dtype="float32"),
)  # fmt: skip

_M2_27B = {"H": 80, "P": 64, "N": 128, "G": 1}
_GPU_PREFILL = (1024,) * 8
_QWEN = {"H": 16, "HV": 32, "K": 128, "V": 128}
_VT, _FLA = "vllm-triton", "fla"

# fmt: off


def _gpu_rows(m2: dict[str, int], conv: int, m1: int, gdn: dict[str, int], la: dict[str, int],
              seqlens: tuple[int, ...], batch: int, chunk: int) -> tuple[CaseSpec, ...]:
    """The accelerator rows (issues 9 and 10), at the given sizes: bf16 inputs, fp32 states.
    ``roofline`` rows also time a torch copy of the bytes a prefill call must move."""
    n_seq, t_seq = len(seqlens), seqlens[0]
    return (
        CaseSpec("causal_conv1d_fn", "mamba2", {"dim": conv, "W": 4, "seqlens": seqlens},
                 (_VT, _FLA), model="mamba2-2.7b conv", tags=("roofline",)),
        CaseSpec("causal_conv1d_update", "mamba2", {"dim": conv, "W": 4, "batch": batch},
                 (_VT,), model="mamba2-2.7b conv"),
        CaseSpec("selective_state_update", "mamba2", {**m2, "batch": batch}, (_VT,),
                 model="mamba2-2.7b ssu"),
        CaseSpec("selective_state_update", "mamba1", {"form": "mamba1", "dim": m1, "N": 16,
                 "batch": batch}, (_VT,), model="mamba-2.8b ssu"),
        CaseSpec("mamba_chunk_scan_combined_varlen", "mamba2", {**m2, "chunk": chunk,
                 "seqlens": seqlens}, (_VT,), model="mamba2-2.7b ssd"),
        CaseSpec("selective_scan_fn", "mamba1", {"dim": m1, "N": 16, "seqlens": seqlens},
                 (_VT,), model="mamba-2.8b scan", tags=("roofline",)),
        CaseSpec("chunk_gated_delta_rule", "gdn", {**gdn, "seqlens": seqlens}, (_FLA,),
                 model="qwen3-next gdn"),
        CaseSpec("fused_recurrent_gated_delta_rule", "gdn", {**gdn, "batch": batch}, (_FLA,),
                 model="qwen3-next gdn"),
        CaseSpec("lightning_attention", "linear_attention", {"B": n_seq, **la, "T": t_seq,
                 "block": min(256, t_seq)}, (_FLA, _VT), model="minimax lightning"),
        CaseSpec("linear_decode_forward", "linear_attention", {**la, "batch": batch}, (_VT,),
                 model="minimax lightning"),
    )


#: Accelerators (DESIGN section 7; issues 9 and 10): T=8192 as 8x1024, decode batch 256,
#: Mamba2-2.7B (conv dim 5120 + 2*128), Mamba1 dim 5120, Qwen3-Next GDN, lightning H=64 D=128.
#: Baselines: vLLM's Triton ops and fla-core (:mod:`mamba_backends.bench.gpu_baselines`).
_GPU_FULL = _gpu_rows(_M2_27B, 5120 + 256, 5120, _QWEN, {"H": 64, "D": 128}, _GPU_PREFILL,
                      256, 256)
#: The same rows at tiny sizes: the GPU script's dry run (Triton's interpreter, on CPU).
_GPU_TINY = _gpu_rows({"H": 2, "P": 16, "N": 16, "G": 1}, 32, 32,
                      {"H": 1, "HV": 2, "K": 16, "V": 16}, {"H": 2, "D": 64}, (16, 16), 4, 8)
# fmt: on

#: platform -> size -> rows (``"tiny"``: the GPU rows at dry-run sizes).
CASES: dict[str, dict[str, tuple[CaseSpec, ...]]] = {
    "cpu": {"full": _CPU_FULL, "quick": _CPU_QUICK},
    "gpu": {"full": _GPU_FULL, "quick": _CPU_QUICK, "tiny": _GPU_TINY},
}


def table_for(device: str | torch.device, quick: bool) -> tuple[CaseSpec, ...]:
    """The rows for the device the bench runs on (``"cpu"``, ``"cuda:1"``, ...), whatever the
    platform is called: a platform without kernels of its own (``reference``) on a CPU gets
    the CPU shapes. Accelerators without a table of their own use ``"gpu"``."""
    device_type = torch.device(device).type
    key = device_type if device_type in CASES else "gpu"
    return CASES[key]["quick" if quick else "full"]
