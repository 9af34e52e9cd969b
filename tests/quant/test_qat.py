"""QAT (pyslim.quant.qat) on real MNIST: accuracy after convert to the int8 kernels, PACT, layer swapping,
abs_max variants, conv+BN folding, save/load round trip, config errors; plus the fake-quant modules' math."""

import copy
import math

import pytest
import torch
from torch import nn

from pyslim.quant import nn as qnn
from pyslim.quant.qat import QAT, QuantedConv2d, QuantedLinear, fuse_conv_bn
from pyslim.quant.quanters import (
    PACT,
    FakeQuantAbsMax,
    FakeQuantChannelWiseAbsMax,
    FakeQuantMovingAverageAbsMax,
    pact_param_groups,
)

QUANTIZED_LAYERS = ["features.0", "features.4", "features.8", "classifier.1", "classifier.3"]


# ---- local helpers (conftest helpers cannot be imported under --import-mode=importlib) ----


def _accuracy(model, x, y, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def _predictions(model, x, batch=1000):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def _finetune(model, x, y, steps, optimizer, batch=128, seed=1):
    """``steps`` minibatches of ``batch``; returns the per-step losses."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)
    model.train()
    losses = []
    for step in range(steps):
        idx = perm[step * batch:(step + 1) * batch]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _loss(model, x, y):
    model.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def _calibrate(model, x, batches=20, batch=128):
    """Runs batches with only the fake-quant modules in training mode (BN statistics untouched)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, FakeQuantMovingAverageAbsMax):
            m.train()
    with torch.no_grad():
        for i in range(batches):
            model(x[i * batch:(i + 1) * batch])
    model.eval()
    return model


def _reference_fake_quant(x, scale, bits=8):
    """PaddleSlim's symmetric quant-dequant, round half away from zero, scale broadcastable to x."""
    bin_cnt = 2 ** (bits - 1) - 1
    v = bin_cnt * torch.clamp(x, -scale, scale) / scale
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return q * scale / bin_cnt


# ---- end-to-end on MNIST ----


@pytest.mark.slow
def test_qat_defaults_int8_accuracy_within_0p3_of_fp32(mnist, mnist_fp32):
    x_train, y_train, x_test, y_test = mnist
    fp32_model, fp32_acc = mnist_fp32
    model = copy.deepcopy(fp32_model)
    quanter = QAT()
    assert quanter.quantize(model) is model
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    _finetune(model, x_train, y_train, steps=150, optimizer=opt)
    qat_acc = _accuracy(model, x_test, y_test)
    int8_model = quanter.convert(model)
    kinds = {name: type(m) for name, m in int8_model.named_modules() if name in QUANTIZED_LAYERS}
    assert kinds == {n: (qnn.Int8Linear if n.startswith("classifier") else qnn.Int8Conv2d) for n in QUANTIZED_LAYERS}
    int8_acc = _accuracy(int8_model, x_test, y_test)
    print(f"fp32 {fp32_acc:.2f}%  QAT fake-quant {qat_acc:.2f}%  int8 {int8_acc:.2f}%")
    assert int8_acc >= fp32_acc - 0.3, (fp32_acc, qat_acc, int8_acc)
    # The int8 model realizes the simulated one: top-1 agrees on nearly every test image.
    agree = float((_predictions(int8_model, x_test) == _predictions(model, x_test)).float().mean())
    assert agree >= 0.995, agree
    # The activation scale of each int8 layer is the learned moving-average threshold / 127.
    for name in QUANTIZED_LAYERS:
        t = float(model.get_submodule(name).activation_quanter.scale)
        assert float(int8_model.get_submodule(name).act_scale) == pytest.approx(t / 127, rel=1e-6)
        assert int(int8_model.get_submodule(name).act_zero_point) == 0
    # convert leaves the QAT model alone
    assert isinstance(model.features[0], QuantedConv2d)


