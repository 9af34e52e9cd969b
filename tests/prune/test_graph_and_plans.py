"""PaddleSlim's pruning tests re-expressed for PyTorch (spec 1.2.2 / section 3) plus walker rules."""

import pytest
import torch
import torch.nn.functional as F
from prune_models import ConvFlattenLinear, PaddleResidualNet, conv_bn, randomize
from torch import nn

from pyslim.prune import (DependencyGraph, FPGMFilterPruner, L1NormFilterPruner, L2NormFilterPruner,
                          OptSlimFilterPruner, SlimFilterPruner, TracingError)

EXPECTED_RESIDUAL = {"conv1.0.weight": (4, 3, 3, 3), "conv2.0.weight": (4, 4, 3, 3), "conv3.0.weight": (8, 4, 3, 3),
                     "conv4.0.weight": (4, 8, 3, 3), "conv5.0.weight": (8, 4, 3, 3), "conv6.0.weight": (8, 8, 3, 3),
                     "transpose.weight": (8, 16, 2, 2)}


@pytest.mark.parametrize("cls", [L1NormFilterPruner, L2NormFilterPruner, FPGMFilterPruner, SlimFilterPruner,
                                 OptSlimFilterPruner])
def test_paddle_residual_graph_shapes(cls):
    """test_prune / test_fpgm_prune / test_slim_prune: conv4 at 0.5 and the transpose at 0.6 (skipped: its
    output is the model output)."""
    model = randomize(PaddleResidualNet())
    x = torch.randn(1, 3, 16, 16)
    pruner = cls(model, x)
    ratio = 0.5 if cls is not OptSlimFilterPruner else 0.2
    plan = pruner.prune_vars({"conv4.0.weight": ratio, "transpose.weight": 0.6})
    assert "transpose.weight" in plan.skipped and "model output" in plan.skipped["transpose.weight"]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in EXPECTED_RESIDUAL}
    if cls is OptSlimFilterPruner:   # energy rule: a different count, the same coupling
        c = shapes["conv1.0.weight"][0]
        assert 1 <= c < 8 and shapes["conv2.0.weight"] == (c, c, 3, 3) and shapes["conv4.0.weight"] == (c, 8, 3, 3)
    else:
        assert shapes == EXPECTED_RESIDUAL
    assert model(x).shape == (1, 16, 32, 32)
    # the pruned channels are identical across the coupled layers (same indices on both add branches)
    kept = plan.masks["conv1.0.weight"].keep
    for name in ("conv2.0.weight@0", "conv4.0.weight", "conv3.0.weight", "conv5.0.weight", "conv2.1.weight"):
        assert torch.equal(plan.masks[name].keep, kept), name


def test_paddle_group_param():
    graph = DependencyGraph(PaddleResidualNet(), torch.randn(1, 3, 16, 16))
    groups = graph.groups(["conv1.0.weight", "conv2.0.weight", "conv3.0.weight", "conv4.0.weight"])
    convs = [{e for e in g.entries() if e[0].endswith(".0.weight")} for g in groups]
    assert convs == [{("conv1.0.weight", 0), ("conv2.0.weight", 1), ("conv2.0.weight", 0), ("conv3.0.weight", 1),
                      ("conv4.0.weight", 0), ("conv5.0.weight", 1)},
                     {("conv3.0.weight", 0), ("conv4.0.weight", 1)}]
    bn = {e for e in groups[0].entries() if e[0].startswith("conv2.1")}
    assert bn == {("conv2.1.weight", 0), ("conv2.1.bias", 0), ("conv2.1.running_mean", 0), ("conv2.1.running_var", 0)}


def test_conv_flatten_linear_5400():
    model = ConvFlattenLinear()
    x = torch.randn(1, 3, 32, 32)
    ref_w = model.linear.weight.detach().clone()
    plan = L1NormFilterPruner(model, x).prune_vars({"conv.weight": 0.2})
    assert tuple(model.linear.weight.shape) == (5, 5400)        # Paddle's [5400, 5] is (in, out)
    assert model.linear.in_features == 5400 and model.conv.out_channels == 6
    pruned = plan.pruned_channels["conv.weight"]
    assert len(pruned) == 2
    keep_cols = [c * 900 + i for c in range(8) if c not in pruned for i in range(900)]
    assert torch.equal(model.linear.weight, ref_w[:, keep_cols])
    assert model(x).shape == (1, 5)


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.e = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        a1, a2 = torch.chunk(self.a(x), 2, dim=1)                   # channel chunk; a2 then reduced: blocked
        top, bottom = torch.split(self.c(x), [16, 16], dim=2)       # split along height: passes through
        y = self.d(torch.cat([top, bottom], dim=2))
        z = self.g(self.e(x))                                       # grouped conv: e prunable, g's output reduced
        w = torch.fft.fft(y).real                                   # unknown op: blocked
        return self.b(a1) + a2.sum() + w.sum() + z.sum()


