"""Every manifest seam resolves in the installed vLLM, or the test names the one that moved."""

from __future__ import annotations

import ast
import importlib
import inspect
from typing import Any

import pytest

pytest.importorskip("vllm")

from mamba_backends_vllm import _plugin, seams


def _resolve(seam: seams.Seam) -> Any:
    try:
        obj: Any = importlib.import_module(seam.module)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"seam moved: module {seam.module} does not import ({e}); used for: {seam.why}")
    for part in seam.symbol.split("."):
        if not hasattr(obj, part):
            pytest.fail(
                f"seam moved: {seam.name} is missing (no {part!r}); used for: {seam.why} "
                f"(verified on vLLM {seam.versions})"
            )
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("seam", seams.all_seams(), ids=lambda s: s.name)
def test_seam_resolves(seam: seams.Seam) -> None:
    _resolve(seam)


@pytest.mark.parametrize("route", seams.ROUTES, ids=lambda r: r.mamba_type)
def test_route_layer_reports_its_enum_member(route: seams.KernelRoute) -> None:
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    layer = _resolve(seams.Seam(route.layer_module, route.layer_class, "layer"))
    member = MambaAttentionBackendEnum[route.enum_member]
    prop = inspect.getattr_static(layer, "mamba_type", None)
    assert prop is not None, f"seam moved: {route.layer_class}.mamba_type"
    src = inspect.getsource(prop.fget)
    assert f"MambaAttentionBackendEnum.{route.enum_member}" in src, (
        f"seam moved: {route.layer_class}.mamba_type no longer returns {member}"
    )


def _call_sites(module: Any, name: str) -> list[ast.Call]:
    tree = ast.parse(inspect.getsource(module))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


@pytest.mark.parametrize("route", seams.active_routes(), ids=lambda r: r.mamba_type)
def test_our_ops_accept_every_call_site(route: seams.KernelRoute) -> None:
    """Each rebound kernel binds the arguments of every call site in the layer module."""
    from mamba_backends import get_mamba_backend

    mod = importlib.import_module(route.layer_module)
    ops = get_mamba_backend(route.mamba_type).ops()
    for sym, op in route.kernels:
        calls = _call_sites(mod, sym)
        assert calls, f"seam moved: {route.layer_module} no longer calls {sym}"
        sig = inspect.signature(getattr(ops, op))
        for call in calls:
            args = [None] * len(call.args)
            kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
            try:
                sig.bind(*args, **kwargs)
            except TypeError as e:
                pytest.fail(f"{route.layer_module}:{sym} (line {call.lineno}) -> {op}{sig}: {e}")


@pytest.mark.parametrize("route", seams.active_routes(), ids=lambda r: r.mamba_type)
def test_attention_backends_subclass_vllm(route: seams.KernelRoute) -> None:
    from mamba_backends_vllm import attention

    module, backend, meta, _builder = route.vllm_backend
    theirs = importlib.import_module(module)
    ours: Any = attention.BACKENDS[route.enum_member]
    assert _plugin.ATTENTION_BACKENDS[route.enum_member] == f"{ours.__module__}.{ours.__name__}"
    assert issubclass(ours, getattr(theirs, backend))
    assert ours.get_name() == getattr(theirs, backend).get_name()
    if route.tag_metadata:
        md_cls = ours.get_builder_cls().metadata_cls
        assert issubclass(md_cls, getattr(theirs, meta)), "layers assert isinstance(md, <vLLM cls>)"
    assert issubclass(ours.get_builder_cls(), getattr(theirs, _builder))


def test_manifest_covers_every_routed_type() -> None:
    assert {r.enum_member for r in seams.active_routes()} == set(_plugin.ATTENTION_BACKENDS)
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

    members = {m.name for m in MambaAttentionBackendEnum} - {"CUSTOM"}
    assert {r.enum_member for r in seams.ROUTES} <= members


@pytest.mark.parametrize(
    "route", [r for r in seams.active_routes() if r.oot_layer], ids=lambda r: r.mamba_type
)
def test_oot_layers_subclass_the_in_tree_layer(route: seams.KernelRoute) -> None:
    layer = _resolve(seams.Seam(route.layer_module, route.layer_class, "layer"))
    assert route.oot_layer is not None
    module, _, name = route.oot_layer.partition(":")
    oot = getattr(importlib.import_module(module), name)
    assert issubclass(oot, layer) and oot is not layer


def test_mamba_mixer_out_proj_seam() -> None:
    """RoutedMambaMixer hooks ``self.out_proj``: it must still be what forward_impl calls."""
    from vllm.model_executor.layers.mamba.mamba_mixer import MambaMixer

    assert "self.out_proj = " in inspect.getsource(MambaMixer.__init__)
    assert "self.out_proj(" in inspect.getsource(MambaMixer.forward_impl)


@pytest.mark.parametrize(
    "route", [r for r in seams.ROUTES if r.layer_ops], ids=lambda r: r.mamba_type
)
def test_layer_ops_exist_in_the_backend(route: seams.KernelRoute) -> None:
    from mamba_backends import get_mamba_backend

    ops = get_mamba_backend(route.mamba_type).ops()
    for op in route.layer_ops:
        assert callable(getattr(ops, op)), op


def test_gdn_metadata_fields_and_layer_attrs() -> None:
    """The GDN layer reads these GDNAttentionMetadata fields and layer attributes."""
    import dataclasses

    from vllm.model_executor.layers.mamba.gdn.qwen_gdn_linear_attn import (
        QwenGatedDeltaNetAttention,
    )
    from vllm.v1.attention.backends.gdn_attn import GDNAttentionMetadata

    fields = {f.name for f in dataclasses.fields(GDNAttentionMetadata)}
    missing = set(seams.GDN_METADATA_FIELDS) - fields
    assert not missing, f"seam moved: GDNAttentionMetadata lacks {sorted(missing)}"
    init = inspect.getsource(QwenGatedDeltaNetAttention.__init__)
    for attr in seams.GDN_LAYER_ATTRS:
        assert f"self.{attr} = " in init, f"seam moved: QwenGatedDeltaNetAttention.{attr}"
    # forward_cpu is what the layer binds as its CPU forward (our override is reached).
    assert "self._forward_method = self.forward_cpu" in init
    # the in-tree CPU core still refuses fp32 (why the plugin matters for fp32 GDN)
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    assert "torch.bfloat16" in inspect.getsource(gdn_attention.cpu_gdn_attention_core)
