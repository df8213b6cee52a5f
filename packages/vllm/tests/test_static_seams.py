"""The static seam resolver: it agrees with the import-based checks on the installed vLLM, and it
reports a seam that does not resolve (missing module, symbol, attribute, parameter, call keyword,
source text, or a kernel call our op does not bind).

The synthetic-tree tests need no vLLM; the agreement tests read the installed vLLM's sources
(found with ``find_spec``, which does not import it) and compare with what importing it says.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mamba_backends_vllm import seams, versions
from mamba_backends_vllm import static_seams as ss

_M2 = "vllm.model_executor.layers.mamba.mamba_mixer2"


def _installed_vllm_root() -> Path | None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


needs_vllm = pytest.mark.skipif(_installed_vllm_root() is None, reason="vllm not installed")


# --- a synthetic vLLM tree --------------------------------------------------------------------

_FILES = {
    "vllm/__init__.py": "from .version import __version__\n",
    "vllm/version.py": "try:\n    from ._version import __version__\nexcept ImportError:\n"
    "    __version__ = 'dev'\n",
    "vllm/_version.py": "__version__ = version = '0.33.0'\n",
    "vllm/ops/__init__.py": "",
    "vllm/ops/ssd.py": """
        import torch

        def mamba_chunk_scan_combined_varlen(x, *, final_states_out=None):
            return None
        """,
    "vllm/layers/__init__.py": "",
    "vllm/layers/base.py": """
        from enum import Enum

        class Base:
            metadata_cls: type
            def inherited(self, hidden_states, output):
                pass

        class Kind(Enum):
            MAMBA2 = "m2"
        """,
    "vllm/layers/mixer.py": """
        from vllm.ops.ssd import mamba_chunk_scan_combined_varlen
        from .base import Base, Kind as K

        class Mixer(Base):
            def __init__(self):
                self.out_proj = None

            @property
            def mamba_type(self):
                return K.MAMBA2

            def forward(self, x, dt, A, B, C, cu, cuc, last, sidx, out, pool):
                mamba_chunk_scan_combined_varlen(
                    x, dt, A, B, C, 8, cu, cuc, last, sidx, out, final_states_out=pool
                )
        """,
}


@pytest.fixture
def tree(tmp_path: Path) -> ss.Resolver:
    for rel, text in _FILES.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return ss.Resolver(ss.SourceTree(tmp_path))


def test_synthetic_tree_version_and_imports(tree: ss.Resolver) -> None:
    assert tree.tree.version() == "0.33.0"
    # followed through `from .version import` into a try block
    assert ss.check_seam(tree, seams.Seam("vllm", "__version__", "x")) is None
    # through an import into the defining module, then its parameters
    hit = tree.resolve("vllm.layers.mixer", "mamba_chunk_scan_combined_varlen")
    assert isinstance(hit, ss.Found) and hit.module == "vllm.ops.ssd" and hit.kind == "def"
    # a method inherited from a base in another module, an enum member through an alias
    assert ss.check_seam(tree, seams.Seam("vllm.layers.mixer", "Mixer.inherited", "x")) is None
    assert ss.check_seam(tree, seams.Seam("vllm.layers.mixer", "K.MAMBA2", "x")) is None


@pytest.mark.parametrize(
    ("seam", "says"),
    [
        (seams.Seam("vllm.layers.gone", "Mixer", "x"), "no file"),
        (seams.Seam("vllm.layers.mixer", "Mixr", "x"), "no 'Mixr'"),
        (seams.Seam("vllm.layers.mixer", "Mixer.backward", "x"), "no attribute 'backward'"),
        # an annotation alone is no class attribute (hasattr would say False too)
        (seams.Seam("vllm.layers.mixer", "Mixer.metadata_cls", "x"), "no attribute"),
        # `torch` is outside vLLM: nothing to look inside
        (seams.Seam("vllm.ops.ssd", "torch.zeros", "x"), "cannot look up"),
        (
            seams.Seam("vllm.layers.mixer", "Mixer.forward", "x", params=("hidden_states",)),
            "no parameter ['hidden_states']",
        ),
        (
            seams.Seam(
                "vllm.layers.mixer",
                "mamba_chunk_scan_combined_varlen",
                "x",
                call_keywords=("final_states_out", "final_state_indices"),
            ),
            "no call passes",
        ),
    ],
)
def test_bad_seam_is_reported(tree: ss.Resolver, seam: seams.Seam, says: str) -> None:
    problem = ss.check_seam(tree, seam)
    assert problem is not None and says in problem and seam.name in problem


def test_good_params_and_call_keywords_pass(tree: ss.Resolver) -> None:
    seam = seams.Seam(
        "vllm.layers.mixer",
        "mamba_chunk_scan_combined_varlen",
        "x",
        params=("x", "final_states_out"),
        call_keywords=("final_states_out",),
    )
    assert ss.check_seam(tree, seam) is None


def test_source_checks(tree: ss.Resolver) -> None:
    good = seams.SourceCheck("vllm.layers.mixer", "Mixer.__init__", "self.out_proj = ", "x")
    prop = seams.SourceCheck("vllm.layers.mixer", "Mixer.mamba_type", "K.MAMBA2", "x")
    bad = seams.SourceCheck("vllm.layers.mixer", "Mixer.__init__", "self.in_proj = ", "x")
    assert ss.check_source(tree, good) is None
    assert ss.check_source(tree, prop) is None
    problem = ss.check_source(tree, bad)
    assert problem is not None and "text not found" in problem


def test_route_call_that_our_op_does_not_bind(tree: ss.Resolver) -> None:
    """A layer passing final_states_out to an op without that parameter is reported."""
    route = seams.KernelRoute(
        mamba_type="mamba2",
        enum_member="MAMBA2",
        layer_module="vllm.layers.mixer",
        layer_class="Mixer",
        kernels=(("mamba_chunk_scan_combined_varlen", "mamba_chunk_scan_combined_varlen"),),
        vllm_backend=("", "", "", ""),
    )

    def old_op(*args: Any, out: Any = None) -> None: ...

    problems = ss.check_route_calls(tree, route, lambda op: inspect.signature(old_op))
    assert len(problems) == 1 and "final_states_out" in problems[0]
    assert ss.check_route_calls(tree, route) == []  # the spec's signature has it


# --- the installed vLLM -----------------------------------------------------------------------


def _import_resolve(seam: seams.Seam) -> Any:
    obj: Any = importlib.import_module(seam.module)
    for part in seam.symbol.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture(scope="module")
def installed() -> tuple[ss.Resolver, str]:
    root = _installed_vllm_root()
    assert root is not None
    tree = ss.SourceTree(root)
    return ss.Resolver(tree), tree.version()


@needs_vllm
def test_installed_vllm_resolves_statically(installed: tuple[ss.Resolver, str]) -> None:
    resolver, version = installed
    report = ss.check(resolver.tree.path)
    assert report.version == version and report.ok, report.lines()
    applicable = seams.all_seams(version)
    assert {s.name for s in applicable} <= set(report.resolved)
    assert len(report.resolved) >= len(applicable) + len(seams.source_checks(version))


@needs_vllm
@pytest.mark.parametrize("seam", seams.all_seams(), ids=lambda s: s.name)
def test_static_agrees_with_import(installed: tuple[ss.Resolver, str], seam: seams.Seam) -> None:
    """Per seam: the static verdict is the import-based one (on the installed vLLM)."""
    resolver, version = installed
    if not versions.version_in(seam.versions, version):
        pytest.skip(f"seam for vLLM {seam.versions}, installed {version}")
    static = ss.check_seam(resolver, seam)
    imported: str | None = None
    try:
        obj = _import_resolve(seam)
    except (ImportError, AttributeError) as e:
        imported = str(e)
    else:
        if seam.params:
            have = inspect.signature(obj).parameters
            missing = [p for p in seam.params if p not in have and p not in ("self", "cls")]
            imported = f"missing {missing}" if missing else None
    assert (static is None) == (imported is None), (static, imported)


@needs_vllm
def test_version_bound_seam_does_not_apply_to_032(installed: tuple[ss.Resolver, str]) -> None:
    """The 0.33 contract (MambaMixer2 passes final_states_out) is absent from 0.32's source,
    and the resolver says so when asked."""
    resolver, version = installed
    if not version.startswith("0.32"):
        pytest.skip(f"vLLM {version}")
    bound = [s for s in seams.all_seams() if s.call_keywords]
    assert bound and all(s not in seams.all_seams(version) for s in bound)
    problem = ss.check_seam(resolver, bound[0])
    assert problem is not None and "no call passes" in problem
