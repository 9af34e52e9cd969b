"""Structural filter pruners (PaddleSlim's dygraph ``FilterPruner`` family) on the dependency graph.

    >>> pruner = L1NormFilterPruner(model, torch.randn(1, 3, 224, 224), optimizer=opt)
    >>> plan = pruner.prune_vars({"layer1.0.conv1.weight": 0.5, "layer2.0.conv1.weight": 0.3})
    >>> plan.pruned_channels["layer1.0.conv1.weight"]        # root channel indices that were removed
    >>> plan.skipped                                          # {name: reason} for groups pyslim refused
    >>> pruner.restore()                                      # the identical original model again

A ratio prunes ``int(round(C * ratio))`` of the C root channels (Python's banker's rounding), never all of
them. The named parameter is the group's *master*: its criterion decides the indices, and every coupled
slice (BatchNorm, next layers' inputs, residual partners, depthwise convs, concat consumers, Linear rows
after a flatten, optimizer state) loses the same channels. ``apply="physical"`` removes them (the model
gets smaller and faster, and is checked to still run with the same output shapes; if it does not, the
change is rolled back and RuntimeError says why); ``apply="lazy"`` multiplies them by zero masks that a
forward pre-hook (and an optimizer step hook, when an optimizer is given) keeps applied.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from pyslim.prune import criteria
from pyslim.prune.graph import _BN, _CONV, _CONV_T, DependencyGraph, Group, normalize_inputs

__all__ = ["PruningMask", "PruningPlan", "FilterPruner", "L1NormFilterPruner", "L2NormFilterPruner",
           "FPGMFilterPruner", "SlimFilterPruner", "OptSlimFilterPruner"]

logger = logging.getLogger(__name__)

_Key = Tuple[str, str, int]   # (module name, tensor name, axis)


@dataclass
class PruningMask:
    """Which entries of one tensor along ``axis`` are kept (``keep``, bool, length = the size before
    pruning) and the fraction removed."""

    axis: int
    keep: torch.Tensor

    @property
    def ratio(self) -> float:
        return 1.0 - float(self.keep.float().mean()) if self.keep.numel() else 0.0


@dataclass
class PruningPlan:
    """What one ``prune_vars`` call did.

    ``pruned_channels[root]``: the removed root-channel indices (heads, for attention groups);
    ``masks[tensor_name]``: per coupled tensor, the kept entries along the pruned axis (several axes of one
    tensor appear as ``name`` and ``name@axis``); ``skipped[name]``: groups that were not pruned and why."""

    apply: str
    pruned_channels: Dict[str, List[int]] = field(default_factory=dict)
    masks: Dict[str, PruningMask] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    def merge(self, other: "PruningPlan") -> "PruningPlan":
        """Masks of the same tensor and axis combine by AND (PaddleSlim: [0,1,1] & [1,1,0] = [0,1,0])."""
        out = PruningPlan(self.apply, dict(self.pruned_channels), dict(self.masks), dict(self.skipped))
        for name, mask in other.masks.items():
            if name in out.masks and out.masks[name].axis == mask.axis:
                out.masks[name] = PruningMask(mask.axis, out.masks[name].keep & mask.keep)
            else:
                out.masks[name] = mask
        for root, idx in other.pruned_channels.items():
            out.pruned_channels[root] = sorted(set(out.pruned_channels.get(root, [])) | set(idx))
        out.skipped.update(other.skipped)
        return out


class FilterPruner:
    """Base class: ``scores(group)`` is the criterion, ``select(scores, ratio, align)`` the index
    selector. Subclasses set one or both.

    Args:
        model: the model, pruned in place.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs; used to trace
            the model and to check the pruned model still runs.
        optimizer: optional; its per-parameter state (momentum, Adam moments, ...) is pruned along with the
            parameters and restored by ``restore()``.
        verify: run the model on ``example_inputs`` after each physical pruning (default True).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, optimizer: Optional[torch.optim.Optimizer] = None,
                 verify: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.example_inputs = example_inputs
        self.optimizer = optimizer
        self.verify = verify
        self._graph: Optional[DependencyGraph] = DependencyGraph(model, example_inputs)
        self._backup: Dict[str, Dict[str, Any]] = {}
        self._optimizer_backup: Dict[int, Tuple[nn.Parameter, Dict[str, Any]]] = {}
        self._lazy_masks: Dict[Tuple[str, str], torch.Tensor] = {}
        self._hooks: List[Any] = []
        self._output_shapes: Optional[List[Tuple[int, ...]]] = None
        self._graph_backup: Dict[str, Tuple[tuple, dict]] = {}   # fx node name -> original (args, kwargs)

    # ------------------------------------------------------------------------------------------ public
    @property
    def graph(self) -> DependencyGraph:
        """The dependency graph of the model as it is now (re-traced after a physical pruning)."""
        if self._graph is None:
            self._graph = DependencyGraph(self.model, self.example_inputs)
        return self._graph

    def prunable_parameters(self) -> List[str]:
        """Parameter names that can be passed to ``prune_vars`` (roots of groups that are not blocked)."""
        return self.graph.prunable_parameters()

    def scores(self, group: Group) -> torch.Tensor:
        raise NotImplementedError

    def select(self, scores: torch.Tensor, ratio: float, align: Optional[int] = None) -> torch.Tensor:
        return criteria.default_index_selector(scores, ratio, align)

    def prune_var(self, var_name: str, ratio: float, axis: int = 0, apply: str = "physical",
                  align: Optional[int] = None, strict: bool = False) -> PruningPlan:
        """``prune_vars({var_name: ratio}, ...)``."""
        return self.prune_vars({var_name: ratio}, axis=axis, apply=apply, align=align, strict=strict)

    def prune_vars(self, ratios: Mapping[str, float], axis: int = 0, apply: str = "physical",
                   align: Optional[int] = None, strict: bool = False) -> PruningPlan:
        """Prune each named parameter's group by its ratio.

        Args:
            ratios: ``{parameter name: ratio in [0, 1)}``; names are conv / transposed conv / linear weights
                (or a transformer's ``...attention.self.query.weight`` for heads and
                ``...intermediate.dense.weight`` for FFN neurons); see ``prunable_parameters()``.
            axis: must be 0 (output channels of the named parameter).
            apply: "physical" (remove channels) or "lazy" (zero them with masks kept by hooks).
            align: round the number of kept channels up to a multiple of this.
            strict: raise ValueError for a blocked group instead of skipping it (logged, ``plan.skipped``).

        Raises ValueError on a bad argument (unknown name, ratio outside [0, 1), axis != 0, ...) before
        anything changes; the model is unchanged then.
        """
        self._validate(ratios, axis, apply, align)
        graph = self.graph
        plan = PruningPlan(apply)
        combined: Dict[_Key, torch.Tensor] = {}
        members: Dict[_Key, Any] = {}
        touched_groups: List[Group] = []
        split_keep: Dict[str, Tuple[Any, torch.Tensor]] = {}
        taken: Dict[Tuple[str, int], str] = {}
        for name, ratio in ratios.items():
            group = graph.group(name)
            if group.blocked is not None:
                if strict:
                    raise ValueError(f"'{name}' cannot be pruned: {group.blocked}")
                plan.skipped[name] = group.blocked
                logger.warning("pyslim.prune: skipping '%s': %s", name, group.blocked)
                continue
            root_entry = (group.members[0].name, group.members[0].axis)
            if root_entry in taken:
                reason = f"already pruned as part of the group of '{taken[root_entry]}'"
                plan.skipped[name] = reason
                logger.warning("pyslim.prune: skipping '%s': %s", name, reason)
                continue
            for entry in group.entries():
                taken.setdefault(entry, name)
            if group.partition is not None:
                pruned = _balanced_select(self.scores(group), group.partition, float(ratio), align)
            else:
                pruned = self.select(self.scores(group), float(ratio), align)
            if pruned.numel() == 0:
                plan.pruned_channels[name] = []
                continue
            plan.pruned_channels[name] = [int(i) for i in pruned]
            touched_groups.append(group)
            for m in group.members:
                key = (m.module_name, m.tensor_name, m.axis)
                keep = ~torch.isin(m.owner, pruned)
                combined[key] = combined[key] & keep if key in combined else keep
                members[key] = m
            for site in group.splits:
                keep = ~torch.isin(site.owner, pruned)
                if site.node_name in split_keep:
                    split_keep[site.node_name] = (site, split_keep[site.node_name][1] & keep)
                else:
                    split_keep[site.node_name] = (site, keep)
        axes_per_tensor: Dict[Tuple[str, str], int] = {}
        for key in combined:
            axes_per_tensor[key[:2]] = axes_per_tensor.get(key[:2], 0) + 1
        for key, keep in combined.items():
            m = members[key]
            label = m.name if axes_per_tensor[key[:2]] == 1 else f"{m.name}@{key[2]}"
            plan.masks[label] = PruningMask(key[2], keep)
        if not combined:
            return plan
        if apply == "lazy":
            self._apply_lazy(combined, members)
        else:
            if self._lazy_masks:
                raise ValueError("apply='physical' while lazy masks are active; call restore() first")
            self._apply_physical(combined, members, touched_groups, split_keep)
        logger.info("pyslim.prune: %s pruning of %d group(s), %d tensor slice(s)", apply, len(touched_groups),
                    len(combined))
        return plan

    def restore(self) -> None:
        """Bring back the model exactly as it was before the first ``prune_vars``: parameters (same
        Parameter objects, bit-identical values), buffers, grads, layer attributes and optimizer state;
        lazy-mode hooks are removed."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._lazy_masks.clear()
        self._load_snapshot(self._backup)
        for _, (param, state) in self._optimizer_backup.items():
            if self.optimizer is not None:
                self.optimizer.state[param] = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                               for k, v in state.items()}
        self._backup.clear()
        self._optimizer_backup.clear()
        self._restore_graph(self._graph_backup)
        self._graph_backup.clear()
        self._graph = None

    def sensitive(self, eval_func, sen_file="sensitivities.json", target_vars=None, skip_vars=None,
                  pruned_ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), progress: bool = True,
                  apply: str = "lazy") -> Dict[str, Dict[float, float]]:
        """Sensitivity scan ``{param: {ratio: loss}}``, resumable through ``sen_file``; see
        :func:`pyslim.prune.sensitivity.sensitive`.

            >>> sens = pruner.sensitive(lambda m: evaluate(m, val_loader), sen_file="sens.json")
        """
        from pyslim.prune.sensitivity import sensitive

        return sensitive(self, eval_func, sen_file=sen_file, target_vars=target_vars, skip_vars=skip_vars,
                         pruned_ratios=pruned_ratios, progress=progress, apply=apply)

    def sensitive_prune(self, pruned_flops: float = 0.5, skip_vars=None, align: Optional[int] = None,
                        sen_file=None, tolerance: float = 0.01) -> PruningPlan:
        """Physically prune about ``pruned_flops`` of the FLOPs by a binary search on the sensitivity loss
        threshold; see :func:`pyslim.prune.sensitivity.sensitive_prune`.

            >>> plan = pruner.sensitive_prune(pruned_flops=0.5)
        """
        from pyslim.prune.sensitivity import sensitive_prune

        return sensitive_prune(self, pruned_flops=pruned_flops, skip_vars=skip_vars, align=align,
                               sen_file=sen_file, tolerance=tolerance)

    # ------------------------------------------------------------------------------------ validation
    def _validate(self, ratios, axis, apply, align) -> None:
        if not isinstance(ratios, Mapping) or not ratios:
            raise ValueError(f"ratios must be a non-empty dict {{parameter name: ratio}}; got {ratios!r}")
        if isinstance(axis, bool) or axis != 0:
            raise ValueError(f"axis must be 0 (output channels of the named parameter); got {axis!r}")
        if apply not in ("physical", "lazy"):
            raise ValueError(f"apply must be 'physical' or 'lazy'; got {apply!r}")
        if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
            raise ValueError(f"align must be a positive int or None; got {align!r}")
        params = dict(self.model.named_parameters())
        for name, ratio in ratios.items():
            if not isinstance(name, str) or name not in params:
                raise ValueError(f"unknown parameter {name!r}: not in model.named_parameters()")
            if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not math.isfinite(ratio) \
                    or not 0.0 <= float(ratio) < 1.0:
                raise ValueError(f"ratio for '{name}' must be a number in [0, 1); got {ratio!r}")
        for name in ratios:
            self.graph.group(name)  # raises ValueError for a parameter that is not a root

    # ------------------------------------------------------------------------------------------ apply
    def _snapshot(self, module_name: str, module: nn.Module) -> Dict[str, Any]:
        attrs = {k: copy.copy(v) for k, v in vars(module).items()
                 if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, list, set, type(None)))}
        return {
            "module": module,
            "params": {n: p.detach().clone() for n, p in module._parameters.items() if p is not None},
            "grads": {n: (p.grad.clone() if p.grad is not None else None)
                      for n, p in module._parameters.items() if p is not None},
            "buffers": {n: (b.clone() if b is not None else None) for n, b in module._buffers.items()},
            "attrs": attrs,
        }

    def _load_snapshot(self, snaps: Dict[str, Dict[str, Any]]) -> None:
        for snap in snaps.values():
            module = snap["module"]
            for n, t in snap["params"].items():
                p = module._parameters[n]
                p.data = t.clone()
                g = snap["grads"].get(n)
                p.grad = g.clone() if g is not None else None
            for n, b in snap["buffers"].items():
                module._buffers[n] = b.clone() if b is not None else None
            for k, v in snap["attrs"].items():
                setattr(module, k, copy.copy(v))

    def _backup_modules(self, members: Dict[_Key, Any], extra: Tuple[str, ...] = ()) -> Dict[str, Dict[str, Any]]:
        local = {}
        for name in extra:  # modules whose attributes change without owning a sliced tensor (attention)
            module = self.model.get_submodule(name) if name else self.model
            local[name] = self._snapshot(name, module)
            self._backup.setdefault(name, local[name])
        for m in members.values():
            if m.module_name not in local:
                local[m.module_name] = self._snapshot(m.module_name, m.module)
            if m.module_name not in self._backup:
                self._backup[m.module_name] = local[m.module_name]
            p = m.module._parameters.get(m.tensor_name)
            if p is not None and self.optimizer is not None and id(p) not in self._optimizer_backup:
                state = self.optimizer.state.get(p, {})
                self._optimizer_backup[id(p)] = (p, {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                                     for k, v in state.items()})
        return local

    def _apply_physical(self, combined: Dict[_Key, torch.Tensor], members: Dict[_Key, Any],
                        groups: List[Group], split_keep: Optional[Dict[str, Tuple[Any, torch.Tensor]]] = None) -> None:
        if self.verify and self._output_shapes is None:
            self._output_shapes = self._run_shapes()
        attention_modules = tuple(name for g in groups for name in g.attention)
        local = self._backup_modules(members, attention_modules)
        optimizer_local = {}
        if self.optimizer is not None:
            for m in members.values():
                p = m.module._parameters.get(m.tensor_name)
                if p is not None and p in self.optimizer.state:
                    optimizer_local[id(p)] = (p, dict(self.optimizer.state[p]))
        graph_local: Dict[str, Tuple[tuple, dict]] = {}
        try:
            for key, keep in combined.items():
                m = members[key]
                if m.groups > 1:
                    self._slice_grouped(m.module, m.tensor_name, keep, m.groups)
                    continue
                idx = torch.nonzero(keep).reshape(-1)
                self._slice(m.module, m.tensor_name, m.axis, idx)
            self._rewrite_splits(split_keep or {}, graph_local)
            depthwise, attention = {}, {}
            for g in groups:
                depthwise.update(g.depthwise)
                attention.update(g.attention)
            for name in {m.module_name for m in members.values()}:
                _sync_attributes(name, self.model.get_submodule(name) if name else self.model, depthwise)
            for name, head_size in attention.items():
                mod = self.model.get_submodule(name)
                mod.num_attention_heads = mod.query.weight.shape[0] // head_size
                mod.all_head_size = mod.num_attention_heads * head_size
            self._graph = None
            if self.verify:
                shapes = self._run_shapes()
                if shapes != self._output_shapes:
                    raise RuntimeError(f"output shapes changed from {self._output_shapes} to {shapes}")
        except Exception as e:
            self._load_snapshot(local)
            self._restore_graph(graph_local)
            for _, (p, state) in optimizer_local.items():
                self.optimizer.state[p] = state
            self._graph = None
            raise RuntimeError(f"pyslim.prune: the pruned model failed its check and was rolled back: "
                               f"{type(e).__name__}: {e}") from e

    def _rewrite_splits(self, split_keep: Dict[str, Tuple[Any, torch.Tensor]],
                        graph_local: Dict[str, Tuple[tuple, dict]]) -> None:
        """New piece sizes of the split / chunk nodes along pruned axes; literal sizes are rewritten in the
        model's fx graph (the walker blocked the group when that is impossible)."""
        changed = False
        for name, (site, keep) in split_keep.items():
            sizes = site.new_sizes(keep)
            if sizes == site.sizes:
                continue
            if site.kind in ("chunk", "int") and len(set(sizes)) != 1:
                raise RuntimeError(f"'{name}' would get unequal pieces {sizes}")
            if not site.rewrite:
                continue
            node = next((n for n in self.model.graph.nodes if n.name == name), None)
            if node is None:
                raise RuntimeError(f"split node '{name}' not found in the model's fx graph")
            if name not in graph_local:
                graph_local[name] = (node.args, dict(node.kwargs))
            self._graph_backup.setdefault(name, (node.args, dict(node.kwargs)))
            cur = node.args[1] if len(node.args) > 1 else None
            new_arg: Any = sizes[0] if site.kind == "int" else (type(cur)(sizes) if isinstance(cur, (list, tuple))
                                                                 else list(sizes))
            if len(node.args) > 1:
                args = list(node.args)
                args[1] = new_arg
                node.args = tuple(args)
            else:
                kwargs = dict(node.kwargs)
                key = next(k for k in ("split_size_or_sections", "split_size", "split_sizes", "sections")
                           if k in kwargs)
                kwargs[key] = new_arg
                node.kwargs = kwargs
            changed = True
        if changed:
            self.model.recompile()

    def _restore_graph(self, backup: Dict[str, Tuple[tuple, dict]]) -> None:
        if not backup or not hasattr(self.model, "graph"):
            return
        for node in self.model.graph.nodes:
            if node.name in backup:
                node.args, node.kwargs = backup[node.name][0], dict(backup[node.name][1])
        self.model.recompile()

    def _slice_grouped(self, module: nn.Module, tensor_name: str, keep: torch.Tensor, groups: int) -> None:
        """Axis 1 of a grouped conv weight: rows of group b keep the input channels kept in group b."""
        p = module._parameters[tensor_name]
        old_shape = p.shape
        index = _grouped_index(keep, groups, p.shape[0])

        def take(t: torch.Tensor) -> torch.Tensor:
            idx = index.to(t.device).view(index.shape + (1,) * (t.dim() - 2)).expand(
                (t.shape[0], index.shape[1]) + tuple(t.shape[2:]))
            return t.gather(1, idx).contiguous()

        p.data = take(p.data)
        if p.grad is not None:
            p.grad = take(p.grad)
        if self.optimizer is not None and p in self.optimizer.state:
            state = self.optimizer.state[p]
            for k, v in list(state.items()):
                if isinstance(v, torch.Tensor) and v.shape == old_shape:
                    state[k] = take(v)

    def _slice(self, module: nn.Module, tensor_name: str, axis: int, idx: torch.Tensor) -> None:
        if tensor_name in module._parameters:
            p = module._parameters[tensor_name]
            old_shape = p.shape
            p.data = p.data.index_select(axis, idx.to(p.device)).contiguous()
            if p.grad is not None:
                p.grad = p.grad.index_select(axis, idx.to(p.device)).contiguous()
            if self.optimizer is not None and p in self.optimizer.state:
                state = self.optimizer.state[p]
                for k, v in list(state.items()):
                    if isinstance(v, torch.Tensor) and v.shape == old_shape:
                        state[k] = v.index_select(axis, idx.to(v.device)).contiguous()
        else:
            b = module._buffers[tensor_name]
            module._buffers[tensor_name] = b.index_select(axis, idx.to(b.device)).contiguous()

    def _apply_lazy(self, combined: Dict[_Key, torch.Tensor], members: Dict[_Key, Any]) -> None:
        self._backup_modules(members)
        new_modules = set()
        for key, keep in combined.items():
            m = members[key]
            p = m.module._parameters.get(m.tensor_name)
            if p is None:
                continue  # buffers (running statistics) are left as they are in lazy mode
            shape = [1] * p.dim()
            if m.groups > 1:
                rows = keep.view(m.groups, -1).repeat_interleave(p.shape[0] // m.groups, dim=0)
                mask = rows.to(p.dtype).view(rows.shape + (1,) * (p.dim() - 2)).to(p.device)
            else:
                shape[m.axis] = keep.numel()
                mask = keep.to(p.dtype).view(shape).to(p.device)
            mkey = (m.module_name, m.tensor_name)
            self._lazy_masks[mkey] = self._lazy_masks[mkey] * mask if mkey in self._lazy_masks else mask
            new_modules.add(m.module_name)
        self._reapply_masks()
        hooked = {getattr(h, "_pyslim_module", None) for h in self._hooks}
        for name in new_modules - hooked:
            module = self.model.get_submodule(name) if name else self.model
            handle = module.register_forward_pre_hook(lambda mod, args, _n=name: self._reapply_masks(_n))
            handle._pyslim_module = name
            self._hooks.append(handle)
        if self.optimizer is not None and not any(getattr(h, "_pyslim_module", None) == "<optimizer>"
                                                  for h in self._hooks):
            handle = self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self._reapply_masks())
            handle._pyslim_module = "<optimizer>"
            self._hooks.append(handle)

    @torch.no_grad()
    def _reapply_masks(self, only: Optional[str] = None) -> None:
        for (mname, tname), mask in self._lazy_masks.items():
            if only is not None and mname != only:
                continue
            module = self.model.get_submodule(mname) if mname else self.model
            getattr(module, tname).mul_(mask)

    @torch.no_grad()
    def _run_shapes(self) -> List[Tuple[int, ...]]:
        args, kwargs = normalize_inputs(self.example_inputs)
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            out = self.model(*args, **kwargs)
        finally:
            for m, t in flags.items():
                m.training = t
        return [tuple(t.shape) for t in _tensors_of(out)]


