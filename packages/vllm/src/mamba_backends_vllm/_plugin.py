"""The plugin's machinery: version gate, platform mapping, backend registration, kernel routing.

Everything vLLM-specific that is touched is listed in :mod:`mamba_backends_vllm.seams`.

A layer is routed only to a backend that the current platform chose or that the user selected
(:data:`SELECT_ENV`); a mamba type that only the default map answers (the executable spec)
stays native, and the routing table says so.

Routing works in two steps, both re-entrant:

1. ``register_backend(MambaAttentionBackendEnum.<member>, <our class path>, is_mamba=True)``:
   a string, so nothing heavy is imported;
2. the layer module's kernel globals (``causal_conv1d_fn``, ``selective_scan_fn``, ...) are
   rebound to ``Backend.ops().<op>``. Layer modules are heavy to import, so this happens from a
   post-import hook the moment vLLM imports them (or at once if they are already imported).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from mamba_backends_vllm import _threads
from mamba_backends_vllm.seams import KernelRoute, active_routes
from mamba_backends_vllm.versions import (
    SUPPORTED_VLLM,
    SUPPORTED_VLLM_MAX_EXCLUSIVE,
    SUPPORTED_VLLM_MIN,
    SUPPORTED_VLLM_RANGE,
    parse_version,
    version_in,
)

#: A child of vLLM's ``vllm`` logger, so that the lines show with vLLM's own log handler.
logger = logging.getLogger("vllm.mamba_backends_vllm")

DISABLE_ENV = "MAMBA_BACKENDS_VLLM_DISABLE"
#: ``mamba2=cpu.mamba2,mamba1=my.pkg.Backend``: the ``selected_backend`` passed per mamba type
#: (the platform's own choice still comes first, as in ``get_mamba_backend``).
SELECT_ENV = "MAMBA_BACKENDS_VLLM_BACKENDS"

#: Selector rules whose backend may serve a layer: the platform's own choice, or the user's
#: explicit selection. The ``default`` rule (the executable spec) never serves: that layer stays
#: native.
SERVING_RULES: frozenset[str] = frozenset({"platform", "selected"})

#: Our attention backend class per ``MambaAttentionBackendEnum`` member.
ATTENTION_BACKENDS: dict[str, str] = {
    "MAMBA1": "mamba_backends_vllm.attention.RoutedMamba1AttentionBackend",
    "MAMBA2": "mamba_backends_vllm.attention.RoutedMamba2AttentionBackend",
    "SHORT_CONV": "mamba_backends_vllm.attention.RoutedShortConvAttentionBackend",
    "GDN_ATTN": "mamba_backends_vllm.attention.RoutedGDNAttentionBackend",
}

#: vLLM platform predicate -> our platform name.
PLATFORM_MAP: tuple[tuple[str, str], ...] = (
    ("is_cpu", "cpu"),
    ("is_cuda", "cuda"),
    ("is_rocm", "rocm"),
    ("is_xpu", "xpu"),
)


class SeamError(RuntimeError):
    """A vLLM symbol listed in the seam manifest is missing."""


@dataclass
class RouteDecision:
    """What the plugin does for one mamba layer type in this process."""

    mamba_type: str
    enum_member: str
    layer_class: str
    status: str  # "routed" or "native"
    reason: str = ""
    backend: str = ""
    backend_class: str = ""
    rule: str = ""
    attention_backend: str = ""
    patched: bool = False
    kernels: dict[str, str] = field(default_factory=dict)
    #: Layer-module globals rebound to an adapter of one of our ops (``seams.KernelAdapter``):
    #: symbol -> ``(op, "module:factory")``; only those this vLLM version and backend serve.
    adapted: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    #: The backend class itself (not reported; ``backend_class`` is its path).
    backend_cls: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("backend_cls", "adapted")}


@dataclass
class _State:
    pid: int = -1
    registered: bool = False
    summary: str = ""
    decisions: dict[str, RouteDecision] = field(default_factory=dict)
    originals: dict[tuple[str, str], Any] = field(default_factory=dict)
    hook: _PostImportHook | None = None
    logged_pid: int = -1
    oot_registered: list[str] = field(default_factory=list)


_lock = threading.RLock()
_state = _State()


# --- checks ---------------------------------------------------------------------------------


def is_supported_vllm(version: str, platform: str | None = None) -> bool:
    """Whether ``version`` lies in the range verified on ``platform`` (our platform name:
    :data:`~mamba_backends_vllm.versions.SUPPORTED_VLLM`), or, without one, in the widest range
    (:data:`SUPPORTED_VLLM_RANGE`). A platform with no entry is unsupported."""
    if platform is None:
        try:
            v = parse_version(version)
        except ValueError:
            return False
        return SUPPORTED_VLLM_MIN <= v < SUPPORTED_VLLM_MAX_EXCLUSIVE
    spec = SUPPORTED_VLLM.get(platform)
    return spec is not None and version_in(spec, version)


def vllm_platform_name(platform: Any) -> str | None:
    """Our platform name for vLLM's ``current_platform`` (None when none maps)."""
    for predicate, name in PLATFORM_MAP:
        fn = getattr(platform, predicate, None)
        if fn is not None and fn():
            return name
    return None


