"""Pure-torch references of every op in ``pyslim.ops``.

They perform the same float32 operations in the same order as the native kernels (the native build
disables FMA contraction), so the native outputs are expected to be bit-identical to these, except the
summed parameter gradients, which differ only by summation order. Tests compare against them; they are
also a readable statement of each op's math.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "round_half_away_from_zero",
    "round_values",
    "paddle_inverse",
    "abs_max",
    "fake_quant_symmetric",
    "fake_quant_symmetric_backward",
    "fake_quant_abs_max",
    "fake_quant_channel_wise_abs_max",
    "fake_quant_moving_average_abs_max",
    "fake_quant_affine",
    "fake_quant_affine_backward",
    "pact",
    "pact_backward",
    "pack_mask_bits",
    "unpack_mask_bits",
    "fake_quant_affine_mask",
    "fake_quant_symmetric_mask",
    "apply_grad_mask",
    "quantize",
    "dequantize",
]


def round_half_away_from_zero(v: Tensor) -> Tensor:
    """std::round: ties go away from zero. Exact (no floor(|v| + 0.5), which is wrong for 0.49999997)."""
    t = torch.trunc(v)
    return t + torch.where((v - t).abs() >= 0.5, torch.sign(v), torch.zeros_like(v))


def round_values(v: Tensor, round_mode: str) -> Tensor:
    if round_mode == "half_to_even":
        return torch.round(v)
    if round_mode == "half_away_from_zero":
        return round_half_away_from_zero(v)
    raise ValueError(f"round_mode must be 'half_to_even' or 'half_away_from_zero'; got {round_mode!r}")


def paddle_inverse(s: Tensor) -> Tensor:
    """PaddleSlim's guarded reciprocal: 1/(s + 1e-6) for s <= 1e-30, else 1/s."""
    return torch.where(s <= 1e-30, 1.0 / (s + 1e-6), 1.0 / s)


def _bshape(x: Tensor, axis: Optional[int]):
    if axis is None:
        return ()
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return shape


