"""Quantization-aware training in the shape of PaddleSlim's dygraph ``paddleslim.QAT``.

``QAT(config).quantize(model)`` swaps every quantizable layer *in place* for a :class:`QuantedConv2d` /
:class:`QuantedLinear` that fake-quantizes its weight and its input activation; train as usual; then
``convert(model)`` returns a new eval model whose quantized layers are :class:`pyslim.quant.nn.Int8Linear` /
:class:`pyslim.quant.nn.Int8Conv2d` running pyslim's int8 kernels, and ``save_quantized_model`` writes an ONNX
QDQ model plus the int8 ``state_dict``.

Example::

    >>> import torch
    >>> from pyslim.quant.qat import QAT
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                             torch.nn.Linear(8 * 6 * 6, 10))
    >>> quanter = QAT({"weight_quantize_type": "channel_wise_abs_max"})
    >>> model = quanter.quantize(model)              # in place; build the optimizer afterwards
    >>> loss = model(torch.rand(4, 1, 8, 8)).sum()   # ... train ...
    >>> int8_model = quanter.convert(model)          # new eval model on the int8 kernels
    >>> y = int8_model(torch.rand(4, 1, 8, 8))
"""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyslim.quant import nn as qnn
from pyslim.quant.quanters import (
    PACT,
    FakeQuantAbsMax,
    FakeQuantChannelWiseAbsMax,
    FakeQuantMovingAverageAbsMax,
)

__all__ = ["DEFAULT_QAT_CONFIG", "QAT", "QuantedConv2d", "QuantedLinear", "fuse_conv_bn"]

logger = logging.getLogger(__name__)

#: PaddleSlim's dygraph QAT defaults (``paddleslim/dygraph/quant/qat.py``), PyTorch layer names.
DEFAULT_QAT_CONFIG: Dict[str, Any] = {
    "weight_preprocess_type": None,
    "activation_preprocess_type": None,
    "weight_quantize_type": "channel_wise_abs_max",
    "activation_quantize_type": "moving_average_abs_max",
    "weight_bits": 8,
    "activation_bits": 8,
    "dtype": "int8",
    # window_size belongs to 'range_abs_max' (a sliding window of per-batch maxima); it is accepted for
    # compatibility with PaddleSlim configs and unused by the activation types supported here.
    "window_size": 10000,
    "moving_rate": 0.9,
    "quantizable_layer_type": ["Conv2d", "Linear"],
    "fuse_conv_bn": False,
    "onnx_format": True,
    "skip_quant": [],
}

_WEIGHT_TYPES = ("channel_wise_abs_max", "abs_max")
_ACTIVATION_TYPES = ("moving_average_abs_max", "abs_max")
_LAYER_TYPES = {"conv2d": "Conv2d", "linear": "Linear"}

QuanterFactory = Callable[[], nn.Module]


def _check_config(config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None; got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_QAT_CONFIG))
    if unknown:
        raise ValueError(f"unknown QAT config key(s) {unknown}; known keys: {sorted(DEFAULT_QAT_CONFIG)}")
    cfg = copy.deepcopy(DEFAULT_QAT_CONFIG)
    cfg.update(copy.deepcopy(config))

    def choice(key, allowed):
        if cfg[key] not in allowed:
            raise ValueError(f"{key} must be one of {list(allowed)}; got {cfg[key]!r}")

    choice("weight_quantize_type", _WEIGHT_TYPES)
    choice("activation_quantize_type", _ACTIVATION_TYPES)
    choice("weight_preprocess_type", (None, "PACT"))
    choice("activation_preprocess_type", (None, "PACT"))
    choice("dtype", ("int8",))
    for key in ("weight_bits", "activation_bits"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 2 <= int(v) <= 16:
            raise ValueError(f"{key} must be an int in [2, 16]; got {v!r}")
    for key in ("fuse_conv_bn", "onnx_format"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{key} must be a bool; got {cfg[key]!r}")
    if not cfg["onnx_format"]:
        raise ValueError("onnx_format=False (Paddle's own fake-quant program format) is not supported; the saved "
                         "model is ONNX QuantizeLinear/DequantizeLinear")
    v = cfg["moving_rate"]
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) < 1.0:
        raise ValueError(f"moving_rate must be a float in [0, 1); got {v!r}")
    v = cfg["window_size"]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not int(v) > 0:
        raise ValueError(f"window_size must be an int > 0; got {v!r}")
    layers = cfg["quantizable_layer_type"]
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"quantizable_layer_type must be a non-empty list from ['Conv2d', 'Linear']; got {layers!r}")
    normalized = []
    for name in layers:
        # PaddleSlim spells it 'Conv2D'; accept either.
        if not isinstance(name, str) or name.lower() not in _LAYER_TYPES:
            raise ValueError(f"quantizable_layer_type entries must be 'Conv2d' or 'Linear'; got {name!r}")
        normalized.append(_LAYER_TYPES[name.lower()])
    cfg["quantizable_layer_type"] = normalized
    skip = cfg["skip_quant"]
    if isinstance(skip, str) or not isinstance(skip, (list, tuple)) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"skip_quant must be a list of module names; got {skip!r}")
    cfg["skip_quant"] = list(skip)
    return cfg


