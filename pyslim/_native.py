"""Loading the native core and the small amount of state the Python layer keeps about it."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
from torch.utils.dlpack import to_dlpack

from pyslim import _C

logger = logging.getLogger("pyslim")

_num_threads: Optional[int] = None


def set_num_threads(n: Optional[int]) -> None:
    """Sets the number of threads pyslim's CPU kernels use; ``None`` follows ``torch.get_num_threads()``."""
    global _num_threads
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None; got {n!r}")
    _num_threads = n


def _init_parallel_backend() -> None:
    choice = os.environ.get("PYSLIM_PARALLEL_BACKEND", "auto") or "auto"
    try:
        set_parallel_backend(choice)
    except ValueError as exc:
        raise ValueError(f"PYSLIM_PARALLEL_BACKEND={choice}: {exc}") from None


def get_num_threads() -> int:
    """The thread count the CPU kernels will use for the next call."""
    return _num_threads if _num_threads is not None else max(1, torch.get_num_threads())


_OPENMP_NAMES = ("libgomp", "libiomp5", "libomp")


def _torch_openmp_library() -> Optional[str]:
    """Path of the OpenMP runtime torch's intra-op threads run on, as mapped into this process, or None.

    Only when torch's parallel backend is OpenMP; a runtime in torch's own lib directory is preferred
    over another one that happens to be loaded too.
    """
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
        with open("/proc/self/maps") as maps:  # the shared objects mapped into this process
            paths = {fields[5] for fields in (line.split() for line in maps) if len(fields) >= 6}
    except (OSError, RuntimeError, AttributeError):
        return None
    found = sorted(p for p in paths if os.path.basename(p).startswith(_OPENMP_NAMES) and ".so" in p)
    torch_dir = os.path.dirname(torch.__file__)
    found.sort(key=lambda p: not p.startswith(torch_dir))
    return found[0] if found else None


def set_parallel_backend(name: str = "auto") -> str:
    """Chooses the threads the CPU kernels run on; returns the backend now in use.

    ``"openmp"``: torch's own OpenMP runtime (the default where torch uses one), so pyslim's tasks run on
    the threads torch's intra-op ops use and the two never fight over cores. ``"own"``: pyslim's small pool
    (its helpers poll for 100 us after a call, then sleep). ``"auto"``: ``"openmp"`` where available. The
    environment variable ``PYSLIM_PARALLEL_BACKEND`` sets the choice made at import.
    """
    if name not in ("auto", "openmp", "own"):
        raise ValueError(f"name must be 'auto', 'openmp' or 'own'; got {name!r}")
    if name == "own":
        _C.use_own_pool()
        return _C.parallel_backend()
    path = _torch_openmp_library()
    if path is not None and _C.use_openmp_runtime(path):
        logger.debug("pyslim CPU kernels run on torch's OpenMP runtime %s", path)
    elif name == "openmp":
        raise ValueError("torch's OpenMP runtime is not available in this process (torch's parallel backend: "
                         f"{'OpenMP, but no usable runtime was found' if path is None else path})")
    else:
        _C.use_own_pool()
    return _C.parallel_backend()


def native_info() -> Dict[str, Any]:
    """Version, ISA paths (built, detected, usable, active), CUDA build and device availability.

    Example::

        >>> import pyslim
        >>> pyslim.native_info()["active_isa"] in pyslim.native_info()["usable_isas"]
        True
    """
    info = dict(_C.native_info())
    info["threads"] = get_num_threads()
    return info


def force_isa(name: str) -> None:
    """Forces the CPU kernel path (``reference``, ``avx2``, ``avx512``, ``avx512vnni``, ``neon``, ``neondot``).

    Raises ``ValueError`` if the path is unknown, not built, or not supported by this CPU. The environment
    variable ``PYSLIM_ISA`` does the same for a whole process.
    """
    _C.force_isa(name)


def active_isa() -> str:
    return _C.active_isa()


def capsule(t: torch.Tensor):
    """A DLPack capsule viewing ``t`` (no copy); the binding validates it."""
    return to_dlpack(t.detach())


def stream_of(t: torch.Tensor) -> int:
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


_init_parallel_backend()
