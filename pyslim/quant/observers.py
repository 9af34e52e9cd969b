"""Activation observers for post-training quantization: statistics only, no fake quantization.

Each observer watches the tensors it is called on (``forward`` returns its input unchanged), keeps its
statistics in registered buffers (so they travel with ``state_dict`` and can be all-reduced across
processes), and turns them into a symmetric clipping ``threshold()`` — the int8 scale is
``threshold / 127``. The algorithms are those of Paddle's ``PostTrainingQuantization`` (spec §1.1.5):

=========== =================================================================================================
``abs_max`` running max of max|x| over all batches
``avg``     mean over batches of (mean over samples of the per-sample max|x|)
``hist``    2048-bin histogram of |x| over [abs_min, abs_max] (two passes); the first bin ``i`` where the
            normalised cumulative sum reaches ``hist_percent``; threshold ``(i + 1 - 0.5) * bin_width``
``KL``      the same histogram; Paddle's entropy search ``cal_kl_threshold`` (native)
``mse``     per batch, scales ``s = k * max|x|`` for ``k = 0.30, 0.32, ... 0.98``; keeps the scale of the
            smallest ``mean((x - qdq(x))^2)``, the best loss carried across batches (native sweep)
``emd``     the same search minimising ``|mean(x) - mean(qdq(x))| + |std(x) - std(qdq(x))|``
=========== =================================================================================================

``qdq(x) = clip(round_half_even(x / s * 127), -128, 127) / 127 * s`` (Paddle's ONNX format).

Paddle quirks that are reproduced on purpose:

* ``hist`` and ``KL`` return ``index * bin_width`` **without adding the histogram's left edge**
  (``abs_min``): when ``abs_min > 0`` the threshold is smaller than the value it stands for.
* ``KL`` starts its search at bin ``int((bins - 1) / 2)`` and never takes the whole histogram as a
  candidate; when no candidate qualifies it falls back to the last non-empty bin at or below the start.
* ``mse``/``emd`` walk ``k`` by repeated ``k += 0.02`` from 0.3 while ``k <= 1.0``: the float sum passes
  1.0 as 1.0000000000000004, so there are 35 candidates, the last ``k = 0.98`` (the spec's "..., 1.00" is
  the intent; ``k = 1.0`` is never tried), and a later candidate wins ties (``<=``).

Deliberate differences (documented, for inputs where Paddle's result is meaningless):

* a degenerate histogram range (``abs_min == abs_max``, e.g. a constant or all-zero input) uses
  ``[0, abs_max]`` (``[0, 1]`` for all zeros) instead of numpy's ``[v - 0.5, v + 0.5]``, which with the
  missing left edge gives a threshold near 0.5 whatever the value;
* ``hist``: if rounding keeps the cumulative sum below ``hist_percent`` the last bin is used (Paddle would
  return a negative threshold);
* the histogram and the MSE/EMD arithmetic run in float64 (Paddle: numpy on float32 data), so results can
  differ from Paddle's in the last ulp of a bin edge or a loss.

NaN (and, outside the histogram pass, Inf) in the data raises ``ValueError`` naming the observer's layer.

Example::

    >>> import torch
    >>> from pyslim.quant.observers import make_observer
    >>> obs = make_observer("hist", name="conv1")
    >>> batches = [torch.randn(8, 16) for _ in range(4)]
    >>> for x in batches: _ = obs(x)          # pass 1: range
    >>> obs.begin_histogram()
    >>> for x in batches: _ = obs(x)          # pass 2: histogram
    >>> scale = obs.threshold() / 127
"""

from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor, nn

from pyslim.ops import _calibration as C

__all__ = [
    "ObserverBase",
    "AbsMaxObserver",
    "AvgObserver",
    "HistObserver",
    "KLObserver",
    "MSEObserver",
    "EMDObserver",
    "make_observer",
    "ALGORITHMS",
    "search_ratios",
]


def search_ratios() -> List[float]:
    """Paddle's MSE/EMD candidate ratios: ``s = 0.3; while s <= 1.0: yield s; s += 0.02`` (float
    accumulation: 35 values from 0.3 to 0.98 — the sum overshoots 1.0 before reaching it)."""
    out, s = [], 0.3
    while s <= 1.0:
        out.append(s)
        s += 0.02
    return out


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: Tensor, op) -> None:
    """In-place all-reduce of a buffer, on the device the backend wants (CUDA for NCCL)."""
    dist = torch.distributed
    dev = t.device
    if dist.get_backend() == "nccl" and dev.type != "cuda":
        work = t.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        work = t.clone()
    dist.all_reduce(work, op=op)
    t.copy_(work.to(dev))


