"""YOLOv3 distillation losses (PaddleDetection ``slim/distillation/distill.py``, spec section 1.4.3).

Head outputs are ``(N, A*(5+C), H, W)``, read per anchor as ``[x, y, w, h, obj, cls_1..cls_C]``.

- l2 form (default): ``100 * sum_heads mean((s - t)^2)``.
- fine-grained form: ``1000 * sum_heads (reg + cls + obj)`` with, per head,
  ``reg = mean((BCE(s_x, sig(t_x)) + BCE(s_y, sig(t_y)) + |s_w - t_w| + |s_h - t_h|) * sig(t_obj))``,
  ``cls = mean(BCE(s_cls, sig(t_cls)) * sig(t_obj))`` (mean over every class logit) and
  ``obj = mean(BCE(s_obj, 1[t_obj > 0]))``, BCE being binary cross-entropy with logits, elementwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import l2_loss

__all__ = ["yolo_distill_loss", "split_head"]


def split_head(head: Tensor, num_anchors: int) -> Tensor:
    """``(N, A*(5+C), H, W)`` -> ``(N, A, 5+C, H, W)``."""
    n, ch, h, w = head.shape
    if ch % num_anchors or ch // num_anchors < 6:
        raise ValueError(f"head with {ch} channels cannot be split into {num_anchors} anchors of 5+C (C >= 1)")
    return head.reshape(n, num_anchors, ch // num_anchors, h, w)


def _fine_grained(s: Tensor, t: Tensor) -> Tensor:
    t = t.detach()
    w_obj = torch.sigmoid(t[:, :, 4])
    bce = F.binary_cross_entropy_with_logits
    reg = (bce(s[:, :, 0], torch.sigmoid(t[:, :, 0]), reduction="none")
           + bce(s[:, :, 1], torch.sigmoid(t[:, :, 1]), reduction="none")
           + (s[:, :, 2] - t[:, :, 2]).abs() + (s[:, :, 3] - t[:, :, 3]).abs()) * w_obj
    cls = bce(s[:, :, 5:], torch.sigmoid(t[:, :, 5:]), reduction="none") * w_obj.unsqueeze(2)
    obj = bce(s[:, :, 4], (t[:, :, 4] > 0).to(s.dtype), reduction="none")
    return reg.mean() + cls.mean() + obj.mean()


def yolo_distill_loss(student_heads: Sequence[Tensor], teacher_heads: Sequence[Tensor], fine_grained: bool = False,
                      num_anchors: int = 3) -> Tensor:
    """Distillation loss over YOLOv3 heads (three in YOLOv3); weights 100 (l2) and 1000 (fine-grained) included."""
    if len(student_heads) != len(teacher_heads):
        raise ValueError(f"{len(student_heads)} student heads but {len(teacher_heads)} teacher heads")
    for k, (s, t) in enumerate(zip(student_heads, teacher_heads)):
        if s.shape != t.shape:
            raise ValueError(f"head {k}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")
    if not fine_grained:
        return 100.0 * sum(l2_loss(s, t.detach()) for s, t in zip(student_heads, teacher_heads))
    return 1000.0 * sum(_fine_grained(split_head(s, num_anchors), split_head(t, num_anchors))
                        for s, t in zip(student_heads, teacher_heads))