@pytest.mark.slow
def test_pact_trains_and_int8_within_1_point(mnist, mnist_fp32):
    x_train, y_train, x_test, y_test = mnist
    fp32_model, fp32_acc = mnist_fp32
    model = copy.deepcopy(fp32_model)
    quanter = QAT({"activation_preprocess_type": "PACT"})
    quanter.quantize(model)
    pacts = [m for m in model.modules() if isinstance(m, PACT)]
    assert len(pacts) == len(QUANTIZED_LAYERS)
    assert not any(isinstance(m, FakeQuantMovingAverageAbsMax) for m in model.modules())
    assert all(float(p.alpha.detach()) == 20.0 for p in pacts)  # PaddleSlim dygraph v2.0 initial value
    groups = pact_param_groups(model, lr=1e-4)
    assert groups[1]["lr"] == pytest.approx(0.1) and len(groups[1]["params"]) == len(pacts)
    opt = torch.optim.Adam(groups, lr=1e-4)
    probe_x, probe_y = x_train[-2000:], y_train[-2000:]  # a fixed probe set, evaluated in eval mode
    before = _loss(model, probe_x, probe_y)
    losses = _finetune(model, x_train, y_train, steps=100, optimizer=opt)
    after = _loss(model, probe_x, probe_y)
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    alphas = [float(p.alpha.detach()) for p in pacts]
    assert after < before, (before, after)
    assert any(abs(a - 20.0) > 0.5 for a in alphas), alphas  # alpha is learned, with the 1000x lr
    int8_model = quanter.convert(model)
    for name, pact in zip(QUANTIZED_LAYERS, pacts):
        assert float(int8_model.get_submodule(name).act_scale) == pytest.approx(abs(float(pact.alpha.detach())) / 127, rel=1e-6)
    int8_acc = _accuracy(int8_model, x_test, y_test)
    print(f"PACT: held-out loss {before:.4f} -> {after:.4f}, train loss {first:.3f} -> {last:.3f}, alphas {[round(a, 2) for a in alphas]}, int8 {int8_acc:.2f}% "
          f"(fp32 {fp32_acc:.2f}%)")
    assert int8_acc >= fp32_acc - 1.0, (fp32_acc, int8_acc)


def test_abs_max_variants_convert_and_keep_accuracy(mnist, mnist_fp32):
    _, _, x_test, y_test = mnist
    fp32_model, _ = mnist_fp32
    model = copy.deepcopy(fp32_model)
    quanter = QAT({"weight_quantize_type": "abs_max", "activation_quantize_type": "abs_max"})
    quanter.quantize(model)
    for name in QUANTIZED_LAYERS:
        layer = model.get_submodule(name)
        assert type(layer.weight_quanter) is FakeQuantAbsMax and type(layer.activation_quanter) is FakeQuantAbsMax
    x = x_test[:2000]
    sim_acc = _accuracy(model, x, y_test[:2000])
    int8_model = quanter.convert(model)
    for name in QUANTIZED_LAYERS:
        layer = int8_model.get_submodule(name)
        assert layer.dynamic  # abs_max activations are computed from each input, at inference too
        assert torch.all(layer.weight_scale == layer.weight_scale[0])  # one scale per tensor
    int8_acc = _accuracy(int8_model, x, y_test[:2000])
    ref_acc = _accuracy(fp32_model, x, y_test[:2000])
    assert abs(sim_acc - ref_acc) <= 1.0 and abs(int8_acc - ref_acc) <= 1.0, (ref_acc, sim_acc, int8_acc)


def test_abs_max_layer_matches_reference_math():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    model = nn.Sequential(lin)
    QAT({"weight_quantize_type": "abs_max", "activation_quantize_type": "abs_max"}).quantize(model)
    x = torch.randn(4, 16) * 3
    got = model(x)
    want = nn.functional.linear(_reference_fake_quant(x, x.abs().max()),
                                _reference_fake_quant(lin.weight, lin.weight.abs().max()), lin.bias)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # channel-wise weights: one scale per output row
    model = nn.Sequential(nn.Linear(16, 8))
    QAT().quantize(model)
    w = model[0].weight
    wq = model[0].weight_quanter(w)
    torch.testing.assert_close(wq, _reference_fake_quant(w, w.abs().amax(1, keepdim=True)), rtol=0, atol=1e-6)
    assert model[0].weight_quanter.scale.shape == (8,)


