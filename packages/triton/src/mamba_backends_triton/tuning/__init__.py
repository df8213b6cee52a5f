"""Device-agnostic default tuning tables of the Triton kernels (``<op>.json``, device ``default``).

Registered under the entry-point group ``mamba_backends.tuning`` as ``triton``. They serve the
Triton interpreter and any device whose vendor package ships no table of its own; vendor
packages (``mamba_backends_cuda.tuning``, ...) add ``<vendor>:<arch>`` entries on top.
"""
