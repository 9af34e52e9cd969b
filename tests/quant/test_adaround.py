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


def test_gram_form_optimises_the_same_objective_as_the_rows():
    # 16 rows < k = 32: the loss runs over the rows; the same rows three times (48 > k): through the Gram matrix.
    # Both objectives are equal, so the roundings agree up to float rounding of the steps.
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 32, generator=g)
    x = torch.randn(16, 32, generator=g)
    q_rows, scale = adaround_weight(w, x, iterations=200)
    q_gram, _ = adaround_weight(w, x.repeat(3, 1), iterations=200)
    assert float((q_rows == q_gram).float().mean()) >= 0.98
    assert _rel_err(x, w, q_gram, scale) == pytest.approx(_rel_err(x, w, q_rows, scale), rel=0.1)


def test_activation_aware_rounding_minds_the_clipped_outputs():
    # a ReLU6 layer whose channels have large weights and biases that push most outputs outside [0, 6]
    # (as batch-norm folding does): rounding for the output after ReLU6 beats rounding for the raw output there
    g = torch.Generator().manual_seed(4)
    cout, k = 32, 27
    w = torch.randn(cout, k, generator=g) * torch.linspace(0.2, 8.0, cout).reshape(-1, 1)
    bias = torch.randn(cout, generator=g) * 6.0
    x = torch.rand(2048, k, generator=g) * 6.0

    def err_after_relu6(q, scale):
        ref = torch.clamp(x @ w.t() + bias, 0, 6)
        out = torch.clamp(x @ (q.float() * scale.reshape(-1, 1)).t() + bias, 0, 6)
        return float((out - ref).pow(2).mean())

    q_raw, scale = adaround_weight(w, x, iterations=300, bias=bias)
    q_act, _ = adaround_weight(w, x, iterations=300, bias=bias, activation="relu6")
    q_near, _ = quantize_weight(w)
    assert err_after_relu6(q_act, scale) < 0.9 * err_after_relu6(q_raw, scale)
    assert err_after_relu6(q_act, scale) < 0.9 * err_after_relu6(q_near, scale)
    with pytest.raises(ValueError, match="activation"):
        adaround_weight(w, x, activation="tanh")
    with pytest.raises(ValueError, match="bias"):
        adaround_weight(w, x, bias=torch.zeros(3))


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
