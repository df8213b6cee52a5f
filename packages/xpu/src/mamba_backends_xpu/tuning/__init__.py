"""Intel tuning tables of the shared Triton kernels (``<op>.json``; device ``xpu:default``),
registered under the entry-point group ``mamba_backends.tuning`` as ``xpu``. Every op that has
a table in the Triton package has one here.
"""
