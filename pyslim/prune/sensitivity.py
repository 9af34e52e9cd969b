"""Sensitivity analysis and sensitivity-driven pruning (PaddleSlim ``prune/sensitive.py`` and the dygraph
``FilterPruner.sensitive`` / ``sensitive_prune``).

A parameter's *sensitivity* is the relative metric loss ``(baseline - metric) / baseline`` when that
parameter's group alone is pruned by a ratio. ``sensitive()`` measures it for every prunable parameter and
ratio and keeps the results in a JSON file ``{param: {ratio: loss}}`` written after each parameter, so an
interrupted scan resumes where it stopped. ``sensitive_prune()`` then looks for the loss threshold whose
per-layer ratios (``get_ratios_by_loss``) remove a requested fraction of the FLOPs.

    >>> pruner = L1NormFilterPruner(model, torch.randn(1, 1, 28, 28))
    >>> sens = pruner.sensitive(lambda m: accuracy(m, val_loader), sen_file="sens.json")
    >>> plan = pruner.sensitive_prune(pruned_flops=0.5)          # about half the FLOPs removed
    >>> plot_sensitivity(sens, "sens.png")

The functions here take the pruner as their first argument; :class:`~pyslim.prune.FilterPruner` exposes
them as methods.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from pyslim.prune.pruners import FilterPruner, PruningPlan

__all__ = ["sensitive", "sensitive_prune", "load_sensitivities", "save_sensitivities", "merge_sensitivities",
           "get_ratios_by_loss", "plot_sensitivity", "DEFAULT_PRUNED_RATIOS"]

logger = logging.getLogger(__name__)

Sensitivities = Dict[str, Dict[float, float]]

#: PaddleSlim's ``np.arange(0.1, 1, 0.1)``, without its float noise (0.30000000000000004).
DEFAULT_PRUNED_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

_RATIO_DIGITS = 6  # ratios are keys: rounded so that 0.1 + 0.2 and 0.3 are the same entry


def _ratio_key(ratio: float) -> float:
    return round(float(ratio), _RATIO_DIGITS)


# ----------------------------------------------------------------------------------------------- files
def _normalize(sens: Mapping) -> Sensitivities:
    if not isinstance(sens, Mapping):
        raise ValueError(f"sensitivities must be a dict {{param: {{ratio: loss}}}}; got {type(sens).__name__}")
    out: Sensitivities = {}
    for name, losses in sens.items():
        if not isinstance(losses, Mapping):
            raise ValueError(f"sensitivities['{name}'] must be a dict {{ratio: loss}}; got {losses!r}")
        out[str(name)] = {_ratio_key(r): float(v) for r, v in losses.items()}
    return out


def load_sensitivities(path: Union[str, os.PathLike]) -> Sensitivities:
    """Read a sensitivity file written by ``sensitive()``: ``{param: {ratio (float): loss}}``; an empty
    dict if the file does not exist."""
    if not os.path.exists(path):
        return {}
    with open(path, "r", encoding="utf-8") as f:
        raw = json.load(f)
    return _normalize(raw)


def save_sensitivities(sens: Mapping, path: Union[str, os.PathLike]) -> None:
    """Write ``sens`` as JSON (ratios as string keys, sorted), atomically: a crash mid-write leaves the
    previous file intact, so a resumed scan never reads half a file."""
    sens = _normalize(sens)
    data = {name: {repr(r): sens[name][r] for r in sorted(sens[name])} for name in sens}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sens-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def merge_sensitivities(sensitivities: Iterable[Union[Mapping, str, os.PathLike]]) -> Sensitivities:
    """Merge several sensitivity dicts or files (e.g. scans of different layers run on different
    machines) into one; for a (param, ratio) present more than once the later one wins."""
    merged: Sensitivities = {}
    for item in sensitivities:
        sens = load_sensitivities(item) if isinstance(item, (str, os.PathLike)) else _normalize(item)
        for name, losses in sens.items():
            merged.setdefault(name, {}).update(losses)
    return merged


# ------------------------------------------------------------------------------------- ratios by loss
def get_ratios_by_loss(sensitivities: Mapping, loss: float, include_zero: bool = True) -> Dict[str, float]:
    """Per parameter, the largest pruning ratio whose sensitivity stays within ``loss``.

    Walking the measured points ``(r_i, l_i)`` in ascending ratio, take the largest i with ``l_i <= loss``;
    if it is the last point its ratio is used as is, otherwise the ratio is interpolated linearly towards
    the next point: ``r0 + (loss - l0) * (r1 - r0) / (l1 - l0)`` (PaddleSlim ``get_ratios_by_loss``).

    ``include_zero`` (default True) adds the point ``(0, 0)``: the unpruned model loses nothing by
    definition. Without it (PaddleSlim's behaviour) a parameter whose first measured loss is above
    ``loss`` is left out (not pruned) and then jumps straight to the first measured ratio as ``loss``
    grows; with coarse ratios that one jump can be a large share of the FLOPs, which makes a FLOPs target
    unreachable for ``sensitive_prune``. Parameters with no point within ``loss`` are left out.

        >>> get_ratios_by_loss({"w": {0.2: 0.01, 0.4: 0.05}}, 0.03)
        {'w': 0.3}
    """
    loss = float(loss)
    ratios: Dict[str, float] = {}
    for name, losses in _normalize(sensitivities).items():
        points = sorted(losses.items())
        if include_zero and (not points or points[0][0] > 0.0):
            points.insert(0, (0.0, 0.0))
        for i in range(len(points) - 1, -1, -1):
            r0, l0 = points[i]
            if l0 > loss:
                continue
            if i == len(points) - 1:
                ratio = r0
            else:
                r1, l1 = points[i + 1]   # l1 > loss >= l0 because i is the largest index within loss
                ratio = r0 + (loss - l0) * (r1 - r0) / (l1 - l0)
            if ratio > 0.0:
                ratios[name] = float(ratio)
            break
    return ratios


# --------------------------------------------------------------------------------------------- plot
def plot_sensitivity(sensitivities: Mapping, path: Union[str, os.PathLike], title: str = "Sensitivity") -> None:
    """Save a PNG of loss vs pruning ratio, one line per parameter (matplotlib, Agg backend: no display
    needed). Raises ImportError naming the package when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot_sensitivity needs matplotlib: pip install matplotlib") from e
    sens = _normalize(sensitivities)
    # A Figure with its own Agg canvas, not pyplot: no global state, safe in threads and under any backend.
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in sorted(sens):
        points = sorted(sens[name].items())
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xlabel("pruned ratio")
    ax.set_ylabel("relative metric loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if sens:
        ax.legend(fontsize="x-small", loc="upper left")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


# ---------------------------------------------------------------------------------------- sensitive
def _check_clean(pruner: "FilterPruner", what: str) -> None:
    if pruner._backup or pruner._lazy_masks:
        raise ValueError(f"{what} needs an unpruned model (it prunes and restores repeatedly, and restore() "
                         f"would also undo the pruning already applied); call restore() first or create a "
                         f"new pruner")


def _restore_to(pruner: "FilterPruner", graph) -> None:
    """``restore()`` brings back the very same modules and Parameter objects with their original shapes, so
    the graph traced on the unpruned model is valid again; reusing it saves a re-trace per measurement."""
    pruner.restore()
    pruner._graph = graph


def _check_ratios(pruned_ratios: Sequence[float]) -> List[float]:
    try:
        ratios = [float(r) for r in pruned_ratios]
    except TypeError:
        raise ValueError(f"pruned_ratios must be a sequence of numbers in (0, 1); got {pruned_ratios!r}") from None
    if not ratios or any(not (0.0 < r < 1.0) or math.isnan(r) for r in ratios):
        raise ValueError(f"pruned_ratios must be a non-empty sequence of numbers in (0, 1); got {pruned_ratios!r}")
    return sorted({_ratio_key(r) for r in ratios})


def sensitive(pruner: "FilterPruner", eval_func: Callable[[nn.Module], float],
              sen_file: Optional[Union[str, os.PathLike]] = "sensitivities.json",
              target_vars: Optional[Sequence[str]] = None, skip_vars: Optional[Sequence[str]] = None,
              pruned_ratios: Sequence[float] = DEFAULT_PRUNED_RATIOS, progress: bool = True,
              apply: str = "lazy") -> Sensitivities:
    """Measure ``{param: {ratio: loss}}`` with ``loss = (baseline - metric) / baseline``.

    Each parameter (``target_vars``, default every prunable parameter, minus ``skip_vars``) is pruned
    alone at each ratio, the model is evaluated with ``eval_func(model) -> metric`` (higher is better) and
    restored exactly. ``apply="lazy"`` (default, as PaddleSlim) zeroes the channels, ``"physical"`` removes
    them; both give the same outputs for conv + BatchNorm groups. Entries already in ``sen_file`` are not
    measured again, and the file is rewritten after each parameter, so a rerun resumes an interrupted scan
    (``sen_file=None``: keep the results in memory only). A ratio that prunes no channel of a small layer
    has loss 0 without an evaluation. The result is also kept on the pruner for ``sensitive_prune``.
    """
    _check_clean(pruner, "sensitive()")
    if not callable(eval_func):
        raise TypeError(f"eval_func must be callable as eval_func(model) -> float; got {type(eval_func).__name__}")
    if apply not in ("lazy", "physical"):
        raise ValueError(f"apply must be 'lazy' or 'physical'; got {apply!r}")
    ratios = _check_ratios(pruned_ratios)
    prunable = pruner.prunable_parameters()
    if target_vars is None:
        names = list(prunable)
    else:
        if isinstance(target_vars, str):
            target_vars = [target_vars]
        unknown = [n for n in target_vars if n not in prunable]
        if unknown:
            raise ValueError(f"target_vars {unknown} are not prunable parameters; see prunable_parameters(): "
                             f"{prunable}")
        names = list(dict.fromkeys(target_vars))
    skip = set([skip_vars] if isinstance(skip_vars, str) else (skip_vars or ()))
    names = [n for n in names if n not in skip]

    sens = load_sensitivities(sen_file) if sen_file is not None else {}
    todo = [(n, r) for n in names for r in ratios if r not in sens.get(n, {})]
    logger.info("pyslim.prune.sensitive: %d parameter(s) x %d ratio(s); %d measurement(s) to do, %d resumed",
                len(names), len(ratios), len(todo), len(names) * len(ratios) - len(todo))
    if todo:
        graph = pruner.graph
        baseline = float(eval_func(pruner.model))
        if not math.isfinite(baseline) or baseline == 0.0:
            raise ValueError(f"eval_func returned {baseline} on the unpruned model; the relative loss "
                             f"(baseline - metric) / baseline needs a finite, non-zero baseline")
        logger.info("pyslim.prune.sensitive: baseline metric %.6g", baseline)
        bar = _progress_bar(len(todo), progress)
        try:
            for name in names:
                pending = [r for r in ratios if r not in sens.get(name, {})]
                for ratio in pending:
                    bar.set_postfix_str(f"{name} @ {ratio:g}", refresh=False)
                    try:
                        plan = pruner.prune_vars({name: ratio}, apply=apply)
                        if plan.pruned_channels.get(name):
                            metric = float(eval_func(pruner.model))
                            loss = (baseline - metric) / baseline
                        else:
                            loss = 0.0  # nothing pruned (too few channels for this ratio): the baseline
                    finally:
                        _restore_to(pruner, graph)
                    sens.setdefault(name, {})[ratio] = float(loss)
                    logger.debug("pyslim.prune.sensitive: %s ratio %g -> loss %.6g", name, ratio, loss)
                    bar.update(1)
                if pending and sen_file is not None:
                    save_sensitivities(sens, sen_file)
                if pending:
                    logger.info("pyslim.prune.sensitive: %s: %s", name,
                                ", ".join(f"{r:g}:{sens[name][r]:.4f}" for r in sorted(sens[name])))
        finally:
            bar.close()
    result = {n: dict(sorted(sens[n].items())) for n in names if n in sens}
    pruner._sensitivities = result
    return result


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sensitivity", unit="eval", disable=not enabled, leave=False)


# ----------------------------------------------------------------------------------- sensitive_prune
def sensitive_prune(pruner: "FilterPruner", pruned_flops: float = 0.5, skip_vars: Optional[Sequence[str]] = None,
                    align: Optional[int] = None, sen_file: Optional[Union[str, os.PathLike]] = None,
                    tolerance: float = 0.01, max_iterations: int = 50) -> "PruningPlan":
    """Prune so that about ``pruned_flops`` of the model's FLOPs go, spending the loss budget where the
    sensitivities say it is cheapest; returns the applied (physical) :class:`PruningPlan`.

    Binary search on the loss threshold in [0, 1] (PaddleSlim ``get_ratios_by_sensitivity``): ratios from
    ``get_ratios_by_loss``, prune, measure ``pyslim.analysis.flops`` against the unpruned count, restore;
    a too-small fraction raises the threshold, a too-large one lowers it. The search stops when the
    fraction is within ``tolerance`` (absolute) of the target, repeats (at 4 decimals: the threshold no
    longer changes any channel count) or after ``max_iterations``; the closest plan found is applied. If
    it is still outside the tolerance a warning is logged (channels are discrete: a layer with few
    channels moves the FLOPs in steps). The chosen ratios are kept in ``pruner.sensitive_ratios``.

    Sensitivities come from ``sen_file`` if given, else from the last ``sensitive()`` call.
    """
    from pyslim.analysis import flops as count_flops

    _check_clean(pruner, "sensitive_prune()")
    if isinstance(pruned_flops, bool) or not isinstance(pruned_flops, (int, float)) or not 0.0 < pruned_flops < 1.0:
        raise ValueError(f"pruned_flops must be a fraction in (0, 1); got {pruned_flops!r}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1); got {tolerance!r}")
    if sen_file is not None:
        if not os.path.exists(sen_file):
            raise ValueError(f"sen_file {os.fspath(sen_file)!r} does not exist")
        sens = load_sensitivities(sen_file)
    else:
        sens = getattr(pruner, "_sensitivities", None)
        if not sens:
            raise ValueError("sensitive_prune needs sensitivities: run pruner.sensitive(eval_func) first or pass "
                             "sen_file")
    prunable = set(pruner.prunable_parameters())
    skip = set([skip_vars] if isinstance(skip_vars, str) else (skip_vars or ()))
    unknown = sorted(n for n in sens if n not in prunable)
    if unknown:
        logger.warning("pyslim.prune.sensitive_prune: ignoring sensitivities of parameters that are not "
                       "prunable in this model: %s", unknown)
    sens = {n: v for n, v in sens.items() if n in prunable and n not in skip}
    if not sens:
        raise ValueError("no sensitivities left for prunable parameters after skip_vars")

    graph = pruner.graph
    base = count_flops(pruner.model, pruner.example_inputs)
    if base <= 0:
        raise ValueError("the model has no countable FLOPs on example_inputs")

    def measure(ratios: Dict[str, float]) -> float:
        ratios = {n: r for n, r in ratios.items() if r > 0.0}
        if not ratios:
            return 0.0
        verify = pruner.verify
        pruner.verify = False   # the FLOPs run below executes the pruned model anyway
        try:
            pruner.prune_vars(ratios, apply="physical", align=align)
            return (base - count_flops(pruner.model, pruner.example_inputs)) / base
        finally:
            pruner.verify = verify
            _restore_to(pruner, graph)

    low, up = 0.0, 1.0
    seen = set()
    best_ratios: Dict[str, float] = {}
    best_fraction = 0.0
    for iteration in range(max_iterations):
        threshold = (low + up) / 2
        ratios = get_ratios_by_loss(sens, threshold)
        ratios = {n: min(r, 0.999) for n, r in ratios.items()}
        fraction = measure(ratios)
        logger.info("pyslim.prune.sensitive_prune: step %d, loss threshold %.6f -> pruned FLOPs %.4f",
                    iteration, threshold, fraction)
        if abs(fraction - pruned_flops) < abs(best_fraction - pruned_flops):
            best_ratios, best_fraction = ratios, fraction
        key = round(fraction, 4)
        if abs(fraction - pruned_flops) <= tolerance or key in seen:
            break
        seen.add(key)
        if fraction < pruned_flops:
            low = threshold
        else:
            up = threshold
    if abs(best_fraction - pruned_flops) > tolerance:
        logger.warning("pyslim.prune.sensitive_prune: the closest pruned-FLOPs fraction found is %.4f for a "
                       "target of %.4f (tolerance %.4f)", best_fraction, pruned_flops, tolerance)
    pruner.sensitive_ratios = dict(best_ratios)
    best_ratios = {n: r for n, r in best_ratios.items() if r > 0.0}
    if not best_ratios:
        from pyslim.prune.pruners import PruningPlan

        return PruningPlan("physical")
    plan = pruner.prune_vars(best_ratios, apply="physical", align=align)
    logger.info("pyslim.prune.sensitive_prune: pruned FLOPs %.4f with ratios %s", best_fraction,
                {n: round(r, 4) for n, r in best_ratios.items()})
    return plan
