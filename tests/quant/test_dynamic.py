"""quant_post_dynamic (PaddleSlim PTQ-dynamic, spec 1.1.6): layer swapping, the int8 (native dynamic GEMM)
and int16 (weight-only) paths against the float model with derived error bounds, skip_quant, state_dict
round trips and argument errors."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyslim.quant.dynamic import (
    WeightOnlyInt16Conv2d,
    WeightOnlyInt16Linear,
    quant_post_dynamic,
    quant_post_only_weight,
    quantize_weight_symmetric,
)
from pyslim.quant.nn import Int8Conv2d, Int8Linear

EPS = float(torch.finfo(torch.float32).eps)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Linear(8 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 32))
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = F.relu(self.conv(x)).flatten(1)
        h = self.block(h).unsqueeze(1)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h.squeeze(1))


def spec_weight_quant(w: np.ndarray, bits: int, per_channel: bool):
    """PaddleSlim: scale = max|W| / (2^(b-1) - 1) per output channel or tensor, q = np.around(W / scale)."""
    w = w.astype(np.float32)
    bin_ = np.float32(2 ** (bits - 1) - 1)
    flat = w.reshape(w.shape[0], -1)
    amax = np.abs(flat).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(w).max(), np.float32)
    scale = (amax / bin_).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero channel: 0 / 0
        q = np.nan_to_num(np.around(flat / scale.reshape(-1, 1))).reshape(w.shape)
    return q.astype(np.int16 if bits > 8 else np.int8), scale


# ---------------------------------------------------------------------------------------------------------
# swapping
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_bits", [8, 16])
def test_layers_swapped(weight_bits):
    model = Net().eval()
    q = quant_post_dynamic(model, weight_bits=weight_bits)
    lin, conv = (Int8Linear, Int8Conv2d) if weight_bits == 8 else (WeightOnlyInt16Linear, WeightOnlyInt16Conv2d)
    assert isinstance(q.conv, conv)
    assert isinstance(q.block[0], lin) and isinstance(q.block[2], lin) and isinstance(q.head, lin)
    # MultiheadAttention reads out_proj.weight itself: its Linear subclass is left in float.
    assert type(q.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(model.conv, nn.Conv2d) and isinstance(model.head, nn.Linear), "inplace=False copies"
    with torch.no_grad():
        x = torch.randn(4, 3, 6, 6)
        assert q(x).shape == model(x).shape


def test_layer_type_selection_and_inplace():
    model = Net().eval()
    q = quant_post_dynamic(model, quantizable_layer_type=("Linear",))
    assert isinstance(q.conv, nn.Conv2d) and isinstance(q.head, Int8Linear)
    q = quant_post_dynamic(model, quantizable_layer_type=[nn.Conv2d])
    assert isinstance(q.conv, Int8Conv2d) and isinstance(q.head, nn.Linear)
    q = quant_post_dynamic(model, quantizable_layer_type=["conv2d", "mul"])  # PaddleSlim's op names
    assert isinstance(q.conv, Int8Conv2d) and isinstance(q.head, Int8Linear)
    same = quant_post_dynamic(model, weight_bits=16, inplace=True)
    assert same is model and isinstance(model.head, WeightOnlyInt16Linear)
    assert quant_post_only_weight is quant_post_dynamic
    assert isinstance(quant_post_dynamic(nn.Linear(4, 3)), Int8Linear)  # a bare layer is returned converted


def test_skip_quant():
    model = Net().eval()
    q = quant_post_dynamic(model, skip_quant=["block", "head"])
    assert isinstance(q.conv, Int8Conv2d)
    assert isinstance(q.block[0], nn.Linear) and isinstance(q.block[2], nn.Linear) and isinstance(q.head, nn.Linear)
    q = quant_post_dynamic(model, skip_quant="block.2")
    assert isinstance(q.block[0], Int8Linear) and isinstance(q.block[2], nn.Linear)
    model.conv.skip_quant = True  # PaddleSlim's attribute
    q = quant_post_dynamic(model)
    assert isinstance(q.conv, nn.Conv2d) and isinstance(q.head, Int8Linear)


# ---------------------------------------------------------------------------------------------------------
# the math
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("weight_quantize_type", ["channel_wise_abs_max", "abs_max"])
def test_weight_quantization_matches_spec(bits, weight_quantize_type):
    w = torch.randn(24, 7, 3, 3) * torch.linspace(0.01, 2.0, 24).reshape(-1, 1, 1, 1)
    w[5] = 0.0  # an all-zero channel gets scale 1 and codes 0
    q, scale = quantize_weight_symmetric(w, bits, weight_quantize_type)
    q_ref, scale_ref = spec_weight_quant(w.numpy(), bits, weight_quantize_type == "channel_wise_abs_max")
    zero = scale_ref == 0
    np.testing.assert_array_equal(scale.numpy()[~zero], scale_ref[~zero])
    assert np.all(scale.numpy()[zero] == 1.0)
    np.testing.assert_array_equal(q.numpy()[~zero], q_ref[~zero])
    assert not q[5].any()


def test_int16_linear_is_exact_dequantize_then_float():
    lin = nn.Linear(96, 40)
    q = quant_post_dynamic(nn.Sequential(lin), weight_bits=16)[0]
    assert q.weight_int16.dtype == torch.int16
    q_ref, scale_ref = spec_weight_quant(lin.weight.detach().numpy(), 16, True)
    np.testing.assert_array_equal(q.weight_int16.numpy(), q_ref)
    w_deq = torch.from_numpy(q_ref.astype(np.float32) * scale_ref.reshape(-1, 1))
    x = torch.randn(5, 3, 96)
    with torch.no_grad():
        assert torch.equal(q(x), F.linear(x, w_deq, lin.bias))
        # Derived bound against the float layer: |W - W^| <= scale / 2 per element, so
        # |y - y^| <= (scale / 2) * ||x||_1, plus float32 rounding of the two dot products.
        err = (q(x) - lin(x)).abs()
        bound = (x.abs().sum(-1, keepdim=True) * (torch.from_numpy(scale_ref) / 2)
                 + 4 * 96 * EPS * (x.abs() @ lin.weight.abs().t()) + 1e-7)
    assert bool((err <= bound).all())
    assert float(err.max()) < 1e-3  # int16 is a near-lossless storage format


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_int16_conv(padding_mode):
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2, padding_mode=padding_mode)
    q = WeightOnlyInt16Conv2d.from_float(conv)
    x = torch.randn(2, 6, 11, 9)
    _, scale = spec_weight_quant(conv.weight.detach().numpy(), 16, True)
    with torch.no_grad():
        ref = conv._conv_forward(x, q.dequantized_weight(), conv.bias)
        assert torch.equal(q(x), ref)
        err = (q(x) - conv(x)).abs()
        xin = F.pad(x, [1, 1, 1, 1], mode=padding_mode) if padding_mode != "zeros" else F.pad(x, [1, 1, 1, 1])
        l1 = F.conv2d(xin.abs(), torch.ones_like(conv.weight), stride=2, groups=2)  # ||x patch||_1 per output
        bound = l1 * torch.from_numpy(scale).reshape(1, -1, 1, 1) / 2 + 4 * 27 * EPS * F.conv2d(
            xin.abs(), conv.weight.abs(), stride=2, groups=2) + 1e-7
    assert bool((err <= bound).all())


@pytest.mark.parametrize("weight_quantize_type", ["channel_wise_abs_max", "abs_max"])
def test_int8_linear_within_derived_bound(weight_quantize_type):
    lin = nn.Linear(200, 48)
    q = quant_post_dynamic(nn.Sequential(lin), weight_quantize_type=weight_quantize_type)[0]
    assert isinstance(q, Int8Linear) and q.weight_int8.dtype == torch.int8 and q.dynamic
    x = torch.randn(17, 200) + 0.3
    with torch.no_grad():
        y, y_ref = q(x), lin(x)
    # Weights: |W - W^| <= s_w / 2. Activations (per row, asymmetric over [min, max]): the step is
    # s_x = (max - min) / 255 and the zero point's rounding can add half a step at the ends: |x - x^| <= s_x.
    # |y - y^| <= s_x * ||W_n||_1 + (s_w[n] / 2) * (||x||_1 + K s_x) + float rounding.
    w = lin.weight.detach()
    s_w = q.weight_scale
    lo = torch.clamp(x.min(1).values, max=0)
    hi = torch.clamp(x.max(1).values, min=0)
    s_x = ((hi - lo) / 255).unsqueeze(1)
    bound = (s_x * w.abs().sum(1) + s_w / 2 * (x.abs().sum(1, keepdim=True) + 200 * s_x)
             + 8 * 200 * EPS * (x.abs() @ w.abs().t()) + 1e-6)
    err = (y - y_ref).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    # and the bound is not vacuous: the observed relative error is that of 8-bit quantization
    assert float(err.norm() / y_ref.norm()) < 0.02


def test_int8_conv_within_derived_bound():
    conv = nn.Conv2d(8, 16, 3, padding=1).eval()
    q = quant_post_dynamic(nn.Sequential(conv))[0]
    assert isinstance(q, Int8Conv2d) and q.dynamic
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        y, y_ref = q(x), conv(x)
    s_x = (float(x.max().clamp(min=0)) - float(x.min().clamp(max=0))) / 255  # per tensor for Conv2d
    xin = F.pad(x, [1, 1, 1, 1])
    l1 = F.conv2d(xin.abs(), torch.ones_like(conv.weight))
    w_l1 = conv.weight.detach().abs().sum((1, 2, 3)).reshape(1, -1, 1, 1)
    s_w = q.weight_scale.reshape(1, -1, 1, 1)
    k = 8 * 9
    bound = s_x * w_l1 + s_w / 2 * (l1 + k * s_x) + 8 * k * EPS * F.conv2d(xin.abs(), conv.weight.abs()) + 1e-6
    assert bool(((y - y_ref).abs() <= bound).all())


# ---------------------------------------------------------------------------------------------------------
# state_dict round trip
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_bits", [8, 16])
def test_state_dict_round_trip_bit_exact(weight_bits):
    torch.manual_seed(1)
    q = quant_post_dynamic(Net().eval(), weight_bits=weight_bits)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh = quant_post_dynamic(Net().eval(), weight_bits=weight_bits)  # different random weights
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        before = fresh(x)
        fresh.load_state_dict(torch.load(buf))
        after, want = fresh(x), q(x)
    assert not torch.equal(before, want)
    assert torch.equal(after, want)
    key = "head.weight_int8" if weight_bits == 8 else "head.weight_int16"
    assert q.state_dict()[key].dtype == (torch.int8 if weight_bits == 8 else torch.int16)


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------


def test_errors():
    model = Net().eval()
    with pytest.raises(ValueError, match="weight_bits must be 8 or 16; got 4"):
        quant_post_dynamic(model, weight_bits=4)
    with pytest.raises(ValueError, match="weight_quantize_type must be one of"):
        quant_post_dynamic(model, weight_quantize_type="moving_average_abs_max")
    with pytest.raises(ValueError, match="quantizable_layer_type entries must be 'Linear' or 'Conv2d'"):
        quant_post_dynamic(model, quantizable_layer_type=("LSTM",))
    with pytest.raises(ValueError, match="quantizable_layer_type is empty"):
        quant_post_dynamic(model, quantizable_layer_type=())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        quant_post_dynamic({"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="skip_quant names 'blok'"):
        quant_post_dynamic(model, skip_quant=["blok"])
    with pytest.raises(TypeError, match="skip_quant must hold module names"):
        quant_post_dynamic(model, skip_quant=[3])
    reflect = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\) cannot be converted to int8.*padding_mode='reflect'"):
        quant_post_dynamic(reflect)
    assert isinstance(quant_post_dynamic(reflect, weight_bits=16)[0], WeightOnlyInt16Conv2d)
    bad = nn.Linear(3, 2)
    with torch.no_grad():
        bad.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quant_post_dynamic(bad, weight_bits=16)
    with pytest.raises(TypeError, match="x must be a float32 tensor"):
        quant_post_dynamic(nn.Linear(3, 2), weight_bits=16)(torch.zeros(1, 3, dtype=torch.float64))
