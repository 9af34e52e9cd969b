"""Structural (channel / head / neuron) pruning for any traceable PyTorch model.

    >>> from pyslim.prune import FPGMFilterPruner
    >>> pruner = FPGMFilterPruner(model, torch.randn(1, 3, 224, 224))
    >>> pruner.prunable_parameters()[:3]
    >>> plan = pruner.prune_vars({"features.0.weight": 0.5})      # physically removes channels
    >>> pruner.restore()                                           # the identical original model

Pieces: :class:`DependencyGraph` (tracing + channel coupling groups, ``pyslim.prune.graph``), criteria and
index selectors (``pyslim.prune.criteria``), pruners and plans (``pyslim.prune.pruners``), sensitivity
scans and FLOPs-targeted pruning (``pyslim.prune.sensitivity``: ``pruner.sensitive`` / ``sensitive_prune``),
and unstructured magnitude masks (``pyslim.prune.unstructured``).
"""

from pyslim.prune.criteria import (bn_scale_scores, default_index_selector, fpgm_scores, l1_norm_scores,
                                   l2_norm_scores, optimal_threshold_selector, pruned_count)
from pyslim.prune.graph import DependencyGraph, Group, GroupMember, TracingError
from pyslim.prune.pruners import (FilterPruner, FPGMFilterPruner, L1NormFilterPruner, L2NormFilterPruner,
                                  OptSlimFilterPruner, PruningMask, PruningPlan, SlimFilterPruner)
from pyslim.prune.sensitivity import (get_ratios_by_loss, load_sensitivities, merge_sensitivities,
                                      plot_sensitivity, save_sensitivities)
from pyslim.prune.unstructured import GMPUnstructuredPruner, UnstructuredPruner

__all__ = [
    "DependencyGraph", "Group", "GroupMember", "TracingError",
    "FilterPruner", "L1NormFilterPruner", "L2NormFilterPruner", "FPGMFilterPruner", "SlimFilterPruner",
    "OptSlimFilterPruner", "PruningPlan", "PruningMask",
    "l1_norm_scores", "l2_norm_scores", "fpgm_scores", "bn_scale_scores", "pruned_count",
    "default_index_selector", "optimal_threshold_selector",
    "load_sensitivities", "save_sensitivities", "merge_sensitivities", "get_ratios_by_loss", "plot_sensitivity",
    "UnstructuredPruner", "GMPUnstructuredPruner",
]
