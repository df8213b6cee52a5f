"""NVIDIA tuning tables of the shared Triton kernels (``<op>.json``; devices ``cuda:sm80``,
``cuda:sm90``, ``cuda:sm100``, ``cuda:default``), registered under the entry-point group
``mamba_backends.tuning`` as ``cuda``. Devices without an entry here fall back to the Triton
package's ``default`` table.
"""
