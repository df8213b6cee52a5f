"""Without a GPU, run the Triton kernels in Triton's interpreter on CPU tensors.

``TRITON_INTERPRET`` must be set before triton decorates the kernels (at import of
``mamba_backends_triton.ops``) and before the backends are imported (they declare the
interpreter's devices and dtypes), so it is set here, before any test module is collected.
An explicit ``TRITON_INTERPRET`` in the environment is left alone.
"""

from __future__ import annotations

import os

import torch


def _gpu_present() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


if "TRITON_INTERPRET" not in os.environ and not _gpu_present():
    os.environ["TRITON_INTERPRET"] = "1"
