"""Post-training dynamic quantization (PaddleSlim ``quant_post_dynamic``): no calibration data.

Weights are quantized symmetrically, per output channel (``channel_wise_abs_max``, the default) or per
tensor (``abs_max``), with PaddleSlim's math ``scale = max|W| / (2**(b-1) - 1)``,
``q = round_half_to_even(W / scale)`` (numpy's ``np.around``), and stored as integers:

* ``weight_bits=8``: ``nn.Linear`` becomes :class:`pyslim.quant.nn.Int8Linear` and ``nn.Conv2d`` becomes
  :class:`pyslim.quant.nn.Int8Conv2d`, both with ``activation="dynamic"``: activations are quantized to
  int8 on the fly (per row for Linear, per tensor for Conv2d) and the product runs on pyslim's native int8
  GEMM / convolution kernels. This is a real speedup (and 4x smaller weights). It goes beyond PaddleSlim,
  whose ``quant_post_dynamic`` dequantizes the weights and runs the layer in float.
* ``weight_bits=16``: ``nn.Linear`` / ``nn.Conv2d`` become :class:`WeightOnlyInt16Linear` /
  :class:`WeightOnlyInt16Conv2d`, which store int16 weights plus one float32 scale per output channel,
  dequantize them natively (``pyslim.ops.dequantize``) at every forward and run the float layer. **16-bit is
  a storage format (2x smaller weights, error ~1e-5 relative), not a speedup**: each forward pays for the
  dequantization on top of the float computation.

Only modules whose type is exactly ``nn.Linear`` / ``nn.Conv2d`` are converted (subclasses such as
``nn.MultiheadAttention``'s ``out_proj``, whose weight its parent reads directly, are left alone).

Example::

    >>> import torch
    >>> from pyslim.quant.dynamic import quant_post_dynamic
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    >>> qmodel = quant_post_dynamic(model)                          # int8 weights, native dynamic int8 GEMM
    >>> y = qmodel(torch.randn(4, 64))
    >>> small = quant_post_dynamic(model, weight_bits=16, skip_quant=["2"])   # int16 storage; keep layer "2"
"""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyslim.ops import dequantize
from pyslim.ops import reference as R

__all__ = ["quant_post_dynamic", "quant_post_only_weight", "WeightOnlyInt16Linear", "WeightOnlyInt16Conv2d",
           "quantize_weight_symmetric"]

logger = logging.getLogger("pyslim.quant")

_LAYER_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}
# PaddleSlim's op names, accepted as aliases of the PyTorch ones.
_LAYER_ALIASES = {"mul": "Linear", "matmul": "Linear", "conv2d": "Conv2d", "depthwise_conv2d": "Conv2d"}
_WEIGHT_QUANTIZE_TYPES = ("channel_wise_abs_max", "abs_max")


def quantize_weight_symmetric(weight: Tensor, bits: int, weight_quantize_type: str = "channel_wise_abs_max"
                              ) -> Tuple[Tensor, Tensor]:
    """PaddleSlim's weight quantization: ``scale = max|W| / (2**(bits-1) - 1)`` per output channel (axis 0)
    or per tensor, ``q = round_half_to_even(W / scale)``, stored as int8 (bits <= 8) or int16.

    Returns ``(q, scale)`` with one float32 scale per output channel (a per-tensor scale is repeated). A
    channel that is all zeros gets scale 1 (its codes are 0). Example::

        >>> q, s = quantize_weight_symmetric(torch.randn(8, 4), bits=16)
        >>> q.dtype, s.shape
        (torch.int16, torch.Size([8]))
    """
    if weight_quantize_type not in _WEIGHT_QUANTIZE_TYPES:
        raise ValueError(f"weight_quantize_type must be one of {list(_WEIGHT_QUANTIZE_TYPES)}; got "
                         f"{weight_quantize_type!r}")
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= int(bits) <= 16:
        raise ValueError(f"bits must be an int in [2, 16]; got {bits!r}")
    w = weight.detach().to(torch.float32).contiguous()
    if w.dim() < 1 or w.shape[0] == 0:
        raise ValueError(f"weight must have at least one output channel; got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight contains NaN or Inf; it cannot be quantized")
    bin_ = 2 ** (int(bits) - 1) - 1
    out_c = w.shape[0]
    if w.numel() == 0:
        amax = torch.zeros(out_c, device=w.device)
    elif weight_quantize_type == "channel_wise_abs_max":
        amax = R.abs_max(w, 0)
    else:
        amax = R.abs_max(w).expand(out_c)
    # float32 division, as numpy does on a float32 array.
    scale = amax / torch.tensor(float(bin_), dtype=torch.float32, device=w.device)
    scale = torch.where(amax > 0, scale, torch.ones_like(scale)).to(torch.float32).contiguous()
    # True division then half-to-even rounding, exactly numpy's np.around(W / scale) (pyslim.ops.quantize
    # multiplies by 1/scale, torch's convention, which differs in the last bit for ~0.1 % of int16 codes).
    shape = (out_c,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.reshape(shape)).clamp_(-bin_, bin_)
    return q.to(torch.int8 if bits <= 8 else torch.int16).contiguous(), scale


