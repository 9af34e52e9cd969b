"""Every criterion on ResNet-18/50-style, MobileNetV1/V2, DenseNet-style, UNet-style, a ConvTranspose decoder
and the real EfficientNet-Lite0: 30-50 % of the FLOPs go, the model still runs with the same output shape,
pyslim.analysis sees FLOPs and parameters drop, and restore() gives back the identical model."""

import pytest
import torch
from prune_models import ZOO, randomize

from pyslim.analysis import flops, model_size
from pyslim.prune import (FPGMFilterPruner, L1NormFilterPruner, L2NormFilterPruner, OptSlimFilterPruner,
                          SlimFilterPruner)

CRITERIA = [L1NormFilterPruner, L2NormFilterPruner, FPGMFilterPruner, SlimFilterPruner, OptSlimFilterPruner]
# channel fraction for the norm criteria; OptSlim's ratio is a fraction of sum(gamma^2) (energy)
RATIO = {OptSlimFilterPruner: 0.03}
CHANNEL_RATIO = 0.27


def _prune_and_check(model, x, cls, expect_drop=(0.30, 0.50), ratio=None):
    with torch.no_grad():
        ref_out = model(x)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_attrs = {n: dict(vars(m)) for n, m in model.named_modules()}
    flops0, size0 = flops(model, x), model_size(model)
    pruner = cls(model, x)
    groups = [g for g in pruner.graph.groups() if g.blocked is None]
    if cls in (SlimFilterPruner, OptSlimFilterPruner):
        groups = [g for g in groups if g.bn_after_root is not None]
    assert groups
    ratio = ratio if ratio is not None else RATIO.get(cls, CHANNEL_RATIO)
    plan = pruner.prune_vars({g.root: ratio for g in groups})
    assert not plan.skipped and any(plan.pruned_channels.values())
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref_out.shape and torch.isfinite(out).all()
    flops1, size1 = flops(model, x), model_size(model)
    drop = 1 - flops1 / flops0
    assert expect_drop[0] <= drop <= expect_drop[1], f"FLOPs drop {drop:.3f}"
    assert size1.parameters < size0.parameters and size1.bytes < size0.bytes
    pruner.restore()
    state = model.state_dict()
    assert state.keys() == ref_state.keys()
    for k, v in state.items():
        assert v.shape == ref_state[k].shape and torch.equal(v, ref_state[k]), k
    for n, m in model.named_modules():
        for key, val in ref_attrs[n].items():
            if not key.startswith("_") and isinstance(val, (int, tuple, bool, float)):
                assert getattr(m, key) == val, (n, key)
    with torch.no_grad():
        assert torch.equal(model(x), ref_out)
    return drop


@pytest.mark.parametrize("cls", CRITERIA, ids=lambda c: c.__name__)
@pytest.mark.parametrize("arch", sorted(ZOO))
def test_architecture(arch, cls):
    factory, shape = ZOO[arch]
    model = randomize(factory())
    x = torch.randn(shape)
    if arch == "densenet" and cls in (SlimFilterPruner, OptSlimFilterPruner):
        # pre-activation DenseNet: the BatchNorms follow the concats, not the convs, so the BN-scale criteria
        # (PaddleSlim: the BN *directly* consuming the conv output) reach only the stem conv, whose output
        # feeds the first dense layer's BatchNorm
        _prune_and_check(model, x, cls, expect_drop=(0.02, 0.5))
        return
    _prune_and_check(model, x, cls)


@pytest.mark.parametrize("cls", CRITERIA, ids=lambda c: c.__name__)
def test_efficientnet_lite0(efficientnet_lite0, cls):
    model = efficientnet_lite0()
    x = torch.randn(1, 3, 96, 96)
    # the pretrained BN scales are far from uniform: 10 % of their energy is ~38 % of the FLOPs
    _prune_and_check(model, x, cls, ratio=0.1 if cls is OptSlimFilterPruner else None)


def test_efficientnet_lite0_structure(efficientnet_lite0):
    """The MBConv coupling: the depthwise conv follows its expand conv; the project convs of a residual
    stage share one group with the stage's first block."""
    model = efficientnet_lite0()
    pruner = L1NormFilterPruner(model, torch.randn(1, 3, 64, 64))
    g = pruner.graph.group("_blocks.1._expand_conv.weight")
    assert g.blocked is None and g.depthwise == {"_blocks.1._depthwise_conv": 1}
    assert ("_blocks.1._project_conv.weight", 1) in g.entries()
    stage = pruner.graph.group("_blocks.1._project_conv.weight")
    assert ("_blocks.2._project_conv.weight", 0) in stage.entries()     # residual add couples the stage
    assert ("_blocks.3._expand_conv.weight", 1) in stage.entries()
    pruner.prune_vars({"_blocks.1._expand_conv.weight": 0.5})
    dw = model._blocks[1]._depthwise_conv
    assert dw.groups == dw.in_channels == dw.out_channels == 48 and dw.weight.shape == (48, 1, 3, 3)
