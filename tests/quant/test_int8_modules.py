"""Int8Linear / Int8Conv2d: accuracy against the float module, state_dict round trips, torch.compile,
clear errors."""

import io

import pytest
import torch
from torch import nn

import pyslim
import pyslim.quant.nn as qnn
from pyslim.ops import reference as R


def rel_err(a, b):
    return float(((a - b).norm() / b.norm()).detach())


@pytest.mark.parametrize("wtype", ["channel_wise_abs_max", "abs_max"])
@pytest.mark.parametrize("activation", ["dynamic", (0.05, 3)])
def test_int8_linear_close_to_float(isa, wtype, activation):
    lin = nn.Linear(128, 48).eval()
    q = qnn.Int8Linear.from_float(lin, weight_quantize_type=wtype, activation=activation)
    x = torch.randn(4, 9, 128) * 2
    y, yf = q(x), lin(x)
    assert y.shape == yf.shape
    # int8 weights and activations: ~1 % relative error on Gaussian data.
    assert rel_err(y, yf) < 0.03


def test_int8_linear_matches_exact_reference(isa):
    lin = nn.Linear(96, 40).eval()
    q = qnn.Int8Linear.from_float(lin)
    x = torch.randn(7, 96)
    ref = R.linear_int8_dynamic(x, q.weight_int8, q.weight_scale, q.bias)
    assert torch.allclose(q(x), ref, rtol=1e-6, atol=1e-6)


CONVS = [nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16),
         nn.Conv2d(16, 32, 1), nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, groups=4),
         nn.Conv2d(16, 16, (3, 5), stride=(2, 1), padding=(1, 0), groups=16, bias=False)]


@pytest.mark.parametrize("index", range(len(CONVS)))
def test_int8_conv_close_to_float(isa, index):
    conv = CONVS[index].eval()
    q = qnn.Int8Conv2d.from_float(conv)
    x = torch.randn(2, 16, 13, 11)
    y, yf = q(x), conv(x)
    assert y.shape == yf.shape
    assert rel_err(y, yf) < 0.03
    xcl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(q(xcl), y)


@pytest.mark.parametrize("cin,kernel,stride,padding", [(3, 3, 2, 1), (3, 7, 2, 3), (1, 3, 1, 1), (2, (3, 5), 1, 2)])
@pytest.mark.parametrize("x_zp", [0, -9])
def test_int8_stem_with_padded_channels_matches_exact_reference(isa, threads, cin, kernel, stride, padding, x_zp):
    # 1-3 input channels: the module packs its weight with the channels zero-padded to 4 (the implicit-GEMM path
    # takes it); the result must be the exact reference's, i.e. the padding contributes nothing.
    torch.manual_seed(3)
    conv = nn.Conv2d(cin, 24, kernel, stride=stride, padding=padding).eval()
    x = torch.randn(2, cin, 23, 21)
    scale = float(x.abs().max()) / 127
    q = qnn.Int8Conv2d.from_float(conv, activation=(scale, x_zp))
    q._ensure_packed()
    from pyslim import _C, _native
    assert _C.packed_info(_native.capsule(q._packed))["k"] == q.kernel_size[0] * q.kernel_size[1] * 4
    xq = pyslim.ops.quantize(x.permute(0, 2, 3, 1).contiguous(), scale, x_zp, dtype=torch.int8)
    ref = R.conv2d_int8(xq, scale, x_zp, q.weight_int8, q.weight_scale, q.bias, q.stride, q.padding, q.dilation, 1)
    y = q(x)
    assert torch.allclose(y.permute(0, 2, 3, 1), ref, rtol=1e-6, atol=1e-5)


def test_state_dict_round_trip_is_bit_exact():
    torch.manual_seed(1)
    for make, x in ((lambda: qnn.Int8Linear.from_float(nn.Linear(32, 16), activation=(0.04, -5)), torch.randn(5, 32)),
                    (lambda: qnn.Int8Conv2d.from_float(nn.Conv2d(8, 12, 3, padding=1)), torch.randn(1, 8, 6, 6))):
        a = make()
        y = a(x)
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        b = make()  # different random float weights
        b.load_state_dict(torch.load(buf))
        assert torch.equal(b(x), y)
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k