def test_blocked_groups_are_refused_and_model_unchanged():
    model = SplitNet().eval()
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = L1NormFilterPruner(model, x)
    graph = pruner.graph
    # a2.sum() and z.sum() reduce over every axis, so the channels of a and g cannot shrink; the grouped
    # conv itself no longer blocks its producer e (pyslim prunes equal counts per conv group).
    assert "reduces over every axis" in graph.group("a.weight").blocked
    assert graph.group("e.weight").blocked is None
    assert "reduces over every axis" in graph.group("g.weight").blocked
    assert "fft" in graph.group("d.weight").blocked
    assert graph.group("c.weight").blocked is None                  # split along H passes through
    plan = pruner.prune_vars({"a.weight": 0.5, "e.weight": 0.5, "d.weight": 0.5, "c.weight": 0.5})
    assert set(plan.skipped) == {"a.weight", "d.weight"}
    assert model.c.out_channels == 4 and model.d.in_channels == 4
    assert model.e.out_channels == 4 and model.g.in_channels == 4 and model.g.groups == 4
    for k, v in model.state_dict().items():
        if not k.startswith(("c.", "d.", "e.", "g.")):
            assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="fft"):
        pruner.prune_vars({"d.weight": 0.5}, strict=True)
    model(x)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return y


def test_untraceable_model_raises_naming_the_cause():
    model = DataDependent()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TracingError) as info:
        L1NormFilterPruner(model, torch.randn(1, 3, 8, 8))
    msg = str(info.value)
    assert "torch.fx" in msg and "torch.export" in msg and "DataDependent" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 512))


def test_hard_coded_reshape_blocks():
    model = HardCodedView()
    g = DependencyGraph(model, torch.randn(1, 3, 8, 8))
    assert "hard-codes the size 512" in g.group("conv.weight").blocked


