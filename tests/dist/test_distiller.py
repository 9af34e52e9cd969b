"""Distiller: hooks capture the named modules' outputs, adapters only where channels differ, frozen eval teacher,
clean hook removal, gradients to the student and adapters only."""

import pytest
import torch
from torch import nn

from pyslim.dist import Distiller, fsp_loss, l2_loss, soft_label_loss


def net(width, feat=16):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),   # 0, 1, 2
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),                      # 3, 4
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(width * 4, feat), nn.ReLU(),  # 5..8
        nn.Linear(feat, 10))                                                   # 9


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_capture_and_loss_value():
    torch.manual_seed(0)
    t, s = net(8), net(8)
    x = torch.randn(4, 1, 8, 8)
    d = Distiller(t, s, [("2", "2", "l2", 0.5), ("", "", "soft_label", 2.0)])
    assert len(d.adapters) == 0
    out = d(x)
    t.eval()
    with torch.no_grad():
        t_feat, t_out = t[:3](x), t(x)
    s_feat = s[:3](x)
    torch.testing.assert_close(out, s(x))
    torch.testing.assert_close(d.features("teacher", "2"), t_feat)
    torch.testing.assert_close(d.features("student", "2"), s_feat)
    torch.testing.assert_close(d.features("teacher", ""), t_out)
    want = 0.5 * l2_loss(s_feat, t_feat) + 2.0 * soft_label_loss(s(x), t_out)
    torch.testing.assert_close(d.loss(), want)


def test_adapters_only_where_channels_differ_and_gradients():
    torch.manual_seed(0)
    t, s = net(16, feat=32), net(4, feat=32)
    x = torch.randn(4, 1, 8, 8)
    mapping = [("2", "2", "l2", 1.0), ("4", "4", "l2", 1.0), ("8", "8", "l2", 1.0), ("", "", "soft_label", 1.0)]
    d = Distiller(t, s, mapping)  # channels inferred from the modules
    assert sorted(d.adapters) == ["0", "1"]
    assert isinstance(d.adapters["0"], nn.Conv2d) and d.adapters["0"].kernel_size == (1, 1)
    assert (d.adapters["0"].in_channels, d.adapters["0"].out_channels) == (4, 16)
    d2 = Distiller(net(16, feat=32), net(4, feat=32), mapping, example_input=x)  # inferred from a forward
    assert sorted(d2.adapters) == ["0", "1"]
    d3 = Distiller(net(16, feat=32), net(4, feat=8), mapping, example_input=x)
    assert isinstance(d3.adapters["2"], nn.Linear) and d3.adapters["2"].in_features == 8
    names = {n for n, _ in d.named_parameters()}
    assert "adapters.0.weight" in names and "adapters.1.bias" in names
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in s.parameters()} | {
        id(p) for p in d.adapters.parameters()}

    d.train()
    assert not t.training and s.training
    assert all(not p.requires_grad for p in t.parameters())
    bn_mean = t[1].running_mean.clone()
    d(x)
    d.loss().backward()
    torch.testing.assert_close(t[1].running_mean, bn_mean)  # eval teacher: BN stats untouched
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert all(p.grad is not None for p in s.parameters())


def test_no_adapters_mismatch_is_error_and_bad_names():
    t, s = net(8), net(4)
    x = torch.randn(2, 1, 8, 8)
    d = Distiller(t, s, [("2", "2", "l2", 1.0)], adapters=None)
    d(x)
    with pytest.raises(ValueError, match="shape mismatch"):
        d.loss()
    with pytest.raises(ValueError, match=r"unknown student module name '10'.*close names"):
        Distiller(net(8), net(8), [("2", "10", "l2", 1.0)])
    with pytest.raises(ValueError, match="unknown loss"):
        Distiller(net(8), net(8), [("2", "2", "l3", 1.0)])
    with pytest.raises(ValueError, match="cannot infer"):
        Distiller(nn.Sequential(nn.ReLU()), nn.Sequential(nn.ReLU()), [("0", "0", "l2", 1.0)])


def test_remove_hooks_and_context_manager():
    t, s = net(8), net(4)
    before_t, before_s = _hook_count(t), _hook_count(s)
    with Distiller(t, s, [("2", "2", "l2", 1.0), ("", "", "soft_label", 1.0)]) as d:
        assert _hook_count(t) == before_t + 2 and _hook_count(s) == before_s + 2
    assert _hook_count(t) == before_t and _hook_count(s) == before_s
    with pytest.raises(RuntimeError, match="hooks were removed"):
        d(torch.randn(1, 1, 8, 8))


def test_fsp_pairs_and_callable():
    torch.manual_seed(0)
    t, s = net(8), net(8)
    x = torch.randn(3, 1, 8, 8)
    calls = []

    def my_loss(sf, tf):
        calls.append((sf.shape, tf.shape))
        return (sf - tf).abs().mean()

    d = Distiller(t, s, [(("2", "4"), ("2", "4"), "fsp", 3.0), ("8", "8", my_loss, 1.0)])
    d(x)
    with torch.no_grad():
        ta, tb = t[:3](x), t[:5](x)
    sa, sb = s[:3](x), s[:5](x)
    torch.testing.assert_close(d.losses()[0], fsp_loss(ta, tb, sa, sb))
    torch.testing.assert_close(d.loss(), 3.0 * fsp_loss(ta, tb, sa, sb) + (s[:9](x) - t[:9](x)).abs().mean())
    assert calls and calls[0] == (torch.Size([3, 16]), torch.Size([3, 16]))
