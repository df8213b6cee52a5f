"""The OpenMP threads of this process as the kernels see them (the thread-binding checks).

vLLM-CPU gives each worker process its own cores (``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``0|1``
for TP=2); the CPU backend's kernels run a team of ``torch.get_num_threads()`` threads of the
OpenMP runtime that torch loaded. :func:`snapshot` reads what can be measured from inside the
process: torch's thread count, the process's CPU affinity, every thread's allowed CPUs
(``/proc/self/task/*/status``), the OpenMP runtimes mapped, and the file that each loaded
native library's ``GOMP_parallel`` resolves to. :func:`record` keeps one snapshot per process,
taken when the plugin routes a layer (after vLLM's binding: vLLM-CPU 0.32 binds a worker
through ``OMP_NUM_THREADS`` / ``OMP_PLACES`` / ``OMP_PROC_BIND`` in its environment, which
torch's libgomp applies when the worker imports torch, before any plugin runs), and before any
kernel ran; :func:`mamba_backends_vllm.routing_table` reports it under ``threads``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("vllm.mamba_backends_vllm")

#: File-name prefixes of the OpenMP runtimes (GNU, Intel, LLVM).
OPENMP_RUNTIMES = ("libgomp", "libiomp", "libomp")

_lock = threading.Lock()
_records: dict[int, dict[str, Any]] = {}


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (the kernel's ``Cpus_allowed_list`` format)."""
    cpus: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def thread_affinities() -> dict[int, list[int]]:
    """Thread id -> the CPUs it may run on, for every thread of this process."""
    out: dict[int, list[int]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out[int(task.name)] = parse_cpu_list(line.split(":", 1)[1])
        except OSError:  # the thread exited meanwhile
            continue
    return out


def thread_names() -> dict[int, str]:
    """Thread id -> its name (``/proc/self/task/*/comm``; a new thread inherits its creator's)."""
    out: dict[int, str] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            out[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            continue
    return out


def _mapped_files() -> list[tuple[int, int, str]]:
    out = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, parts[5]))
    except OSError:
        pass
    return out


def thread_locations() -> dict[int, str]:
    """Thread id -> the file that holds its program counter while it waits in a system call
    (``/proc/self/task/*/syscall``): an idle OpenMP worker waits inside its runtime (e.g.
    ``libgomp.so.1``), a Python thread in ``libc``. ``running`` when it is not in a call."""
    maps = _mapped_files()
    out: dict[int, str] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "syscall").read_text().split()
        except OSError:
            continue
        if len(fields) < 9:
            out[int(task.name)] = fields[0] if fields else "?"
            continue
        pc = int(fields[-1], 16)
        where = next((os.path.basename(p) for lo, hi, p in maps if lo <= pc < hi), hex(pc))
        out[int(task.name)] = where
    return out


def openmp_runtimes() -> list[str]:
    """Real paths of the OpenMP runtimes mapped into this process (``/proc/self/maps``)."""
    found: set[str] = set()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        if os.path.basename(path).startswith(OPENMP_RUNTIMES):
            found.add(os.path.realpath(path))
    return sorted(found)


def symbol_provider(library: str, symbol: str = "GOMP_parallel") -> str | None:
    """Real path of the file that ``symbol`` resolves to when looked up from ``library``
    (``dlsym`` on its handle searches it and its dependencies in load order), or None."""
    try:
        addr = ctypes.cast(getattr(ctypes.CDLL(library), symbol), ctypes.c_void_p).value
        libc = ctypes.CDLL(None)
        info = _DlInfo()
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        if not addr or not libc.dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
            return None
        return os.path.realpath(info.dli_fname.decode())
    except (OSError, AttributeError):
        return None


def native_libraries() -> dict[str, dict[str, Any]]:
    """Per native library of the CPU backend loaded here: its path and the file its
    ``GOMP_parallel`` resolves to (empty when the CPU backend is not installed)."""
    try:
        from mamba_backends_cpu.native import status
    except ImportError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, st in status().items():
        if st["active"]:
            out[name] = {"path": st["cache"], "gomp_parallel_from": symbol_provider(st["cache"])}
    return out


def torch_openmp() -> str | None:
    """Real path of the libgomp that torch ships, or None."""
    import torch

    found = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return os.path.realpath(found[0]) if found else None


def snapshot() -> dict[str, Any]:
    """What this process's threads look like now (JSON-friendly).

    Keys: ``pid``; ``tid`` (the calling thread, the one that runs the kernels' team 0);
    ``torch_threads`` (``torch.get_num_threads()`` in the calling thread: the team size the
    kernels are given); ``affinity`` (the calling thread's CPUs, ``sched_getaffinity(0)``);
    ``threads`` (thread id -> allowed CPUs, every thread); ``thread_names`` (thread id ->
    name); ``thread_locations`` (see :func:`thread_locations`); ``openmp_runtimes`` (mapped);
    ``torch_openmp``; ``native`` (see :func:`native_libraries`).
    """
    import torch

    return {
        "pid": os.getpid(),
        "tid": threading.get_native_id(),
        "torch_threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "threads": {str(k): v for k, v in sorted(thread_affinities().items())},
        "thread_names": {str(k): v for k, v in sorted(thread_names().items())},
        "thread_locations": {str(k): v for k, v in sorted(thread_locations().items())},
        "openmp_runtimes": openmp_runtimes(),
        "torch_openmp": torch_openmp(),
        "native": native_libraries(),
    }


def record() -> None:
    """Keep one :func:`snapshot` of this process (the first call wins; never raises)."""
    pid = os.getpid()
    with _lock:
        if pid in _records:
            return
        try:
            _records[pid] = snapshot()
        except Exception as e:  # noqa: BLE001 - a diagnostic must never break vLLM
            _records[pid] = {"pid": pid, "error": f"{type(e).__name__}: {e}"}
            logger.debug("mamba-backends: thread snapshot failed: %s", e)


def recorded() -> dict[str, Any] | None:
    """This process's :func:`record`, or None when no layer was routed here."""
    return _records.get(os.getpid())
