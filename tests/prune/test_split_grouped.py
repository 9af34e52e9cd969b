"""split / chunk along the channel axis and grouped (non-depthwise) convolutions."""

import pytest
import torch
import torch.fx as fx
from prune_models import ChunkBranches, ResNeXtNet, SplitSizes, randomize

from pyslim.analysis import flops
from pyslim.prune import DependencyGraph, L1NormFilterPruner


def _check_prune_restore(model, x, ratios):
    model = model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
    f0 = flops(model, x)
    pruner = L1NormFilterPruner(model, x)
    plan = pruner.prune_vars(ratios)
    assert not plan.skipped, plan.skipped
    with torch.no_grad():
        assert model(x).shape == ref.shape
    assert flops(model, x) < f0
    pruner.restore()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    return plan


def _removed(mask):
    return torch.nonzero(~mask.keep).reshape(-1).tolist()


def test_chunk_branches():
    model = randomize(ChunkBranches())
    x = torch.randn(1, 3, 16, 16)
    plan = _check_prune_restore(model, x, {"stem.0.weight": 0.5, "left.0.weight": 0.3})
    pruned = plan.pruned_channels["stem.0.weight"]
    assert len(pruned) == 8
    # equal pieces: 4 channels out of each half
    assert sum(c < 8 for c in pruned) == 4
    removed = _removed(plan.masks["stem.0.weight"])
    assert removed == pruned
    for name in ("stem.1.weight", "stem.1.running_mean"):
        assert _removed(plan.masks[name]) == pruned
    assert _removed(plan.masks["left.0.weight@1"]) == [c for c in pruned if c < 8]
    assert _removed(plan.masks["right.0.weight"]) == [c - 8 for c in pruned if c >= 8]


def test_chunk_physical_shapes_and_lazy_matches_physical():
    x = torch.randn(2, 3, 16, 16)
    phys = randomize(ChunkBranches())
    lazy = randomize(ChunkBranches())
    lazy.load_state_dict(phys.state_dict())
    L1NormFilterPruner(phys, x).prune_vars({"stem.0.weight": 0.5})
    assert phys.stem[0].out_channels == 8 and phys.left[0].in_channels == 4 and phys.right[0].in_channels == 4
    L1NormFilterPruner(lazy, x).prune_vars({"stem.0.weight": 0.5}, apply="lazy")
    with torch.no_grad():
        torch.testing.assert_close(phys(x), lazy(x), rtol=1e-5, atol=1e-5)


def test_split_sizes_blocked_in_plain_module():
    g = DependencyGraph(SplitSizes(), torch.randn(1, 3, 16, 16))
    assert "literal sizes [6, 10]" in g.group("stem.0.weight").blocked


def test_split_sizes_rewritten_in_graph_module():
    model = fx.symbolic_trace(randomize(SplitSizes()))
    x = torch.randn(1, 3, 16, 16)
    code = model.code
    plan = _check_prune_restore(model, x, {"stem.0.weight": 0.4, "right.0.weight": 0.5})
    assert model.code == code                      # restore() brings the literal sizes back
    pruned = plan.pruned_channels["stem.0.weight"]
    assert len(pruned) == 6
    assert _removed(plan.masks["left.0.weight"]) == [c for c in pruned if c < 6]
    assert _removed(plan.masks["right.0.weight@1"]) == [c - 6 for c in pruned if c >= 6]
    # prune again and look at the rewritten sizes
    pruner = L1NormFilterPruner(model, x)
    plan = pruner.prune_vars({"stem.0.weight": 0.4})
    n_left = sum(c < 6 for c in plan.pruned_channels["stem.0.weight"])
    split = next(n for n in model.graph.nodes if n.name == "split")
    assert split.args[1] == [6 - n_left, 10 - (6 - n_left)]
    assert getattr(model.left, "0").in_channels == 6 - n_left
    pruner.restore()
    assert model.code == code


@pytest.mark.parametrize("groups", [4, 8])
def test_resnext_grouped_conv(groups):
    model = randomize(ResNeXtNet(groups))
    x = torch.randn(1, 3, 16, 16)
    graph = DependencyGraph(model, x)
    assert graph.group("block.conv1.weight").blocked is None
    assert graph.group("block.conv2.weight").blocked is None
    plan = _check_prune_restore(model, x, {"block.conv1.weight": 0.5, "block.conv2.weight": 0.3})
    per = 32 // groups
    for root in ("block.conv1.weight", "block.conv2.weight"):
        pruned = plan.pruned_channels[root]
        counts = [sum(c // per == b for c in pruned) for b in range(groups)]
        assert len(set(counts)) == 1 and counts[0] > 0, counts
    p1 = plan.pruned_channels["block.conv1.weight"]
    assert _removed(plan.masks["block.bn1.weight"]) == p1
    assert _removed(plan.masks["block.conv2.weight@1"]) == p1   # input channels of the grouped conv
    p2 = plan.pruned_channels["block.conv2.weight"]
    assert _removed(plan.masks["block.conv2.weight@0"]) == p2
    assert _removed(plan.masks["block.bn2.weight"]) == p2
    assert _removed(plan.masks["block.conv3.weight"]) == p2


@pytest.mark.parametrize("groups", [4, 8])
def test_resnext_physical_equals_lazy_and_keeps_groups(groups):
    x = torch.randn(2, 3, 16, 16)
    phys = randomize(ResNeXtNet(groups))
    lazy = randomize(ResNeXtNet(groups))
    lazy.load_state_dict(phys.state_dict())
    ratios = {"block.conv1.weight": 0.5, "block.conv2.weight": 0.4}
    plan = L1NormFilterPruner(phys, x).prune_vars(ratios)
    L1NormFilterPruner(lazy, x).prune_vars(ratios, apply="lazy")
    conv2 = phys.block.conv2
    assert conv2.groups == groups
    assert conv2.in_channels == 32 - len(plan.pruned_channels["block.conv1.weight"])
    assert conv2.out_channels == 32 - len(plan.pruned_channels["block.conv2.weight"])
    assert conv2.weight.shape[1] * groups == conv2.in_channels
    with torch.no_grad():
        torch.testing.assert_close(phys(x), lazy(x), rtol=1e-5, atol=1e-5)


def test_grouped_conv_rounds_per_group():
    model = randomize(ResNeXtNet(8))             # 4 channels per group: 0.3 * 4 = 1.2 -> 1 per group
    plan = L1NormFilterPruner(model, torch.randn(1, 3, 16, 16)).prune_vars({"block.conv1.weight": 0.3})
    assert len(plan.pruned_channels["block.conv1.weight"]) == 8
