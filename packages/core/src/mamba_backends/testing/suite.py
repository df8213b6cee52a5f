"""The pytest face of the kit: :func:`conformance_tests` builds a test class for backends."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
import torch

from mamba_backends.backend import OPTIONAL_OPS, MambaBackend
from mamba_backends.testing import cases as registry
from mamba_backends.testing.case import Case, run_case
from mamba_backends.testing.runner import BackendTarget, backend_device, resolve_backends

T = TypeVar("T")

#: Environment override of how many hypothesis examples each drawn test runs.
EXAMPLES_ENV = "MAMBA_BACKENDS_CONFORMANCE_EXAMPLES"
DEFAULT_EXAMPLES = 6


class _HypothesisPicker:
    """A :class:`~mamba_backends.testing.case.Picker` over hypothesis' ``st.data()``."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self._data = data
        self._st = st

    def choice(self, options: Sequence[T]) -> T:
        value: T = self._data.draw(self._st.sampled_from(list(options)))
        return value

    def integer(self, lo: int, hi: int) -> int:
        value: int = self._data.draw(self._st.integers(lo, hi))
        return value


def _run_or_fail(backend: type[MambaBackend], case: Case, device: torch.device) -> None:
    result = run_case(backend.ops(), case, device, backend)
    if result.status == "skipped":
        pytest.skip(result.message)
    if not result.ok:
        pytest.fail(
            f"{backend.get_name()} {case.id}: {result.status}: {result.message}", pytrace=False
        )


def conformance_tests(
    backends: BackendTarget,
    *,
    device: str | torch.device | None = None,
    quick: bool = False,
    drawn: bool = True,
    max_examples: int | None = None,
) -> type:
    """A pytest test class that checks ``backends`` against the spec.

    Args:
        backends: a backend class, a dotted path to one, a Platform (its claimed backends), or
            a list of these.
        device: run on this device instead of ``$MAMBA_BACKENDS_TEST_DEVICE`` or the first
            usable of each backend's ``supported_devices``.
        quick: only the quick subset of the fixed grid.
        drawn: add the hypothesis-drawn tests (skipped if hypothesis is not installed).
        max_examples: hypothesis examples per drawn test (default
            ``$MAMBA_BACKENDS_CONFORMANCE_EXAMPLES`` or 6).

    Bind the result to a name starting with ``Test`` in a test module.
    """
    targets = resolve_backends(backends)
    if not targets:
        raise ValueError(f"no backends to test in {backends!r}")
    n_examples = max_examples or int(os.environ.get(EXAMPLES_ENV, DEFAULT_EXAMPLES))
    devices = {b: backend_device(b, device) for b in targets}

    fixed: list[Any] = []
    for b in targets:
        for case in registry.fixed_cases(b.mamba_type, quick=quick):
            marks = [pytest.mark.slow] if case.slow else []
            fixed.append(pytest.param(b, case, id=f"{b.get_name()}|{case.id}", marks=marks))
    drawn_params = [
        pytest.param(b, op, id=f"{b.get_name()}|{op}")
        for b in targets
        for op in registry.drawable_ops(b.mamba_type)
    ]
    per_backend = [pytest.param(b, id=b.get_name()) for b in targets]

    def _device(backend: type[MambaBackend]) -> torch.device:
        dev = devices[backend]
        if dev is None:
            pytest.skip(f"no usable device among {backend.supported_devices}")
        return dev

    class TestConformance:
        """Conformance of the given backends to the executable spec (mamba_backends.testing)."""

        @pytest.mark.parametrize("backend", per_backend)
        def test_every_op_has_cases(self, backend: type[MambaBackend]) -> None:
            covered = {c.op for c in registry.fixed_cases(backend.mamba_type)}
            missing = [op for op in backend.op_names() if op not in covered]
            assert not missing, f"the kit has no cases for {missing} yet: not verified"

        @pytest.mark.parametrize(("backend", "case"), fixed)
        def test_case(self, backend: type[MambaBackend], case: Case) -> None:
            _run_or_fail(backend, case, _device(backend))

        @pytest.mark.parametrize(("backend", "op"), drawn_params)
        def test_drawn(self, backend: type[MambaBackend], op: str) -> None:
            if not drawn:
                pytest.skip("drawn cases disabled")
            hypothesis = pytest.importorskip("hypothesis")
            from hypothesis import strategies as st

            dev = _device(backend)
            if op in OPTIONAL_OPS and not backend.ops().implements(op):
                pytest.skip(f"optional op {op} not implemented by {backend.get_name()}")

            @hypothesis.settings(
                max_examples=n_examples,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(st.data())
            def check(data: Any) -> None:
                case = registry.draw_case(op, _HypothesisPicker(data), backend.mamba_type)
                hypothesis.note(case.id)
                result = run_case(backend.ops(), case, dev, backend)
                hypothesis.assume(result.status != "skipped")
                assert result.ok, f"{case.id}: {result.status}: {result.message}"

            check()

    return TestConformance
