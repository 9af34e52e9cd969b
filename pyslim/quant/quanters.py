"""Fake-quantization modules (quantize-dequantize) for quantization-aware training, on ``pyslim.ops``.

Each module quantizes and dequantizes its input in the forward pass and passes the gradient straight
through (PaddleSlim's STE), so a float model learns weights that survive int8 rounding. Any state (the
moving-average scale, PACT's alpha) lives in buffers / parameters, so it travels with ``state_dict`` and is
moved by ``.to()``. These are the fake-quant half of the observer / fake-quant split; statistics-only
observers live elsewhere.

- :class:`FakeQuantAbsMax`: per tensor, ``scale = max|x|`` of the current tensor (PaddleSlim ``abs_max``).
- :class:`FakeQuantChannelWiseAbsMax`: per channel along ``axis`` (``channel_wise_abs_max``; axis 0 for
  PyTorch's (out, in, ...) weights).
- :class:`FakeQuantMovingAverageAbsMax`: PaddleSlim's bias-corrected EMA of ``max|x|`` (``moving_average_abs_max``),
  frozen in eval; averaged across ranks under ``torch.distributed``.
- :class:`PACT`: learnable clipping threshold alpha, fused with fake quantization on alpha's grid.

All use ``round_mode="half_away_from_zero"`` (PaddleSlim's QAT layers, ``q`` in ``[-bin, bin]`` with
``bin = 2**(bits-1) - 1``).

Example::

    >>> import torch
    >>> from pyslim.quant.quanters import FakeQuantMovingAverageAbsMax, PACT
    >>> act = FakeQuantMovingAverageAbsMax()
    >>> y = act(torch.randn(4, 8))               # training mode: updates the scale, then fake-quantizes
    >>> float(act.scale) > 0.001
    True
"""

from __future__ import annotations

import numbers
from typing import Dict, Iterable, List

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pyslim import ops

__all__ = [
    "PACT",
    "PACT_INIT_VALUE",
    "PACT_LR_MULTIPLIER",
    "FakeQuantAbsMax",
    "FakeQuantChannelWiseAbsMax",
    "FakeQuantMovingAverageAbsMax",
    "pact_param_groups",
]

# PaddleSlim's dygraph PACT (v2.0 ``paddleslim/dygraph/quant/pact.py``): alpha starts at 20 and gets 1000x the
# optimizer's learning rate. v2.6 (and its ``PACTQuanter``) start alpha at 100, still with lr x1000. The static
# ``paddleslim.quant.quanter.pact`` starts at 20 with lr x1 and L2Decay(1e-4), paired with Momentum(lr=1e-4).
PACT_INIT_VALUE = 20.0
PACT_LR_MULTIPLIER = 1000.0

_ROUND = "half_away_from_zero"


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= int(bits) <= 16:
        raise ValueError(f"bits must be an int in [2, 16]; got {bits!r}")
    return int(bits)


