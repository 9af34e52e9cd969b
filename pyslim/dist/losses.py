"""Distillation losses, following PaddleSlim's definitions (spec section 1.4.1).

- ``soft_label_loss``: mean over the batch of the soft cross-entropy between ``softmax(s/Ts)`` and
  ``softmax(t/Tt)``. PaddleSlim applies **no** T^2 factor; ``scale_by_t2=True`` gives Hinton's form
  (multiplied by ``Ts * Tt``, i.e. T^2 when both temperatures are equal).
- ``l2_loss``: ``mean((s - t)^2)``.
- ``fsp_matrix(x, y)``: per sample ``x[C1, HW] @ y[C2, HW]^T / (H*W)``; ``fsp_loss`` is the mean squared difference
  between the student's and the teacher's FSP matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "soft_label_loss", "l2_loss", "fsp_matrix", "fsp_loss", "SoftLabelLoss", "L2Loss", "FSPLoss",
]


def _same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has shape "
                         f"{tuple(b.shape)}")


def soft_label_loss(student_logits: Tensor, teacher_logits: Tensor, student_temperature: float = 1.0,
                    teacher_temperature: float = 1.0, scale_by_t2: bool = False) -> Tensor:
    """Soft-label cross-entropy ``mean_n( -sum_c softmax(t/Tt)_c * log_softmax(s/Ts)_c )``.

    Logits are ``(N, C)`` (or ``(N, C, ...)``, the class axis being 1 and the extra axes averaged like the batch).
    The teacher is used as given: detach it yourself if it must not receive gradients (``Distiller`` does)."""
    _same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")
    if student_temperature <= 0 or teacher_temperature <= 0:
        raise ValueError("temperatures must be positive")
    log_p = F.log_softmax(student_logits / student_temperature, dim=1)
    q = F.softmax(teacher_logits / teacher_temperature, dim=1)
    loss = -(q * log_p).sum(dim=1).mean()
    if scale_by_t2:
        loss = loss * (student_temperature * teacher_temperature)
    return loss


def l2_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean((student - teacher)^2)``."""
    _same_shape(student, teacher, "student", "teacher")
    return (student - teacher).pow(2).mean()


def fsp_matrix(x: Tensor, y: Tensor) -> Tensor:
    """Flow-of-solution-procedure matrix: ``(N, C1, C2)`` with ``G[n] = x[n]_{C1,HW} @ y[n]_{C2,HW}^T / (H*W)``."""
    if x.dim() != 4 or y.dim() != 4:
        raise ValueError(f"fsp_matrix needs 4-D (N, C, H, W) tensors, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
        raise ValueError(f"fsp_matrix: x {tuple(x.shape)} and y {tuple(y.shape)} must share N, H and W")
    n, c1, h, w = x.shape
    c2 = y.shape[1]
    return torch.bmm(x.reshape(n, c1, h * w), y.reshape(n, c2, h * w).transpose(1, 2)) / (h * w)


def fsp_loss(teacher_a: Tensor, teacher_b: Tensor, student_a: Tensor, student_b: Tensor) -> Tensor:
    """``mean((FSP(student_a, student_b) - FSP(teacher_a, teacher_b))^2)``; the two FSP shapes must match."""
    try:
        g_t = fsp_matrix(teacher_a, teacher_b)
    except ValueError as e:
        raise ValueError(f"teacher pair (teacher_a, teacher_b): {e}") from None
    try:
        g_s = fsp_matrix(student_a, student_b)
    except ValueError as e:
        raise ValueError(f"student pair (student_a, student_b): {e}") from None
    if g_t.shape != g_s.shape:
        raise ValueError(f"FSP shape mismatch: FSP(teacher_a, teacher_b) is {tuple(g_t.shape)} "
                         f"(teacher_a {tuple(teacher_a.shape)}, teacher_b {tuple(teacher_b.shape)}) but "
                         f"FSP(student_a, student_b) is {tuple(g_s.shape)} (student_a {tuple(student_a.shape)}, "
                         f"student_b {tuple(student_b.shape)}): channel counts must match")
    return (g_s - g_t).pow(2).mean()


class SoftLabelLoss(nn.Module):
    def __init__(self, student_temperature: float = 1.0, teacher_temperature: float = 1.0,
                 scale_by_t2: bool = False) -> None:
        super().__init__()
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.scale_by_t2 = scale_by_t2

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return soft_label_loss(student_logits, teacher_logits, self.student_temperature, self.teacher_temperature,
                               self.scale_by_t2)


class L2Loss(nn.Module):
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return l2_loss(student, teacher)


class FSPLoss(nn.Module):
    def forward(self, teacher_a: Tensor, teacher_b: Tensor, student_a: Tensor, student_b: Tensor) -> Tensor:
        return fsp_loss(teacher_a, teacher_b, student_a, student_b)