def _grouped_index(keep: torch.Tensor, groups: int, rows: int) -> torch.Tensor:
    """(rows, kept per group) column indices for a grouped conv weight whose input channels ``keep``."""
    per_group = keep.view(groups, -1)
    counts = per_group.sum(dim=1)
    if bool((counts != counts[0]).any()):
        raise RuntimeError(f"grouped convolution would keep unequal input channels per group: {counts.tolist()}")
    cols = torch.stack([torch.nonzero(r).reshape(-1) for r in per_group])   # (groups, kept)
    return cols.repeat_interleave(rows // groups, dim=0)


def _balanced_select(scores: torch.Tensor, partition: List[torch.Tensor], ratio: float,
                     align: Optional[int]) -> torch.Tensor:
    """Equal pruning per channel group (grouped convs, chunks): each of the P equal-size groups of s root
    channels loses ``pruned_count(s, ratio)`` channels (banker's rounding per group, at least one kept per
    group), chosen by the criterion inside the group (lowest score first, ties: lower index). With ``align``
    the kept count per group grows until the total kept (P * kept) is a multiple of ``align`` (or nothing
    is pruned)."""
    s, groups = partition[0].numel(), len(partition)
    kept = s - criteria.pruned_count(s, ratio)
    if align is not None:
        while kept < s and (kept * groups) % align:
            kept += 1
    n = s - kept
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    out = []
    for part in partition:
        order = torch.argsort(scores[part], stable=True)
        out.append(part[order[:n]])
    return torch.sort(torch.cat(out)).values


def _tensors_of(out: Any) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors_of(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors_of(v)]
    if hasattr(out, "to_tuple"):  # HF ModelOutput
        return _tensors_of(out.to_tuple())
    return []


def _sync_attributes(name: str, module: nn.Module, depthwise: Dict[str, int]) -> None:
    """Layer attributes that describe shapes follow the sliced tensors."""
    if isinstance(module, _CONV):
        w = module.weight
        if name in depthwise:
            module.groups = w.shape[0] // depthwise[name]
            module.in_channels = module.groups
        else:
            module.in_channels = w.shape[1] * module.groups
        module.out_channels = w.shape[0]
    elif isinstance(module, _CONV_T):
        module.in_channels = module.weight.shape[0]
        module.out_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _BN):
        ref = module.weight if module.weight is not None else module.running_mean
        module.num_features = ref.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = (module.weight.shape[0],)


