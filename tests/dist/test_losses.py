"""Distillation losses vs direct numpy implementations of PaddleSlim's formulas (spec 1.4.1, 1.4.3)."""

import numpy as np
import pytest
import torch
from torch import nn

from pyslim.dist import FSPLoss, L2Loss, SoftLabelLoss, fsp_loss, fsp_matrix, l2_loss, soft_label_loss
from pyslim.dist import yolo_distill_loss


def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("ts,tt", [(1.0, 1.0), (4.0, 4.0), (2.0, 3.0)])
def test_soft_label_matches_formula(ts, tt):
    s, t = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    p, q = _np_softmax(s.numpy() / ts), _np_softmax(t.numpy() / tt)
    want = np.mean(-(q * np.log(p)).sum(axis=1))
    assert float(soft_label_loss(s, t, ts, tt)) == pytest.approx(want, rel=1e-10)
    # no T^2 by default; Hinton's form multiplies by Ts*Tt
    assert float(soft_label_loss(s, t, ts, tt, scale_by_t2=True)) == pytest.approx(want * ts * tt, rel=1e-10)
    assert float(SoftLabelLoss(ts, tt)(s, t)) == pytest.approx(want, rel=1e-10)


def test_soft_label_minimum_is_teacher_entropy_and_gradient():
    t = torch.randn(4, 5, dtype=torch.float64)
    s = t.clone().requires_grad_(True)
    q = _np_softmax(t.numpy())
    loss = soft_label_loss(s, t)
    assert loss.item() == pytest.approx(np.mean(-(q * np.log(q)).sum(1)), rel=1e-10)
    loss.backward()
    assert s.grad.abs().max() < 1e-12  # p == q is the optimum
    s2 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    soft_label_loss(s2, t, 2.0, 2.0).backward()
    want = (_np_softmax(s2.detach().numpy() / 2) - _np_softmax(t.numpy() / 2)) / 2 / 4
    np.testing.assert_allclose(s2.grad.numpy(), want, rtol=1e-9)


def test_l2():
    s, t = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    want = np.mean((s.numpy() - t.numpy()) ** 2)
    assert float(l2_loss(s, t)) == pytest.approx(want, rel=1e-5)
    assert float(L2Loss()(s, t)) == pytest.approx(want, rel=1e-5)


def test_fsp_per_sample_formula():
    x, y = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 6, 4, 5, dtype=torch.float64)
    g = fsp_matrix(x, y)
    assert g.shape == (2, 3, 6)
    for n in range(2):
        want = x[n].reshape(3, 20).numpy() @ y[n].reshape(6, 20).numpy().T / 20
        np.testing.assert_allclose(g[n].numpy(), want, rtol=1e-12)
    ta, tb = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 4, 4, dtype=torch.float64)
    sa, sb = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 4, 4, dtype=torch.float64)
    gt = np.stack([ta[n].reshape(3, 16).numpy() @ tb[n].reshape(5, 16).numpy().T / 16 for n in range(2)])
    gs = np.stack([sa[n].reshape(3, 16).numpy() @ sb[n].reshape(5, 16).numpy().T / 16 for n in range(2)])
    assert float(fsp_loss(ta, tb, sa, sb)) == pytest.approx(np.mean((gs - gt) ** 2), rel=1e-12)
    assert float(FSPLoss()(ta, tb, sa, sb)) == pytest.approx(np.mean((gs - gt) ** 2), rel=1e-12)


def test_shape_mismatch_errors_name_the_tensors():
    with pytest.raises(ValueError, match="student_logits"):
        soft_label_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="student"):
        l2_loss(torch.randn(2, 3), torch.randn(2, 4))
    a = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="student_a"):
        fsp_loss(a, a, torch.randn(1, 2, 4, 4), a)  # FSP 3x3 vs 2x3
    with pytest.raises(ValueError, match="teacher pair"):
        fsp_loss(a, torch.randn(1, 3, 2, 2), a, a)  # spatial sizes of a pair differ
    with pytest.raises(ValueError, match="4-D"):
        fsp_matrix(torch.randn(2, 3), torch.randn(2, 3))


class TinyYoloHead(nn.Module):
    """Three YOLOv3-style heads (strides 8/16/32 on a 32x32 input), 3 anchors, 2 classes."""

    def __init__(self, width=8, anchors=3, classes=2):
        super().__init__()
        out = anchors * (5 + classes)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.down = nn.ModuleList([nn.Conv2d(width, width, 3, 2, 1) for _ in range(3)])
        self.heads = nn.ModuleList([nn.Conv2d(width, out, 1) for _ in range(3)])

    def forward(self, x):
        x, outs = self.stem(x), []
        for down, head in zip(self.down, self.heads):
            x = torch.relu(down(x))
            outs.append(head(x))
        return outs


def _np_bce(logit, target):
    return np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


def _sig(v):
    return 1 / (1 + np.exp(-v))


def test_yolo_losses_match_formulas():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    t_heads = TinyYoloHead().double()(x)
    s_net = TinyYoloHead().double()
    s_heads = s_net(x)
    assert [h.shape[-1] for h in s_heads] == [4, 2, 1] and s_heads[0].shape[1] == 21

    want_l2 = 100 * sum(np.mean((s.detach().numpy() - t.detach().numpy()) ** 2) for s, t in zip(s_heads, t_heads))
    assert yolo_distill_loss(s_heads, t_heads).item() == pytest.approx(want_l2, rel=1e-10)

    want = 0.0
    for s, t in zip(s_heads, t_heads):
        s = s.detach().numpy().reshape(2, 3, 7, *s.shape[2:])
        t = t.detach().numpy().reshape(2, 3, 7, *t.shape[2:])
        w = _sig(t[:, :, 4])
        reg = (_np_bce(s[:, :, 0], _sig(t[:, :, 0])) + _np_bce(s[:, :, 1], _sig(t[:, :, 1]))
               + np.abs(s[:, :, 2] - t[:, :, 2]) + np.abs(s[:, :, 3] - t[:, :, 3])) * w
        cls = _np_bce(s[:, :, 5:], _sig(t[:, :, 5:])) * w[:, :, None]
        obj = _np_bce(s[:, :, 4], (t[:, :, 4] > 0).astype(np.float64))
        want += reg.mean() + cls.mean() + obj.mean()
    loss = yolo_distill_loss(s_heads, t_heads, fine_grained=True)
    assert loss.item() == pytest.approx(1000 * want, rel=1e-10)
    loss.backward()  # gradients reach the student, none is needed on the teacher side
    assert all(p.grad is not None for p in s_net.parameters())
    with pytest.raises(ValueError, match="head 1"):
        yolo_distill_loss(s_heads, [t_heads[0], t_heads[0], t_heads[2]])