class ObserverBase(nn.Module):
    """Statistics of the tensors passed to ``forward`` (which returns them unchanged).

    ``name`` labels error messages (the PTQ driver passes the layer's qualified name). ``bits`` is the
    activation bit width (``2**(bits-1) - 1`` levels each side). ``needs_two_passes`` tells the driver to run
    the calibration data twice, calling ``begin_histogram()`` between the passes.
    """

    needs_two_passes = False
    algo = ""

    def __init__(self, name: str = "", bits: int = 8):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ValueError(f"bits must be an int in [2, 16]; got {bits!r}")
        self.name = name
        self.bits = bits
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        # the signed range seen: with it the PTQ driver can spread all 2**bits levels over the part of
        # [-threshold, threshold] the data occupies (see ``clipped_range``)
        self.register_buffer("min_value", torch.tensor(math.inf, dtype=torch.float64))
        self.register_buffer("max_value", torch.tensor(-math.inf, dtype=torch.float64))

    # -- helpers ---------------------------------------------------------------------------------------

    def _label(self) -> str:
        return f"layer {self.name!r} ({type(self).__name__})" if self.name else type(self).__name__

    def _nonfinite(self, what: str = "NaN or Inf") -> ValueError:
        return ValueError(f"calibration data of {self._label()} contains {what}; check the model's input "
                          "and the layers before this one")

    def _prepare(self, x) -> Optional[Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._label()} expects a tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{self._label()} expects a floating tensor; got {x.dtype}")
        if x.numel() == 0:
            return None
        return x.detach()

    def _abs_max(self, x: Tensor) -> float:
        v = float(x.abs().amax())
        if not math.isfinite(v):
            raise self._nonfinite()
        return v

    def _require_data(self) -> None:
        if int(self.count) == 0:
            raise RuntimeError(f"{self._label()} has observed no data: run calibration batches through the "
                               "model before asking for a threshold")

    # -- interface -------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            xd = self._prepare(x)
            if xd is not None:
                self._observe(xd)
                lo, hi = torch.aminmax(xd)
                self.min_value.fill_(min(float(self.min_value), float(lo)))
                self.max_value.fill_(max(float(self.max_value), float(hi)))
        return x

    def clipped_range(self):
        """``(lo, hi)``: the observed signed range clipped to ``[-threshold(), threshold()]`` and widened to
        contain 0, e.g. ``(0, threshold)`` for the input of a layer that follows a ReLU."""
        t = self.threshold()
        return min(0.0, max(float(self.min_value), -t)), max(0.0, min(float(self.max_value), t))

    def _observe(self, x: Tensor) -> None:
        raise NotImplementedError

    def threshold(self) -> float:
        """The clipping threshold (the scale is ``threshold / (2**(bits-1) - 1)``)."""
        raise NotImplementedError

    def sync(self) -> None:
        """All-reduces the statistics across processes when ``torch.distributed`` is initialised (a no-op
        otherwise). Call it once after each calibration pass: sums are summed again on a second call."""
        if _dist_ready():
            self._sync()

    def _sync(self) -> None:
        _all_reduce(self.count, torch.distributed.ReduceOp.SUM)
        _all_reduce(self.min_value, torch.distributed.ReduceOp.MIN)
        _all_reduce(self.max_value, torch.distributed.ReduceOp.MAX)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bits={self.bits}"


class AbsMaxObserver(ObserverBase):
    """Running max of ``max|x|`` over all batches (Paddle ``abs_max``)."""

    algo = "abs_max"

    def __init__(self, name: str = "", bits: int = 8):
        super().__init__(name, bits)
        self.register_buffer("abs_max", torch.zeros((), dtype=torch.float64))

    def _observe(self, x: Tensor) -> None:
        v = self._abs_max(x)
        self.abs_max.fill_(max(float(self.abs_max), v))
        self.count += 1

    def threshold(self) -> float:
        self._require_data()
        return float(self.abs_max)

    def _sync(self) -> None:
        super()._sync()
        _all_reduce(self.abs_max, torch.distributed.ReduceOp.MAX)


