"""torch.library custom ops over the native fake-quantization kernels.

Each op has a schema, a real (native) implementation, a fake implementation for tracing and
``torch.compile``, and, where a gradient is defined, an autograd formula. The public functions in
``pyslim.ops`` validate their arguments and call these ops; ``pyslim.ops.reference`` holds a pure-torch
reference of each.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from pyslim import _C
from pyslim._native import capsule, get_num_threads, stream_of

# Integer codes shared with the native core (kernels.h).
ROUND_MODES = {"half_to_even": 0, "half_away_from_zero": 1}
GRAD_MODES = {"ste": 0, "clipped": 1, "clipped_strict": 2}


def _channels(x: Tensor, axis: Optional[int]) -> int:
    return 1 if axis is None else x.shape[axis]


def _param_shape(x: Tensor, axis: Optional[int]) -> Tuple[int, ...]:
    return () if axis is None else (x.shape[axis],)


def _broadcast_shape(x: Tensor, axis: Optional[int]) -> Tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along `axis` of x."""
    if axis is None:
        return ()
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return tuple(shape)


def _empty(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    # Always contiguous: the kernels write row-major outputs whatever the input's memory format.
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)


# --------------------------------------------------------------------------------------------------------
# abs_max / channel_wise_abs_max: scale reduced from x (not differentiable), x quantized with it.
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("pyslim::fake_quant_abs_max", mutates_args=())
def fake_quant_abs_max_op(
    x: Tensor, axis: Optional[int], bits: int, round_mode: int, grad_mask: int
) -> Tuple[Tensor, Tensor]:
    x = x.contiguous()
    y = _empty(x)
    scale = torch.empty(_param_shape(x, axis), dtype=torch.float32, device=x.device)
    _C.fake_quant_abs_max(capsule(x), capsule(y), capsule(scale), axis, bits, round_mode, get_num_threads(),
                          stream_of(x))
    return y, scale


@fake_quant_abs_max_op.register_fake
def _(x, axis, bits, round_mode, grad_mask):
    return _empty(x), x.new_empty(_param_shape(x, axis))


def _abs_max_setup(ctx, inputs, output):
    x, axis, bits, round_mode, grad_mask = inputs
    ctx.axis, ctx.bits, ctx.round_mode, ctx.grad_mask = axis, bits, round_mode, grad_mask
    ctx.mark_non_differentiable(output[1])
    if grad_mask != 0:
        ctx.save_for_backward(x, output[1])


def _abs_max_backward(ctx, grad_y, grad_scale):
    if ctx.grad_mask == 0:
        return grad_y, None, None, None, None
    x, scale = ctx.saved_tensors
    grad_x, _ = fake_quant_symmetric_backward_op(x, grad_y, scale, ctx.axis, ctx.bits, ctx.round_mode,
                                                 ctx.grad_mask, False)
    return grad_x, None, None, None, None


fake_quant_abs_max_op.register_autograd(_abs_max_backward, setup_context=_abs_max_setup)


# --------------------------------------------------------------------------------------------------------
# Symmetric fake quantization with a given scale (PaddleSlim form); PACT is this with a strict mask and
# a learnable scale.
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("pyslim::fake_quant_symmetric", mutates_args=())
def fake_quant_symmetric_op(
    x: Tensor, scale: Tensor, axis: Optional[int], bits: int, round_mode: int, grad_mask: int, grad_factor: float
) -> Tensor:
    x = x.contiguous()
    y = _empty(x)
    _C.fake_quant_symmetric(capsule(x), capsule(y), capsule(scale.contiguous()), axis, bits, round_mode,
                            get_num_threads(), stream_of(x))
    return y


@fake_quant_symmetric_op.register_fake
def _(x, scale, axis, bits, round_mode, grad_mask, grad_factor):
    return _empty(x)


@torch.library.custom_op("pyslim::fake_quant_symmetric_backward", mutates_args=())
def fake_quant_symmetric_backward_op(
    x: Tensor, grad: Tensor, scale: Tensor, axis: Optional[int], bits: int, round_mode: int, grad_mask: int,
    need_scale_grad: bool,
) -> Tuple[Tensor, Tensor]:
    x = x.contiguous()
    grad = grad.contiguous()
    grad_x = _empty(x)
    grad_scale = torch.zeros(_channels(x, axis) if need_scale_grad else 0, dtype=torch.float64, device=x.device)
    _C.fake_quant_symmetric_backward(capsule(x), capsule(grad), capsule(grad_x), capsule(scale.contiguous()), axis,
                                     bits, round_mode, grad_mask, capsule(grad_scale) if need_scale_grad else None,
                                     get_num_threads(), stream_of(x))
    return grad_x, grad_scale