def _env_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# --- planning -------------------------------------------------------------------------------


def selected_backends(value: str | None = None) -> dict[str, str]:
    """Parse :data:`SELECT_ENV` (``type=backend,...``); raises ValueError naming a bad item."""
    raw = os.environ.get(SELECT_ENV, "") if value is None else value
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        mamba_type, sep, backend = item.partition("=")
        if not sep or not mamba_type.strip() or not backend.strip():
            raise ValueError(f"{SELECT_ENV}: expected 'mamba_type=backend', got {item!r}")
        out[mamba_type.strip()] = backend.strip()
    return out


def _decide(
    route: KernelRoute, device_type: str, selected: str | None, version: str = ""
) -> RouteDecision:
    from mamba_backends import select_mamba_backend

    d = RouteDecision(route.mamba_type, route.enum_member, route.layer_class, "native")
    try:
        choice = select_mamba_backend(route.mamba_type, selected)
    except Exception as e:  # noqa: BLE001 - never break vLLM
        d.reason = f"backend selection failed: {type(e).__name__}: {e}"
        return d
    d.rule = choice.rule
    if choice.rule not in SERVING_RULES:
        # Only the default map answered: that is the executable spec (float64, loop level), a
        # test oracle and never a serving kernel. vLLM's own kernel stays.
        d.reason = (
            f"no platform backend for {route.mamba_type}; left native (the default map would give "
            f"{choice.backend.get_name()}; select a backend with "
            f"{SELECT_ENV}={route.mamba_type}=<name>)"
        )
        return d
    backend = choice.backend
    d.backend, d.backend_class = backend.get_name(), choice.path
    d.backend_cls = backend
    if device_type not in backend.supported_devices:
        d.reason = f"{d.backend} does not run on device {device_type!r}"
        return d
    try:
        ops = backend.ops()
        for op in (*(op for _, op in route.kernels), *route.layer_ops):
            getattr(ops, op)
    except Exception as e:  # noqa: BLE001 - missing op -> stay native
        d.reason = f"{d.backend}: {type(e).__name__}: {e}"
        return d
    d.status = "routed"
    d.attention_backend = ATTENTION_BACKENDS[route.enum_member]
    d.kernels = {sym: f"{d.backend}.{op}" for sym, op in route.kernels}
    # Ops the OOT layer calls itself (no module global): reported under the layer's name.
    d.kernels.update({f"{route.layer_class}:{op}": f"{d.backend}.{op}" for op in route.layer_ops})
    for a in route.adapters:
        if not version_in(a.versions, version):
            continue
        try:
            getattr(ops, a.op)
        except Exception as e:  # noqa: BLE001 - optional: vLLM's kernel stays
            d.kernels[a.symbol] = f"vLLM native ({d.backend} has no {a.op}: {type(e).__name__})"
            continue
        d.adapted[a.symbol] = (a.op, a.adapter)
        d.kernels[a.symbol] = f"{d.backend}.{a.op} (adapter)"
    return d


