"""FLOPs (multiply-accumulates) and model size with PaddleSlim's counting rules (``analysis/flops.py``).

The model runs once on ``example_inputs`` (eval mode, no grad, training flags restored) under a
``TorchFunctionMode`` that sees every torch op, whether it comes from a module or from functional code.
Counts are **per sample** (the batch axis is ignored, as PaddleSlim does), in MACs:

* convolution: ``C_out * H_out * W_out * (C_in / groups * k_h * k_w)``; the bias is **not** counted
  (PaddleSlim's dygraph graphs add the bias as a separate op, which its counter skips); 1-D / 3-D convs the
  same with their spatial sizes;
* transposed convolution (not counted by PaddleSlim; pyslim's extension): every input pixel scatters
  ``C_out / groups * k_h * k_w`` MACs: ``C_in * H_in * W_in * (C_out / groups) * k_h * k_w``;
* linear: ``M * K * N`` with M the product of the non-batch leading axes (1 for a (batch, K) input);
* with ``only_conv=False`` (the dygraph default) also: pooling ``C_out * H_out * W_out * k_0^2`` (k_0 =
  the first kernel size; for adaptive pooling Paddle's ``ksize`` is the output size, so k_0 = output
  size[0]), and ReLU / ReLU6 (hardtanh) / sigmoid / batch_norm: the number of input elements.

Example::

    >>> flops(model, torch.randn(1, 3, 224, 224))                 # int
    >>> total, per_layer = flops(model, x, detail=True)            # per_layer: {weight name: MACs}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["flops", "model_size", "ModelSize"]

_CONV = {"conv1d", "conv2d", "conv3d"}
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_ELEMENTWISE = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "batch_norm"}
_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
         "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d",
         "avg_pool2d", "avg_pool3d"}
_ADAPTIVE_POOL = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                  "adaptive_max_pool2d", "adaptive_max_pool3d", "_adaptive_max_pool1d", "_adaptive_max_pool2d",
                  "_adaptive_max_pool3d", "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
                  "adaptive_max_pool3d_with_indices"}


def _first(x: Any) -> int:
    if isinstance(x, (tuple, list)):
        x = x[0]
    return 1 if x is None else int(x)


class _Counter(TorchFunctionMode):
    def __init__(self, only_conv: bool, names: Dict[int, str]):
        super().__init__()
        self.only_conv = only_conv
        self.names = names
        self.total = 0
        self.detail: Dict[str, int] = {}

    def _add(self, weight: Any, macs: int) -> None:
        self.total += macs
        if isinstance(weight, torch.Tensor):
            key = self.names.get(id(weight), f"<tensor {tuple(weight.shape)}>")
            self.detail[key] = self.detail.get(key, 0) + macs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        try:
            self._count(name, args, kwargs, out)
        except Exception:  # counting must never break the model run; unusual signatures are skipped
            pass
        return out

    def _count(self, name: str, args, kwargs, out) -> None:
        if name in _CONV:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            batched = x.dim() == w.dim()
            per_sample = out[0] if batched else out
            self._add(w, per_sample.numel() * math.prod(w.shape[1:]))
        elif name in _CONV_T:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            per_sample = x[0] if x.dim() == w.dim() else x
            self._add(w, per_sample.numel() * math.prod(w.shape[1:]))
        elif name == "linear":
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            m = math.prod(x.shape[1:-1]) if x.dim() >= 2 else 1
            self._add(w, m * w.shape[1] * w.shape[0])
        elif self.only_conv:
            return
        elif name in _ELEMENTWISE:
            x = args[0] if args else kwargs["input"]
            self.total += x[0].numel() if x.dim() > 1 else x.numel()
        elif name in _POOL or name in _ADAPTIVE_POOL:
            res = out[0] if isinstance(out, tuple) else out
            if name in _POOL:
                k = _first(args[1] if len(args) > 1 else kwargs.get("kernel_size"))
            else:
                k = _first(args[1] if len(args) > 1 else kwargs.get("output_size"))
            self.total += res[0].numel() * k * k


def _run(model: nn.Module, example_inputs: Any, mode: TorchFunctionMode) -> None:
    from pyslim.prune.graph import normalize_inputs

    args, kwargs = normalize_inputs(example_inputs)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), mode:
            model(*args, **kwargs)
    finally:
        for m, t in flags.items():
            m.training = t


def flops(model: nn.Module, example_inputs: Any, only_conv: bool = False,
          detail: bool = False) -> Union[int, Tuple[int, Dict[str, int]]]:
    """MACs per sample of ``model`` on ``example_inputs`` (a tensor, tuple of inputs or dict of keyword
    inputs) with PaddleSlim's rules (module docstring). ``detail=True`` also returns
    ``{weight name: MACs}`` for the conv / linear layers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}
    counter = _Counter(only_conv, names)
    _run(model, example_inputs, counter)
    return (int(counter.total), dict(counter.detail)) if detail else int(counter.total)


@dataclass(frozen=True)
class ModelSize:
    """``parameters``: elements of all nn.Parameters; ``buffers``: elements of floating-point buffers
    (BatchNorm running statistics; integer counters excluded); ``total`` = both (PaddleSlim's
    ``model_size`` counts every persistable float tensor: 3288 for its 6-conv test net); ``bytes``: storage
    of all parameters and buffers."""

    parameters: int
    buffers: int
    bytes: int

    @property
    def total(self) -> int:
        return self.parameters + self.buffers


def model_size(model: nn.Module) -> ModelSize:
    """Parameter count, floating buffer count and bytes of ``model`` (shared tensors counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    params = {id(p): p for p in model.parameters()}
    buffers = {id(b): b for b in model.buffers() if id(b) not in params}
    n_params = sum(p.numel() for p in params.values())
    n_buffers = sum(b.numel() for b in buffers.values() if b.is_floating_point())
    nbytes = sum(t.numel() * t.element_size() for t in list(params.values()) + list(buffers.values()))
    return ModelSize(int(n_params), int(n_buffers), int(nbytes))