class FakeQuantAbsMax(nn.Module):
    """Per-tensor fake quantization with ``scale = max|x|`` of the current tensor (PaddleSlim ``abs_max``).

    The scale of the last forward is kept in the buffer ``scale`` (for inspection; the next forward recomputes
    it). Example::

        >>> q = FakeQuantAbsMax(bits=8)
        >>> y = q(torch.tensor([1.0, -0.5, 0.001]))
    """

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = _check_bits(bits)
        self.register_buffer("scale", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        y, scale = ops.fake_quant_abs_max(x, bits=self.bits, round_mode=_ROUND, grad="ste", return_scale=True)
        with torch.no_grad():
            self.scale.copy_(scale)
        return y

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class FakeQuantChannelWiseAbsMax(nn.Module):
    """Per-channel fake quantization along ``axis`` with ``scale[c] = max|x_c|`` (``channel_wise_abs_max``).

    ``axis=0`` is the output channel of PyTorch's Conv2d (Cout, Cin/g, kh, kw) and Linear (out, in) weights
    (PaddleSlim uses axis 1 for its [in, out] Linear weights: the same channels). The last scales are kept in
    the buffer ``scale``; give ``channels`` to allocate it up front (its size is otherwise set by the first
    forward, after DDP has already registered the buffer). Example::

        >>> q = FakeQuantChannelWiseAbsMax(axis=0)
        >>> w = q(torch.randn(16, 3, 3, 3))
    """

    def __init__(self, axis: int = 0, bits: int = 8, channels: int = 0):
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an int; got {type(axis).__name__}")
        if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 0:
            raise ValueError(f"channels must be an int >= 0; got {channels!r}")
        self.axis = int(axis)
        self.bits = _check_bits(bits)
        self.register_buffer("scale", torch.zeros(int(channels)))

    def forward(self, x: Tensor) -> Tensor:
        y, scale = ops.fake_quant_channel_wise_abs_max(x, self.axis, bits=self.bits, round_mode=_ROUND, grad="ste",
                                                       return_scale=True)
        with torch.no_grad():
            if self.scale.shape != scale.shape:
                self.scale = torch.empty_like(scale)
            self.scale.copy_(scale)
        return y

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The channel count is only known after the first forward; accept whatever size was saved.
        saved = state_dict.get(prefix + "scale")
        if saved is not None and saved.shape != self.scale.shape:
            self.scale = torch.empty_like(saved, device=self.scale.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, bits={self.bits}"


class FakeQuantMovingAverageAbsMax(nn.Module):
    """PaddleSlim's ``moving_average_abs_max`` activation fake quantization.

    Training: ``state = r*state + 1; accum = r*accum + max|x|; scale = accum/state`` (a bias-corrected EMA,
    ``r = moving_rate``), then ``x`` is fake-quantized with ``scale``. Eval: the stored scale is used unchanged.
    Buffers start at PaddleSlim's values ``scale = 0.001, state = 1, accum = 1``.

    Under ``torch.distributed`` (initialized, world size > 1) the three buffers are averaged across ranks after
    every training update, before quantizing, so every rank quantizes with the same scale and the buffers
    stay identical under DDP (even with ``broadcast_buffers=False``). This costs one small all-reduce per
    quantizer per training step, issued in module order (every rank must run the same forward).
    ``scale`` is the abs-max threshold ``t``: the int8 activation scale is ``t / 127``.

    Example::

        >>> q = FakeQuantMovingAverageAbsMax(moving_rate=0.9)
        >>> _ = q(torch.full((4,), 2.0))
        >>> round(float(q.scale), 4)      # (0.9 * 1 + 2) / (0.9 * 1 + 1)
        1.5263
    """

    def __init__(self, bits: int = 8, moving_rate: float = 0.9):
        super().__init__()
        self.bits = _check_bits(bits)
        if isinstance(moving_rate, bool) or not isinstance(moving_rate, numbers.Real) or not 0.0 <= moving_rate < 1.0:
            raise ValueError(f"moving_rate must be a float in [0, 1); got {moving_rate!r}")
        self.moving_rate = float(moving_rate)
        self.register_buffer("scale", torch.full((1,), 0.001))
        self.register_buffer("state", torch.ones(1))
        self.register_buffer("accum", torch.ones(1))

    @staticmethod
    def _distributed_world() -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return ops.fake_quant_moving_average_abs_max(x, self.state, self.accum, self.scale, bits=self.bits,
                                                         moving_rate=self.moving_rate, training=False,
                                                         round_mode=_ROUND, grad="ste")
        world = self._distributed_world()
        if world == 1:
            return ops.fake_quant_moving_average_abs_max(x, self.state, self.accum, self.scale, bits=self.bits,
                                                         moving_rate=self.moving_rate, training=True,
                                                         round_mode=_ROUND, grad="ste")
        with torch.no_grad():
            # Local update (its quantized output is discarded), then average the statistics over the ranks
            # and quantize with the shared scale. gloo has no ReduceOp.AVG: SUM then divide.
            ops.fake_quant_moving_average_abs_max(x.detach(), self.state, self.accum, self.scale, bits=self.bits,
                                                  moving_rate=self.moving_rate, training=True, round_mode=_ROUND)
            packed = torch.cat([self.state, self.accum, self.scale])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            packed /= world
            self.state.copy_(packed[0:1])
            self.accum.copy_(packed[1:2])
            self.scale.copy_(packed[2:3])
        return ops.fake_quant_symmetric(x, self.scale.detach(), bits=self.bits, round_mode=_ROUND, grad="ste")

    def extra_repr(self) -> str:
        return f"bits={self.bits}, moving_rate={self.moving_rate}"


class PACT(nn.Module):
    """PACT (Choi et al. 2018), symmetric as in PaddleSlim: ``y = fakequant(clip(x, -alpha, alpha), scale=alpha)``
    with a learnable scalar ``alpha``, on the fused native op ``pyslim.ops.pact``.

    Gradients: ``dx = g * 1[|x| < alpha]``; ``dalpha = sum(g * (1[x > alpha] - 1[x < -alpha]))`` plus the
    quantization term. Unlike PaddleSlim, where PACT only clips and a separate moving-average quantizer follows,
    the clip and the quantization share alpha here, so alpha *is* the activation threshold (int8 scale
    ``alpha / 127``).

    PaddleSlim's defaults: dygraph v2.0 ``init_value=20`` with a learning-rate multiplier of 1000 for alpha;
    v2.6 (and ``PACTQuanter``) ``init_value=100``, lr x1000. The multiplier matters: alpha is one scalar
    summed over a whole activation, and with plain SGD a normal lr barely moves it. Build the optimizer with
    :func:`pact_param_groups` to reproduce it. Example::

        >>> pact = PACT(init_value=20.0)
        >>> y = pact(torch.randn(8, 16) * 30)
        >>> float(y.detach().abs().max()) <= 20.0
        True
    """

    def __init__(self, init_value: float = PACT_INIT_VALUE, bits: int = 8):
        super().__init__()
        if isinstance(init_value, bool) or not isinstance(init_value, numbers.Real) or not init_value > 0:
            raise ValueError(f"init_value must be a number > 0; got {init_value!r}")
        self.bits = _check_bits(bits)
        self.alpha = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        if self.alpha.device != x.device:
            raise ValueError(f"PACT alpha is on {self.alpha.device} but x is on {x.device}; move the model")
        return ops.pact(x, self.alpha, bits=self.bits, round_mode=_ROUND)

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha.detach()):.4g}, bits={self.bits}"