def plan() -> tuple[str, dict[str, RouteDecision]]:
    """Decide, without changing anything, what :func:`register` does in this process.

    Returns ``(summary, decisions by mamba type)``; the summary is empty when the plugin is on.
    """
    routes = active_routes()

    def all_native(reason: str) -> tuple[str, dict[str, RouteDecision]]:
        return reason, {
            r.mamba_type: RouteDecision(
                r.mamba_type, r.enum_member, r.layer_class, "native", reason
            )
            for r in routes
        }

    if _env_disabled():
        return all_native(f"disabled by {DISABLE_ENV}")
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as e:  # noqa: BLE001
        return all_native(f"vLLM is not importable ({type(e).__name__}: {e})")
    version = str(getattr(vllm, "__version__", "unknown"))
    if not is_supported_vllm(version):
        return all_native(f"vLLM {version} is outside the supported range {SUPPORTED_VLLM_RANGE}")
    try:
        from mamba_backends import get_current_platform

        ours = get_current_platform()
        theirs = vllm_platform_name(current_platform)
    except Exception as e:  # noqa: BLE001
        return all_native(f"platform lookup failed ({type(e).__name__}: {e})")
    if theirs is None or theirs != ours.name:
        return all_native(
            f"vLLM platform {type(current_platform).__name__} ({theirs or 'unmapped'}) does not "
            f"match the mamba-backends platform {ours.name!r}"
        )
    if not is_supported_vllm(version, theirs):
        return all_native(
            f"vLLM {version} is outside the range verified on {theirs} "
            f"({SUPPORTED_VLLM.get(theirs, 'none')})"
        )
    device_type = str(getattr(current_platform, "device_type", ours.device_type))
    try:
        selected = selected_backends()
    except ValueError as e:
        return all_native(str(e))
    return "", {
        r.mamba_type: _decide(r, device_type, selected.get(r.mamba_type), version) for r in routes
    }


# --- applying -------------------------------------------------------------------------------


def _route(mamba_type: str) -> KernelRoute:
    return next(r for r in active_routes() if r.mamba_type == mamba_type)


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def patch_layer_module(module: ModuleType, mamba_type: str) -> None:
    """Rebind ``module``'s kernel globals to the routed backend's ops (idempotent).

    Checks every symbol before writing any. Raises :class:`SeamError` naming a missing one.
    """
    with _lock:
        d = _state.decisions.get(mamba_type)
        if d is None or d.status != "routed" or d.patched:
            return
        route = _route(mamba_type)
        for sym in (*(s for s, _ in route.kernels), *d.adapted):
            if not hasattr(module, sym):
                raise SeamError(f"seam moved: {module.__name__}:{sym} ({route.layer_class})")
        ops = d.backend_cls.ops()
        new = {sym: getattr(ops, op) for sym, op in route.kernels}
        for sym, (op, factory) in d.adapted.items():
            new[sym] = _resolve(factory)(getattr(ops, op))
        oot = _resolve(route.oot_layer) if route.oot_layer else None
        for sym, fn in new.items():
            _state.originals.setdefault((module.__name__, sym), getattr(module, sym))
            setattr(module, sym, fn)
        if oot is not None:
            from vllm.model_executor.custom_op import PluggableLayer, op_registry_oot

            if route.layer_class not in op_registry_oot:
                PluggableLayer.register_oot(oot, name=route.layer_class)
                _state.oot_registered.append(route.layer_class)
        d.patched = True
        # Once per process, before any kernel ran and after vLLM's thread binding.
        _threads.record()


def _on_import(mamba_type: str) -> Callable[[ModuleType], None]:
    def callback(module: ModuleType) -> None:
        try:
            patch_layer_module(module, mamba_type)
        except Exception as e:  # noqa: BLE001 - never break vLLM
            d = _state.decisions[mamba_type]
            d.status, d.reason = "native", f"patch failed: {type(e).__name__}: {e}"
            logger.warning("mamba-backends: %s stays native: %s", mamba_type, d.reason)
            try:
                from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

                MambaAttentionBackendEnum[d.enum_member].clear_override()
            except Exception:  # noqa: BLE001 - best effort; vLLM's own backend stays usable
                pass
        log_once()

    return callback


