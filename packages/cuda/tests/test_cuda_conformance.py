"""The conformance kit on every backend the CUDA platform claims, on an NVIDIA GPU.

Skips without one (no usable device among the backends' devices). On a GPU it runs every
declared dtype, bf16 included; the same kernels are covered without a GPU by the Triton
package's interpreter run (``nox -s test-triton``).
"""

from mamba_backends.testing import conformance_tests
from mamba_backends_cuda.platform import CudaPlatform

TestCudaConformance = conformance_tests(CudaPlatform())
