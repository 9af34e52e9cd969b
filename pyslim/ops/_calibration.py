"""Thin wrappers over the native calibration statistics (``csrc/runtime/calibration.cc``).

These are statistics for post-training quantization, not differentiable ops: plain functions on CPU
tensors (a CUDA tensor is copied to the CPU). The observers in ``pyslim.quant.observers`` use them.

Example::

    >>> import torch
    >>> from pyslim.ops._calibration import abs_histogram, kl_threshold
    >>> hist = abs_histogram(torch.randn(10000), 2048, 0.0, 4.0)
    >>> t = kl_threshold(hist, 4.0 / 2048)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pyslim import _C
from pyslim._native import capsule, get_num_threads

__all__ = ["abs_histogram", "kl_threshold", "kl_curve", "quant_error_sweep"]


def _float_input(x, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor; got {x.dtype}")
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous()


def abs_histogram(x: Tensor, bins: int = 2048, lo: float = 0.0, hi: float = 1.0,
                  out: Optional[Tensor] = None) -> Tensor:
    """Histogram of ``|x|`` over ``bins`` equal bins on ``[lo, hi]``, added into ``out`` (float64 or int64,
    a new float64 zero tensor when None) and returned.

    numpy.histogram's rule in float64: values outside ``[lo, hi]`` are ignored, ``hi`` falls in the last
    bin; the counts equal ``np.histogram(np.abs(x).astype(np.float64), bins, (lo, hi))`` exactly. A NaN in
    ``x`` raises ``ValueError`` and leaves ``out`` unchanged.
    """
    x = _float_input(x)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"the range must be finite with lo < hi; got [{lo}, {hi}]")
    if out is None:
        out = torch.zeros(bins, dtype=torch.float64)
    if not isinstance(out, Tensor) or out.dtype not in (torch.float64, torch.int64) or out.shape != (bins,):
        raise ValueError(f"out must be a float64 or int64 tensor of shape ({bins},); got "
                         f"{getattr(out, 'dtype', type(out).__name__)} of shape {tuple(getattr(out, 'shape', ()))}")
    if out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError("out must be a contiguous CPU tensor")
    _C.abs_histogram(capsule(x), capsule(out), lo, hi, get_num_threads())
    return out


def _histogram_input(hist) -> Tensor:
    if not isinstance(hist, Tensor):
        hist = torch.as_tensor(hist)
    if hist.dim() != 1:
        raise ValueError(f"hist must be 1-D; got shape {tuple(hist.shape)}")
    return hist.detach().to(device="cpu", dtype=torch.float64).contiguous()


def kl_threshold(hist: Tensor, bin_width: float, bits: int = 8) -> float:
    """Paddle's entropy (KL) calibration threshold ``(i + 0.5) * bin_width`` for a |x| histogram (see
    ``csrc/include/pyslim/calibration.h`` for the exact search, which follows ``cal_kl_threshold``)."""
    h = _histogram_input(hist)
    return float(_C.kl_threshold(capsule(h), float(bin_width), int(bits), None, get_num_threads()))


def kl_curve(hist: Tensor, bits: int = 8) -> Tuple[Tensor, int]:
    """The KL divergence of every candidate ``i`` (NaN where ``i`` is no candidate or was skipped) and the
    chosen index, for testing and plotting."""
    h = _histogram_input(hist)
    curve = torch.empty_like(h)
    t = _C.kl_threshold(capsule(h), 1.0, int(bits), capsule(curve), get_num_threads())
    return curve, int(round(t - 0.5))


def quant_error_sweep(x: Tensor, scales: Union[Sequence[float], Tensor], bits: int = 8
                      ) -> Tuple[Tensor, float, float]:
    """For each candidate scale ``s``: ``x_hat = clip(round_half_even(x / s * bin), -bin - 1, bin) / bin * s``
    (float64, ``bin = 2**(bits-1) - 1``). Returns ``(table, mean(x), std(x))`` where ``table`` is float64
    ``(len(scales), 3)`` holding ``mean((x - x_hat)^2)``, ``mean(x_hat)`` and ``std(x_hat)`` (population).
    NaN or Inf in ``x`` raises ``ValueError``."""
    x = _float_input(x).reshape(-1)
    s = torch.as_tensor(scales, dtype=torch.float64).reshape(-1).contiguous()
    out = torch.empty(s.numel(), 3, dtype=torch.float64)
    stats = torch.empty(2, dtype=torch.float64)
    _C.quant_error_sweep(capsule(x), capsule(s), int(bits), capsule(out), capsule(stats), get_num_threads())
    return out, float(stats[0]), float(stats[1])
