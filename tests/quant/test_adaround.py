"""AdaRound: weights rounded down or up (never further) on quantize_weight's grid so that the layer output on
sampled calibration inputs moves less than with nearest rounding; patch sampling; the PTQ option."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyslim.quant.adaround import adaround_weight, sample_conv_inputs
from pyslim.quant.nn import Int8Conv2d, quantize_weight
from pyslim.quant.ptq import quant_post_static


def _rel_err(x, w, q, scale, groups=1):
    cout = w.shape[0]
    wq = (q.float().reshape(cout, -1) * scale.reshape(-1, 1))
    xg = x.reshape(x.shape[0], groups, -1)
    ref = torch.einsum("ngk,gok->ngo", xg, w.reshape(groups, cout // groups, -1))
    out = torch.einsum("ngk,gok->ngo", xg, wq.reshape(groups, cout // groups, -1))
    return float((out - ref).pow(2).mean() / ref.pow(2).mean())


@pytest.mark.parametrize("groups", [1, 4])
def test_adaround_rounds_each_weight_down_or_up_and_reduces_output_error(groups):
    g = torch.Generator().manual_seed(0)
    cout, k = 32, 48
    w = torch.randn(cout, k, generator=g)
    mix = torch.randn(groups * k, groups * k, generator=g) * 0.3
    x = torch.randn(1024, groups * k, generator=g) @ mix  # correlated inputs, as real activations are
    q, scale = adaround_weight(w, x, groups=groups, iterations=300)
    q_near, scale_near = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and torch.equal(scale, scale_near)
    ratio = w / scale.reshape(-1, 1)
    assert bool(((q.float() - ratio).abs() < 1.0).all())  # floor or ceil of W / s
    assert int(q.abs().max()) <= 127
    assert _rel_err(x, w, q, scale, groups) < 0.95 * _rel_err(x, w, q_near, scale, groups)


def test_adaround_conv_weight_and_errors():
    w = torch.randn(8, 2, 3, 3)  # a grouped conv weight, groups = 4 over 8 input channels
    x = torch.randn(512, 4 * 2 * 9)
    q, scale = adaround_weight(w, x, groups=4, iterations=20)
    assert q.shape == w.shape and scale.shape == (8,)
    with pytest.raises(ValueError, match="inputs must be"):
        adaround_weight(w, torch.randn(10, 5), groups=4)
    with pytest.raises(ValueError, match="iterations"):
        adaround_weight(w, x, groups=4, iterations=0)


def test_sampled_patches_are_im2col_columns():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    x = torch.randn(2, 3, 9, 8)
    cols = F.unfold(F.pad(x, (0, 0, 1, 1)), (3, 2), dilation=(1, 2), stride=(2, 1))  # (N, C*KH*KW, L)
    all_cols = cols.permute(0, 2, 1).reshape(-1, cols.shape[1])
    patches = sample_conv_inputs(x, conv, 50, generator=torch.Generator().manual_seed(3))
    assert patches.shape == (50, 3 * 3 * 2)
    for p in patches:
        assert bool((all_cols - p).abs().amax(1).min() == 0)
    # the extra pad goes on first, like the layer's explicit pad
    padded = sample_conv_inputs(x, conv, 10, pad=(1, 0, 0, 0))
    assert padded.shape == (10, 18)


def test_quant_post_static_adaround():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()
    data = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    with pytest.raises(ValueError, match="round_type must be"):
        quant_post_static(model, data, round_type="stochastic", progress=False)
    near = quant_post_static(model, data, progress=False)
    ada = quant_post_static(model, data, progress=False, round_type="adaround", bias_correction=True)
    assert isinstance(ada[0], Int8Conv2d) and isinstance(ada[2], Int8Conv2d) and ada[2].depthwise
    for i in (0, 2, 5):  # every layer: same grid, each weight within one step of nearest rounding
        assert torch.equal(ada[i].weight_scale, near[i].weight_scale)
        assert int((ada[i].weight_int8.int() - near[i].weight_int8.int()).abs().max()) <= 1
    assert any(not torch.equal(ada[i].weight_int8, near[i].weight_int8) for i in (0, 2, 5))
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        err_ada = float((ada(x) - ref).pow(2).mean())
        err_near = float((near(x) - ref).pow(2).mean())
    assert err_ada < 1.5 * err_near and err_ada < 0.01 * float(ref.pow(2).mean())
