"""The conformance kit (mamba_backends.testing) on the CPU backends: the one-line vendor usage."""

from mamba_backends.testing import conformance_tests

TestCpuConformance = conformance_tests(
    [
        "mamba_backends_cpu.backends.CpuMamba1Backend",
        "mamba_backends_cpu.backends.CpuMamba2Backend",
        "mamba_backends_cpu.backends.CpuShortConvBackend",
        "mamba_backends_cpu.backends.CpuGDNBackend",
        "mamba_backends_cpu.backends.CpuLinearAttentionBackend",
    ]
)
