"""Loading the native core and the small amount of state the Python layer keeps about it."""

from __future__ import annotations

import logging
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


def get_num_threads() -> int:
    """The thread count the CPU kernels will use for the next call."""
    return _num_threads if _num_threads is not None else max(1, torch.get_num_threads())


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