@fake_quant_symmetric_backward_op.register_fake
def _(x, grad, scale, axis, bits, round_mode, grad_mask, need_scale_grad):
    return _empty(x), x.new_empty(_channels(x, axis) if need_scale_grad else 0, dtype=torch.float64)


def _symmetric_setup(ctx, inputs, output):
    x, scale, axis, bits, round_mode, grad_mask, grad_factor = inputs
    ctx.axis, ctx.bits, ctx.round_mode, ctx.grad_mask, ctx.grad_factor = axis, bits, round_mode, grad_mask, grad_factor
    ctx.save_for_backward(x, scale)


def _symmetric_backward(ctx, grad_y):
    x, scale = ctx.saved_tensors
    need_scale = ctx.needs_input_grad[1]
    if ctx.grad_mask == 0 and not need_scale:
        return grad_y, None, None, None, None, None, None
    grad_x, grad_scale = fake_quant_symmetric_backward_op(x, grad_y, scale, ctx.axis, ctx.bits, ctx.round_mode,
                                                          ctx.grad_mask, need_scale)
    g_scale = None
    if need_scale:
        g_scale = (grad_scale * ctx.grad_factor).to(scale.dtype).reshape(scale.shape)
    return grad_x, g_scale, None, None, None, None, None


fake_quant_symmetric_op.register_autograd(_symmetric_backward, setup_context=_symmetric_setup)


# --------------------------------------------------------------------------------------------------------
# moving_average_abs_max: the statistics update mutates the buffers (no gradient), then the symmetric op.
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("pyslim::moving_average_abs_max_update", mutates_args=("state", "accum", "scale"))
def moving_average_abs_max_update_op(x: Tensor, state: Tensor, accum: Tensor, scale: Tensor,
                                     moving_rate: float) -> None:
    _C.moving_average_abs_max_update(capsule(x.contiguous()), capsule(state), capsule(accum), capsule(scale),
                                     moving_rate, get_num_threads(), stream_of(x))


@moving_average_abs_max_update_op.register_fake
def _(x, state, accum, scale, moving_rate):
    return None


# --------------------------------------------------------------------------------------------------------
# Affine fake quantization (torch form).
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("pyslim::fake_quant_affine", mutates_args=())
def fake_quant_affine_op(
    x: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int, quant_max: int,
    round_mode: int, grad_mask: int, grad_factor: float,
) -> Tensor:
    x = x.contiguous()
    y = _empty(x)
    _C.fake_quant_affine(capsule(x), capsule(y), capsule(scale.contiguous()), capsule(zero_point.contiguous()), axis,
                         quant_min, quant_max, round_mode, get_num_threads(), stream_of(x))
    return y


@fake_quant_affine_op.register_fake
def _(x, scale, zero_point, axis, quant_min, quant_max, round_mode, grad_mask, grad_factor):
    return _empty(x)