# --------------------------------------------------------------------------------------------------------
# quantized training layers
# --------------------------------------------------------------------------------------------------------


class _QuantedBase(nn.Module):
    """Shares the float layer's Parameter objects (an optimizer built before ``quantize`` still updates
    them) and adds ``weight_quanter`` / ``activation_quanter`` (and PACT preprocessors when configured)."""

    def _quanted_weight(self) -> Tensor:
        return self.weight_quanter(self.weight)

    def _quanted_input(self, x: Tensor) -> Tensor:
        return self.activation_quanter(x)


class QuantedLinear(_QuantedBase):
    """``nn.Linear`` with fake-quantized weight (axis 0 = out_features) and input activation."""

    def __init__(self, linear: nn.Linear, weight_quanter: nn.Module, activation_quanter: nn.Module):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight_quanter = weight_quanter
        self.activation_quanter = activation_quanter

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._quanted_input(x), self._quanted_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class QuantedConv2d(_QuantedBase):
    """``nn.Conv2d`` (any stride, padding, dilation, groups; depthwise included) with fake-quantized weight
    (per output channel, axis 0) and input activation. ``padding_mode`` must be 'zeros'."""

    def __init__(self, conv: nn.Conv2d, weight_quanter: nn.Module, activation_quanter: nn.Module):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantedConv2d needs padding_mode='zeros'; got {conv.padding_mode!r} "
                             "(list the layer in skip_quant)")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight = conv.weight
        self.bias = conv.bias
        self.weight_quanter = weight_quanter
        self.activation_quanter = activation_quanter

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self._quanted_input(x), self._quanted_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")


# --------------------------------------------------------------------------------------------------------
# conv + batch-norm folding
# --------------------------------------------------------------------------------------------------------