class _WeightOnlyInt16(nn.Module):
    """Shared storage: int16 weight + float32 scale per output channel (+ float32 bias)."""

    def _init_storage(self, weight_int16: Tensor, weight_scale: Tensor, bias: Optional[Tensor]) -> None:
        if weight_int16.dtype != torch.int16:
            raise TypeError(f"weight_int16 must be int16; got {weight_int16.dtype}")
        out_c = weight_int16.shape[0]
        if weight_scale.dtype != torch.float32 or tuple(weight_scale.shape) != (out_c,):
            raise ValueError(f"weight_scale must be float32 of shape ({out_c},); got {weight_scale.dtype} "
                             f"{tuple(weight_scale.shape)}")
        if bias is not None and tuple(bias.shape) != (out_c,):
            raise ValueError(f"bias must have shape ({out_c},); got {tuple(bias.shape)}")
        self.register_buffer("weight_int16", weight_int16.contiguous())
        self.register_buffer("weight_scale", weight_scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())

    def dequantized_weight(self) -> Tensor:
        """The float32 weight ``q * scale`` (per output channel), computed by the native dequantize op."""
        return dequantize(self.weight_int16, self.weight_scale, axis=0)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dtype != torch.float32:
            raise TypeError(f"x must be a float32 tensor; got {getattr(x, 'dtype', type(x).__name__)}")