class _HookedLoader(importlib.abc.Loader):
    """Runs the real loader, then a callback on the executed module."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[ModuleType], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Calls ``callbacks[name](module)`` right after the module ``name`` is imported."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[ModuleType], None]] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, callback)
        return spec


#: Appended to the start-up line when a layer type is routed: vLLM still builds its own kernel
#: dispatchers at model init, and their log lines would otherwise suggest that they serve.
ROUTED_NOTE = (
    " | the layers routed to a mamba-backends backend call only its kernels: vLLM's own "
    "kernel-backend start-up lines (e.g. 'CPUSSUBackend: using compiled C++ "
    "selective_state_update kernel') name kernels that those layers do not call"
)


def _format(decisions: dict[str, RouteDecision], summary: str) -> str:
    if summary:
        return f"mamba-backends vLLM plugin: staying native ({summary})"
    parts = []
    for d in decisions.values():
        if d.status == "routed":
            parts.append(f"{d.layer_class} [{d.mamba_type}] -> {d.backend} ({d.rule})")
        else:
            parts.append(f"{d.layer_class} [{d.mamba_type}] -> vLLM native ({d.reason})")
    routed = any(d.status == "routed" for d in decisions.values())
    return "mamba-backends vLLM plugin: " + "; ".join(parts) + (ROUTED_NOTE if routed else "")


def log_once() -> None:
    """The start-up line, once per process.

    vLLM loads general plugins before it configures its logging, so a routed process logs when
    the first layer module is patched (model load); an all-native one logs at register time.
    """
    with _lock:
        if _state.logged_pid == os.getpid():
            return
        _state.logged_pid = os.getpid()
        line = _format(_state.decisions, _state.summary)
        if _state.summary and not _state.summary.startswith("disabled"):
            logger.warning("%s", line)
        else:
            logger.info("%s", line)


def register() -> None:
    """Re-entrant body of :func:`mamba_backends_vllm.register` (see there)."""
    with _lock:
        if _state.registered:
            if _state.pid != os.getpid():  # forked worker: patches and hook were inherited
                _state.pid = os.getpid()
                log_once()
            return
        _state.registered, _state.pid = True, os.getpid()
        try:
            _state.summary, _state.decisions = plan()
            _apply()
        except Exception as e:  # noqa: BLE001 - never break vLLM
            _state.summary = f"plugin error: {type(e).__name__}: {e}"
            for d in _state.decisions.values():
                d.status, d.reason = "native", _state.summary
        routed = any(d.status == "routed" for d in _state.decisions.values())
        if not routed or any(d.patched for d in _state.decisions.values()):
            log_once()


def _apply() -> None:
    routed = [d for d in _state.decisions.values() if d.status == "routed"]
    if not routed:
        return
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum, register_backend

    hook = _PostImportHook()
    for d in routed:
        register_backend(
            MambaAttentionBackendEnum[d.enum_member], d.attention_backend, is_mamba=True
        )
        route = _route(d.mamba_type)
        module = sys.modules.get(route.layer_module)
        if module is not None:
            _on_import(d.mamba_type)(module)
        else:
            hook.callbacks[route.layer_module] = _on_import(d.mamba_type)
    if hook.callbacks:
        sys.meta_path.insert(0, hook)
        _state.hook = hook


def unregister() -> None:
    """Undo :func:`register` in this process: restore vLLM's kernels and backends (tests)."""
    with _lock:
        if _state.hook is not None and _state.hook in sys.meta_path:
            sys.meta_path.remove(_state.hook)
        for (mod, sym), fn in _state.originals.items():
            if mod in sys.modules:
                setattr(sys.modules[mod], sym, fn)
        if _state.decisions and "vllm" in sys.modules:
            from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

            for d in _state.decisions.values():
                if d.status == "routed":
                    MambaAttentionBackendEnum[d.enum_member].clear_override()
        if _state.oot_registered:
            from vllm.model_executor.custom_op import op_registry_oot

            for name in _state.oot_registered:
                op_registry_oot.pop(name, None)
        _state.__init__()  # type: ignore[misc]


def ops_for(mamba_type: str) -> Any:
    """``Backend.ops()`` of the backend routed for ``mamba_type`` here (OOT layers call it).

    Raises RuntimeError when ``mamba_type`` is not routed in this process.
    """
    d = _state.decisions.get(mamba_type)
    if d is None or d.status != "routed" or d.backend_cls is None:
        raise RuntimeError(f"mamba-backends: mamba_type {mamba_type!r} is not routed here")
    return d.backend_cls.ops()


def backend_name_for(mamba_type: str) -> str:
    """The name of the backend that serves ``mamba_type`` here, or ``""`` when vLLM's does."""
    d = _state.decisions.get(mamba_type)
    return d.backend if d is not None and d.status == "routed" else ""


def routing_table() -> dict[str, Any]:
    """This process's routing (a dry-run plan when :func:`register` has not run here)."""
    with _lock:
        if _state.registered:
            summary, decisions, source = _state.summary, _state.decisions, "registered"
        else:
            summary, decisions = plan()
            source = "plan (register() has not run in this process)"
        return {
            "source": source,
            "supported_vllm": SUPPORTED_VLLM_RANGE,
            "supported_vllm_by_platform": dict(SUPPORTED_VLLM),
            "summary": summary or "on",
            "layers": {k: v.to_dict() for k, v in decisions.items()},
            # This process's threads when its first layer was routed (None: none routed here).
            "threads": _threads.recorded(),
        }
