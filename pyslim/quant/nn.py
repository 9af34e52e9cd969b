"""Int8 inference modules on the native kernels.

Example::

    >>> import torch, pyslim.quant.nn as qnn
    >>> lin = torch.nn.Linear(64, 32).eval()
    >>> q = qnn.Int8Linear.from_float(lin)                       # dynamic int8 activations
    >>> y = q(torch.randn(8, 64))
    >>> conv = torch.nn.Conv2d(16, 32, 3, padding=1).eval()
    >>> qc = qnn.Int8Conv2d.from_float(conv)
    >>> z = qc(torch.randn(1, 16, 28, 28))
"""

from __future__ import annotations

import numbers
import operator
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

import pyslim
from pyslim.ops import _int8 as I
from pyslim.ops import quantize
from pyslim.ops import reference as R
from pyslim._native import capsule

__all__ = ["Int8Linear", "Int8Conv2d", "quantize_weight"]

ActivationSpec = Union[str, Tuple[float, int]]


def quantize_weight(weight: Tensor, weight_quantize_type: str = "channel_wise_abs_max", bits: int = 8
                    ) -> Tuple[Tensor, Tensor]:
    """Symmetric int8 weights: ``scale = max|W| / 127`` per output channel (axis 0) or per tensor;
    ``q = round_half_even(W / scale)``. Returns (int8 weight, float32 scale of length out_channels)."""
    if weight_quantize_type not in ("channel_wise_abs_max", "abs_max"):
        raise ValueError("weight_quantize_type must be 'channel_wise_abs_max' or 'abs_max'; got "
                         f"{weight_quantize_type!r}")
    if bits != 8:
        raise ValueError(f"the int8 kernels take 8-bit weights; got bits={bits}")
    w = weight.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight contains NaN or Inf")
    out_c = w.shape[0]
    if weight_quantize_type == "channel_wise_abs_max":
        amax = R.abs_max(w, 0) if w.numel() else torch.zeros(out_c)
    else:
        amax = R.abs_max(w).expand(out_c)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float32).contiguous()
    q = quantize(w, scale, axis=0, dtype=torch.int8, quant_min=-127, quant_max=127)
    return q, scale


def _activation_spec(activation: ActivationSpec) -> Tuple[bool, float, int]:
    """(dynamic, scale, zero_point) from 'dynamic' or (scale, zero_point) with an int8 zero point."""
    if isinstance(activation, str):
        if activation != "dynamic":
            raise ValueError(f"activation must be 'dynamic' or (scale, zero_point); got {activation!r}")
        return True, 1.0, 0
    if (not isinstance(activation, (tuple, list)) or len(activation) != 2
            or not isinstance(activation[0], numbers.Real) or not isinstance(activation[1], numbers.Integral)):
        raise ValueError(f"activation must be 'dynamic' or (scale, zero_point); got {activation!r}")
    scale, zp = float(activation[0]), int(activation[1])
    if not scale > 0 or scale != scale or scale == float("inf"):
        raise ValueError(f"activation scale must be finite and > 0; got {scale}")
    if not -128 <= zp <= 127:
        raise ValueError(f"activation zero_point must be an int8 value in [-128, 127]; got {zp}")
    return False, scale, zp