def abs_max(x: Tensor, axis: Optional[int] = None) -> Tensor:
    """max|x| over the tensor (0-d) or per channel along `axis`; NaN propagates; 0 for empty input."""
    a = x.abs()
    if axis is None:
        return a.max() if a.numel() else torch.zeros((), dtype=x.dtype, device=x.device)
    c = x.shape[axis]
    moved = a.movedim(axis, 0).reshape(c, x.numel() // c if c else 0)
    if moved.shape[1] == 0:
        return torch.zeros(x.shape[axis], dtype=x.dtype, device=x.device)
    return moved.max(dim=1).values


def fake_quant_symmetric(x: Tensor, scale: Tensor, axis: Optional[int] = None, bits: int = 8,
                         round_mode: str = "half_away_from_zero") -> Tensor:
    """PaddleSlim's quantize-dequantize: q = round(bin * clip(x, -s, s) / s), y = q * s / bin."""
    fbin = float(2 ** (bits - 1) - 1)
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    m = fbin * paddle_inverse(s)
    clipped = torch.minimum(torch.maximum(x, -s), s)
    q = round_values(clipped * m, round_mode)
    y = (q * s) / fbin
    return torch.where(torch.isnan(x), x, y)


def fake_quant_symmetric_backward(x: Tensor, grad: Tensor, scale: Tensor, axis: Optional[int] = None,
                                  bits: int = 8, round_mode: str = "half_away_from_zero",
                                  grad_mode: str = "ste") -> Tuple[Tensor, Tensor]:
    """(grad_x, grad_scale). grad_mode: 'ste' (no mask), 'clipped' (|x| <= s), 'clipped_strict' (|x| < s).
    grad_scale (float64, one per channel) is the LSQ/PACT term: +1 above s, -1 below -s, (q - u)/bin inside."""
    fbin = float(2 ** (bits - 1) - 1)
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    if grad_mode == "ste":
        keep = torch.ones_like(x, dtype=torch.bool)
    elif grad_mode == "clipped":
        keep = x.abs() <= s
    elif grad_mode == "clipped_strict":
        keep = x.abs() < s
    else:
        raise ValueError(f"grad_mode must be 'ste', 'clipped' or 'clipped_strict'; got {grad_mode!r}")
    grad_x = torch.where(keep, grad, torch.zeros_like(grad))
    m = fbin * paddle_inverse(s)
    u = x * m
    inside = (round_values(u, round_mode) - u) / fbin
    c = torch.where(x > s, torch.ones_like(x), torch.where(x < -s, -torch.ones_like(x), inside))
    c = torch.where(torch.isnan(x), torch.zeros_like(x), c)
    contrib = (grad * c).to(torch.float64)
    if axis is None:
        grad_scale = contrib.sum().reshape(1)
    else:
        c_count = x.shape[axis]
        grad_scale = contrib.movedim(axis, 0).reshape(c_count, x.numel() // c_count if c_count else 0).sum(dim=1)
    return grad_x, grad_scale


def fake_quant_abs_max(x: Tensor, bits: int = 8, round_mode: str = "half_away_from_zero") -> Tuple[Tensor, Tensor]:
    scale = abs_max(x)
    return fake_quant_symmetric(x, scale, None, bits, round_mode), scale


def fake_quant_channel_wise_abs_max(x: Tensor, axis: int, bits: int = 8,
                                    round_mode: str = "half_away_from_zero") -> Tuple[Tensor, Tensor]:
    scale = abs_max(x, axis)
    return fake_quant_symmetric(x, scale, axis, bits, round_mode), scale


def fake_quant_moving_average_abs_max(x: Tensor, state: Tensor, accum: Tensor, scale: Tensor, bits: int = 8,
                                      moving_rate: float = 0.9, training: bool = True,
                                      round_mode: str = "half_away_from_zero") -> Tensor:
    """Updates state/accum/scale in place when training (bias-corrected EMA), then quantizes with scale."""
    if training:
        r = torch.tensor(moving_rate, dtype=torch.float32)
        state.copy_(r * state + 1.0)
        accum.copy_(r * accum + abs_max(x))
        scale.copy_(accum / state)
    return fake_quant_symmetric(x, scale, None, bits, round_mode)


def fake_quant_affine(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                      axis: Optional[int] = None, round_mode: str = "half_to_even") -> Tensor:
    """torch's form: y = (clamp(round(x * (1/s)) + zp, qmin, qmax) - zp) * s; NaN stays NaN."""
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    zp = zero_point.reshape(_bshape(x, axis)).to(torch.float32)
    inv = 1.0 / s
    q = round_values(x * inv, round_mode) + zp
    c = torch.clamp(q, float(quant_min), float(quant_max))
    y = (c - zp) * s
    return torch.where(torch.isnan(x), x, y)


def fake_quant_affine_backward(x: Tensor, grad: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int,
                               quant_max: int, axis: Optional[int] = None, round_mode: str = "half_to_even",
                               grad_mode: str = "clipped") -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_scale, grad_zero_point); the last two are float64 per-channel LSQ sums."""
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    zp = zero_point.reshape(_bshape(x, axis)).to(torch.float32)
    inv = 1.0 / s
    u = x * inv
    r = round_values(u, round_mode)
    q = r + zp
    inside = (q >= quant_min) & (q <= quant_max)
    grad_x = grad if grad_mode == "ste" else torch.where(inside, grad, torch.zeros_like(grad))
    zero = torch.zeros_like(x)
    c_scale = torch.where(inside, r - u, torch.where(q < quant_min, quant_min - zp + zero,
                                                     torch.where(q > quant_max, quant_max - zp + zero, zero)))
    c_zp = torch.where(inside | torch.isnan(x), zero, -s + zero)

    def per_channel(t):
        t = t.to(torch.float64)
        if axis is None:
            return t.sum().reshape(1)
        c = x.shape[axis]
        return t.movedim(axis, 0).reshape(c, x.numel() // c if c else 0).sum(dim=1)

    return grad_x, per_channel(grad * c_scale), per_channel(grad * c_zp)


def pact(x: Tensor, alpha: Tensor, bits: int = 8, round_mode: str = "half_away_from_zero") -> Tensor:
    """PACT fused with fake quantization: fakequant(clip(x, -alpha, alpha), scale=alpha)."""
    return fake_quant_symmetric(x, alpha, None, bits, round_mode)


def pact_backward(x: Tensor, grad: Tensor, alpha: Tensor, bits: int = 8,
                  round_mode: str = "half_away_from_zero") -> Tuple[Tensor, Tensor]:
    """dx = g * 1[|x| < alpha]; dalpha = sum(g * (1[x > alpha] - 1[x < -alpha])) + the quantization term."""
    grad_x, grad_alpha = fake_quant_symmetric_backward(x, grad, alpha, None, bits, round_mode, "clipped_strict")
    return grad_x, grad_alpha.to(torch.float32).reshape(alpha.shape)


_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_mask_bits(keep: Tensor) -> Tensor:
    """Packs a bool tensor (row-major) into uint8, least significant bit first: element i is bit i % 8 of
    byte i // 8; the padding bits of the last byte are 0. Example: ``[1, 0, 1, 1, 0, 0, 0, 0, 1] -> [13, 1]``."""
    flat = keep.reshape(-1).to(torch.int32)
    n = flat.numel()
    padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.int32, device=keep.device)
    padded[:n] = flat
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32, device=keep.device)
    return (padded.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_mask_bits(bits: Tensor, shape) -> Tensor:
    """The bool tensor of ``shape`` that ``pack_mask_bits`` packed into ``bits``."""
    n = 1
    for d in shape:
        n *= int(d)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32, device=bits.device)
    unpacked = (bits.to(torch.int32).reshape(-1, 1) & weights) != 0
    return unpacked.reshape(-1)[:n].reshape(shape)


