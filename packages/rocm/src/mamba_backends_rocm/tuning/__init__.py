"""AMD tuning tables of the shared Triton kernels (``<op>.json``; devices ``hip:gfx90a``,
``hip:gfx942``, ``hip:gfx950``, ``hip:default``), registered under the entry-point group
``mamba_backends.tuning`` as ``rocm``. Every op that has a table in the Triton package has one
here; the device name comes from ``gcnArchName`` (``gfx942:sramecc+:xnack-`` -> ``hip:gfx942``).
"""
