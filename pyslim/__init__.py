"""pyslim: model compression for PyTorch on native kernels.

Quantization, pruning, NAS and distillation strategies in Python, on C++/CUDA kernels chosen at run time
for the CPU they run on. See the README for the feature list and measured results.
"""

from pyslim._native import (active_isa, force_isa, get_num_threads, native_info, set_num_threads,
                            set_parallel_backend)
from pyslim import analysis, datasets, dist, ops, prune, quant

__version__ = native_info()["version"]

__all__ = [
    "active_isa",
    "force_isa",
    "get_num_threads",
    "native_info",
    "set_parallel_backend",
    "analysis",
    "datasets",
    "dist",
    "ops",
    "prune",
    "quant",
    "set_num_threads",
    "__version__",
]