def fake_quant_affine_mask(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                           axis: Optional[int] = None, round_mode: str = "half_to_even") -> Tuple[Tensor, Tensor]:
    """(y, packed mask): y of ``fake_quant_affine`` and the bits of the clipped backward's keep,
    ``quant_min <= round(x * (1/s)) + zp <= quant_max`` (0 for NaN)."""
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    zp = zero_point.reshape(_bshape(x, axis)).to(torch.float32)
    q = round_values(x * (1.0 / s), round_mode) + zp
    keep = (q >= quant_min) & (q <= quant_max)
    return fake_quant_affine(x, scale, zero_point, quant_min, quant_max, axis, round_mode), pack_mask_bits(keep)


def fake_quant_symmetric_mask(x: Tensor, scale: Tensor, axis: Optional[int] = None, bits: int = 8,
                              round_mode: str = "half_away_from_zero",
                              grad_mode: str = "clipped") -> Tuple[Tensor, Tensor]:
    """(y, packed mask): y of ``fake_quant_symmetric`` and the bits of |x| <= s ('clipped') or |x| < s
    ('clipped_strict'); 0 for NaN."""
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    if grad_mode == "clipped":
        keep = x.abs() <= s
    elif grad_mode == "clipped_strict":
        keep = x.abs() < s
    else:
        raise ValueError(f"grad_mode must be 'clipped' or 'clipped_strict'; got {grad_mode!r}")
    return fake_quant_symmetric(x, scale, axis, bits, round_mode), pack_mask_bits(keep)


def apply_grad_mask(grad: Tensor, bits: Tensor) -> Tensor:
    """grad where the packed mask bit is set, else 0."""
    return torch.where(unpack_mask_bits(bits, grad.shape), grad, torch.zeros_like(grad))


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
             axis: Optional[int] = None, dtype: torch.dtype = torch.int8,
             round_mode: str = "half_to_even") -> Tensor:
    """q = clamp(round(x * (1/s)) + zp, qmin, qmax); NaN maps to zp."""
    s = scale.reshape(_bshape(x, axis)).to(torch.float32)
    zp = zero_point.reshape(_bshape(x, axis)).to(torch.float32)
    q = round_values(x * (1.0 / s), round_mode) + zp
    c = torch.clamp(q, float(quant_min), float(quant_max))
    c = torch.where(torch.isnan(x), zp.expand_as(x), c)
    return c.to(dtype)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, axis: Optional[int] = None) -> Tensor:
    """y = (q - zp) * s."""
    s = scale.reshape(_bshape(q, axis)).to(torch.float32)
    zp = zero_point.reshape(_bshape(q, axis)).to(torch.int32)
    return (q.to(torch.int32) - zp).to(torch.float32) * s