# ---- layer swapping ----


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 16, 1, groups=2)
        self.skipped_by_name = nn.Conv2d(16, 16, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
        self.aux = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
        self.flagged = nn.Linear(10, 10)
        self.flagged.skip_quant = True

    def forward(self, x):
        x = self.skipped_by_name(self.grouped(self.depthwise(self.stem(x))))
        return self.flagged(self.aux(self.head(x)))


def test_quantize_swaps_conv_depthwise_grouped_linear_and_respects_skips():
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        ref = model(x)
    params = {name: p for name, p in model.named_parameters()}
    untouched = {name: model.get_submodule(name) for name in ("skipped_by_name", "aux", "aux.0", "aux.1", "flagged")}
    out = QAT({"skip_quant": ["skipped_by_name", "aux"]}).quantize(model)
    assert out is model
    for name in ("stem", "depthwise", "grouped"):
        assert type(model.get_submodule(name)) is QuantedConv2d
    assert model.depthwise.groups == 8 and model.grouped.groups == 2
    for name in ("head.1", "head.3"):
        assert type(model.get_submodule(name)) is QuantedLinear
    for name, module in untouched.items():
        assert model.get_submodule(name) is module
    # the same Parameter objects: an optimizer built before quantize() still trains them
    assert {name: p for name, p in model.named_parameters()} == params
    # the quantized forward stays close to the float one (8-bit noise, not garbage)
    with torch.no_grad():
        got = model(x)
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 1e-3
    # only Linear when asked
    model2 = _Net()
    QAT({"quantizable_layer_type": ["Linear"]}).quantize(model2)
    assert type(model2.stem) is nn.Conv2d and type(model2.head[1]) is QuantedLinear
    with pytest.raises(ValueError, match="already quantized"):
        QAT().quantize(model)


def test_depthwise_and_grouped_convert_match_qat_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 8, 1, groups=4))
    quanter = QAT()
    quanter.quantize(model)
    x = torch.rand(8, 4, 10, 10)
    _calibrate(model, x, batches=1, batch=8)
    int8_model = quanter.convert(model)
    assert int8_model[2].depthwise and int8_model[4].groups == 4
    with torch.no_grad():
        want, got = model(x), int8_model(x)
    # Same int8 grid; differences come only from ties/half-to-even rounding in the kernels' activation quantizer.
    assert float((got - want).abs().max()) <= 0.02 * float(want.abs().max())


# ---- conv + BN folding ----


def test_fuse_conv_bn_equals_unfused_in_float(mnist, mnist_fp32):
    _, _, x_test, _ = mnist
    fp32_model, _ = mnist_fp32
    model = copy.deepcopy(fp32_model).eval()
    x = x_test[:256]
    with torch.no_grad():
        ref = model(x)
        fused = fuse_conv_bn(copy.deepcopy(model)).eval()
        got = fused(x)
    assert isinstance(fused.features[1], nn.Identity) and isinstance(fused.features[5], nn.Identity)
    assert fused.features[8].bias is not None
    # float32 re-association only: a few ulps of the activations' magnitude
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    quanted = QAT({"fuse_conv_bn": True}).quantize(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in quanted.modules())
    assert type(quanted.features[0]) is QuantedConv2d


