"""Out-of-tree layer subclasses (registered with ``PluggableLayer.register_oot``).

Imported only once vLLM has imported the in-tree layer module (from the plugin's import hook).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.mamba.mamba_mixer import MambaMixer
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


def _contiguous_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


class RoutedMambaMixer(MambaMixer):
    """``MambaMixer`` whose ``out_proj`` input is made contiguous.

    ``forward_impl`` hands ``out_proj`` a transposed ``(T, dim)`` view; after a mixed
    prefill+decode step (``torch.cat`` of the two outputs) its last stride is ``T``, which vLLM's
    CPU oneDNN GEMM rejects (``a.stride(-1) == 1``). CUDA GEMMs accept it, and vLLM never ran
    Mamba1 on CPU, so this never showed. A forward pre-hook copies only when needed
    (``contiguous()`` is free on a contiguous tensor); the layer code itself is vLLM's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out_proj.register_forward_pre_hook(_contiguous_input)
