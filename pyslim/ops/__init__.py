"""Native quantization ops as PyTorch custom ops (autograd, fake/meta implementations, torch.compile).

Every function validates its arguments and raises ``TypeError``/``ValueError`` naming the bad one; the
math is documented in ``pyslim.ops.reference`` (pure torch) and ``csrc/include/pyslim/kernels.h``.

Rounding is explicit: ``round_mode="half_away_from_zero"`` (PaddleSlim's QAT layers, ``std::round``) or
``"half_to_even"`` (torch, numpy). Gradients: ``grad="ste"`` passes the gradient straight through
(PaddleSlim), ``grad="clipped"`` masks it outside the quantization range (torch).

Example::

    >>> import torch, pyslim.ops as ops
    >>> x = torch.randn(4, 8)
    >>> y = ops.fake_quant_abs_max(x, bits=8)
    >>> w = ops.fake_quant_channel_wise_abs_max(torch.randn(16, 3, 3, 3), axis=0)
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from pyslim.ops import reference
from pyslim.ops import _fake_quant as _fq
from pyslim.ops._fake_quant import (
    GRAD_MODES,
    ROUND_MODES,
    dequantize_op,
    moving_average_abs_max_update_op,
    quantize_op,
)

__all__ = [
    "fake_quant_abs_max",
    "fake_quant_channel_wise_abs_max",
    "fake_quant_symmetric",
    "fake_quant_moving_average_abs_max",
    "fake_quant_affine",
    "pact",
    "quantize",
    "dequantize",
    "reference",
]

ScaleLike = Union[Tensor, float]


# --------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------


def _check_input(x, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32; got {x.dtype}")
    if x.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device; got {x.device}")
    return x


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= int(bits) <= 16:
        raise ValueError(f"bits must be an int in [2, 16]; got {bits!r}")
    return int(bits)


def _check_round(round_mode: str) -> int:
    if round_mode not in ROUND_MODES:
        raise ValueError(f"round_mode must be one of {sorted(ROUND_MODES)}; got {round_mode!r}")
    return ROUND_MODES[round_mode]


def _check_grad(grad: str, allowed=("ste", "clipped")) -> int:
    if grad not in allowed:
        raise ValueError(f"grad must be one of {list(allowed)}; got {grad!r}")
    return GRAD_MODES[grad]


def _check_axis(x: Tensor, axis) -> Optional[int]:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int or None; got {type(axis).__name__}")
    axis = int(axis)
    if x.dim() == 0 or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}; got {axis}")
    return axis % x.dim()


def _is_traced(t: Tensor) -> bool:
    # Value checks need real data: skipped while torch.compile traces (the native binding still checks CPU
    # values when the compiled code runs) and for fake/meta tensors.
    return (torch.compiler.is_compiling() or isinstance(t, torch._subclasses.FakeTensor)
            or t.device.type == "meta")


def _check_params(x: Tensor, axis: Optional[int], name: str, value, dtype: torch.dtype) -> Tensor:
    """A per-tensor (0-d or one element) or per-channel (len == x.shape[axis]) parameter tensor."""
    if isinstance(value, Tensor):
        t = value
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        t = torch.tensor(value, device=x.device)
    else:
        raise TypeError(f"{name} must be a tensor or a number; got {type(value).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x.device} like x; got {t.device}")
    want = 1 if axis is None else x.shape[axis]
    if axis is None and t.numel() != 1:
        raise ValueError(f"{name} must have one element for per-tensor quantization; got shape {tuple(t.shape)}")
    if axis is not None and (t.dim() > 1 or t.numel() != want):
        raise ValueError(f"{name} must be 1-D with {want} elements (x.shape[{axis}]); got shape {tuple(t.shape)}")
    if dtype == torch.float32:
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor; got {t.dtype}")
        if t.dtype != torch.float32:
            t = t.to(torch.float32)
        # The native binding checks CPU values again (under the name "scale"); this names the user's argument.
        if not _is_traced(t):
            if not bool(torch.all(torch.isfinite(t) & (t > 0))):
                raise ValueError(f"{name} must be finite and > 0; got {t.detach().cpu().tolist()}")
    else:
        if t.is_floating_point():
            if not _is_traced(t) and not bool(torch.all(t == torch.round(t))):
                raise ValueError(f"{name} must hold integer values; got {t.detach().cpu().tolist()}")
        t = t.to(torch.int32)
    return t


def _zero_points(x: Tensor, axis: Optional[int], zero_point) -> Tensor:
    if zero_point is None:
        return torch.zeros(_param_count(x, axis) if axis is not None else (), dtype=torch.int32, device=x.device)
    return _check_params(x, axis, "zero_point", zero_point, torch.int32)


def _param_count(x: Tensor, axis: Optional[int]) -> int:
    return 1 if axis is None else x.shape[axis]


def _qrange(bits: int, quant_min: Optional[int], quant_max: Optional[int], signed: bool = True) -> Tuple[int, int]:
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    return (lo if quant_min is None else int(quant_min)), (hi if quant_max is None else int(quant_max))


# --------------------------------------------------------------------------------------------------------
# public ops
# --------------------------------------------------------------------------------------------------------


def fake_quant_abs_max(x: Tensor, bits: int = 8, round_mode: str = "half_away_from_zero", grad: str = "ste",
                       return_scale: bool = False):
    """Per-tensor quantize-dequantize with ``scale = max|x|`` (PaddleSlim ``abs_max``).

    ``q = round(bin * clip(x, -s, s) / s)``, ``y = q * s / bin`` with ``bin = 2**(bits-1) - 1``. The max-abs
    reduction runs natively in the same call. A NaN or Inf in x makes the scale non-finite and the output
    NaN. Returns ``y`` (and the 0-d scale with ``return_scale=True``).

    Example::

        >>> y, s = fake_quant_abs_max(torch.tensor([0.5, -1.0]), bits=8, return_scale=True)
    """
    x = _check_input(x)
    y, scale = _fq.fake_quant_abs_max(x, None, _check_bits(bits), _check_round(round_mode), _check_grad(grad))
    return (y, scale) if return_scale else y


def fake_quant_channel_wise_abs_max(x: Tensor, axis: int, bits: int = 8, round_mode: str = "half_away_from_zero",
                                    grad: str = "ste", return_scale: bool = False):
    """Per-channel quantize-dequantize along ``axis`` with ``scale[c] = max|x_c|`` (``channel_wise_abs_max``).

    ``axis=0`` for conv/Linear weights in PyTorch's (out, in, ...) layout. Example::

        >>> w = fake_quant_channel_wise_abs_max(torch.randn(64, 32, 3, 3), axis=0)
    """
    x = _check_input(x)
    if axis is None:
        raise ValueError("axis must be an int for channel-wise quantization; use fake_quant_abs_max per tensor")
    axis = _check_axis(x, axis)
    y, scale = _fq.fake_quant_abs_max(x, axis, _check_bits(bits), _check_round(round_mode), _check_grad(grad))
    return (y, scale) if return_scale else y


def fake_quant_symmetric(x: Tensor, scale: ScaleLike, bits: int = 8, axis: Optional[int] = None,
                         round_mode: str = "half_away_from_zero", grad: str = "ste",
                         grad_factor: float = 1.0) -> Tensor:
    """Quantize-dequantize with a given scale (PaddleSlim's symmetric form), per tensor or along ``axis``.

    If ``scale`` requires grad it receives the LSQ gradient (times ``grad_factor``; LSQ's paper uses
    ``1/sqrt(numel * qmax)``). Example::

        >>> s = torch.tensor(2.0, requires_grad=True)
        >>> fake_quant_symmetric(torch.randn(10), s, grad="clipped").sum().backward()
    """
    x = _check_input(x)
    axis = _check_axis(x, axis)
    scale_t = _check_params(x, axis, "scale", scale, torch.float32)
    return _fq.fake_quant_symmetric(x, scale_t, axis, _check_bits(bits), _check_round(round_mode),
                                    _check_grad(grad), float(grad_factor))


def fake_quant_moving_average_abs_max(x: Tensor, state: Tensor, accum: Tensor, scale: Tensor, bits: int = 8,
                                      moving_rate: float = 0.9, training: bool = True,
                                      round_mode: str = "half_away_from_zero", grad: str = "ste") -> Tensor:
    """PaddleSlim's ``moving_average_abs_max``: in training, updates the buffers in place
    (``state = r*state + 1; accum = r*accum + max|x|; scale = accum/state``) then quantizes with ``scale``;
    in eval the stored scale is used unchanged. PaddleSlim initialises scale=0.001, state=1, accum=1.

    Example::

        >>> state, accum, scale = torch.ones(1), torch.ones(1), torch.full((1,), 0.001)
        >>> y = fake_quant_moving_average_abs_max(torch.randn(8), state, accum, scale)
    """
    x = _check_input(x)
    for name, buf in (("state", state), ("accum", accum), ("scale", scale)):
        if not isinstance(buf, Tensor) or buf.dtype != torch.float32 or buf.numel() != 1:
            raise TypeError(f"{name} must be a float32 tensor with one element; got "
                            f"{getattr(buf, 'dtype', type(buf).__name__)} of shape {tuple(getattr(buf, 'shape', ()))}")
        if buf.device != x.device:
            raise ValueError(f"{name} must be on {x.device} like x; got {buf.device}")
    if not isinstance(moving_rate, numbers.Real) or not 0.0 <= float(moving_rate) < 1.0:
        raise ValueError(f"moving_rate must be in [0, 1); got {moving_rate!r}")
    bits_i, rm, gm = _check_bits(bits), _check_round(round_mode), _check_grad(grad)
    if training:
        moving_average_abs_max_update_op(x, state, accum, scale, float(moving_rate))
    else:
        _check_params(x, None, "scale", scale, torch.float32)
    return _fq.fake_quant_symmetric(x, scale.detach(), None, bits_i, rm, gm, 1.0)


def fake_quant_affine(x: Tensor, scale: ScaleLike, zero_point: Union[Tensor, int], quant_min: int, quant_max: int,
                      axis: Optional[int] = None, round_mode: str = "half_to_even", grad: str = "clipped",
                      grad_factor: float = 1.0) -> Tensor:
    """torch's affine quantize-dequantize, a drop-in for ``torch.fake_quantize_per_tensor_affine`` /
    ``torch.fake_quantize_per_channel_affine`` (same forward and, with ``grad="clipped"``, same backward).

    ``y = (clamp(round(x / s) + zp, quant_min, quant_max) - zp) * s``. Differences from torch: NaN stays NaN
    (torch returns an arbitrary level), and values beyond the int64 range saturate (torch's per-channel
    kernel wraps). A ``scale`` that requires grad gets the LSQ gradient. Example::

        >>> y = fake_quant_affine(torch.randn(4, 8), torch.tensor(0.1), torch.tensor(0), -128, 127)
    """
    x = _check_input(x)
    axis = _check_axis(x, axis)
    scale_t = _check_params(x, axis, "scale", scale, torch.float32)
    zp_t = _check_params(x, axis, "zero_point", zero_point, torch.int32)
    qmin, qmax = int(quant_min), int(quant_max)
    if qmin >= qmax:
        raise ValueError(f"quant_min must be < quant_max; got [{qmin}, {qmax}]")
    if not (-(2 ** 31) <= qmin and qmax <= 2 ** 31 - 1):
        raise ValueError(f"quant_min/quant_max must fit in int32; got [{qmin}, {qmax}]")
    return _fq.fake_quant_affine(x, scale_t, zp_t, axis, qmin, qmax, _check_round(round_mode), _check_grad(grad),
                                 float(grad_factor))


def pact(x: Tensor, alpha: Tensor, bits: int = 8, round_mode: str = "half_away_from_zero") -> Tensor:
    """PACT fused with fake quantization: ``y = fakequant(clip(x, -alpha, alpha), scale=alpha)``.

    Gradients: ``dx = g * 1[|x| < alpha]``; ``dalpha = sum(g * (1[x > alpha] - 1[x < -alpha]))`` plus the
    quantization term ``sum(g * (q - u) / bin)`` over the inside (straight-through rounding). Example::

        >>> alpha = torch.tensor(6.0, requires_grad=True)
        >>> pact(torch.randn(32) * 10, alpha).sum().backward()
    """
    x = _check_input(x)
    if not isinstance(alpha, Tensor) or alpha.numel() != 1:
        raise TypeError("alpha must be a one-element tensor (a learnable parameter)")
    alpha_t = _check_params(x, None, "alpha", alpha, torch.float32)
    return _fq.fake_quant_symmetric(x, alpha_t, None, _check_bits(bits), _check_round(round_mode),
                                    GRAD_MODES["clipped_strict"], 1.0)


def quantize(x: Tensor, scale: ScaleLike, zero_point: Union[Tensor, int, None] = None, axis: Optional[int] = None,
             dtype: torch.dtype = torch.int8, quant_min: Optional[int] = None, quant_max: Optional[int] = None,
             round_mode: str = "half_to_even") -> Tensor:
    """Real quantization to int8/int16: ``q = clamp(round(x / s) + zp, quant_min, quant_max)``.

    Defaults: zero_point 0, the full range of ``dtype``. NaN maps to the zero point. Example::

        >>> q = quantize(torch.randn(8, 4), torch.rand(8) + 0.1, axis=0)
    """
    x = _check_input(x)
    if dtype not in (torch.int8, torch.int16):
        raise TypeError(f"dtype must be torch.int8 or torch.int16; got {dtype}")
    bits = 8 if dtype == torch.int8 else 16
    axis = _check_axis(x, axis)
    scale_t = _check_params(x, axis, "scale", scale, torch.float32)
    zp_t = _zero_points(x, axis, zero_point)
    qmin, qmax = _qrange(bits, quant_min, quant_max)
    lo, hi = _qrange(bits, None, None)
    if not lo <= qmin < qmax <= hi:
        raise ValueError(f"quant_min/quant_max must satisfy {lo} <= quant_min < quant_max <= {hi} for {dtype}; "
                         f"got [{qmin}, {qmax}]")
    return quantize_op(x, scale_t, zp_t, axis, qmin, qmax, bits, _check_round(round_mode))


def dequantize(q: Tensor, scale: ScaleLike, zero_point: Union[Tensor, int, None] = None,
               axis: Optional[int] = None) -> Tensor:
    """``y = (q - zp) * s`` for int8/int16 ``q``; differentiable in ``scale``. Example::

        >>> y = dequantize(torch.tensor([1, -2], dtype=torch.int8), 0.5)
    """
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a torch.Tensor; got {type(q).__name__}")
    if q.dtype not in (torch.int8, torch.int16):
        raise TypeError(f"q must be int8 or int16; got {q.dtype}")
    axis = _check_axis(q, axis)
    scale_t = _check_params(q, axis, "scale", scale, torch.float32)
    zp_t = _zero_points(q, axis, zero_point)
    return dequantize_op(q, scale_t, zp_t, axis)


# --------------------------------------------------------------------------------------------------------
# int8 GEMM / convolution (CPU; int8_matmul also on CUDA). The modules in pyslim.quant.nn wrap these.
# --------------------------------------------------------------------------------------------------------

from pyslim.ops._int8 import ACTIVATIONS as _ACTIVATIONS  # noqa: E402
from pyslim.ops._int8 import OUT_DTYPES as _OUT_DTYPES  # noqa: E402
from pyslim.ops._int8 import conv2d_int8_op, gemm_int8_op, int8_matmul_op, linear_int8_dynamic_op  # noqa: E402
from pyslim.ops._int8 import pack_int8_weight_op  # noqa: E402


def pack_int8_weight(weight: Tensor, groups: int = 1) -> Tuple[Tensor, Tensor]:
    """Packs int8 weights (N, K) for the active CPU path: returns (packed uint8 buffer, int32 column sums).

    The buffer is only valid for the path that packed it (checked at every use). Example::

        >>> packed, col_sums = pack_int8_weight(torch.randint(-127, 128, (32, 64), dtype=torch.int8))
    """
    if not isinstance(weight, Tensor) or weight.dtype != torch.int8 or weight.dim() != 2:
        raise TypeError(f"weight must be a 2-D int8 tensor (N, K); got {getattr(weight, 'dtype', type(weight))}"
                        f" of shape {tuple(getattr(weight, 'shape', ()))}")
    return pack_int8_weight_op(weight, int(groups))


def gemm_int8(a: Tensor, packed: Tensor, out_features: int, out_dtype: torch.dtype = torch.int32,
              a_scale: float = 1.0, a_zero_point: int = 0, col_sums: Optional[Tensor] = None,
              weight_scale: Optional[Tensor] = None, bias: Optional[Tensor] = None, activation: Optional[str] = None,
              out_scale: float = 1.0, out_zero_point: int = 0) -> Tensor:
    """``a (.., K) int8/uint8 x W^T`` on the native kernels. ``out_dtype=torch.int32`` gives the exact
    accumulator; float32 applies ``(acc - a_zp * col_sums) * a_scale * weight_scale + bias`` (+ ReLU/ReLU6);
    int8/uint8 requantizes that with ``out_scale``/``out_zero_point`` (round half to even, saturating)."""
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {list(_OUT_DTYPES)}; got {out_dtype}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu', 'relu6' or 'gelu'; got {activation!r}")
    return gemm_int8_op(a, float(a_scale), int(a_zero_point), packed, col_sums, weight_scale, bias, int(out_features),
                        _OUT_DTYPES[out_dtype], _ACTIVATIONS[activation], float(out_scale), int(out_zero_point))


def int8_matmul(a: Tensor, w: Tensor) -> Tensor:
    """``a @ w.T`` in exact int32 for ``a`` (M, K) int8/uint8 and ``w`` (N, K) int8 (a Linear weight's layout), on
    the CPU or on a GPU (the CUDA kernel; needs a ``PYSLIM_ENABLE_CUDA=ON`` build). On the CPU the weight is
    packed at every call: to reuse it, pack once with ``pack_int8_weight`` and call ``gemm_int8``. Example::

        >>> a = torch.randint(-128, 128, (4, 64), dtype=torch.int8)
        >>> w = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
        >>> bool((int8_matmul(a, w) == a.int() @ w.int().T).all())
        True
    """
    if not isinstance(a, Tensor) or a.dtype not in (torch.int8, torch.uint8) or a.dim() != 2:
        raise TypeError(f"a must be a 2-D int8/uint8 tensor (M, K); got {getattr(a, 'dtype', type(a).__name__)} of "
                        f"shape {tuple(getattr(a, 'shape', ()))}")
    if not isinstance(w, Tensor) or w.dtype != torch.int8 or w.dim() != 2:
        raise TypeError(f"w must be a 2-D int8 tensor (N, K); got {getattr(w, 'dtype', type(w).__name__)} of "
                        f"shape {tuple(getattr(w, 'shape', ()))}")
    if w.shape[1] != a.shape[1]:
        raise ValueError(f"w must be (N, K) with a's K = {a.shape[1]}; got shape {tuple(w.shape)}")
    if w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"w must have at least one row and one column; got shape {tuple(w.shape)}")
    if a.device != w.device or a.device.type not in ("cpu", "cuda"):
        raise ValueError(f"a and w must be on one device, the CPU or a GPU; got {a.device} and {w.device}")
    return int8_matmul_op(a.contiguous(), w.contiguous())


def linear_int8_dynamic(x: Tensor, packed: Tensor, col_sums: Tensor, weight_scale: Tensor, out_features: int,
                        bias: Optional[Tensor] = None, per_row: bool = True, symmetric: bool = False,
                        activation: Optional[str] = None) -> Tensor:
    """float32 ``x (.., K)`` quantized to int8 inside the native call (per row or per tensor, symmetric or
    asymmetric), multiplied by the packed int8 weights, float epilogue. See ``pyslim.quant.nn.Int8Linear``."""
    x = _check_input(x)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu', 'relu6' or 'gelu'; got {activation!r}")
    return linear_int8_dynamic_op(x, packed, col_sums, weight_scale, bias, int(out_features), bool(per_row),
                                  bool(symmetric), _ACTIVATIONS[activation])


def conv2d_int8(x: Tensor, x_scale: float, x_zero_point: int, weight_int8: Tensor, weight_scale: Tensor,
                bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1,
                activation: Optional[str] = None) -> Tensor:
    """int8 2-D convolution on NHWC activations: ``x`` (N, H, W, C) int8/uint8 with ``(x_scale, x_zero_point)``,
    ``weight_int8`` in torch's (Cout, Cin/groups, KH, KW) layout with per-output-channel ``weight_scale``.
    Returns float32 NHWC ``act(conv(dequant(x), dequant(w)) + bias)``; padding reads as the zero point.
    Depthwise convolutions (groups == Cin == Cout) use the dedicated kernel. ``pyslim.quant.nn.Int8Conv2d``
    wraps this for float NCHW inputs. Example::

        >>> x = torch.randint(-128, 128, (1, 8, 8, 16), dtype=torch.int8)
        >>> w = torch.randint(-127, 128, (32, 16, 3, 3), dtype=torch.int8)
        >>> y = conv2d_int8(x, 0.05, 0, w, torch.full((32,), 0.01), padding=1)
    """
    if not isinstance(x, Tensor) or x.dtype not in (torch.int8, torch.uint8) or x.dim() != 4:
        raise TypeError(f"x must be a 4-D NHWC int8/uint8 tensor; got {getattr(x, 'dtype', type(x).__name__)}")
    if not isinstance(weight_int8, Tensor) or weight_int8.dtype != torch.int8 or weight_int8.dim() != 4:
        raise TypeError("weight_int8 must be a 4-D int8 tensor (Cout, Cin/groups, KH, KW)")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu', 'relu6' or 'gelu'; got {activation!r}")
    pair = (lambda v: [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])])
    cout, cin_g, kh, kw = weight_int8.shape
    cin = x.shape[3]
    if cin_g * groups != cin:
        raise ValueError(f"weight_int8 expects {cin_g * groups} input channels with groups={groups}; x has {cin}")
    col_sums = weight_int8.sum(dim=(1, 2, 3), dtype=torch.int32).contiguous()
    if groups == cin == cout and groups > 1:
        packed, dw = None, weight_int8[:, 0].permute(1, 2, 0).contiguous()
    else:
        packed, _ = pack_int8_weight_op(weight_int8.permute(0, 2, 3, 1).reshape(cout, -1).contiguous(), int(groups))
        dw = None
    return conv2d_int8_op(x, float(x_scale), int(x_zero_point), packed, dw, col_sums,
                          weight_scale.to(torch.float32).contiguous(), bias, int(cout), int(kh), int(kw),
                          pair(stride), pair(padding), pair(dilation), int(groups), _ACTIVATIONS[activation])


__all__ += ["pack_int8_weight", "gemm_int8", "int8_matmul", "linear_int8_dynamic", "conv2d_int8"]


# --------------------------------------------------------------------------------------------------------
# pruning criteria
# --------------------------------------------------------------------------------------------------------

from pyslim.ops._fpgm import fpgm_scores_op as _fpgm_scores_op  # noqa: E402


def fpgm_scores(weight: Tensor) -> Tensor:
    """FPGM scores ``score_i = sum_j ||w_i - w_j||_2`` (float64, shape (C,)) of the C filters of ``weight``.

    ``weight`` may have any shape with ``dim() >= 1``; it is read as ``(C, -1)`` with ``C = weight.shape[0]``
    (conv (Cout, Cin, KH, KW), Linear (out, in)). float32 runs the native kernel (relative error <= 1e-6 per
    score); float16/bfloat16 are widened to float32 first (exactly). For float64 weights use
    ``pyslim.prune.criteria.fpgm_scores`` (it keeps float64 inputs in float64). Not differentiable. Example::

        >>> fpgm_scores(torch.tensor([[0.0], [1.0], [3.0]]))
        tensor([4., 3., 5.], dtype=torch.float64)
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor; got {type(weight).__name__}")
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"weight must be float32 (or float16/bfloat16, widened exactly); got {weight.dtype}")
    if weight.dim() < 1:
        raise ValueError(f"weight must have at least 1 dimension (channels, ...); got shape {tuple(weight.shape)}")
    if weight.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"weight must be on the CPU or a CUDA device; got {weight.device}")
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], math.prod(weight.shape[1:]))
    return _fpgm_scores_op(w)


__all__ += ["fpgm_scores"]