def test_repacks_when_the_cpu_path_changes():
    usable = pyslim.native_info()["usable_isas"]
    lin = qnn.Int8Linear.from_float(nn.Linear(64, 64))
    x = torch.randn(3, 64)
    before = pyslim.active_isa()
    try:
        outs = []
        for isa in usable:
            pyslim.force_isa(isa)
            outs.append(lin(x))
        for o in outs[1:]:
            assert torch.allclose(o, outs[0], rtol=1e-6, atol=1e-6)
    finally:
        pyslim.force_isa(before)


def test_torch_compile():
    torch._dynamo.reset()
    model = nn.Sequential(qnn.Int8Conv2d.from_float(nn.Conv2d(3, 8, 3, padding=1)), nn.Flatten(),
                          qnn.Int8Linear.from_float(nn.Linear(8 * 6 * 6, 10))).eval()
    x = torch.randn(2, 3, 6, 6)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager")
    assert torch.allclose(compiled(x), eager, rtol=1e-6, atol=1e-6)


def test_module_errors():
    lin = qnn.Int8Linear.from_float(nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"x must end with in_features=8"):
        lin(torch.randn(2, 7))
    with pytest.raises(TypeError, match=r"x must be a float32 tensor"):
        lin(torch.randn(2, 8, dtype=torch.float64))
    lin.train()
    with pytest.raises(RuntimeError, match=r"inference module"):
        lin(torch.randn(2, 8))
    with pytest.raises(TypeError, match=r"linear must be a torch.nn.Linear"):
        qnn.Int8Linear.from_float(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"activation must be 'dynamic' or \(scale, zero_point\)"):
        qnn.Int8Linear.from_float(nn.Linear(8, 4), activation="static")
    with pytest.raises(ValueError, match=r"zero_point must be an int8 value"):
        qnn.Int8Linear.from_float(nn.Linear(8, 4), activation=(0.1, 200))
    conv = qnn.Int8Conv2d.from_float(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"x must be \(N, 3, H, W\)"):
        conv(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"smaller than the dilated kernel"):
        conv(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"padding_mode='zeros'"):
        qnn.Int8Conv2d.from_float(nn.Conv2d(3, 4, 3, padding_mode="reflect"))


@pytest.mark.parametrize("make,x", [
    (lambda: qnn.Int8Linear.from_float(nn.Linear(16, 8), activation=(0.04, 3)), torch.randn(5, 16)),
    (lambda: qnn.Int8Conv2d.from_float(nn.Conv2d(8, 4, 3), activation=(0.04, 3)), torch.randn(1, 8, 6, 6))])
def test_static_activation_changes_are_seen(make, x):
    # forward keeps the (scale, zero point) numbers between calls; an in-place change of the buffers, a
    # state_dict load and a replaced buffer must each reach the next call (references: copies never run before).
    import copy

    q = make().eval()
    fresh = copy.deepcopy(q)
    y0 = q(x)
    with torch.no_grad():
        q.act_scale.fill_(0.07)
        fresh.act_scale.fill_(0.07)
    y1 = q(x)
    assert torch.equal(y1, copy.deepcopy(fresh)(x)) and not torch.equal(y1, y0)
    with torch.no_grad():
        fresh.act_zero_point.fill_(120)  # clips x above (127 - 120) * 0.07: the outputs change
    q.load_state_dict(fresh.state_dict())
    y2 = q(x)
    assert torch.equal(y2, copy.deepcopy(fresh)(x)) and not torch.equal(y2, y1)
    q.act_scale = torch.tensor(0.04)  # a new buffer object
    with torch.no_grad():
        fresh.act_scale.fill_(0.04)
    assert torch.equal(q(x), copy.deepcopy(fresh)(x))