class _Int8Base(nn.Module):
    """Holds the int8 weight (persistent) and its packed form for the active CPU path (rebuilt on demand)."""

    def _init_common(self, weight_int8: Tensor, weight_scale: Tensor, bias: Optional[Tensor], dynamic: bool,
                     act_scale: float, act_zero_point: int) -> None:
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("weight_scale", weight_scale.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())
        self.dynamic = dynamic
        self.register_buffer("act_scale", torch.tensor(act_scale, dtype=torch.float32))
        self.register_buffer("act_zero_point", torch.tensor(act_zero_point, dtype=torch.int32))
        self._packed: Optional[Tensor] = None
        self._col_sums: Optional[Tensor] = None
        self._packed_isa: Optional[str] = None
        # (scale, zero_point) when the output is handed on as int8 (see set_output_quant); None: float32.
        self.output_quant: Optional[Tuple[float, int]] = None
        self.eval()

    def set_int8_weight(self, weight_int8: Tensor, weight_scale: Tensor) -> None:
        """Replaces the int8 weight and its per-output-channel scales (e.g. adaptively rounded ones,
        pyslim.quant.adaround); same shapes and dtypes as the current ones. The packed form is rebuilt."""
        if weight_int8.shape != self.weight_int8.shape or weight_int8.dtype != torch.int8:
            raise ValueError(f"weight_int8 must be int8 of shape {tuple(self.weight_int8.shape)}; got "
                             f"{weight_int8.dtype} {tuple(weight_int8.shape)}")
        if weight_scale.shape != self.weight_scale.shape:
            raise ValueError(f"weight_scale must have shape {tuple(self.weight_scale.shape)}")
        with torch.no_grad():
            self.weight_int8.copy_(weight_int8)
            self.weight_scale.copy_(weight_scale.to(torch.float32))
        self._packed = None
        self._col_sums = None  # recomputed with the packing (and for depthwise layers)

    def set_output_quant(self, quant: Optional[Tuple[float, int]]) -> None:
        """Makes forward return int8, quantized with ``quant = (scale, zero_point)`` inside the kernel's
        epilogue — exactly ``pyslim.ops.quantize`` of the float output — instead of float32. Meant for a layer
        whose output feeds exactly one static int8 layer with that activation scale (``quant_post_static(...,
        optimize_model=True)`` links such pairs): the next layer then skips its input quantization, and the
        tensor between them is 4x smaller. ``None`` restores the float output."""
        if quant is not None:
            scale, zp = float(quant[0]), int(quant[1])
            if not scale > 0 or scale == float("inf") or not -128 <= zp <= 127:
                raise ValueError(f"quant must be (scale > 0, int8 zero point); got {quant!r}")
            quant = (scale, zp)
        self.output_quant = quant

    def _out_args(self) -> Tuple[int, float, int]:
        if self.output_quant is None:
            return I.OUT_DTYPES[torch.float32], 1.0, 0
        return I.OUT_DTYPES[torch.int8], self.output_quant[0], self.output_quant[1]

    def _pack_source(self) -> Tuple[Tensor, int]:
        raise NotImplementedError

    def _ensure_packed(self) -> None:
        if torch.compiler.is_compiling():
            return
        isa = pyslim.active_isa()
        if self._packed is None or self._packed_isa != isa:
            w2d, groups = self._pack_source()
            self._packed, self._col_sums = I.pack_int8_weight_op(w2d, groups)
            self._packed_isa = isa

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._packed = None  # the int8 weight changed: repack on the next forward

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_capsule_cache", None)  # DLPack capsules cannot be copied or pickled; rebuilt on demand
        state.pop("_act_cache", None)
        return state

    def _static_act(self) -> Tuple[float, int]:
        """The static activation (scale, zero_point) as Python numbers, kept while both buffers are the same tensors
        at the same version (an in-place update or a state_dict load bumps it; a replaced buffer is another
        object). float() of a 0-d tensor costs ~0.8 us, twice a call, a seventh of a small layer's overhead."""
        s, z = self._buffers["act_scale"], self._buffers["act_zero_point"]
        if torch.compiler.is_compiling():
            return float(s), int(z)
        key = (s, s._version, z, z._version)
        cache = self.__dict__.get("_act_cache")
        if (cache is not None and cache[0][0] is s and cache[0][2] is z and cache[0][1] == key[1]
                and cache[0][3] == key[3]):
            return cache[1]
        value = (float(s), int(z))
        self.__dict__["_act_cache"] = (key, value)
        return value

    def _constant_capsules(self, tensors: Tuple[Optional[Tensor], ...]) -> Optional[tuple]:
        """DLPack capsules of the layer's constant operands (packed weight, scales, bias), made once and reused
        while the operands are the same tensor objects (an in-place update is seen through the capsule; a
        replaced buffer makes new ones). Building six capsules per call cost about a third of a small layer's
        Python overhead. None where the direct call is not allowed (a tensor subclass or one requiring grad)."""
        cache = self.__dict__.get("_capsule_cache")
        if cache is not None and len(cache[0]) == len(tensors) and all(map(operator.is_, cache[0], tensors)):
            return cache[1]
        if any(t is not None and (type(t) is not Tensor or t.requires_grad) for t in tensors):
            return None
        capsules = tuple(None if t is None else capsule(t) for t in tensors)
        self.__dict__["_capsule_cache"] = (tensors, capsules)
        return capsules

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is an inference module (int8 weights, no gradient); "
                               "call .eval() — train the float model, or use QAT, instead")
        if not isinstance(x, Tensor) or x.dtype not in (torch.float32, torch.int8):
            raise TypeError(f"{name} must be a float32 tensor; got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dtype == torch.int8 and self.dynamic:
            raise TypeError(f"{name} is int8, but {type(self).__name__} quantizes its input dynamically: an int8 "
                            "input is accepted only by a layer with a static activation scale (it is taken to be "
                            "quantized with that scale and zero point, as set_output_quant of the layer before "
                            "produces it)")
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU (the int8 kernels are CPU kernels here); got {x.device}")


class Int8Linear(_Int8Base):
    """``y = x W^T + b`` with int8 W (symmetric, per output channel) and int8 activations, on the native GEMM.

    Activations are quantized inside the native call: dynamically per row (``activation="dynamic"``,
    asymmetric by default) or with a fixed ``(scale, zero_point)`` (int8 zero point) from calibration.
    """

    def __init__(self, in_features: int, out_features: int, weight_int8: Tensor, weight_scale: Tensor,
                 bias: Optional[Tensor] = None, activation: ActivationSpec = "dynamic", per_row: bool = True,
                 symmetric: bool = False, fused_activation: Optional[str] = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if tuple(weight_int8.shape) != (out_features, in_features) or weight_int8.dtype != torch.int8:
            raise ValueError(f"weight_int8 must be int8 of shape ({out_features}, {in_features}); got "
                             f"{weight_int8.dtype} {tuple(weight_int8.shape)}")
        if fused_activation not in I.ACTIVATIONS:
            raise ValueError(f"fused_activation must be None, 'relu', 'relu6' or 'gelu'; got {fused_activation!r}")
        dynamic, scale, zp = _activation_spec(activation)
        self.per_row, self.symmetric, self.fused_activation = per_row, symmetric, fused_activation
        self._init_common(weight_int8, weight_scale, bias, dynamic, scale, zp)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantize_type: str = "channel_wise_abs_max",
                   activation: ActivationSpec = "dynamic", per_row: bool = True, symmetric: bool = False,
                   fused_activation: Optional[str] = None) -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear; got {type(linear).__name__}")
        q, scale = quantize_weight(linear.weight, weight_quantize_type)
        return cls(linear.in_features, linear.out_features, q, scale, linear.bias, activation, per_row, symmetric,
                   fused_activation)

    def _pack_source(self):
        return self.weight_int8, 1

    def set_output_quant(self, quant: Optional[Tuple[float, int]]) -> None:
        if quant is not None and self.dynamic:
            raise ValueError("set_output_quant needs a static activation scale: the dynamic Linear kernel "
                             "returns float32")
        super().set_output_quant(quant)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must end with in_features={self.in_features}; got shape {tuple(x.shape)}")
        self._ensure_packed()
        act = I.ACTIVATIONS[self.fused_activation]
        if self.dynamic and self.output_quant is None:
            return I.linear_int8_dynamic(x, self._packed, self._col_sums, self.weight_scale, self.bias,
                                         self.out_features, self.per_row, self.symmetric, act)
        # Static scale: a float x is quantized inside the native call (the quantize op's values); an int8 x is
        # taken as already quantized with this layer's scale and zero point.
        out_dtype, out_scale, out_zp = self._out_args()
        scale, zp = self._static_act()
        if not torch.compiler.is_compiling():
            buffers = self._buffers
            caps = self._constant_capsules((self._packed, self._col_sums, buffers["weight_scale"], buffers["bias"]))
            if caps is not None and I.direct_call_ok(x):
                return I.gemm_int8_cached(x, scale, zp, caps, self.out_features, out_dtype, act, out_scale, out_zp)
        op = I.linear_int8_static_op if x.dtype == torch.float32 else I.gemm_int8_op
        return op(x, scale, zp, self._packed, self._col_sums, self.weight_scale, self.bias, self.out_features,
                  out_dtype, act, out_scale, out_zp)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else f"static(scale={float(self.act_scale):.4g}, zp={int(self.act_zero_point)})"
        act = f", fused_activation={self.fused_activation}" if self.fused_activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={mode}{act}"


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Int8Conv2d(_Int8Base):
    """2-D convolution with int8 weights and activations on the native NHWC kernels (any stride, padding,
    dilation and groups; a dedicated depthwise kernel; 1x1 as a plain GEMM). Takes and returns NCHW float32
    tensors; the output uses channels_last memory, so chained int8 convolutions need no layout copies."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 weight_int8: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
                 activation: ActivationSpec = "dynamic", fused_activation: Optional[str] = None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        if fused_activation not in I.ACTIVATIONS:
            raise ValueError(f"fused_activation must be None, 'relu', 'relu6' or 'gelu'; got {fused_activation!r}")
        self.fused_activation = fused_activation
        want = (out_channels, in_channels // groups, *self.kernel_size)
        if tuple(weight_int8.shape) != want or weight_int8.dtype != torch.int8:
            raise ValueError(f"weight_int8 must be int8 of shape {want}; got {weight_int8.dtype} "
                             f"{tuple(weight_int8.shape)}")
        self.depthwise = groups == in_channels == out_channels and groups > 1
        dynamic, scale, zp = _activation_spec(activation)
        self._init_common(weight_int8, weight_scale, bias, dynamic, scale, zp)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantize_type: str = "channel_wise_abs_max",
                   activation: ActivationSpec = "dynamic", fused_activation: Optional[str] = None) -> "Int8Conv2d":
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d; got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported; got {conv.padding_mode!r}")
        padding = conv.padding
        if isinstance(padding, str):
            if padding != "valid":
                raise ValueError("padding='same' is not supported; give the padding explicitly")
            padding = (0, 0)
        q, scale = quantize_weight(conv.weight, weight_quantize_type)
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                   conv.groups, q, scale, conv.bias, activation, fused_activation)

    def _pack_source(self):
        # (Cout, Cin/g, KH, KW) -> (Cout, KH*KW*Cin/g): the im2col row order is (kh, kw, c). An image stem (one
        # group of 1-3 input channels, a kernel above 1x1) is packed with its channels zero-padded to 4, so that a
        # kernel row is a whole number of 4-byte groups and the implicit-GEMM path takes it (the native op
        # accepts either packing; the zero weights meet the zero-point bytes it pads the pixels with).
        w = self.weight_int8.permute(0, 2, 3, 1)
        if self.groups == 1 and self.in_channels < 4 and self.kernel_size[0] * self.kernel_size[1] > 1:
            w = torch.nn.functional.pad(w, (0, 4 - self.in_channels))
        return w.reshape(self.out_channels, -1).contiguous(), self.groups

    def _ensure_packed(self) -> None:
        if self.depthwise:
            if self._col_sums is None and not torch.compiler.is_compiling():
                self._dw_weight = self.weight_int8[:, 0].permute(1, 2, 0).contiguous()  # (KH, KW, C)
                self._col_sums = self.weight_int8.sum(dim=(1, 2, 3), dtype=torch.int32).contiguous()
            return
        super()._ensure_packed()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._col_sums = None

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W); got shape {tuple(x.shape)}")
        self._ensure_packed()
        nhwc = x.permute(0, 2, 3, 1)  # a view; contiguous when x is channels_last
        if x.dtype == torch.int8:  # already quantized with this layer's (static) scale, by the layer before
            scale, zp = self._static_act()
        elif self.dynamic:
            lo, hi = torch.aminmax(nhwc)
            lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
            scale = (hi - lo) / 255.0 if hi > lo else 1.0
            zp = int(min(max(-128 - round(lo / scale), -128), 127))
        else:
            scale, zp = self._static_act()
        # Quantized inside the native call (the quantize op's rounding and clamp), NHWC: a view of a
        # channels_last x, a copy otherwise.
        act = I.ACTIVATIONS[self.fused_activation]
        out_dtype, out_scale, out_zp = self._out_args()
        xin = nhwc.contiguous()
        if not torch.compiler.is_compiling():
            buffers = self._buffers
            caps = self._constant_capsules((None if self.depthwise else self._packed,
                                            self._dw_weight if self.depthwise else None, self._col_sums,
                                            buffers["weight_scale"], buffers["bias"]))
            if caps is not None and I.direct_call_ok(xin):
                out = I.conv2d_int8_cached(xin, scale, zp, caps, self.out_channels, self.kernel_size[0],
                                           self.kernel_size[1], self.stride, self.padding, self.dilation, self.groups,
                                           act, out_dtype, out_scale, out_zp)
                return out.permute(0, 3, 1, 2)
        out = I.conv2d_int8_direct(nhwc.contiguous(), scale, zp, None if self.depthwise else self._packed,
                                   self._dw_weight if self.depthwise else None, self._col_sums, self.weight_scale,
                                   self.bias, self.out_channels, self.kernel_size[0], self.kernel_size[1],
                                   list(self.stride), list(self.padding), list(self.dilation), self.groups, act,
                                   out_dtype, out_scale, out_zp)
        return out.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
                + (", depthwise" if self.depthwise else "")
                + (f", fused_activation={self.fused_activation}" if self.fused_activation else ""))