class AvgObserver(ObserverBase):
    """Mean over batches of the per-batch ``mean over samples of max|x_sample|`` (Paddle ``avg``); a
    sample is a slice along dimension 0 (a 0-d or 1-d tensor is one sample)."""

    algo = "avg"

    def __init__(self, name: str = "", bits: int = 8):
        super().__init__(name, bits)
        self.register_buffer("sum", torch.zeros((), dtype=torch.float64))

    def _observe(self, x: Tensor) -> None:
        per_sample = x.reshape(x.shape[0], -1).abs().amax(dim=1) if x.dim() > 1 else x.abs().amax().reshape(1)
        v = float(per_sample.double().mean())
        if not math.isfinite(v):
            raise self._nonfinite()
        self.sum += v
        self.count += 1

    def threshold(self) -> float:
        self._require_data()
        return float(self.sum) / int(self.count)

    def _sync(self) -> None:
        super()._sync()
        _all_reduce(self.sum, torch.distributed.ReduceOp.SUM)


class HistObserver(ObserverBase):
    """Paddle ``hist``: pass 1 collects ``abs_min``/``abs_max`` of |x|; ``begin_histogram()`` fixes the
    range; pass 2 accumulates a ``bins``-bin histogram of |x| (native, numpy.histogram's binning). The
    threshold is ``(i + 1 - 0.5) * bin_width`` for the first bin ``i`` whose normalised cumulative sum
    reaches ``hist_percent`` — the left edge ``abs_min`` is not added (Paddle's quirk, kept)."""

    needs_two_passes = True
    algo = "hist"

    def __init__(self, name: str = "", bits: int = 8, bins: int = 2048, hist_percent: float = 0.9999):
        super().__init__(name, bits)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2; got {bins!r}")
        if not (isinstance(hist_percent, (int, float)) and 0.0 < float(hist_percent) <= 1.0):
            raise ValueError(f"hist_percent must be in (0, 1]; got {hist_percent!r}")
        self.bins = bins
        self.hist_percent = float(hist_percent)
        self.register_buffer("phase", torch.zeros((), dtype=torch.int64))  # 0: range pass, 1: histogram pass
        self.register_buffer("abs_min", torch.tensor(math.inf, dtype=torch.float64))
        self.register_buffer("abs_max", torch.tensor(-math.inf, dtype=torch.float64))
        self.register_buffer("hist_lo", torch.zeros((), dtype=torch.float64))
        self.register_buffer("hist_hi", torch.zeros((), dtype=torch.float64))
        self.register_buffer("hist", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("hist_count", torch.zeros((), dtype=torch.int64))

    def _observe(self, x: Tensor) -> None:
        if int(self.phase) == 0:
            lo, hi = torch.aminmax(x.abs())
            lo, hi = float(lo), float(hi)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise self._nonfinite()
            self.abs_min.fill_(min(float(self.abs_min), lo))
            self.abs_max.fill_(max(float(self.abs_max), hi))
            self.count += 1
        else:
            try:
                C.abs_histogram(x, self.bins, float(self.hist_lo), float(self.hist_hi), out=self.hist)
            except ValueError as e:
                if "NaN" in str(e):
                    raise self._nonfinite("NaN") from None
                raise
            self.hist_count += 1

    def histogram_range(self):
        """The (lo, hi) range the histogram pass uses, from the range pass (see the module docstring for the
        degenerate case)."""
        self._require_data()
        lo, hi = float(self.abs_min), float(self.abs_max)
        if lo == hi:
            lo, hi = 0.0, (hi if hi > 0.0 else 1.0)
        return lo, hi

    def begin_histogram(self) -> None:
        """Ends the range pass: fixes the histogram range and switches to accumulating the histogram."""
        lo, hi = self.histogram_range()
        self.hist_lo.fill_(lo)
        self.hist_hi.fill_(hi)
        self.hist.zero_()
        self.hist_count.zero_()
        self.phase.fill_(1)

    def bin_width(self) -> float:
        # Paddle: hist_edges[1] - hist_edges[0] of np.histogram's edges (edge 1 = step + lo).
        lo, hi = float(self.hist_lo), float(self.hist_hi)
        step = (hi - lo) / self.bins
        return (step + lo) - lo

    def _require_histogram(self) -> None:
        self._require_data()
        if int(self.phase) != 1 or int(self.hist_count) == 0:
            raise RuntimeError(f"{self._label()} needs two passes: call begin_histogram() after the range pass "
                               "and run the calibration data again")
        if float(self.hist.sum()) == 0.0:
            raise RuntimeError(f"{self._label()}: the histogram pass saw no values inside the range of the "
                               "range pass; run the same data in both passes")

    def threshold(self) -> float:
        self._require_histogram()
        h = self.hist.numpy()
        cumulative = np.cumsum(h / float(h.sum()))
        reached = np.nonzero(cumulative >= self.hist_percent)[0]
        index = int(reached[0]) + 1 if len(reached) else self.bins
        return (index - 0.5) * self.bin_width()

    def _sync(self) -> None:
        super()._sync()
        dist = torch.distributed
        if int(self.phase) == 0:
            _all_reduce(self.abs_min, dist.ReduceOp.MIN)
            _all_reduce(self.abs_max, dist.ReduceOp.MAX)
        else:
            _all_reduce(self.hist, dist.ReduceOp.SUM)
            _all_reduce(self.hist_count, dist.ReduceOp.SUM)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}, hist_percent={self.hist_percent}"


