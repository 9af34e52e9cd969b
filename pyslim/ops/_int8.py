"""torch.library custom ops over the native int8 GEMM / convolution drivers (CPU; int8_matmul also on CUDA)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from pyslim import _C
from pyslim._native import capsule, get_num_threads, stream_of

# Output codes of gemm_int8.
OUT_DTYPES = {torch.int32: 0, torch.float32: 1, torch.int8: 2, torch.uint8: 3}
_CODE_DTYPE = {v: k for k, v in OUT_DTYPES.items()}
ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "relu6": 2, "gelu": 3}


def _opt(t: Optional[Tensor]):
    return None if t is None else capsule(t)


_function_mode_enabled = getattr(torch._C, "_is_torch_function_mode_enabled", lambda: True)


def direct_call_ok(*tensors: Optional[Tensor]) -> bool:
    """True when an int8 op may run its implementation directly instead of through the custom-op dispatcher.

    The dispatcher costs ~15 us per call, as much as a small convolution's arithmetic. Skipping it changes
    nothing observable when no one could see the difference: not while torch.compile / export traces, not
    under a torch function or dispatch mode (FakeTensorMode, FlopCounterMode, ...), and only for plain CPU
    tensors that do not require grad (these ops have no autograd formula).
    """
    if torch.compiler.is_compiling() or _function_mode_enabled() or _dispatch_mode() is not None:
        return False
    for t in tensors:
        if t is not None and (type(t) is not Tensor or t.requires_grad):
            return False
    return True


# The innermost TorchDispatchMode, or None (imported once: an import statement inside this per-call check cost
# 0.55 us, more than half of direct_call_ok).
from torch.utils._python_dispatch import _get_current_dispatch_mode as _dispatch_mode  # noqa: E402


@torch.library.custom_op("pyslim::pack_int8_weight", mutates_args=())
def pack_int8_weight_op(weight: Tensor, groups: int) -> Tuple[Tensor, Tensor]:
    n, k = weight.shape
    packed = torch.empty(_C.gemm_packed_nbytes(n, k, groups), dtype=torch.uint8)
    col_sums = torch.empty(n, dtype=torch.int32)
    _C.pack_int8_weight(capsule(weight.contiguous()), capsule(packed), capsule(col_sums), groups)
    return packed, col_sums


@pack_int8_weight_op.register_fake
def _(weight, groups):
    n, k = weight.shape
    return (torch.empty(_C.gemm_packed_nbytes(n, k, groups), dtype=torch.uint8, device=weight.device),
            weight.new_empty(n, dtype=torch.int32))


def _linear_int8_dynamic(x: Tensor, packed: Tensor, col_sums: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                         out_features: int, per_row: bool, symmetric: bool, activation: int) -> Tensor:
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    out = torch.empty(x2.shape[0], out_features, dtype=torch.float32)
    _C.linear_int8_dynamic(capsule(x2), capsule(packed), capsule(col_sums), capsule(weight_scale), _opt(bias),
                           capsule(out), per_row, symmetric, activation, get_num_threads())
    return out.reshape(*x.shape[:-1], out_features)


@torch.library.custom_op("pyslim::linear_int8_dynamic", mutates_args=())
def linear_int8_dynamic_op(x: Tensor, packed: Tensor, col_sums: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                           out_features: int, per_row: bool, symmetric: bool, activation: int) -> Tensor:
    return _linear_int8_dynamic(x, packed, col_sums, weight_scale, bias, out_features, per_row, symmetric,
                                activation)


def linear_int8_dynamic(x: Tensor, packed: Tensor, col_sums: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                        out_features: int, per_row: bool, symmetric: bool, activation: int) -> Tensor:
    """linear_int8_dynamic_op, called directly where direct_call_ok allows (same result)."""
    if direct_call_ok(x, packed, col_sums, weight_scale, bias):
        return _linear_int8_dynamic(x, packed, col_sums, weight_scale, bias, out_features, per_row, symmetric,
                                    activation)
    return linear_int8_dynamic_op(x, packed, col_sums, weight_scale, bias, out_features, per_row, symmetric,
                                  activation)


@linear_int8_dynamic_op.register_fake
def _(x, packed, col_sums, weight_scale, bias, out_features, per_row, symmetric, activation):
    return x.new_empty(*x.shape[:-1], out_features)


def _gemm_native(native, a: Tensor, a_scale: float, a_zero_point: int, capsules: tuple, out_features: int,
                 out_dtype: int, activation: int, out_scale: float, out_zero_point: int) -> Tensor:
    """Allocates the output and runs `native` (_C.gemm_int8 or _C.gemm_int8_float_input) on a (.., K) as a
    contiguous 2-D matrix, with the constant operands (packed, col_sums, weight_scale, bias) as capsules."""
    k = a.shape[-1]
    a2 = a.reshape(-1, k)
    if not a2.is_contiguous():
        a2 = a2.contiguous()
    out = torch.empty(a2.shape[0], out_features, dtype=_CODE_DTYPE[out_dtype])
    native(capsule(a2), a_scale, a_zero_point, *capsules, capsule(out), activation, out_scale, out_zero_point,
           get_num_threads())
    return out.reshape(*a.shape[:-1], out_features)


@torch.library.custom_op("pyslim::gemm_int8", mutates_args=())
def gemm_int8_op(a: Tensor, a_scale: float, a_zero_point: int, packed: Tensor, col_sums: Optional[Tensor],
                 weight_scale: Optional[Tensor], bias: Optional[Tensor], out_features: int, out_dtype: int,
                 activation: int, out_scale: float, out_zero_point: int) -> Tensor:
    return _gemm_native(_C.gemm_int8, a, a_scale, a_zero_point,
                        (capsule(packed), _opt(col_sums), _opt(weight_scale), _opt(bias)), out_features, out_dtype,
                        activation, out_scale, out_zero_point)


@gemm_int8_op.register_fake
def _(a, a_scale, a_zero_point, packed, col_sums, weight_scale, bias, out_features, out_dtype, activation, out_scale,
      out_zero_point):
    return a.new_empty(*a.shape[:-1], out_features, dtype=_CODE_DTYPE[out_dtype])


@torch.library.custom_op("pyslim::linear_int8_static", mutates_args=())
def linear_int8_static_op(x: Tensor, x_scale: float, x_zero_point: int, packed: Tensor, col_sums: Tensor,
                          weight_scale: Tensor, bias: Optional[Tensor], out_features: int, out_dtype: int,
                          activation: int, out_scale: float, out_zero_point: int) -> Tensor:
    """float32 x (.., K) quantized to int8 with (x_scale, x_zero_point) inside the native call (the quantize op's
    values), then gemm_int8_op's product and epilogue: one call instead of quantize + gemm_int8."""
    return _gemm_native(_C.gemm_int8_float_input, x, x_scale, x_zero_point,
                        (capsule(packed), capsule(col_sums), capsule(weight_scale), _opt(bias)), out_features,
                        out_dtype, activation, out_scale, out_zero_point)