class WeightOnlyInt16Linear(_WeightOnlyInt16):
    """``nn.Linear`` with its weight stored as int16 (symmetric, per output channel or per tensor).

    The forward dequantizes the weight natively and runs ``F.linear`` in float32: a storage format (half the
    bytes of fp32, relative error about ``0.5 / 32767`` of each channel's max), **not a speedup**. Example::

        >>> lin = WeightOnlyInt16Linear.from_float(torch.nn.Linear(16, 8))
        >>> lin(torch.randn(2, 16)).shape
        torch.Size([2, 8])
    """

    def __init__(self, in_features: int, out_features: int, weight_int16: Tensor, weight_scale: Tensor,
                 bias: Optional[Tensor] = None):
        super().__init__()
        if tuple(weight_int16.shape) != (out_features, in_features):
            raise ValueError(f"weight_int16 must have shape ({out_features}, {in_features}); got "
                             f"{tuple(weight_int16.shape)}")
        self.in_features, self.out_features = in_features, out_features
        self._init_storage(weight_int16, weight_scale, bias)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantize_type: str = "channel_wise_abs_max"
                   ) -> "WeightOnlyInt16Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear; got {type(linear).__name__}")
        q, scale = quantize_weight_symmetric(linear.weight, 16, weight_quantize_type)
        return cls(linear.in_features, linear.out_features, q, scale, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.linear(x, self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int16"


class WeightOnlyInt16Conv2d(_WeightOnlyInt16):
    """``nn.Conv2d`` with its weight stored as int16 (symmetric, per output channel or per tensor); every
    geometry and ``padding_mode`` of ``nn.Conv2d``. Dequantizes natively and runs ``F.conv2d`` in float32:
    a storage format, **not a speedup**. Example::

        >>> conv = WeightOnlyInt16Conv2d.from_float(torch.nn.Conv2d(3, 8, 3, padding=1))
        >>> conv(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, conv: nn.Conv2d, weight_int16: Tensor, weight_scale: Tensor):
        super().__init__()
        want = tuple(conv.weight.shape)
        if tuple(weight_int16.shape) != want:
            raise ValueError(f"weight_int16 must have shape {want}; got {tuple(weight_int16.shape)}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups, self.padding_mode = conv.dilation, conv.groups, conv.padding_mode
        self._reversed_padding_repeated_twice = list(conv._reversed_padding_repeated_twice)
        self._init_storage(weight_int16, weight_scale, conv.bias)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantize_type: str = "channel_wise_abs_max"
                   ) -> "WeightOnlyInt16Conv2d":
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d; got {type(conv).__name__}")
        q, scale = quantize_weight_symmetric(conv.weight, 16, weight_quantize_type)
        return cls(conv, q, scale)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        w = self.dequantized_weight()
        if self.padding_mode != "zeros":
            # nn.Conv2d's own rule: pad explicitly in the chosen mode, then convolve without padding.
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, weight=int16")


# --------------------------------------------------------------------------------------------------------
# module selection, shared with pyslim.quant.embedding
# --------------------------------------------------------------------------------------------------------


def _skip_names(model: nn.Module, skip_quant) -> Tuple[str, ...]:
    """Validates skip_quant (module names as in ``model.named_modules()``) and returns them as a tuple."""
    if isinstance(skip_quant, str):
        skip_quant = (skip_quant,)
    try:
        names = tuple(skip_quant)
    except TypeError:
        raise TypeError(f"skip_quant must be a collection of module names; got {type(skip_quant).__name__}") from None
    known = {name for name, _ in model.named_modules()}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"skip_quant must hold module names (str); got {name!r}")
        if name not in known:
            sample = ", ".join(repr(n) for n in sorted(known)[:8] if n)
            raise ValueError(f"skip_quant names {name!r}, which is not a module of the model (names as in "
                             f"model.named_modules(), e.g. {sample})")
    return names


def _is_skipped(name: str, module: nn.Module, skip: Sequence[str]) -> bool:
    """Skipped if the module or one of its parents is named in ``skip`` (an empty name skips the whole
    model), or if it carries PaddleSlim's ``skip_quant = True`` attribute."""
    if getattr(module, "skip_quant", False) is True:
        return True
    return any(s == "" or name == s or name.startswith(s + ".") for s in skip)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _layer_types(quantizable_layer_type) -> Tuple[Type[nn.Module], ...]:
    if isinstance(quantizable_layer_type, (str, type)):
        quantizable_layer_type = (quantizable_layer_type,)
    try:
        items = list(quantizable_layer_type)
    except TypeError:
        raise TypeError("quantizable_layer_type must be a collection of layer types ('Linear', 'Conv2d'); got "
                        f"{type(quantizable_layer_type).__name__}") from None
    if not items:
        raise ValueError("quantizable_layer_type is empty: name at least one of 'Linear', 'Conv2d'")
    out: List[Type[nn.Module]] = []
    for item in items:
        if isinstance(item, type) and item in _LAYER_TYPES.values():
            out.append(item)
        elif isinstance(item, str) and _LAYER_ALIASES.get(item, item) in _LAYER_TYPES:
            out.append(_LAYER_TYPES[_LAYER_ALIASES.get(item, item)])
        else:
            raise ValueError(f"quantizable_layer_type entries must be 'Linear' or 'Conv2d' (or nn.Linear / "
                             f"nn.Conv2d, or PaddleSlim's 'mul' / 'conv2d'); got {item!r}")
    return tuple(dict.fromkeys(out))


def _convert(module: nn.Module, name: str, weight_bits: int, weight_quantize_type: str,
             fused_activation: Optional[str] = None) -> nn.Module:
    from pyslim.quant.nn import Int8Conv2d, Int8Linear

    if weight_bits == 8:
        if module.weight.device.type != "cpu":
            raise ValueError(f"layer {name!r} is on {module.weight.device}; the int8 kernels run on the CPU — move "
                             "the model to the CPU first, or use weight_bits=16")
        q, scale = quantize_weight_symmetric(module.weight, 8, weight_quantize_type)
        if isinstance(module, nn.Linear):
            return Int8Linear(module.in_features, module.out_features, q, scale, module.bias, activation="dynamic",
                              fused_activation=fused_activation)
        padding = module.padding
        if module.padding_mode != "zeros" or padding == "same":
            raise ValueError(f"layer {name!r} (Conv2d) cannot be converted to int8: the int8 convolution takes "
                             f"explicit zero padding; got padding={padding!r}, padding_mode={module.padding_mode!r}; "
                             "leave it in float with skip_quant, or use weight_bits=16")
        padding = (0, 0) if padding == "valid" else padding
        return Int8Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, padding,
                          module.dilation, module.groups, q, scale, module.bias, activation="dynamic",
                          fused_activation=fused_activation)
    if isinstance(module, nn.Linear):
        return WeightOnlyInt16Linear.from_float(module, weight_quantize_type)
    return WeightOnlyInt16Conv2d.from_float(module, weight_quantize_type)


def quant_post_dynamic(model: nn.Module, weight_bits: int = 8,
                       quantizable_layer_type: Iterable[Union[str, Type[nn.Module]]] = ("Linear", "Conv2d"),
                       weight_quantize_type: str = "channel_wise_abs_max", skip_quant: Iterable[str] = (),
                       inplace: bool = False, optimize_model: bool = False, example_inputs=None) -> nn.Module:
    """Quantizes the weights of every ``nn.Linear`` / ``nn.Conv2d`` to int8 or int16 (no calibration data).

    Args:
        model: the float model (evaluation mode is set on the converted layers).
        weight_bits: 8 (int8 weights and dynamic int8 activations on the native kernels: faster) or 16
            (int16 weight storage, dequantized at each forward: smaller, not faster).
        quantizable_layer_type: which layers to convert: ``'Linear'`` and/or ``'Conv2d'`` (also the classes, or
            PaddleSlim's op names ``'mul'`` / ``'conv2d'``).
        weight_quantize_type: ``'channel_wise_abs_max'`` (one scale per output channel) or ``'abs_max'``.
        skip_quant: module names (as in ``model.named_modules()``) to keep in float, with everything under
            them; modules with a ``skip_quant = True`` attribute are kept too (PaddleSlim's convention).
        inplace: convert ``model`` itself instead of a deep copy.
        optimize_model: with 8-bit weights, run the ``ReLU`` / ``ReLU6`` / exact ``GELU`` module that follows a
            converted layer inside its kernel's epilogue (the module becomes an identity). The pairs are found by
            running the model once on ``example_inputs`` (required then: a tensor, a tuple of positional inputs
            or a dict of keyword inputs) and following where each layer's output goes
            (``pyslim.quant.fuse.find_activation_fusions_by_run``), so models fx cannot trace (Hugging Face
            transformers) are covered. The kernel's GELU is within 2e-7 * |y| of torch's.

    Returns the converted model. Example::

        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8)).eval()
        >>> type(quant_post_dynamic(m)[0]).__name__
        'Int8Linear'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(weight_bits, bool) or weight_bits not in (8, 16):
        raise ValueError(f"weight_bits must be 8 or 16; got {weight_bits!r}")
    if weight_quantize_type not in _WEIGHT_QUANTIZE_TYPES:
        raise ValueError(f"weight_quantize_type must be one of {list(_WEIGHT_QUANTIZE_TYPES)}; got "
                         f"{weight_quantize_type!r}")
    types = _layer_types(quantizable_layer_type)
    skip = _skip_names(model, skip_quant)
    if not inplace:
        model = copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) in types and not _is_skipped(name, m, skip)]
    fused: Dict[str, Tuple[str, str]] = {}
    if optimize_model:
        if example_inputs is None:
            raise ValueError("optimize_model=True needs example_inputs (a tensor, a tuple or a dict of inputs) "
                             "to find which activations follow which layers")
        if weight_bits == 8:
            from pyslim.quant.fuse import find_activation_fusions_by_run

            fused = find_activation_fusions_by_run(model.eval(), example_inputs,
                                                   layer_names={name for name, _ in targets})
    for name, m in targets:
        new = _convert(m, name, int(weight_bits), weight_quantize_type, fused.get(name, (None,))[0])
        if name == "":
            return new
        _set_submodule(model, name, new)
    for _, act_name in set(fused.values()):
        _set_submodule(model, act_name, nn.Identity())
    if fused:
        logger.info("quant_post_dynamic: %d activation(s) run inside the int8 kernels", len(fused))
    logger.info("quant_post_dynamic: %d layer(s) converted to %d-bit weights", len(targets), weight_bits)
    return model


# PaddleSlim's older name for the same function.
quant_post_only_weight = quant_post_dynamic
