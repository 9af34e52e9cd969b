"""Unstructured pruning (spec 1.2.6) against a numpy transcription of the spec's rules."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyslim.prune import GMPUnstructuredPruner, UnstructuredPruner
from pyslim.prune.unstructured import block_average


def _dyadic_(model, seed=0):
    """Weights k/256 with |k| <= 255: every block sum is exact in float64, so block means computed in any
    order are bit-identical and the masks can be compared exactly (ties included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-255, 256, p.shape, generator=gen).float() / 256)
    return model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.pw = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 7)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.pw(x), 1))


# ------------------------------------------------------------------------------ numpy spec reference
def np_block_avg(w, m, n):
    """Spec: mean |W| over m x n blocks of the first two axes (edge blocks partial, remaining axes inside)."""
    w = np.abs(w.astype(np.float64))
    if m == 1 and n == 1:
        return w
    out = np.zeros_like(w)
    for r in range(0, w.shape[0], m):
        for c in range(0, w.shape[1], n):
            out[r:r + m, c:c + n] = w[r:r + m, c:c + n].mean()
    return out


def np_masks(weights, mode, ratio, threshold, block, local=False):
    avgs = {k: np_block_avg(v, *block) for k, v in weights.items()}
    if mode == "ratio":
        def th_of(values):
            s = np.sort(values.reshape(-1))
            return s[max(0, int(round(ratio * s.size)) - 1)]
        if local:
            return {k: a >= th_of(a) for k, a in avgs.items()}
        threshold = th_of(np.concatenate([a.reshape(-1) for a in avgs.values()]))
    return {k: a >= threshold for k, a in avgs.items()}


@pytest.mark.parametrize("mode,block,local", [("ratio", (1, 1), False), ("ratio", (2, 2), False),
                                              ("ratio", (1, 3), True), ("threshold", (1, 1), False),
                                              ("threshold", (2, 3), False)])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.55, 0.9])
def test_masks_match_numpy_spec(mode, block, local, ratio):
    model = _dyadic_(Net(), seed=int(ratio * 10))
    weights = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    pruner = UnstructuredPruner(model, mode=mode, ratio=ratio, threshold=0.3, local_sparsity=local,
                                sparse_block=block)
    # default skip: BatchNorm parameters and every 1-D parameter (biases)
    assert sorted(pruner.params) == ["conv.weight", "fc.weight", "pw.weight"]
    pruner.step()
    ref = np_masks({n: weights[n] for n in pruner.params}, mode, ratio, 0.3, block, local)
    for name, p in model.named_parameters():
        if name in ref:
            assert np.array_equal(pruner.masks[name].numpy(), ref[name]), name
            np.testing.assert_array_equal(p.detach().numpy(), weights[name] * ref[name])
        else:
            np.testing.assert_array_equal(p.detach().numpy(), weights[name])  # skipped: untouched
    if mode == "ratio" and not local and block == (1, 1):
        n = sum(weights[k].size for k in ref)
        pruned = sum(int((~m).sum()) for m in ref.values())
        assert pruned <= max(0, round(ratio * n) - 1)   # the threshold entry itself is kept (>=)


def test_block_average_values():
    w = torch.arange(1.0, 13.0).reshape(3, 4)
    avg = block_average(-w, (2, 3))
    expect = torch.tensor([[4.0, 4.0, 4.0, 6.0], [4.0, 4.0, 4.0, 6.0], [10.0, 10.0, 10.0, 12.0]],
                          dtype=torch.float64)
    assert torch.equal(avg, expect)
    conv = torch.ones(4, 2, 3, 3)
    conv[0, 0] = 3.0
    a = block_average(conv, (2, 2))
    assert a.shape == conv.shape and float(a[0, 0, 0, 0]) == pytest.approx((9 * 3 + 27) / 36)


def test_conv1x1_only_and_custom_skip():
    model = Net()
    only1x1 = UnstructuredPruner(model, ratio=0.5, prune_params_type="conv1x1_only")
    assert list(only1x1.params) == ["pw.weight"]
    only1x1.remove_hooks()
    custom = UnstructuredPruner(model, ratio=0.5, skip_params_func=lambda m: {"fc.weight"})
    assert "fc.weight" not in custom.params and "conv.bias" in custom.params and "bn.weight" in custom.params
    custom.remove_hooks()


def test_threshold_mode_and_summarize_weights():
    model = _dyadic_(Net(), seed=3)
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.4)
    th = pruner.summarize_weights(model, 0.4)
    w = torch.cat([p.detach().abs().reshape(-1).double() for n, p in model.named_parameters() if n in pruner.params])
    assert th == float(torch.sort(w).values[round(0.4 * w.numel()) - 1])
    pruner.step()
    assert pruner.threshold == th
    fixed = UnstructuredPruner(_dyadic_(Net(), seed=3), mode="threshold", threshold=th)
    fixed.step()
    for name in pruner.params:
        assert torch.equal(pruner.masks[name], fixed.masks[name])


