"""Criterion / selector goldens (spec 1.2.1, 1.2.3) and FLOPs / model-size goldens (spec section 3)."""

import math

import torch
from prune_models import PaddleResidualNet, conv_bn
from torch import nn

from pyslim.analysis import flops, model_size
from pyslim.prune import (PruningMask, PruningPlan, default_index_selector, fpgm_scores, l1_norm_scores,
                          l2_norm_scores, optimal_threshold_selector, pruned_count)


def test_l1_l2_scores_golden():
    w = torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.5, -0.5], [4.0, 0.0, 0.0]])
    assert torch.equal(l1_norm_scores(w), torch.tensor([2.0, 1.0 / 3.0, 4.0 / 3.0], dtype=torch.float64))
    torch.testing.assert_close(l2_norm_scores(w), torch.tensor([math.sqrt(14), math.sqrt(0.5), 4.0],
                                                               dtype=torch.float64))


def test_fpgm_scores_are_distance_sums():
    torch.manual_seed(0)
    w = torch.randn(7, 5, dtype=torch.float64)
    ref = torch.tensor([sum(float((w[i] - w[j]).norm()) for j in range(7)) for i in range(7)],
                       dtype=torch.float64)
    torch.testing.assert_close(fpgm_scores(w), ref, rtol=1e-10, atol=1e-10)
    # three filters on a line: the middle one is the geometric median and is pruned first
    line = torch.tensor([[0.0], [1.0], [2.0]])
    assert default_index_selector(fpgm_scores(line), 0.34).tolist() == [1]


def test_pruned_count_bankers_rounding_and_floor_of_one():
    assert pruned_count(10, 0.25) == 2    # round(2.5) = 2
    assert pruned_count(10, 0.35) == 4    # round(3.5) = 4
    assert pruned_count(8, 0.5) == 4
    assert pruned_count(4, 0.99) == 3     # at least one channel stays
    assert pruned_count(1, 0.9) == 0
    assert pruned_count(16, 0.3, align=8) == 0   # 5 pruned -> 11 kept -> 16
    assert pruned_count(16, 0.6, align=4) == 8   # round(9.6)=10 -> 6 kept -> 8


def test_default_selector_ties_prune_lower_index():
    assert default_index_selector(torch.tensor([3.0, 1.0, 1.0, 0.5]), 0.5).tolist() == [1, 3]
    assert default_index_selector(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5).tolist() == [0, 1]


def test_optimal_threshold_energy_rule():
    s = torch.tensor([4.0, 1.0, 3.0, 2.0])              # sorted 1,2,3,4; energy 1,5,14,30 / 30
    assert optimal_threshold_selector(s, 0.1).tolist() == [1]          # 1/30 <= 0.1 < 5/30: th = 1.5
    assert optimal_threshold_selector(s, 0.2).tolist() == [1, 3]       # 5/30 <= 0.2: th = 2.5
    assert optimal_threshold_selector(s, 0.02).tolist() == []          # 1/30 > 0.02: nothing
    assert optimal_threshold_selector(s, 0.99).tolist() == [1, 2, 3]   # the top channel always stays
    # zeros are clamped to 1e-18: their energy share (~1e-36) is below any positive ratio, so they go
    assert optimal_threshold_selector(torch.tensor([0.0, 0.0, 1.0]), 1e-30).tolist() == [0, 1]


def test_plan_mask_merge():
    a = PruningPlan("lazy", masks={"w": PruningMask(0, torch.tensor([False, True, True]))})
    b = PruningPlan("lazy", masks={"w": PruningMask(0, torch.tensor([True, True, False]))})
    assert a.merge(b).masks["w"].keep.tolist() == [False, True, False]


def test_flops_and_size_goldens_residual_net():
    model = PaddleResidualNet(with_transpose=False)
    assert flops(model, torch.randn(1, 3, 16, 16), only_conv=True) == 792576      # test_flops
    size = model_size(model)
    assert size.total == 3288 and size.parameters == 3192                         # test_model_size
    assert size.bytes == 3288 * 4 + 6 * 8                                         # + int64 counters


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3)
        self.conv2 = nn.Conv2d(3, 2, 3)

    def forward(self, x, y):
        return [self.conv1(x), self.conv2(y), "dummy"]


def test_flops_two_inputs_golden():
    net = TwoInputs()
    assert flops(net, (torch.randn(1, 3, 32, 32), torch.randn(1, 3, 16, 16))) == 59184   # dygraph/test_flops
    total, detail = flops(net, (torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)), detail=True)
    assert total == 59184 and detail == {"conv1.weight": 48600, "conv2.weight": 10584}  # per sample


def test_flops_rules_pool_activation_linear_transpose():
    model = nn.Sequential(conv_bn(3, 4), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x = torch.randn(2, 3, 8, 8)
    conv = 4 * 8 * 8 * 27
    bn_relu = 2 * 4 * 8 * 8
    pool = 4 * 4 * 4 * 4 + 4 * 1 * 1 * 1
    assert flops(model, x, only_conv=True) == conv + 20
    assert flops(model, x) == conv + bn_relu + pool + 20
    t = nn.ConvTranspose2d(4, 6, 2, stride=2)
    assert flops(t, torch.randn(1, 4, 5, 5)) == 4 * 25 * 6 * 4
    seq = nn.Linear(16, 8)
    assert flops(seq, torch.randn(3, 10, 16)) == 10 * 16 * 8
