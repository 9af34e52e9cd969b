"""Channel importance criteria and index selectors (PaddleSlim ``prune/criterion.py``, ``idx_selector.py``,
and the dygraph filter pruners).

Every criterion takes the root parameter arranged as a 2-D matrix ``(channels, -1)`` (row c = all weights
of channel c, see :meth:`pyslim.prune.Group.root_matrix`) and returns one float score per channel; the
channels with the **smallest** scores are pruned.

    >>> w = torch.randn(8, 3 * 3 * 3)
    >>> l1_norm_scores(w).shape, fpgm_scores(w).shape
    (torch.Size([8]), torch.Size([8]))
    >>> default_index_selector(torch.tensor([3., 1., 2., 0.]), 0.5)
    tensor([3, 1])
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["l1_norm_scores", "l2_norm_scores", "fpgm_scores", "fpgm_scores_reference", "bn_scale_scores",
           "pruned_count", "default_index_selector", "optimal_threshold_selector"]


def _check_2d(weight_2d: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight_2d, torch.Tensor) or weight_2d.dim() != 2:
        got = f"{tuple(weight_2d.shape)}" if isinstance(weight_2d, torch.Tensor) else type(weight_2d).__name__
        raise ValueError(f"weight_2d must be a 2-D tensor (channels, -1); got {got}")
    return weight_2d.detach()


def l1_norm_scores(weight_2d: torch.Tensor) -> torch.Tensor:
    """PaddleSlim's dygraph ``L1NormFilterPruner``: mean |W| over the non-pruned axes (float64)."""
    return _check_2d(weight_2d).double().abs().mean(dim=1)


def l2_norm_scores(weight_2d: torch.Tensor) -> torch.Tensor:
    """``L2NormFilterPruner``: sqrt(sum W^2) over the non-pruned axes (float64)."""
    return _check_2d(weight_2d).double().pow(2).sum(dim=1).sqrt()


def fpgm_scores(weight_2d: torch.Tensor) -> torch.Tensor:
    """FPGM (``geometry_median``): ``score_i = sum_j ||w_i - w_j||_2``, the distance sum of filter i to all
    filters (O(C^2 K)); the smallest scores are the filters nearest the geometric median and are pruned.
    Returns float64 scores of shape (C,). float32/float16/bfloat16 weights run the native kernel
    (:func:`pyslim.ops.fpgm_scores`: each pair once, threaded, relative error <= 1e-6 per score); float64
    weights keep full float64 accuracy through :func:`fpgm_scores_reference`."""
    w = _check_2d(weight_2d)
    if w.dtype == torch.float64 or not w.is_floating_point():
        return fpgm_scores_reference(w)
    from pyslim import ops  # deferred: pyslim.ops loads the native extension

    return ops.fpgm_scores(w)


def fpgm_scores_reference(weight_2d: torch.Tensor) -> torch.Tensor:
    """The float64 reference of :func:`fpgm_scores`: ``torch.cdist`` on the float64 rows in its direct
    difference form. (cdist's default matrix-product form, ||a||^2 + ||b||^2 - 2 a.b, cancels for rows close
    together: 1e-6 relative error in float64 for rows 1e-3 apart; the direct form is ~1e-15.) Used by the
    tests."""
    w = _check_2d(weight_2d).double()
    return torch.cdist(w[None], w[None], compute_mode="donot_use_mm_for_euclid_dist")[0].sum(dim=1)


def bn_scale_scores(bn_weight: torch.Tensor) -> torch.Tensor:
    """``SlimFilterPruner`` (Network Slimming): |gamma| of the BatchNorm that consumes the conv output."""
    return bn_weight.detach().double().abs().reshape(-1)


def pruned_count(channels: int, ratio: float, align: Optional[int] = None) -> int:
    """How many of ``channels`` to prune for ``ratio``: ``int(round(channels * ratio))`` with Python's
    banker's rounding, at most ``channels - 1`` (one channel always stays). With ``align=k`` the number of
    *kept* channels is rounded up to a multiple of k (never above ``channels``)."""
    n = min(int(round(channels * ratio)), channels - 1)
    if align is not None and align > 1:
        kept = channels - n
        kept = min(channels, int(math.ceil(kept / align)) * align)
        n = channels - kept
    return max(n, 0)


def default_index_selector(scores: torch.Tensor, ratio: float, align: Optional[int] = None) -> torch.Tensor:
    """PaddleSlim ``default_idx_selector``: ``argsort(scores)[:pruned_count(C, ratio)]`` (stable sort, so
    ties prune the lower index first). Returns the pruned channel indices, sorted."""
    n = pruned_count(scores.numel(), ratio, align)
    return torch.sort(torch.argsort(scores, stable=True)[:n]).values


def optimal_threshold_selector(scores: torch.Tensor, ratio: float, align: Optional[int] = None) -> torch.Tensor:
    """PaddleSlim ``optimal_threshold`` (OptSlimFilterPruner): ``ratio`` is an *energy* fraction.

    Scores are clamped to >= 1e-18 and sorted ascending (s); walk the normalised cumulative sum of s^2 to
    the first index i where it exceeds ``ratio``; the threshold is ``(s[i-1] + s[i]) / 2`` and every
    channel scoring below it is pruned (i == 0: nothing). At most C-1 channels are pruned (the highest
    scores stay). ``align`` is not part of the energy rule and is refused."""
    if align not in (None, 1):
        raise ValueError(f"align is not supported by the optimal-threshold selector; got align={align}")
    s = scores.double().clamp_min(1e-18)
    sorted_s = torch.sort(s).values
    energy = torch.cumsum(sorted_s.pow(2), 0)
    energy = energy / energy[-1]
    above = torch.nonzero(energy > ratio)
    i = int(above[0]) if above.numel() else s.numel() - 1
    if i == 0:
        return torch.empty(0, dtype=torch.long)
    th = (sorted_s[i - 1] + sorted_s[i]) / 2
    pruned = torch.nonzero(s < th).reshape(-1)
    if pruned.numel() >= s.numel():
        keep = int(torch.argmax(s))
        pruned = pruned[pruned != keep]
    return pruned