@torch.library.custom_op("pyslim::fake_quant_affine_backward", mutates_args=())
def fake_quant_affine_backward_op(
    x: Tensor, grad: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int, quant_max: int,
    round_mode: int, grad_mask: int, need_param_grads: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    x = x.contiguous()
    grad = grad.contiguous()
    grad_x = _empty(x)
    width = _channels(x, axis) if need_param_grads else 0
    grad_scale = torch.zeros(width, dtype=torch.float64, device=x.device)
    grad_zp = torch.zeros(width, dtype=torch.float64, device=x.device)
    _C.fake_quant_affine_backward(
        capsule(x), capsule(grad), capsule(grad_x), capsule(scale.contiguous()), capsule(zero_point.contiguous()),
        axis, quant_min, quant_max, round_mode, grad_mask,
        capsule(grad_scale) if need_param_grads else None, capsule(grad_zp) if need_param_grads else None,
        get_num_threads(), stream_of(x))
    return grad_x, grad_scale, grad_zp


@fake_quant_affine_backward_op.register_fake
def _(x, grad, scale, zero_point, axis, quant_min, quant_max, round_mode, grad_mask, need_param_grads):
    width = _channels(x, axis) if need_param_grads else 0
    return _empty(x), x.new_empty(width, dtype=torch.float64), x.new_empty(width, dtype=torch.float64)


def _affine_setup(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax, round_mode, grad_mask, grad_factor = inputs
    ctx.args = (axis, qmin, qmax, round_mode, grad_mask)
    ctx.grad_factor = grad_factor
    ctx.save_for_backward(x, scale, zero_point)


def _affine_backward(ctx, grad_y):
    x, scale, zero_point = ctx.saved_tensors
    axis, qmin, qmax, round_mode, grad_mask = ctx.args
    need_params = ctx.needs_input_grad[1]
    if grad_mask == 0 and not need_params:
        return (grad_y,) + (None,) * 8
    grad_x, grad_scale, grad_zp = fake_quant_affine_backward_op(x, grad_y, scale, zero_point, axis, qmin, qmax,
                                                                round_mode, grad_mask, need_params)
    g_scale = None
    if need_params:
        g_scale = (grad_scale * ctx.grad_factor).to(scale.dtype).reshape(scale.shape)
    return (grad_x, g_scale) + (None,) * 7


fake_quant_affine_op.register_autograd(_affine_backward, setup_context=_affine_setup)


# --------------------------------------------------------------------------------------------------------
# Forwards that save the clipped straight-through gradient as a bit mask.
#
# With grad="clipped" and no parameter gradient, the backward needs one bit per element: does the gradient
# pass? These variants return (y, mask) with mask a flat uint8 tensor of ceil(numel / 8) bytes (element i of
# the row-major x is bit i % 8 of byte i // 8, padding bits clear), and their backward reads only grad and the
# mask: 8.125 bytes per element instead of reading x and grad (12 bytes for the backward, plus y's 4 in the
# forward either way). The public functions in pyslim.ops pick them when x requires grad and the parameters do
# not (an LSQ/PACT scale gradient needs x itself).
# --------------------------------------------------------------------------------------------------------


def _mask_bytes(x: Tensor) -> int:
    return (x.numel() + 7) // 8


def _empty_mask(x: Tensor) -> Tensor:
    return torch.empty(_mask_bytes(x), dtype=torch.uint8, device=x.device)


@torch.library.custom_op("pyslim::apply_grad_mask", mutates_args=())
def apply_grad_mask_op(grad: Tensor, mask: Tensor) -> Tensor:
    """grad_x = grad where the mask bit is set, else 0 (bit-identical to the x-based clipped backward)."""
    grad = grad.contiguous()
    grad_x = _empty(grad)
    _C.apply_grad_mask(capsule(grad), capsule(mask.contiguous()), capsule(grad_x), get_num_threads(),
                       stream_of(grad))
    return grad_x


@apply_grad_mask_op.register_fake
def _(grad, mask):
    return _empty(grad)


def _masked_setup(ctx, inputs, output):
    mask = output[-1]
    ctx.mark_non_differentiable(*output[1:])  # the mask (and abs_max's scale) carry no gradient
    ctx.save_for_backward(mask)
    ctx.num_inputs = len(inputs)


def _masked_backward(ctx, grad_y, *unused):
    if any(ctx.needs_input_grad[1:]):
        raise RuntimeError("the masked fake-quant ops give no parameter gradients; use the x-based ops when a "
                           "scale or zero point requires grad")
    (mask,) = ctx.saved_tensors
    return (apply_grad_mask_op(grad_y, mask),) + (None,) * (ctx.num_inputs - 1)


@torch.library.custom_op("pyslim::fake_quant_affine_masked", mutates_args=())
def fake_quant_affine_masked_op(
    x: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int, quant_max: int,
    round_mode: int,
) -> Tuple[Tensor, Tensor]:
    x = x.contiguous()
    y = _empty(x)
    mask = _empty_mask(x)
    _C.fake_quant_affine_masked(capsule(x), capsule(y), capsule(mask), capsule(scale.contiguous()),
                                capsule(zero_point.contiguous()), axis, quant_min, quant_max, round_mode,
                                get_num_threads(), stream_of(x))
    return y, mask


@fake_quant_affine_masked_op.register_fake
def _(x, scale, zero_point, axis, quant_min, quant_max, round_mode):
    return _empty(x), _empty_mask(x)


fake_quant_affine_masked_op.register_autograd(_masked_backward, setup_context=_masked_setup)


@torch.library.custom_op("pyslim::fake_quant_symmetric_masked", mutates_args=())
def fake_quant_symmetric_masked_op(
    x: Tensor, scale: Tensor, axis: Optional[int], bits: int, round_mode: int, grad_mask: int
) -> Tuple[Tensor, Tensor]:
    x = x.contiguous()
    y = _empty(x)
    mask = _empty_mask(x)
    _C.fake_quant_symmetric_masked(capsule(x), capsule(y), capsule(mask), capsule(scale.contiguous()), axis, bits,
                                   round_mode, grad_mask, get_num_threads(), stream_of(x))
    return y, mask


@fake_quant_symmetric_masked_op.register_fake
def _(x, scale, axis, bits, round_mode, grad_mask):
    return _empty(x), _empty_mask(x)


fake_quant_symmetric_masked_op.register_autograd(_masked_backward, setup_context=_masked_setup)


@torch.library.custom_op("pyslim::fake_quant_abs_max_masked", mutates_args=())
def fake_quant_abs_max_masked_op(
    x: Tensor, axis: Optional[int], bits: int, round_mode: int, grad_mask: int
) -> Tuple[Tensor, Tensor, Tensor]:
    x = x.contiguous()
    y = _empty(x)
    scale = torch.empty(_param_shape(x, axis), dtype=torch.float32, device=x.device)
    mask = _empty_mask(x)
    _C.fake_quant_abs_max_masked(capsule(x), capsule(y), capsule(scale), capsule(mask), axis, bits, round_mode,
                                 grad_mask, get_num_threads(), stream_of(x))
    return y, scale, mask


@fake_quant_abs_max_masked_op.register_fake
def _(x, axis, bits, round_mode, grad_mask):
    return _empty(x), x.new_empty(_param_shape(x, axis)), _empty_mask(x)


fake_quant_abs_max_masked_op.register_autograd(_masked_backward, setup_context=_masked_setup)


def _save_mask(grad_mask: int, x: Tensor, *params: Tensor) -> bool:
    """True when autograd will need only grad_x through a clipping mask: then the forward saves bits."""
    return (grad_mask != 0 and torch.is_grad_enabled() and x.requires_grad
            and not any(p.requires_grad for p in params))


def fake_quant_abs_max(x: Tensor, axis: Optional[int], bits: int, round_mode: int,
                       grad_mask: int) -> Tuple[Tensor, Tensor]:
    """(y, scale) through the masked op when it suffices, else the x-based one."""
    if _save_mask(grad_mask, x):
        y, scale, _ = fake_quant_abs_max_masked_op(x, axis, bits, round_mode, grad_mask)
        return y, scale
    return fake_quant_abs_max_op(x, axis, bits, round_mode, grad_mask)


def fake_quant_symmetric(x: Tensor, scale: Tensor, axis: Optional[int], bits: int, round_mode: int,
                         grad_mask: int, grad_factor: float) -> Tensor:
    if _save_mask(grad_mask, x, scale):
        return fake_quant_symmetric_masked_op(x, scale, axis, bits, round_mode, grad_mask)[0]
    return fake_quant_symmetric_op(x, scale, axis, bits, round_mode, grad_mask, grad_factor)


def fake_quant_affine(x: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int,
                      quant_max: int, round_mode: int, grad_mask: int, grad_factor: float) -> Tensor:
    if _save_mask(grad_mask, x, scale, zero_point):
        return fake_quant_affine_masked_op(x, scale, zero_point, axis, quant_min, quant_max, round_mode)[0]
    return fake_quant_affine_op(x, scale, zero_point, axis, quant_min, quant_max, round_mode, grad_mask, grad_factor)


# --------------------------------------------------------------------------------------------------------
# Real quantization to int8/int16 and back.
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("pyslim::quantize", mutates_args=())
def quantize_op(x: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int], quant_min: int, quant_max: int,
                bits: int, round_mode: int) -> Tensor:
    x = x.contiguous()
    q = _empty(x, torch.int8 if bits == 8 else torch.int16)
    _C.quantize(capsule(x), capsule(q), capsule(scale.contiguous()), capsule(zero_point.contiguous()), axis,
                quant_min, quant_max, round_mode, get_num_threads(), stream_of(x))
    return q


@quantize_op.register_fake
def _(x, scale, zero_point, axis, quant_min, quant_max, bits, round_mode):
    return _empty(x, torch.int8 if bits == 8 else torch.int16)


@torch.library.custom_op("pyslim::dequantize", mutates_args=())
def dequantize_op(q: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int]) -> Tensor:
    q = q.contiguous()
    y = _empty(q, torch.float32)
    _C.dequantize(capsule(q), capsule(y), capsule(scale.contiguous()), capsule(zero_point.contiguous()), axis,
                  get_num_threads(), stream_of(q))
    return y


@dequantize_op.register_fake
def _(q, scale, zero_point, axis):
    return _empty(q, torch.float32)


def _dequantize_setup(ctx, inputs, output):
    q, scale, zero_point, axis = inputs
    ctx.axis = axis
    ctx.scale_shape = scale.shape
    ctx.save_for_backward(q, zero_point)


def _dequantize_backward(ctx, grad_y):
    # y = (q - zp) * s is linear in s: dL/ds = sum over the channel of grad * (q - zp).
    q, zero_point = ctx.saved_tensors
    if not ctx.needs_input_grad[1]:
        return None, None, None, None
    shape = _broadcast_shape(q, ctx.axis)
    centered = q.to(torch.float32) - zero_point.to(torch.float32).reshape(shape)
    prod = grad_y * centered
    if ctx.axis is None:
        g = prod.sum()
    else:
        dims = [d for d in range(q.dim()) if d != ctx.axis]
        g = prod.sum(dim=dims) if dims else prod
    return None, g.reshape(ctx.scale_shape), None, None


dequantize_op.register_autograd(_dequantize_backward, setup_context=_dequantize_setup)