@linear_int8_static_op.register_fake
def _(x, x_scale, x_zero_point, packed, col_sums, weight_scale, bias, out_features, out_dtype, activation, out_scale,
      out_zero_point):
    return x.new_empty(*x.shape[:-1], out_features, dtype=_CODE_DTYPE[out_dtype])


def gemm_int8_cached(a: Tensor, a_scale: float, a_zero_point: int, capsules: tuple, out_features: int,
                     out_dtype: int, activation: int, out_scale: float, out_zero_point: int) -> Tensor:
    """The direct native call of gemm_int8_op (int8 / uint8 a) or linear_int8_static_op (float32 a) with the
    constant operands (packed, col_sums, weight_scale, bias) as ready capsules (Int8Linear._constant_capsules);
    only where direct_call_ok(a)."""
    native = _C.gemm_int8_float_input if a.dtype == torch.float32 else _C.gemm_int8
    return _gemm_native(native, a, a_scale, a_zero_point, capsules, out_features, out_dtype, activation, out_scale,
                        out_zero_point)


@torch.library.custom_op("pyslim::int8_matmul", mutates_args=())
def int8_matmul_op(a: Tensor, w: Tensor) -> Tensor:
    """a (M, K) int8/uint8 times w (N, K) int8 transposed, exact int32 (M, N): the CUDA kernel for CUDA tensors,
    the CPU path's packed GEMM otherwise. Both contiguous, on one device."""
    n = w.shape[0]
    if a.device.type == "cuda":
        out = torch.empty(a.shape[0], n, dtype=torch.int32, device=a.device)
        with torch.cuda.device(a.device):
            _C.int8_matmul_cuda(capsule(a), capsule(w), capsule(out), stream_of(a))
        return out
    packed, _ = pack_int8_weight_op(w, 1)
    return gemm_int8_op(a, 1.0, 0, packed, None, None, None, n, OUT_DTYPES[torch.int32], 0, 1.0, 0)