# ------------------------------------------------------------------------------------------------------------
# int8 GEMM / convolution (exact integer math in float64 / int64, then the float epilogue in float32)
# ------------------------------------------------------------------------------------------------------------


def gemm_int32(a: Tensor, w: Tensor) -> Tensor:
    """acc[m][n] = sum_k a[m][k] * w[n][k] exactly (int32 result)."""
    return (a.to(torch.int64) @ w.to(torch.int64).t()).to(torch.int32)


def _activate(y: Tensor, activation: Optional[str]) -> Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "relu6":
        return torch.clamp(y, 0.0, 6.0)
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    return y


def gemm_epilogue(acc: Tensor, act_scale, act_zero_point, weight_scale: Tensor, col_sums: Tensor,
                  bias: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """y = act(float(acc - zp * col_sums) * (scale * weight_scale) + bias); scale/zp per tensor or per row."""
    s = torch.as_tensor(act_scale, dtype=torch.float32).reshape(-1, 1)
    zp = torch.as_tensor(act_zero_point, dtype=torch.int64).reshape(-1, 1)
    centered = (acc.to(torch.int64) - zp * col_sums.to(torch.int64)).to(torch.float32)
    y = centered * (s * weight_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias
    return _activate(y, activation)


def dynamic_quantize_rows(x: Tensor, per_row: bool = True, symmetric: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """The dynamic path's activation quantization: int8 q, scale and zero point per row (or per tensor)."""
    x2 = x.reshape(-1, x.shape[-1])
    if per_row:
        lo, hi = x2.amin(dim=1, keepdim=True).clamp(max=0.0), x2.amax(dim=1, keepdim=True).clamp(min=0.0)
        amax = x2.abs().amax(dim=1, keepdim=True)
    else:
        lo = x2.min().clamp(max=0.0).reshape(1, 1).expand(x2.shape[0], 1)
        hi = x2.max().clamp(min=0.0).reshape(1, 1).expand(x2.shape[0], 1)
        amax = x2.abs().max().reshape(1, 1).expand(x2.shape[0], 1)
    if symmetric:
        scale = amax / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / 255.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(-128.0 - torch.round(lo / scale), -128, 127).to(torch.int32)
    q = torch.clamp(torch.round(x2 * (1.0 / scale)) + zp.to(torch.float32), -128, 127).to(torch.int8)
    return q, scale.reshape(-1), zp.reshape(-1)


def linear_int8_dynamic(x: Tensor, weight_int8: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
                        per_row: bool = True, symmetric: bool = False, activation: Optional[str] = None) -> Tensor:
    q, s, zp = dynamic_quantize_rows(x, per_row, symmetric)
    acc = gemm_int32(q, weight_int8)
    col_sums = weight_int8.to(torch.int64).sum(dim=1)
    y = gemm_epilogue(acc, s, zp, weight_scale, col_sums, bias, activation)
    return y.reshape(*x.shape[:-1], weight_int8.shape[0])


def conv2d_int8(xq: Tensor, x_scale: float, x_zero_point: int, weight_int8: Tensor, weight_scale: Tensor,
                bias: Optional[Tensor], stride, padding, dilation, groups: int,
                activation: Optional[str] = None) -> Tensor:
    """xq: NHWC int8/uint8; weight_int8: torch layout (Cout, Cin/groups, KH, KW). Returns float32 NHWC.
    Padding reads as the zero point (0.0 after dequantization); the integer sums are exact in float64."""
    x = xq.permute(0, 3, 1, 2).to(torch.float64) - float(x_zero_point)
    acc = torch.nn.functional.conv2d(x, weight_int8.to(torch.float64), None, stride, padding, dilation, groups)
    y = acc.to(torch.float32) * (float(x_scale) * weight_scale.reshape(1, -1, 1, 1))
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return _activate(y, activation).permute(0, 2, 3, 1)
