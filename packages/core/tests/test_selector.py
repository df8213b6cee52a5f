"""Every branch of ``get_mamba_backend``: platform, selected (name / path), default, errors."""

from __future__ import annotations

import threading

import pytest

import mamba_backends.platform as platform_mod
import mamba_backends.selector as selector_mod
from mamba_backends import (
    MAMBA_TYPES,
    BackendImportError,
    BackendTypeError,
    MambaBackend,
    Platform,
    clear_backend_cache,
    get_mamba_backend,
    register_backend_name,
    select_mamba_backend,
)
from mamba_backends.platform import PlatformSelection
from mamba_backends.reference.backends import (
    ReferenceGDNBackend,
    ReferenceMamba1Backend,
    ReferenceMamba2Backend,
)


class CustomMamba2(MambaBackend):
    name = "test.custom_mamba2"
    mamba_type = "mamba2"
    ops_module = "mamba_backends.reference.ops"


class NotABackend:
    pass


class ScriptedPlatform(Platform):
    """Answers from a dict and records every question."""

    name = "scripted"

    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str | None]] = []

    def get_mamba_backend_cls(self, mamba_type, selected_backend):
        self.asked.append((mamba_type, selected_backend))
        return self.answers.get(mamba_type)


@pytest.fixture
def use_platform(monkeypatch):
    def install(answers):
        plat = ScriptedPlatform(answers)
        monkeypatch.setattr(platform_mod, "_selection", PlatformSelection(plat, "test"))
        clear_backend_cache()
        return plat

    return install


HERE = __name__


def test_platform_answers_first(use_platform):
    plat = use_platform({"mamba2": f"{HERE}.CustomMamba2"})
    choice = select_mamba_backend("mamba2", "reference.gdn")
    assert choice.backend is CustomMamba2
    assert choice.rule == "platform"
    assert plat.asked == [("mamba2", "reference.gdn")]


def test_platform_none_then_selected_short_name(use_platform):
    use_platform({})
    choice = select_mamba_backend("linear_attention", "reference.gdn")
    assert choice.backend is ReferenceGDNBackend  # the seed's route: GDN serves linear attn
    assert choice.rule == "selected"


def test_platform_none_then_selected_dotted_path(use_platform):
    use_platform({})
    for path in (f"{HERE}.CustomMamba2", f"{HERE}:CustomMamba2"):
        clear_backend_cache()
        choice = select_mamba_backend("mamba2", path)
        assert (choice.backend, choice.rule) == (CustomMamba2, "selected")


def test_default_map(use_platform):
    use_platform({})
    for t in MAMBA_TYPES:
        choice = select_mamba_backend(t)
        assert choice.rule == "default"
        assert choice.backend.mamba_type == t
    assert get_mamba_backend("mamba2") is ReferenceMamba2Backend


def test_unknown_type_names_valid_ones(use_platform):
    use_platform({})
    with pytest.raises(ValueError) as err:
        get_mamba_backend("mamba3")
    for t in MAMBA_TYPES:
        assert t in str(err.value)


def test_path_that_will_not_import_names_path_and_cause(use_platform):
    use_platform({})
    with pytest.raises(BackendImportError) as err:
        get_mamba_backend("mamba2", "no_such_pkg.backends.Foo")
    assert "no_such_pkg.backends.Foo" in str(err.value)
    assert "ModuleNotFoundError" in str(err.value)


def test_missing_attribute_is_named(use_platform):
    use_platform({})
    with pytest.raises(BackendImportError, match="has no attribute 'Nope'"):
        get_mamba_backend("mamba2", f"{HERE}.Nope")


def test_unregistered_short_name_lists_registered(use_platform):
    use_platform({})
    with pytest.raises(ValueError, match="registered names: .*reference.mamba2"):
        get_mamba_backend("mamba2", "fastest")


def test_not_a_backend_class(use_platform):
    use_platform({})
    with pytest.raises(TypeError, match="not a MambaBackend subclass"):
        get_mamba_backend("mamba2", f"{HERE}.NotABackend")


@pytest.mark.parametrize("bad", [42, CustomMamba2, ["a.b"], b"x.y"])
def test_invalid_selected_backend_type(use_platform, bad):
    use_platform({})
    with pytest.raises(TypeError, match="selected_backend must be"):
        get_mamba_backend("mamba2", bad)


def test_platform_path_broken_falls_back_with_one_warning(use_platform):
    use_platform({"mamba2": "no_such_pkg.Backend"})
    with pytest.warns(RuntimeWarning, match="falling back") as rec:
        choice = select_mamba_backend("mamba2")
    assert len(rec) == 1
    assert (choice.backend, choice.rule) == (ReferenceMamba2Backend, "default")


