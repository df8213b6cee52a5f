"""The ``MambaBackend`` contract: what a backend is, and how its kernels are reached.

A backend is data plus functions. It names its mamba type, the dtypes and devices it supports,
its metadata builder, and one module that holds its kernels under vLLM's op names. It holds no
hidden global state: :meth:`MambaBackend.ops` imports the op module lazily and caches nothing but
that module object.

By default the kernels are handed out behind ``torch.library`` custom ops
(:mod:`mamba_backends.library`: opaque, correct nodes under ``torch.compile``, as vLLM needs);
``ops(raw=True)`` or ``MAMBA_BACKENDS_CUSTOM_OPS=0`` hands out the module's functions themselves.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, ClassVar

import torch

from mamba_backends.library import custom_op_wrapper, custom_ops_mode
from mamba_backends.metadata import MambaMetadataBuilder
from mamba_backends.types import MAMBA_TYPES

#: The ops each mamba type needs, under vLLM's names (vLLM 0.32 signatures and semantics).
OP_NAMES: dict[str, tuple[str, ...]] = {
    "mamba1": (
        "causal_conv1d_fn",
        "causal_conv1d_update",
        "selective_scan_fn",
        "selective_state_update",
    ),
    "mamba2": (
        "causal_conv1d_fn",
        "causal_conv1d_update",
        "selective_state_update",
        "mamba_chunk_scan_combined_varlen",
        # prefix caching (vLLM's align mode): the mid-prefill checkpoint into its block
        "store_prefill_checkpoint",
    ),
    "short_conv": ("causal_conv1d_fn", "causal_conv1d_update"),
    "gdn": (
        "causal_conv1d_fn",
        "causal_conv1d_update",
        "fused_gdn_gating",
        "chunk_gated_delta_rule",
        "fused_recurrent_gated_delta_rule",
    ),
    "linear_attention": ("lightning_attention", "linear_decode_forward"),
}
assert set(OP_NAMES) == set(MAMBA_TYPES)

#: Ops of :data:`OP_NAMES` that a backend may leave out: vLLM's own kernel then stays in place
#: (the plugin routes them only where the backend has them), and the conformance kit skips
#: them for that backend. ``store_prefill_checkpoint`` replaces a Triton-only vLLM kernel, so
#: only backends for devices where vLLM's Triton does not run need it.
OPTIONAL_OPS: frozenset[str] = frozenset({"store_prefill_checkpoint"})


class MambaOps:
    """A backend's kernels, reached by vLLM's op names: ``Backend.ops().selective_state_update``.

    Only the ops of the backend's mamba type are exposed. An op that the backend's module does
    not provide raises ``NotImplementedError`` naming the backend and the op. ``mode`` is
    ``"trace"`` (the default of :meth:`MambaBackend.ops`: each op is its ``torch.library``
    custom-op wrapper, registered on first access), ``"always"`` (wrappers that dispatch in
    eager mode too) or ``"off"`` (the module's functions). The module is read at every access,
    so a function replaced in it is seen.
    """

    def __init__(
        self, backend_name: str, names: tuple[str, ...], module: ModuleType, mode: str = "off"
    ) -> None:
        self._backend_name = backend_name
        self._names = names
        self._module = module
        self._mode = mode
        # op -> (the module's function, its wrapper): a lookup costs one identity check, and a
        # function replaced in the module gets a wrapper of its own
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    @property
    def mode(self) -> str:
        """``"trace"``, ``"always"`` or ``"off"`` (see the class docstring)."""
        return self._mode

    @property
    def names(self) -> tuple[str, ...]:
        """The op names this accessor serves."""
        return self._names

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._names:
            raise AttributeError(
                f"backend {self._backend_name!r} has no op {name!r}; its ops are: "
                f"{', '.join(self._names)}"
            )
        fn = getattr(self._module, name, None)
        if fn is None:
            raise NotImplementedError(
                f"backend {self._backend_name!r} does not implement op {name!r} "
                f"(module {self._module.__name__!r} has no such function)"
            )
        if self._mode == "off":
            return fn
        hit = self._wrapped.get(name)
        if hit is not None and hit[0] is fn:
            return hit[1]
        eager_dispatch = self._mode == "always"
        wrapper = custom_op_wrapper(self._module.__name__, name, fn, eager_dispatch=eager_dispatch)
        self._wrapped[name] = (fn, wrapper)
        return wrapper

    def implements(self, name: str) -> bool:
        """Whether the backend's module provides op ``name`` (one of :attr:`names`)."""
        return name in self._names and getattr(self._module, name, None) is not None

    def __dir__(self) -> list[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"MambaOps({self._backend_name!r}, {self._module.__name__!r})"


class MambaBackend:
    """Base class of every backend.

    Subclasses set the class attributes below. ``ops_module`` is the dotted path of a module
    that defines the kernels under vLLM's names (see :data:`OP_NAMES`).
    """

    #: Short, unique, human-readable name, e.g. ``"cpu.mamba2"``.
    name: ClassVar[str] = ""
    #: One of :data:`mamba_backends.types.MAMBA_TYPES`.
    mamba_type: ClassVar[str] = ""
    #: Other mamba types this backend may be selected for, with the ops of its own type (the
    #: seed's route: a GDN backend selected for ``linear_attention``). Empty for most backends.
    also_serves: ClassVar[tuple[str, ...]] = ()
    #: Activation dtypes the ops accept.
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    )
    #: State (cache) dtypes the ops accept.
    supported_state_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    )
    #: ``torch.device`` types the ops run on, e.g. ``("cpu",)``.
    supported_devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: Dotted path of the module that holds the ops.
    ops_module: ClassVar[str] = ""
    #: SSD chunk size the metadata builder uses (mamba2 only; None elsewhere).
    chunk_size: ClassVar[int | None] = None
    #: Environment under which the ops take their PyTorch paths instead of native kernels
    #: (the bench's ``torch`` baseline: our own fallback, side by side); empty when the
    #: backend has no separate PyTorch path.
    pytorch_path_env: ClassVar[dict[str, str]] = {}

    _ops_cache: ClassVar[dict[type, MambaOps]] = {}  # in the mode MAMBA_BACKENDS_CUSTOM_OPS says
    _raw_ops_cache: ClassVar[dict[type, MambaOps]] = {}  # ops(raw=True)

    @classmethod
    def get_name(cls) -> str:
        """The backend's short name."""
        return cls.name or cls.__qualname__

    @classmethod
    def qualname(cls) -> str:
        """The dotted path that resolves to this class."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def get_builder_cls(cls) -> type[MambaMetadataBuilder]:
        """The metadata builder class for this backend (prefill/decode split, chunk metadata)."""
        return MambaMetadataBuilder

    @classmethod
    def op_names(cls) -> tuple[str, ...]:
        """The vLLM op names this backend serves (those of its mamba type)."""
        return OP_NAMES[cls.mamba_type]

    @classmethod
    def ops(cls, raw: bool = False) -> MambaOps:
        """The backend's kernels under vLLM's op names (the one documented accessor).

        Example: ``get_mamba_backend("mamba2").ops().selective_state_update(...)``.

        Each op is a wrapper with the spec's signature around a ``torch.library`` custom op
        (``torch.ops.mamba_backends.*``, registered on first access): traced, it is one opaque
        node, so ``torch.compile(fullgraph=True)`` and CUDA graphs see through no kernel; in
        eager mode it calls the kernel directly. With ``raw=True``, or
        ``MAMBA_BACKENDS_CUSTOM_OPS=0``, the ops module's functions are handed out as they are
        (see :mod:`mamba_backends.library` for ``MAMBA_BACKENDS_CUSTOM_OPS=always``).
        """
        mode = "off" if raw else custom_ops_mode()
        cache = MambaBackend._raw_ops_cache if raw else MambaBackend._ops_cache
        cached = cache.get(cls)
        if cached is None or cached.mode != mode:
            if not cls.ops_module:
                raise NotImplementedError(f"backend {cls.get_name()!r} declares no ops_module")
            module = importlib.import_module(cls.ops_module)
            cached = MambaOps(cls.get_name(), cls.op_names(), module, mode=mode)
            cache[cls] = cached
        return cached

    @classmethod
    def serves(cls, mamba_type: str) -> bool:
        """Whether this backend may be selected for ``mamba_type`` (its own or ``also_serves``)."""
        return mamba_type == cls.mamba_type or mamba_type in cls.also_serves

    @classmethod
    def clear_ops_cache(cls) -> None:
        """Forget every backend's cached :class:`MambaOps` (platform switches, plugin reloads)."""
        MambaBackend._ops_cache.clear()
        MambaBackend._raw_ops_cache.clear()

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """A JSON-friendly description (used by ``mamba-backends info``)."""
        return {
            "name": cls.get_name(),
            "class": cls.qualname(),
            "mamba_type": cls.mamba_type,
            "also_serves": list(cls.also_serves),
            "dtypes": [str(d).removeprefix("torch.") for d in cls.supported_dtypes],
            "devices": list(cls.supported_devices),
        }
