"""The Intel XPU platform (``torch.xpu``; IPEX is not required)."""

from __future__ import annotations

import torch

from mamba_backends.platform import Platform

#: The Triton backend per mamba type on Intel GPUs: the shared kernels through Triton-XPU
#: (the ``xpu`` backend of Intel's Triton, which ships with torch's XPU wheels), with this
#: package's tuning tables (``tuning/*.json``).
#:
#: No vendor-native backend: ``vllm-xpu-kernels`` exposes Gated DeltaNet only as one fused
#: layer op, ``torch.ops._xpu_C.gdn_attention(core_attn_out, z, projected_states_qkvz,
#: projected_states_ba, ..., conv_state, ssm_state, conv_weights, ...)``, which starts from the
#: input projections and runs conv, gating and the delta rule together. It has no op of the
#: contract's granularity (conv, gating, chunked or recurrent rule) to put behind a backend;
#: its place is the vLLM plugin's GDN core, not a backend here (see the README).
XPU_BACKENDS: dict[str, str] = {
    "mamba1": "mamba_backends_triton.backends.TritonMamba1Backend",
    "mamba2": "mamba_backends_triton.backends.TritonMamba2Backend",
    "short_conv": "mamba_backends_triton.backends.TritonShortConvBackend",
    "gdn": "mamba_backends_triton.backends.TritonGdnBackend",
    "linear_attention": "mamba_backends_triton.backends.TritonLinearAttentionBackend",
}


class XpuPlatform(Platform):
    """Intel GPUs: the shared Triton kernels through Triton-XPU."""

    name = "xpu"
    device_type = "xpu"
    is_accelerator = True

    def get_mamba_backend_cls(self, mamba_type: str, selected_backend: str | None) -> str | None:
        # An explicit selection is the user's call; the selector resolves it.
        if selected_backend is not None:
            return None
        return XPU_BACKENDS.get(mamba_type)

    def is_available(self) -> bool:
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and xpu.is_available())

    def device_name(self) -> str:
        return torch.xpu.get_device_name() if self.is_available() else "xpu (unavailable)"
