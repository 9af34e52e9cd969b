"""optimize_model: conv+BN folding and ReLU/ReLU6 fusion found in an fx trace (custom forwards, shared
activation modules), and int8 hand-off between layers (set_output_quant), which must not change a single
output value."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyslim import ops
from pyslim.quant.fuse import find_activation_fusions_by_run, find_fusions, find_int8_chains, fold_batch_norms
from pyslim.quant.nn import Int8Conv2d, Int8Linear
from pyslim.quant.ptq import load_quantized_model, quant_post_static, quantized_layers, save_quantized_model


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


class Block(nn.Module):
    """MBConv-like: one ReLU6 module called twice, a BN-free projection into a residual add."""

    def __init__(self, c=8, e=24):
        super().__init__()
        self.expand = nn.Conv2d(c, e, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(e)
        self.dw = nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False)
        self.bn1 = nn.BatchNorm2d(e)
        self.act = nn.ReLU6()
        self.project = nn.Conv2d(e, c, 1)

    def forward(self, x):
        y = self.act(self.bn0(self.expand(x)))
        y = self.act(self.bn1(self.dw(y)))
        return x + self.project(y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.ReLU()
        self.block = Block()
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.block(self.stem_act(self.stem_bn(self.stem(x))))
        return self.head(x.flatten(1))


def make_net():
    torch.manual_seed(0)
    return _randomize_bn(Net()).eval()


def data(n=4):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(8, 3, 8, 8, generator=g) for _ in range(n)]


def test_find_fusions_follows_custom_forward_and_shared_activation():
    plan = find_fusions(make_net())
    assert plan.traced
    assert sorted(plan.conv_bn) == [("block.dw", "block.bn1"), ("block.expand", "block.bn0"), ("stem", "stem_bn")]
    assert plan.activation == {"stem": ("relu", "stem_act"), "block.expand": ("relu6", "block.act"),
                               "block.dw": ("relu6", "block.act")}


def test_fold_batch_norms_in_place_keeps_the_output():
    net = make_net()
    folded = copy.deepcopy(net)
    plan = fold_batch_norms(folded)
    assert plan.conv_bn == find_fusions(net).conv_bn and len(plan.conv_bn) == 3
    for _, bn_name in plan.conv_bn:
        assert isinstance(folded.get_submodule(bn_name), nn.Identity)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = data(1)[0]
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_no_fusion_where_it_would_change_another_consumer():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.b = nn.Conv2d(4, 4, 1)
            self.act = nn.ReLU()
            self.c = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.a(x)
            z = self.bn(y) + y          # the conv output has a second user: no BN folding
            w = self.act(self.b(z))     # fine on its own, but ...
            return F.relu(self.c(w)) + self.act(z)  # ... self.act is also called after an add; F.relu is functional

    plan = find_fusions(Branchy().eval())
    assert plan.conv_bn == [] and plan.activation == {}


def test_untraceable_model_is_left_unfused(caplog):
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return self.conv(x)

    with caplog.at_level(logging.WARNING, logger="pyslim.quant.fuse"):
        plan = find_fusions(Dynamic().eval())
    assert not plan.traced and plan.conv_bn == [] and "could not trace" in caplog.text
    q = quant_post_static(Dynamic().eval(), data(), progress=False, optimize_model=True)
    assert isinstance(q.bn, nn.BatchNorm2d) and isinstance(q.conv, Int8Conv2d)


def test_optimize_model_structure_accuracy_and_round_trip(tmp_path):
    net = make_net()
    plain = quant_post_static(net, data(), progress=False)
    fused = quant_post_static(net, data(), progress=False, optimize_model=True)
    # BNs and activations folded away, the activations run in the kernels
    for name in ("stem_bn", "stem_act", "block.bn0", "block.bn1", "block.act"):
        assert isinstance(fused.get_submodule(name), nn.Identity), name
    assert fused.stem.fused_activation == "relu"
    assert fused.block.expand.fused_activation == "relu6" and fused.block.dw.fused_activation == "relu6"
    assert fused.block.project.fused_activation is None
    # int8 hand-off: stem feeds the block's add too (no), expand -> dw -> project are chained
    assert fused.stem.output_quant is None
    assert fused.block.expand.output_quant == (float(fused.block.dw.act_scale), -128)  # after ReLU6: unsigned grid
    assert fused.block.dw.output_quant == (float(fused.block.project.act_scale), -128)
    assert fused.block.project.output_quant is None and fused.head.output_quant is None
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        ref, y_plain, y_fused = net(x), plain(x), fused(x)
    scale = ref.abs().max()
    assert float((y_fused - ref).abs().max()) < 0.05 * float(scale)
    assert float((y_plain - ref).abs().max()) < 0.05 * float(scale)
    # save / load into the float architecture: identical outputs
    save_quantized_model(fused, str(tmp_path / "m"))
    loaded = load_quantized_model(net, str(tmp_path / "m"))
    assert quantized_layers(loaded) == quantized_layers(fused)
    with torch.no_grad():
        assert torch.equal(loaded(x), y_fused)


def test_int8_hand_off_is_bit_exact():
    fused = quant_post_static(make_net(), data(), progress=False, optimize_model=True)
    assert len(find_int8_chains(fused)) == 2
    unchained = copy.deepcopy(fused)
    for m in unchained.modules():
        if isinstance(m, (Int8Conv2d, Int8Linear)):
            m.set_output_quant(None)
    x = torch.randn(5, 3, 8, 8) * 3
    with torch.no_grad():
        assert torch.equal(fused(x), unchained(x))


@pytest.mark.parametrize("depthwise", [False, True])
def test_set_output_quant_is_the_quantize_op_on_the_float_output(depthwise):
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16 if depthwise else 1).eval()
    x = torch.randn(2, 16, 9, 7)
    x.view(-1)[::53] = float("nan")
    q = Int8Conv2d.from_float(conv, activation=(0.02, -3), fused_activation="relu6")
    y = q(x)
    q.set_output_quant((0.03, 5))
    y8 = q(x)
    assert y8.dtype == torch.int8
    assert torch.equal(y8, ops.quantize(y, torch.tensor(0.03), torch.tensor(5, dtype=torch.int32), dtype=torch.int8))
    # an int8 input is taken as quantized with the layer's own (static) scale
    x8 = ops.quantize(x, torch.tensor(0.02), torch.tensor(-3, dtype=torch.int32), dtype=torch.int8)
    assert torch.equal(q(x8), y8)


def test_int8_input_and_output_quant_errors():
    lin = Int8Linear.from_float(nn.Linear(8, 4))  # dynamic activations
    with pytest.raises(TypeError, match="quantizes its input dynamically"):
        lin(torch.zeros(2, 8, dtype=torch.int8))
    with pytest.raises(ValueError, match="needs a static activation scale"):
        lin.set_output_quant((0.1, 0))
    conv = Int8Conv2d.from_float(nn.Conv2d(4, 4, 1), activation=(0.1, 0))
    with pytest.raises(ValueError, match="quant must be"):
        conv.set_output_quant((0.0, 0))
    with pytest.raises(ValueError, match="quant must be"):
        conv.set_output_quant((0.1, 300))
    with pytest.raises(TypeError, match="float32"):
        conv(torch.zeros(1, 4, 3, 3, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------
# quant_post_dynamic(optimize_model=True): activations found by a run (no fx trace needed)
# ---------------------------------------------------------------------------------------------------------

class FFN(nn.Module):
    """Transformer-like: dense -> GELU module, one GELU module shared by two layers, a residual that reuses a
    layer's output (not fusable), a functional GELU (not fusable) and data-dependent control flow (fx fails)."""

    def __init__(self, d=32):
        super().__init__()
        self.up = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * d, d)
        self.side = nn.Linear(d, d)
        self.side_act = nn.ReLU()
        self.shared = nn.ReLU6()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.f = nn.Linear(d, d)

    def forward(self, x):
        h = self.down(self.act(self.up(x)))
        s = self.side(x)
        h = h + self.side_act(s) + s              # side's output has a second user: no fusion
        h = h + self.shared(self.a(h)) + self.shared(self.b(h))  # one module after two layers: both fuse
        if float(h.sum()) > -1e30:                # data-dependent: torch.fx cannot trace this model
            h = h + F.gelu(self.f(h))             # functional: stays as it is
        return h


