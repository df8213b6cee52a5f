"""vLLM attention backends for the routed mamba layers (imported by vLLM, through class paths).

vLLM resolves ``MambaAttentionBackendEnum.<member>.get_class()`` to these classes once
:func:`mamba_backends_vllm.register` has overridden the members. Each one subclasses vLLM's own
backend, and its builder sets ``metadata_cls`` to a subclass of the metadata class that the layer
asserts (``isinstance(md, Mamba2AttentionMetadata)`` holds), so the layer code runs unchanged.
The metadata carries ``mamba_backend``: the name of the mamba-backends backend serving the layer.

This module imports vLLM; it is never imported by :func:`register` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.v1.attention.backends.gdn_attn import (
    GDNAttentionBackend,
    GDNAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.mamba1_attn import (
    Mamba1AttentionBackend,
    Mamba1AttentionMetadata,
    Mamba1AttentionMetadataBuilder,
)
from vllm.v1.attention.backends.mamba2_attn import (
    Mamba2AttentionBackend,
    Mamba2AttentionMetadata,
    Mamba2AttentionMetadataBuilder,
)
from vllm.v1.attention.backends.short_conv_attn import (
    ShortConvAttentionBackend,
    ShortConvAttentionMetadata,
    ShortConvAttentionMetadataBuilder,
)

from mamba_backends_vllm import _plugin


class _Tagged:
    """Mixin: the routed backend's name, read from the plugin's routing table."""

    mamba_type: str = ""

    @property
    def mamba_backend(self) -> str:
        return _plugin.backend_name_for(self.mamba_type)


# --- mamba1 ---------------------------------------------------------------------------------


@dataclass
class RoutedMamba1AttentionMetadata(_Tagged, Mamba1AttentionMetadata):
    """``Mamba1AttentionMetadata`` served by a mamba-backends backend."""

    mamba_type = "mamba1"


class RoutedMamba1AttentionMetadataBuilder(Mamba1AttentionMetadataBuilder):
    metadata_cls = RoutedMamba1AttentionMetadata

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plugin.log_once()  # every process that runs the model (forked workers included)


class RoutedMamba1AttentionBackend(Mamba1AttentionBackend):
    """vLLM's ``MAMBA1`` backend with mamba-backends kernels behind the layer."""

    @staticmethod
    def get_builder_cls() -> type[RoutedMamba1AttentionMetadataBuilder]:
        return RoutedMamba1AttentionMetadataBuilder


# --- mamba2 ---------------------------------------------------------------------------------


@dataclass
class RoutedMamba2AttentionMetadata(_Tagged, Mamba2AttentionMetadata):
    """``Mamba2AttentionMetadata`` served by a mamba-backends backend."""

    mamba_type = "mamba2"


class RoutedMamba2AttentionMetadataBuilder(Mamba2AttentionMetadataBuilder):
    metadata_cls = RoutedMamba2AttentionMetadata

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plugin.log_once()  # every process that runs the model (forked workers included)


class RoutedMamba2AttentionBackend(Mamba2AttentionBackend):
    """vLLM's ``MAMBA2`` backend with mamba-backends kernels behind the layer."""

    @staticmethod
    def get_builder_cls() -> type[RoutedMamba2AttentionMetadataBuilder]:
        return RoutedMamba2AttentionMetadataBuilder


# --- short conv -----------------------------------------------------------------------------


@dataclass
class RoutedShortConvAttentionMetadata(_Tagged, ShortConvAttentionMetadata):
    """``ShortConvAttentionMetadata`` served by a mamba-backends backend."""

    mamba_type = "short_conv"


class RoutedShortConvAttentionMetadataBuilder(ShortConvAttentionMetadataBuilder):
    metadata_cls = RoutedShortConvAttentionMetadata

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plugin.log_once()  # every process that runs the model (forked workers included)


class RoutedShortConvAttentionBackend(ShortConvAttentionBackend):
    """vLLM's ``SHORT_CONV`` backend with mamba-backends kernels behind the layer."""

    @staticmethod
    def get_builder_cls() -> type[RoutedShortConvAttentionMetadataBuilder]:
        return RoutedShortConvAttentionMetadataBuilder


# --- gated delta net ------------------------------------------------------------------------
# GDNAttentionMetadataBuilder builds GDNAttentionMetadata directly (no metadata_cls hook), so
# the metadata stays vLLM's; the layer (mamba_backends_vllm.gdn) asks the plugin for its ops.


class RoutedGDNAttentionMetadataBuilder(GDNAttentionMetadataBuilder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plugin.log_once()  # every process that runs the model (forked workers included)


class RoutedGDNAttentionBackend(GDNAttentionBackend):
    """vLLM's ``GDN_ATTN`` backend; the routed GDN layer runs mamba-backends ops."""

    @staticmethod
    def get_builder_cls() -> type[RoutedGDNAttentionMetadataBuilder]:
        return RoutedGDNAttentionMetadataBuilder


#: Our backend class per ``MambaAttentionBackendEnum`` member (the class paths registered).
BACKENDS: dict[str, type] = {
    "MAMBA1": RoutedMamba1AttentionBackend,
    "MAMBA2": RoutedMamba2AttentionBackend,
    "SHORT_CONV": RoutedShortConvAttentionBackend,
    "GDN_ATTN": RoutedGDNAttentionBackend,
}