class KLObserver(HistObserver):
    """Paddle ``KL``: the ``hist`` observer's histogram, threshold from the native ``cal_kl_threshold``
    search (``pyslim.ops._calibration.kl_threshold``)."""

    algo = "KL"

    def threshold(self) -> float:
        self._require_histogram()
        return C.kl_threshold(self.hist, self.bin_width(), self.bits)


class MSEObserver(ObserverBase):
    """Paddle ``mse``: per batch, try ``s = k * max|x|`` (``k`` from ``search_ratios()``; ``max|x| = 0`` is
    taken as 1e-8) and keep ``s`` when its loss is ``<=`` the best loss so far (carried across batches)."""

    algo = "mse"

    def __init__(self, name: str = "", bits: int = 8):
        super().__init__(name, bits)
        self.register_buffer("best_loss", torch.tensor(math.inf, dtype=torch.float64))
        self.register_buffer("best_threshold", torch.zeros((), dtype=torch.float64))
        self._ratios = search_ratios()

    def _losses(self, table: Tensor, mean: float, std: float) -> List[float]:
        return table[:, 0].tolist()

    def _observe(self, x: Tensor) -> None:
        amax = self._abs_max(x)
        amax = 1e-8 if amax == 0.0 else amax
        scales = [k * amax for k in self._ratios]
        try:
            table, mean, std = C.quant_error_sweep(x, scales, self.bits)
        except ValueError:
            raise self._nonfinite() from None
        best, best_s = float(self.best_loss), float(self.best_threshold)
        for s, loss in zip(scales, self._losses(table, mean, std)):
            if loss <= best:
                best, best_s = loss, s
        self.best_loss.fill_(best)
        self.best_threshold.fill_(best_s)
        self.count += 1

    def threshold(self) -> float:
        self._require_data()
        return float(self.best_threshold)

    def _sync(self) -> None:
        # The carried minimum is sequential; across processes take the best loss and, among the processes
        # that hold it, the largest threshold (a later candidate wins ties in Paddle's search).
        super()._sync()
        dist = torch.distributed
        mine = float(self.best_loss)
        _all_reduce(self.best_loss, dist.ReduceOp.MIN)
        candidate = self.best_threshold.clone()
        if mine != float(self.best_loss):
            candidate.fill_(-math.inf)
        _all_reduce(candidate, dist.ReduceOp.MAX)
        self.best_threshold.copy_(candidate)


class EMDObserver(MSEObserver):
    """Paddle ``emd``: the ``mse`` search minimising ``|mean(x) - mean(x_hat)| + |std(x) - std(x_hat)|``
    (population standard deviations)."""

    algo = "emd"

    def _losses(self, table: Tensor, mean: float, std: float) -> List[float]:
        return [abs(mean - m) + abs(std - s) for m, s in table[:, 1:].tolist()]


ALGORITHMS = {
    "abs_max": AbsMaxObserver,
    "avg": AvgObserver,
    "hist": HistObserver,
    "kl": KLObserver,
    "mse": MSEObserver,
    "emd": EMDObserver,
}


def make_observer(algo: str, name: str = "", bits: int = 8, hist_percent: float = 0.9999,
                  bins: int = 2048) -> ObserverBase:
    """An observer for ``algo`` in ``'abs_max', 'avg', 'hist', 'KL', 'mse', 'emd'`` (case-insensitive).

    Example::

        >>> obs = make_observer("KL", name="fc1")
        >>> obs.needs_two_passes
        True
    """
    if not isinstance(algo, str) or algo.lower() not in ALGORITHMS:
        raise ValueError(f"algo must be one of 'abs_max', 'avg', 'hist', 'KL', 'mse', 'emd'; got {algo!r}")
    cls = ALGORITHMS[algo.lower()]
    if issubclass(cls, HistObserver):
        return cls(name, bits, bins=bins, hist_percent=hist_percent)
    return cls(name, bits)
