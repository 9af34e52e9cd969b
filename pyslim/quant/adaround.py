"""AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): for each
layer, choose per weight whether to round down or up so that the layer's *output* on calibration inputs moves
as little as possible, instead of rounding each weight to the nearest grid point. PaddleSlim exposes it as
``round_type='adaround'`` of its static PTQ; here ``quant_post_static(..., round_type='adaround')``.

The grid is the symmetric int8 one of ``pyslim.quant.nn.quantize_weight`` (scale ``max|W| / 127`` per output
channel or per tensor). With ``w = s * clip(floor(W / s) + h(V), -127, 127)`` and the rectified sigmoid
``h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1)``, V starts where ``h`` equals the fractional part of ``W / s``
(the float weights) and Adam minimises ``||f(X w^T + b) - f(X W^T + b)||^2 / ||f(X W^T + b)||^2 + lambda *
mean(1 - |2h - 1|^beta)`` over sampled input rows X, the regulariser (off for the first fifth of the steps, then
with beta annealed from 20 to 2) pushing every h to 0 or 1. The result is rounded: h >= 0.5 rounds up.

``f`` is the activation that follows the layer (ReLU, ReLU6, GELU), as in the paper's "asymmetric
reconstruction", or the identity. It matters after batch-norm folding: a channel whose folded weights are
large produces outputs far outside ReLU6's [0, 6]; there its rounding error is clipped away, and a plain
output MSE, dominated by those channels, would spend the rounding choices on errors nobody sees.

Example::

    >>> import torch
    >>> from pyslim.quant.adaround import adaround_weight
    >>> w = torch.randn(16, 32)
    >>> x = torch.randn(256, 32)
    >>> q, scale = adaround_weight(w, x, iterations=50)
    >>> q.dtype, q.shape
    (torch.int8, torch.Size([16, 32]))
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from pyslim.ops import _int8 as I
from pyslim.ops.reference import _activate
from pyslim.quant.nn import quantize_weight

__all__ = ["adaround_weight", "sample_conv_inputs"]

_ZETA, _GAMMA = 1.1, -0.1


def _h(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def adaround_weight(weight: Tensor, inputs: Tensor, groups: int = 1, weight_quantize_type: str = "channel_wise_abs_max",
                    iterations: int = 500, lr: float = 1e-2, reg: float = 0.01, bias: Optional[Tensor] = None,
                    activation: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Adaptively rounded int8 weights.

    Args:
        weight: (Cout, K) float weights, or a conv weight (Cout, Cin/groups, KH, KW) (flattened here).
        inputs: (N, groups * K) input rows: a Linear's inputs, or a convolution's patches in (c, kh, kw) order
            (see ``sample_conv_inputs``).
        groups: the convolution's groups (group g uses columns [g*K, (g+1)*K) and outputs [g*Cout/groups, ...)).
        weight_quantize_type: ``'channel_wise_abs_max'`` or ``'abs_max'`` (the grid, as ``quantize_weight``).
        iterations, lr, reg: Adam steps, learning rate and the regulariser's weight lambda.
        bias: the layer's float bias (Cout,), added before ``activation``; None for none.
        activation: the activation after the layer, applied to both outputs in the loss: None, ``'relu'``,
            ``'relu6'`` or ``'gelu'``.

    Returns ``(int8 weight of weight's shape, float32 scale per output channel)``: the same scale as
    ``quantize_weight``, with each weight rounded down or up (never further).
    """
    if not isinstance(weight, Tensor) or weight.dim() not in (2, 4):
        raise ValueError("weight must be a (Cout, K) or (Cout, Cin/groups, KH, KW) tensor")
    cout = weight.shape[0]
    w2 = weight.detach().to(torch.float32).reshape(cout, -1)
    k = w2.shape[1]
    if cout % groups != 0 or inputs.dim() != 2 or inputs.shape[1] != groups * k:
        raise ValueError(f"inputs must be (N, {groups * k}) rows for {groups} group(s) of K={k}; got "
                         f"{tuple(inputs.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1; got {iterations}")
    if activation not in I.ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu', 'relu6' or 'gelu'; got {activation!r}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (cout,)):
        raise ValueError(f"bias must be a ({cout},) tensor or None; got "
                         f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    def f(t: Tensor) -> Tensor:  # the int8 epilogue's activation, as the pure-torch reference writes it
        return _activate(t, activation)

    b = (torch.zeros(cout) if bias is None else bias.detach().to(torch.float32)).reshape(groups, cout // groups)
    _, scale = quantize_weight(weight, weight_quantize_type)
    s = scale.reshape(cout, 1)
    ratio = w2 / s
    base = torch.floor(ratio)
    frac = ratio - base
    # V with h(V) = frac: sigmoid(V) = (frac - gamma) / (zeta - gamma)
    p = ((frac - _GAMMA) / (_ZETA - _GAMMA)).clamp(1e-4, 1 - 1e-4)
    v = torch.log(p / (1 - p)).requires_grad_(True)
    x = inputs.detach().to(torch.float32).reshape(inputs.shape[0], groups, k)
    wg = w2.reshape(groups, cout // groups, k)
    n = x.shape[0]
    # Without an activation the loss is a quadratic form in D = w - W: ||X D^T||^2 = tr(D G D^T) with the
    # Gram matrix G = X^T X per group, k x k instead of n rows per step (the same objective, up to rounding).
    gram = activation is None and k < n
    with torch.no_grad():
        target = f(torch.einsum("ngk,gok->ngo", x, wg) + b)
        norm = target.pow(2).mean().clamp(min=1e-30)
        if gram:
            g = torch.einsum("ngk,ngl->gkl", x.double(), x.double()).to(torch.float32)
            count = float(n * cout)
            del target
    opt = torch.optim.Adam([v], lr=lr)
    warmup = iterations // 5
    for it in range(iterations):
        q = torch.clamp(base + _h(v), -127.0, 127.0)
        if gram:
            d = (q * s - w2).reshape(groups, cout // groups, k)
            loss = torch.einsum("gok,gkl,gol->", d, g, d) / count / norm
        else:
            out = f(torch.einsum("ngk,gok->ngo", x, (q * s).reshape(groups, cout // groups, k)) + b)
            loss = (out - target).pow(2).mean() / norm
        if it >= warmup:
            beta = 20.0 + (2.0 - 20.0) * (it - warmup) / max(iterations - warmup - 1, 1)
            loss = loss + reg * (1.0 - (2.0 * _h(v) - 1.0).abs().pow(beta)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.clamp(base + (_h(v) >= 0.5).to(torch.float32), -127.0, 127.0)
    return q.to(torch.int8).reshape(weight.shape), scale


def sample_conv_inputs(x: Tensor, conv, count: int, pad: Optional[Tuple[int, int, int, int]] = None,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    """``count`` random patches (rows of the convolution's im2col matrix, (c, kh, kw) order) of input ``x`` for
    ``conv`` (an nn.Conv2d: its stride, padding, dilation), after an optional extra zero ``pad``."""
    import torch.nn.functional as F

    if pad is not None:
        x = F.pad(x, pad)
    ph, pw = (0, 0) if isinstance(conv.padding, str) else conv.padding
    x = F.pad(x, (pw, pw, ph, ph))
    n, c, h, w = x.shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0 or count <= 0:
        return x.new_zeros(0, c * kh * kw)
    b = torch.randint(0, n, (count,), generator=generator)
    r = torch.randint(0, oh, (count,), generator=generator)
    q = torch.randint(0, ow, (count,), generator=generator)
    rows = (r * sh).reshape(-1, 1, 1) + (torch.arange(kh) * dh).reshape(1, -1, 1)  # (count, kh, 1)
    cols = (q * sw).reshape(-1, 1, 1) + (torch.arange(kw) * dw).reshape(1, 1, -1)  # (count, 1, kw)
    patches = x[b.reshape(-1, 1, 1), :, rows, cols]  # (count, kh, kw, c)
    return patches.permute(0, 3, 1, 2).reshape(count, c * kh * kw)