def test_fuse_conv_bn_only_folds_sequential_neighbours():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    m = nn.Sequential(Custom(), nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU()))
    with torch.no_grad():
        m[1][1].running_mean.uniform_(-1, 1)
        m[1][1].running_var.uniform_(0.5, 2)
        m[1][1].weight.uniform_(0.5, 2)
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
    fuse_conv_bn(m)
    assert isinstance(m[0].bn, nn.BatchNorm2d)  # custom forward: left alone
    assert isinstance(m[1][1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


# ---- save / load ----


def test_save_quantized_model_and_reload_state_dict_gives_identical_outputs(tmp_path, mnist, mnist_fp32):
    x_train, _, x_test, _ = mnist
    fp32_model, _ = mnist_fp32
    quanter = QAT()
    model = _calibrate(quanter.quantize(copy.deepcopy(fp32_model)), x_train)
    path = str(tmp_path / "mnist_qat")
    converted = quanter.save_quantized_model(model, path, x_test[:1])
    assert (tmp_path / "mnist_qat.onnx").stat().st_size > 0
    state = torch.load(path + ".pt")
    assert state["features.0.weight_int8"].dtype == torch.int8
    # a fresh, differently initialized skeleton
    skeleton = copy.deepcopy(fp32_model)
    for m in skeleton.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    reloaded = quanter.convert(QAT().quantize(skeleton))
    x = x_test[:500]
    with torch.no_grad():
        assert not torch.equal(reloaded(x), converted(x))
        reloaded.load_state_dict(state)
        assert torch.equal(reloaded(x), converted(x))
        # and the state_dict of a QAT model (buffers included) restores the simulated model exactly
        qat_state = model.state_dict()
        assert "features.0.activation_quanter.accum" in qat_state
        again = QAT().quantize(copy.deepcopy(fp32_model))
        again.load_state_dict(qat_state)
        assert torch.equal(again.eval()(x), model(x))


# ---- quanter modules ----


def test_moving_average_quanter_matches_paddle_formula_and_freezes_in_eval():
    q = FakeQuantMovingAverageAbsMax(moving_rate=0.9)
    assert float(q.scale) == pytest.approx(0.001) and float(q.state) == 1 and float(q.accum) == 1
    torch.manual_seed(0)
    state, accum = 1.0, 1.0
    for _ in range(5):
        x = torch.randn(64) * 4
        y = q(x)
        state, accum = 0.9 * state + 1, 0.9 * accum + float(x.abs().max())
        assert float(q.scale) == pytest.approx(accum / state, rel=1e-6)
        torch.testing.assert_close(y, _reference_fake_quant(x, q.scale), rtol=0, atol=1e-6)
    q.eval()
    frozen = q.state_dict()
    frozen = {k: v.clone() for k, v in frozen.items()}
    q(torch.randn(64) * 100)
    assert all(torch.equal(frozen[k], v) for k, v in q.state_dict().items())
    # gradients pass straight through (PaddleSlim's STE)
    x = torch.randn(10, requires_grad=True)
    q(x * 50).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((10,), 50.0))


def test_pact_module_clips_and_quantizes_on_alpha_grid_and_learns_alpha():
    pact = PACT(init_value=2.0)
    x = torch.tensor([-5.0, -1.0, 0.3, 1.99, 7.0])
    y = pact(x)
    torch.testing.assert_close(y, _reference_fake_quant(x, torch.tensor(2.0)), rtol=0, atol=1e-6)
    y.sum().backward()
    assert pact.alpha.grad is not None and math.isfinite(float(pact.alpha.grad))
    # the clipped-above and clipped-below elements cancel; only the rounding term remains (|.| <= n / 2 / 127)
    assert abs(float(pact.alpha.grad)) <= 3 * 0.5 / 127 + 1e-6
    state = pact.state_dict()
    assert "alpha" in state
    with pytest.raises(ValueError, match="init_value"):
        PACT(init_value=0)


def test_channel_wise_quanter_state_dict_round_trip():
    q = FakeQuantChannelWiseAbsMax(axis=0)
    q(torch.randn(6, 3))
    fresh = FakeQuantChannelWiseAbsMax(axis=0)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.scale, q.scale) and fresh.scale.shape == (6,)


# ---- configuration errors ----


@pytest.mark.parametrize("key, value", [
    ("weight_quantize_type", "range_abs_max"),
    ("activation_quantize_type", "channel_wise_abs_max"),
    ("weight_bits", 1),
    ("activation_bits", "8"),
    ("moving_rate", 1.0),
    ("window_size", 0),
    ("quantizable_layer_type", ["Conv2d", "BatchNorm2d"]),
    ("quantizable_layer_type", "Linear"),
    ("weight_preprocess_type", "LSQ"),
    ("activation_preprocess_type", "pact"),
    ("fuse_conv_bn", "yes"),
    ("skip_quant", "fc"),
    ("onnx_format", False),
])
def test_bad_config_values_raise_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        QAT({key: value})


def test_other_config_errors():
    with pytest.raises(ValueError, match="weight_quantise_type"):
        QAT({"weight_quantise_type": "abs_max"})
    with pytest.raises(TypeError, match="config"):
        QAT(["abs_max"])
    with pytest.raises(ValueError, match="skip_quant"):
        QAT({"skip_quant": ["no.such.layer"]}).quantize(nn.Sequential(nn.Linear(2, 2)))
    four_bit = QAT({"weight_bits": 4})
    model = four_bit.quantize(nn.Sequential(nn.Linear(4, 4)))
    model(torch.randn(2, 4))  # 4-bit training works
    with pytest.raises(ValueError, match="weight_bits"):
        four_bit.convert(model)
    # PaddleSlim's defaults
    cfg = QAT().config
    assert cfg["weight_quantize_type"] == "channel_wise_abs_max"
    assert cfg["activation_quantize_type"] == "moving_average_abs_max"
    assert (cfg["weight_bits"], cfg["activation_bits"], cfg["moving_rate"], cfg["window_size"]) == (8, 8, 0.9, 10000)
    assert cfg["quantizable_layer_type"] == ["Conv2d", "Linear"] and cfg["fuse_conv_bn"] is False
    assert QAT({"quantizable_layer_type": ["Conv2D"]}).config["quantizable_layer_type"] == ["Conv2d"]
