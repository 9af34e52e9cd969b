"""Static post-training quantization (PaddleSlim ``quant_post_static``) onto pyslim's int8 kernels.

``quant_post_static`` attaches an observer (``pyslim.quant.observers``) to the input of every quantizable
layer, runs the calibration data through a copy of the model (twice for ``hist``/``KL``), and returns a new
model in which each calibrated ``nn.Conv2d`` / ``nn.Linear`` is an ``Int8Conv2d`` / ``Int8Linear`` with
int8 weights (``channel_wise_abs_max`` or ``abs_max``) and a static int8 activation quantization from the
observer: by default all 256 levels over the calibrated range clipped to ``[-threshold, threshold]`` (scale
``threshold / 255``, zero point -128 for an input that never went below zero), or with
``asymmetric_activation=False`` PaddleSlim's symmetric ``threshold / 127`` (zero point 0). The input model is
not modified.

Convolutions with explicit "same" padding are handled: ``padding='same'`` and modules that pad in their
forward with a ``static_padding`` ``nn.ZeroPad2d`` (EfficientNet's ``Conv2dStaticSamePadding``) are folded
into the int8 convolution's padding when symmetric, and otherwise run as an explicit zero pad followed by
the int8 convolution (``PaddedInt8Conv2d``). A ``nn.Conv2d`` subclass with some other ``forward`` is left in
float (logged), as is a layer that saw no calibration data.

Example::

    >>> import torch
    >>> from pyslim.quant.ptq import quant_post_static
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
    >>> data = [torch.randn(4, 3, 8, 8) for _ in range(4)]
    >>> qmodel = quant_post_static(model, data, algo="hist", progress=False)
    >>> y = qmodel(torch.randn(2, 3, 8, 8))
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyslim.quant.adaround import adaround_weight, sample_conv_inputs
from pyslim.quant.fuse import FusionPlan, find_activation_fusions_by_run, find_int8_chains, fold_batch_norms
from pyslim.quant.nn import Int8Conv2d, Int8Linear, quantize_weight
from pyslim.quant.observers import ALGORITHMS, ObserverBase, make_observer

__all__ = ["quant_post_static", "ptq_sensitivity", "save_quantized_model", "load_quantized_model",
           "PaddedInt8Conv2d", "quantized_layers"]

logger = logging.getLogger("pyslim.quant.ptq")

_LAYER_TYPES = {"conv2d": nn.Conv2d, "linear": nn.Linear}
_MIN_THRESHOLD = 1e-8  # an all-zero input gives threshold 0; any positive scale quantizes it exactly


class PaddedInt8Conv2d(nn.Module):
    """An explicit zero pad ``(left, right, top, bottom)`` followed by an ``Int8Conv2d``: the int8 form of a
    convolution whose "same" padding is asymmetric (e.g. stride 2 in TensorFlow's SAME mode). Zeros
    quantize to the zero point exactly, so padding before quantization changes nothing numerically."""

    def __init__(self, pad: Tuple[int, int, int, int], conv: Int8Conv2d):
        super().__init__()
        self.pad = tuple(int(p) for p in pad)
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        # An int8 input (handed on already quantized) pads with the zero point: the quantized zero.
        value = int(self.conv.act_zero_point) if x.dtype == torch.int8 else 0.0
        return self.conv(F.pad(x, self.pad, value=value))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


# ---------------------------------------------------------------------------------------------------------
# layer discovery
# ---------------------------------------------------------------------------------------------------------


def _same_padding(conv: nn.Conv2d, in_hw: Optional[Tuple[int, int]] = None) -> Tuple[int, int, int, int]:
    """torch's padding='same' (stride 1): total d*(k-1) per side pair, the extra one on the right/bottom."""
    pads = []
    for k, d in zip(conv.kernel_size, conv.dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def _explicit_pad(conv: nn.Conv2d) -> Optional[Tuple[int, int, int, int]]:
    """The zero pad (left, right, top, bottom) a conv applies before F.conv2d beyond ``conv.padding``;
    None if there is none. Raises ``_Unsupported`` for a forward we cannot reproduce."""
    if conv.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={conv.padding_mode!r}")
    pad = None
    if isinstance(conv.padding, str):
        pad = _same_padding(conv) if conv.padding == "same" else None
    static = getattr(conv, "static_padding", None)
    if type(conv).forward is not nn.Conv2d.forward:
        # A subclass with its own forward: only the "static same padding" pattern (a ZeroPad2d or an
        # identity applied before F.conv2d) is understood.
        if isinstance(static, nn.ZeroPad2d):
            p = static.padding
            pad = (p, p, p, p) if isinstance(p, int) else tuple(int(v) for v in p)
            if len(pad) != 4:
                raise _Unsupported(f"static_padding {static.padding!r}")
        elif static is not None and type(static).__name__ == "Identity" and not list(static.parameters()):
            pad = None
        else:
            raise _Unsupported(f"{type(conv).__name__} overrides forward")
    return pad


class _Unsupported(Exception):
    pass


def _numeric_padding(conv: nn.Conv2d) -> Tuple[int, int]:
    return (0, 0) if isinstance(conv.padding, str) else (int(conv.padding[0]), int(conv.padding[1]))


def _layer_types(quantizable_layer_type) -> Tuple[type, ...]:
    if isinstance(quantizable_layer_type, (str, type)):
        quantizable_layer_type = (quantizable_layer_type,)
    out = []
    for t in quantizable_layer_type:
        if isinstance(t, type) and t in (nn.Conv2d, nn.Linear):
            out.append(t)
        elif isinstance(t, str) and t.lower() in _LAYER_TYPES:
            out.append(_LAYER_TYPES[t.lower()])
        else:
            raise ValueError(f"quantizable_layer_type entries must be 'Conv2d' or 'Linear' (the int8 kernels); "
                             f"got {t!r}")
    return tuple(out)


def _find_layers(model: nn.Module, types: Tuple[type, ...], skip: Sequence[str]
                 ) -> Tuple[List[Tuple[str, nn.Module, Optional[Tuple[int, int, int, int]]]], Dict[str, str]]:
    """(name, module, explicit pad) of every layer to quantize, and {name: reason} of those left in float."""
    names = {n for n, _ in model.named_modules()}
    unknown = [s for s in skip if s not in names]
    if unknown:
        raise ValueError(f"skip_quant names no module of the model: {unknown}")
    layers, left = [], {}
    for name, m in model.named_modules():
        if not name or not isinstance(m, types):
            continue
        if name in skip or getattr(m, "skip_quant", False):
            left[name] = "skip_quant"
            continue
        pad = None
        if isinstance(m, nn.Conv2d):
            try:
                pad = _explicit_pad(m)
            except _Unsupported as e:
                left[name] = f"unsupported convolution: {e}"
                continue
        elif type(m).forward is not nn.Linear.forward:
            left[name] = f"{type(m).__name__} overrides forward"
            continue
        layers.append((name, m, pad))
    return layers, left


# ---------------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------------


class _BiasError:
    """Accumulates E[(W_q - W) x] per output channel for empirical bias correction."""

    def __init__(self, layer: nn.Module, pad, weight_quantize_type: str, quantized: Optional[Tuple[Tensor, Tensor]] = None):
        q, scale = quantized if quantized is not None else quantize_weight(layer.weight, weight_quantize_type)
        shape = (-1,) + (1,) * (q.dim() - 1)
        self.delta = (q.to(torch.float32) * scale.reshape(shape) - layer.weight.detach().to(torch.float32))
        self.layer, self.pad = layer, pad
        self.sum = torch.zeros(q.shape[0], dtype=torch.float64)
        self.count = 0

    def __call__(self, x: Tensor) -> None:
        x = x.detach().to(torch.float32)
        if isinstance(self.layer, nn.Linear):
            rows = x.reshape(-1, x.shape[-1])
            self.sum += (rows.double().sum(0) @ self.delta.double().t())
            self.count += rows.shape[0]
        else:
            if self.pad is not None:
                x = F.pad(x, self.pad)
            c = self.layer
            err = F.conv2d(x, self.delta, None, c.stride, _numeric_padding(c), c.dilation, c.groups)
            self.sum += err.double().sum(dim=(0, 2, 3))
            self.count += err.shape[0] * err.shape[2] * err.shape[3]

    def mean(self) -> Tensor:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.cat([self.sum, torch.tensor([float(self.count)], dtype=torch.float64)])
            torch.distributed.all_reduce(t)
            return (t[:-1] / t[-1]).to(torch.float32)
        return (self.sum / max(self.count, 1)).to(torch.float32)


def _run_batch(model: nn.Module, batch):
    """The model's output on one batch: a tensor, the first item of a tuple/list, or a dict of keyword inputs."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    if isinstance(batch, dict):
        return model(**batch)
    raise TypeError("data_loader must yield tensors, (inputs, labels) tuples/lists or dicts of keyword "
                    f"inputs; got {type(batch).__name__}")


def _limited(data: Iterable, batch_nums: Optional[int]):
    for i, batch in enumerate(data):
        if batch_nums is not None and i >= batch_nums:
            break
        yield batch


def _reiterable(data: Iterable, batch_nums: Optional[int]) -> Iterable:
    """``data`` itself, or, for a one-shot iterator (which a second pass would find empty), a list of its first
    ``batch_nums`` batches."""
    if not isinstance(data, (list, tuple)) and iter(data) is data:
        return list(_limited(data, batch_nums))
    return data


def _total(data_loader, batch_nums: Optional[int]) -> Optional[int]:
    try:
        n = len(data_loader)
    except TypeError:
        return batch_nums
    return n if batch_nums is None else min(n, batch_nums)


# ---------------------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------------------


_ADAROUND_ROWS = 2048  # sampled input rows per layer for AdaRound
_ADAROUND_ROWS_PER_BATCH = 256


def _sample_rows(layer: nn.Module, x: Tensor, pad, count: int) -> Tensor:
    """`count` random input rows of a layer: a Linear's input vectors, or a convolution's im2col patches."""
    x = x.detach().to(torch.float32)
    if isinstance(layer, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        return rows[torch.randint(0, rows.shape[0], (min(count, rows.shape[0]),))]
    return sample_conv_inputs(x, layer, count, pad)


def _inner(m: nn.Module) -> nn.Module:
    return m.conv if isinstance(m, PaddedInt8Conv2d) else m


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def _activation_quant(obs: ObserverBase, asymmetric: bool) -> Tuple[float, int]:
    """The (scale, int8 zero point) of a layer's input from its observer: Paddle's symmetric grid (scale
    threshold / 127, zero point 0) or, ``asymmetric``, all 256 levels over the observed range clipped to
    [-threshold, threshold] (``ObserverBase.clipped_range``): [0, threshold] after a ReLU gets scale
    threshold / 255 and zero point -128."""
    if not asymmetric:
        return max(float(obs.threshold()), _MIN_THRESHOLD) / 127.0, 0
    lo, hi = obs.clipped_range()
    scale = max(hi - lo, _MIN_THRESHOLD) / 255.0
    return scale, int(min(127, max(-128, round(-128 - lo / scale))))


def _int8_layer(layer: nn.Module, pad, weight_quantize_type: str, threshold: float, activation: Tuple[float, int],
                bias: Optional[Tensor], fused_activation: Optional[str] = None) -> nn.Module:
    """The int8 module for a float layer with input quantization ``activation`` = (scale, zero point), the given
    float bias and an optional ReLU / ReLU6 / GELU run in the kernel's epilogue."""
    if isinstance(layer, nn.Linear):
        tmp = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
        tmp.weight = layer.weight
        if bias is not None:
            tmp.bias = nn.Parameter(bias.detach().clone())
        out = Int8Linear.from_float(tmp, weight_quantize_type, activation=activation,
                                    fused_activation=fused_activation)
    else:
        ph, pw = _numeric_padding(layer)
        rest = None
        if pad is not None:
            left, right, top, bottom = pad
            fold_w, fold_h = min(left, right), min(top, bottom)
            ph, pw = ph + fold_h, pw + fold_w
            rest = (left - fold_w, right - fold_w, top - fold_h, bottom - fold_h)
            if not any(rest):
                rest = None
        tmp = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, tuple(layer.stride), (ph, pw),
                        tuple(layer.dilation), layer.groups, bias=bias is not None)
        tmp.weight = layer.weight
        if bias is not None:
            tmp.bias = nn.Parameter(bias.detach().clone())
        conv = Int8Conv2d.from_float(tmp, weight_quantize_type, activation=activation,
                                     fused_activation=fused_activation)
        out = conv if rest is None else PaddedInt8Conv2d(rest, conv)
    inner = out.conv if isinstance(out, PaddedInt8Conv2d) else out
    inner.ptq_threshold = float(threshold)
    inner.weight_quantize_type = weight_quantize_type
    return out


def quant_post_static(model: nn.Module, data_loader: Iterable, algo: str = "hist", batch_nums: Optional[int] = None,
                      hist_percent: float = 0.9999, bias_correction: bool = False,
                      weight_quantize_type: str = "channel_wise_abs_max", weight_bits: int = 8,
                      activation_bits: int = 8, is_full_quantize: bool = False, onnx_format: bool = True,
                      quantizable_layer_type: Sequence = ("Conv2d", "Linear"), skip_quant: Sequence[str] = (),
                      progress: bool = True, optimize_model: bool = False, round_type: str = "round",
                      asymmetric_activation: bool = True) -> nn.Module:
    """Calibrates ``model`` on ``data_loader`` and returns a new int8 model (the input is left unchanged).

    Args:
        model: a float32 CPU model; it is deep-copied and put in eval mode for calibration.
        data_loader: an iterable of batches — tensors, ``(inputs, labels, ...)`` tuples/lists (the first item
            is fed) or dicts of keyword inputs. Re-iterated for the second pass of ``hist``/``KL``; a one-shot
            iterator is cached in memory for that.
        algo: ``'abs_max'``, ``'avg'``, ``'hist'`` (default), ``'KL'``, ``'mse'`` or ``'emd'``
            (case-insensitive); see ``pyslim.quant.observers`` for each algorithm and its Paddle quirks.
        batch_nums: at most this many batches per pass (all when None).
        hist_percent: the ``hist`` percentile (0.9999).
        bias_correction: subtract the expected output error ``E[(W_q - W) x]`` of each layer, estimated per
            output channel on the calibration data (the last pass), from its bias (adding a bias if absent).
        weight_quantize_type: ``'channel_wise_abs_max'`` (per output channel) or ``'abs_max'`` (per tensor).
        weight_bits, activation_bits: must be 8 (the native int8 kernels).
        is_full_quantize, onnx_format: accepted for PaddleSlim API parity and validated as bools. Only
            Conv2d/Linear have int8 kernels, so there is nothing more to quantize fully; the quant-dequant
            arithmetic of ``mse``/``emd`` is always Paddle's ONNX format, and the result is a PyTorch model.
        quantizable_layer_type: which of ``'Conv2d'``, ``'Linear'`` to quantize.
        skip_quant: qualified module names to keep in float (a module with ``skip_quant = True`` is kept too).
        progress: show a tqdm progress bar.
        round_type: ``'round'`` (weights to the nearest int8) or ``'adaround'`` (PaddleSlim's option: each weight
            rounded down or up so that the layer's output on 2048 sampled calibration inputs moves least,
            ``pyslim.quant.adaround``; slower: an optimisation per layer, and one more pass over the data with
            ``bias_correction``).
        optimize_model: PaddleSlim's option: fold every ``BatchNorm2d`` into the convolution feeding it before
            calibration, and run a ``ReLU`` / ``ReLU6`` that follows an int8 layer inside its kernel
            (``fused_activation``) instead of as a separate pass; the chains are found in a ``torch.fx`` trace,
            so custom ``forward`` methods are covered (see ``pyslim.quant.fuse``). Folding changes the weights
            that get quantized (per output channel, the BN scale is absorbed exactly) and the float result only
            by rounding.
        asymmetric_activation: spread the 256 int8 levels of each layer's input over the range calibration
            saw, clipped to ``[-threshold, threshold]`` (``algo``'s threshold), with a zero point: after a ReLU
            or ReLU6 that is ``[0, threshold]`` (scale ``threshold / 255``, zero point -128), where the
            symmetric grid (``threshold / 127``, zero point 0) leaves its negative half unused. Up to half the
            rounding error, with the same kernels and speed. ``False`` gives PaddleSlim's symmetric scales.

    Returns:
        The converted model in eval mode. ``quantized_layers(model)`` lists its int8 layers and thresholds.

    Example::

        >>> qmodel = quant_post_static(model, [(x, y) for x, y in loader], algo="KL", batch_nums=10)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(algo, str) or algo.lower() not in ALGORITHMS:
        raise ValueError(f"algo must be one of 'abs_max', 'avg', 'hist', 'KL', 'mse', 'emd'; got {algo!r}")
    if batch_nums is not None and (isinstance(batch_nums, bool) or not isinstance(batch_nums, int) or batch_nums < 1):
        raise ValueError(f"batch_nums must be a positive int or None; got {batch_nums!r}")
    if not (isinstance(hist_percent, (int, float)) and 0.0 < float(hist_percent) <= 1.0):
        raise ValueError(f"hist_percent must be in (0, 1]; got {hist_percent!r}")
    if not isinstance(asymmetric_activation, bool):
        raise TypeError(f"asymmetric_activation must be a bool; got {asymmetric_activation!r}")
    if weight_quantize_type not in ("channel_wise_abs_max", "abs_max"):
        raise ValueError("weight_quantize_type must be 'channel_wise_abs_max' or 'abs_max'; got "
                         f"{weight_quantize_type!r}")
    for arg, value in (("weight_bits", weight_bits), ("activation_bits", activation_bits)):
        if value != 8:
            raise ValueError(f"{arg} must be 8: the int8 GEMM/convolution kernels take 8-bit weights and "
                             f"activations; got {value!r}")
    for arg, value in (("is_full_quantize", is_full_quantize), ("onnx_format", onnx_format),
                       ("bias_correction", bias_correction), ("progress", progress),
                       ("optimize_model", optimize_model)):
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be a bool; got {value!r}")
    if round_type not in ("round", "adaround"):
        raise ValueError(f"round_type must be 'round' or 'adaround'; got {round_type!r}")
    adaround = round_type == "adaround"
    if isinstance(skip_quant, str):
        skip_quant = (skip_quant,)
    types = _layer_types(quantizable_layer_type)

    work = copy.deepcopy(model).eval()
    plan = FusionPlan()
    if optimize_model:
        plan = fold_batch_norms(work)
        logger.info("optimize_model: %d batch norms folded into convolutions", len(plan.conv_bn))
        if not plan.traced:
            # fx could not trace the model: find the activations to fuse by one run on the first batch instead
            data_loader = _reiterable(data_loader, batch_nums)
            first = next(iter(_limited(data_loader, batch_nums)), None)
            if first is not None:
                example = first[0] if isinstance(first, (tuple, list)) else first
                plan.activation = find_activation_fusions_by_run(work, example)
                logger.info("optimize_model: %d activations found by a run", len(plan.activation))
    layers, left = _find_layers(work, types, tuple(skip_quant))
    for name, reason in left.items():
        if reason != "skip_quant":
            logger.warning("layer %r stays in float: %s", name, reason)
    if not layers:
        logger.warning("quant_post_static: no layer to quantize")

    observers: Dict[str, ObserverBase] = {}
    bias_errors: Dict[str, _BiasError] = {}
    samples: Dict[str, List[Tensor]] = {name: [] for name, _, _ in layers}
    state = {"bias_pass": False, "sample_pass": False}
    handles = []
    for name, layer, pad in layers:
        obs = make_observer(algo, name=name, bits=activation_bits, hist_percent=float(hist_percent))
        observers[name] = obs
        if bias_correction and not adaround:  # with adaround: after the weights are chosen (below)
            bias_errors[name] = _BiasError(layer, pad, weight_quantize_type)

        def hook(module, args, obs=obs, pad=pad, name=name):
            if not args or not isinstance(args[0], Tensor):
                raise TypeError(f"layer {name!r}: expected a tensor input")
            x = args[0]
            if pad is not None:
                x = F.pad(x, pad)  # observe what the convolution quantizes: the padded input
            obs(x)
            if state["bias_pass"] and name in bias_errors:
                bias_errors[name](args[0])
            if state["sample_pass"]:
                samples[name].append(_sample_rows(module, args[0], pad, _ADAROUND_ROWS_PER_BATCH))

        handles.append(layer.register_forward_pre_hook(hook))

    passes = 2 if layers and observers[layers[0][0]].needs_two_passes else 1
    if passes > 1:
        data_loader = _reiterable(data_loader, batch_nums)  # kept for pass 2
    total = _total(data_loader, batch_nums)
    try:
        with torch.no_grad():
            for p in range(passes):
                state["bias_pass"] = p == passes - 1
                state["sample_pass"] = adaround and p == passes - 1
                desc = f"PTQ {algo}" + (f" pass {p + 1}/{passes}" if passes > 1 else "")
                seen = 0
                for batch in tqdm(_limited(data_loader, batch_nums), total=total, desc=desc, disable=not progress,
                                  leave=False):
                    _run_batch(work, batch)
                    seen += 1
                if seen == 0:
                    raise ValueError("data_loader yielded no batches")
                for obs in observers.values():
                    obs.sync()
                    if passes > 1 and p == 0 and int(obs.count) > 0:
                        obs.begin_histogram()
                logger.info("%s: %d batches, %d layers observed", desc, seen, len(observers))
    finally:
        for h in handles:
            h.remove()

    ready = []
    for name, layer, pad in layers:
        if int(observers[name].count) == 0:
            logger.warning("layer %r saw no calibration data and stays in float", name)
            left[name] = "no calibration data"
        else:
            ready.append((name, layer, pad))
    rounded: Dict[str, Tuple[Tensor, Tensor]] = {}
    if adaround and ready:
        for name, layer, pad in tqdm(ready, desc="AdaRound", disable=not progress, leave=False):
            rows = torch.cat(samples[name])[:_ADAROUND_ROWS]
            kind = plan.activation[name][0] if name in plan.activation else None
            rounded[name] = adaround_weight(layer.weight, rows, getattr(layer, "groups", 1), weight_quantize_type,
                                            bias=layer.bias, activation=kind)
        logger.info("adaround: %d layers' weights rounded adaptively", len(rounded))
        if bias_correction:  # the correction of the rounded weights: one more pass, observers untouched
            bias_errors = {name: _BiasError(layer, pad, weight_quantize_type, rounded[name])
                           for name, layer, pad in ready}
            handles = [layer.register_forward_pre_hook(
                (lambda name: lambda module, args: bias_errors[name](args[0]))(name)) for name, layer, _ in ready]
            try:
                with torch.no_grad():
                    for batch in tqdm(_limited(data_loader, batch_nums), total=total, desc="bias correction",
                                      disable=not progress, leave=False):
                        _run_batch(work, batch)
            finally:
                for h in handles:
                    h.remove()
    # An activation module runs inside the kernels only if every layer it follows is converted.
    converted_names = {name for name, _, _ in ready}
    by_act: Dict[str, List[str]] = {}
    for layer_name, (_, act_name) in plan.activation.items():
        by_act.setdefault(act_name, []).append(layer_name)
    fused = {layer_name: plan.activation[layer_name][0] for act_name, names in by_act.items()
             if all(n in converted_names for n in names) for layer_name in names}
    converted = 0
    for name, layer, pad in ready:
        threshold = observers[name].threshold()
        bias = None if layer.bias is None else layer.bias.detach().to(torch.float32)
        if name in bias_errors:
            err = bias_errors[name].mean()
            bias = (torch.zeros_like(err) if bias is None else bias) - err
        new = _int8_layer(layer, pad, weight_quantize_type, threshold,
                          _activation_quant(observers[name], asymmetric_activation), bias, fused.get(name))
        if name in rounded:
            q, scale = rounded[name]
            _inner(new).set_int8_weight(q, scale)
        _set_module(work, name, new)
        converted += 1
    for act_name, names in by_act.items():
        if all(n in fused for n in names):
            _set_module(work, act_name, nn.Identity())
    if optimize_model:
        chains = find_int8_chains(work)
        for producer, consumer in chains:
            target = _inner(work.get_submodule(consumer))
            _inner(work.get_submodule(producer)).set_output_quant((float(target.act_scale),
                                                                  int(target.act_zero_point)))
        logger.info("optimize_model: %d activations run inside the int8 kernels, %d layers hand on int8",
                    len(fused), len(chains))
    logger.info("quant_post_static(%s): %d layers converted to int8, %d left in float%s", algo, converted,
                len(left), f" ({', '.join(sorted(left))})" if left else "")
    if is_full_quantize:
        logger.info("is_full_quantize=True: only Conv2d/Linear have int8 kernels; other layers stay in float")
    return work.eval()


def _first_tensor(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    for v in values:
        if isinstance(v, Tensor):
            return v
    raise TypeError(f"the model's output holds no tensor to compare ({type(out).__name__})")


def _outputs(model: nn.Module, batches) -> List[Tensor]:
    with torch.no_grad():
        return [_first_tensor(_run_batch(model, b)).detach().float() for b in batches]


def ptq_sensitivity(model: nn.Module, data_loader: Iterable, eval_batches: Optional[Sequence] = None,
                    progress: bool = True, **ptq_kwargs) -> List[Tuple[str, float]]:
    """How much quantizing each layer alone moves the model's output: ``[(layer name, 1 - cosine), ...]``,
    the most sensitive first. Use it to choose the few layers to keep in float (``skip_quant``) when the int8
    model's accuracy falls short.

    The model is calibrated once, ``quant_post_static(model, data_loader, **ptq_kwargs)`` (the same options
    and the same int8 layers a real run makes: thresholds, zero points, bias correction, AdaRound, folded BNs
    with ``optimize_model``). Then, one layer at a time, that layer's int8 module replaces its float layer in
    the float model (BNs folded the same way; the activation that follows runs in float) and the output on
    ``eval_batches`` (default: the calibration batches, at most 8) is compared with the float output: 1 minus
    the mean cosine similarity per sample. The output is the model's tensor, or the first tensor of a
    tuple/list/dict output.

    Example::

        >>> ranking = ptq_sensitivity(model, calibration_batches, algo="hist", bias_correction=True)
        >>> skip = [name for name, _ in ranking[:2]]
        >>> qmodel = quant_post_static(model, calibration_batches, algo="hist", bias_correction=True,
        ...                            skip_quant=skip)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    data_loader = _reiterable(data_loader, ptq_kwargs.get("batch_nums"))  # for calibration and evaluation
    qmodel = quant_post_static(model, data_loader, progress=progress, **ptq_kwargs)
    if eval_batches is None:
        eval_batches = list(_limited(data_loader, min(8, ptq_kwargs.get("batch_nums") or 8)))
    batches = list(eval_batches)
    if not batches:
        raise ValueError("eval_batches is empty")
    reference = copy.deepcopy(model).eval()
    if ptq_kwargs.get("optimize_model", False):
        fold_batch_norms(reference)
    want = _outputs(reference, batches)
    result = []
    for name in tqdm(list(quantized_layers(qmodel)), desc="PTQ sensitivity", disable=not progress, leave=False):
        module = qmodel.get_submodule(name)
        inner = _inner(module)
        saved = (inner.fused_activation, inner.output_quant)
        original = reference.get_submodule(name)
        inner.fused_activation, inner.output_quant = None, None  # float out; the float activation follows
        _set_module(reference, name, module)
        try:
            got = _outputs(reference, batches)
        finally:
            _set_module(reference, name, original)
            inner.fused_activation, inner.output_quant = saved
        cos = torch.cat([F.cosine_similarity(g.reshape(g.shape[0], -1), w.reshape(w.shape[0], -1), dim=1)
                         for g, w in zip(got, want)])
        result.append((name, float(1.0 - cos.double().mean())))
    result.sort(key=lambda item: -item[1])
    logger.info("ptq_sensitivity: most sensitive %s", ", ".join(f"{n} ({v:.2e})" for n, v in result[:5]))
    return result


# ---------------------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------------------


def quantized_layers(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """{qualified name: description} of the int8 layers of a converted model: kind, threshold, activation
    scale/zero point, weight quantization type, bias presence and (for convolutions) padding."""
    out: Dict[str, Dict[str, Any]] = {}
    padded = {name for name, m in model.named_modules() if isinstance(m, PaddedInt8Conv2d)}
    for name, m in model.named_modules():
        if isinstance(m, PaddedInt8Conv2d):
            inner, pad = m.conv, list(m.pad)
        elif isinstance(m, (Int8Linear, Int8Conv2d)) and name.rpartition(".")[0] not in padded:
            inner, pad = m, None
        else:
            continue
        scale = float(inner.act_scale)
        entry = {
            "kind": type(inner).__name__,
            "threshold": float(getattr(inner, "ptq_threshold", scale * 127.0)),
            "act_scale": scale,
            "act_zero_point": int(inner.act_zero_point),
            "weight_quantize_type": getattr(inner, "weight_quantize_type", "channel_wise_abs_max"),
            "has_bias": inner.bias is not None,
            "fused_activation": inner.fused_activation,
            "output_quant": None if inner.output_quant is None else list(inner.output_quant),
        }
        if isinstance(inner, Int8Conv2d):
            entry["padding"] = list(inner.padding)
            entry["explicit_pad"] = pad
        out[name] = entry
    return out


def save_quantized_model(model: nn.Module, path: str) -> Tuple[str, str]:
    """Saves a converted model as ``path + '.pt'`` (its state_dict: int8 weights, scales, biases) and
    ``path + '.json'`` (per int8 layer: threshold, activation scale, weight quantization type, padding).
    Returns the two file names. Reload with ``load_quantized_model(float_model, path)``.

    Example::

        >>> save_quantized_model(qmodel, "/tmp/mnist_int8")
        ('/tmp/mnist_int8.pt', '/tmp/mnist_int8.json')
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("model has no int8 layers; convert it with quant_post_static first")
    weights, meta = path + ".pt", path + ".json"
    os.makedirs(os.path.dirname(os.path.abspath(weights)), exist_ok=True)
    torch.save(model.state_dict(), weights)
    # Batch norms and activations that optimize_model folded away are identities in the int8 model; the loader
    # puts identities at the same names (a name that was an identity in the float model already is harmless).
    identities = sorted(name for name, m in model.named_modules() if isinstance(m, nn.Identity))
    with open(meta, "w") as f:
        json.dump({"format": "pyslim-ptq-static", "version": 1, "layers": layers, "identities": identities}, f,
                  indent=1, sort_keys=True)
    return weights, meta


def load_quantized_model(model: nn.Module, path: str) -> nn.Module:
    """Rebuilds the int8 model saved by ``save_quantized_model(qmodel, path)`` from the float architecture
    ``model`` (left unchanged): the layers named in ``path + '.json'`` become int8 modules, then the saved
    state_dict is loaded strictly."""
    with open(path + ".json") as f:
        meta = json.load(f)
    if meta.get("format") != "pyslim-ptq-static":
        raise ValueError(f"{path}.json is not a pyslim PTQ description")
    out = copy.deepcopy(model).eval()
    for name in meta.get("identities", []):
        _set_module(out, name, nn.Identity())
    for name, entry in meta["layers"].items():
        layer = out.get_submodule(name)
        layer_pad = _explicit_pad(layer) if isinstance(layer, nn.Conv2d) else None
        n_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        bias = torch.zeros(n_out) if entry["has_bias"] else None
        new = _int8_layer(layer, layer_pad, entry["weight_quantize_type"], entry["threshold"],
                          (entry["act_scale"], entry["act_zero_point"]), bias, entry.get("fused_activation"))
        if entry.get("output_quant") is not None:
            _inner(new).set_output_quant(tuple(entry["output_quant"]))
        _set_module(out, name, new)
    state = torch.load(path + ".pt", map_location="cpu", weights_only=True)
    out.load_state_dict(state, strict=True)
    return out.eval()
