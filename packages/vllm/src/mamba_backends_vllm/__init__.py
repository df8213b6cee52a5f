"""mamba-backends vLLM plugin (entry point ``vllm.general_plugins``).

``pip install mamba-backends[cpu,vllm]`` makes vLLM serve Mamba1, Mamba2, LFM2 short-conv and
(on CPU) Qwen3-Next gated-delta-net layers through the backend that
:func:`mamba_backends.get_mamba_backend` selects for the current platform, with nothing in vLLM
edited. It never serves the executable spec: a layer type that no platform backend and no
explicit selection (``MAMBA_BACKENDS_VLLM_BACKENDS``) covers stays native. See the package
README and :mod:`.seams`.
"""

from __future__ import annotations

from typing import Any

from mamba_backends_vllm._plugin import DISABLE_ENV, is_supported_vllm, unregister
from mamba_backends_vllm.versions import SUPPORTED_VLLM, SUPPORTED_VLLM_RANGE

__version__ = "0.1.0"

__all__ = [
    "DISABLE_ENV",
    "SUPPORTED_VLLM",
    "SUPPORTED_VLLM_RANGE",
    "is_supported_vllm",
    "register",
    "routing_table",
    "unregister",
]


def register() -> None:
    """vLLM general-plugin hook: route the mamba layers' kernels to mamba-backends.

    Cheap and re-entrant; runs in every vLLM process. It stays native (logs once, changes
    nothing) when ``MAMBA_BACKENDS_VLLM_DISABLE=1``, when vLLM is outside the range verified
    on the platform (:data:`SUPPORTED_VLLM`), or when vLLM's platform does not map to the current
    mamba-backends platform (CPU-cpu, CUDA-cuda, ROCm-rocm, XPU-xpu). It never raises.
    """
    from mamba_backends_vllm import _plugin

    _plugin.register()


def routing_table() -> dict[str, Any]:
    """Which backend serves each mamba layer type in this process (JSON-friendly).

    Inside a vLLM process this is what :func:`register` did; elsewhere it is the plan that
    ``register`` would follow (this imports vLLM).
    """
    from mamba_backends_vllm import _plugin

    return _plugin.routing_table()