def test_activation_fusions_found_by_a_run():
    torch.manual_seed(0)
    model = FFN().eval()
    x = torch.randn(4, 7, 32)
    assert not find_fusions(model).traced
    plan = find_activation_fusions_by_run(model, x)
    assert plan == {"up": ("gelu", "act"), "a": ("relu6", "shared"), "b": ("relu6", "shared")}
    assert find_activation_fusions_by_run(model, (x,)) == plan
    # an approximate GELU is not the kernel's
    model.act = nn.GELU(approximate="tanh")
    assert "up" not in find_activation_fusions_by_run(model, x)


def test_quant_post_dynamic_optimize_model_runs_gelu_in_the_kernel():
    from pyslim.quant.dynamic import quant_post_dynamic

    torch.manual_seed(0)
    model = FFN().eval()
    x = torch.randn(4, 7, 32)
    with pytest.raises(ValueError, match="needs example_inputs"):
        quant_post_dynamic(model, optimize_model=True)
    plain = quant_post_dynamic(model)
    fused = quant_post_dynamic(model, optimize_model=True, example_inputs=x)
    assert fused.up.fused_activation == "gelu" and isinstance(fused.act, nn.Identity)
    assert fused.a.fused_activation == "relu6" and fused.b.fused_activation == "relu6"
    assert isinstance(fused.shared, nn.Identity)
    assert fused.side.fused_activation is None and isinstance(fused.side_act, nn.ReLU)
    assert fused.f.fused_activation is None and fused.down.fused_activation is None
    with torch.no_grad():
        ref, y_plain, y_fused = model(x), plain(x), fused(x)
    scale = float(ref.abs().max())
    assert float((y_fused - ref).abs().max()) < 0.05 * scale
    assert float((y_fused - y_plain).abs().max()) < 0.02 * scale


def test_quant_post_static_falls_back_to_a_run_when_fx_cannot_trace():
    torch.manual_seed(0)
    model = FFN().eval()
    batches = [torch.randn(4, 7, 32) for _ in range(3)]
    q = quant_post_static(model, iter(batches), progress=False, optimize_model=True)  # a one-shot iterator
    assert q.up.fused_activation == "gelu" and isinstance(q.act, nn.Identity)
    assert q.a.fused_activation == "relu6" and isinstance(q.shared, nn.Identity)
    assert q.side.fused_activation is None
    x = torch.randn(4, 7, 32)
    with torch.no_grad():
        ref = model(x)
        assert float((q(x) - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_conv_gelu_is_fused_from_the_fx_trace():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    assert find_fusions(model).activation == {"0": ("gelu", "1")}
    q = quant_post_static(model, data(), progress=False, optimize_model=True)
    assert q[0].fused_activation == "gelu" and isinstance(q[1], nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        assert float((q(x) - ref).abs().max()) < 0.05 * float(ref.abs().max())
