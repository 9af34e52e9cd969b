"""Sensitivity analysis (spec 1.2.4): resumable scans, get_ratios_by_loss interpolation, the binary search of
sensitive_prune on a FLOPs target, and the sensitivity plot."""

import json

import pytest
import torch
from prune_models import PaddleResidualNet, randomize, resnet18_style

from pyslim.analysis import flops
from pyslim.prune import (L1NormFilterPruner, get_ratios_by_loss, load_sensitivities, merge_sensitivities,
                          plot_sensitivity, save_sensitivities)


def _output_similarity(model, x):
    """A metric that is 1 for the unpruned model and falls as its output moves away (higher is better)."""
    with torch.no_grad():
        reference = model(x).clone()
    calls = []

    def metric(m):
        calls.append(1)
        with torch.no_grad():
            return float(1.0 / (1.0 + (m(x) - reference).pow(2).mean()))
    return metric, calls


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sensitive_measures_restores_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = randomize(PaddleResidualNet(with_transpose=False))
    x = torch.randn(4, 3, 16, 16)
    before = _state(model)
    pruner = L1NormFilterPruner(model, x[:1])
    metric, calls = _output_similarity(model, x)
    names = pruner.prunable_parameters()
    ratios = (0.25, 0.5)
    path = tmp_path / "sens.json"

    sens = pruner.sensitive(metric, sen_file=path, pruned_ratios=ratios, progress=False)
    assert sorted(sens) == sorted(names) and all(sorted(v) == [0.25, 0.5] for v in sens.values())
    assert len(calls) == 1 + len(names) * len(ratios)      # baseline + one evaluation per (param, ratio)
    assert all(loss > 0 for v in sens.values() for loss in v.values())
    assert all(v[0.5] >= v[0.25] for v in sens.values())
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)   # restored bit for bit
    assert not pruner._hooks and pruner.model(x).shape == (4, 8, 16, 16)

    on_disk = json.loads(path.read_text())
    assert set(on_disk) == set(names) and set(on_disk[names[0]]) == {"0.25", "0.5"}
    assert load_sensitivities(path) == sens

    # a rerun measures nothing (not even the baseline) and returns the same numbers
    calls.clear()
    assert pruner.sensitive(metric, sen_file=path, pruned_ratios=ratios, progress=False) == sens
    assert calls == []

    # an interrupted scan (one parameter missing, another one ratio short) resumes only what is missing
    partial = dict(sens)
    partial.pop(names[0])
    partial[names[1]] = {0.25: sens[names[1]][0.25]}
    save_sensitivities(partial, path)
    calls.clear()
    resumed = pruner.sensitive(metric, sen_file=path, pruned_ratios=ratios, progress=False)
    assert len(calls) == 1 + 2 + 1
    assert all(resumed[n][r] == pytest.approx(sens[n][r], rel=1e-6) for n in names for r in ratios)

    # physical pruning measures the same losses as lazy zeroing (conv + BN groups)
    calls.clear()
    physical = pruner.sensitive(metric, sen_file=None, target_vars=names[:2], pruned_ratios=ratios,
                                progress=False, apply="physical")
    assert sorted(physical) == sorted(names[:2])
    for n in names[:2]:
        for r in ratios:
            assert physical[n][r] == pytest.approx(sens[n][r], rel=1e-4, abs=1e-6)


def test_sensitive_argument_errors(tmp_path):
    model = randomize(PaddleResidualNet(with_transpose=False))
    x = torch.randn(1, 3, 16, 16)
    pruner = L1NormFilterPruner(model, x)
    with pytest.raises(ValueError, match="not prunable"):
        pruner.sensitive(lambda m: 1.0, sen_file=None, target_vars=["conv1.1.weight"], progress=False)
    with pytest.raises(ValueError, match="pruned_ratios"):
        pruner.sensitive(lambda m: 1.0, sen_file=None, pruned_ratios=(0.5, 1.0), progress=False)
    with pytest.raises(ValueError, match="non-zero baseline"):
        pruner.sensitive(lambda m: 0.0, sen_file=None, pruned_ratios=(0.5,), progress=False)
    with pytest.raises(ValueError, match="run pruner.sensitive"):
        pruner.sensitive_prune(0.5)
    pruner.prune_vars({pruner.prunable_parameters()[0]: 0.5})
    with pytest.raises(ValueError, match="unpruned model"):
        pruner.sensitive(lambda m: 1.0, sen_file=None, progress=False)


