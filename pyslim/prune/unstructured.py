"""Unstructured (element / block) pruning with masks (PaddleSlim ``UnstructuredPruner`` and
``GMPUnstructuredPruner``, 2.1+).

A parameter's mask keeps the entries whose block average ``|block_avg(W)|`` is at least a threshold.
Blocks are ``sparse_block = (m, n)`` tiles over the first two axes of the weight **as PyTorch stores it**
(Linear: (out, in); conv: (out, in, kh, kw), a block then spans m output x n input channels and the whole
kernel); edge tiles are partial; ``(1, 1)`` is element-wise. In ``mode="ratio"`` the threshold is
``sort(|block_avg(W)|)[max(0, round(ratio * N) - 1)]`` over all prunable parameters together (N = their
element count), or per parameter with ``local_sparsity=True``; in ``mode="threshold"`` it is fixed. The
masks are applied in place before every forward (a forward pre-hook on the model) and by ``step()`` /
``update_params()``; the optimizer may revive masked weights between forwards, and in ratio mode the
next ``step()`` re-ranks all weights, so pruned entries can come back (PaddleSlim's dynamic masks).

By default norm layers and 1-D parameters (biases) are not pruned.

    >>> pruner = UnstructuredPruner(model, mode="ratio", ratio=0.55)
    >>> for x, y in loader:
    ...     loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    ...     pruner.step()                                  # new threshold and masks, applied
    >>> UnstructuredPruner.total_sparse(model)             # fraction of zeros in all parameters

``GMPUnstructuredPruner`` raises the ratio along the cubic Gradual Magnitude Pruning schedule.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Set

import torch
from torch import nn

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "block_average"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def block_average(weight: torch.Tensor, block: Sequence[int] = (1, 1)) -> torch.Tensor:
    """``|W|`` averaged over ``block = (m, n)`` tiles of the first two axes (and all remaining axes within a
    tile), broadcast back to ``weight``'s shape, in float64. Edge tiles average the entries they hold.
    ``(1, 1)`` returns ``|W|`` (a 1-D weight only supports that)."""
    m, n = int(block[0]), int(block[1])
    a = weight.detach().abs().double()
    if m == 1 and n == 1:
        return a
    if a.dim() < 2:
        raise ValueError(f"sparse_block {tuple(block)} needs a weight of at least 2 dims; got shape {tuple(a.shape)}")
    rows, cols = a.shape[0], a.shape[1]
    a2 = a.reshape(rows, cols, -1).sum(dim=2)          # the whole kernel belongs to its (row, col) tile
    per_entry = a.reshape(rows, cols, -1).shape[2]
    pr, pc = (-rows) % m, (-cols) % n
    padded = torch.nn.functional.pad(a2, (0, pc, 0, pr))
    counts = torch.nn.functional.pad(torch.full_like(a2, float(per_entry)), (0, pc, 0, pr))
    R, C = padded.shape[0] // m, padded.shape[1] // n
    sums = padded.reshape(R, m, C, n).sum(dim=(1, 3))
    cnt = counts.reshape(R, m, C, n).sum(dim=(1, 3))
    avg = sums / cnt
    full = avg.repeat_interleave(m, 0).repeat_interleave(n, 1)[:rows, :cols]
    return full.reshape(rows, cols, *([1] * (a.dim() - 2))).expand(a.shape).contiguous()


def _threshold_for(values: torch.Tensor, ratio: float) -> float:
    flat = torch.sort(values.reshape(-1)).values
    return float(flat[max(0, int(round(ratio * flat.numel())) - 1)]) if flat.numel() else 0.0


class UnstructuredPruner:
    """Magnitude masks on the prunable parameters of ``model`` (spec 1.2.6).

    Args:
        model: pruned in place; a forward pre-hook applies the masks before each forward.
        mode: "ratio" (a fraction of the weights is pruned; ``step()`` recomputes the threshold) or
            "threshold" (fixed ``threshold``).
        threshold: the fixed threshold of "threshold" mode.
        ratio: the target fraction of "ratio" mode, in [0, 1].
        prune_params_type: None (every parameter not skipped) or "conv1x1_only" (only 4-D weights with a
            1x1 kernel; everything else is skipped).
        skip_params_func: ``f(model) -> set of parameter names`` not to prune; replaces the default
            (``UnstructuredPruner.default_skip_params``: norm layers and 1-D parameters).
        local_sparsity: in "ratio" mode, each parameter gets its own threshold for ``ratio``.
        sparse_block: (m, n) block shape; see :func:`block_average`.
    """

    def __init__(self, model: nn.Module, mode: str = "ratio", threshold: float = 0.01, ratio: float = 0.55,
                 prune_params_type: Optional[str] = None,
                 skip_params_func: Optional[Callable[[nn.Module], Iterable[str]]] = None,
                 local_sparsity: bool = False, sparse_block: Sequence[int] = (1, 1)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if mode not in ("ratio", "threshold"):
            raise ValueError(f"mode must be 'ratio' or 'threshold'; got {mode!r}")
        if prune_params_type not in (None, "conv1x1_only"):
            raise ValueError(f"prune_params_type must be None or 'conv1x1_only'; got {prune_params_type!r}")
        if local_sparsity and mode != "ratio":
            raise ValueError("local_sparsity=True needs mode='ratio' (a fixed threshold is already per weight)")
        self._check_fraction("ratio", ratio)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
                or threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0; got {threshold!r}")
        if (not isinstance(sparse_block, (list, tuple)) or len(sparse_block) != 2
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sparse_block)):
            raise ValueError(f"sparse_block must be two positive ints (m, n); got {sparse_block!r}")
        self.model = model
        self.mode = mode
        self.threshold = float(threshold)
        self.ratio = float(ratio)
        self.prune_params_type = prune_params_type
        self.local_sparsity = bool(local_sparsity)
        self.sparse_block = (int(sparse_block[0]), int(sparse_block[1]))
        skip = set(skip_params_func(model)) if skip_params_func is not None else self.default_skip_params(model)
        if prune_params_type == "conv1x1_only":
            skip |= {name for name, p in model.named_parameters()
                     if not (p.dim() == 4 and p.shape[2] == 1 and p.shape[3] == 1)}
        self.skip_params: Set[str] = skip
        self.params: Dict[str, nn.Parameter] = {name: p for name, p in model.named_parameters()
                                                 if name not in skip}
        if self.sparse_block != (1, 1):
            flat = [n for n, p in self.params.items() if p.dim() < 2]
            if flat:
                raise ValueError(f"sparse_block {self.sparse_block} needs weights of at least 2 dims; skip {flat} "
                                 f"with skip_params_func")
        self.thresholds: Dict[str, float] = {}
        self.masks: Dict[str, torch.Tensor] = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self._hook = model.register_forward_pre_hook(self._forward_pre_hook)

    # ------------------------------------------------------------------------------------------ public
    @staticmethod
    def default_skip_params(model: nn.Module) -> Set[str]:
        """Names of the parameters of norm layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, ...) and
        of every 1-D parameter (biases)."""
        skip: Set[str] = set()
        for mname, module in model.named_modules():
            if isinstance(module, _NORMS) or "norm" in type(module).__name__.lower():
                skip |= {f"{mname}.{n}" if mname else n for n, _ in module.named_parameters(recurse=False)}
        skip |= {name for name, p in model.named_parameters() if p.dim() <= 1}
        return skip

    def step(self) -> None:
        """Recompute the threshold (ratio mode) and the masks from the current weights, and apply them."""
        if self.mode == "ratio":
            self.update_threshold()
        self._update_masks()
        self.update_params()

    def update_threshold(self) -> None:
        """Ratio mode: ``sort(|block_avg(W)|)[max(0, round(ratio * N) - 1)]``, global or per parameter."""
        if self.mode != "ratio":
            return
        averages = {n: block_average(p, self.sparse_block) for n, p in self.params.items()}
        if self.local_sparsity:
            self.thresholds = {n: _threshold_for(a, self.ratio) for n, a in averages.items()}
        elif averages:
            self.threshold = _threshold_for(torch.cat([a.reshape(-1) for a in averages.values()]), self.ratio)

    @torch.no_grad()
    def update_params(self) -> None:
        """Multiply every prunable parameter by its mask, in place."""
        for name, p in self.params.items():
            p.mul_(self.masks[name].to(device=p.device, dtype=p.dtype))

    def summarize_weights(self, model: Optional[nn.Module] = None, ratio: float = 0.1) -> float:
        """The threshold that would prune ``ratio`` of the prunable weights of ``model`` (default: this
        pruner's model) with the ratio-mode rule: a way to choose ``threshold`` for threshold mode."""
        self._check_fraction("ratio", ratio)
        if model is None or model is self.model:
            params = list(self.params.values())
        else:
            skip = self.default_skip_params(model)
            params = [p for n, p in model.named_parameters() if n not in skip]
        if not params:
            return 0.0
        return _threshold_for(torch.cat([block_average(p, self.sparse_block).reshape(-1) for p in params]), ratio)

    @staticmethod
    def total_sparse(model: nn.Module) -> float:
        """Fraction of exactly-zero entries over all parameters of ``model``."""
        total = zeros = 0
        for p in model.parameters():
            total += p.numel()
            zeros += int((p.detach() == 0).sum())
        return zeros / total if total else 0.0

    @staticmethod
    def total_sparse_conv1x1(model: nn.Module) -> float:
        """Fraction of zeros over the 4-D weights with a 1x1 kernel only."""
        total = zeros = 0
        for p in model.parameters():
            if p.dim() == 4 and p.shape[2] == 1 and p.shape[3] == 1:
                total += p.numel()
                zeros += int((p.detach() == 0).sum())
        return zeros / total if total else 0.0

    def remove_hooks(self) -> None:
        """Stop applying the masks before forward (e.g. before exporting the pruned model)."""
        self._hook.remove()

    # ------------------------------------------------------------------------------------------ private
    @staticmethod
    def _check_fraction(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")

    def _update_masks(self) -> None:
        for name, p in self.params.items():
            th = self.thresholds.get(name, self.threshold) if self.local_sparsity else self.threshold
            self.masks[name] = block_average(p, self.sparse_block) >= th

    def _forward_pre_hook(self, module, args):
        self.update_params()
        return None


def _schedule_config(configs: Mapping) -> Dict[str, float]:
    required = ("stable_iterations", "pruning_iterations", "tunning_iterations", "pruning_steps", "initial_ratio")
    if not isinstance(configs, Mapping):
        raise ValueError(f"configs must be a dict with keys {required} (+ resume_iteration); got {configs!r}")
    cfg = dict(configs)
    if "tuning_iterations" in cfg and "tunning_iterations" not in cfg:   # accept the correct spelling too
        cfg["tunning_iterations"] = cfg.pop("tuning_iterations")
    missing = [k for k in required if k not in cfg]
    unknown = [k for k in cfg if k not in required + ("resume_iteration",)]
    if missing or unknown:
        raise ValueError(f"configs must have the keys {list(required)} (and optionally 'resume_iteration'); "
                         f"missing {missing}, unknown {unknown}")
    cfg.setdefault("resume_iteration", 0)
    for k in ("stable_iterations", "pruning_iterations", "tunning_iterations", "pruning_steps", "resume_iteration"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"configs['{k}'] must be an int >= 0; got {v!r}")
    if cfg["pruning_steps"] < 1 or cfg["pruning_iterations"] < 1:
        raise ValueError(f"configs['pruning_steps'] and configs['pruning_iterations'] must be >= 1; got "
                         f"{cfg['pruning_steps']} and {cfg['pruning_iterations']}")
    return cfg


class GMPUnstructuredPruner(UnstructuredPruner):
    """Gradual Magnitude Pruning: ratio mode whose ratio follows, per pruning step i,
    ``initial_ratio + (ratio - initial_ratio) * (((i / pruning_steps) - 1)^3 + 1)``.

    The schedule is ``stable_steps`` zeros (``int(stable_iterations / pruning_iterations * pruning_steps)``),
    then the ``pruning_steps`` cubic values, then ``tuning_steps`` (same rule) at the target ``ratio``; it
    moves one entry every ``period = int(pruning_iterations / pruning_steps)`` iterations (calls of
    ``step()``), and stays at the target after its end. The period must be > 10 iterations. Masks are
    recomputed only when the scheduled ratio changes (and on the first ``step()``, also after resuming
    at ``resume_iteration``).

        >>> pruner = GMPUnstructuredPruner(model, ratio=0.75, configs=dict(stable_iterations=0,
        ...     pruning_iterations=1000, tunning_iterations=1000, pruning_steps=50, initial_ratio=0.15))
        >>> pruner.ratio_at(0), pruner.ratio_at(999)
    """

    def __init__(self, model: nn.Module, ratio: float = 0.55, configs: Optional[Mapping] = None,
                 prune_params_type: Optional[str] = None,
                 skip_params_func: Optional[Callable[[nn.Module], Iterable[str]]] = None,
                 local_sparsity: bool = False, sparse_block: Sequence[int] = (1, 1)):
        if configs is None:
            raise ValueError("GMPUnstructuredPruner needs configs={stable_iterations, pruning_iterations, "
                             "tunning_iterations, pruning_steps, initial_ratio[, resume_iteration]}")
        cfg = _schedule_config(configs)
        self._check_fraction("ratio", ratio)
        self._check_fraction("configs['initial_ratio']", cfg["initial_ratio"])
        period = cfg["pruning_iterations"] / cfg["pruning_steps"]
        if not period > 10:
            raise ValueError(f"pruning_iterations / pruning_steps must be > 10 (each ratio is kept for that many "
                             f"iterations so the weights can recover); got {cfg['pruning_iterations']} / "
                             f"{cfg['pruning_steps']} = {period:g}")
        super().__init__(model, mode="ratio", ratio=0.0, prune_params_type=prune_params_type,
                         skip_params_func=skip_params_func, local_sparsity=local_sparsity,
                         sparse_block=sparse_block)
        self.target_ratio = float(ratio)
        self.initial_ratio = float(cfg["initial_ratio"])
        self.stable_iterations = cfg["stable_iterations"]
        self.pruning_iterations = cfg["pruning_iterations"]
        self.tunning_iterations = cfg["tunning_iterations"]
        self.pruning_steps = cfg["pruning_steps"]
        self.period = int(period)
        self.cur_iteration = cfg["resume_iteration"]
        stable = int(self.stable_iterations / self.pruning_iterations * self.pruning_steps)
        tuning = int(self.tunning_iterations / self.pruning_iterations * self.pruning_steps)
        span = self.target_ratio - self.initial_ratio
        cubic = [self.initial_ratio + span * (((i / self.pruning_steps) - 1.0) ** 3 + 1.0)
                 for i in range(self.pruning_steps)]
        self.schedule = [0.0] * stable + cubic + [self.target_ratio] * tuning
        self._applied_ratio: Optional[float] = None

    def ratio_at(self, iteration: int) -> float:
        """The scheduled ratio at ``iteration`` (0-based count of ``step()`` calls)."""
        index = int(iteration) // self.period
        return self.schedule[index] if index < len(self.schedule) else self.target_ratio

    def step(self) -> None:
        self.ratio = self.ratio_at(self.cur_iteration)
        if self._applied_ratio is None or self.ratio != self._applied_ratio:
            super().step()
            self._applied_ratio = self.ratio
        self.cur_iteration += 1