class SharedAndScale(nn.Module):
    """One conv called twice (shared weights) and a per-channel parameter used in arithmetic."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        y = self.shared(F.relu(self.shared(y))) * self.scale
        return self.head(y)


def test_shared_module_and_channel_parameter():
    model = SharedAndScale().eval()
    x = torch.randn(1, 3, 16, 16)
    pruner = L2NormFilterPruner(model, x)
    g = pruner.graph.group("stem.weight")
    assert ("shared.weight", 0) in g.entries() and ("scale", 1) in g.entries()  # stem couples through the loop
    pruner.prune_vars({"stem.weight": 0.25})
    assert model.scale.shape == (1, 6, 1, 1) and model.shared.weight.shape == (6, 6, 3, 3)
    assert model(x).shape == (1, 4, 16, 16)


def test_lazy_equals_physical_and_masks_survive_optimizer_steps():
    torch.manual_seed(0)
    model = randomize(PaddleResidualNet(with_transpose=False))
    x = torch.randn(2, 3, 16, 16)
    phys = randomize(PaddleResidualNet(with_transpose=False))
    phys.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lazy = L1NormFilterPruner(model, x, optimizer=opt)
    plan_l = lazy.prune_vars({"conv4.0.weight": 0.5, "conv3.0.weight": 0.25}, apply="lazy")
    plan_p = L1NormFilterPruner(phys, x).prune_vars({"conv4.0.weight": 0.5, "conv3.0.weight": 0.25})
    assert plan_l.pruned_channels == plan_p.pruned_channels
    with torch.no_grad():
        torch.testing.assert_close(model(x), phys(x), rtol=1e-5, atol=1e-5)
    zero_rows = [i for i in plan_l.pruned_channels["conv3.0.weight"]]
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        assert model.conv3[0].weight[zero_rows].abs().sum() == 0
    lazy.restore()
    assert not model.conv3[0]._forward_pre_hooks


def test_optimizer_state_is_pruned_and_restored():
    model = randomize(PaddleResidualNet(with_transpose=False)).train()
    x = torch.randn(2, 3, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).mean().backward()
    opt.step()
    w = model.conv3[0].weight
    before = {k: v.clone() for k, v in opt.state[w].items()}
    pruner = FPGMFilterPruner(model, x, optimizer=opt)
    pruner.prune_vars({"conv3.0.weight": 0.5})
    assert w.shape == (4, 8, 3, 3) and opt.state[w]["exp_avg"].shape == (4, 8, 3, 3)
    assert opt.state[model.conv4[0].weight]["exp_avg_sq"].shape == (8, 4, 3, 3)
    assert w.grad.shape == (4, 8, 3, 3)
    model(x).mean().backward()
    opt.step()   # training continues on the pruned model
    pruner.restore()
    assert model.conv3[0].weight is w and w.shape == (8, 8, 3, 3)
    assert all(torch.equal(opt.state[w][k], v) for k, v in before.items())


def test_align_rounds_kept_channels():
    model = randomize(PaddleResidualNet(with_transpose=False))
    pruner = L1NormFilterPruner(model, torch.randn(1, 3, 16, 16))
    pruner.prune_vars({"conv3.0.weight": 0.3}, align=4)     # 8 * 0.3 = 2.4 -> 2 pruned -> 6 kept -> 8
    assert model.conv3[0].out_channels == 8
    pruner.prune_vars({"conv5.0.weight": 0.6}, align=4)     # round(4.8) = 5 pruned -> 3 kept -> 4
    assert model.conv5[0].out_channels == 4


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_slim_needs_batchnorm():
    with pytest.raises(ValueError, match="needs a BatchNorm right after 'a.weight'"):
        SlimFilterPruner(NoBN(), torch.randn(1, 3, 8, 8)).prune_vars({"a.weight": 0.5})


@pytest.mark.parametrize("ratios, axis, apply, match", [
    ({"nope.weight": 0.5}, 0, "physical", "unknown parameter 'nope.weight'"),
    ({"conv3.0.weight": 1.0}, 0, "physical", r"ratio for 'conv3.0.weight' must be a number in \[0, 1\)"),
    ({"conv3.0.weight": -0.1}, 0, "physical", "ratio for 'conv3.0.weight'"),
    ({"conv3.0.weight": float("nan")}, 0, "physical", "ratio for 'conv3.0.weight'"),
    ({"conv3.0.weight": "0.5"}, 0, "physical", "ratio for 'conv3.0.weight'"),
    ({"conv3.0.weight": 0.5}, 1, "physical", "axis must be 0"),
    ({"conv3.0.weight": 0.5}, 0, "imperative", "apply must be 'physical' or 'lazy'"),
    ({"conv3.1.weight": 0.5}, 0, "physical", "'conv3.1.weight' is not the weight of a traced conv"),
    ({"conv3.0.weight": 0.5, "conv4.0.weight": 2}, 0, "physical", "ratio for 'conv4.0.weight'"),
    ({}, 0, "physical", "non-empty dict"),
])
def test_bad_input_raises_and_leaves_model_unchanged(ratios, axis, apply, match):
    model = randomize(PaddleResidualNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = L1NormFilterPruner(model, torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=match):
        pruner.prune_vars(ratios, axis=axis, apply=apply)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_depthwise_root_is_refused_with_producer_hint():
    model = nn.Sequential(conv_bn(3, 8), conv_bn(8, 8, groups=8), nn.Conv2d(8, 2, 1))
    g = DependencyGraph(model, torch.randn(1, 3, 8, 8))
    assert "depthwise" in g.group("1.0.weight").blocked
    root = g.group("0.0.weight")
    assert ("1.0.weight", 0) in root.entries() and root.depthwise == {"1.0": 1}


class ShapeBranch(nn.Module):
    """fx cannot trace Python control flow on a shape; torch.export specialises it and succeeds."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 8)
        self.b = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = self.a(x)
        if y.shape[-1] > 4:
            y = F.max_pool2d(y, 2)
        return self.b(y)


def test_torch_export_fallback():
    model = randomize(ShapeBranch())
    x = torch.randn(1, 3, 16, 16)
    pruner = SlimFilterPruner(model, x)
    assert pruner.graph.tracer == "export"
    assert ("b.weight", 1) in pruner.graph.group("a.0.weight").entries()
    pruner.prune_vars({"a.0.weight": 0.5})
    assert model.b.weight.shape == (4, 4, 3, 3) and model(x).shape == (1, 4, 6, 6)
    assert pruner.graph.tracer == "export"  # re-traced after the physical pruning