def test_register_backend_name(use_platform):
    use_platform({})
    register_backend_name("test.custom", f"{HERE}.CustomMamba2")
    try:
        assert get_mamba_backend("mamba2", "test.custom") is CustomMamba2
    finally:
        selector_mod._extra_names.pop("test.custom")


def test_cache_and_clear(use_platform):
    plat = use_platform({"mamba2": f"{HERE}.CustomMamba2"})
    get_mamba_backend("mamba2")
    get_mamba_backend("mamba2")
    assert len(plat.asked) == 1  # cached
    get_mamba_backend("mamba2", "reference.mamba2")
    assert len(plat.asked) == 2  # a different key is a different entry
    clear_backend_cache()
    get_mamba_backend("mamba2")
    assert len(plat.asked) == 3


def test_concurrent_first_selection_resolves_once(use_platform):
    plat = use_platform({"mamba2": f"{HERE}.CustomMamba2"})
    gate = threading.Barrier(8)
    out = []

    def worker():
        gate.wait()
        out.append(get_mamba_backend("mamba2"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [CustomMamba2] * 8
    assert len(plat.asked) == 1


def test_ops_accessor_uses_vllm_names():
    ops = ReferenceMamba2Backend.ops()
    assert set(ops.names) == {
        "causal_conv1d_fn",
        "causal_conv1d_update",
        "selective_state_update",
        "mamba_chunk_scan_combined_varlen",
        "store_prefill_checkpoint",
    }
    assert callable(ops.selective_state_update)
    with pytest.raises(AttributeError, match="has no op 'chunk_gated_delta_rule'"):
        _ = ops.chunk_gated_delta_rule


def test_ops_accessor_missing_function_is_not_implemented():
    class Partial(MambaBackend):
        name = "test.partial"
        mamba_type = "short_conv"
        ops_module = "mamba_backends.types"  # a module without any op

    with pytest.raises(NotImplementedError, match="'test.partial' does not implement"):
        _ = Partial.ops().causal_conv1d_fn


def test_selected_backend_of_another_type_is_an_error(use_platform):
    use_platform({})
    for selected in (
        "reference.mamba1",
        "mamba_backends.reference.backends.ReferenceMamba1Backend",
    ):
        with pytest.raises(BackendTypeError) as err:
            get_mamba_backend("mamba2", selected)
        msg = str(err.value)
        assert "'mamba1' backend" in msg and "not a 'mamba2' backend" in msg, msg
        assert isinstance(err.value, ValueError)
    # GDN declares linear_attention in also_serves (the seed's route), nothing else.
    assert get_mamba_backend("linear_attention", "reference.gdn") is ReferenceGDNBackend
    assert ReferenceGDNBackend.ops().names == ReferenceGDNBackend.op_names()  # its own ops
    with pytest.raises(BackendTypeError, match="'gdn' backend.*'linear_attention'.*'mamba2'"):
        get_mamba_backend("mamba2", "reference.gdn")
    with pytest.raises(BackendTypeError, match="not a 'gdn' backend"):
        get_mamba_backend("gdn", "reference.linear_attention")


def test_also_serves_is_declared_per_backend(use_platform):
    use_platform({})

    class GdnAlso(MambaBackend):
        name = "test.gdn_also"
        mamba_type = "gdn"
        also_serves = ("linear_attention",)

    class GdnOnly(MambaBackend):
        name = "test.gdn_only"
        mamba_type = "gdn"

    assert GdnAlso.serves("linear_attention") and GdnAlso.serves("gdn")
    assert not GdnOnly.serves("linear_attention") and not GdnAlso.serves("mamba1")


def test_platform_backend_of_another_type_falls_back_with_one_warning(use_platform):
    path = "mamba_backends.reference.backends.ReferenceMamba1Backend"
    use_platform({"mamba2": path})
    with pytest.warns(RuntimeWarning, match="'mamba1' backend.*falling back") as rec:
        choice = select_mamba_backend("mamba2")
    assert len(rec) == 1
    assert (choice.backend, choice.rule) == (ReferenceMamba2Backend, "default")
    assert ReferenceMamba1Backend.mamba_type == "mamba1"


def test_clear_backend_cache_clears_the_ops_cache():
    ReferenceMamba2Backend.ops()
    assert ReferenceMamba2Backend in MambaBackend._ops_cache
    clear_backend_cache()
    assert MambaBackend._ops_cache == {}
