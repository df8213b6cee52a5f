"""The conformance kit on the Triton backends.

On a GPU the kit runs on it in every declared dtype. Without one (``TRITON_INTERPRET=1``, see
conftest) it runs the same kernels in Triton's interpreter on CPU tensors, where the backends
declare fp32/fp16 only (the interpreter computes bf16 wrongly), so bf16 cases are skipped.
"""

from mamba_backends.testing import conformance_tests
from mamba_backends_triton import interpreting

TestTritonConformance = conformance_tests(
    [
        "mamba_backends_triton.backends.TritonShortConvBackend",
        "mamba_backends_triton.backends.TritonMamba1Backend",
        "mamba_backends_triton.backends.TritonMamba2Backend",
        "mamba_backends_triton.backends.TritonGdnBackend",
        "mamba_backends_triton.backends.TritonLinearAttentionBackend",
    ],
    device="cpu" if interpreting() else None,
)
