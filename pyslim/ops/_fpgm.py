"""FPGM (filter pruning via geometric median) scores as a torch.library custom op.

``score_i = sum_j ||w_i - w_j||_2`` over the rows of a float32 ``(C, K)`` weight, in float64. The native
kernel (``csrc/runtime/fpgm_driver.cc``, one micro-kernel per ISA in ``kernels.h``) computes each unordered
pair once, subtracts in float32, sums at most 16 squared differences per SIMD lane in float32 and the rest
in double, so every score is within 1e-6 relative of the float64 value (the bound is derived in
``kernels.h``). CUDA tensors use the CUDA kernel when this build has one, else the pure-torch reference.

Example::

    >>> import torch
    >>> from pyslim.ops._fpgm import fpgm_scores_op
    >>> fpgm_scores_op(torch.tensor([[0.0], [1.0], [3.0]]))
    tensor([4., 3., 5.], dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyslim import _C
from pyslim._native import capsule, get_num_threads, stream_of

__all__ = ["fpgm_scores_op", "fpgm_scores_torch"]

_CUDA_BUILT = bool(_C.native_info().get("cuda_built", False))


def fpgm_scores_torch(weight_2d: Tensor) -> Tensor:
    """The float64 pure-torch computation (``torch.cdist`` on the float64 rows), for devices without a kernel."""
    w = weight_2d.detach().to(torch.float64)
    if w.shape[0] == 0:
        return w.new_zeros((0,))
    return torch.cdist(w[None], w[None])[0].sum(dim=1)


@torch.library.custom_op("pyslim::fpgm_scores", mutates_args=())
def fpgm_scores_op(weight: Tensor) -> Tensor:
    """``weight``: float32 (C, K), any strides (made contiguous). Returns float64 (C,)."""
    if weight.device.type == "cuda" and not _CUDA_BUILT:
        return fpgm_scores_torch(weight)
    if weight.device.type not in ("cpu", "cuda"):
        return fpgm_scores_torch(weight)
    w = weight.contiguous()
    out = torch.empty((w.shape[0],), dtype=torch.float64, device=w.device)
    _C.fpgm_scores(capsule(w), capsule(out), get_num_threads(), stream_of(w))
    return out


@fpgm_scores_op.register_fake
def _(weight):
    return weight.new_empty((weight.shape[0],), dtype=torch.float64)