def test_total_sparse_counts_all_parameters():
    model = nn.Linear(4, 2)   # 8 weights + 2 biases
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 1, 0, 2], [3, 0, 0, 4]]))
        model.bias.zero_()
    assert UnstructuredPruner.total_sparse(model) == pytest.approx(6 / 10)


def test_masks_applied_before_forward_and_kept_through_training():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = UnstructuredPruner(model, mode="ratio", ratio=0.6)
    seen = []

    def check(module, args):   # registered after the pruner's hook: runs after the masks are applied
        seen.append(all(bool((p.detach()[~pruner.masks[n]] == 0).all()) for n, p in model.named_parameters()
                        if n in pruner.params))
    model.register_forward_pre_hook(check)
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 7, (16,))
    pruner.step()
    for _ in range(5):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        # the optimizer revives masked weights ...
        assert any(bool((p.detach()[~pruner.masks[n]] != 0).any()) for n, p in model.named_parameters()
                   if n in pruner.params and (~pruner.masks[n]).any())
        pruner.step()
        # ... and step() prunes again to the ratio
        n_total = sum(p.numel() for n, p in model.named_parameters() if n in pruner.params)
        n_zero = sum(int((p.detach() == 0).sum()) for n, p in model.named_parameters() if n in pruner.params)
        assert abs(n_zero - (round(0.6 * n_total) - 1)) <= 2
    assert len(seen) == 5 and all(seen)
    seen.clear()
    # masks hold in eval mode too, before any step()
    model.eval()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    model(x)
    assert seen[-1]


# ------------------------------------------------------------------------------------------- GMP
def _gmp(**overrides):
    cfg = dict(stable_iterations=40, pruning_iterations=240, tunning_iterations=60, pruning_steps=12,
               initial_ratio=0.15)
    cfg.update(overrides)
    return GMPUnstructuredPruner(Net(), ratio=0.8, configs=cfg)


def test_gmp_schedule_values():
    p = _gmp()
    assert p.period == 20
    stable = int(40 / 240 * 12)      # 2 steps at 0
    tuning = int(60 / 240 * 12)      # 3 steps at the target
    cubic = [0.15 + (0.8 - 0.15) * (((i / 12) - 1) ** 3 + 1) for i in range(12)]
    assert p.schedule == pytest.approx([0.0] * stable + cubic + [0.8] * tuning)
    assert p.ratio_at(0) == 0.0 and p.ratio_at(39) == 0.0
    assert p.ratio_at(40) == pytest.approx(0.15)
    assert p.ratio_at(59) == pytest.approx(0.15) and p.ratio_at(60) == pytest.approx(cubic[1])
    assert p.ratio_at(10 ** 6) == 0.8
    values = [p.ratio_at(i) for i in range(0, 400, 20)]
    assert values == sorted(values)   # never decreases


def test_gmp_step_follows_schedule_and_resumes():
    p = _gmp()
    for i in range(100):
        p.step()
        if i == 39:
            assert all(bool((q != 0).all()) for q in p.params.values())   # stable phase: ratio 0
    assert p.ratio == pytest.approx(p.ratio_at(99))
    prunable = sum(q.numel() for q in p.params.values())
    zeros = sum(int((q.detach() == 0).sum()) for q in p.params.values())
    assert zeros == round(p.ratio * prunable) - 1
    resumed = _gmp(resume_iteration=100)
    resumed.model.load_state_dict(p.model.state_dict())
    resumed.step()
    assert resumed.ratio == pytest.approx(p.ratio_at(100)) and resumed.cur_iteration == 101


def test_gmp_config_errors():
    with pytest.raises(ValueError, match="must be > 10"):
        _gmp(pruning_iterations=100, pruning_steps=10)
    with pytest.raises(ValueError, match="missing"):
        GMPUnstructuredPruner(Net(), ratio=0.5, configs={"pruning_steps": 3})
    with pytest.raises(ValueError, match="needs configs"):
        GMPUnstructuredPruner(Net(), ratio=0.5)


def test_argument_errors():
    with pytest.raises(ValueError, match="mode"):
        UnstructuredPruner(Net(), mode="magnitude")
    with pytest.raises(ValueError, match="ratio"):
        UnstructuredPruner(Net(), ratio=1.5)
    with pytest.raises(ValueError, match="sparse_block"):
        UnstructuredPruner(Net(), sparse_block=(0, 1))
    with pytest.raises(ValueError, match="local_sparsity"):
        UnstructuredPruner(Net(), mode="threshold", local_sparsity=True)
    assert math.isfinite(UnstructuredPruner(Net()).summarize_weights(ratio=0.5))