class L1NormFilterPruner(FilterPruner):
    """Score = mean |W| over the non-pruned axes of the master parameter (PaddleSlim dygraph)."""

    def scores(self, group: Group) -> torch.Tensor:
        return criteria.l1_norm_scores(group.root_matrix())


class L2NormFilterPruner(FilterPruner):
    """Score = sqrt(sum W^2) over the non-pruned axes."""

    def scores(self, group: Group) -> torch.Tensor:
        return criteria.l2_norm_scores(group.root_matrix())


class FPGMFilterPruner(FilterPruner):
    """FPGM: score_i = sum_j ||w_i - w_j||_2; the filters nearest the geometric median are pruned."""

    def scores(self, group: Group) -> torch.Tensor:
        return criteria.fpgm_scores(group.root_matrix())


class SlimFilterPruner(FilterPruner):
    """Network Slimming: score = |gamma| of the BatchNorm directly consuming the conv's output; ValueError
    when there is none."""

    def scores(self, group: Group) -> torch.Tensor:
        if group.bn_after_root is None:
            raise ValueError(f"{type(self).__name__} needs a BatchNorm right after '{group.root}'; none found")
        bn = self.model.get_submodule(group.bn_after_root)
        if bn.weight is None:
            raise ValueError(f"BatchNorm '{group.bn_after_root}' after '{group.root}' has no scale (affine=False)")
        return criteria.bn_scale_scores(bn.weight)


class OptSlimFilterPruner(SlimFilterPruner):
    """BN scale with PaddleSlim's optimal-threshold selector: the ratio is an energy fraction of sum gamma^2."""

    def select(self, scores: torch.Tensor, ratio: float, align: Optional[int] = None) -> torch.Tensor:
        return criteria.optimal_threshold_selector(scores, ratio, align)
