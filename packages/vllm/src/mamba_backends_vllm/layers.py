"""Out-of-tree layer subclasses (registered with ``PluggableLayer.register_oot``).

Imported only once vLLM has imported the in-tree layer module (from the plugin's import hook).
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.mamba.short_conv import ShortConv


class RoutedShortConv(ShortConv):
    """``ShortConv`` whose CPU entry runs the kernel-agnostic body.

    In-tree, the CPU path (``forward_native``) imports vLLM's CPU conv functions at call time,
    so there is no module global to rebind. ``forward_cuda`` holds no CUDA code: it calls
    ``causal_conv1d_fn`` / ``causal_conv1d_update`` through the ``short_conv`` module globals,
    which the plugin rebinds to the selected backend's ops. Shapes: ``hidden_states`` is
    ``(T, dim)``, ``output`` is ``(T, dim)`` and is written in place.
    """

    def forward_native(self, hidden_states: torch.Tensor, output: torch.Tensor) -> None:
        self.forward_cuda(hidden_states, output)