@int8_matmul_op.register_fake
def _(a, w):
    return a.new_empty(a.shape[0], w.shape[0], dtype=torch.int32)


def _conv_out_hw(h: int, w: int, kernel: Tuple[int, int], stride: List[int], padding: List[int],
                 dilation: List[int]) -> Tuple[int, int]:
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def _conv2d(native, x: Tensor, x_scale: float, x_zero_point: int, packed: Optional[Tensor],
            dw_weight: Optional[Tensor], col_sums: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
            out_channels: int, kernel_h: int, kernel_w: int, stride: List[int], padding: List[int],
            dilation: List[int], groups: int, activation: int, out_dtype: int, out_scale: float,
            out_zero_point: int) -> Tensor:
    capsules = (_opt(packed), _opt(dw_weight), capsule(col_sums), capsule(weight_scale), _opt(bias))
    return _conv2d_native(native, x.contiguous(), x_scale, x_zero_point, capsules, out_channels, kernel_h, kernel_w,
                          list(stride), list(padding), list(dilation), groups, activation, out_dtype, out_scale,
                          out_zero_point)


def _conv2d_native(native, x: Tensor, x_scale: float, x_zero_point: int, capsules: tuple, out_channels: int,
                   kernel_h: int, kernel_w: int, stride, padding, dilation, groups: int, activation: int,
                   out_dtype: int, out_scale: float, out_zero_point: int) -> Tensor:
    """Allocates the NHWC output and runs `native` (_C.conv2d_int8 or _C.conv2d_int8_float_input) on contiguous
    x, with the constant operands (packed, dw_weight, col_sums, weight_scale, bias) as DLPack capsules."""
    n, h, w, _ = x.shape
    oh, ow = _conv_out_hw(h, w, (kernel_h, kernel_w), stride, padding, dilation)
    out = torch.empty(n, max(oh, 0), max(ow, 0), out_channels, dtype=_CODE_DTYPE[out_dtype])
    native(capsule(x), x_scale, x_zero_point, *capsules, capsule(out), out_channels, kernel_h, kernel_w, stride,
           padding, dilation, groups, activation, out_scale, out_zero_point, get_num_threads())
    return out


def _conv_fake(x, kernel_h, kernel_w, stride, padding, dilation, out_channels, out_dtype):
    n, h, w, _ = x.shape
    oh, ow = _conv_out_hw(h, w, (kernel_h, kernel_w), stride, padding, dilation)
    return x.new_empty(n, oh, ow, out_channels, dtype=_CODE_DTYPE[out_dtype])


@torch.library.custom_op("pyslim::conv2d_int8", mutates_args=())
def conv2d_int8_op(x: Tensor, x_scale: float, x_zero_point: int, packed: Optional[Tensor],
                   dw_weight: Optional[Tensor], col_sums: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                   out_channels: int, kernel_h: int, kernel_w: int, stride: List[int], padding: List[int],
                   dilation: List[int], groups: int, activation: int, out_dtype: int = 1, out_scale: float = 1.0,
                   out_zero_point: int = 0) -> Tensor:
    """x: quantized NHWC (int8 / uint8); returns NHWC float32 (out_dtype 1), or int8 / uint8 (2 / 3) requantized
    with (out_scale, out_zero_point): the quantize op's result on the float output."""
    return _conv2d(_C.conv2d_int8, x, x_scale, x_zero_point, packed, dw_weight, col_sums, weight_scale, bias,
                   out_channels, kernel_h, kernel_w, stride, padding, dilation, groups, activation, out_dtype,
                   out_scale, out_zero_point)