def pact_param_groups(model: nn.Module, lr: float, alpha_lr_multiplier: float = PACT_LR_MULTIPLIER,
                      alpha_weight_decay: float = 0.0, **group_options) -> List[Dict]:
    """Optimizer parameter groups giving every PACT ``alpha`` in ``model`` its own learning rate
    ``lr * alpha_lr_multiplier`` (PaddleSlim: 1000) and weight decay; all other trainable parameters get ``lr``.

    Extra keyword arguments (e.g. ``weight_decay``) go into the group of the other parameters. Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), PACT())
        >>> opt = torch.optim.SGD(pact_param_groups(model, lr=1e-3), lr=1e-3, momentum=0.9)
        >>> [g["lr"] for g in opt.param_groups]
        [0.001, 1.0]
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr >= 0:
        raise ValueError(f"lr must be a number >= 0; got {lr!r}")
    if isinstance(alpha_lr_multiplier, bool) or not isinstance(alpha_lr_multiplier, numbers.Real) \
            or not alpha_lr_multiplier > 0:
        raise ValueError(f"alpha_lr_multiplier must be a number > 0; got {alpha_lr_multiplier!r}")
    alphas = {id(m.alpha): m.alpha for m in model.modules() if isinstance(m, PACT)}
    others: Iterable[nn.Parameter] = [p for p in model.parameters() if p.requires_grad and id(p) not in alphas]
    groups = [{"params": list(others), "lr": float(lr), **group_options}]
    if alphas:
        groups.append({"params": list(alphas.values()), "lr": float(lr) * float(alpha_lr_multiplier),
                       "weight_decay": float(alpha_weight_decay)})
    return groups
