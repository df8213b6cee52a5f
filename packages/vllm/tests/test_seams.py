"""Every manifest seam resolves in the installed vLLM, or the test names the one that moved."""

from __future__ import annotations

import ast
import importlib
import inspect
from typing import Any

import pytest

pytest.importorskip("vllm")

from mamba_backends_vllm import _plugin, seams, versions


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


def _installed() -> str:
    import vllm

    return str(vllm.__version__)


@pytest.mark.parametrize("seam", seams.all_seams(_installed()), ids=lambda s: s.name)
def test_seam_resolves(seam: seams.Seam) -> None:
    obj = _resolve(seam)
    if seam.params:
        have = inspect.signature(obj).parameters
        missing = [p for p in seam.params if p not in have and p not in ("self", "cls")]
        assert not missing, f"seam moved: {seam.name} has no parameter {missing} ({seam.why})"
    for kw in seam.call_keywords:
        calls = _call_sites(importlib.import_module(seam.module), seam.symbol)
        assert any(kw in {k.arg for k in c.keywords} for c in calls), f"{seam.name}: {kw}"


def test_installed_vllm_is_in_the_supported_range() -> None:
    assert versions.version_in(versions.SUPPORTED_VLLM_RANGE, _installed())


@pytest.mark.parametrize("check", seams.source_checks(_installed()), ids=lambda c: c.name)
def test_source_check(check: seams.SourceCheck) -> None:
    """The text the plugin relies on is in the function's source (the static resolver runs
    the same list against sources it does not import)."""
    cls_name, _, attr = check.qualname.rpartition(".")
    owner = _resolve(seams.Seam(check.module, cls_name, "owner")) if cls_name else None
    if owner is None:
        fn = _resolve(seams.Seam(check.module, attr, "function"))
    else:
        fn = inspect.getattr_static(owner, attr, None)
        assert fn is not None, f"seam moved: {check.module}:{check.qualname}"
    fn = fn.fget if isinstance(fn, property) else fn
    assert check.text in inspect.getsource(fn), f"seam moved: {check.name} ({check.why})"


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
    # the layer attributes and the forward_cpu binding are source checks (test_source_check)
    checked = {c.text for c in seams.source_checks() if c.qualname.endswith("Attention.__init__")}
    assert {f"self.{a} = " for a in seams.GDN_LAYER_ATTRS} <= checked
    assert QwenGatedDeltaNetAttention.forward_cpu is not None
    # the in-tree CPU core still refuses fp32 (why the plugin matters for fp32 GDN)
    from vllm.model_executor.layers.mamba.ops.cpu import gdn_attention

    assert "torch.bfloat16" in inspect.getsource(gdn_attention.cpu_gdn_attention_core)