@conv2d_int8_op.register_fake
def _(x, x_scale, x_zero_point, packed, dw_weight, col_sums, weight_scale, bias, out_channels, kernel_h, kernel_w,
      stride, padding, dilation, groups, activation, out_dtype=1, out_scale=1.0, out_zero_point=0):
    return _conv_fake(x, kernel_h, kernel_w, stride, padding, dilation, out_channels, out_dtype)


@torch.library.custom_op("pyslim::conv2d_int8_float_input", mutates_args=())
def conv2d_int8_float_input_op(x: Tensor, x_scale: float, x_zero_point: int, packed: Optional[Tensor],
                               dw_weight: Optional[Tensor], col_sums: Tensor, weight_scale: Tensor,
                               bias: Optional[Tensor], out_channels: int, kernel_h: int, kernel_w: int,
                               stride: List[int], padding: List[int], dilation: List[int], groups: int,
                               activation: int, out_dtype: int = 1, out_scale: float = 1.0,
                               out_zero_point: int = 0) -> Tensor:
    """As conv2d_int8_op, with x float32 NHWC, quantized to int8 (x_scale, x_zero_point; half-to-even, the
    quantize op's result) inside the same native call."""
    return _conv2d(_C.conv2d_int8_float_input, x, x_scale, x_zero_point, packed, dw_weight, col_sums, weight_scale,
                   bias, out_channels, kernel_h, kernel_w, stride, padding, dilation, groups, activation, out_dtype,
                   out_scale, out_zero_point)


@conv2d_int8_float_input_op.register_fake
def _(x, x_scale, x_zero_point, packed, dw_weight, col_sums, weight_scale, bias, out_channels, kernel_h, kernel_w,
      stride, padding, dilation, groups, activation, out_dtype=1, out_scale=1.0, out_zero_point=0):
    return _conv_fake(x, kernel_h, kernel_w, stride, padding, dilation, out_channels, out_dtype)


def conv2d_int8_direct(x: Tensor, x_scale: float, x_zero_point: int, packed: Optional[Tensor],
                       dw_weight: Optional[Tensor], col_sums: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                       out_channels: int, kernel_h: int, kernel_w: int, stride: List[int], padding: List[int],
                       dilation: List[int], groups: int, activation: int, out_dtype: int = 1,
                       out_scale: float = 1.0, out_zero_point: int = 0) -> Tensor:
    """conv2d_int8_float_input_op (float32 x) or conv2d_int8_op (int8 / uint8 x), called directly where
    direct_call_ok allows (same result)."""
    args = (x, x_scale, x_zero_point, packed, dw_weight, col_sums, weight_scale, bias, out_channels, kernel_h,
            kernel_w, stride, padding, dilation, groups, activation, out_dtype, out_scale, out_zero_point)
    is_float = x.dtype == torch.float32
    if direct_call_ok(x, packed, dw_weight, col_sums, weight_scale, bias):
        return _conv2d(_C.conv2d_int8_float_input if is_float else _C.conv2d_int8, *args)
    return (conv2d_int8_float_input_op if is_float else conv2d_int8_op)(*args)


def conv2d_int8_cached(x: Tensor, x_scale: float, x_zero_point: int, capsules: tuple, out_channels: int,
                       kernel_h: int, kernel_w: int, stride, padding, dilation, groups: int, activation: int,
                       out_dtype: int, out_scale: float, out_zero_point: int) -> Tensor:
    """The direct native call of conv2d_int8_direct with the constant operands given as ready DLPack capsules
    (packed, dw_weight, col_sums, weight_scale, bias; see Int8Conv2d._constant_capsules). x must be contiguous
    NHWC and direct_call_ok(x) true."""
    native = _C.conv2d_int8_float_input if x.dtype == torch.float32 else _C.conv2d_int8
    return _conv2d_native(native, x, x_scale, x_zero_point, capsules, out_channels, kernel_h, kernel_w, stride,
                          padding, dilation, groups, activation, out_dtype, out_scale, out_zero_point)


def conv2d_int8_float_input(x: Tensor, *args) -> Tensor:
    """conv2d_int8_float_input_op, called directly where direct_call_ok allows (same result)."""
    return conv2d_int8_direct(x, *args)