def test_get_ratios_by_loss_interpolation():
    sens = {"a": {0.1: 0.02, 0.2: 0.05, 0.3: 0.20},
            "b": {0.1: 0.00, 0.2: 0.01, 0.3: 0.02},
            "c": {0.1: 0.30, 0.2: 0.40}}
    # PaddleSlim's rule: largest ratio within the loss, interpolated towards the next point
    spec = get_ratios_by_loss(sens, 0.1, include_zero=False)
    assert spec["a"] == pytest.approx(0.2 + (0.1 - 0.05) * (0.3 - 0.2) / (0.20 - 0.05))
    assert spec["b"] == 0.3                     # every point within the loss: the last ratio
    assert "c" not in spec                      # no point within the loss: not pruned
    # with the implicit (0, 0) point, the first segment is interpolated instead of skipped
    anchored = get_ratios_by_loss(sens, 0.1)
    assert anchored["a"] == spec["a"] and anchored["b"] == 0.3
    assert anchored["c"] == pytest.approx(0.1 * 0.1 / 0.30)
    assert get_ratios_by_loss(sens, 0.0) == {"b": 0.1}
    # non-monotone curves use the largest ratio within the loss
    assert get_ratios_by_loss({"d": {0.2: 0.05, 0.4: 0.01, 0.6: 0.5}}, 0.02)["d"] == pytest.approx(
        0.4 + 0.01 * 0.2 / 0.49)
    # string keys (as read back from JSON) are accepted
    assert get_ratios_by_loss({"e": {"0.5": 0.1, "0.7": 0.3}}, 0.2, include_zero=False)["e"] == pytest.approx(0.6)


def test_merge_and_load(tmp_path):
    save_sensitivities({"a": {0.1: 0.5}}, tmp_path / "one.json")
    merged = merge_sensitivities([tmp_path / "one.json", {"a": {0.2: 0.7}, "b": {0.1: 0.0}}])
    assert merged == {"a": {0.1: 0.5, 0.2: 0.7}, "b": {0.1: 0.0}}
    assert load_sensitivities(tmp_path / "missing.json") == {}


def test_sensitive_prune_hits_flops_target_on_resnet(tmp_path):
    torch.manual_seed(0)
    model = randomize(resnet18_style())
    x = torch.randn(1, 3, 32, 32)
    pruner = L1NormFilterPruner(model, x)
    names = pruner.prunable_parameters()
    # sensitivities with different slopes per layer: later layers are cheaper to prune
    sens = {n: {r: round(r ** 2 * (2.0 - i / len(names)), 6) for r in (0.2, 0.4, 0.6, 0.8)}
            for i, n in enumerate(names)}
    save_sensitivities(sens, tmp_path / "sens.json")
    base = flops(model, x)
    plan = pruner.sensitive_prune(pruned_flops=0.5, sen_file=tmp_path / "sens.json")
    fraction = (base - flops(model, x)) / base
    assert abs(fraction - 0.5) <= 0.01, fraction
    assert plan.apply == "physical" and plan.pruned_channels and not plan.skipped
    ratios = pruner.sensitive_ratios
    assert set(ratios) <= set(names) and all(0 < r < 1 for r in ratios.values())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the layers with the flatter curves were pruned more
    assert ratios[names[-1]] > ratios[names[0]]
    pruner.restore()
    assert flops(model, x) == base


def test_plot_sensitivity_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    path = tmp_path / "sens.png"
    plot_sensitivity({"layer1.weight": {0.2: 0.01, 0.4: 0.05}, "layer2.weight": {0.2: 0.1, 0.4: 0.3}}, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01     # not a blank canvas