def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``, in place
    (the weight Parameter object is kept; a bias Parameter is added when the conv had none)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_conv_bn needs BatchNorm2d with track_running_stats=True")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d has {bn.num_features} features but the conv before it has "
                         f"{conv.out_channels} output channels")
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var.to(torch.float32) + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
        factor = gamma * inv_std
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_bias)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Folds every ``BatchNorm2d`` that directly follows a ``Conv2d`` inside the same ``nn.Sequential`` into
    the conv (using the BN's running statistics) and replaces the BN with ``nn.Identity``. In place; returns
    ``model``.

    Limitation: only ``nn.Sequential`` neighbours are recognized, because a module's registration order says
    nothing about how a custom ``forward`` wires its children. A conv whose BN is called from a custom forward
    is left alone (put the pair in an ``nn.Sequential``, or fold it with
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``). The result is equal to the model in eval mode; training the
    fused model no longer uses batch statistics. Example::

        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> fused = fuse_conv_bn(m)
        >>> isinstance(fused[1], torch.nn.Identity)
        True
    """
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, first), (second_name, second) in zip(children, children[1:]):
            if type(first) is nn.Conv2d and type(second) is nn.BatchNorm2d:
                _fold_bn_into_conv(first, second)
                setattr(module, second_name, nn.Identity())
                logger.debug("fused %s.%s into the conv before it", name, second_name)
    return model


# --------------------------------------------------------------------------------------------------------
# QAT
# --------------------------------------------------------------------------------------------------------


class QAT:
    """PaddleSlim's dygraph QAT for PyTorch models.

    ``config`` keys (PaddleSlim's, with its defaults; unknown keys or bad values raise ``ValueError`` naming
    the key):

    - ``weight_quantize_type``: ``'channel_wise_abs_max'`` (per output channel) or ``'abs_max'`` (per tensor).
    - ``activation_quantize_type``: ``'moving_average_abs_max'`` (EMA of ``max|x|``, frozen in eval; converts to
      a static int8 scale ``t / 127``) or ``'abs_max'`` (``max|x|`` of each tensor; converts to dynamic int8
      activations, whose scale is also computed from each input).
    - ``weight_bits`` / ``activation_bits``: 8 (training accepts 2..16; ``convert`` needs 8).
    - ``moving_rate``: 0.9. ``window_size``: 10000, accepted for PaddleSlim compatibility (it belongs to
      ``range_abs_max``, which is not offered) and unused.
    - ``quantizable_layer_type``: ``['Conv2d', 'Linear']`` (PaddleSlim's 'Conv2D' spelling is accepted).
      Conv2d covers grouped and depthwise convolutions.
    - ``weight_preprocess_type`` / ``activation_preprocess_type``: ``None`` or ``'PACT'``. With PACT the
      input activation (or the weight) is clipped to ``[-alpha, alpha]`` with a learnable alpha and quantized
      on alpha's grid (:class:`pyslim.quant.quanters.PACT`); it replaces the configured quantizer for that
      tensor. Give alpha PaddleSlim's 1000x learning rate with
      :func:`pyslim.quant.quanters.pact_param_groups`.
    - ``fuse_conv_bn``: False. True folds each BatchNorm2d that directly follows a Conv2d in an
      ``nn.Sequential`` into the conv before quantizing (see :func:`fuse_conv_bn`).
    - ``skip_quant``: ``[]``; module names (``model.named_modules()``) left untouched, containers included.
      A module with the attribute ``skip_quant = True`` is skipped too (PaddleSlim's convention).
    - ``dtype`` ('int8') and ``onnx_format`` (True) are accepted with their only supported value.

    ``weight_preprocess`` / ``act_preprocess`` / ``weight_quantize`` / ``act_quantize`` (PaddleSlim's
    constructor hooks) are zero-argument factories returning a module that replaces the corresponding
    quantizer, e.g. ``act_preprocess=lambda: PACT(init_value=6.0)``. ``convert`` understands the built-in
    modules only. Example::

        >>> quanter = QAT({"activation_preprocess_type": "PACT", "skip_quant": ["classifier.3"]})
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None, weight_preprocess: Optional[QuanterFactory] = None,
                 act_preprocess: Optional[QuanterFactory] = None, weight_quantize: Optional[QuanterFactory] = None,
                 act_quantize: Optional[QuanterFactory] = None):
        self.config = _check_config(config)
        for name, hook in (("weight_preprocess", weight_preprocess), ("act_preprocess", act_preprocess),
                           ("weight_quantize", weight_quantize), ("act_quantize", act_quantize)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be a callable returning an nn.Module; got {type(hook).__name__}")
        self._weight_preprocess, self._act_preprocess = weight_preprocess, act_preprocess
        self._weight_quantize, self._act_quantize = weight_quantize, act_quantize

    # ---- quanter construction ----

    def _make_weight_quanter(self, out_channels: int) -> nn.Module:
        bits = self.config["weight_bits"]
        if self._weight_preprocess is not None:
            return self._weight_preprocess()
        if self.config["weight_preprocess_type"] == "PACT":
            return PACT(bits=bits)
        if self._weight_quantize is not None:
            return self._weight_quantize()
        if self.config["weight_quantize_type"] == "channel_wise_abs_max":
            return FakeQuantChannelWiseAbsMax(axis=0, bits=bits, channels=out_channels)
        return FakeQuantAbsMax(bits=bits)

    def _make_activation_quanter(self) -> nn.Module:
        bits = self.config["activation_bits"]
        if self._act_preprocess is not None:
            return self._act_preprocess()
        if self.config["activation_preprocess_type"] == "PACT":
            return PACT(bits=bits)
        if self._act_quantize is not None:
            return self._act_quantize()
        if self.config["activation_quantize_type"] == "moving_average_abs_max":
            return FakeQuantMovingAverageAbsMax(bits=bits, moving_rate=self.config["moving_rate"])
        return FakeQuantAbsMax(bits=bits)

    def _quantizable(self, module: nn.Module) -> Optional[type]:
        types = self.config["quantizable_layer_type"]
        if "Conv2d" in types and type(module) is nn.Conv2d:
            return QuantedConv2d
        if "Linear" in types and type(module) is nn.Linear:
            return QuantedLinear
        return None

    # ---- public API ----

    def quantize(self, model: nn.Module) -> nn.Module:
        """Swaps each quantizable, non-skipped Conv2d / Linear of ``model`` for a QuantedConv2d / QuantedLinear,
        in place, and returns ``model``. Weights and biases stay the same Parameter objects, but PACT alphas are
        new parameters (and ``fuse_conv_bn`` may add conv biases): build the optimizer after this call.
        Under DDP, quantize first and wrap the quantized model; the moving-average scales then stay identical
        across ranks (they are averaged by the quantizers)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        names = {name for name, _ in model.named_modules()}
        missing = [s for s in self.config["skip_quant"] if s not in names]
        if missing:
            raise ValueError(f"skip_quant names {missing} are not modules of the model")
        if self.config["fuse_conv_bn"]:
            fuse_conv_bn(model)
        skipped = set(self.config["skip_quant"])
        skipped |= {name for name, m in model.named_modules() if getattr(m, "skip_quant", False) is True}
        swaps = []
        for name, module in model.named_modules():
            if isinstance(module, (QuantedConv2d, QuantedLinear)):
                raise ValueError(f"the model is already quantized ({name or 'the root'} is {type(module).__name__})")
            if self._skipped(name, module, skipped):
                continue
            cls = self._quantizable(module)
            if cls is not None:
                swaps.append((name, cls, module))
        if any(name == "" for name, _, _ in swaps):
            raise ValueError("model is itself a Conv2d/Linear: wrap it in an nn.Sequential to quantize it in place")
        for name, cls, module in swaps:
            device = module.weight.device
            quanted = cls(module, self._make_weight_quanter(module.weight.shape[0]),
                          self._make_activation_quanter()).to(device)
            quanted.train(module.training)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, quanted)
        logger.info("QAT: quantized %d layers", len(swaps))
        return model

    @staticmethod
    def _skipped(name: str, module: nn.Module, skipped: set) -> bool:
        if getattr(module, "skip_quant", False) is True:
            return True
        # A skipped container skips everything inside it.
        parts = name.split(".") if name else []
        return any(".".join(parts[:i]) in skipped for i in range(1, len(parts) + 1))

    def convert(self, model: nn.Module) -> nn.Module:
        """A new eval model (on the CPU) in which every QuantedConv2d / QuantedLinear of the trained ``model``
        becomes a :class:`pyslim.quant.nn.Int8Conv2d` / :class:`pyslim.quant.nn.Int8Linear`: weights quantized
        like in training (per channel or per tensor; with a weight PACT, on alpha's grid), activations with a
        static int8 ``(t / 127, 0)`` from the learned threshold ``t`` (moving-average scale or PACT alpha), or
        dynamic for ``abs_max`` activations. ``model`` is not modified."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        for key in ("weight_bits", "activation_bits"):
            if self.config[key] != 8:
                raise ValueError(f"convert needs {key}=8 (the int8 kernels); got {self.config[key]}")
        if isinstance(model, (QuantedConv2d, QuantedLinear)):
            raise ValueError("model is itself a quantized layer: wrap it in an nn.Sequential")
        converted = copy.deepcopy(model).cpu().eval()
        targets = [(name, m) for name, m in converted.named_modules() if isinstance(m, (QuantedConv2d, QuantedLinear))]
        for name, layer in targets:
            int8_layer = self._convert_layer(name, layer)
            parent_name, _, child = name.rpartition(".")
            setattr(converted.get_submodule(parent_name), child, int8_layer)
        return converted.eval()

    def _convert_layer(self, name: str, layer: _QuantedBase) -> nn.Module:
        activation = _activation_spec(name, layer.activation_quanter)
        weight_q, weight_scale = _int8_weight(name, layer.weight, layer.weight_quanter)
        bias = layer.bias
        if isinstance(layer, QuantedLinear):
            kwargs = {}
            if activation == "dynamic":
                # abs_max: one symmetric scale max|x|/127 per tensor, computed from each input.
                kwargs = {"per_row": False, "symmetric": True}
            return qnn.Int8Linear(layer.in_features, layer.out_features, weight_q, weight_scale, bias, activation,
                                  **kwargs)
        padding = layer.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise ValueError(f"{name}: padding={padding!r} is not supported by Int8Conv2d; give it explicitly")
            padding = (0, 0)
        return qnn.Int8Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, padding,
                              layer.dilation, layer.groups, weight_q, weight_scale, bias, activation)

    def save_quantized_model(self, model: nn.Module, path: str,
                             example_inputs: Union[Tensor, Tuple[Tensor, ...]]) -> nn.Module:
        """Converts ``model`` (a QAT-trained model, or one already converted) and writes ``path + '.onnx'``
        (ONNX with QuantizeLinear / DequantizeLinear and int8 weights, see
        :func:`pyslim.quant.onnx_export.export_onnx`) and ``path + '.pt'`` (the int8 model's ``state_dict``).
        Returns the converted model. Reload with
        ``quanter.convert(quanter.quantize(build_model())).load_state_dict(torch.load(path + '.pt'))``."""
        from pyslim.quant.onnx_export import export_onnx

        has_qat = any(isinstance(m, (QuantedConv2d, QuantedLinear)) for m in model.modules())
        converted = self.convert(model) if has_qat else model.eval()
        if not any(isinstance(m, (qnn.Int8Linear, qnn.Int8Conv2d)) for m in converted.modules()):
            raise ValueError("model has no quantized layers: call quantize() (and train) first")
        torch.save(converted.state_dict(), path + ".pt")
        export_onnx(converted, example_inputs, path + ".onnx")
        return converted


def _activation_spec(name: str, quanter: nn.Module):
    if isinstance(quanter, FakeQuantMovingAverageAbsMax):
        threshold = float(quanter.scale)
    elif isinstance(quanter, PACT):
        threshold = float(quanter.alpha.detach().abs())
    elif isinstance(quanter, FakeQuantAbsMax):
        return "dynamic"
    else:
        raise ValueError(f"{name}: convert does not know the activation quantizer {type(quanter).__name__}")
    if not (threshold > 0 and threshold < float("inf")):
        raise ValueError(f"{name}: the learned activation threshold must be finite and > 0; got {threshold}")
    return (threshold / 127.0, 0)


def _int8_weight(name: str, weight: Tensor, quanter: nn.Module) -> Tuple[Tensor, Tensor]:
    w = weight.detach().to(torch.float32).cpu()
    if isinstance(quanter, FakeQuantChannelWiseAbsMax):
        return qnn.quantize_weight(w, "channel_wise_abs_max")
    if isinstance(quanter, FakeQuantAbsMax):
        return qnn.quantize_weight(w, "abs_max")
    if isinstance(quanter, PACT):
        alpha = float(quanter.alpha.detach().abs())
        if not (alpha > 0 and alpha < float("inf")):
            raise ValueError(f"{name}: the weight PACT alpha must be finite and > 0; got {alpha}")
        # Training quantized clip(w, -alpha, alpha) on alpha's grid: reproduce that grid exactly.
        scale = alpha / 127.0
        v = torch.clamp(w, -alpha, alpha) * (127.0 / alpha)
        q = torch.clamp(torch.sign(v) * torch.floor(v.abs() + 0.5), -127, 127).to(torch.int8)  # half away from 0
        return q, torch.full((w.shape[0],), scale, dtype=torch.float32)
    raise ValueError(f"{name}: convert does not know the weight quantizer {type(quanter).__name__}")
